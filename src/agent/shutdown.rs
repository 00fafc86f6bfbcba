//! Orderly stop on SIGINT/SIGTERM, and reconnect requests (SIGHUP with new connection
//! settings): flags, a wake-up for sleeps, and the control socket to interrupt.

use std::net::{Shutdown as How, TcpStream};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Inner {
    requested: bool,
    kicked: bool,
    finished: bool,
    socket: Option<TcpStream>,
}

/// Why [`Shutdown::sleep`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// The time ran out.
    Elapsed,
    /// A stop was requested.
    Stop,
    /// A reconnect was requested.
    Kick,
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

    /// Sets a flag, interrupts reads on the control socket and wakes every waiter.
    fn interrupt(&self, set: impl FnOnce(&mut Inner)) {
        let mut g = self.lock();
        set(&mut g);
        if let Some(s) = &g.socket {
            let _ = s.shutdown(How::Read);
        }
        self.cv.notify_all();
    }

    /// Waits up to `d` for `done` to give an answer; `None` when the time ran out.
    fn wait_for<T>(&self, d: Duration, done: impl Fn(&Inner) -> Option<T>) -> Option<T> {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        loop {
            if let Some(answer) = done(&g) {
                return Some(answer);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Requests a stop: wakes any sleep and interrupts reads on the control socket.
    pub fn trigger(&self) {
        self.interrupt(|g| g.requested = true);
    }

    /// Whether a stop was requested.
    pub fn requested(&self) -> bool {
        self.lock().requested
    }

    /// Whether a stop or a reconnect is asked for (neither is cleared).
    pub fn pending(&self) -> bool {
        let g = self.lock();
        g.requested || g.kicked
    }

    /// Asks for a reconnect now: interrupts the current connection or the backoff sleep.
    pub fn kick(&self) {
        self.interrupt(|g| g.kicked = true);
    }

    /// Whether a reconnect was asked for since the last call (and clears it).
    pub fn take_kick(&self) -> bool {
        std::mem::take(&mut self.lock().kicked)
    }

    /// Sleeps for `d` unless a stop or a reconnect is asked for first. Under a systemd
    /// watchdog, it wakes in between to feed it.
    pub fn sleep(&self, d: Duration) -> Wake {
        let until = std::time::Instant::now() + d;
        loop {
            crate::notify::alive();
            let left = until.saturating_duration_since(std::time::Instant::now());
            let step = crate::notify::tick().map_or(left, |t| left.min(t));
            let woken = self.wait_for(step, |g| match (g.requested, g.kicked) {
                (true, _) => Some(Wake::Stop),
                (false, true) => Some(Wake::Kick),
                _ => None,
            });
            match woken {
                Some(w) => return w,
                None if step >= left => return Wake::Elapsed,
                None => {}
            }
        }
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
        self.wait_for(d, |g| g.finished.then_some(())).is_some()
    }
}
