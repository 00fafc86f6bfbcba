//! The agent's tunnel channels: one per stream id. The channel's thread connects to
//! `127.0.0.1:<port>` and copies local bytes to the proxy; bytes from the proxy go the other
//! way through [`Channels::deliver`], called by the control loop, into the channel's
//! [`StreamSink`] (the same sink meeting-proxy uses toward its public clients).
//!
//! Down (proxy → local service), the sink writes each payload straight to the local socket,
//! waiting at most `DIRECT_WAIT` for room; what the socket has not taken by then waits in the
//! channel's queue (at most [`QUEUE_MAX`]), written out by the channel's second thread
//! (`channel-<id>-d`, started the first time its service falls behind). So a service that
//! pauses does not hold the control loop while its queue has room. When the queue is full the
//! control loop waits for it: TCP backpressure on the one control connection is the only flow
//! control the Meeting protocol has, so one lagging service costs the others time. The cost is
//! bounded: a service that takes no byte for `local_write_timeout` is closed with `C` (the
//! setting in force when the channel opened), and one that reads slowly simply goes at its
//! pace. While the control loop waits it still stops at once on SIGTERM and when the proxy
//! resets the control connection. A `C` from the proxy closes the local socket only once
//! everything held for it is written.
//!
//! Where the proxy announced windows (docs/protocol.md, "Windows") none of that waiting
//! happens: the proxy sends a stream at most a window (within the queue's size) before the
//! channel grants more, which it does as its service takes the bytes; the control loop writes
//! only what a local socket takes within `WINDOWED_DIRECT_WAIT` (2 ms) and queues the rest.
//! Up, the channel's thread sends at most a window before the proxy grants more. So a slow
//! service or a slow public client slows only its own channel.
//!
//! Bytes that arrive while the local connection is still being made wait in the same queue.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::noise::Cause;
use super::status::Totals;
use log::{debug, info, warn};

use crate::agent::Live;
use crate::downlink::sink::{
    Cut, CutReason, FullQueue, Owner, SinkSettings, Stall, StreamSink, Undelivered,
};
use crate::protocol::frame::{close_frame, window_frame};
use crate::uplink::copy::{pump_to_frames, PumpEnd};
use crate::uplink::window::Credit;
use crate::uplink::writer::{FrameSender, Lane};

/// Bytes from the proxy held for one channel at most (waiting for its local connection, or
/// for a local service that takes them slower than they come), the piece being written
/// included.
pub const QUEUE_MAX: usize = 64 * 1024;
/// With windows, a channel grants the proxy more each time this fraction of a window reached
/// its service: one 13-byte `W` frame per half window.
pub const GRANT_FRACTION: usize = 2;
/// With windows, a channel whose service keeps up lets the proxy's window grow to this many
/// times the window agreed (docs/protocol.md, "Windows"); a slow service's never grows.
pub const WINDOW_GROWTH: usize = 4;
/// How long the control loop waits for room in a local socket before it queues the rest of a
/// payload: a service this quick (a fast reader whose socket buffer was full for a moment, or
/// that was not scheduled on a busy single-core board) is written to directly, without a copy
/// or a second thread; longer, and the others would wait on it.
const DIRECT_WAIT: Duration = Duration::from_millis(50);
/// With windows, how long the control loop waits for room in a local socket: a service that
/// reads as fast as it can but was not scheduled for a moment is still written to directly
/// (no copy, no second thread), and a slow one costs the others no more than this now and
/// then (its queue, as large as its window, takes the rest).
const WINDOWED_DIRECT_WAIT: Duration = Duration::from_millis(2);
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

struct Channel {
    stream: u32,
    /// Every frame of this stream goes through it, so its close follows its data.
    lane: Lane,
    port: u16,
    opened: Instant,
    /// The way down, to the local service.
    sink: Arc<StreamSink>,
    /// The way up's window, where windows were agreed (tied to the sink: it ends with it).
    window: Option<Arc<Credit>>,
    bytes_up: AtomicU64,
    /// Why the channel closed, set by whoever closed it first.
    reason: Mutex<Option<String>>,
}

impl Channel {
    /// The way up stops waiting for room: the stream is over.
    fn end_window(&self) {
        if let Some(w) = &self.window {
            w.close();
        }
    }

    fn set_reason(&self, why: impl Into<String>) {
        let mut r = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(why.into());
        }
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
            self.sink.delivered(),
            self.opened.elapsed().as_secs_f64()
        );
    }

    /// The reason a cut gives the closing line; a service that took nothing is also said at
    /// WARN.
    fn cut_reason(&self, cut: &Cut, noise: &super::noise::Noise) -> String {
        match &cut.reason {
            CutReason::Idle(idle) => {
                if noise.allow(Cause::LocalStuck) {
                    warn!(
                        "channel {}: the local service at 127.0.0.1:{} took no data for {:.1} s \
                         (local_write_timeout); closed the channel, {} bytes from the proxy were \
                         not delivered. Is the service hung? The other channels go on.",
                        self.stream,
                        self.port,
                        idle.as_secs_f64(),
                        cut.undelivered
                    );
                }
                format!(
                    "local service took no data for {:.1} s, {} bytes undelivered",
                    idle.as_secs_f64(),
                    cut.undelivered
                )
            }
            CutReason::WriteFailed(e) => format!(
                "writing to the local service failed: {e}, {} bytes undelivered",
                cut.undelivered
            ),
            CutReason::NoThread(e) => format!("no thread to write to the local service: {e}"),
            CutReason::NoRoom { .. } | CutReason::Ended(_) => cut.to_string(),
        }
    }
}

/// The channel threads of one table, counted: when the last one ends, free heap is given
/// back. Also what the sinks report to.
struct Threads {
    running: Arc<AtomicUsize>,
    totals: Arc<Totals>,
    /// Where the grants go.
    tx: FrameSender,
}

impl Owner for Threads {
    fn delivered(&self, n: usize) {
        self.totals.down.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn grant(&self, stream: u32, bytes: u32) -> bool {
        // Behind what is queued, never waiting: the control loop may be the one granting.
        self.tx.send_eager(window_frame(stream, bytes)).is_ok()
    }

    fn spawn(&self, name: String, stack: usize, f: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        let running = self.running.clone();
        running.fetch_add(1, Ordering::Relaxed);
        let spawned = thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(move || {
                f();
                if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                    // The last thread of a burst: its buffers are free now.
                    crate::memory::release_free_heap();
                }
            });
        if spawned.is_err() {
            self.running.fetch_sub(1, Ordering::Relaxed);
        }
        spawned.map(drop)
    }
}

struct Shared {
    map: Mutex<HashMap<u32, Arc<Channel>>>,
    tx: FrameSender,
    live: Arc<Live>,
    totals: Arc<Totals>,
    threads: Arc<Threads>,
    /// The window agreed with the proxy, in bytes; 0: none.
    window: AtomicU32,
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
        ch.sink.abort(&why);
        ch.set_reason(why);
        if self.remove_if_current(ch) {
            let _ = ch.lane.send_last(close_frame(ch.stream));
        }
    }

    /// The sink of a new channel to `stream`, with the settings in force now, and its way
    /// up's window if windows were agreed.
    fn sink(&self, stream: u32) -> (Arc<StreamSink>, Option<Arc<Credit>>) {
        let window = self.window.load(Ordering::Relaxed) as usize;
        let mut settings = SinkSettings {
            queue_max: QUEUE_MAX,
            direct_wait: DIRECT_WAIT,
            full: FullQueue::WaitWhileProgress,
            idle_limit: self.live.get().local_write_timeout,
            stack: DRAIN_STACK,
            name: "channel",
            grant_every: 0,
            grow_to: 0,
        };
        if window > 0 {
            // The proxy sends at most a window ahead of the grants (grown at most to
            // `WINDOW_GROWTH` times the first): it always fits, and the control loop waits
            // on this service at most WINDOWED_DIRECT_WAIT.
            settings.queue_max = window * WINDOW_GROWTH;
            settings.direct_wait = WINDOWED_DIRECT_WAIT;
            settings.grant_every = window / GRANT_FRACTION;
            settings.grow_to = window * WINDOW_GROWTH;
        }
        let sink = StreamSink::connecting(stream, settings, self.threads.clone());
        let up = (window > 0).then(|| Arc::new(Credit::new(window as u32, true)));
        if let Some(up) = &up {
            sink.tie(up.clone());
        }
        (sink, up)
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
        let threads = Arc::new(Threads {
            running: Arc::new(AtomicUsize::new(0)),
            totals: totals.clone(),
            tx: tx.clone(),
        });
        Channels {
            shared: Arc::new(Shared {
                map: Mutex::new(HashMap::new()),
                tx,
                live,
                totals,
                threads,
                window: AtomicU32::new(0),
            }),
        }
    }

    /// Windows of `bytes` were agreed with the proxy: channels opened from now on keep to
    /// them and grant them.
    pub fn use_windows(&self, bytes: u32) {
        self.shared.window.store(bytes, Ordering::Relaxed);
    }

    /// `W` from the proxy: `bytes` more may go up on `stream`. Unknown streams are ignored
    /// (a grant may cross the stream's close).
    pub fn grant(&self, stream: u32, bytes: u32) {
        let ch = self.shared.map().get(&stream).cloned();
        if let Some(w) = ch.as_ref().and_then(|c| c.window.as_ref()) {
            w.grant(bytes);
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
        if !self.shared.live.may_open(port) {
            if noise.allow(Cause::PortNotAllowed) {
                warn!(
                    "refusing channel {stream}: the proxy asked for local port {port}, which no \
                     service Meeting grants uses and allowed_ports does not name (open: {}); \
                     answered with close",
                    super::services::shown(&self.shared.live.open_ports())
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
        let (sink, window) = self.shared.sink(stream);
        let ch = Arc::new(Channel {
            stream,
            lane: self.shared.tx.lane(),
            port,
            opened: Instant::now(),
            sink,
            window,
            bytes_up: AtomicU64::new(0),
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
            let why = "replaced by a new channel with the same stream id";
            old.set_reason(why);
            old.sink.abort(why);
        }
        self.shared.totals.opened.fetch_add(1, Ordering::Relaxed);
        debug!("channel {stream}: opening 127.0.0.1:{port}");
        let (shared, thread_ch) = (self.shared.clone(), ch.clone());
        let started = self.shared.threads.spawn(
            format!("channel-{stream}"),
            CHANNEL_STACK,
            Box::new(move || run_channel(&shared, &thread_ch)),
        );
        if let Err(e) = started {
            warn!("channel {stream}: cannot start a thread for it ({e}); refusing the channel");
            self.shared.end_locally(&ch, format!("no thread: {e}"));
            ch.log_closed();
        }
    }

    /// `D`: hands `payload` to the stream's local service through its sink. While the queue
    /// is full this waits, looking at `interrupted` every slice: on [`Interrupt::ProxyGone`]
    /// the channel is closed (its bytes cannot be delivered any more) and the session goes on
    /// reading; [`Interrupt::Stop`] is returned. Data for an unknown stream is dropped (it
    /// happens in every close race).
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
        let mut told = false;
        let mut last: Option<Stall> = None;
        let mut check = |stall: &Stall| {
            if !told && stall.open && stall.idle >= STALL_NOTICE {
                told = true;
                self.say_stalled(&ch, stall);
            }
            last = Some(*stall);
            interrupted()
        };
        match ch.sink.deliver(payload, &mut check) {
            Ok(()) | Err(Undelivered::Ended) => Ok(()),
            Err(Undelivered::Cut(cut)) => {
                let why = ch.cut_reason(&cut, &self.shared.totals.noise);
                self.shared.end_locally(&ch, why);
                Ok(())
            }
            Err(Undelivered::Interrupted(Interrupt::ProxyGone)) => {
                self.proxy_gone_while_waiting(&ch, last.map_or(Duration::ZERO, |s| s.waited));
                Ok(())
            }
            Err(Undelivered::Interrupted(Interrupt::Stop)) => Err(Interrupt::Stop),
        }
    }

    /// A local service has taken nothing for `STALL_NOTICE` while bytes wait for it.
    fn say_stalled(&self, ch: &Channel, stall: &Stall) {
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
            stall.idle.as_secs_f64(),
            stall.held,
            limit.as_secs_f64()
        );
    }

    /// The control connection ended while the control loop waited `waited` on `ch`'s full
    /// queue: what it holds can never be completed, so the channel is closed and the loss said.
    fn proxy_gone_while_waiting(&self, ch: &Arc<Channel>, waited: Duration) {
        let held = ch.sink.held();
        if self.shared.totals.noise.allow(Cause::LocalStuck) {
            warn!(
                "channel {}: the proxy closed or reset the control connection while {held} bytes \
                 for 127.0.0.1:{} waited {:.1} s for the local service; closing the channel",
                ch.stream,
                ch.port,
                waited.as_secs_f64()
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
        ch.sink.finish();
        ch.end_window();
    }

    /// Closes every channel at once, dropping what is held for them; with `notify`, sends `C`
    /// for each so the proxy knows.
    pub fn close_all(&self, notify: bool, why: &str) {
        let all: Vec<Arc<Channel>> = self.shared.map().drain().map(|(_, c)| c).collect();
        self.shared.totals.open.store(0, Ordering::Relaxed);
        for ch in all {
            ch.set_reason(why);
            ch.sink.abort(why);
            if notify {
                let _ = ch.lane.send_last(close_frame(ch.stream));
            }
        }
    }
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
    // What came while connecting is written now (the rest by the drain thread).
    if !ch.sink.connected(sock.clone()) {
        // Closed by the proxy (or the session) while connecting, or the first write failed.
        if let Some(cut) = ch.sink.cut() {
            let why = ch.cut_reason(&cut, &shared.totals.noise);
            shared.end_locally(ch, why);
        }
        ch.log_closed();
        return;
    }
    info!("channel {} open: 127.0.0.1:{}", ch.stream, ch.port);
    let counters = [&ch.bytes_up, &shared.totals.up];
    let end = pump_to_frames(&*sock, ch.stream, &ch.lane, &counters, ch.window.as_deref());
    if shared.remove_if_current(ch) {
        // The local side ended first (or its sink cut it, which shut the socket).
        let why = match (ch.sink.cut(), end) {
            (Some(cut), _) => ch.cut_reason(&cut, &shared.totals.noise),
            (None, PumpEnd::Eof) => "closed by the local service".to_owned(),
            (None, PumpEnd::ReadError(e)) => format!("reading the local service failed: {e}"),
            (None, PumpEnd::WriterGone) => "control connection closed".to_owned(),
        };
        ch.sink.abort(&why);
        ch.set_reason(why);
        let _ = ch.lane.send_last(close_frame(ch.stream));
    } else if let Some(cut) = ch.sink.wait_ended() {
        // The proxy closed the stream with bytes still on their way: the sink closed the
        // socket once they were written, or cut it; the closing line has the final counts.
        let why = ch.cut_reason(&cut, &shared.totals.noise);
        ch.set_reason(why);
    }
    ch.sink.close_out(&sock);
    ch.log_closed();
}
