//! The frame writer: the only way frames reach the control connection.
//!
//! Every sender has a [`Lane`] (one per channel; one more for control frames). A frame goes
//! out one of two ways. When nothing is queued and nobody is writing, the sending thread
//! writes it to the connection itself ("direct"): a keystroke reaches the proxy without
//! waking another thread, and a bulk upload costs one read and one write per frame.
//! Otherwise the frame waits in its lane for the writer thread.
//!
//! The writer thread serves the lanes round-robin: each round takes one frame from every lane
//! that has one, writes them together and flushes once; a lane with more goes to the back,
//! behind any lane that got its first frame while the round was written. So a frame waits
//! behind at most one frame of every other channel, never behind a bulk transfer's backlog.
//! A lane holds at most [`LANE_FRAMES`] frames (its sender reads the next piece while the
//! writer sends one); a full lane blocks its sender, so a proxy that reads slowly holds the
//! senders back (TCP backpressure) instead of growing a queue. Frames of one lane leave in
//! the order they were sent; frames of different lanes may not, so every frame of a stream
//! (open, data, close) goes through that stream's lane.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Frames a channel's lane holds at most, counting the one being written.
pub const LANE_FRAMES: usize = 2;
/// The same for a [`FrameSender::pipelined_lane`], whose sender runs ahead of the writer.
pub const PIPELINED_LANE_FRAMES: usize = 4;
/// Frames the control lane (open and close frames) holds at most.
const CONTROL_FRAMES: usize = 64;
/// A [`FrameSender::pipelined_lane`] queues frames larger than this (a keystroke or a
/// screen update is smaller; a bulk read fills a 32 KiB frame).
pub const PIPELINE_OVER: usize = 4 * 1024;
/// Small frames are gathered in this buffer; frames at least this large are written as they
/// are, without a copy.
const BUFFER: usize = 16 * 1024;
/// Frame buffers kept for reuse at most.
const POOL: usize = 64;

type Sink = Box<dyn Write + Send>;

/// A frame: a buffer and how many of its bytes are the frame.
type Frame = (Vec<u8>, usize);

struct LaneState {
    frames: VecDeque<Frame>,
    limit: usize,
    /// In the ready list.
    listed: bool,
    /// One of its frames is in the round being written.
    in_round: bool,
    /// Its sender waits for room.
    waiting: bool,
    /// Its [`Lane`] was dropped: the slot is freed once its frames are written.
    closed: bool,
    room: Arc<Condvar>,
}

impl LaneState {
    fn pending(&self) -> usize {
        self.frames.len() + usize::from(self.in_round)
    }
}

/// Who writes and what waits, under one lock.
struct Sched {
    lanes: Vec<Option<LaneState>>,
    free: Vec<usize>,
    /// Lanes with frames waiting, in the order they will be served.
    ready: VecDeque<usize>,
    /// Someone (the writer thread or a direct sender) is writing to the connection.
    busy: bool,
    /// The writer thread waits for work.
    writer_waiting: bool,
    /// Asked to finish: write what is queued and stop.
    finish: bool,
    /// The connection failed or the writer stopped: every send fails.
    gone: bool,
    /// `FrameSender` handles alive; the writer finishes when the last one goes.
    senders: usize,
}

/// What the writer thread and every sender share.
struct Shared {
    sched: Mutex<Sched>,
    /// The writer thread waits here for frames, or for a direct sender to finish.
    work: Condvar,
    /// The connection; locked only by whoever holds `busy`.
    out: Mutex<BufWriter<Sink>>,
    /// The first write error, for the writer thread's result.
    failed: Mutex<Option<io::Error>>,
    /// The socket under the sink, shut down on a write error so the reading side notices.
    sock: TcpStream,
    base: Instant,
    /// When bytes were last handed to the socket, in µs after `base` (0: never): finer than
    /// the time between a frame received and the bytes it lets go.
    last_flush_us: AtomicU64,
    pool: Mutex<Vec<Vec<u8>>>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn sched(&self) -> MutexGuard<'_, Sched> {
        relock(&self.sched)
    }

    fn recycle(&self, buf: Vec<u8>) {
        let mut pool = relock(&self.pool);
        if pool.len() < POOL {
            pool.push(buf);
        }
    }

    /// Writes `frames` to the connection and flushes; the caller holds `busy`.
    fn write_out<'a>(&self, frames: impl Iterator<Item = &'a [u8]>) -> io::Result<()> {
        let mut out = relock(&self.out);
        for f in frames {
            out.write_all(f)?;
        }
        out.flush()?;
        let us = self.base.elapsed().as_micros().max(1) as u64;
        self.last_flush_us.store(us, Ordering::Relaxed);
        Ok(())
    }

    /// Records a write error: the socket is shut down and every sender stops (`s` locked).
    fn fail(&self, s: &mut Sched, e: io::Error) {
        let _ = self.sock.shutdown(Shutdown::Both);
        relock(&self.failed).get_or_insert(e);
        self.stop(s);
    }

    /// No more writing: waiting senders and the writer wake and see it.
    fn stop(&self, s: &mut Sched) {
        s.gone = true;
        for lane in s.lanes.iter_mut().flatten() {
            lane.waiting = false;
            lane.room.notify_all();
        }
        self.work.notify_all();
    }

    fn add_lane(&self, limit: usize) -> (usize, Arc<Condvar>) {
        let mut s = self.sched();
        let room = Arc::new(Condvar::new());
        let state = LaneState {
            frames: VecDeque::new(),
            limit,
            listed: false,
            in_round: false,
            waiting: false,
            closed: false,
            room: room.clone(),
        };
        let id = match s.free.pop() {
            Some(id) => {
                s.lanes[id] = Some(state);
                id
            }
            None => {
                s.lanes.push(Some(state));
                s.lanes.len() - 1
            }
        };
        (id, room)
    }

    /// Sends `frame` on lane `id` the `way` it asks: written by this thread when allowed and
    /// nothing is queued or being written, else queued behind the lane's earlier frames.
    fn send(&self, id: usize, room: &Condvar, frame: Frame, way: Way) -> Result<(), WriterGone> {
        let (direct, bounded) = match way {
            Way::Direct => (true, true),
            Way::Queued => (false, true),
            Way::Last => (true, false),
            Way::Background => (false, false),
        };
        let mut s = self.sched();
        loop {
            if s.gone {
                drop(s);
                self.recycle(frame.0);
                return Err(WriterGone);
            }
            let Some(lane) = s.lanes[id].as_mut() else {
                return Err(WriterGone);
            };
            if !bounded || lane.pending() < lane.limit {
                break;
            }
            lane.waiting = true;
            s = room.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        if direct && !s.busy && s.ready.is_empty() {
            s.busy = true;
            drop(s);
            let result = self.write_out(std::iter::once(&frame.0[..frame.1]));
            let mut s = self.sched();
            s.busy = false;
            // The writer waits for the connection only when it has work (or must finish);
            // otherwise it is not woken, which keeps a bulk upload to one thread.
            if s.writer_waiting && (!s.ready.is_empty() || s.finish) {
                self.work.notify_one();
            }
            let result = match result {
                Ok(()) => Ok(()),
                Err(e) => {
                    self.fail(&mut s, e);
                    Err(WriterGone)
                }
            };
            drop(s);
            self.recycle(frame.0);
            return result;
        }
        let Some(lane) = s.lanes[id].as_mut() else {
            return Err(WriterGone);
        };
        lane.frames.push_back(frame);
        if !lane.listed && !lane.in_round {
            lane.listed = true;
            s.ready.push_back(id);
        }
        if s.writer_waiting && !s.busy {
            self.work.notify_one();
        }
        Ok(())
    }

    /// The lane's handle is gone: free its slot now, or once its frames are written.
    fn close_lane(&self, id: usize) {
        let mut s = self.sched();
        if let Some(lane) = s.lanes[id].as_mut() {
            lane.closed = true;
            if lane.pending() == 0 {
                s.lanes[id] = None;
                s.free.push(id);
            }
        }
    }
}

/// A handle to send frames; cheap to clone. Its own frames (open and close) share the control
/// lane; each channel takes a [`Lane`].
pub struct FrameSender {
    shared: Arc<Shared>,
    /// The control lane.
    control: usize,
    control_room: Arc<Condvar>,
}

impl Clone for FrameSender {
    fn clone(&self) -> Self {
        self.shared.sched().senders += 1;
        FrameSender {
            shared: self.shared.clone(),
            control: self.control,
            control_room: self.control_room.clone(),
        }
    }
}

impl Drop for FrameSender {
    fn drop(&mut self) {
        let mut s = self.shared.sched();
        s.senders -= 1;
        if s.senders == 0 {
            s.finish = true;
            self.shared.work.notify_all();
        }
    }
}

/// How a frame goes to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Written by the sending thread when the connection is free, else queued; the sender
    /// waits while its lane is full.
    Direct,
    /// Always queued for the writer thread; the sender waits while its lane is full.
    Queued,
    /// A stream's close: like `Direct`, but never waits for room.
    Last,
    /// Always queued for the writer thread, never waiting for room.
    Background,
}

/// The writer has stopped (the connection failed or was finished).
#[derive(Debug)]
pub struct WriterGone;

impl FrameSender {
    /// Sends one encoded frame on the control lane: written at once when the connection is
    /// free, else queued (waiting while the control lane is full).
    pub fn send(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        let len = frame.len();
        self.shared
            .send(self.control, &self.control_room, (frame, len), Way::Direct)
    }

    /// Queues one encoded frame on the control lane for the writer thread, never waiting for
    /// room or for the connection: a reading thread's keepalive frames (a ping, its answer),
    /// at most one per interval, never hold up its reading.
    pub fn send_queued(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        let len = frame.len();
        self.shared.send(
            self.control,
            &self.control_room,
            (frame, len),
            Way::Background,
        )
    }

    /// Sends one encoded frame on the control lane, never waiting for room: written by this
    /// thread when the connection is free (a window grant reaches the peer without waking
    /// the writer thread), else queued for the writer thread.
    pub fn send_eager(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        let len = frame.len();
        self.shared
            .send(self.control, &self.control_room, (frame, len), Way::Last)
    }

    /// A buffer of `size` bytes to build a frame in (reused, so its contents are old bytes).
    pub fn buffer(&self, size: usize) -> Vec<u8> {
        let reused = relock(&self.shared.pool).pop();
        match reused {
            Some(b) if b.len() == size => b,
            _ => vec![0u8; size],
        }
    }

    /// Gives back a buffer that was not sent.
    pub fn recycle(&self, buf: Vec<u8>) {
        self.shared.recycle(buf);
    }

    /// A lane for one channel: any of its frames is written by the sending thread itself
    /// when the connection is free.
    pub fn lane(&self) -> Lane {
        self.new_lane(usize::MAX, LANE_FRAMES)
    }

    /// A lane whose frames over [`PIPELINE_OVER`] bytes always go through the writer thread,
    /// so the sender reads its next piece while the writer sends this one: more throughput
    /// for a second thread's CPU (the proxy's choice; the agent's lanes write themselves).
    pub fn pipelined_lane(&self) -> Lane {
        self.new_lane(PIPELINE_OVER, PIPELINED_LANE_FRAMES)
    }

    fn new_lane(&self, direct_max: usize, limit: usize) -> Lane {
        let (id, room) = self.shared.add_lane(limit);
        Lane {
            tx: self.clone(),
            id,
            room,
            direct_max,
        }
    }

    /// How long ago bytes were last handed to the socket (`None`: never).
    pub fn since_last_flush(&self) -> Option<Duration> {
        match self.shared.last_flush_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(
                self.shared
                    .base
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us)),
            ),
        }
    }

    /// Asks the writer to write what is queued, flush and stop.
    pub fn finish(&self) {
        let mut s = self.shared.sched();
        s.finish = true;
        self.shared.work.notify_all();
    }
}

/// One channel's way to the connection: its frames keep their order, and at most
/// [`LANE_FRAMES`] of them wait, served round-robin with the other lanes.
pub struct Lane {
    tx: FrameSender,
    id: usize,
    room: Arc<Condvar>,
    /// Larger frames are always queued.
    direct_max: usize,
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.tx.shared.close_lane(self.id);
    }
}

impl Lane {
    /// The sender this lane writes through.
    pub fn sender(&self) -> &FrameSender {
        &self.tx
    }

    /// Sends the first `len` bytes of `buf` (from [`FrameSender::buffer`]) as one frame; the
    /// buffer goes back to the pool once written.
    pub fn send_buffer(&self, buf: Vec<u8>, len: usize) -> Result<(), WriterGone> {
        let way = match len <= self.direct_max {
            true => Way::Direct,
            false => Way::Queued,
        };
        self.tx.shared.send(self.id, &self.room, (buf, len), way)
    }

    /// Sends one encoded frame in this lane's order.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        let len = frame.len();
        self.send_buffer(frame, len)
    }

    /// Sends a stream's last frame (its close) after everything sent on this lane, without
    /// waiting for room: whoever closes a stream (the control loop too) never blocks on it.
    pub fn send_last(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        let len = frame.len();
        self.tx
            .shared
            .send(self.id, &self.room, (frame, len), Way::Last)
    }
}

/// Starts the writer thread writing to `out`, the writing half of the connection over `sock`.
/// On a write error `sock` is shut down, so the reading side notices at once; the thread's
/// result says what failed. It stops when asked to finish, when the connection fails, or
/// when the last [`FrameSender`] is dropped.
pub fn spawn(
    out: Box<dyn Write + Send>,
    sock: TcpStream,
    name: &str,
) -> io::Result<(FrameSender, JoinHandle<io::Result<()>>)> {
    let shared = Arc::new(Shared {
        sched: Mutex::new(Sched {
            lanes: Vec::new(),
            free: Vec::new(),
            ready: VecDeque::new(),
            busy: false,
            writer_waiting: false,
            finish: false,
            gone: false,
            senders: 1,
        }),
        work: Condvar::new(),
        out: Mutex::new(BufWriter::with_capacity(BUFFER, out)),
        failed: Mutex::new(None),
        sock,
        base: Instant::now(),
        last_flush_us: AtomicU64::new(0),
        pool: Mutex::new(Vec::new()),
    });
    let (control, control_room) = shared.add_lane(CONTROL_FRAMES);
    let thread_shared = shared.clone();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || write_loop(&thread_shared))?;
    Ok((
        FrameSender {
            shared,
            control,
            control_room,
        },
        handle,
    ))
}

fn write_loop(shared: &Shared) -> io::Result<()> {
    let mut round: Vec<(usize, Frame)> = Vec::new();
    loop {
        let mut s = shared.sched();
        while !s.gone
            && (s.busy || s.ready.is_empty())
            && !(s.finish && !s.busy && s.ready.is_empty())
        {
            s.writer_waiting = true;
            s = shared.work.wait(s).unwrap_or_else(|p| p.into_inner());
            s.writer_waiting = false;
        }
        if s.gone || s.ready.is_empty() {
            // Finished with nothing left, or failed.
            shared.stop(&mut s);
            break;
        }
        // One round: the first frame of every lane that has one, in order.
        while let Some(id) = s.ready.pop_front() {
            if let Some(lane) = s.lanes[id].as_mut() {
                lane.listed = false;
                if let Some(f) = lane.frames.pop_front() {
                    lane.in_round = true;
                    round.push((id, f));
                }
            }
        }
        s.busy = true;
        drop(s);
        let result = shared.write_out(round.iter().map(|(_, f)| &f.0[..f.1]));
        let mut s = shared.sched();
        s.busy = false;
        // Lanes with more go to the back, behind lanes that got frames during the write.
        for (id, _) in &round {
            let id = *id;
            let Some(lane) = s.lanes[id].as_mut() else {
                continue;
            };
            lane.in_round = false;
            if lane.waiting {
                lane.waiting = false;
                lane.room.notify_one();
            }
            if !lane.frames.is_empty() {
                lane.listed = true;
                s.ready.push_back(id);
            } else if lane.closed {
                s.lanes[id] = None;
                s.free.push(id);
            }
        }
        if let Err(e) = result {
            shared.fail(&mut s, e);
            break;
        }
        drop(s);
        for (_, f) in round.drain(..) {
            shared.recycle(f.0);
        }
    }
    let failed = relock(&shared.failed).take();
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{encode_header, Frame, FrameReader, TYPE_DATA};
    use std::net::TcpListener;
    use std::sync::mpsc::{self, Sender};

    /// A sink that records every byte and holds writes while its gate is shut; it says when a
    /// write starts waiting.
    #[derive(Clone)]
    struct Gated {
        bytes: Arc<Mutex<Vec<u8>>>,
        open: Arc<(Mutex<bool>, Condvar)>,
        waiting: Sender<()>,
    }

    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (lock, cv) = &*self.open;
            let mut open = lock.lock().unwrap();
            if !*open {
                let _ = self.waiting.send(());
                while !*open {
                    open = cv.wait(open).unwrap();
                }
            }
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = encode_header(TYPE_DATA, stream, payload.len() as u32).to_vec();
        f.extend_from_slice(payload);
        f
    }

    impl Gated {
        fn open_gate(&self) {
            let (lock, cv) = &*self.open;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
    }

    /// A writer over a new [`Gated`] sink whose gate is `open` or shut; the receiver hears
    /// when a write waits at the gate.
    fn gated_writer(
        open: bool,
    ) -> (
        Gated,
        mpsc::Receiver<()>,
        FrameSender,
        JoinHandle<io::Result<()>>,
    ) {
        let (waiting_tx, waiting) = mpsc::channel();
        let sink = Gated {
            bytes: Arc::default(),
            open: Arc::new((Mutex::new(open), Condvar::new())),
            waiting: waiting_tx,
        };
        let (tx, handle) = spawn(Box::new(sink.clone()), socket(), "test-writer").unwrap();
        (sink, waiting, tx, handle)
    }

    fn socket() -> TcpStream {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(l.local_addr().unwrap()).unwrap()
    }

    fn frames(bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut r = FrameReader::new(bytes, u32::MAX);
        let mut v = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            if let Frame::Data { stream, payload } = f {
                v.push((stream, payload.len()));
            }
        }
        v
    }

    #[test]
    fn a_keystroke_waits_behind_at_most_one_frame_of_each_bulk_channel() {
        let (sink, waiting, tx, handle) = gated_writer(false);
        let bulk = |stream: u32, tx: &FrameSender| {
            let lane = tx.lane();
            let id = lane.id;
            let thread = thread::spawn(move || {
                for _ in 0..20 {
                    if lane.send(data_frame(stream, &[7u8; 32 * 1024])).is_err() {
                        break;
                    }
                }
            });
            (thread, id)
        };
        // Channel 1 writes its first frame directly and is held there by the proxy.
        let (one, _) = bulk(1, &tx);
        waiting.recv().unwrap();
        // Channel 2's bulk is queued behind it, as much as its lane holds (its sender then
        // waits for room); then a keystroke on channel 3.
        let (two, id) = bulk(2, &tx);
        loop {
            let s = tx.shared.sched();
            let lane = s.lanes[id].as_ref().unwrap();
            if lane.waiting || lane.frames.len() == 20 {
                break;
            }
            drop(s);
            thread::yield_now(); // no event marks a thread entering a wait
        }
        tx.lane().send(data_frame(3, b"k")).unwrap();
        sink.open_gate();
        one.join().unwrap();
        two.join().unwrap();
        tx.finish();
        handle.join().unwrap().unwrap();

        let order = frames(&sink.bytes.lock().unwrap());
        assert_eq!(order.len(), 41, "every frame written once");
        let at = order.iter().position(|f| *f == (3, 1)).unwrap();
        let before = |s: u32| order[..at].iter().filter(|f| f.0 == s).count();
        assert!(
            before(1) <= 1 && before(2) <= 1,
            "the keystroke came after {} frames of channel 1 and {} of channel 2",
            before(1),
            before(2)
        );
        for s in [1, 2] {
            let n = order.iter().filter(|f| f.0 == s).count();
            assert_eq!(n, 20, "channel {s}");
        }
    }

    #[test]
    fn an_idle_writer_lets_the_sender_write_itself_and_order_holds() {
        let (sink, _waiting, tx, handle) = gated_writer(true);
        let lane = tx.lane();
        for i in 0..100u32 {
            let mut buf = tx.buffer(64);
            let frame = data_frame(5, &i.to_be_bytes());
            buf[..frame.len()].copy_from_slice(&frame);
            lane.send_buffer(buf, frame.len()).unwrap();
        }
        // Nothing was queued: every frame went out from this thread.
        assert!(tx.shared.sched().ready.is_empty());
        assert!(tx.since_last_flush().is_some());
        tx.finish();
        handle.join().unwrap().unwrap();
        let bytes = sink.bytes.lock().unwrap().clone();
        let mut r = FrameReader::new(&bytes[..], u32::MAX);
        for i in 0..100u32 {
            match r.next_frame().unwrap() {
                Some(Frame::Data { stream: 5, payload }) => {
                    assert_eq!(payload, &i.to_be_bytes()[..])
                }
                other => panic!("frame {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_close_follows_its_streams_data_and_never_waits_for_room() {
        let (sink, waiting, tx, handle) = gated_writer(false);
        // The connection is held by a direct write on stream 1; stream 2 fills its lane.
        let one = tx.lane();
        let blocked = thread::spawn(move || one.send(data_frame(1, b"first")).unwrap());
        waiting.recv().unwrap();
        let two = tx.lane();
        for _ in 0..LANE_FRAMES {
            two.send(data_frame(2, &[1u8; 100])).unwrap();
        }
        // Its lane is full, yet the close is taken at once (a thread that closes streams
        // must not block on one), and goes after the data.
        two.send_last(crate::protocol::frame::close_frame(2))
            .unwrap();
        tx.send(crate::protocol::frame::close_frame(9)).unwrap();
        sink.open_gate();
        blocked.join().unwrap();
        tx.finish();
        handle.join().unwrap().unwrap();
        let bytes = sink.bytes.lock().unwrap().clone();
        let mut r = FrameReader::new(&bytes[..], u32::MAX);
        let mut two_seen = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            match f {
                Frame::Data { stream: 2, .. } => two_seen.push("D"),
                Frame::Close { stream: 2 } => two_seen.push("C"),
                _ => {}
            }
        }
        assert_eq!(two_seen, ["D", "D", "C"]);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failed_write_stops_every_sender_and_the_thread_reports_it() {
        let (tx, handle) = spawn(Box::new(Broken), socket(), "test-writer").unwrap();
        let lane = tx.lane();
        assert!(lane.send(data_frame(1, b"x")).is_err());
        assert!(tx.send(data_frame(2, b"y")).is_err());
        assert!(lane.send(data_frame(1, b"z")).is_err());
        drop(lane);
        drop(tx);
        let e = handle.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    }
}
