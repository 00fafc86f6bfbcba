//! The wake-up beacon: what wakes the agent's background threads (heartbeat, SSH keys,
//! services) between their rounds: a handshake accepted, a reload, a stop.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Events {
    beat_now: bool,
    reloaded: bool,
    stop: bool,
}

/// What wakes the heartbeat thread (or the SSH key thread): a handshake accepted, a reload, a
/// stop.
#[derive(Default)]
pub struct Beacon {
    events: Mutex<Events>,
    cv: Condvar,
}

pub(crate) enum Wake {
    Stop,
    BeatNow,
    Reloaded,
    Elapsed,
}

impl Beacon {
    fn lock(&self) -> MutexGuard<'_, Events> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, f: impl FnOnce(&mut Events)) {
        f(&mut self.lock());
        self.cv.notify_all();
    }

    /// The proxy accepted the device: beat now, so Meeting sees it online at once.
    pub fn authenticated(&self) {
        self.signal(|e| e.beat_now = true);
    }

    /// The configuration was reloaded.
    pub fn reloaded(&self) {
        self.signal(|e| e.reloaded = true);
    }

    /// The agent is stopping.
    pub fn stop(&self) {
        self.signal(|e| e.stop = true);
    }

    /// Waits up to `d` for an event; the most urgent one pending wins and is consumed.
    pub(crate) fn wait(&self, d: Duration) -> Wake {
        let deadline = Instant::now() + d;
        let mut g = self.lock();
        loop {
            if g.stop {
                return Wake::Stop;
            }
            if std::mem::take(&mut g.reloaded) {
                return Wake::Reloaded;
            }
            if std::mem::take(&mut g.beat_now) {
                return Wake::BeatNow;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Wake::Elapsed;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
