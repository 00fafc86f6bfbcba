//! Which device has which live agent connection, and that connection's public streams: each
//! public client is reached through a [`StreamSink`], the library's one way from frames to a
//! socket (the agent's toward its local services is the same type), with the proxy's settings.
//!
//! A public client's queue holds at most [`QUEUE_MAX`]. When it is full the device's reader
//! waits for room, as TCP backpressure on the device's one connection is the only flow control
//! the protocol has: a client that reads slowly slows its device by as much. The wait is
//! bounded: a payload that finds no room within [`STALL_WAIT`] means the client stopped
//! reading, or reads too slowly to keep up, and its stream is cut (with `C` to the device);
//! trickling a byte now and then does not hold the reader. A client that takes nothing of a
//! queue that is not full is cut after `send_timeout` (nginx's `send_timeout`). A stream the
//! device closes is closed toward its client only once the client has everything. Every cut
//! says how many bytes were not delivered.
//!
//! Where the agent keeps to the windows this proxy announced (its `W` on stream 0), none of
//! that waiting happens (docs/protocol.md, "Windows"): the agent sends a stream at most a
//! window (within the queue) before the client's sink grants more, as the client takes the
//! bytes; and a client's bytes go up at most a window ahead of the agent's grants. A slow
//! client slows only its own stream, however slow, and only `send_timeout` (nothing taken)
//! cuts it.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use tunnel_agent::downlink::sink::{Cut, CutReason, FullQueue, Owner, SinkSettings, StreamSink};
use tunnel_agent::protocol::frame::window_frame;
use tunnel_agent::uplink::window::Credit;
use tunnel_agent::uplink::writer::FrameSender;

/// Bytes from the device held for one public client at most.
pub const QUEUE_MAX: usize = 256 * 1024;
/// How long the device's reader waits for a payload to fit in a full queue.
pub const STALL_WAIT: Duration = Duration::from_secs(2);
/// With windows, a client's sink grants the device more each time this fraction of a window
/// reached the client: one 13-byte `W` frame per half window.
pub const GRANT_FRACTION: usize = 2;
/// With windows, a client that keeps up lets the device's window for its stream grow to this
/// many times the window announced; a slow client's never grows.
pub const WINDOW_GROWTH: usize = 4;
/// Stack of a public client's queue-draining thread: it holds nothing but the queue (heap).
const DRAIN_STACK: usize = 64 * 1024;

/// The proxy's words for a public stream's cut: what the client did, and what was lost.
pub fn cut_words(cut: &Cut) -> String {
    let lost = cut.undelivered;
    match &cut.reason {
        CutReason::NoRoom { queue, waited } => format!(
            "the public client made no room in its queue ({queue} bytes) for {} s: it stopped \
             reading or reads too slowly; {lost} bytes not delivered",
            waited.as_secs_f64().round()
        ),
        CutReason::Idle(idle) => format!(
            "the public client took no data for {:.1} s (send_timeout); {lost} bytes not \
             delivered",
            idle.as_secs_f64()
        ),
        CutReason::WriteFailed(e) => {
            format!("writing to the public client failed: {e}; {lost} bytes not delivered")
        }
        CutReason::NoThread(e) => {
            format!("no thread to write to the public client: {e}; {lost} bytes not delivered")
        }
        CutReason::Ended(why) => format!("{why}; {lost} bytes not delivered"),
    }
}

/// One public connection of a device.
struct Public {
    /// Where it comes from.
    from: IpAddr,
    /// The way to it.
    sink: Arc<StreamSink>,
    /// The window of its bytes to the device.
    up: Arc<Credit>,
}

/// The grants of one device's public sinks: sent once the agent said it keeps to windows.
struct Grants {
    tx: FrameSender,
    /// The agent's `W` on stream 0 came.
    kept: AtomicBool,
}

impl Owner for Grants {
    fn grant(&self, stream: u32, bytes: u32) -> bool {
        // Behind what is queued for the device, never holding up the thread that grants.
        self.kept.load(Ordering::Acquire) && self.tx.send_eager(window_frame(stream, bytes)).is_ok()
    }
}

/// A public stream's two ways: its sink (device to client) and its window (client to
/// device).
pub struct Stream {
    /// Device to client.
    pub sink: Arc<StreamSink>,
    /// Client to device.
    pub up: Arc<Credit>,
}

/// Bounds of one device's public connections (nginx's `limit_conn`): one address cannot take
/// all the channels the agent allows.
#[derive(Debug, Clone, Copy)]
pub struct PublicLimits {
    /// From one address.
    pub per_address: usize,
    /// In all.
    pub per_device: usize,
}

/// Why a public connection was not let through to its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverPublic {
    /// This many connections from its address are open to the device.
    Address(usize),
    /// This many connections are open to the device.
    Device(usize),
}

impl std::fmt::Display for OverPublic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverPublic::Address(n) => write!(
                f,
                "{n} connections from this address are open to the device (max_public_per_address)"
            ),
            OverPublic::Device(n) => write!(
                f,
                "{n} connections are open to the device (max_public_per_device)"
            ),
        }
    }
}

/// One authenticated agent connection.
pub struct DeviceSession {
    /// Device key as configured on the proxy.
    pub key: String,
    /// The agent's address.
    pub peer: SocketAddr,
    /// Frames to the agent.
    pub tx: FrameSender,
    /// The agent socket, to cut it when a newer connection replaces this one.
    sock: TcpStream,
    streams: Mutex<HashMap<u32, Public>>,
    /// How long a public client may take nothing.
    send_timeout: Duration,
    limits: PublicLimits,
    next_id: AtomicU32,
    /// How many public connections `close` cut.
    closed_streams: AtomicU32,
    /// The address of the connection that replaced this one.
    replaced_by: Mutex<Option<SocketAddr>>,
    /// The per-stream window announced to it; 0: none.
    window: u32,
    /// Its streams' grants.
    grants: Arc<Grants>,
    /// When it was authenticated.
    pub since: Instant,
    /// The same, in seconds since the epoch.
    since_epoch: u64,
    /// Bytes from its public clients sent to it.
    pub bytes_to: AtomicU64,
    /// Bytes from it for its public clients.
    pub bytes_from: AtomicU64,
}

impl DeviceSession {
    /// A session with no streams yet.
    pub fn new(
        key: String,
        peer: SocketAddr,
        tx: FrameSender,
        sock: TcpStream,
        (send_timeout, limits, window): (Duration, PublicLimits, u32),
    ) -> Self {
        DeviceSession {
            key,
            peer,
            grants: Arc::new(Grants {
                tx: tx.clone(),
                kept: AtomicBool::new(false),
            }),
            window,
            tx,
            sock,
            send_timeout,
            limits,
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            closed_streams: AtomicU32::new(0),
            replaced_by: Mutex::new(None),
            since: Instant::now(),
            since_epoch: tunnel_agent::clock::now(),
            bytes_to: AtomicU64::new(0),
            bytes_from: AtomicU64::new(0),
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Public>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a public connection from `from` under a fresh stream id, unless the
    /// device's bounds are reached: the id, and the stream's two ways.
    pub fn add_stream(
        &self,
        public: Arc<TcpStream>,
        from: IpAddr,
    ) -> Result<(u32, Stream), OverPublic> {
        let mut streams = self.streams();
        if streams.len() >= self.limits.per_device {
            return Err(OverPublic::Device(streams.len()));
        }
        let same = streams.values().filter(|p| p.from == from).count();
        if same >= self.limits.per_address {
            return Err(OverPublic::Address(same));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let window = self.window as usize;
        // Counted from the first byte, kept once the agent says it keeps to windows (which
        // may come after this stream's first bytes went up).
        let kept = self.grants.kept.load(Ordering::Acquire);
        // The window may grow only where the agent already said it keeps to windows: an
        // older agent's streams (and those opened before its answer) keep today's queue.
        let grow_to = if kept { window * WINDOW_GROWTH } else { window };
        let settings = SinkSettings {
            // With windows the device sends at most a window ahead of the grants, and the
            // queue holds it: STALL_WAIT never applies to an agent that keeps to them.
            queue_max: QUEUE_MAX.max(grow_to),
            direct_wait: Duration::ZERO,
            full: FullQueue::CutAfter(STALL_WAIT),
            idle_limit: self.send_timeout,
            stack: DRAIN_STACK,
            name: "public",
            grant_every: window / GRANT_FRACTION,
            grow_to,
        };
        let sink = StreamSink::open(id, public, settings, self.grants.clone());
        let up = Arc::new(Credit::new(self.window, kept));
        sink.tie(up.clone());
        streams.insert(
            id,
            Public {
                from,
                sink: sink.clone(),
                up: up.clone(),
            },
        );
        Ok((id, Stream { sink, up }))
    }

    /// The way to a stream's public connection.
    pub fn stream(&self, id: u32) -> Option<Arc<StreamSink>> {
        self.streams().get(&id).map(|p| p.sink.clone())
    }

    /// Whether windows were announced to this device.
    pub fn announced_windows(&self) -> bool {
        self.window > 0
    }

    /// The agent's `W` on stream 0: it keeps to the windows and grants them. From now on
    /// every stream's window is kept, and what its client took so far is granted.
    pub fn keep_windows(&self) {
        self.grants.kept.store(true, Ordering::Release);
        for p in self.streams().values() {
            p.up.keep();
            p.sink.grant();
        }
    }

    /// `W` from the agent for `stream`: `bytes` more of its client's may go up. Unknown
    /// streams are ignored (a grant may cross the stream's close).
    pub fn grant(&self, stream: u32, bytes: u32) {
        if let Some(p) = self.streams().get(&stream) {
            p.up.grant(bytes);
        }
    }

    /// Removes a stream; its sink, if it was there (the caller finishes or aborts it).
    pub fn remove_stream(&self, id: u32) -> Option<Arc<StreamSink>> {
        self.streams().remove(&id).map(|p| p.sink)
    }

    /// Closes every public connection and the agent socket.
    pub fn close(&self) {
        self.close_streams();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Closes every public connection.
    fn close_streams(&self) {
        for (_, p) in self.streams().drain() {
            p.sink.abort("the device's connection ended");
            self.closed_streams.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends this session for a newer one from `by`: its public connections are closed, and
    /// its reader stops (the socket's reading half is shut), so that the session's own thread
    /// sends the replacement notice and then closes (never this caller, who must not wait on
    /// a device that may not be reading).
    pub fn replace(&self, by: SocketAddr) {
        *self.replaced_by.lock().unwrap_or_else(|p| p.into_inner()) = Some(by);
        self.close_streams();
        let _ = self.sock.shutdown(Shutdown::Read);
    }

    /// The address of the connection that replaced this one, if one did.
    pub fn replaced_by(&self) -> Option<SocketAddr> {
        *self.replaced_by.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many public connections [`DeviceSession::close`] cut.
    pub fn streams_at_close(&self) -> u32 {
        self.closed_streams.load(Ordering::Relaxed)
    }
}

/// Live sessions by upper-cased device key, and which public port reaches which device.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Arc<DeviceSession>>>,
    /// Public address to (device key, local port), for every port listening.
    tunnels: Mutex<HashMap<String, (String, u16)>>,
}

/// What is live now, for the metrics.
pub struct Figures {
    /// Devices with an agent connected.
    pub devices: usize,
    /// Public connections open.
    pub public: usize,
    /// Public ports listening.
    pub tunnels: usize,
}

impl Registry {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<DeviceSession>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `s` the device's session; returns the one it replaces.
    pub fn insert(&self, s: Arc<DeviceSession>) -> Option<Arc<DeviceSession>> {
        self.map().insert(s.key.to_ascii_uppercase(), s)
    }

    /// The device's live session.
    pub fn get(&self, key: &str) -> Option<Arc<DeviceSession>> {
        self.map().get(&key.to_ascii_uppercase()).cloned()
    }

    fn tunnels(&self) -> MutexGuard<'_, HashMap<String, (String, u16)>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A public port at `listen` now reaches `port` on device `key`.
    pub fn tunnel_opened(&self, listen: &str, key: &str, port: u16) {
        self.tunnels()
            .insert(listen.to_owned(), (key.to_ascii_uppercase(), port));
    }

    /// The public port at `listen` is closed.
    pub fn tunnel_closed(&self, listen: &str) {
        self.tunnels().remove(listen);
    }

    /// Devices, public connections and tunnels now.
    pub fn figures(&self) -> Figures {
        let map = self.map();
        Figures {
            devices: map.len(),
            public: map.values().map(|s| s.streams().len()).sum(),
            tunnels: self.tunnels().len(),
        }
    }

    /// The devices online, for `GET /devices`: key, peer, since, open streams, bytes each
    /// way, and the public ports that reach them. Never a token: the proxy keeps none here.
    pub fn devices(&self) -> Vec<Value> {
        let sessions: Vec<Arc<DeviceSession>> = self.map().values().cloned().collect();
        let tunnels = self.tunnels().clone();
        let mut out: Vec<Value> = sessions
            .iter()
            .map(|s| {
                let key = s.key.to_ascii_uppercase();
                let mut ports: Vec<Value> = tunnels
                    .iter()
                    .filter(|(_, (k, _))| *k == key)
                    .map(|(listen, (_, port))| json!({"listen": listen, "port": port}))
                    .collect();
                ports.sort_by_key(|v| v["listen"].to_string());
                json!({
                    "device_key": s.key,
                    "peer": s.peer.to_string(),
                    "since": tunnel_agent::clock::utc(s.since_epoch),
                    "connected_seconds": s.since.elapsed().as_secs(),
                    "open_streams": s.streams().len(),
                    "bytes_to_device": s.bytes_to.load(Ordering::Relaxed),
                    "bytes_from_device": s.bytes_from.load(Ordering::Relaxed),
                    "tunnels": ports,
                })
            })
            .collect();
        out.sort_by_key(|v| v["device_key"].to_string());
        out
    }

    /// Removes `s` unless a newer session already replaced it.
    pub fn remove_if_current(&self, s: &Arc<DeviceSession>) {
        let mut map = self.map();
        let k = s.key.to_ascii_uppercase();
        if map.get(&k).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&k);
        }
    }
}
