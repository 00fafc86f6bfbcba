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

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use tunnel_agent::downlink::sink::{Cut, CutReason, FullQueue, Plain, SinkSettings, StreamSink};
use tunnel_agent::uplink::writer::FrameSender;

/// Bytes from the device held for one public client at most.
pub const QUEUE_MAX: usize = 256 * 1024;
/// How long the device's reader waits for a payload to fit in a full queue.
pub const STALL_WAIT: Duration = Duration::from_secs(2);
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
        (send_timeout, limits): (Duration, PublicLimits),
    ) -> Self {
        DeviceSession {
            key,
            peer,
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
    /// device's bounds are reached: the id, and the way to the connection.
    pub fn add_stream(
        &self,
        public: Arc<TcpStream>,
        from: IpAddr,
    ) -> Result<(u32, Arc<StreamSink>), OverPublic> {
        let mut streams = self.streams();
        if streams.len() >= self.limits.per_device {
            return Err(OverPublic::Device(streams.len()));
        }
        let same = streams.values().filter(|p| p.from == from).count();
        if same >= self.limits.per_address {
            return Err(OverPublic::Address(same));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let settings = SinkSettings {
            queue_max: QUEUE_MAX,
            direct_wait: Duration::ZERO,
            full: FullQueue::CutAfter(STALL_WAIT),
            idle_limit: self.send_timeout,
            stack: DRAIN_STACK,
            name: "public",
        };
        let sink = StreamSink::open(id, public, settings, Arc::new(Plain));
        streams.insert(
            id,
            Public {
                from,
                sink: sink.clone(),
            },
        );
        Ok((id, sink))
    }

    /// The way to a stream's public connection.
    pub fn stream(&self, id: u32) -> Option<Arc<StreamSink>> {
        self.streams().get(&id).map(|p| p.sink.clone())
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
