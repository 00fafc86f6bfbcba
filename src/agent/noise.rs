//! Warnings a misbehaving proxy or a down service can repeat at any rate (refused channels,
//! unknown frames, failed local connects): the first few of each cause in a window are logged
//! one by one, the rest are counted and said in one summary line when the window is over, so no
//! cause writes more than a few lines per window to a small flash. The counts since start go
//! into the status file.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Occurrences of one cause logged one by one per window.
pub const BURST: u64 = 3;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// A repeatable warning: its key in the status file and how a count of it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// `N` beyond `max_channels`.
    OverMaxChannels,
    /// `N` for a port not in `allowed_ports`.
    PortNotAllowed,
    /// `N` whose payload is not a port.
    BadOpen,
    /// A frame of a type the agent does not know.
    UnknownFrame,
    /// `N` for a stream already open.
    Reopened,
    /// A local service that refused or did not accept in time.
    LocalConnectFailed,
    /// A local service that took no data while the control loop waited on it.
    LocalStalled,
    /// A channel closed because its local service took no data for `local_write_timeout`
    /// (or the control connection ended while it was stuck).
    LocalStuck,
}

impl Cause {
    /// Key in the status file's `suppressed` and `counts`.
    pub fn key(self) -> &'static str {
        match self {
            Cause::OverMaxChannels => "refused_over_max_channels",
            Cause::PortNotAllowed => "refused_port_not_allowed",
            Cause::BadOpen => "refused_bad_open",
            Cause::UnknownFrame => "unknown_frames",
            Cause::Reopened => "reopened_streams",
            Cause::LocalConnectFailed => "local_connect_failed",
            Cause::LocalStalled => "local_service_stalled",
            Cause::LocalStuck => "closed_local_service_stuck",
        }
    }

    /// "refused N channels above max_channels", for the summary line.
    fn counted(self, n: u64) -> String {
        match self {
            Cause::OverMaxChannels => format!("refused {n} more channels above max_channels"),
            Cause::PortNotAllowed => {
                format!("refused {n} more channels to ports not in allowed_ports")
            }
            Cause::BadOpen => format!("refused {n} more open requests without a port"),
            Cause::UnknownFrame => format!("ignored {n} more frames of unknown type"),
            Cause::Reopened => format!("{n} more streams reopened without a close"),
            Cause::LocalConnectFailed => format!("{n} more local connects failed"),
            Cause::LocalStalled => format!("{n} more stalls of a local service"),
            Cause::LocalStuck => format!("closed {n} more channels whose local service was stuck"),
        }
    }
}

#[derive(Debug)]
struct Count {
    window: Instant,
    in_window: u64,
    total: u64,
}

/// The counts of every cause.
#[derive(Debug, Default)]
pub struct Noise {
    counts: Mutex<BTreeMap<Cause, Count>>,
}

impl Noise {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<Cause, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one occurrence of `cause`; `true` when it may be logged one by one. A window
    /// that is over is summed up first.
    pub fn allow(&self, cause: Cause) -> bool {
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

    /// Says the summary of every window that is over (called every few seconds by the status
    /// thread, so a flood that stopped is still summed up).
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

    /// Occurrences of each cause since start.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.lock()
            .iter()
            .map(|(cause, c)| (cause.key().to_owned(), c.total))
            .collect()
    }
}

fn summarize(cause: Cause, c: &Count) {
    let unlogged = c.in_window.saturating_sub(BURST);
    if unlogged > 0 {
        log::warn!(
            "{} in the last {} s (only the first {BURST} are logged one by one; totals in the \
             status file)",
            cause.counted(unlogged),
            c.window.elapsed().as_secs().max(WINDOW.as_secs())
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_of_a_window_are_allowed_and_all_are_counted() {
        let n = Noise::default();
        let allowed = (0..5000)
            .filter(|_| n.allow(Cause::OverMaxChannels))
            .count();
        assert_eq!(allowed as u64, BURST);
        assert!(n.allow(Cause::UnknownFrame), "causes are counted apart");
        assert_eq!(n.totals()["refused_over_max_channels"], 5000);
        assert_eq!(n.totals()["unknown_frames"], 1);
    }
}
