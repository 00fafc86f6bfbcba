//! The frame-writer thread: the only code that writes to the control connection.
//!
//! Channel threads hand it encoded frames over a bounded queue, so a proxy that reads slowly
//! blocks them (TCP backpressure) instead of growing a queue. Whatever is already queued is
//! written together and flushed at once: keystrokes are never held back waiting for more.

use std::io::{self, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::pipe::Spliced;

/// Frames the queue holds at most; with 32 KiB data frames that is 2 MiB.
pub const QUEUE_FRAMES: usize = 64;
/// Small frames are gathered in this buffer; frames at least this large are written as they
/// are, without a copy.
const BUFFER: usize = 16 * 1024;
/// Frame buffers kept for reuse at most.
const POOL: usize = 64;

enum Msg {
    Frame(Vec<u8>),
    /// A pooled buffer and how many of its bytes are the frame.
    Pooled(Vec<u8>, usize),
    /// A header, and payload bytes waiting in a channel's pipe.
    Spliced(Spliced),
    Finish,
}

/// What the writer and its senders share: when it last flushed, as milliseconds after `base`
/// (0: never), and frame buffers for reuse.
struct Activity {
    /// The socket to splice payloads into (plain TCP only); `None`: everything is copied.
    splice_to: Option<RawFd>,
    base: Instant,
    last_flush_ms: AtomicU64,
    pool: Mutex<Vec<Vec<u8>>>,
}

impl Activity {
    fn recycle(&self, buf: Vec<u8>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL {
            pool.push(buf);
        }
    }
}

/// A handle to queue frames for the writer; cheap to clone, one per channel thread.
#[derive(Clone)]
pub struct FrameSender(SyncSender<Msg>, Arc<Activity>);

/// The writer has stopped (the connection failed or was finished).
#[derive(Debug)]
pub struct WriterGone;

impl FrameSender {
    /// Queues one encoded frame, waiting while the queue is full.
    pub fn send(&self, frame: Vec<u8>) -> Result<(), WriterGone> {
        self.0.send(Msg::Frame(frame)).map_err(|_| WriterGone)
    }

    /// A buffer of `size` bytes to build a frame in (reused, so its contents are old bytes).
    pub fn buffer(&self, size: usize) -> Vec<u8> {
        let reused = self.1.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match reused {
            Some(b) if b.len() == size => b,
            _ => vec![0u8; size],
        }
    }

    /// Queues the first `len` bytes of `buf` as one frame; the buffer comes back to the pool
    /// once written.
    pub fn send_buffer(&self, buf: Vec<u8>, len: usize) -> Result<(), WriterGone> {
        self.0.send(Msg::Pooled(buf, len)).map_err(|_| WriterGone)
    }

    /// Whether payloads may be spliced to the socket (plain TCP, splicing not turned off).
    pub fn splices(&self) -> bool {
        self.1.splice_to.is_some()
    }

    /// Queues a frame whose payload waits in a pipe (only when [`Self::splices`]).
    pub fn send_spliced(&self, frame: Spliced) -> Result<(), WriterGone> {
        self.0.send(Msg::Spliced(frame)).map_err(|_| WriterGone)
    }

    /// Gives back a buffer that was not sent.
    pub fn recycle(&self, buf: Vec<u8>) {
        self.1.recycle(buf);
    }

    /// How long ago the writer last handed bytes to the socket (`None`: never).
    pub fn since_last_flush(&self) -> Option<Duration> {
        match self.1.last_flush_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(
                self.1
                    .base
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    /// Asks the writer to write what is queued, flush and stop.
    pub fn finish(&self) {
        let _ = self.0.send(Msg::Finish);
    }
}

/// Starts the writer thread writing to `out`. On a write error it shuts `sock` (the socket
/// under `out`) down, so the reading side notices at once; the thread's result says what
/// failed. With `splice` (only when `out` writes to `sock` as it is, no TLS), channel
/// payloads may be spliced straight into `sock`.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    sock: TcpStream,
    splice: bool,
    name: &str,
) -> io::Result<(FrameSender, JoinHandle<io::Result<()>>)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
    let activity = Arc::new(Activity {
        splice_to: splice.then(|| sock.as_raw_fd()),
        base: Instant::now(),
        last_flush_ms: AtomicU64::new(0),
        pool: Mutex::new(Vec::new()),
    });
    let flushed = activity.clone();
    let handle = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let result = write_loop(out, &rx, &flushed);
            if result.is_err() {
                let _ = sock.shutdown(Shutdown::Both);
            }
            result
        })?;
    Ok((FrameSender(tx, activity), handle))
}

fn write_loop<W: Write>(stream: W, rx: &Receiver<Msg>, activity: &Activity) -> io::Result<()> {
    let mut out = BufWriter::with_capacity(BUFFER, stream);
    // Writes one frame; false when it was the Finish message.
    let put = |out: &mut BufWriter<W>, msg: Msg| -> io::Result<bool> {
        match msg {
            Msg::Frame(frame) => out.write_all(&frame)?,
            Msg::Pooled(buf, len) => {
                out.write_all(&buf[..len])?;
                activity.recycle(buf);
            }
            Msg::Spliced(frame) => {
                // What is gathered goes first; then header and payload straight to the socket.
                out.flush()?;
                let sock = activity.splice_to.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::Unsupported, "spliced frame without a socket")
                })?;
                frame.write_to(sock)?;
            }
            Msg::Finish => return Ok(false),
        }
        Ok(true)
    };
    while let Ok(msg) = rx.recv() {
        if !put(&mut out, msg)? {
            return out.flush();
        }
        // Coalesce only what is already waiting, then flush.
        while let Ok(msg) = rx.try_recv() {
            if !put(&mut out, msg)? {
                return out.flush();
            }
        }
        out.flush()?;
        let ms = activity.base.elapsed().as_millis().max(1) as u64;
        activity.last_flush_ms.store(ms, Ordering::Relaxed);
    }
    out.flush()
}
