//! Keepalive pings on the control connection (docs/protocol.md, section 4): whether they are
//! agreed (the proxy announced them in its acceptance, and `ping_interval` is not off), when
//! the next one is due, and when a connection over which nothing arrived is taken for dead.
//!
//! Pure: the session's frame loop gives it the time and says what arrived; it answers what to
//! do. No socket, no thread.

use std::time::{Duration, Instant};

use log::{info, warn};

use crate::protocol::frame::DEAD_AFTER_INTERVALS;
use crate::protocol::handshake::PingOffer;

/// The agreed pings of one connection.
#[derive(Debug)]
pub struct Pings {
    every: Duration,
    last_rx: Instant,
    last_ping: Option<Instant>,
    /// Pings sent since the last frame arrived.
    unanswered: u32,
}

/// What the frame loop should do when a read comes back with nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing yet.
    Nothing,
    /// Send a ping now.
    Ping,
    /// Nothing arrived for `quiet`: the connection is dead.
    Dead {
        /// How long nothing arrived.
        quiet: Duration,
        /// Pings sent meanwhile, none answered.
        pings: u32,
    },
}

impl Pings {
    /// The pings `offer` (from the proxy's acceptance) and `own` (`ping_interval`) agree on,
    /// said in the log once: the shorter interval, or none when either side has none.
    pub fn agree(own: Option<Duration>, offer: &PingOffer, now: Instant) -> Option<Pings> {
        let every = match (offer, own) {
            (PingOffer::Absent, _) => return None,
            (PingOffer::Unreadable(raw), _) => {
                warn!(
                    "the proxy announced keepalive pings in a form this agent cannot read \
                     (\"keepalive\": {raw}); not pinging"
                );
                return None;
            }
            (PingOffer::Every(theirs), None) => {
                info!(
                    "the proxy answers keepalive pings (every {} s at least); ping_interval is \
                     off: not pinging",
                    theirs.as_secs_f64()
                );
                return None;
            }
            (PingOffer::Every(theirs), Some(own)) => own.min(*theirs),
        };
        let pings = Pings {
            every,
            last_rx: now,
            last_ping: None,
            unanswered: 0,
        };
        info!(
            "keepalive: the proxy answers pings; pinging after {} s with nothing received, the \
             connection is taken for dead after {} s of silence",
            every.as_secs_f64(),
            pings.dead_after().as_secs_f64()
        );
        Some(pings)
    }

    /// The interval: the loop must come round at least this often.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// How long a silent connection lives.
    pub fn dead_after(&self) -> Duration {
        self.every * DEAD_AFTER_INTERVALS
    }

    /// A frame (any frame) arrived at `now`; with a ping answer, how long after the ping.
    pub fn received(&mut self, now: Instant, answer: bool) -> Option<Duration> {
        self.last_rx = now;
        self.unanswered = 0;
        let rtt = self
            .last_ping
            .filter(|_| answer)
            .map(|sent| now.saturating_duration_since(sent));
        if answer {
            self.last_ping = None;
        }
        rtt
    }

    /// What is due at `now`, when a read came back with nothing. A read timeout may fire a
    /// little early or late: a tenth of the interval counts as on time.
    pub fn tick(&mut self, now: Instant) -> Due {
        let slack = self.every / 10;
        let quiet = now.saturating_duration_since(self.last_rx);
        if quiet + slack >= self.dead_after() {
            return Due::Dead {
                quiet,
                pings: self.unanswered,
            };
        }
        let since_ping = self
            .last_ping
            .map_or(quiet, |t| now.saturating_duration_since(t));
        if quiet + slack >= self.every && since_ping + slack >= self.every {
            self.last_ping = Some(now);
            self.unanswered += 1;
            return Due::Ping;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn agreed(own: u64, theirs: u64, t0: Instant) -> Pings {
        Pings::agree(
            Some(S * own as u32),
            &PingOffer::Every(S * theirs as u32),
            t0,
        )
        .unwrap()
    }

    #[test]
    fn only_an_announcement_and_an_own_interval_make_pings() {
        let t0 = Instant::now();
        assert!(Pings::agree(Some(25 * S), &PingOffer::Absent, t0).is_none());
        assert!(Pings::agree(Some(25 * S), &PingOffer::Unreadable("\"x\"".into()), t0).is_none());
        assert!(Pings::agree(None, &PingOffer::Every(25 * S), t0).is_none());
        assert_eq!(agreed(25, 60, t0).every(), 25 * S);
        assert_eq!(agreed(25, 10, t0).every(), 10 * S);
        assert_eq!(agreed(25, 10, t0).dead_after(), 30 * S);
    }

    #[test]
    fn an_idle_link_pings_each_interval_and_dies_after_three_unanswered() {
        let t0 = Instant::now();
        let mut p = agreed(25, 25, t0);
        assert_eq!(p.tick(t0 + 10 * S), Due::Nothing);
        assert_eq!(p.tick(t0 + 25 * S), Due::Ping);
        // A watchdog tick soon after: not another ping yet.
        assert_eq!(p.tick(t0 + 30 * S), Due::Nothing);
        assert_eq!(p.tick(t0 + 50 * S), Due::Ping);
        assert_eq!(
            p.tick(t0 + 75 * S),
            Due::Dead {
                quiet: 75 * S,
                pings: 2
            }
        );
    }

    #[test]
    fn any_frame_resets_and_an_answer_gives_the_round_trip() {
        let t0 = Instant::now();
        let mut p = agreed(10, 25, t0);
        assert_eq!(p.tick(t0 + 10 * S), Due::Ping);
        let rtt = p.received(t0 + 10 * S + Duration::from_millis(40), true);
        assert_eq!(rtt, Some(Duration::from_millis(40)));
        assert_eq!(p.tick(t0 + 15 * S), Due::Nothing);
        // Data keeps arriving: no ping, never dead.
        for i in 1..20 {
            p.received(t0 + 15 * S + i * S, false);
        }
        assert_eq!(p.tick(t0 + 35 * S), Due::Nothing);
        assert_eq!(p.tick(t0 + 45 * S), Due::Ping);
        assert_eq!(p.received(t0 + 46 * S, false), None);
    }

    #[test]
    fn a_timeout_that_fires_a_little_early_still_counts() {
        let t0 = Instant::now();
        let mut p = agreed(20, 20, t0);
        assert_eq!(p.tick(t0 + 19 * S), Due::Ping);
        assert!(matches!(p.tick(t0 + 58 * S), Due::Dead { .. }));
    }
}
