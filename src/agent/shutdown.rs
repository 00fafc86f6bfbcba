//! Orderly stop on SIGINT/SIGTERM: a flag, a wake-up for sleeps, and the control socket to
//! interrupt.

use std::net::{Shutdown as How, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    requested: bool,
    finished: bool,
    socket: Option<TcpStream>,
}

/// Shared between the signal thread and the agent loop.
#[derive(Default)]
pub struct Shutdown {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Shutdown {
    /// A handle with nothing requested.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests a stop: wakes any sleep and interrupts reads on the control socket.
    pub fn trigger(&self) {
        let mut g = self.lock();
        g.requested = true;
        if let Some(s) = &g.socket {
            let _ = s.shutdown(How::Read);
        }
        self.cv.notify_all();
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Sleeps for `d` unless a stop is requested first; returns true if it was.
    pub fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        while !g.requested {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Registers the current control socket (a clone) so a stop can interrupt its reads.
    /// If a stop was already requested the socket is interrupted at once.
    pub fn register(&self, socket: Option<TcpStream>) {
        let mut g = self.lock();
        if let (true, Some(s)) = (g.requested, &socket) {
            let _ = s.shutdown(How::Read);
        }
        g.socket = socket;
    }

    /// Marks the agent loop as finished.
    pub fn mark_finished(&self) {
        self.lock().finished = true;
        self.cv.notify_all();
    }

    /// Waits up to `d` for [`Shutdown::mark_finished`]; returns whether it happened.
    pub fn wait_finished(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        while !g.finished {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}
