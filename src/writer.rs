//! The frame-writer thread: the only code that writes to the control connection.
//!
//! Channel threads hand it encoded frames over a bounded queue, so a proxy that reads slowly
//! blocks them (TCP backpressure) instead of growing a queue. Whatever is already queued is
//! written together and flushed at once: keystrokes are never held back waiting for more.

use std::io::{self, BufWriter, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Frames the queue holds at most; with 32 KiB data frames that is 2 MiB.
pub const QUEUE_FRAMES: usize = 64;
const BUFFER: usize = 64 * 1024;

enum Msg {
    Frame(Vec<u8>),
    Finish,
}

/// When the writer last flushed, as milliseconds after `base` (0: never).
struct Activity {
    base: Instant,
    last_flush_ms: AtomicU64,
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
/// failed.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    sock: TcpStream,
    name: &str,
) -> io::Result<(FrameSender, JoinHandle<io::Result<()>>)> {
    let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last_flush_ms: AtomicU64::new(0),
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
    while let Ok(msg) = rx.recv() {
        let Msg::Frame(frame) = msg else {
            return out.flush();
        };
        out.write_all(&frame)?;
        // Coalesce only what is already waiting, then flush.
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Frame(frame) => out.write_all(&frame)?,
                Msg::Finish => return out.flush(),
            }
        }
        out.flush()?;
        let ms = activity.base.elapsed().as_millis().max(1) as u64;
        activity.last_flush_ms.store(ms, Ordering::Relaxed);
    }
    out.flush()
}
