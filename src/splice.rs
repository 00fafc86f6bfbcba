//! Zero-copy upload on plain TCP (Linux): payload bytes go local socket → pipe → control
//! socket with `splice(2)` and never enter user memory. The channel thread fills its pipe;
//! the frame writer writes the 9-byte header and splices the payload after it.
//!
//! Only bulk transfers take this path: a read of a few bytes (a keystroke) costs fewer
//! system calls copied than spliced, so a channel starts copying and switches to splicing
//! once reads come back large, and back again when they turn small. TLS always copies.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::frame::{encode_header, HEADER_LEN, TYPE_DATA};
use crate::relay::{copy_one, PumpEnd, MAX_DATA_PAYLOAD};
use crate::writer::{FrameSender, WriterGone};

/// Environment variable that turns splicing off (`1`), should a kernel misbehave with it.
pub const NO_SPLICE_ENV: &str = "TUNNEL_AGENT_NO_SPLICE";
/// Pipe size asked for (the kernel may give less, when the user's pipes use a lot already).
const PIPE_SIZE: usize = 256 * 1024;
/// A copied read at least this large switches the channel to splicing.
const BULK: usize = 16 * 1024;
/// A spliced read smaller than this switches the channel back to copying.
const SMALL: usize = 4 * 1024;

/// Whether splicing is allowed by the environment (it is unless `TUNNEL_AGENT_NO_SPLICE=1`).
pub fn enabled() -> bool {
    std::env::var(NO_SPLICE_ENV).map_or(true, |v| v.trim() != "1")
}

struct Budget {
    /// Bytes in the pipe that queued frames will send.
    queued: usize,
    /// A queued frame was dropped without being sent: the pipe holds bytes nobody will take.
    broken: bool,
    /// The channel thread waits for room (so a drain must wake it; otherwise no wake-up
    /// system call is spent).
    waiting: bool,
}

/// One channel's pipe, shared by its thread (which fills it) and the writer (which drains it).
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    budget: Mutex<Budget>,
    drained: Condvar,
}

impl Pipe {
    /// A new pipe (two file descriptors, closed with it).
    pub fn new() -> io::Result<Arc<Pipe>> {
        let mut fds: [libc::c_int; 2] = [0; 2];
        // SAFETY: `fds` is an array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are open descriptors owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            libc::fcntl(
                write.as_raw_fd(),
                libc::F_SETPIPE_SZ,
                PIPE_SIZE as libc::c_int,
            )
        };
        Ok(Arc::new(Pipe {
            read,
            write,
            budget: Mutex::new(Budget {
                queued: 0,
                broken: false,
                waiting: false,
            }),
            drained: Condvar::new(),
        }))
    }

    fn budget(&self) -> MutexGuard<'_, Budget> {
        self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves up to `max` bytes from `sock` into the pipe, waiting for data but never for room
    /// in the pipe (a full pipe gives `WouldBlock`). 0: the socket reached end of file.
    ///
    /// The wait for data happens in poll(2), not in splice: splice waits holding the pipe's
    /// lock, which would keep the writer from draining what is already in the pipe until the
    /// local service sends more.
    fn fill(&self, sock: &TcpStream, max: usize) -> io::Result<usize> {
        wait_readable(sock)?;
        splice(
            sock.as_raw_fd(),
            self.write.as_raw_fd(),
            max,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    }

    /// Moves exactly `len` bytes, which are in the pipe, to `sock`.
    fn drain_to(&self, sock: RawFd, mut len: usize) -> io::Result<()> {
        while len > 0 {
            match splice(self.read.as_raw_fd(), sock, len, libc::SPLICE_F_MOVE)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => len -= n,
            }
        }
        Ok(())
    }

    /// Waits until the writer has sent some of the pipe's bytes; false when it never will.
    fn wait_for_room(&self) -> bool {
        let mut b = self.budget();
        let before = b.queued;
        while b.queued == before && before > 0 && !b.broken {
            b.waiting = true;
            b = self.drained.wait(b).unwrap_or_else(|p| p.into_inner());
        }
        b.waiting = false;
        !b.broken
    }
}

/// `splice(2)` of up to `len` bytes between two descriptors, one of them a pipe; retries on
/// EINTR.
fn splice(from: RawFd, to: RawFd, len: usize, flags: libc::c_uint) -> io::Result<usize> {
    loop {
        // SAFETY: both descriptors are open for the duration of the call (owned by the caller
        // or by a Pipe it holds); null offsets are what splice takes for sockets and pipes.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Payload bytes waiting in a pipe for the writer, with the header of their frame. Dropped
/// unsent (the writer stopped), it marks the pipe broken so the channel stops waiting on it.
pub struct Spliced {
    header: [u8; HEADER_LEN],
    pipe: Arc<Pipe>,
    len: usize,
    sent: bool,
}

impl Spliced {
    /// Writes the header, then splices the payload, to the socket `sock`.
    pub fn write_to(mut self, sock: RawFd) -> io::Result<()> {
        send_more(sock, &self.header)?;
        self.pipe.drain_to(sock, self.len)?;
        self.sent = true;
        Ok(())
    }
}

impl Drop for Spliced {
    fn drop(&mut self) {
        let mut b = self.pipe.budget();
        if self.sent {
            b.queued -= self.len;
        } else {
            b.broken = true;
        }
        if b.waiting {
            self.pipe.drained.notify_all();
        }
    }
}

/// Sends `bytes` with MSG_MORE: the kernel holds them for the payload that follows, so the
/// header does not go out as a segment of its own.
fn send_more(sock: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe `bytes`, alive for the call.
        let n = unsafe {
            libc::send(
                sock,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_MORE | libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

enum Step {
    /// This many payload bytes were queued as one frame.
    Sent(usize),
    /// Splicing does not work on this socket: copy from now on.
    Unsupported,
    End(PumpEnd),
}

/// Splices one frame's worth from `sock` into `pipe` and queues it.
fn splice_one(sock: &TcpStream, pipe: &Arc<Pipe>, stream: u32, tx: &FrameSender) -> Step {
    let n = loop {
        match pipe.fill(sock, MAX_DATA_PAYLOAD) {
            Ok(0) => return Step::End(PumpEnd::Eof),
            Ok(n) => break n,
            // The pipe is full (or, with nothing queued, the socket had nothing after all:
            // poll again).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !pipe.wait_for_room() {
                    return Step::End(PumpEnd::WriterGone);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                return Step::Unsupported
            }
            Err(e) => return Step::End(PumpEnd::ReadError(e)),
        }
    };
    pipe.budget().queued += n;
    let spliced = Spliced {
        header: encode_header(TYPE_DATA, stream, n as u32),
        pipe: pipe.clone(),
        len: n,
        sent: false,
    };
    match tx.send_spliced(spliced) {
        Ok(()) => Step::Sent(n),
        Err(WriterGone) => Step::End(PumpEnd::WriterGone),
    }
}

/// Waits until `sock` has bytes to read (or has ended).
fn wait_readable(sock: &TcpStream) -> io::Result<()> {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd, alive for the call.
        if unsafe { libc::poll(&mut p, 1, -1) } >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reads `sock` until it ends, sending its bytes as `D` frames for `stream`: copied while
/// reads are small, spliced while they are large (see the module comment). Each of
/// `counters` counts the payload bytes sent. Without a pipe (out of descriptors) it copies.
pub fn pump(sock: &TcpStream, stream: u32, tx: &FrameSender, counters: &[&AtomicU64]) -> PumpEnd {
    let mut pipe: Option<Arc<Pipe>> = None;
    let mut can_splice = true;
    let mut bulk = false;
    loop {
        if bulk && pipe.is_none() {
            match Pipe::new() {
                Ok(p) => {
                    log::debug!("channel {stream}: bulk transfer, splicing (zero copy)");
                    pipe = Some(p);
                }
                Err(e) => {
                    log::debug!("channel {stream}: no pipe for splicing ({e}); copying");
                    (bulk, can_splice) = (false, false);
                }
            }
        }
        let step = match (&pipe, bulk) {
            (Some(p), true) => splice_one(sock, p, stream, tx),
            _ => match copy_one(&mut &*sock, stream, tx) {
                Ok(n) => Step::Sent(n),
                Err(end) => Step::End(end),
            },
        };
        let n = match step {
            Step::Sent(n) => n,
            Step::Unsupported => {
                log::debug!("channel {stream}: splice not supported on this socket; copying");
                (bulk, can_splice, pipe) = (false, false, None);
                continue;
            }
            Step::End(end) => return end,
        };
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        let was_bulk = bulk;
        bulk = can_splice && if bulk { n >= SMALL } else { n >= BULK };
        if was_bulk && !bulk {
            log::debug!("channel {stream}: small reads again, copying");
        } else if bulk && !was_bulk && pipe.is_some() {
            log::debug!("channel {stream}: bulk transfer again, splicing");
        }
    }
}
