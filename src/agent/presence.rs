//! Meeting presence: the heartbeat that keeps the device "online" in Meeting, on its own
//! thread, so that a slow, hung or failing API never delays the tunnel, a reload or a stop.
//!
//! A beat goes out at start, right after every accepted handshake, when the LAN address
//! changes, and then every `heartbeat_interval`. Failures back off (5 s doubling, never
//! slower than the interval, jittered); a device the server does not know (404) or refuses
//! (401/403) is said once at ERROR and retried every `heartbeat_retry_unregistered`.

use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::beacon::Wake;
use super::netinfo::{self, Lan};
use super::status::{Presence, Status};
use super::Live;
use crate::advice;
use crate::backoff::{Backoff, Jitter};
use crate::clock;
use crate::config::{Api, Config, Heartbeat};
use crate::meeting::{ApiError, Beat, Client};

/// How often the LAN address is looked at between beats.
const LAN_CHECK: Duration = Duration::from_secs(5);
/// How often the public address is asked for (only with `public_ip_url`).
const PUBLIC_IP_EVERY: Duration = Duration::from_secs(600);
/// Bound of one heartbeat request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// While failing, a WARN at most this often (the status file has every failure).
const FAILING_WARN_EVERY: Duration = Duration::from_secs(600);

/// Starts the heartbeat thread.
pub fn spawn(live: Arc<Live>, status: Arc<Status>) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("heartbeat".into())
        .spawn(move || Heart::new(&live.get()).run(&live, &status))
}

/// The heartbeat's settings in force and where the run stands.
struct Heart {
    key: String,
    hb: Heartbeat,
    api: Api,
    client: Option<Client>,
    backoff: Backoff,
    jitter: Jitter,
    failures: u64,
    /// The HTTP status of a refusal already logged at ERROR (404, 401, 403).
    refused: Option<u16>,
    last_warn: Option<Instant>,
    public_ip: Option<(Instant, Option<String>)>,
}

impl Heart {
    fn new(cfg: &Config) -> Heart {
        let hb = cfg.heartbeat.clone();
        let client = cfg.api.client(REQUEST_TIMEOUT.min(hb.interval));
        Heart {
            key: cfg.device_key.value.clone(),
            // 5 s doubling, never slower than the interval; a success resets the sequence
            // (session_ended in beat()).
            backoff: Backoff::new(
                Duration::from_secs(5),
                hb.interval,
                hb.interval,
                Duration::ZERO,
            ),
            hb,
            api: cfg.api.clone(),
            client,
            jitter: Jitter::from_entropy(),
            failures: 0,
            refused: None,
            last_warn: None,
            public_ip: None,
        }
    }

    /// Says at start (and after a reload) whether heartbeats go out and where.
    fn announce(&self, status: &Status) {
        match (&self.client, &self.hb.off) {
            (Some(c), None) => {
                info!(
                    "Meeting presence: heartbeat to {} every {} s",
                    c.url,
                    self.hb.interval.as_secs()
                );
                if c.url.to_string().starts_with("http://") {
                    warn!(
                        "Meeting presence: the API {} is plain http: heartbeats carry no secret, \
                         but anyone on the path can read or forge them; use https",
                        c.url
                    );
                }
                status.set_presence(Presence::starting());
            }
            (_, off) => {
                let why = off.clone().unwrap_or_else(|| "no API URL".into());
                info!("Meeting presence: heartbeat off ({why}); Meeting will show this device as Disconnected unless something else sends heartbeats");
                status.set_presence(Presence::off(why));
            }
        }
    }

    fn run(mut self, live: &Live, status: &Status) {
        self.announce(status);
        let mut lan = netinfo::lan();
        let mut next_beat = Instant::now();
        let mut next_lan = Instant::now() + LAN_CHECK;
        loop {
            let on = self.client.is_some() && self.hb.off.is_none();
            if on && Instant::now() >= next_beat {
                lan = netinfo::lan();
                next_beat = Instant::now() + self.beat(lan.as_ref(), status);
            }
            let wait = if on {
                next_beat
                    .min(next_lan)
                    .saturating_duration_since(Instant::now())
            } else {
                Duration::from_secs(3600)
            };
            match live.beacon().wait(wait) {
                Wake::Stop => break,
                Wake::BeatNow => {
                    // Already beating with a refusal: the next scheduled try will do.
                    if self.refused.is_none() {
                        next_beat = Instant::now();
                    }
                }
                Wake::Reloaded => {
                    let cfg = live.get();
                    if cfg.heartbeat != self.hb
                        || cfg.api != self.api
                        || cfg.device_key.value != self.key
                    {
                        info!("SIGHUP: heartbeat settings changed; applying them now");
                        self = Heart::new(&cfg);
                        self.announce(status);
                        next_beat = Instant::now();
                    }
                }
                Wake::Elapsed => {}
            }
            if on && Instant::now() >= next_lan {
                next_lan = Instant::now() + LAN_CHECK;
                let now = netinfo::lan();
                if now.as_ref().and_then(|l| l.ip) != lan.as_ref().and_then(|l| l.ip) {
                    info!(
                        "LAN address changed ({} → {}): telling Meeting",
                        shown(lan.as_ref()),
                        shown(now.as_ref())
                    );
                    lan = now;
                    next_beat = Instant::now();
                }
            }
        }
        debug!("heartbeat thread stopped");
    }

    /// Sends one beat and records the outcome; returns the wait before the next. The client
    /// is borrowed, not cloned: it keeps its HTTP agent (and connection) from beat to beat.
    fn beat(&mut self, lan: Option<&Lan>, status: &Status) -> Duration {
        let Some(client) = self.client.take() else {
            return self.hb.interval;
        };
        let ip = lan.and_then(|l| l.ip).map(|ip| ip.to_string());
        // Presence only where the web manager beats too: Meeting's record keeps its values
        // rather than alternating between two senders'.
        let beat = match self.hb.details {
            true => Beat {
                ip_address: ip.clone(),
                ip_lan: ip,
                ip_public: self.public_ip(&client),
                mac: lan.and_then(|l| l.mac.clone()),
                note: Some(self.hb.note.clone()),
            },
            false => Beat::default(),
        };
        let sent = client.beat(&self.key, &beat);
        self.client = Some(client);
        match sent {
            Ok(answer) => {
                if self.refused.is_some() || self.failures > 0 {
                    info!(
                        "Meeting presence: heartbeat accepted again after {} failed attempts; the \
                         device is online in Meeting",
                        self.failures.max(1)
                    );
                } else if status.presence().state != "online" {
                    info!(
                        "Meeting presence: online (server last_seen {})",
                        answer.last_seen.as_deref().unwrap_or("-")
                    );
                }
                self.failures = 0;
                self.refused = None;
                self.last_warn = None;
                self.backoff.session_ended(Duration::ZERO);
                status.set_presence(Presence::online(clock::now(), answer.last_seen));
                self.hb.interval
            }
            Err(ApiError::Status { code, body, .. }) if matches!(code, 401 | 403 | 404) => {
                self.failures += 1;
                let message = match code {
                    404 => format!(
                        "device {} is not registered in Meeting: the heartbeat was answered 404 \
                         (\"{body}\"); {}",
                        self.key,
                        advice::device_unknown()
                    ),
                    _ => format!(
                        "Meeting refused the heartbeat of device {} with HTTP {code}: \"{body}\"; \
                         {}",
                        self.key,
                        advice::api_refused()
                    ),
                };
                if self.refused != Some(code) {
                    error!(
                        "{message}; retrying every {} s",
                        self.hb.retry_unregistered.as_secs()
                    );
                    self.refused = Some(code);
                }
                status.set_presence(Presence::refused(code, message, self.failures));
                self.hb.retry_unregistered
            }
            Err(e) => {
                self.failures += 1;
                self.refused = None;
                let delay = self.backoff.next_delay(false, self.jitter.unit());
                let message = advice::explained(&e, advice::api(&e));
                if self
                    .last_warn
                    .is_none_or(|t| t.elapsed() >= FAILING_WARN_EVERY)
                {
                    warn!(
                        "Meeting presence: heartbeat failed ({} in a row): {message}; retrying \
                         in {:.0} s; the tunnel is not affected, but Meeting may show the device \
                         as Disconnected",
                        self.failures,
                        delay.as_secs_f64()
                    );
                    self.last_warn = Some(Instant::now());
                } else {
                    debug!("heartbeat failed again: {message}");
                }
                status.set_presence(Presence::failing(message, self.failures));
                delay
            }
        }
    }

    /// The public address, asked for at most every 10 minutes, only with `public_ip_url`.
    fn public_ip(&mut self, client: &Client) -> Option<String> {
        let url = self.hb.public_ip_url.clone()?;
        if let Some((at, ip)) = &self.public_ip {
            if at.elapsed() < PUBLIC_IP_EVERY {
                return ip.clone();
            }
        }
        let ip = match client.text(&url) {
            Ok(t) => t
                .trim()
                .parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| ip.to_string()),
            Err(e) => {
                debug!("public_ip_url {url}: {e}");
                None
            }
        };
        self.public_ip = Some((Instant::now(), ip.clone()));
        ip
    }
}

fn shown(lan: Option<&Lan>) -> String {
    lan.and_then(|l| l.ip)
        .map_or_else(|| "none".to_owned(), |ip| ip.to_string())
}
