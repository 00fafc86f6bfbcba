//! The tunnels Meeting grants: `GET {api}/tunnels` polled, a public port opened for each new
//! entry, closed when the entry expires or goes away. Each change is logged with device,
//! service, public port and local port.
//!
//! Owns the set of API tunnels; the ports given with `--tunnel` are not its business (it only
//! leaves their ports alone).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, log, warn, Level};

use tunnel_agent::clock;
use tunnel_agent::meeting::{ApiTunnel, Client};

use crate::public::{self, Gate};
use crate::registry::Registry;
use crate::settings::{Settings, Tunnel};

/// While the API fails, a reminder this often (the first failure is logged at once).
const FAILING_REMINDER: Duration = Duration::from_secs(600);

/// One open API tunnel.
struct Open {
    entry: ApiTunnel,
    gate: Arc<Gate>,
}

/// What the poller keeps between two polls.
pub struct Poller {
    client: Client,
    registry: Arc<Registry>,
    bind: String,
    ports: Option<(u16, u16)>,
    close_expired: bool,
    /// Ports of the `--tunnel` entries.
    static_ports: HashSet<u16>,
    open: HashMap<u16, Open>,
    /// The last entry list, so expiry goes on while the API does not answer.
    last: Vec<ApiTunnel>,
    /// Why entries of the last list could not be read.
    skipped: Vec<String>,
    /// What was wrong with entries at the last round: each sentence is logged once, until
    /// it no longer holds.
    said: HashSet<String>,
    failing_since: Option<(Instant, Instant)>,
}

impl Poller {
    /// A poller for the API of `client`, with the settings' bind address and port range.
    pub fn new(client: Client, settings: &Settings, registry: Arc<Registry>) -> Poller {
        let static_ports = settings
            .tunnels
            .iter()
            .filter_map(|t| t.listen.rsplit_once(':')?.1.parse().ok())
            .filter(|p| *p != 0)
            .collect();
        Poller {
            client,
            registry,
            bind: settings.public_bind.clone(),
            ports: settings.public_ports,
            close_expired: settings.close_expired,
            static_ports,
            open: HashMap::new(),
            last: Vec::new(),
            skipped: Vec::new(),
            said: HashSet::new(),
            failing_since: None,
        }
    }

    /// Polls forever, every `interval`.
    pub fn run(mut self, interval: Duration) {
        loop {
            self.poll();
            thread::sleep(interval);
        }
    }

    /// One round: fetch the list (or keep the last one when the API fails), then open, close
    /// and expire.
    pub fn poll(&mut self) {
        let at = std::time::Instant::now();
        let answer = self.client.tunnels();
        crate::metrics::get().api("tunnels", at, &answer);
        match answer {
            Ok(list) => {
                if let Some((since, _)) = self.failing_since.take() {
                    info!(
                        "the Meeting API's tunnel list answers again (it failed for {} s)",
                        since.elapsed().as_secs()
                    );
                }
                self.last = list.tunnels;
                self.skipped = list.skipped;
            }
            Err(e) => {
                let now = Instant::now();
                match &mut self.failing_since {
                    None => {
                        warn!(
                            "cannot fetch the tunnel list: {e}; the {} API tunnels open stay as \
                             they are (expiry still applies) until it answers",
                            self.open.len()
                        );
                        self.failing_since = Some((now, now));
                    }
                    Some((since, reminded)) if reminded.elapsed() >= FAILING_REMINDER => {
                        warn!(
                            "the tunnel list still fails after {} s: {e}",
                            since.elapsed().as_secs()
                        );
                        *reminded = now;
                    }
                    Some(_) => {}
                }
            }
        }
        self.apply(clock::now());
    }

    /// Makes the open ports match the last list at `now` (seconds since the epoch): what may
    /// be open, then close what is not, open what is new, and say each problem once.
    fn apply(&mut self, now: u64) {
        let (wanted, mut problems) = self.wanted(now);
        self.close_unwanted(&wanted);
        for (port, t) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            match self.open_one(port, &t) {
                Ok(open) => {
                    self.open.insert(port, open);
                }
                Err(why) => problems.push((
                    Level::Error,
                    format!("tunnel not opened, {}: {why}", describe(&t)),
                )),
            }
        }
        self.say_once(problems);
    }

    /// The entries of the last list that may be open at `now`, by public port, and why each
    /// other one is left out (expired entries are simply not wanted).
    fn wanted(&self, now: u64) -> (HashMap<u16, ApiTunnel>, Vec<(Level, String)>) {
        let mut wanted: HashMap<u16, ApiTunnel> = HashMap::new();
        let mut problems: Vec<(Level, String)> = self
            .skipped
            .iter()
            .map(|why| {
                (
                    Level::Warn,
                    format!("Meeting API tunnel list: {why}; left out"),
                )
            })
            .collect();
        for t in &self.last {
            if t.expires_at.is_some_and(|at| at <= now) {
                continue; // expired: closed if open, never opened otherwise
            }
            let why = if self.static_ports.contains(&t.port) {
                "the port is a --tunnel of this proxy".to_owned()
            } else if let Some((lo, hi)) =
                self.ports.filter(|(lo, hi)| !(lo..=hi).contains(&&t.port))
            {
                format!("port outside --public-ports {lo}-{hi}")
            } else if let Some(first) = wanted.get(&t.port) {
                format!("port already given to {}", describe(first))
            } else {
                wanted.insert(t.port, t.clone());
                continue;
            };
            problems.push((
                Level::Warn,
                format!("tunnel left out, {}: {why}", describe(t)),
            ));
        }
        (wanted, problems)
    }

    /// Closes each open tunnel that is gone, expired or changed, saying why.
    fn close_unwanted(&mut self, wanted: &HashMap<u16, ApiTunnel>) {
        let gone: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, o)| wanted.get(port) != Some(&o.entry))
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            let Some(o) = self.open.remove(&port) else {
                continue;
            };
            let why = match self.last.iter().find(|t| t.port == port) {
                Some(t) if *t == o.entry => match t.expires_at {
                    Some(at) => format!("expired at {}", clock::utc(at)),
                    None => "no longer usable".into(),
                },
                Some(_) => "changed in Meeting".into(),
                None => "removed from Meeting".into(),
            };
            let after = match (o.gate.close(self.close_expired), self.close_expired) {
                (0, _) => String::new(),
                (n, true) => format!("; {n} open connection(s) cut (--close-expired)"),
                (n, false) => format!("; {n} open connection(s) go on until they end"),
            };
            info!("tunnel closed, {why}: {}{after}", describe(&o.entry));
        }
    }

    /// Opens the public port of `t`, served on a thread of its own.
    fn open_one(&self, port: u16, t: &ApiTunnel) -> Result<Open, String> {
        let listen = join(&self.bind, port);
        let tunnel = Tunnel {
            listen: listen.clone(),
            device: t.device_key.clone(),
            port: t.local_port,
        };
        let opened = public::open(tunnel, self.registry.clone())
            .map_err(|e| format!("cannot listen on {listen}: {e}; retried at the next poll"))?;
        let expiry = t.expires_at.map_or("no expiry".into(), |at| {
            format!("expires {}", clock::utc(at))
        });
        info!("tunnel opened: {} ({expiry}) on {listen}", describe(t));
        Ok(Open {
            entry: t.clone(),
            gate: opened.gate,
        })
    }

    /// Logs each problem once, and again only if it goes away and comes back.
    fn say_once(&mut self, problems: Vec<(Level, String)>) {
        let mut said = HashSet::new();
        for (level, line) in problems {
            if !self.said.contains(&line) {
                log!(level, "{line}");
            }
            said.insert(line);
        }
        self.said = said;
    }
}

/// `device K service S public port P -> local port L`.
fn describe(t: &ApiTunnel) -> String {
    format!(
        "device {} service {} public port {} -> local port {}",
        t.device_key, t.service, t.port, t.local_port
    )
}

/// `host:port`, with brackets for an IPv6 host.
fn join(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}
