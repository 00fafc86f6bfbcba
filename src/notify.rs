//! systemd's service notifications (sd_notify(3)), without a crate: one datagram per message
//! to the socket in `NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). `READY=1`
//! once the first attempt to connect has ended either way (so boot never waits on a proxy),
//! `STATUS=` with each state, and `WATCHDOG=1` from the agent's control loop when the unit
//! sets `WatchdogSec=`: a wedged loop stops feeding it and systemd restarts the service.
//! meeting-proxy says `READY=1` once every listener is open, and feeds the watchdog from a
//! thread that must take its device registry's lock each time.
//! Without `NOTIFY_SOCKET` (BusyBox init, a shell) every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Systemd {
    sock: UnixDatagram,
    to: SocketAddr,
    /// How often to feed the watchdog (a third of `WATCHDOG_USEC`), when it is on.
    every: Option<Duration>,
    /// Milliseconds since `start` of the last feed.
    fed_ms: AtomicU64,
    start: Instant,
    ready: AtomicBool,
}

static SYSTEMD: OnceLock<Option<Systemd>> = OnceLock::new();

fn systemd() -> Option<&'static Systemd> {
    SYSTEMD.get_or_init(from_env).as_ref()
}

/// The address in `NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
fn address(text: &str) -> Option<SocketAddr> {
    match text.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes()).ok()
        }
        None if text.starts_with('/') => SocketAddr::from_pathname(text).ok(),
        None => None,
    }
}

fn from_env() -> Option<Systemd> {
    let to = address(&std::env::var("NOTIFY_SOCKET").ok()?)?;
    let sock = UnixDatagram::unbound().ok()?;
    // WATCHDOG_PID, when set, names the process the watchdog is for.
    let ours = std::env::var("WATCHDOG_PID")
        .ok()
        .is_none_or(|p| p.trim() == std::process::id().to_string());
    let every = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|u| u.trim().parse::<u64>().ok())
        .filter(|u| ours && *u > 0)
        .map(|u| Duration::from_micros(u) / 3);
    Some(Systemd {
        sock,
        to,
        every,
        fed_ms: AtomicU64::new(0),
        start: Instant::now(),
        ready: AtomicBool::new(false),
    })
}

fn send(s: &Systemd, message: &str) {
    if let Err(e) = s.sock.send_to_addr(message.as_bytes(), &s.to) {
        log::debug!("systemd notification {message:?} not sent: {e}");
    }
}

/// Says the state (`systemctl status` shows it), with `READY=1` the first time `ready` is
/// true.
pub fn status(state: &str, ready: bool) {
    if let Some(s) = systemd() {
        if ready && !s.ready.swap(true, Ordering::SeqCst) {
            send(s, &format!("READY=1\nSTATUS={state}"));
        } else {
            send(s, &format!("STATUS={state}"));
        }
    }
}

/// Says the service is stopping.
pub fn stopping() {
    if let Some(s) = systemd() {
        send(s, "STOPPING=1");
    }
}

/// How often the control loop must come round to feed the watchdog, when it is on.
pub fn tick() -> Option<Duration> {
    systemd().and_then(|s| s.every)
}

/// The control loop is alive: feeds the watchdog when it is due (cheap to call often).
pub fn alive() {
    let Some(s) = systemd() else { return };
    let Some(every) = s.every else { return };
    let now = s.start.elapsed().as_millis() as u64;
    let fed = s.fed_ms.load(Ordering::Relaxed);
    if now.saturating_sub(fed) >= every.as_millis() as u64 / 2 || fed == 0 {
        s.fed_ms.store(now.max(1), Ordering::Relaxed);
        send(s, "WATCHDOG=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_addresses() {
        assert!(address("/run/systemd/notify").is_some());
        assert!(address("@/org/freedesktop/systemd1/notify/1").is_some());
        assert!(address("relative").is_none());
        assert!(address("").is_none());
    }
}
