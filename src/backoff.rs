//! Reconnect delays: exponential backoff with jitter, pure logic with injected randomness.

use std::time::Duration;

/// Reconnect delay policy.
///
/// Transient failures wait about 1 s, doubling to a 60 s cap; a refusal by the proxy waits at
/// least 30 s. A session that stayed up for a minute resets the sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    /// First delay.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
    /// Smallest delay after a refusal.
    pub refusal_floor: Duration,
    /// A session that lasted this long resets the sequence.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            attempt: 0,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            refusal_floor: Duration::from_secs(30),
            stable_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// A policy starting at `base`, doubling to `cap`, never below `refusal_floor` after a
    /// refusal, reset by a session that lasted `stable_after`.
    pub fn new(
        base: Duration,
        cap: Duration,
        refusal_floor: Duration,
        stable_after: Duration,
    ) -> Self {
        Backoff {
            attempt: 0,
            base,
            cap,
            refusal_floor,
            stable_after,
        }
    }

    /// Notes that a session was up for `uptime`; a long enough one resets the sequence.
    pub fn session_ended(&mut self, uptime: Duration) {
        if uptime >= self.stable_after {
            self.attempt = 0;
        }
    }

    /// The delay before the next attempt. `refused` is true when the proxy refused the device.
    /// `unit` is a random number in `[0, 1)`; the delay is the nominal one scaled by 0.8 to 1.2.
    pub fn next_delay(&mut self, refused: bool, unit: f64) -> Duration {
        let exp = self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        let nominal = self.base.saturating_mul(1 << exp).min(self.cap);
        let unit = unit.clamp(0.0, 1.0);
        if refused {
            // Never below the floor; jitter above it so a fleet refused together spreads out.
            self.refusal_floor.max(nominal).mul_f64(1.0 + 0.2 * unit)
        } else {
            nominal.mul_f64(0.8 + 0.4 * unit).min(self.cap)
        }
    }
}

/// A small xorshift generator for jitter: no cryptographic use, seeded from time and pid.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// A generator seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Jitter::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    /// A generator with a fixed seed (tests).
    pub fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// The next number in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn doubles_from_one_second_to_the_cap() {
        let mut b = Backoff::default();
        let seq: Vec<f64> = (0..9).map(|_| secs(b.next_delay(false, 0.5))).collect();
        assert_eq!(seq, vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_under_the_cap() {
        let mut b = Backoff::default();
        assert_eq!(secs(b.next_delay(false, 0.0)), 0.8);
        let mut b = Backoff::default();
        assert!((secs(b.next_delay(false, 0.999_999)) - 1.2).abs() < 1e-3);
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay(false, 0.0);
        }
        assert_eq!(secs(b.next_delay(false, 0.999)), 60.0);
    }

    #[test]
    fn refusal_waits_at_least_thirty_seconds() {
        let mut b = Backoff::default();
        let mut j = Jitter::new(42);
        for _ in 0..50 {
            let d = secs(b.next_delay(true, j.unit()));
            assert!((30.0..=72.0).contains(&d), "{d}");
        }
    }

    #[test]
    fn only_a_stable_session_resets_the_sequence() {
        let mut b = Backoff::default();
        for _ in 0..4 {
            b.next_delay(false, 0.5);
        }
        b.session_ended(Duration::from_secs(59));
        assert_eq!(secs(b.next_delay(false, 0.5)), 16.0);
        b.session_ended(Duration::from_secs(60));
        assert_eq!(secs(b.next_delay(false, 0.5)), 1.0);
    }

    #[test]
    fn jitter_is_uniformish_in_unit_interval() {
        let mut j = Jitter::new(7);
        let xs: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
