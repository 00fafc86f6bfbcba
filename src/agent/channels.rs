//! The agent's tunnel channels: one per stream id. The channel's thread connects to
//! `127.0.0.1:<port>` and copies local bytes to the proxy; bytes from the proxy go the other
//! way through [`Channels::deliver`], called by the control loop.
//!
//! Down (proxy → local service), the control loop writes each payload straight to the local
//! socket, waiting at most `DIRECT_WAIT` for room. What the socket has not taken by then
//! waits in the channel's queue (at most [`QUEUE_MAX`]), which the channel's second thread
//! (`channel-<id>-d`, started the first time its service falls behind) writes out; so a
//! service that pauses does not hold the control loop while its queue has room. When the
//! queue is full the control loop waits for it: TCP backpressure on the one control
//! connection is the only flow control the Meeting protocol has, so one lagging service costs
//! the others time. The cost is bounded: a service that takes no byte for
//! `local_write_timeout` is closed with `C`, and one that reads slowly simply goes at its
//! pace. While the control loop waits it still stops at once on SIGTERM and when the proxy
//! resets the control connection.
//!
//! Bytes that arrive while the local connection is still being made wait in the same queue.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::noise::Cause;
use log::{debug, info, warn};

use crate::agent::Live;
use crate::protocol::frame::close_frame;
use crate::transport::tcp::{send_now, timed_out as is_timeout, unacked_bytes};
use crate::uplink::copy::{pump_to_frames, PumpEnd};
use crate::uplink::writer::{FrameSender, Lane};

/// Bytes from the proxy held for one channel at most (waiting for its local connection, or
/// for a local service that takes them slower than they come). With the piece being written,
/// a lagging channel holds at most twice this.
pub const QUEUE_MAX: usize = 64 * 1024;
/// How often a control loop waiting on a full queue looks at a stop request and at the
/// control connection.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// How long the control loop waits for room in a local socket before it queues the rest of a
/// payload: a service this quick (a fast reader whose socket buffer was full for a moment, or
/// that was not scheduled on a busy single-core board) is written to directly, without a copy
/// or a second thread; longer, and the others would wait on it.
const DIRECT_WAIT: Duration = Duration::from_millis(50);
/// A control loop kept waiting this long by a service that took nothing says so, once.
const STALL_NOTICE: Duration = Duration::from_secs(1);
/// Stack size of channel threads: they hold a 32 KiB heap buffer and little else.
const CHANNEL_STACK: usize = 128 * 1024;
/// Stack size of a channel's queue-draining thread.
const DRAIN_STACK: usize = 64 * 1024;

/// Why [`Channels::deliver`] stopped waiting for a local service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// A stop or a reconnect was asked for: the session ends.
    Stop,
    /// The proxy closed or reset the control connection.
    ProxyGone,
}

enum Link {
    Connecting,
    Open(Arc<TcpStream>),
    Closed,
}

/// The down direction of a channel, under its lock.
struct Down {
    link: Link,
    /// Bytes from the proxy not yet written to the local socket, in order.
    queue: Vec<u8>,
    /// Bytes the drain thread took from `queue` and is still writing.
    in_flight: usize,
    /// The drain thread was started.
    draining: bool,
    /// The proxy closed the stream: close the local side once everything held is written.
    close_when_drained: bool,
    /// Last time the local socket took bytes (or the channel opened).
    progress: Instant,
    /// The socket's write timeout now: [`DIRECT_WAIT`] for the control loop's writes, a
    /// slice of `local_write_timeout` for the drain thread's.
    write_timeout: Duration,
}

impl Down {
    /// Bytes held for the local service.
    fn held(&self) -> usize {
        self.queue.len() + self.in_flight
    }
}

struct Channel {
    stream: u32,
    /// Every frame of this stream goes through it, so its close follows its data.
    lane: Lane,
    port: u16,
    opened: Instant,
    down: Mutex<Down>,
    cv: Condvar,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Why the channel closed, set by whoever closed it first.
    reason: Mutex<Option<String>>,
}

impl Channel {
    fn down(&self) -> MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_reason(&self, why: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(why.into());
        }
    }

    /// Closes the local side and drops what is held for it: wakes the channel thread's read,
    /// the drain thread and a waiting control loop.
    fn close_local(&self) {
        let mut d = self.down();
        Self::close_locked(&mut d);
        self.cv.notify_all();
    }

    fn close_locked(d: &mut Down) {
        if let Link::Open(s) = &d.link {
            let _ = s.shutdown(Shutdown::Both);
        }
        d.link = Link::Closed;
        d.queue = Vec::new();
    }

    /// After bytes were written: closes the local side if the proxy closed the stream and
    /// nothing is left to write.
    fn close_if_drained(&self, d: &mut Down) {
        if d.close_when_drained && d.held() == 0 {
            Self::close_locked(d);
        }
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
            self.bytes_up.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
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
    /// Channel and drain threads still running.
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
            let _ = ch.lane.send_last(close_frame(ch.stream));
        }
    }

    /// Counts `n` bytes written to the local socket.
    fn delivered(&self, ch: &Channel, n: usize) {
        if n > 0 {
            ch.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
            self.totals.down.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Runs `f` on a new thread counted in `threads`; when the last one ends, free heap is
    /// given back.
    fn spawn(
        self: &Arc<Self>,
        name: String,
        stack: usize,
        f: impl FnOnce(&Arc<Shared>) + Send + 'static,
    ) -> io::Result<()> {
        let shared = self.clone();
        self.threads.fetch_add(1, Ordering::Relaxed);
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                f(&shared);
                if shared.threads.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The last thread of a burst: its buffers are free now.
                    crate::memory::release_free_heap();
                }
            });
        if spawned.is_err() {
            self.threads.fetch_sub(1, Ordering::Relaxed);
        }
        spawned.map(drop)
    }

    /// Has the drain thread write the queue out, starting it if this is the first time.
    /// `false`: it could not be started (the caller ends the channel).
    fn drain(self: &Arc<Self>, ch: &Arc<Channel>, d: &mut Down) -> bool {
        if d.draining {
            ch.cv.notify_all();
            return true;
        }
        debug!(
            "channel {}: the local service takes data slower than it comes; queueing it",
            ch.stream
        );
        let thread_ch = ch.clone();
        let name = format!("channel-{}-d", ch.stream);
        match self.spawn(name, DRAIN_STACK, move |s| drain(s, &thread_ch)) {
            Ok(()) => {
                d.draining = true;
                true
            }
            Err(e) => {
                warn!(
                    "channel {}: cannot start a thread to write to 127.0.0.1:{} ({e}); closing \
                     the channel",
                    ch.stream, ch.port
                );
                false
            }
        }
    }
}

/// The table of open channels of one control connection.
pub struct Channels {
    shared: Arc<Shared>,
}

impl Channels {
    /// An empty table whose channels send frames through `tx`. The limits (allowed ports,
    /// max channels, connect and write timeouts) are read from `live` at each use, so a reload
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
        let noise = &self.shared.totals.noise;
        let open_ports = self.shared.live.open_ports();
        if !open_ports.iter().any(|(p, _)| *p == port) {
            if noise.allow(Cause::PortNotAllowed) {
                warn!(
                    "refusing channel {stream}: the proxy asked for local port {port}, which no \
                     service Meeting grants uses and allowed_ports does not name (open: {}); \
                     answered with close",
                    super::services::shown(&open_ports)
                );
            }
            let _ = self.shared.tx.send(close_frame(stream));
            return;
        }
        let limits = self.shared.live.get();
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
            lane: self.shared.tx.lane(),
            port,
            opened: Instant::now(),
            down: Mutex::new(Down {
                link: Link::Connecting,
                queue: Vec::new(),
                in_flight: 0,
                draining: false,
                close_when_drained: false,
                progress: Instant::now(),
                write_timeout: Duration::ZERO,
            }),
            cv: Condvar::new(),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
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
        let thread_ch = ch.clone();
        let name = format!("channel-{stream}");
        if let Err(e) = self
            .shared
            .spawn(name, CHANNEL_STACK, move |s| run_channel(s, &thread_ch))
        {
            warn!("channel {stream}: cannot start a thread for it ({e}); refusing the channel");
            self.shared.end_locally(&ch, format!("no thread: {e}"));
            ch.log_closed();
        }
    }

    /// `D`: hands `payload` to the stream's local service. What the socket does not take at
    /// once is queued; while the queue is full this waits, looking at `interrupted` every
    /// `WAIT_SLICE`: on [`Interrupt::ProxyGone`] the channel is closed (its bytes cannot be
    /// delivered any more) and the session goes on reading; [`Interrupt::Stop`] is returned.
    /// Data for an unknown stream is dropped (it happens in every close race).
    pub fn deliver(
        &self,
        stream: u32,
        payload: &[u8],
        interrupted: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<(), Interrupt> {
        let Some(ch) = self.shared.map().get(&stream).cloned() else {
            debug!(
                "dropping {} bytes for unknown stream {stream}",
                payload.len()
            );
            return Ok(());
        };
        let mut d = ch.down();
        let rest = match self.write_direct(&ch, &mut d, payload) {
            Ok(rest) => rest,
            Err(why) => {
                drop(d);
                self.shared.end_locally(&ch, why);
                return Ok(());
            }
        };
        if rest.is_empty() {
            return Ok(());
        }
        self.queue_and_wait(&ch, d, rest, interrupted)
    }

    /// The fast path: with nothing ahead of `payload`, straight to the socket, the kernel
    /// waiting for room at most `DIRECT_WAIT`. Returns what is left for the queue (all of it
    /// when something is queued or the socket is not open yet), or why the service failed.
    fn write_direct<'p>(
        &self,
        ch: &Arc<Channel>,
        d: &mut Down,
        payload: &'p [u8],
    ) -> Result<&'p [u8], String> {
        let mut rest = payload;
        let (Link::Open(sock), 0) = (&d.link, d.held()) else {
            return Ok(rest);
        };
        let sock = sock.clone();
        if d.write_timeout != DIRECT_WAIT {
            let _ = sock.set_write_timeout(Some(DIRECT_WAIT));
            d.write_timeout = DIRECT_WAIT;
        }
        // The clock is read only once a write came back short (rare): each write waits at
        // most DIRECT_WAIT, and the ones after it share one more DIRECT_WAIT.
        let mut deadline = None;
        while !rest.is_empty() {
            if deadline.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            match (&*sock).write(rest) {
                Ok(n) if n > 0 => {
                    self.shared.delivered(ch, n);
                    rest = &rest[n..];
                    deadline.get_or_insert_with(|| Instant::now() + DIRECT_WAIT);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => break,
                Err(e) => return Err(format!("writing to the local service failed: {e}")),
                Ok(_) => return Err("the local service stopped taking data".to_owned()),
            }
        }
        Ok(rest)
    }

    /// The slow path: `rest` goes to the channel's queue, drained by its own thread; while
    /// the queue is full this waits for the local service in slices, says once that it
    /// stalls, and gives up when `interrupted` says so.
    fn queue_and_wait(
        &self,
        ch: &Arc<Channel>,
        mut d: MutexGuard<'_, Down>,
        mut rest: &[u8],
        interrupted: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<(), Interrupt> {
        let mut waiting: Option<(Instant, Instant)> = None;
        let mut told = false;
        while !rest.is_empty() {
            if let Link::Closed = d.link {
                return Ok(());
            }
            let room = QUEUE_MAX.saturating_sub(d.held());
            if room > 0 {
                if d.held() == 0 {
                    // Falling behind starts now: the stall notice counts from here.
                    d.progress = Instant::now();
                }
                if d.queue.capacity() == 0 && matches!(d.link, Link::Open(_)) {
                    // Falling behind: one allocation for as long as it lasts.
                    d.queue.reserve_exact(QUEUE_MAX);
                }
                let take = room.min(rest.len());
                d.queue.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if let Link::Open(_) = d.link {
                    if !self.shared.drain(ch, &mut d) {
                        drop(d);
                        self.shared
                            .end_locally(ch, "no thread to write to the local service".into());
                        return Ok(());
                    }
                }
                continue;
            }
            // Full: wait for the local service (or the connect), in slices.
            let now = Instant::now();
            let (since, checked) = waiting.get_or_insert((now, now));
            if now.duration_since(*checked) >= WAIT_SLICE {
                *checked = now;
                let since = *since;
                if let Some(why) = interrupted() {
                    drop(d);
                    if why == Interrupt::ProxyGone {
                        self.proxy_gone_while_waiting(ch, since);
                        return Ok(());
                    }
                    return Err(why);
                }
            }
            if !told && matches!(d.link, Link::Open(_)) && d.progress.elapsed() >= STALL_NOTICE {
                told = true;
                self.say_stalled(ch, &d);
            }
            d = ch
                .cv
                .wait_timeout(d, WAIT_SLICE)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// A local service has taken nothing for `STALL_NOTICE` while bytes wait for it.
    fn say_stalled(&self, ch: &Channel, d: &Down) {
        if !self.shared.totals.noise.allow(Cause::LocalStalled) {
            return;
        }
        let limit = self.shared.live.get().local_write_timeout;
        warn!(
            "channel {}: the local service at 127.0.0.1:{} has taken no data for {:.1} s and {} \
             bytes wait for it; every channel waits meanwhile (it is closed after \
             local_write_timeout, {} s, without progress)",
            ch.stream,
            ch.port,
            d.progress.elapsed().as_secs_f64(),
            d.held(),
            limit.as_secs_f64()
        );
    }

    /// The control connection ended while the control loop waited on `ch`'s full queue:
    /// what it holds can never be completed, so the channel is closed and the loss said.
    fn proxy_gone_while_waiting(&self, ch: &Arc<Channel>, since: Instant) {
        let held = ch.down().held();
        if self.shared.totals.noise.allow(Cause::LocalStuck) {
            warn!(
                "channel {}: the proxy closed or reset the control connection while {held} bytes \
                 for 127.0.0.1:{} waited {:.1} s for the local service; closing the channel",
                ch.stream,
                ch.port,
                since.elapsed().as_secs_f64()
            );
        }
        self.shared.end_locally(
            ch,
            format!("control connection lost with {held} bytes undelivered"),
        );
    }

    /// `C` from the proxy: closes the local socket once what is held for it is written.
    /// Unknown streams are ignored.
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
        let Some(ch) = ch else {
            debug!("close for unknown stream {stream} ignored");
            return;
        };
        ch.set_reason("closed by the proxy");
        let mut d = ch.down();
        if d.held() == 0 {
            drop(d);
            ch.close_local();
            return;
        }
        // Bytes are still on their way: the local service gets them, then end of file. The
        // proxy wants nothing more from it, so reading stops now.
        d.close_when_drained = true;
        if let Link::Open(s) = &d.link {
            let _ = s.shutdown(Shutdown::Read);
        }
    }

    /// Closes every channel at once, dropping what is held for them; with `notify`, sends `C`
    /// for each so the proxy knows.
    pub fn close_all(&self, notify: bool, why: &str) {
        let all: Vec<Arc<Channel>> = self.shared.map().drain().map(|(_, c)| c).collect();
        self.shared.totals.open.store(0, Ordering::Relaxed);
        for ch in all {
            ch.set_reason(why);
            ch.close_local();
            if notify {
                let _ = ch.lane.send_last(close_frame(ch.stream));
            }
        }
    }
}

/// A channel's drain thread: writes its queue to the local socket, blocking, until the
/// channel closes. A service that takes no byte for `local_write_timeout` is closed.
///
/// Progress is the service reading, not our writes returning: the kernel wakes a blocked
/// writer only once much of its send buffer is free, which for a service reading 1 MB/s can
/// take seconds. So writes wait at most [`WAIT_SLICE`] at a time, and in between the bytes
/// the service has not acknowledged yet (`SIOCOUTQ`) say whether it read any.
fn drain(shared: &Arc<Shared>, ch: &Arc<Channel>) {
    let mut spare = Vec::new();
    loop {
        let limit = shared.live.get().local_write_timeout;
        let slice = limit.min(WAIT_SLICE);
        let (sock, mut chunk) = {
            let mut d = ch.down();
            loop {
                match &d.link {
                    Link::Closed => return,
                    Link::Open(s) if !d.queue.is_empty() => {
                        let s = s.clone();
                        if d.write_timeout != slice {
                            let _ = s.set_write_timeout(Some(slice));
                            d.write_timeout = slice;
                        }
                        let chunk = std::mem::replace(&mut d.queue, spare);
                        d.in_flight = chunk.len();
                        break (s, chunk);
                    }
                    _ => {}
                }
                d = ch.cv.wait(d).unwrap_or_else(|p| p.into_inner());
            }
        };
        let mut written = 0;
        let mut since = Instant::now();
        // Bytes the service had not acknowledged at the last write that timed out.
        let mut unacked = None;
        while written < chunk.len() {
            let result = (&*sock).write(&chunk[written..]);
            let waited = matches!(&result, Err(e) if is_timeout(e));
            match result {
                Ok(n) if n > 0 => {
                    written += n;
                    since = Instant::now();
                    unacked = None;
                    let mut d = ch.down();
                    d.in_flight -= n;
                    d.progress = since;
                    shared.delivered(ch, n);
                    ch.cv.notify_all();
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                _ if waited => {
                    let now = unacked_bytes(&sock);
                    if matches!((now, unacked), (Some(a), Some(b)) if a < b) {
                        // The service read some: slow, not stuck.
                        since = Instant::now();
                        ch.down().progress = since;
                    }
                    unacked = now;
                    if since.elapsed() < limit && !matches!(ch.down().link, Link::Closed) {
                        continue;
                    }
                }
                _ => {}
            }
            let d = ch.down();
            if let Link::Closed = d.link {
                return; // closed by the proxy or the session; nothing to say
            }
            let held = d.held();
            drop(d);
            let why = match result {
                _ if waited => stuck(shared, ch, held, since.elapsed()),
                Err(e) => format!("writing to the local service failed: {e}"),
                Ok(_) => "the local service stopped taking data".to_owned(),
            };
            shared.end_locally(ch, why);
            return;
        }
        chunk.clear();
        let mut d = ch.down();
        if d.queue.is_empty() {
            // Caught up: give the buffers back until the service falls behind again.
            d.queue = Vec::new();
            spare = Vec::new();
        } else {
            spare = chunk;
        }
        ch.close_if_drained(&mut d);
    }
}

/// The WARN for a local service that took nothing for `local_write_timeout`; the reason
/// the channel closed.
fn stuck(shared: &Shared, ch: &Channel, held: usize, idle: Duration) -> String {
    if shared.totals.noise.allow(Cause::LocalStuck) {
        warn!(
            "channel {}: the local service at 127.0.0.1:{} took no data for {:.1} s \
             (local_write_timeout); closed the channel, {held} bytes from the proxy were not \
             delivered. Is the service hung? The other channels go on.",
            ch.stream,
            ch.port,
            idle.as_secs_f64()
        );
    }
    format!(
        "local service took no data for {:.1} s, {held} bytes undelivered",
        idle.as_secs_f64()
    )
}

fn run_channel(shared: &Arc<Shared>, ch: &Arc<Channel>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], ch.port));
    let timeout = shared.live.get().connect_timeout;
    let sock = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            let hint = match e.kind() {
                io::ErrorKind::ConnectionRefused => {
                    "nothing listens there; is the service running?"
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
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
        let mut d = ch.down();
        if !matches!(d.link, Link::Connecting) {
            // Closed by the proxy (or the session) while we were connecting.
            drop(d);
            ch.log_closed();
            return;
        }
        d.link = Link::Open(sock.clone());
        d.progress = Instant::now();
        if d.close_when_drained {
            // The proxy closed the stream while we connected: deliver, read nothing.
            let _ = sock.shutdown(Shutdown::Read);
        }
        if !d.queue.is_empty() {
            // What came while connecting: what the socket takes now, the rest by the drain
            // thread.
            match send_now(&sock, &d.queue) {
                Ok(n) => {
                    d.queue.drain(..n);
                    shared.delivered(ch, n);
                    if d.queue.is_empty() {
                        d.queue = Vec::new();
                    }
                }
                Err(e) => {
                    drop(d);
                    shared.end_locally(ch, format!("writing to the local service failed: {e}"));
                    ch.log_closed();
                    return;
                }
            }
            if !d.queue.is_empty() && !shared.drain(ch, &mut d) {
                drop(d);
                shared.end_locally(ch, "no thread to write to the local service".into());
                ch.log_closed();
                return;
            }
        }
        ch.close_if_drained(&mut d);
    }
    info!("channel {} open: 127.0.0.1:{}", ch.stream, ch.port);
    let counters = [&ch.bytes_up, &shared.totals.up];
    let end = pump_to_frames(&*sock, ch.stream, &ch.lane, &counters);
    let why = match end {
        PumpEnd::Eof => "closed by the local service".to_owned(),
        PumpEnd::ReadError(e) => format!("reading the local service failed: {e}"),
        PumpEnd::WriterGone => "control connection closed".to_owned(),
    };
    // The proxy closed the stream with bytes still on their way: the drain thread closes the
    // channel once they are written (or the service is declared stuck); wait for it, so the
    // closing line has the final counts.
    let mut d = ch.down();
    if d.close_when_drained {
        while !matches!(d.link, Link::Closed) {
            d = ch.cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
        drop(d);
    } else {
        drop(d);
        shared.end_locally(ch, why);
    }
    ch.log_closed();
}
