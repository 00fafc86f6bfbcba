//! The proxy as a whole: built from its settings (TLS keys, the Meeting API client, the
//! agents' listener, the static tunnels, the tunnel poller), then listening for agents.

use std::fmt;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};
use tunnel_agent::meeting::{ApiError, ApiUrl, Client};

use crate::auth::Auth;
use crate::metrics::{self, Handshake};
use crate::noise::{self, Cause};
use crate::penalty::{Penalties, Rate};
use crate::pending::Pending;
use crate::registry::Registry;
use crate::settings::{ReplyMode, Settings, Tunnel};
use crate::{control, public, tunnels};

/// Why the proxy could not start.
#[derive(Debug)]
pub enum StartError {
    /// `--tls-cert` without `--tls-key`, or the reverse.
    TlsHalf,
    /// TLS was asked of a build without it.
    #[cfg_attr(feature = "tls", allow(dead_code))]
    NoTls,
    /// The certificate or key cannot be used.
    #[cfg(feature = "tls")]
    TlsKeys(tunnel_agent::transport::tls::TlsError),
    /// The Meeting API's client cannot be made (its CA file).
    Api(ApiError),
    /// A listener could not be opened.
    Listen {
        /// What it is for.
        what: &'static str,
        /// The address.
        addr: String,
        /// Why.
        err: std::io::Error,
    },
    /// A thread (the tunnel poller, the metrics) could not start.
    Thread {
        /// What it is for.
        what: &'static str,
        /// Why.
        err: std::io::Error,
    },
}

impl StartError {
    /// 2 for settings that cannot work, 1 for what the system refused.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Listen { .. } | StartError::Thread { .. } => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::TlsHalf => f.write_str("--tls-cert and --tls-key go together"),
            StartError::NoTls => {
                f.write_str("this meeting-proxy was built without the tls feature")
            }
            #[cfg(feature = "tls")]
            StartError::TlsKeys(e) => write!(
                f,
                "cannot load the TLS certificate/key: {}",
                tunnel_agent::advice::explained(
                    e,
                    tunnel_agent::advice::tls(tunnel_agent::advice::Peer::Proxy, e)
                )
            ),
            StartError::Api(e) => write!(f, "{e}"),
            StartError::Listen { what, addr, err } => {
                write!(f, "cannot listen on {addr}{what}: {err}")
            }
            StartError::Thread { what, err } => write!(f, "cannot start the {what}: {err}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            #[cfg(feature = "tls")]
            StartError::TlsKeys(e) => Some(e),
            StartError::Api(e) => Some(e),
            StartError::Listen { err, .. } | StartError::Thread { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// One address where agents connect, plain TCP or TLS.
struct AgentPort {
    listener: TcpListener,
    tls: Arc<control::Tls>,
}

/// A proxy ready to accept agents.
pub struct Server {
    settings: Arc<Settings>,
    registry: Arc<Registry>,
    auth: Arc<Auth>,
    ports: Vec<AgentPort>,
    pending: Arc<Pending>,
    penalties: Arc<Penalties>,
}

impl Server {
    /// Opens everything `settings` asks for; the static tunnels and the poller start here.
    pub fn build(settings: Settings) -> Result<Server, StartError> {
        let tls = tls_config(&settings)?;
        let api = api_client(&settings)?;
        match tunnel_agent::memory::raise_open_files() {
            Ok(n) => info!("open-file limit: {n}"),
            Err(e) => warn!("cannot raise the open-file limit: {e}"),
        }
        let registry = Arc::new(Registry::default());
        // With TLS keys and no --listen-tls, the --listen addresses serve TLS (as before
        // there were two kinds).
        let tls = Arc::new(tls);
        let none: Arc<control::Tls> = Arc::new(None);
        let plain = if settings.listen_tls.is_empty() {
            tls.clone()
        } else {
            none
        };
        let mut ports = Vec::new();
        for (addrs, tls) in [(&settings.listen, &plain), (&settings.listen_tls, &tls)] {
            for addr in addrs {
                ports.push(AgentPort {
                    listener: listen(addr, "")?,
                    tls: tls.clone(),
                });
            }
        }
        for tunnel in &settings.tunnels {
            static_tunnel(tunnel, &registry)?;
        }
        let auth = Arc::new(Auth::new(
            settings.devices.clone(),
            api.clone(),
            settings.cache_accept,
            settings.cache_refuse,
        ));
        if let Some(client) = api {
            start_poller(client, &settings, &registry)?;
        }
        if let Some(addr) = &settings.metrics_listen {
            let listener = listen(addr, " for metrics")?;
            metrics::serve(listener, registry.clone()).map_err(|err| StartError::Thread {
                what: "metrics thread",
                err,
            })?;
        }
        Ok(Server {
            pending: Pending::new(settings.max_pending_per_address, settings.max_pending),
            penalties: Arc::new(penalties(&settings)),
            settings: Arc::new(settings),
            registry,
            auth,
            ports,
        })
    }

    /// Accepts agents on every address, one thread each, until the listeners fail for good.
    pub fn listen(mut self) -> ExitCode {
        noise::spawn_summaries();
        let ports = std::mem::take(&mut self.ports);
        for port in &ports {
            match port.listener.local_addr() {
                Ok(a) => info!(
                    "listening for agents on {a} ({}, reply mode {}, keepalive {})",
                    if port.tls.is_some() {
                        "TLS"
                    } else {
                        "plain TCP"
                    },
                    match self.settings.reply {
                        ReplyMode::Normal => "normal",
                        ReplyMode::None => "none",
                        ReplyMode::SilentClose => "silent-close",
                    },
                    match self.settings.keepalive {
                        Some(k) => format!("{} s", k.as_secs_f64()),
                        None => "off".to_owned(),
                    }
                ),
                Err(e) => warn!("listening for agents (address unknown: {e})"),
            }
        }
        // Under systemd: ready now that every listener is open; the watchdog fed by a thread
        // that must take the device registry's lock each time (a deadlock starves it).
        let n = ports.len();
        tunnel_agent::notify::status(&format!("listening for agents on {n} address(es)"), true);
        if let Some(tick) = tunnel_agent::notify::tick() {
            let registry = self.registry.clone();
            let spawned = thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || loop {
                    let now = registry.figures();
                    tunnel_agent::notify::alive();
                    tunnel_agent::notify::status(
                        &format!(
                            "{} device(s) connected, {} public connection(s)",
                            now.devices, now.public
                        ),
                        true,
                    );
                    thread::sleep(tick);
                });
            if let Err(e) = spawned {
                warn!("cannot start the watchdog thread: {e}");
                return ExitCode::FAILURE;
            }
        }
        let server = Arc::new(self);
        let mut ports = ports.into_iter();
        let last = ports.next_back();
        for port in ports {
            let server = server.clone();
            let spawned = thread::Builder::new()
                .name("agents".into())
                .spawn(move || server.accept(port));
            if let Err(e) = spawned {
                warn!("cannot start a thread to accept agents: {e}");
                return ExitCode::FAILURE;
            }
        }
        if let Some(port) = last {
            server.accept(port);
        }
        ExitCode::SUCCESS
    }

    /// Accepts agents on `port` until its listener fails for good.
    fn accept(&self, port: AgentPort) {
        for conn in port.listener.incoming() {
            match conn {
                Ok(sock) => self.admit(sock, &port.tls),
                Err(e) => {
                    if noise::allow(Cause::AcceptFailed) {
                        warn!("accept failed: {e}");
                    }
                    // Out of descriptors or memory: do not spin on it.
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Gives an accepted connection its thread, or, from an address slowed for its failed
    /// handshakes or over the bounds of handshakes in progress, one refusal line (never
    /// waiting on the client) and a close.
    fn admit(&self, sock: std::net::TcpStream, tls: &Arc<control::Tls>) {
        let Ok(peer) = sock.peer_addr() else {
            return;
        };
        let at = std::time::Instant::now();
        let refused = match self.penalties.address(peer.ip()) {
            Err(slowed) => Err((
                Handshake::SlowedAddress,
                format!(
                    "too many failed handshakes from this address; retry in {}",
                    slowed.retry_in()
                ),
            )),
            Ok(()) => self.pending.admit(peer.ip()).map_err(|over| {
                (
                    Handshake::Busy,
                    format!(
                        "busy: {over} (max_pending_per_address {}, max_pending {}); try again \
                         in a minute",
                        self.settings.max_pending_per_address, self.settings.max_pending
                    ),
                )
            }),
        };
        let slot = match refused {
            Ok(slot) => slot,
            Err((how, why)) => {
                metrics::get().handshake(how);
                if noise::allow(Cause::Busy) {
                    warn!("agent {peer} refused: {why}");
                }
                if self.settings.reply == ReplyMode::Normal {
                    let line = control::refusal(self.settings.error_form, &why);
                    let _ = sock.set_nonblocking(true);
                    let _ = std::io::Write::write(&mut &sock, format!("{line}\n").as_bytes());
                }
                return;
            }
        };
        let conn = control::Accepted {
            sock,
            peer,
            at,
            slot,
        };
        let (s, t) = (self.settings.clone(), tls.clone());
        let (a, r, p) = (
            self.auth.clone(),
            self.registry.clone(),
            self.penalties.clone(),
        );
        if let Err(e) = thread::Builder::new()
            .name("agent".into())
            .stack_size(public::THREAD_STACK)
            .spawn(move || control::serve(conn, &s, &t, (&a, &p), &r))
        {
            warn!("cannot start a thread for an agent connection: {e}");
        }
    }
}

/// The penalties for failed handshakes the settings ask for.
fn penalties(settings: &Settings) -> Penalties {
    Penalties::new(
        Rate {
            burst: settings.address_penalty_burst as f64,
            per_second: settings.address_penalty_per_second,
        },
        Rate {
            burst: settings.key_penalty_burst as f64,
            per_second: settings.key_penalty_per_minute / 60.0,
        },
        settings.remember_accepted,
    )
}

fn tls_config(settings: &Settings) -> Result<control::Tls, StartError> {
    match (&settings.tls_cert, &settings.tls_key) {
        (None, None) => Ok(None),
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => tunnel_agent::transport::tls::server_config(cert, key)
            .map(Some)
            .map_err(StartError::TlsKeys),
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => Err(StartError::NoTls),
        _ => Err(StartError::TlsHalf),
    }
}

/// The Meeting API's client, when `--api-url` is given; its CA file is read now.
fn api_client(settings: &Settings) -> Result<Option<Client>, StartError> {
    let Some(url) = &settings.api_url else {
        return Ok(None);
    };
    let client = Client::new(
        ApiUrl::new(url),
        settings.api_ca_file.clone(),
        settings.api_timeout,
    );
    client.prepare().map_err(StartError::Api)?;
    Ok(Some(client))
}

/// A listener with the kernel's largest accept queue (`net.core.somaxconn`; the standard
/// library asks for 128), so a reconnect storm after a restart waits in the queue instead of
/// losing SYNs.
fn listen(addr: &str, what: &'static str) -> Result<TcpListener, StartError> {
    let failed = |err| StartError::Listen {
        what,
        addr: addr.to_owned(),
        err,
    };
    crate::listen::bind_listener(addr).map_err(failed)
}

/// A `--tunnel`: its public port, served on a thread of its own.
fn static_tunnel(tunnel: &Tunnel, registry: &Arc<Registry>) -> Result<(), StartError> {
    let opened =
        public::open(tunnel.clone(), registry.clone()).map_err(|err| StartError::Listen {
            what: " for a tunnel",
            addr: tunnel.listen.clone(),
            err,
        })?;
    info!(
        "tunnel {} -> device {} port {}",
        opened.listen, tunnel.device, tunnel.port
    );
    Ok(())
}

/// The thread that keeps the API's tunnels open.
fn start_poller(
    client: Client,
    settings: &Settings,
    registry: &Arc<Registry>,
) -> Result<(), StartError> {
    info!(
        "devices decided by the Meeting API at {} (answers reused {} s when accepted, {} s when \
         refused); tunnels from {}/tunnels every {} s on {}",
        client.url,
        settings.cache_accept.as_secs_f64(),
        settings.cache_refuse.as_secs_f64(),
        client.url,
        settings.tunnels_interval.as_secs_f64(),
        settings.public_bind
    );
    let poller = tunnels::Poller::new(client, settings, registry.clone());
    let every = settings.tunnels_interval;
    thread::Builder::new()
        .name("tunnels".into())
        .spawn(move || poller.run(every))
        .map(drop)
        .map_err(|err| StartError::Thread {
            what: "tunnel poller",
            err,
        })
}
