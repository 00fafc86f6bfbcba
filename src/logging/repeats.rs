//! Warnings that a flood can repeat at any rate (bad frames, refused connections, failed
//! accepts): the first few of each cause in a window are logged one by one, the rest are
//! counted and said in one summary line once the window is over, so no cause writes more than
//! a few lines per window. Both binaries use it: the agent for what a proxy or a service can
//! repeat, the proxy for what the internet can.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Occurrences of one cause logged one by one per window.
pub const BURST: u64 = 3;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A cause of repeated warnings.
pub trait Cause: Copy + Ord + std::fmt::Debug {
    /// Said at the end of each summary line, e.g. where the totals are.
    const NOTE: &'static str = "";
    /// Its name in counts (the agent's status file).
    fn key(self) -> &'static str;
    /// "refused 12 more channels above max_channels": `n` occurrences not logged one by one.
    fn counted(self, n: u64) -> String;
}

#[derive(Debug)]
struct Count {
    window: Instant,
    in_window: u64,
    total: u64,
}

/// The counts of every cause.
#[derive(Debug)]
pub struct Repeats<C> {
    counts: Mutex<BTreeMap<C, Count>>,
}

impl<C> Default for Repeats<C> {
    fn default() -> Self {
        Repeats::new()
    }
}

impl<C> Repeats<C> {
    /// No cause seen yet.
    pub const fn new() -> Self {
        Repeats {
            counts: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<C: Cause> Repeats<C> {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<C, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one occurrence of `cause`; `true` when it may be logged one by one. A window
    /// that is over is summed up first.
    pub fn allow(&self, cause: C) -> bool {
        let now = Instant::now();
        let mut g = self.lock();
        let c = g.entry(cause).or_insert(Count {
            window: now,
            in_window: 0,
            total: 0,
        });
        if now.duration_since(c.window) >= WINDOW {
            summarize(cause, c);
            c.window = now;
            c.in_window = 0;
        }
        c.in_window += 1;
        c.total += 1;
        c.in_window <= BURST
    }

    /// Says the summary of every window that is over (called every few seconds, so a flood
    /// that stopped is still summed up).
    pub fn flush(&self) {
        let now = Instant::now();
        for (cause, c) in self.lock().iter_mut() {
            if now.duration_since(c.window) >= WINDOW {
                summarize(*cause, c);
                c.window = now;
                c.in_window = 0;
            }
        }
    }

    /// Occurrences of each cause since start, by its key.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.lock()
            .iter()
            .map(|(cause, c)| (cause.key().to_owned(), c.total))
            .collect()
    }
}

fn summarize<C: Cause>(cause: C, c: &Count) {
    let unlogged = c.in_window.saturating_sub(BURST);
    if unlogged > 0 {
        log::warn!(
            "{} in the last {} s (only the first {BURST} are logged one by one{})",
            cause.counted(unlogged),
            c.window.elapsed().as_secs().max(WINDOW.as_secs()),
            C::NOTE
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Test {
        A,
        B,
    }

    impl Cause for Test {
        fn key(self) -> &'static str {
            match self {
                Test::A => "a",
                Test::B => "b",
            }
        }
        fn counted(self, n: u64) -> String {
            format!("{n} more {}", self.key())
        }
    }

    #[test]
    fn the_first_of_a_window_are_allowed_and_all_are_counted() {
        let n = Repeats::new();
        let allowed = (0..5000).filter(|_| n.allow(Test::A)).count();
        assert_eq!(allowed as u64, BURST);
        assert!(n.allow(Test::B), "causes are counted apart");
        assert_eq!(n.totals()["a"], 5000);
        assert_eq!(n.totals()["b"], 1);
    }
}
