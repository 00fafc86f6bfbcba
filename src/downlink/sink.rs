//! One stream's sink: the payloads of its `D` frames, in order, to its socket.
//!
//! The connection's reader (the agent's control loop, meeting-proxy's device thread) calls
//! [`StreamSink::deliver`] for each payload. While nothing is held for the socket (nothing
//! queued, nothing in flight in the drain thread's hands), the payload is written straight to
//! it, waiting at most [`SinkSettings::direct_wait`] for room. What the socket does not take by
//! then waits in the stream's queue (at most [`SinkSettings::queue_max`]), which the stream's
//! own drain thread (started the first time its reader falls behind) writes out; once anything
//! is held, every later payload goes behind it, so bytes never overtake each other.
//!
//! When the queue is full the connection's reader waits for room, as [`FullQueue`] says: as
//! long as the socket makes progress (the agent: TCP backpressure on the one connection is the
//! only flow control the Meeting protocol has), or at most a bound, after which the stream is
//! cut (meeting-proxy: a public client must not hold its device). A socket that takes no byte
//! for [`SinkSettings::idle_limit`] while bytes wait for it is cut by the drain thread.
//! Progress is the peer reading, not our writes returning: the kernel wakes a blocked writer
//! only once much of its send buffer is free, which for a reader taking 1 MB/s can take
//! seconds, so drain writes wait at most [`WAIT_SLICE`] at a time, and in between the bytes
//! the peer has not acknowledged (`SIOCOUTQ`) say whether it read any.
//!
//! A stream ends in one of three ways: [`StreamSink::finish`] (the other end closed it: the
//! socket is closed once everything held is written), [`StreamSink::abort`] (the owner ends it
//! now: what is held is dropped) or a cut by a bound or a failed write. Whatever was held and
//! not written is reported in the [`Cut`], which the owner words for its peer.
//!
//! Where the two ends agreed on windows (docs/protocol.md, "Windows"), the sink also grants:
//! each time [`SinkSettings::grant_every`] more bytes reached the socket, its owner sends a
//! `W` frame for them, so the peer never has more than a window on its way or held here, and
//! the queue (as large as the window) never makes the reader wait. A grant made while the
//! socket had taken everything (its reader keeps up: what limits the stream is the window and
//! the round trip) also doubles the stream's window, up to [`SinkSettings::grow_to`]; a slow
//! reader's window never grows.
//!
//! Bytes that arrive while the socket is still being connected ([`StreamSink::connecting`])
//! wait in the same queue.

use std::fmt;
use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::transport::tcp::{reset_on_close, send_now, timed_out, unacked_bytes, unread_bytes};
use crate::uplink::window::Credit;

/// How often a reader waiting on a full queue looks at what may interrupt it, and how long
/// one drain write waits before it looks whether the peer read anything.
pub const WAIT_SLICE: Duration = Duration::from_millis(100);

/// What a full queue does to the connection's reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullQueue {
    /// It waits as long as the socket takes bytes; [`SinkSettings::idle_limit`] cuts a socket
    /// that takes none.
    WaitWhileProgress,
    /// It waits at most this long for a payload to fit, then the stream is cut: a reader that
    /// trickles a byte now and then does not hold the connection.
    CutAfter(Duration),
}

/// Where the two sides' sinks deliberately differ.
#[derive(Debug, Clone, Copy)]
pub struct SinkSettings {
    /// Bytes held for the socket at most (queued and in flight).
    pub queue_max: usize,
    /// How long the reader's own write may wait for room before the rest is queued; zero: it
    /// writes only what the socket takes at once.
    pub direct_wait: Duration,
    /// What a full queue does to the reader.
    pub full: FullQueue,
    /// A socket that takes no byte for this long while bytes wait for it is cut.
    pub idle_limit: Duration,
    /// Stack size of the drain thread.
    pub stack: usize,
    /// The drain thread is named `<name>-<stream>-d`.
    pub name: &'static str,
    /// Bytes written to the socket between two grants ([`Owner::grant`]) while the window is
    /// the first one (then half the window the peer has); 0: no windows.
    pub grant_every: usize,
    /// The largest window this sink lets the peer have: each grant made while the socket had
    /// taken everything also doubles the window, up to this; at most `queue_max`.
    pub grow_to: usize,
}

/// What the side that owns a stream wants to know of its sink.
pub trait Owner: Send + Sync {
    /// `n` more bytes were written to the socket.
    fn delivered(&self, _n: usize) {}

    /// Sends a grant of `bytes` more for `stream` to the peer; `false` if it cannot yet (the
    /// bytes are granted with the next ones).
    fn grant(&self, _stream: u32, _bytes: u32) -> bool {
        false
    }

    /// Runs `f` on a new thread named `name` with `stack` bytes of stack.
    fn spawn(&self, name: String, stack: usize, f: Box<dyn FnOnce() + Send>) -> io::Result<()> {
        thread::Builder::new()
            .name(name)
            .stack_size(stack)
            .spawn(f)
            .map(drop)
    }
}

/// An owner that wants nothing but its threads.
pub struct Plain;

impl Owner for Plain {}

/// Why a stream was cut.
#[derive(Debug, Clone)]
pub enum CutReason {
    /// The queue (this many bytes) was full and a payload found no room for this long.
    NoRoom {
        /// The queue's bound.
        queue: usize,
        /// How long the payload waited.
        waited: Duration,
    },
    /// The socket took no byte for this long while bytes waited for it.
    Idle(Duration),
    /// Writing to the socket failed.
    WriteFailed(Arc<io::Error>),
    /// No thread could be started to write the queue out.
    NoThread(Arc<io::Error>),
    /// The owner ended the stream with bytes still held: why.
    Ended(String),
}

impl fmt::Display for CutReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CutReason::NoRoom { queue, waited } => write!(
                f,
                "no room in its queue ({queue} bytes) for {} s",
                waited.as_secs_f64().round()
            ),
            CutReason::Idle(d) => write!(f, "it took no data for {:.1} s", d.as_secs_f64()),
            CutReason::WriteFailed(e) => write!(f, "writing to it failed: {e}"),
            CutReason::NoThread(e) => write!(f, "no thread to write its queue: {e}"),
            CutReason::Ended(why) => f.write_str(why),
        }
    }
}

/// A stream ended before everything it held was written.
#[derive(Debug, Clone)]
pub struct Cut {
    /// Why.
    pub reason: CutReason,
    /// Bytes held for the socket and never written to it.
    pub undelivered: usize,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}; {} bytes not delivered",
            self.reason, self.undelivered
        )
    }
}

impl std::error::Error for Cut {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.reason {
            CutReason::WriteFailed(e) | CutReason::NoThread(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Why [`StreamSink::deliver`] did not deliver a payload.
#[derive(Debug)]
pub enum Undelivered<I> {
    /// The stream had ended already (finished, aborted or cut): the payload is dropped.
    Ended,
    /// Delivering it cut the stream.
    Cut(Cut),
    /// The reader's own check asked it to stop waiting for room.
    Interrupted(I),
}

/// What a reader waiting on a full queue is told every [`WAIT_SLICE`].
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    /// How long this payload has waited.
    pub waited: Duration,
    /// How long since the socket last took a byte (or opened).
    pub idle: Duration,
    /// Bytes held for the socket, this payload's rest included.
    pub held: usize,
    /// The socket is connected (not still being connected).
    pub open: bool,
}

enum Link {
    Connecting,
    Open(Arc<TcpStream>),
    Closed,
}

struct State {
    link: Link,
    /// Bytes not yet handed to the drain thread, in order.
    queue: Vec<u8>,
    /// Bytes the drain thread took from `queue` and is still writing.
    in_flight: usize,
    /// The drain thread was started.
    draining: bool,
    /// The other end closed the stream: close the socket once everything held is written.
    finishing: bool,
    /// Last time the socket took bytes (or opened, or the reader fell behind).
    progress: Instant,
    /// The socket's write timeout now (`direct_wait` for the reader's writes, a slice of
    /// `idle_limit` for the drain thread's).
    write_timeout: Duration,
    /// Why it ended early, if it did.
    cut: Option<Cut>,
    /// When reading stopped (finish or abort), the peer had sent bytes that will never be
    /// read: it is still sending, and may be blocked on a window that will not open again.
    peer_sending: bool,
    /// The window of the same stream's other way, closed when this way ends.
    up: Option<Arc<Credit>>,
}

impl State {
    fn held(&self) -> usize {
        self.queue.len() + self.in_flight
    }
}

/// The way from one stream's frames to its socket.
pub struct StreamSink {
    stream: u32,
    settings: SinkSettings,
    owner: Arc<dyn Owner>,
    state: Mutex<State>,
    /// Bytes were queued or written, or the link changed.
    cv: Condvar,
    delivered: AtomicU64,
    /// Written to the socket and not yet granted.
    ungranted: AtomicU64,
    /// The window the peer has now (grown from the first by grants beyond what was taken).
    window: AtomicU64,
}

impl StreamSink {
    /// A sink for `stream` whose socket is still being connected: payloads are queued until
    /// [`StreamSink::connected`].
    pub fn connecting(
        stream: u32,
        settings: SinkSettings,
        owner: Arc<dyn Owner>,
    ) -> Arc<StreamSink> {
        Self::with(stream, Link::Connecting, settings, owner)
    }

    /// A sink for `stream` writing to `sock`.
    pub fn open(
        stream: u32,
        sock: Arc<TcpStream>,
        settings: SinkSettings,
        owner: Arc<dyn Owner>,
    ) -> Arc<StreamSink> {
        Self::with(stream, Link::Open(sock), settings, owner)
    }

    fn with(
        stream: u32,
        link: Link,
        settings: SinkSettings,
        owner: Arc<dyn Owner>,
    ) -> Arc<StreamSink> {
        Arc::new(StreamSink {
            stream,
            settings,
            owner,
            state: Mutex::new(State {
                link,
                queue: Vec::new(),
                in_flight: 0,
                draining: false,
                finishing: false,
                progress: Instant::now(),
                write_timeout: Duration::ZERO,
                cut: None,
                peer_sending: false,
                up: None,
            }),
            cv: Condvar::new(),
            delivered: AtomicU64::new(0),
            ungranted: AtomicU64::new(0),
            window: AtomicU64::new(settings.grant_every as u64 * 2),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes written to the socket so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Bytes held for the socket now.
    pub fn held(&self) -> usize {
        self.lock().held()
    }

    /// Whether the stream has ended (finished and drained, aborted or cut).
    pub fn ended(&self) -> bool {
        matches!(self.lock().link, Link::Closed)
    }

    /// Why the stream was cut, once it was.
    pub fn cut(&self) -> Option<Cut> {
        self.lock().cut.clone()
    }

    /// `n` more bytes reached the socket; `caught_up`: it has taken everything held.
    fn count(&self, n: usize, caught_up: bool) {
        if n > 0 {
            self.delivered.fetch_add(n as u64, Ordering::Relaxed);
            self.owner.delivered(n);
            // Every half of the window the peer has now (a grown window, fewer grants).
            let every = match self.settings.grant_every {
                0 => return,
                _ => self.window.load(Ordering::Relaxed) / 2,
            };
            if self.ungranted.fetch_add(n as u64, Ordering::Relaxed) + n as u64 >= every {
                self.grant_growing(caught_up);
            }
        }
    }

    /// Grants the peer what was written and not yet granted, if its owner can.
    pub fn grant(&self) {
        self.grant_growing(false);
    }

    fn grant_growing(&self, grow: bool) {
        let n = self.ungranted.swap(0, Ordering::Relaxed);
        if n == 0 {
            return;
        }
        let now = self.window.load(Ordering::Relaxed);
        let more = match grow {
            true => now.min((self.settings.grow_to as u64).saturating_sub(now)),
            false => 0,
        };
        // A grant is at most what the peer may have unanswered: far under 4 GiB.
        let bytes = u32::try_from(n + more).unwrap_or(u32::MAX);
        if self.owner.grant(self.stream, bytes) {
            self.window.fetch_add(more, Ordering::Relaxed);
        } else {
            self.ungranted.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Ties the window of the stream's other way (the socket's bytes to the peer) to this
    /// sink: when the stream ends here (finished, aborted or cut), a pump waiting for that
    /// window stops, as it would at the socket's end.
    pub fn tie(&self, up: Arc<Credit>) {
        let mut st = self.lock();
        if matches!(st.link, Link::Closed) {
            up.close();
        }
        st.up = Some(up);
    }

    /// The socket is connected: what waited for it is written (what it takes at once; the
    /// drain thread writes the rest). `false` when the stream ended while connecting (the
    /// socket is not used) or at once.
    pub fn connected(self: &Arc<Self>, sock: Arc<TcpStream>) -> bool {
        let mut st = self.lock();
        if !matches!(st.link, Link::Connecting) {
            return false;
        }
        st.link = Link::Open(sock.clone());
        st.progress = Instant::now();
        if st.finishing {
            let _ = sock.shutdown(Shutdown::Read);
        }
        if !st.queue.is_empty() {
            match send_now(&sock, &st.queue) {
                Ok(n) => {
                    st.queue.drain(..n);
                    self.count(n, st.queue.is_empty());
                    if st.queue.is_empty() {
                        st.queue = Vec::new();
                    }
                }
                Err(e) => {
                    self.cut_locked(&mut st, CutReason::WriteFailed(Arc::new(e)), 0);
                    return false;
                }
            }
            if !st.queue.is_empty() && !self.drain(&mut st) {
                return false;
            }
        }
        self.close_if_drained(&mut st);
        !matches!(st.link, Link::Closed)
    }

    /// Hands `payload` to the socket: at once, or queued behind what is held. While the queue
    /// is full this waits as [`SinkSettings::full`] says, calling `check` every
    /// [`WAIT_SLICE`]; what `check` returns interrupts the wait (the payload's rest is then
    /// dropped, and the caller decides the stream's fate).
    pub fn deliver<I>(
        self: &Arc<Self>,
        payload: &[u8],
        check: &mut dyn FnMut(&Stall) -> Option<I>,
    ) -> Result<(), Undelivered<I>> {
        let mut st = self.lock();
        let mut rest = payload;
        match (&st.link, st.held()) {
            (Link::Closed, _) => return Err(Undelivered::Ended),
            (Link::Open(sock), 0) => {
                let sock = sock.clone();
                match self.write_direct(&mut st, &sock, rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) => {
                        let why = CutReason::WriteFailed(Arc::new(e));
                        let cut = self.cut_locked(&mut st, why, rest.len());
                        return Err(Undelivered::Cut(cut));
                    }
                }
                if rest.is_empty() {
                    return Ok(());
                }
            }
            _ => {}
        }
        self.queue_and_wait(st, rest, check)
    }

    /// The fast path: with nothing held, straight to the socket. Returns how much it took.
    fn write_direct(&self, st: &mut State, sock: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
        let wait = self.settings.direct_wait;
        if wait.is_zero() {
            let n = send_now(sock, bytes)?;
            self.count(n, n == bytes.len());
            if n > 0 {
                st.progress = Instant::now();
            }
            return Ok(n);
        }
        if st.write_timeout != wait {
            let _ = sock.set_write_timeout(Some(wait));
            st.write_timeout = wait;
        }
        // The clock is read only once a write came back short (rare): each write waits at
        // most `direct_wait`, and the ones after it share one more.
        let mut done = 0;
        let mut deadline = None;
        while done < bytes.len() {
            if deadline.is_some_and(|t| Instant::now() >= t) {
                break;
            }
            match (&*sock).write(&bytes[done..]) {
                Ok(n) if n > 0 => {
                    self.count(n, done + n == bytes.len());
                    done += n;
                    deadline.get_or_insert_with(|| Instant::now() + wait);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => break,
                Err(e) => return Err(e),
                Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            }
        }
        if done > 0 {
            st.progress = Instant::now();
        }
        Ok(done)
    }

    /// The slow path: `rest` goes to the queue behind what is held, drained by the stream's
    /// own thread; while the queue is full this waits for room.
    fn queue_and_wait<'s, I>(
        self: &'s Arc<Self>,
        mut st: MutexGuard<'s, State>,
        mut rest: &[u8],
        check: &mut dyn FnMut(&Stall) -> Option<I>,
    ) -> Result<(), Undelivered<I>> {
        let started = Instant::now();
        let mut looked = started;
        let max = self.settings.queue_max;
        while !rest.is_empty() {
            if let Link::Closed = st.link {
                return Err(Undelivered::Ended);
            }
            let room = max.saturating_sub(st.held());
            if room > 0 {
                if st.held() == 0 {
                    // Falling behind starts now: idleness counts from here.
                    st.progress = Instant::now();
                }
                if st.queue.capacity() == 0 && matches!(st.link, Link::Open(_)) {
                    // Falling behind: one allocation for as long as it lasts.
                    st.queue.reserve_exact(max);
                }
                let take = room.min(rest.len());
                st.queue.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if matches!(st.link, Link::Open(_)) && !self.drain(&mut st) {
                    let cut = st.cut.clone();
                    return Err(cut.map_or(Undelivered::Ended, Undelivered::Cut));
                }
                continue;
            }
            // Full: wait for the socket (or the connect).
            let now = Instant::now();
            let waited = now.duration_since(started);
            let mut slice = WAIT_SLICE;
            if let FullQueue::CutAfter(limit) = self.settings.full {
                if waited >= limit {
                    let why = CutReason::NoRoom { queue: max, waited };
                    let cut = self.cut_locked(&mut st, why, rest.len());
                    return Err(Undelivered::Cut(cut));
                }
                slice = slice.min(limit - waited);
            }
            if now.duration_since(looked) >= WAIT_SLICE {
                looked = now;
                let stall = Stall {
                    waited,
                    idle: st.progress.elapsed(),
                    held: st.held() + rest.len(),
                    open: matches!(st.link, Link::Open(_)),
                };
                drop(st);
                if let Some(why) = check(&stall) {
                    return Err(Undelivered::Interrupted(why));
                }
                st = self.lock();
                continue;
            }
            st = self
                .cv
                .wait_timeout(st, slice)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Has the drain thread write the queue out, starting it the first time. `false`: no
    /// thread could be started, and the stream is cut.
    fn drain(self: &Arc<Self>, st: &mut State) -> bool {
        if st.draining {
            self.cv.notify_all();
            return true;
        }
        log::debug!(
            "{} {}: its socket takes data slower than it comes; queueing it",
            self.settings.name,
            self.stream
        );
        let me = self.clone();
        let name = format!("{}-{}-d", self.settings.name, self.stream);
        match self
            .owner
            .spawn(name, self.settings.stack, Box::new(move || me.drain_out()))
        {
            Ok(()) => {
                st.draining = true;
                true
            }
            Err(e) => {
                self.cut_locked(st, CutReason::NoThread(Arc::new(e)), 0);
                false
            }
        }
    }

    /// The drain thread: writes the queue to the socket, blocking, until the stream ends.
    fn drain_out(self: Arc<Self>) {
        let limit = self.settings.idle_limit;
        let slice = limit.min(WAIT_SLICE);
        let mut spare = Vec::new();
        loop {
            let (sock, mut chunk) = {
                let mut st = self.lock();
                loop {
                    match &st.link {
                        Link::Closed => return,
                        Link::Open(s) if !st.queue.is_empty() => {
                            let s = s.clone();
                            if st.write_timeout != slice {
                                let _ = s.set_write_timeout(Some(slice));
                                st.write_timeout = slice;
                            }
                            let chunk = std::mem::replace(&mut st.queue, spare);
                            st.in_flight = chunk.len();
                            break (s, chunk);
                        }
                        _ => {}
                    }
                    st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                }
            };
            if let Err(why) = self.write_all(&sock, &chunk, limit) {
                let mut st = self.lock();
                if !matches!(st.link, Link::Closed) {
                    self.cut_locked(&mut st, why, 0);
                }
                return;
            }
            chunk.clear();
            let mut st = self.lock();
            if st.queue.is_empty() {
                // Caught up: give the buffers back until the reader falls behind again.
                st.queue = Vec::new();
                spare = Vec::new();
            } else {
                spare = chunk;
            }
            self.close_if_drained(&mut st);
        }
    }

    /// Writes `chunk` (the bytes in flight) to `sock`; a socket whose peer reads nothing for
    /// `limit` is given up.
    fn write_all(&self, sock: &TcpStream, chunk: &[u8], limit: Duration) -> Result<(), CutReason> {
        let mut written = 0;
        let mut since = Instant::now();
        // Bytes the peer had not acknowledged at the last write that timed out.
        let mut unacked = None;
        while written < chunk.len() {
            match (&*sock).write(&chunk[written..]) {
                Ok(n) if n > 0 => {
                    written += n;
                    since = Instant::now();
                    unacked = None;
                    let mut st = self.lock();
                    st.in_flight = st.in_flight.saturating_sub(n);
                    st.progress = since;
                    self.count(n, st.held() == 0);
                    self.cv.notify_all();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => {
                    let now = unacked_bytes(sock);
                    if matches!((now, unacked), (Some(a), Some(b)) if a < b) {
                        // The peer read some: slow, not stuck.
                        since = Instant::now();
                        self.lock().progress = since;
                    }
                    unacked = now;
                    if matches!(self.lock().link, Link::Closed) {
                        return Ok(());
                    }
                    if since.elapsed() >= limit {
                        return Err(CutReason::Idle(since.elapsed()));
                    }
                }
                Err(e) => return Err(CutReason::WriteFailed(Arc::new(e))),
                Ok(_) => {
                    return Err(CutReason::WriteFailed(Arc::new(
                        io::ErrorKind::WriteZero.into(),
                    )))
                }
            }
        }
        Ok(())
    }

    /// After bytes were written: closes the socket if the other end closed the stream and
    /// nothing is left to write.
    fn close_if_drained(&self, st: &mut State) {
        if st.finishing && st.held() == 0 {
            Self::close_locked(st);
        }
        self.cv.notify_all();
    }

    fn close_locked(st: &mut State) {
        if let Link::Open(s) = &st.link {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(up) = &st.up {
            up.close();
        }
        st.link = Link::Closed;
        st.queue = Vec::new();
        st.in_flight = 0;
    }

    /// Ends the stream for `why`: the socket is shut (which also wakes the owner's reader of
    /// it), and what it held plus `extra` bytes are counted as not delivered.
    fn cut_locked(&self, st: &mut State, why: CutReason, extra: usize) -> Cut {
        let cut = Cut {
            reason: why,
            undelivered: st.held() + extra,
        };
        st.cut.get_or_insert_with(|| cut.clone());
        Self::close_locked(st);
        self.cv.notify_all();
        cut
    }

    /// The other end closed the stream: the socket is closed once everything held is written
    /// (at once when nothing is), and nothing more is read from it.
    pub fn finish(&self) {
        let mut st = self.lock();
        let held = st.held();
        match &st.link {
            Link::Closed => return,
            Link::Open(s) => {
                let sending = unread_bytes(s).is_some_and(|n| n > 0);
                if held > 0 {
                    let _ = s.shutdown(Shutdown::Read);
                }
                st.peer_sending = sending;
            }
            Link::Connecting => {}
        }
        st.finishing = true;
        self.close_if_drained(&mut st);
    }

    /// Ends the stream now for `why`, dropping what is held (reported as a [`Cut`] when there
    /// was anything).
    pub fn abort(&self, why: &str) {
        let mut st = self.lock();
        let sending = match &st.link {
            Link::Closed => return,
            Link::Open(s) => unread_bytes(s).is_some_and(|n| n > 0),
            Link::Connecting => false,
        };
        st.peer_sending = sending;
        if st.held() > 0 {
            self.cut_locked(&mut st, CutReason::Ended(why.to_owned()), 0);
        } else {
            Self::close_locked(&mut st);
            self.cv.notify_all();
        }
    }

    /// For the owner of `sock`, once the stream has ended and before its last handle on the
    /// socket goes: when the peer was still sending as reading stopped, the close is made a
    /// reset (after our own bytes are acknowledged, at most `idle_limit`, unless the stream was
    /// cut), so that a peer blocked writing into a full window learns now, not when the kernel
    /// gives up on the closed socket (about 100 s on Linux).
    pub fn close_out(&self, sock: &TcpStream) {
        let (sending, cut) = {
            let st = self.lock();
            (st.peer_sending, st.cut.is_some())
        };
        if !sending {
            return;
        }
        if !cut {
            let deadline = Instant::now() + self.settings.idle_limit;
            while unacked_bytes(sock).is_some_and(|n| n > 0) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
        }
        reset_on_close(sock);
    }

    /// Waits until the stream has ended; why it was cut, if it was.
    pub fn wait_ended(&self) -> Option<Cut> {
        let mut st = self.lock();
        while !matches!(st.link, Link::Closed) {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.cut.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<TcpStream>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (Arc::new(a), b)
    }

    fn settings(full: FullQueue) -> SinkSettings {
        SinkSettings {
            queue_max: 64 * 1024,
            direct_wait: Duration::ZERO,
            full,
            idle_limit: Duration::from_secs(5),
            stack: 64 * 1024,
            name: "test",
            grant_every: 0,
            grow_to: 0,
        }
    }

    /// xorshift: the payload sizes and the bytes.
    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    /// Payloads of random sizes to a reader slower than the writer, then the close from the
    /// other end: every byte arrives, in order, then end of file (the tail is never dropped).
    #[test]
    fn a_slow_reader_gets_every_byte_in_order_then_the_close() {
        for seed in [1u64, 7, 42, 1234] {
            let (sock, mut reader) = pair();
            let sink = StreamSink::open(
                9,
                sock,
                settings(FullQueue::WaitWhileProgress),
                Arc::new(Plain),
            );
            let mut rng = seed;
            let mut sent = Vec::new();
            let total = 2 << 20;
            let slow = std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match reader.read(&mut buf) {
                        Ok(0) => return got,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e) => panic!("seed {seed}: {e}"),
                    }
                    if got.len() % (256 * 1024) < 4096 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            });
            while sent.len() < total {
                let n = (next(&mut rng) % 40_000) as usize;
                let payload: Vec<u8> = (0..n).map(|_| next(&mut rng) as u8).collect();
                sink.deliver(&payload, &mut |_| None::<()>)
                    .unwrap_or_else(|_| panic!("seed {seed}: undelivered"));
                sent.extend_from_slice(&payload);
            }
            sink.finish();
            assert!(sink.wait_ended().is_none(), "seed {seed}: cut");
            let got = slow.join().unwrap();
            assert_eq!(got.len(), sent.len(), "seed {seed}");
            let first = got.iter().zip(&sent).position(|(a, b)| a != b);
            assert_eq!(first, None, "seed {seed}: first difference");
            assert_eq!(sink.delivered(), sent.len() as u64, "seed {seed}");
        }
    }

    /// A reader that takes nothing: with a bound on the full queue the payload that finds no
    /// room is cut, and the cut counts what was held and that payload.
    #[test]
    fn a_full_queue_past_its_bound_is_cut_with_what_it_held() {
        let (sock, reader) = pair();
        let _ = socket2::SockRef::from(&reader).set_recv_buffer_size(4096);
        let limit = Duration::from_millis(300);
        let sink = StreamSink::open(
            3,
            sock,
            settings(FullQueue::CutAfter(limit)),
            Arc::new(Plain),
        );
        let payload = vec![7u8; 32 * 1024];
        let cut = loop {
            match sink.deliver(&payload, &mut |_| None::<()>) {
                Ok(()) => continue,
                Err(Undelivered::Cut(cut)) => break cut,
                Err(e) => panic!("{e:?}"),
            }
        };
        assert!(matches!(cut.reason, CutReason::NoRoom { .. }), "{cut}");
        assert!(cut.undelivered >= payload.len(), "{cut}");
        assert!(cut.to_string().contains("bytes not delivered"), "{cut}");
        assert!(sink.ended());
        assert!(matches!(
            sink.deliver(b"x", &mut |_| None::<()>),
            Err(Undelivered::Ended)
        ));
        drop(reader);
    }

    /// Bytes that came while connecting wait; an abort drops them and says how many.
    #[test]
    fn an_abort_reports_what_was_held() {
        let sink =
            StreamSink::connecting(5, settings(FullQueue::WaitWhileProgress), Arc::new(Plain));
        sink.deliver(&[1u8; 1000], &mut |_| None::<()>).unwrap();
        assert_eq!(sink.held(), 1000);
        sink.abort("the session ended");
        let cut = sink.wait_ended().expect("a cut");
        assert_eq!(cut.undelivered, 1000);
        assert_eq!(
            cut.to_string(),
            "the session ended; 1000 bytes not delivered"
        );
        let (sock, _peer) = pair();
        assert!(!sink.connected(sock), "connected after the abort");
    }
}
