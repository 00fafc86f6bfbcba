//! The agent role: keep a control connection to the proxy up forever and serve its channels.
//!
//! Owns the reconnect loop and its backoff, the session (handshake and frame loop), the
//! channels to local services, the status file and the orderly stop. Reaches the proxy only
//! through `transport`, speaks only through `protocol`, `uplink` and `downlink`; must not print to stdout
//! (that is the binary's). `check` reads only its status file: it must not disturb a running
//! agent.

pub mod beacon;
pub mod channels;
#[cfg(feature = "tls")]
mod keys;
mod netinfo;
pub mod noise;
pub mod pings;
pub mod presence;
mod services;
pub mod session;
pub mod shutdown;
pub mod status;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{error, info, warn};

use crate::backoff::{Backoff, Jitter};
use crate::config::{Config, ConfigError};
use crate::protocol::handshake::FailureClass;
use session::Ending;
use shutdown::{Shutdown, Wake};
use status::{State, Status};

/// Version reported in logs and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The configuration in force (SIGHUP replaces it), and the wake-ups of the heartbeat and SSH
/// key threads.
pub struct Live {
    cfg: Mutex<Arc<Config>>,
    beacon: beacon::Beacon,
    keys: beacon::Beacon,
    services: beacon::Beacon,
    /// The services Meeting grants, once it has said (lower-case).
    granted: Mutex<Option<Vec<String>>>,
}

impl Live {
    /// Starts with `cfg`.
    pub fn new(cfg: Config) -> Self {
        Live {
            cfg: Mutex::new(Arc::new(cfg)),
            beacon: beacon::Beacon::default(),
            keys: beacon::Beacon::default(),
            services: beacon::Beacon::default(),
            granted: Mutex::new(None),
        }
    }

    /// The local ports the proxy may open now, and why.
    pub fn open_ports(&self) -> Vec<(u16, crate::config::Opened)> {
        let granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        self.get().open_ports(granted.as_deref())
    }

    /// Whether the proxy may open `port` now (see [`crate::config::Config::may_open`]).
    pub fn may_open(&self, port: u16) -> bool {
        let granted = self.granted.lock().unwrap_or_else(|p| p.into_inner());
        self.get().may_open(granted.as_deref(), port).is_some()
    }

    /// Records what Meeting grants.
    fn set_granted(&self, services: Option<Vec<String>>) {
        *self.granted.lock().unwrap_or_else(|p| p.into_inner()) = services;
    }

    /// What wakes the services thread.
    fn services_beacon(&self) -> &beacon::Beacon {
        &self.services
    }

    /// The configuration now in force.
    pub fn get(&self) -> Arc<Config> {
        self.cfg.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces it; returns the connection settings that changed (a reconnect applies them).
    /// The heartbeat picks its own settings up at once.
    pub fn replace(&self, new: Config) -> Vec<&'static str> {
        let mut g = self.cfg.lock().unwrap_or_else(|p| p.into_inner());
        let changed = connection_changes(&g, &new);
        *g = Arc::new(new);
        drop(g);
        self.beacon.reloaded();
        self.keys.reloaded();
        self.services.reloaded();
        changed
    }

    /// What wakes the heartbeat thread.
    pub fn beacon(&self) -> &beacon::Beacon {
        &self.beacon
    }
}

/// The settings of the control connection that differ between `a` and `b`.
pub fn connection_changes(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            v.push(name);
        }
    };
    check("enabled", a.enabled.value != b.enabled.value);
    check("device key", a.device_key.value != b.device_key.value);
    check("token", a.token.value != b.token.value);
    check("proxy host", a.host.value != b.host.value);
    check("proxy port", a.port.value != b.port.value);
    check("TLS", a.tls.value != b.tls.value);
    check(
        "outbound_proxy",
        a.outbound_proxy.as_ref().map(|o| &o.value) != b.outbound_proxy.as_ref().map(|o| &o.value),
    );
    check(
        "ca_file",
        a.ca_file.as_ref().map(|c| &c.value) != b.ca_file.as_ref().map(|c| &c.value),
    );
    check(
        "tls_server_name",
        a.tls_server_name.value != b.tls_server_name.value,
    );
    check("keepalive", a.keepalive != b.keepalive);
    check("ping_interval", a.ping_interval != b.ping_interval);
    check("max_frame", a.max_frame != b.max_frame);
    check(
        "handshake_timeout",
        a.handshake_timeout != b.handshake_timeout,
    );
    v
}

fn warn_about(cfg: &Config) {
    if !cfg.device_key_well_formed() {
        warn!(
            "device key {} (from {}) is not 32 hexadecimal characters; the proxy will likely refuse it",
            cfg.device_key.value, cfg.device_key.source
        );
    }
    if let Some(given) = &cfg.heartbeat.capped {
        warn!(
            "heartbeat_interval {} s ({}) is too long for Meeting, which shows a device \
             Disconnected about {} s after its last heartbeat: using {} s",
            given.value.as_secs_f64(),
            given.source,
            crate::config::AVAILABILITY_WINDOW.as_secs(),
            cfg.heartbeat.interval.as_secs()
        );
    }
    if cfg.outbound_proxy.is_none() && !cfg.ignored_proxy_env.is_empty() {
        warn!(
            "{} {} set in the environment, but tunnel-agent does not read them: the tunnel and \
             the Meeting API both go direct. To go through that proxy, set {} (flag \
             --outbound-proxy, environment MEETING_OUTBOUND_PROXY)",
            cfg.ignored_proxy_env.join(" and "),
            match cfg.ignored_proxy_env.len() {
                1 => "is",
                _ => "are",
            },
            crate::config::OUTBOUND_PROXY.spec.key
        );
    }
    if let Some(o) = &cfg.outbound_proxy {
        if matches!(o.source, crate::config::Source::Flag(_)) && o.value.has_password() {
            warn!(
                "the outbound proxy's password is on the command line ({}), where every local \
                 user can read it: put it in the configuration file (mode 0600) or in \
                 MEETING_OUTBOUND_PROXY",
                o.source
            );
        }
    }
    if let Some((path, mode)) = cfg.token_file_exposure() {
        warn!(
            "{} holds the token and is readable by group or others (mode {mode:03o}): run \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
}

pub use services::shown as services_shown;

/// Which of `tunnel_hosts` the agent uses: the first, the next after a failure to connect
/// (a refusal or a replacement is the device's, not the host's, and stays), and the first
/// again for a new connection once `tunnel_hosts_return` has passed on the others. A working
/// session on another entry is never dropped for it.
#[derive(Default)]
struct Hosts {
    current: usize,
    away_since: Option<Instant>,
}

impl Hosts {
    /// The configuration for the next attempt.
    fn pick(&mut self, base: &Config) -> Config {
        if self.current >= base.hosts.len() {
            self.current = 0;
            self.away_since = None;
        }
        if self.current != 0 && self.away_since.is_none() {
            // The time away counts from the first attempt on another entry.
            self.away_since = Some(Instant::now());
        } else if self.current != 0
            && self
                .away_since
                .is_some_and(|t| t.elapsed() >= base.hosts_return)
        {
            info!(
                "{} s on other tunnel_hosts: trying the first, {}, again",
                base.hosts_return.as_secs(),
                base.hosts[0]
            );
            self.current = 0;
            self.away_since = None;
        }
        base.at(self.current)
    }

    fn after_failure(&mut self, base: &Config, e: &session::SessionError, uptime: Duration) {
        let n = base.hosts.len();
        let the_hosts = e.class() == FailureClass::Transient
            && !matches!(e.ending, Ending::Replaced { .. })
            && uptime.is_zero();
        if n < 2 || !the_hosts {
            return;
        }
        let next = (self.current + 1) % n;
        info!(
            "{} did not connect: the next attempt goes to the next of tunnel_hosts, {} ({} of {n})",
            e.proxy,
            base.hosts[next],
            next + 1
        );
        if next == 0 {
            self.away_since = None;
        }
        self.current = next;
    }
}

/// Replacements within this window count towards [`DISPLACED_AFTER`].
const DISPLACED_WINDOW: Duration = Duration::from_secs(600);
/// Replacements within [`DISPLACED_WINDOW`] after which the agent stops fighting for the
/// connection.
const DISPLACED_AFTER: usize = 3;
/// How long it then waits before it tries again.
const DISPLACED_WAIT: Duration = Duration::from_secs(600);

/// Recent replacements of this agent's connection by another one with the same device key.
#[derive(Default)]
struct Displaced {
    at: std::collections::VecDeque<Instant>,
}

impl Displaced {
    /// Notes a replacement by `by`. `Some(wait)` when it has happened too often: another
    /// agent uses this device key, said once as an ERROR, and this one waits `wait` instead
    /// of taking the connection back (which would only make the other one do the same).
    fn replaced(
        &mut self,
        by: &str,
        e: &session::SessionError,
        status: &Status,
    ) -> Option<Duration> {
        let now = Instant::now();
        self.at
            .retain(|t| now.duration_since(*t) < DISPLACED_WINDOW);
        self.at.push_back(now);
        let n = self.at.len();
        if n < DISPLACED_AFTER {
            return None;
        }
        self.at.clear();
        let fact = format!(
            "the proxy {} replaced this agent's connection {n} times in {} min, most recently \
             with one from {by}: another agent is connecting as device {}",
            e.proxy,
            DISPLACED_WINDOW.as_secs() / 60,
            e.device_key
        );
        let message = crate::advice::explained(
            fact,
            Some(crate::advice::another_agent(DISPLACED_WAIT.as_secs())),
        );
        error!("{message}");
        status.error(e.class_name(), message);
        status.set(State::Displaced);
        Some(DISPLACED_WAIT)
    }
}

/// While Meeting is switched off on this device (`enabled` false): says so once, holds no
/// tunnel (and the heartbeat thread sends none) until a reload or a stop. `true` on a stop.
fn switched_off(cfg: &Config, shutdown: &Shutdown, status: &Status) -> bool {
    status.set(State::Disabled);
    info!(
        "Meeting is switched off on this device (enabled false, {}): no tunnel and no \
         heartbeat until it is switched on (then reload: SIGHUP, or systemctl reload)",
        cfg.enabled.source
    );
    loop {
        match shutdown.sleep(Duration::from_secs(3600)) {
            Wake::Stop => return true,
            Wake::Kick => {
                shutdown.take_kick();
                return false;
            }
            Wake::Elapsed => {}
        }
    }
}

/// Says what ended a session (or kept it from starting) and how long to wait before the next
/// attempt.
fn after_failure(
    e: &session::SessionError,
    uptime: Duration,
    backoff: &mut Backoff,
    unit: f64,
    status: &Status,
) -> Duration {
    let refused = e.class() == FailureClass::Refusal;
    let message = e.explained();
    if refused {
        error!("{message}");
    } else if uptime.is_zero() || matches!(e.ending, Ending::Replaced { .. }) {
        warn!("{message}");
    } else {
        warn!(
            "connection lost after {:.0} s: {message}",
            uptime.as_secs_f64()
        );
    }
    status.error(e.class_name(), message);
    backoff.session_ended(uptime);
    let delay = backoff.next_delay(refused, unit);
    status.set(if refused {
        State::Refused
    } else {
        State::BackingOff
    });
    info!(
        "{} reconnecting in {:.1} s",
        if refused {
            "refused by the proxy;"
        } else {
            "backing off;"
        },
        delay.as_secs_f64()
    );
    delay
}

/// Connects, serves, and reconnects with backoff until `shutdown` is triggered.
pub fn run(live: &Arc<Live>, shutdown: &Shutdown, status: &Arc<Status>) {
    let mut backoff = Backoff::default();
    let mut jitter = Jitter::from_entropy();
    let cfg = live.get();
    warn_about(&cfg);
    info!(
        "tunnel-agent {VERSION} starting: device {}, proxy {}{} ({}), config {}",
        cfg.device_key.value,
        cfg.proxy_addr(),
        match cfg.hosts.len() {
            1 => String::new(),
            n => format!(" and {} more in tunnel_hosts", n - 1),
        },
        if cfg.tls.value { "TLS" } else { "plain TCP" },
        match cfg.files.is_empty() {
            true => "none".to_owned(),
            false => cfg
                .files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" over "),
        }
    );
    if let Err(e) = presence::spawn(live.clone(), status.clone()) {
        error!("cannot start the heartbeat thread ({e}); Meeting will show this device as Disconnected");
    }
    if let Err(e) = services::spawn(live.clone(), status.clone()) {
        error!("cannot start the services thread ({e}); only ssh's port opens to the tunnel");
    }
    #[cfg(feature = "tls")]
    if let Err(e) = keys::spawn(live.clone()) {
        error!("cannot start the SSH key thread ({e}); run `tunnel-agent keys` to install Meeting's key");
    }
    let mut attempt: u64 = 0;
    let mut displaced = Displaced::default();
    let mut hosts = Hosts::default();
    while !shutdown.requested() {
        let base = live.get();
        if !base.enabled.value {
            if switched_off(&base, shutdown, status) {
                break;
            }
            continue;
        }
        let cfg = hosts.pick(&base);
        attempt += 1;
        status.set_identity(cfg.proxy_addr(), cfg.device_key.value.clone());
        status.set(State::Connecting);
        info!(
            "connecting to proxy {}{}{} (attempt {attempt})",
            cfg.proxy_addr(),
            match base.hosts.len() {
                1 => String::new(),
                n => format!(" ({} of {n} in tunnel_hosts)", hosts.current + 1),
            },
            cfg.outbound_proxy
                .as_ref()
                .map(|o| format!(" through the outbound proxy {}", o.value))
                .unwrap_or_default()
        );
        let outcome = session::run(&cfg, live, shutdown, status);
        if shutdown.requested() {
            break;
        }
        if shutdown.take_kick() {
            info!("reconnecting with the reloaded configuration");
            continue;
        }
        let Err(e) = outcome.result else { break };
        let displaced_wait = match &e.ending {
            Ending::Replaced { by } => displaced.replaced(by, &e, status),
            _ => None,
        };
        let delay = match displaced_wait {
            Some(wait) => wait,
            None => after_failure(&e, outcome.uptime, &mut backoff, jitter.unit(), status),
        };
        hosts.after_failure(&base, &e, outcome.uptime);
        match shutdown.sleep(delay) {
            Wake::Stop => break,
            Wake::Kick => {
                shutdown.take_kick();
                info!("reconnecting now with the reloaded configuration");
            }
            Wake::Elapsed => {}
        }
    }
    crate::notify::stopping();
    live.beacon().stop();
    live.keys.stop();
    live.services.stop();
    status.remove();
    info!("tunnel-agent stopped");
}

/// Applies a reloaded configuration (SIGHUP): a broken one is refused and the old one kept; a
/// changed connection setting reconnects; anything else applies in place.
pub fn reload(live: &Live, shutdown: &Shutdown, loaded: Result<Config, ConfigError>) {
    match loaded {
        Err(e) => error!(
            "SIGHUP: the new configuration is not usable, keeping the old one: {}",
            crate::advice::config(&e)
        ),
        Ok(new) => {
            warn_about(&new);
            let changed = live.replace(new);
            if changed.is_empty() {
                info!("SIGHUP: configuration reloaded; no connection setting changed, staying connected");
            } else {
                info!(
                    "SIGHUP: configuration reloaded; {} changed: reconnecting",
                    changed.join(", ")
                );
                shutdown.kick();
            }
        }
    }
}
