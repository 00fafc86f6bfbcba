//! Bytes from a device to one public client. The device's reader writes each payload straight
//! to the client's socket when it takes it at once; what it does not take waits in the
//! stream's own queue (at most [`QUEUE_MAX`]), written out by the stream's own thread (started
//! the first time the client falls behind). So a client that pauses costs the device's other
//! streams nothing while its queue has room.
//!
//! When the queue is full the reader waits for room, as TCP backpressure on the device's one
//! connection is the only flow control the protocol has: a client that reads slowly slows its
//! device by as much. The wait is bounded: a client that does not make room for a payload
//! within [`STALL_WAIT`] has stopped reading, or reads too slowly to keep up (under about 32
//! KiB/s with a fast service), and its stream is closed (with `C` to the device); trickling a
//! byte now and then does not hold the reader. A client that takes nothing of a queue that is
//! not full is closed after `send_timeout` (nginx's `send_timeout`). Both say how many bytes
//! were not delivered. The agent's stuck-service work (`local_write_timeout`) is the model.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use log::warn;
use tunnel_agent::transport::tcp::{send_now, timed_out};

use crate::public::THREAD_STACK;

/// Bytes from the device held for one public client at most.
pub const QUEUE_MAX: usize = 256 * 1024;
/// How long the device's reader waits for room in a full queue.
pub const STALL_WAIT: Duration = Duration::from_secs(2);

/// One public client's way in from the device.
pub struct Outbound {
    sock: Arc<TcpStream>,
    stream: u32,
    peer: Option<SocketAddr>,
    send_timeout: Duration,
    state: Mutex<State>,
    /// Bytes were taken, or the stream ended.
    room: Condvar,
    /// Bytes were queued, or the stream ended.
    work: Condvar,
}

struct State {
    queue: VecDeque<Vec<u8>>,
    held: usize,
    writer: bool,
    ended: Option<String>,
    last_taken: Instant,
}

/// Why a payload could not be delivered; the stream is to be closed.
#[derive(Debug)]
pub enum Undelivered {
    /// The queue was full and the client did not make room for [`STALL_WAIT`].
    Stuck {
        /// Bytes not delivered, this payload's included.
        lost: usize,
    },
    /// The client's socket failed or the stream was closed already.
    Ended {
        /// What ended it.
        why: String,
    },
}

impl std::fmt::Display for Undelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Undelivered::Stuck { lost } => write!(
                f,
                "the public client made no room in its queue ({} bytes) for {} s: it stopped \
                 reading or reads too slowly; {lost} bytes not delivered",
                QUEUE_MAX,
                STALL_WAIT.as_secs()
            ),
            Undelivered::Ended { why } => write!(f, "{why}"),
        }
    }
}

impl Outbound {
    /// The way to `sock`, the public connection of `stream`.
    pub fn new(sock: Arc<TcpStream>, stream: u32, send_timeout: Duration) -> Arc<Outbound> {
        let peer = sock.peer_addr().ok();
        Arc::new(Outbound {
            sock,
            stream,
            peer,
            send_timeout,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                held: 0,
                writer: false,
                ended: None,
                last_taken: Instant::now(),
            }),
            room: Condvar::new(),
            work: Condvar::new(),
        })
    }

    /// The client's address, when known.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Delivers `payload`: at once, or queued; waits for room at most [`STALL_WAIT`].
    pub fn deliver(self: &Arc<Self>, payload: &[u8]) -> Result<(), Undelivered> {
        let mut st = self.lock();
        if let Some(why) = &st.ended {
            return Err(Undelivered::Ended { why: why.clone() });
        }
        let mut rest = payload;
        if st.queue.is_empty() {
            match send_now(&self.sock, rest) {
                Ok(n) => {
                    rest = &rest[n..];
                    if n > 0 {
                        st.last_taken = Instant::now();
                    }
                }
                Err(e) => {
                    let why = format!("writing to the public client failed: {e}");
                    st.ended = Some(why.clone());
                    return Err(Undelivered::Ended { why });
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
        }
        let waiting = Instant::now();
        loop {
            if st.held == 0 || st.held + rest.len() <= QUEUE_MAX {
                st.held += rest.len();
                st.queue.push_back(rest.to_vec());
                if !st.writer {
                    st.writer = true;
                    self.start_writer();
                }
                self.work.notify_one();
                return Ok(());
            }
            if let Some(why) = &st.ended {
                return Err(Undelivered::Ended { why: why.clone() });
            }
            let waited = waiting.elapsed();
            if waited >= STALL_WAIT {
                let lost = st.held + rest.len();
                st.ended = Some("stopped reading".into());
                drop(st);
                self.close();
                return Err(Undelivered::Stuck { lost });
            }
            st = self
                .room
                .wait_timeout(st, STALL_WAIT - waited)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn start_writer(self: &Arc<Self>) {
        let me = self.clone();
        let started = thread::Builder::new()
            .name(format!("public-{}-d", self.stream))
            .stack_size(THREAD_STACK)
            .spawn(move || me.write_out());
        if let Err(e) = started {
            let mut st = self.lock();
            st.ended = Some(format!("cannot start the stream's writer thread: {e}"));
            drop(st);
            self.close();
        }
    }

    /// The stream's writer: the queue to the client, each write bounded by `send_timeout`.
    fn write_out(self: Arc<Self>) {
        let _ = self.sock.set_write_timeout(Some(self.send_timeout));
        loop {
            let mut st = self.lock();
            while st.queue.is_empty() && st.ended.is_none() {
                st = self.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.ended.is_some() {
                return;
            }
            let Some(chunk) = st.queue.pop_front() else {
                continue;
            };
            drop(st);
            let mut at = 0;
            while at < chunk.len() {
                match (&*self.sock).write(&chunk[at..]) {
                    Ok(0) => return self.failed("the public client closed its connection".into()),
                    Ok(n) => {
                        at += n;
                        let mut st = self.lock();
                        st.held = st.held.saturating_sub(n);
                        st.last_taken = Instant::now();
                        self.room.notify_all();
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if timed_out(&e) => {
                        return self.failed(format!(
                            "the public client took no data for {} s (send_timeout)",
                            self.send_timeout.as_secs_f64()
                        ));
                    }
                    Err(e) => {
                        return self.failed(format!("writing to the public client failed: {e}"))
                    }
                }
            }
        }
    }

    fn failed(&self, why: String) {
        let mut st = self.lock();
        if st.ended.is_none() {
            warn!(
                "stream {}: {why}; closed, {} bytes not delivered to {}",
                self.stream,
                st.held,
                self.peer.map_or("?".into(), |p| p.to_string())
            );
            st.ended = Some(why);
        }
        drop(st);
        // The public side's reader sees the close and tells the device (C).
        self.close();
    }

    /// Ends the stream's way in: the client's socket is shut, waiters and the writer wake.
    pub fn close(&self) {
        {
            let mut st = self.lock();
            if st.ended.is_none() {
                st.ended = Some("closed".into());
            }
        }
        let _ = self.sock.shutdown(Shutdown::Both);
        self.room.notify_all();
        self.work.notify_all();
    }
}
