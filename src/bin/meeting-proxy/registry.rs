//! Which device has which live agent connection, and that connection's public streams.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tunnel_agent::uplink::writer::FrameSender;

use crate::outbound::Outbound;

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
    streams: Mutex<HashMap<u32, Arc<Outbound>>>,
    /// How long a public client may take nothing.
    send_timeout: Duration,
    limits: PublicLimits,
    next_id: AtomicU32,
    /// How many public connections `close` cut.
    closed_streams: AtomicU32,
    /// The address of the connection that replaced this one.
    replaced_by: Mutex<Option<SocketAddr>>,
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
        }
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<u32, Arc<Outbound>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a public connection from `from` under a fresh stream id, unless the
    /// device's bounds are reached.
    pub fn add_stream(&self, public: Arc<TcpStream>, from: IpAddr) -> Result<u32, OverPublic> {
        let mut streams = self.streams();
        if streams.len() >= self.limits.per_device {
            return Err(OverPublic::Device(streams.len()));
        }
        let same = streams
            .values()
            .filter(|o| o.peer().is_some_and(|p| p.ip() == from))
            .count();
        if same >= self.limits.per_address {
            return Err(OverPublic::Address(same));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        streams.insert(id, Outbound::new(public, id, self.send_timeout));
        Ok(id)
    }

    /// The way to a stream's public connection.
    pub fn stream(&self, id: u32) -> Option<Arc<Outbound>> {
        self.streams().get(&id).cloned()
    }

    /// Removes a stream and shuts its public connection; returns whether it was there.
    pub fn remove_stream(&self, id: u32) -> bool {
        match self.streams().remove(&id) {
            Some(s) => {
                s.close();
                true
            }
            None => false,
        }
    }

    /// Closes every public connection and the agent socket.
    pub fn close(&self) {
        self.close_streams();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Closes every public connection.
    fn close_streams(&self) {
        for (_, s) in self.streams().drain() {
            s.close();
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

/// Live sessions by upper-cased device key.
#[derive(Default)]
pub struct Registry {
    map: Mutex<HashMap<String, Arc<DeviceSession>>>,
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

    /// Removes `s` unless a newer session already replaced it.
    pub fn remove_if_current(&self, s: &Arc<DeviceSession>) {
        let mut map = self.map();
        let k = s.key.to_ascii_uppercase();
        if map.get(&k).is_some_and(|cur| Arc::ptr_eq(cur, s)) {
            map.remove(&k);
        }
    }
}
