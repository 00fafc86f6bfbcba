//! A stream's send window (docs/protocol.md, "Windows"): the bytes of one stream its sender
//! may still send before the receiver grants more. The stream's pump waits here, and only
//! it: the connection's reader, which hands it the grants, never does.
//!
//! Counted from the stream's first byte, so that a window kept only from some point on (the
//! proxy learns that the agent keeps to windows one frame after it may have opened a stream)
//! still says exactly what the receiver holds: sent minus granted.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Debug)]
struct State {
    sent: u64,
    granted: u64,
    /// The window is kept (else only counted).
    kept: bool,
    /// The stream ended: nobody waits any more.
    closed: bool,
}

/// One stream's send window.
#[derive(Debug)]
pub struct Credit {
    window: u64,
    state: Mutex<State>,
    grew: Condvar,
}

impl Credit {
    /// A window of `window` bytes, kept from the start or (`kept` false) only counted until
    /// [`Credit::keep`].
    pub fn new(window: u32, kept: bool) -> Credit {
        Credit {
            window: u64::from(window),
            state: Mutex::new(State {
                sent: 0,
                granted: 0,
                kept,
                closed: false,
            }),
            grew: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the receiver may take at least one more byte; how many, at most `want`.
    /// `None` once the stream has ended.
    pub fn room(&self, want: usize) -> Option<usize> {
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if !st.kept {
                return Some(want);
            }
            let open = (self.window + st.granted).saturating_sub(st.sent);
            if open > 0 {
                return Some(want.min(usize::try_from(open).unwrap_or(usize::MAX)));
            }
            st = self.grew.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `n` bytes were sent.
    pub fn sent(&self, n: usize) {
        self.lock().sent += n as u64;
    }

    /// The receiver granted `n` more bytes.
    pub fn grant(&self, n: u32) {
        let mut st = self.lock();
        st.granted += u64::from(n);
        self.grew.notify_all();
    }

    /// From now on the window is kept.
    pub fn keep(&self) {
        self.lock().kept = true;
    }

    /// The stream ended: a pump waiting for room stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.grew.notify_all();
    }

    /// Bytes sent and not yet granted: what the receiver may hold.
    pub fn outstanding(&self) -> u64 {
        let st = self.lock();
        st.sent.saturating_sub(st.granted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_kept_window_gives_what_is_open_and_waits_for_a_grant() {
        let c = Arc::new(Credit::new(100, true));
        assert_eq!(c.room(64), Some(64));
        c.sent(64);
        assert_eq!(c.room(64), Some(36));
        c.sent(36);
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.room(64))
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiter.is_finished(), "no room, no grant: it waits");
        c.grant(10);
        assert_eq!(waiter.join().unwrap(), Some(10));
        assert_eq!(c.outstanding(), 90);
    }

    #[test]
    fn a_counted_window_never_waits_until_kept_then_owes_what_it_sent() {
        let c = Credit::new(100, false);
        c.sent(250);
        assert_eq!(c.room(64), Some(64));
        c.grant(100);
        c.keep();
        assert_eq!(c.outstanding(), 150);
        c.grant(100);
        assert_eq!(c.room(64), Some(50));
    }

    #[test]
    fn closing_wakes_a_waiting_pump() {
        let c = Arc::new(Credit::new(16, true));
        c.sent(16);
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.room(1))
        };
        c.close();
        assert_eq!(waiter.join().unwrap(), None);
        assert_eq!(c.room(1), None);
    }
}
