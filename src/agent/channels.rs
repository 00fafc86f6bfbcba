//! The agent's tunnel channels: one per stream id, each with one thread that connects to
//! `127.0.0.1:<port>` and copies local bytes to the proxy.
//!
//! Bytes from the proxy are written to the local socket by the control loop itself, so a local
//! service that reads slowly slows the control connection down (TCP backpressure) instead of
//! filling a queue. Bytes that arrive while the local connection is still being made wait in a
//! small bounded buffer and are delivered once it is up.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Instant;

use super::noise::Cause;
use log::{debug, info, warn};

use crate::agent::Live;
use crate::protocol::frame::close_frame;
use crate::uplink::copy::{pump_to_frames, PumpEnd};
use crate::uplink::writer::FrameSender;

/// Bytes held for a stream whose local connection is not up yet; beyond this the control loop
/// waits (at most the connect timeout) rather than buffer more.
pub const PENDING_MAX: usize = 256 * 1024;
/// Stack size of channel threads: they hold a 32 KiB heap buffer and little else.
const CHANNEL_STACK: usize = 128 * 1024;

enum State {
    Connecting { pending: Vec<u8> },
    Open(Arc<TcpStream>),
    Closed,
}

struct Channel {
    stream: u32,
    port: u16,
    opened: Instant,
    state: Mutex<State>,
    cv: Condvar,
    up: AtomicU64,
    down: AtomicU64,
    /// Why the channel closed, set by whoever closed it first.
    reason: Mutex<Option<String>>,
}

impl Channel {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_reason(&self, why: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(why.into());
        }
    }

    /// Closes the local side: wakes the channel thread's read and any waiting writer.
    fn close_local(&self) {
        let mut st = self.state();
        if let State::Open(s) = &*st {
            let _ = s.shutdown(Shutdown::Both);
        }
        *st = State::Closed;
        self.cv.notify_all();
    }

    fn log_closed(&self) {
        let reason = self
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| "closed".to_owned());
        info!(
            "channel {} closed: 127.0.0.1:{}, {} bytes up, {} bytes down, {:.2} s ({reason})",
            self.stream,
            self.port,
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
            self.opened.elapsed().as_secs_f64()
        );
    }
}

/// Totals over the life of a [`Channels`] table.
#[derive(Debug, Default)]
pub struct Totals {
    /// Channels opened.
    pub opened: AtomicU64,
    /// Channels open now.
    pub open: AtomicU64,
    /// Payload bytes sent to the proxy.
    pub up: AtomicU64,
    /// Payload bytes received from the proxy.
    pub down: AtomicU64,
    /// Repeatable warnings, rate-limited and counted.
    pub noise: super::noise::Noise,
}

struct Shared {
    map: Mutex<HashMap<u32, Arc<Channel>>>,
    tx: FrameSender,
    live: Arc<Live>,
    totals: Arc<Totals>,
    /// Channel threads still running.
    threads: AtomicUsize,
}

impl Shared {
    fn map(&self) -> MutexGuard<'_, HashMap<u32, Arc<Channel>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes `ch` if it is still the channel for its stream id; returns whether it did.
    fn remove_if_current(&self, ch: &Arc<Channel>) -> bool {
        let mut map = self.map();
        match map.get(&ch.stream) {
            Some(cur) if Arc::ptr_eq(cur, ch) => {
                map.remove(&ch.stream);
                self.totals.open.store(map.len() as u64, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The local side failed or ended: drop the channel and tell the proxy with `C`.
    fn end_locally(&self, ch: &Arc<Channel>, why: String) {
        ch.set_reason(why);
        ch.close_local();
        if self.remove_if_current(ch) {
            let _ = self.tx.send(close_frame(ch.stream));
        }
    }
}

/// The table of open channels of one control connection.
pub struct Channels {
    shared: Arc<Shared>,
}

impl Channels {
    /// An empty table whose channels send frames through `tx`. The limits (allowed ports,
    /// max channels, connect timeout) are read from `live` at each request, so a reload
    /// applies them without reconnecting.
    pub fn new(tx: FrameSender, live: Arc<Live>, totals: Arc<Totals>) -> Self {
        Channels {
            shared: Arc::new(Shared {
                map: Mutex::new(HashMap::new()),
                tx,
                live,
                totals,
                threads: AtomicUsize::new(0),
            }),
        }
    }

    /// Number of open channels.
    pub fn len(&self) -> usize {
        self.shared.map().len()
    }

    /// Whether no channel is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `N`: opens a channel to `127.0.0.1:port` on its own thread; never blocks on the connect.
    /// A port outside `allowed_ports`, or one channel too many, is answered with `C` at once.
    pub fn open(&self, stream: u32, port: u16) {
        let limits = self.shared.live.get();
        let noise = &self.shared.totals.noise;
        if !limits.allowed_ports.value.contains(&port) {
            if noise.allow(Cause::PortNotAllowed) {
                warn!(
                "refusing channel {stream}: the proxy asked for local port {port}, which is not in \
                 allowed_ports {:?}; answered with close",
                    limits.allowed_ports.value
                );
            }
            let _ = self.shared.tx.send(close_frame(stream));
            return;
        }
        let open = self.len();
        if open >= limits.max_channels && !self.shared.map().contains_key(&stream) {
            if noise.allow(Cause::OverMaxChannels) {
                warn!(
                    "refusing channel {stream} to port {port}: {open} channels are open, the \
                     limit (max_channels) is {}; answered with close",
                    limits.max_channels
                );
            }
            let _ = self.shared.tx.send(close_frame(stream));
            return;
        }
        let ch = Arc::new(Channel {
            stream,
            port,
            opened: Instant::now(),
            state: Mutex::new(State::Connecting {
                pending: Vec::new(),
            }),
            cv: Condvar::new(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            reason: Mutex::new(None),
        });
        let replaced = {
            let mut map = self.shared.map();
            let old = map.insert(stream, ch.clone());
            self.shared
                .totals
                .open
                .store(map.len() as u64, Ordering::Relaxed);
            old
        };
        if let Some(old) = replaced {
            if self.shared.totals.noise.allow(Cause::Reopened) {
                warn!(
                    "proxy reopened stream {stream} without closing it first; closing the old \
                     channel"
                );
            }
            old.set_reason("replaced by a new channel with the same stream id");
            old.close_local();
        }
        self.shared.totals.opened.fetch_add(1, Ordering::Relaxed);
        debug!("channel {stream}: opening 127.0.0.1:{port}");
        let shared = self.shared.clone();
        let thread_ch = ch.clone();
        self.shared.threads.fetch_add(1, Ordering::Relaxed);
        let spawned = thread::Builder::new()
            .name(format!("channel-{stream}"))
            .stack_size(CHANNEL_STACK)
            .spawn(move || {
                run_channel(&shared, &thread_ch);
                drop(thread_ch);
                if shared.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The last channel of a burst: its buffers are free now.
                    crate::memory::release_free_heap();
                }
            });
        if let Err(e) = spawned {
            self.shared.threads.fetch_sub(1, Ordering::Relaxed);
            warn!("channel {stream}: cannot start a thread for it ({e}); refusing the channel");
            self.shared.end_locally(&ch, format!("no thread: {e}"));
            ch.log_closed();
        }
    }

    /// `D`: writes `payload` to the stream's local socket, or holds it while connecting.
    /// Data for an unknown stream is dropped (it happens in every close race).
    pub fn deliver(&self, stream: u32, payload: &[u8]) {
        let Some(ch) = self.shared.map().get(&stream).cloned() else {
            debug!(
                "dropping {} bytes for unknown stream {stream}",
                payload.len()
            );
            return;
        };
        let mut st = ch.state();
        loop {
            match &mut *st {
                State::Connecting { pending }
                    if pending.len() + payload.len() <= PENDING_MAX || pending.is_empty() =>
                {
                    pending.extend_from_slice(payload);
                    break;
                }
                State::Connecting { .. } => {
                    st = ch.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
                State::Open(sock) => {
                    // Write without holding the lock, so a close can interrupt a stuck write.
                    // Only the control loop writes once the channel is open: order is kept.
                    let sock = sock.clone();
                    drop(st);
                    if let Err(e) = (&*sock).write_all(payload) {
                        self.shared
                            .end_locally(&ch, format!("writing to the local service failed: {e}"));
                        return;
                    }
                    break;
                }
                State::Closed => return,
            }
        }
        ch.down.fetch_add(payload.len() as u64, Ordering::Relaxed);
        self.shared
            .totals
            .down
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
    }

    /// `C` from the proxy: closes the local socket. Unknown streams are ignored.
    pub fn close_from_proxy(&self, stream: u32) {
        let ch = {
            let mut map = self.shared.map();
            let ch = map.remove(&stream);
            self.shared
                .totals
                .open
                .store(map.len() as u64, Ordering::Relaxed);
            ch
        };
        match ch {
            Some(ch) => {
                ch.set_reason("closed by the proxy");
                ch.close_local();
            }
            None => debug!("close for unknown stream {stream} ignored"),
        }
    }

    /// Closes every channel; with `notify`, sends `C` for each so the proxy knows.
    pub fn close_all(&self, notify: bool, why: &str) {
        let all: Vec<Arc<Channel>> = self.shared.map().drain().map(|(_, c)| c).collect();
        self.shared.totals.open.store(0, Ordering::Relaxed);
        for ch in all {
            ch.set_reason(why);
            ch.close_local();
            if notify {
                let _ = self.shared.tx.send(close_frame(ch.stream));
            }
        }
    }
}

fn run_channel(shared: &Shared, ch: &Arc<Channel>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], ch.port));
    let timeout = shared.live.get().connect_timeout;
    let sock = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    "nothing listens there; is the service running?"
                }
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    "the service did not accept in time (connect_timeout)"
                }
                _ => "check the local service",
            };
            if shared.totals.noise.allow(Cause::LocalConnectFailed) {
                warn!(
                    "channel {}: cannot connect to 127.0.0.1:{}: {e}; {hint}",
                    ch.stream, ch.port
                );
            }
            shared.end_locally(ch, format!("local connect failed: {e}"));
            ch.log_closed();
            return;
        }
    };
    let _ = sock.set_nodelay(true);
    let sock = Arc::new(sock);
    {
        let mut st = ch.state();
        match std::mem::replace(&mut *st, State::Closed) {
            State::Connecting { pending } => {
                if let Err(e) = (&*sock).write_all(&pending) {
                    drop(st);
                    shared.end_locally(ch, format!("writing to the local service failed: {e}"));
                    ch.log_closed();
                    return;
                }
                *st = State::Open(sock.clone());
                ch.cv.notify_all();
            }
            // Closed by the proxy (or the session) while we were connecting.
            _ => {
                ch.cv.notify_all();
                drop(st);
                ch.log_closed();
                return;
            }
        }
    }
    info!("channel {} open: 127.0.0.1:{}", ch.stream, ch.port);
    let counters = [&ch.up, &shared.totals.up];
    let end = if shared.tx.splices() {
        crate::uplink::splice::pump(&sock, ch.stream, &shared.tx, &counters)
    } else {
        pump_to_frames(&*sock, ch.stream, &shared.tx, &counters)
    };
    let why = match end {
        PumpEnd::Eof => "closed by the local service".to_owned(),
        PumpEnd::ReadError(e) => format!("reading the local service failed: {e}"),
        PumpEnd::WriterGone => "control connection closed".to_owned(),
    };
    shared.end_locally(ch, why);
    ch.log_closed();
}
