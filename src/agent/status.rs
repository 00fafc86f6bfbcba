//! The status file: the agent's state for people and programs, written atomically (temporary
//! file, then rename) on every state change and every 10 s.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use log::warn;
use serde::{Deserialize, Serialize};

use crate::clock;

/// Channel totals over the life of the agent: the channels count them, the status file shows
/// them.
#[derive(Debug, Default)]
pub struct Totals {
    /// Channels opened.
    pub opened: AtomicU64,
    /// Channels open now.
    pub open: AtomicU64,
    /// Payload bytes sent to the proxy.
    pub up: AtomicU64,
    /// Payload bytes from the proxy written to local services.
    pub down: AtomicU64,
    /// Repeatable warnings, rate-limited and counted.
    pub noise: super::noise::Noise,
}

/// How often the file is rewritten even without a state change.
pub const REFRESH: Duration = Duration::from_secs(10);

/// The connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Resolving and connecting.
    Connecting,
    /// Connected, handshake under way.
    Authenticating,
    /// In frame mode: tunnels work.
    Connected,
    /// Waiting before the next attempt after a failure.
    BackingOff,
    /// Waiting after the proxy refused the device.
    Refused,
    /// Meeting is switched off on this device (`enabled` false): no tunnel, on purpose.
    Disabled,
    /// Waiting long after this connection was replaced again and again by another agent
    /// with the same device key: not fighting it for the connection.
    Displaced,
}

impl State {
    /// The name used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Authenticating => "authenticating",
            State::Connected => "connected",
            State::BackingOff => "backing_off",
            State::Refused => "refused",
            State::Displaced => "displaced",
            State::Disabled => "disabled",
        }
    }
}

/// The last error, by class.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastError {
    /// `refusal`, `network`, `protocol`, `tls`, `dead_link` or `replaced`.
    pub class: String,
    /// The message, as logged.
    pub message: String,
}

/// Meeting presence: whether the heartbeat keeps the device online in Meeting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Presence {
    /// `starting`, `online`, `not_registered` (404), `refused` (401/403), `failing` or `off`.
    pub state: String,
    /// Why it is off, or the last error.
    pub detail: Option<String>,
    /// When Meeting last accepted a beat, seconds since the epoch.
    pub last_ok: Option<u64>,
    /// The same, readable.
    pub last_ok_utc: Option<String>,
    /// The server's `last_seen` in its last answer (UTC).
    pub server_last_seen: Option<String>,
    /// Failed beats in a row.
    pub failures: u64,
    /// When this state began, seconds since the epoch.
    pub since: u64,
}

impl Presence {
    fn new(state: &str, detail: Option<String>, failures: u64) -> Presence {
        Presence {
            state: state.to_owned(),
            detail,
            failures,
            ..Presence::default()
        }
    }

    /// Heartbeats configured, none answered yet.
    pub fn starting() -> Presence {
        Presence::new("starting", None, 0)
    }

    /// No heartbeats, and why.
    pub fn off(why: String) -> Presence {
        Presence::new("off", Some(why), 0)
    }

    /// A beat was accepted at `at`.
    pub fn online(at: u64, server_last_seen: Option<String>) -> Presence {
        Presence {
            last_ok: Some(at),
            last_ok_utc: Some(clock::utc(at)),
            server_last_seen,
            ..Presence::new("online", None, 0)
        }
    }

    /// The server refused the beat: 404 (not registered), 401 or 403.
    pub fn refused(code: u16, message: String, failures: u64) -> Presence {
        let state = if code == 404 {
            "not_registered"
        } else {
            "refused"
        };
        Presence::new(state, Some(message), failures)
    }

    /// The beat failed (network, timeout, 5xx).
    pub fn failing(message: String, failures: u64) -> Presence {
        Presence::new("failing", Some(message), failures)
    }
}

/// The file's content. The schema is stable: programs read it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    /// `connecting`, `authenticating`, `connected`, `backing_off` or `refused`.
    pub state: String,
    /// When the state began, seconds since the epoch.
    pub since: u64,
    /// The same, readable.
    pub since_utc: String,
    /// `host:port` of the proxy.
    pub proxy: String,
    /// The last error, if any.
    pub last_error: Option<LastError>,
    /// Channels open now.
    pub open_channels: u64,
    /// Channels opened since the agent started.
    pub channels_total: u64,
    /// Payload bytes sent to the proxy since start.
    pub bytes_up: u64,
    /// Payload bytes received from the proxy since start.
    pub bytes_down: u64,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Agent version.
    pub version: String,
    /// Agent process id.
    pub pid: u32,
    /// When this file was written, seconds since the epoch.
    pub updated: u64,
    /// Meeting presence (absent in files of older agents).
    #[serde(default)]
    pub presence: Presence,
    /// The device key the agent connects as (absent in files of older agents).
    #[serde(default)]
    pub device_key: Option<String>,
    /// While not connected: since when the tunnel has been down (the end of the last
    /// connection, or the start), seconds since the epoch. `since` restarts with every
    /// attempt; this does not.
    #[serde(default)]
    pub down_since: Option<u64>,
    /// Repeatable warnings since start, by cause (`refused_over_max_channels`, ...): each is
    /// logged a few times per window, counted always.
    #[serde(default)]
    pub warnings: std::collections::BTreeMap<String, u64>,
    /// The local ports open to the tunnel and why: `configured (allowed_ports, …)`, `granted
    /// by Meeting: ssh, scp`, or ssh's until Meeting has answered (absent in older files).
    #[serde(default)]
    pub ports: std::collections::BTreeMap<String, String>,
}

struct Inner {
    state: State,
    since: u64,
    /// When the tunnel went down (or the start); `None` while connected.
    down_since: Option<u64>,
    proxy: String,
    device_key: Option<String>,
    last_error: Option<LastError>,
    connections: u64,
    broken: bool,
    presence: Presence,
    ports: std::collections::BTreeMap<String, String>,
}

/// The status of a running agent, and the file it is written to.
pub struct Status {
    path: Option<PathBuf>,
    totals: Arc<Totals>,
    inner: Mutex<Inner>,
}

impl Status {
    /// A status written to `path` (`None`: kept in memory only).
    pub fn new(path: Option<PathBuf>, proxy: String, totals: Arc<Totals>) -> Status {
        Status {
            path,
            totals,
            inner: Mutex::new(Inner {
                state: State::Connecting,
                since: clock::now(),
                down_since: Some(clock::now()),
                proxy,
                device_key: None,
                last_error: None,
                connections: 0,
                broken: false,
                presence: Presence::default(),
                ports: std::collections::BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The traffic counters the channels update.
    pub fn totals(&self) -> &Arc<Totals> {
        &self.totals
    }

    /// Enters `state` (and writes the file if it changed). `Connected` counts a connection.
    pub fn set(&self, state: State) {
        let mut g = self.lock();
        if g.state == state {
            return;
        }
        let was_connected = g.state == State::Connected;
        g.state = state;
        g.since = clock::now();
        if state == State::Connected {
            g.connections += 1;
            g.down_since = None;
        } else if was_connected {
            g.down_since = Some(g.since);
        }
        self.write_locked(&mut g);
        // systemd: ready once the first attempt has ended either way; the state as STATUS=.
        let shown = format!("{} (proxy {})", state.as_str(), g.proxy);
        drop(g);
        let attempt_over = !matches!(state, State::Connecting | State::Authenticating);
        crate::notify::status(&shown, attempt_over);
    }

    /// Records the last error.
    pub fn error(&self, class: &str, message: String) {
        self.lock().last_error = Some(LastError {
            class: class.to_owned(),
            message,
        });
    }

    /// Records Meeting presence (and writes the file when its state changed). The time of the
    /// last accepted beat is kept through failures.
    pub fn set_presence(&self, mut p: Presence) {
        let mut g = self.lock();
        let old = &g.presence;
        if p.last_ok.is_none() {
            p.last_ok = old.last_ok;
            p.last_ok_utc = old.last_ok_utc.clone();
            p.server_last_seen = old.server_last_seen.clone();
        }
        p.since = if old.state == p.state {
            old.since
        } else {
            clock::now()
        };
        let changed = old.state != p.state || old.last_ok != p.last_ok;
        g.presence = p;
        if changed {
            self.write_locked(&mut g);
        }
    }

    /// Meeting presence now.
    pub fn presence(&self) -> Presence {
        self.lock().presence.clone()
    }

    /// Updates the proxy address and the device key (at start and after a reload).
    pub fn set_identity(&self, proxy: String, device_key: String) {
        let mut g = self.lock();
        g.proxy = proxy;
        g.device_key = Some(device_key);
    }

    /// The current content.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        self.snapshot_locked(&g)
    }

    fn snapshot_locked(&self, g: &Inner) -> Snapshot {
        let t = &self.totals;
        Snapshot {
            state: g.state.as_str().to_owned(),
            since: g.since,
            since_utc: clock::utc(g.since),
            proxy: g.proxy.clone(),
            last_error: g.last_error.clone(),
            open_channels: t.open.load(Ordering::Relaxed),
            channels_total: t.opened.load(Ordering::Relaxed),
            bytes_up: t.up.load(Ordering::Relaxed),
            bytes_down: t.down.load(Ordering::Relaxed),
            reconnects: g.connections.saturating_sub(1),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            updated: clock::now(),
            presence: g.presence.clone(),
            device_key: g.device_key.clone(),
            down_since: if g.state == State::Connected {
                None
            } else {
                g.down_since
            },
            warnings: t.noise.totals(),
            ports: g.ports.clone(),
        }
    }

    /// Records the local ports open to the tunnel and why (written when they changed).
    pub fn set_ports(&self, ports: &[(u16, crate::config::Opened)]) {
        let ports: std::collections::BTreeMap<String, String> = ports
            .iter()
            .map(|(p, why)| (p.to_string(), why.to_string()))
            .collect();
        let mut g = self.lock();
        if g.ports != ports {
            g.ports = ports;
            self.write_locked(&mut g);
        }
    }

    /// Writes the file now.
    pub fn write(&self) {
        // The periodic write is also when the rate-limited warnings are summed up.
        self.totals.noise.flush();
        let mut g = self.lock();
        self.write_locked(&mut g);
    }

    fn write_locked(&self, g: &mut Inner) {
        let Some(path) = &self.path else { return };
        if g.broken {
            return;
        }
        let snap = self.snapshot_locked(g);
        if let Err(e) = write_atomically(path, &snap) {
            warn!(
                "cannot write the status file {}: {e}; going on without it (--status-file '' \
                 turns it off, --status-file PATH moves it)",
                path.display()
            );
            g.broken = true;
        }
    }

    /// Removes the file (on exit), so nothing reads a stale state.
    pub fn remove(&self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn write_atomically(path: &Path, snap: &Snapshot) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = serde_json::to_string_pretty(snap).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

impl Snapshot {
    /// Seconds since the file was written.
    pub fn age(&self) -> u64 {
        clock::now().saturating_sub(self.updated)
    }

    /// Whether the process that wrote it still runs.
    pub fn writer_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// Whether it describes a running agent: its writer is alive and it was rewritten within
    /// three refresh periods.
    pub fn is_fresh(&self) -> bool {
        self.writer_alive() && self.age() <= 3 * REFRESH.as_secs()
    }
}

/// Reads a status file.
pub fn read(path: &Path) -> Result<Snapshot, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the status file {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a status file: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_and_read_back() {
        let dir = std::env::temp_dir().join(format!("tunnel-agent-status-{}", std::process::id()));
        let path = dir.join("sub").join("status.json");
        let totals = Arc::new(Totals::default());
        let s = Status::new(Some(path.clone()), "p:9001".into(), totals.clone());
        s.set(State::Authenticating);
        s.set(State::Connected);
        totals.up.store(42, Ordering::Relaxed);
        s.error("network", "boom".into());
        s.set(State::BackingOff);
        let down = read(&path).unwrap();
        assert_eq!(down.state, "backing_off");
        let went_down = down.down_since.expect("down since the connection ended");
        s.set(State::Connecting);
        s.set(State::BackingOff);
        assert_eq!(
            read(&path).unwrap().down_since,
            Some(went_down),
            "another attempt does not restart the time the tunnel has been down"
        );
        s.set(State::Connected);
        let snap = read(&path).unwrap();
        assert_eq!(snap.down_since, None);
        assert_eq!(snap.state, "connected");
        assert_eq!(snap.bytes_up, 42);
        assert_eq!(snap.reconnects, 1);
        assert_eq!(snap.last_error.unwrap().message, "boom");
        assert!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count() == 1,
            "no temp file left"
        );
        s.remove();
        assert!(read(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unwritable_path_is_reported_once_and_ignored() {
        let s = Status::new(
            Some(PathBuf::from("/proc/no/such/dir/status.json")),
            "p".into(),
            Arc::new(Totals::default()),
        );
        s.set(State::Connected);
        s.set(State::BackingOff);
        assert!(s.lock().broken);
    }
}
