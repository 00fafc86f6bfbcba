//! The tunnels Meeting grants: `GET {api}/tunnels` polled, a public port opened for each new
//! entry, closed when the entry expires or goes away. Each change is logged with device,
//! service, public port and local port.
//!
//! Owns the set of API tunnels; the ports given with `--tunnel` are not its business (it only
//! leaves their ports alone).

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
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
        match self.client.tunnels() {
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

    /// Makes the open ports match the last list at `now` (seconds since the epoch).
    fn apply(&mut self, now: u64) {
        let mut wanted: HashMap<u16, &ApiTunnel> = HashMap::new();
        let mut why_not: Vec<(String, String)> = Vec::new();
        for t in &self.last {
            let label = describe(t);
            if t.expires_at.is_some_and(|at| at <= now) {
                continue; // expired: closed below if open, never opened otherwise
            }
            if self.static_ports.contains(&t.port) {
                why_not.push((label, "the port is a --tunnel of this proxy".into()));
            } else if self
                .ports
                .is_some_and(|(lo, hi)| !(lo..=hi).contains(&t.port))
            {
                let (lo, hi) = self.ports.unwrap_or_default();
                why_not.push((label, format!("port outside --public-ports {lo}-{hi}")));
            } else if let Some(first) = wanted.get(&t.port) {
                why_not.push((label, format!("port already given to {}", describe(first))));
            } else {
                wanted.insert(t.port, t);
            }
        }
        // Close what is gone, expired or changed.
        let gone: Vec<u16> = self
            .open
            .iter()
            .filter(|(port, o)| !matches!(wanted.get(port), Some(w) if **w == o.entry))
            .map(|(port, _)| *port)
            .collect();
        for port in gone {
            let Some(o) = self.open.remove(&port) else {
                continue;
            };
            let now_listed = self.last.iter().find(|t| t.port == port);
            let why = match now_listed {
                Some(t) if *t == o.entry => match t.expires_at {
                    Some(at) => format!("expired at {}", clock::utc(at)),
                    None => "no longer usable".into(),
                },
                Some(_) => "changed in Meeting".into(),
                None => "removed from Meeting".into(),
            };
            let live = o.gate.close(self.close_expired);
            let after = match (live, self.close_expired) {
                (0, _) => String::new(),
                (n, true) => format!("; {n} open connection(s) cut (--close-expired)"),
                (n, false) => format!("; {n} open connection(s) go on until they end"),
            };
            info!("tunnel closed, {why}: {}{after}", describe(&o.entry));
        }
        // Open what is new.
        let mut failed: Vec<(String, String)> = Vec::new();
        for (port, t) in wanted {
            if self.open.contains_key(&port) {
                continue;
            }
            let listen = join(&self.bind, port);
            match TcpListener::bind(&listen) {
                Ok(listener) => {
                    let gate = Arc::new(Gate::new(&listener));
                    let tunnel = Tunnel {
                        listen: listen.clone(),
                        device: t.device_key.clone(),
                        port: t.local_port,
                    };
                    let (r, g) = (self.registry.clone(), gate.clone());
                    let spawned = thread::Builder::new()
                        .name("tunnel".into())
                        .stack_size(public::THREAD_STACK)
                        .spawn(move || public::serve(listener, tunnel, r, g));
                    if let Err(e) = spawned {
                        failed.push((describe(t), format!("no thread for it: {e}")));
                        continue;
                    }
                    let expiry = t.expires_at.map_or("no expiry".into(), |at| {
                        format!("expires {}", clock::utc(at))
                    });
                    info!("tunnel opened: {} ({expiry}) on {listen}", describe(t));
                    self.open.insert(
                        port,
                        Open {
                            entry: t.clone(),
                            gate,
                        },
                    );
                }
                Err(e) => failed.push((
                    describe(t),
                    format!("cannot listen on {listen}: {e}; retried at the next poll"),
                )),
            }
        }
        // Each problem is logged once, and again only if it goes away and comes back.
        let problems =
            self.skipped
                .iter()
                .map(|why| {
                    (
                        Level::Warn,
                        format!("Meeting API tunnel list: {why}; left out"),
                    )
                })
                .chain(
                    why_not.into_iter().map(|(label, why)| {
                        (Level::Warn, format!("tunnel left out, {label}: {why}"))
                    }),
                )
                .chain(failed.into_iter().map(|(label, why)| {
                    (Level::Error, format!("tunnel not opened, {label}: {why}"))
                }));
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
