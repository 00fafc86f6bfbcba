//! The kernel side of the zero-copy upload: a channel's pipe, `splice(2)` into and out of it,
//! `send(MSG_MORE)` for a frame header, `poll(2)` for readiness. This is the only part of the
//! uplink that calls `libc`; it knows nothing of queues, channels or the writer thread.
#![allow(unsafe_code)]

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::protocol::frame::HEADER_LEN;

/// Pipe size asked for (the kernel may give less, when the user's pipes use a lot already).
const PIPE_SIZE: usize = 256 * 1024;

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
    pub(super) fn fill(&self, sock: &TcpStream, max: usize) -> io::Result<usize> {
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
    pub(super) fn wait_for_room(&self) -> bool {
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
    /// `len` bytes that [`Pipe::fill`] just put in `pipe`, behind `header`; counted as queued
    /// until written or dropped.
    pub fn new(header: [u8; HEADER_LEN], pipe: &Arc<Pipe>, len: usize) -> Spliced {
        pipe.budget().queued += len;
        Spliced {
            header,
            pipe: pipe.clone(),
            len,
            sent: false,
        }
    }

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

/// Waits until `sock` has bytes to read (or has ended).
pub(super) fn wait_readable(sock: &TcpStream) -> io::Result<()> {
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
