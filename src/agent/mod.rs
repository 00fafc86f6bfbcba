//! The agent role: keep a control connection to the proxy up forever and serve its channels.

pub mod channels;
pub mod session;
pub mod shutdown;

use std::sync::Arc;

use log::{error, info, warn};

use crate::backoff::{Backoff, Jitter};
use crate::config::Config;
use crate::handshake::FailureClass;
use channels::Totals;
use shutdown::Shutdown;

/// Version reported in logs and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Connects, serves, and reconnects with backoff until `shutdown` is triggered.
pub fn run(cfg: &Config, shutdown: &Shutdown) {
    let mut backoff = Backoff::default();
    let mut jitter = Jitter::from_entropy();
    let totals = Arc::new(Totals::default());
    if !cfg.device_key_well_formed() {
        warn!(
            "device key {} (from {}) is not 32 hexadecimal characters; the proxy will likely refuse it",
            cfg.device_key.value, cfg.device_key.source
        );
    }
    if let Some((path, mode)) = cfg.token_file_exposure() {
        warn!(
            "{} holds the token and is readable by group or others (mode {mode:03o}): run \
             chmod 600 {}",
            path.display(),
            path.display()
        );
    }
    info!(
        "tunnel-agent {VERSION} starting: device {}, proxy {} ({}), config {}",
        cfg.device_key.value,
        cfg.proxy_addr(),
        if cfg.tls.value { "TLS" } else { "plain TCP" },
        cfg.file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none".to_owned())
    );
    let mut attempt: u64 = 0;
    while !shutdown.requested() {
        attempt += 1;
        info!(
            "connecting to proxy {} (attempt {attempt})",
            cfg.proxy_addr()
        );
        let outcome = session::run(cfg, shutdown, &totals);
        if shutdown.requested() {
            break;
        }
        let Err(e) = outcome.result else { break };
        let refused = e.class() == FailureClass::Refusal;
        if refused {
            error!("{}", e.describe(cfg));
        } else if outcome.uptime.is_zero() {
            warn!("{}", e.describe(cfg));
        } else {
            warn!(
                "connection lost after {:.0} s: {}",
                outcome.uptime.as_secs_f64(),
                e.describe(cfg)
            );
        }
        backoff.session_ended(outcome.uptime);
        let delay = backoff.next_delay(refused, jitter.unit());
        info!(
            "{} reconnecting in {:.1} s",
            if refused {
                "refused by the proxy;"
            } else {
                "backing off;"
            },
            delay.as_secs_f64()
        );
        if shutdown.sleep(delay) {
            break;
        }
    }
    info!("tunnel-agent stopped");
}
