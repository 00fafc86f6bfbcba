//! Failed handshakes slowed, per source address and per device key (OpenSSH's
//! `PerSourcePenalties`). Each address and each key has a leaky bucket of failures: the first
//! few pass freely, then failures leak out at a fixed rate, and while the bucket is full the
//! next attempt is refused with the time to wait. An address is judged in the accept loop,
//! before any thread (its handshakes in progress are bounded by `max_pending_per_address`). A
//! key is judged once its handshake is read, before the token is checked or the Meeting API
//! is asked, and one handshake per key is judged at a time (the others wait their turn), so
//! guesses made at once cannot all slip in before the first failure is counted: guessing one
//! key from many addresses costs a few API calls a minute at most.
//!
//! The real device is never locked out by someone else's guesses: while its key is slowed, a
//! token accepted for it within `remember_accepted` still goes through without an API call.
//! Owns the buckets and the remembered tokens; must not touch sockets. The tokens are held for
//! the comparison only and never logged.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tunnel_agent::bytes::same_secret;

/// Addresses (and keys) tracked at most; beyond it, buckets that have emptied are swept, and
/// a newcomer finds no room only under a flood from this many sources at once (it is then not
/// slowed, and the log says so once).
const TRACKED_MAX: usize = 100_000;

/// How failures are let through: `burst` freely, then `per_second`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Failures passed before slowing.
    pub burst: f64,
    /// Attempts a second once slowed.
    pub per_second: f64,
}

struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn leak(&mut self, rate: Rate, now: Instant) {
        let gone = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second;
        self.level = (self.level - gone).max(0.0);
        self.at = now;
    }

    /// How long until one more attempt may go through; zero when it may now.
    fn wait(&self, rate: Rate) -> Duration {
        let over = self.level - (rate.burst - 1.0);
        if over <= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(over / rate.per_second)
        }
    }
}

struct Buckets<K> {
    rate: Rate,
    map: Mutex<HashMap<K, Bucket>>,
    /// When the map was last swept: at most once a second, so a flood from more sources than
    /// it holds does not make every newcomer pay for a sweep.
    swept: Mutex<Option<Instant>>,
}

impl<K: Hash + Eq> Buckets<K> {
    fn new(rate: Rate) -> Self {
        Buckets {
            rate,
            map: Mutex::new(HashMap::new()),
            swept: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Bucket>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `k` must wait before its next attempt (zero: it may go now).
    fn wait(&self, k: &K) -> Duration {
        let now = Instant::now();
        match self.lock().get_mut(k) {
            Some(b) => {
                b.leak(self.rate, now);
                b.wait(self.rate)
            }
            None => Duration::ZERO,
        }
    }

    /// Counts a failure of `k`; `false` when there was no room to track it.
    fn fail(&self, k: K) -> bool {
        let now = Instant::now();
        let mut map = self.lock();
        if !map.contains_key(&k) && !self.room(&mut map, now) {
            return false;
        }
        let b = map.entry(k).or_insert(Bucket {
            level: 0.0,
            at: now,
        });
        b.leak(self.rate, now);
        b.level += 1.0;
        true
    }

    /// Whether a new entry fits, after sweeping out the buckets that have emptied.
    fn room(&self, map: &mut HashMap<K, Bucket>, now: Instant) -> bool {
        let mut swept = self.swept.lock().unwrap_or_else(|p| p.into_inner());
        let due = swept.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if map.len() >= TRACKED_MAX && due {
            *swept = Some(now);
            let rate = self.rate;
            map.retain(|_, b| {
                b.leak(rate, now);
                b.level > 0.0
            });
        }
        map.len() < TRACKED_MAX
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Slowed: the attempt was not judged; retry after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slowed(pub Duration);

impl Slowed {
    /// "0.2 s", "20 s": when to retry, rounded up to what is worth saying.
    pub fn retry_in(&self) -> String {
        let s = self.0.as_secs_f64();
        if s < 10.0 {
            format!("{:.1} s", (s * 10.0).ceil().max(1.0) / 10.0)
        } else {
            format!("{} s", s.ceil() as u64)
        }
    }
}

/// How a key is tracked: upper-case, and no longer than a key can be (what a client sends as
/// a key may be kilobytes long; the longest are told apart by their first 128 characters).
fn key_id(key: &str) -> String {
    key.chars()
        .take(128)
        .collect::<String>()
        .to_ascii_uppercase()
}

/// What a handshake for a key may do.
pub enum Gate<'a> {
    /// Be judged now; the next handshake for the key waits until this turn is over.
    Turn(Turn<'a>),
    /// Be accepted: the key is slowed, but the token was accepted for it recently.
    Remembered,
}

/// The turn of one handshake of a key to be judged.
pub struct Turn<'a> {
    penalties: &'a Penalties,
    key: String,
}

impl Turn<'_> {
    /// The handshake failed: its key is charged (the turn ends when dropped).
    pub fn failed(&self) {
        let tracked = self.penalties.keys.fail(self.key.clone());
        self.penalties.untracked(tracked);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let p = self.penalties;
        p.turns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        p.turn_over.notify_all();
    }
}

/// The penalties of the whole proxy.
pub struct Penalties {
    addresses: Buckets<IpAddr>,
    keys: Buckets<String>,
    /// By upper-case key: the token last accepted for it, and when.
    accepted: Mutex<HashMap<String, (String, Instant)>>,
    remember: Duration,
    /// Keys with a handshake being judged now.
    turns: Mutex<HashSet<String>>,
    turn_over: Condvar,
    /// A failure found no room to be tracked (said once).
    full: std::sync::atomic::AtomicBool,
}

impl Penalties {
    /// Addresses slowed by `address`, keys by `key`; accepted tokens remembered `remember`.
    pub fn new(address: Rate, key: Rate, remember: Duration) -> Penalties {
        Penalties {
            addresses: Buckets::new(address),
            keys: Buckets::new(key),
            accepted: Mutex::new(HashMap::new()),
            remember,
            turns: Mutex::new(HashSet::new()),
            turn_over: Condvar::new(),
            full: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether `ip` may try a handshake now.
    pub fn address(&self, ip: IpAddr) -> Result<(), Slowed> {
        match self.addresses.wait(&ip) {
            d if d.is_zero() => Ok(()),
            d => Err(Slowed(d)),
        }
    }

    /// Charges a failed handshake from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let tracked = self.addresses.fail(ip);
        self.untracked(tracked);
    }

    /// Whether a handshake for `key` with `token` may be judged: its turn (waited for while
    /// another handshake of this key is being judged), or [`Gate::Remembered`] when the key is
    /// being slowed but this is the token accepted for it within `remember_accepted` (accept
    /// it without asking anyone), or how long to wait.
    pub fn key(&self, key: &str, token: &str) -> Result<Gate<'_>, Slowed> {
        let id = key_id(key);
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let wait = self.keys.wait(&id);
            if !wait.is_zero() {
                let accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
                return match accepted.get(&id) {
                    Some((t, at))
                        if at.elapsed() < self.remember
                            && same_secret(t.as_bytes(), token.as_bytes()) =>
                    {
                        Ok(Gate::Remembered)
                    }
                    _ => Err(Slowed(wait)),
                };
            }
            if turns.insert(id.clone()) {
                return Ok(Gate::Turn(Turn {
                    penalties: self,
                    key: id,
                }));
            }
            turns = self
                .turn_over
                .wait(turns)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn untracked(&self, tracked: bool) {
        if !tracked && !self.full.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!(
                "handshakes come from over {TRACKED_MAX} addresses or for over {TRACKED_MAX} \
                 keys at once; the newest are not slowed"
            );
        }
    }

    /// Remembers that `token` was accepted for `key`.
    pub fn accepted(&self, key: &str, token: &str) {
        let mut accepted = self.accepted.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if accepted.len() >= TRACKED_MAX {
            let remember = self.remember;
            accepted.retain(|_, (_, at)| now.duration_since(*at) < remember);
        }
        if accepted.len() < TRACKED_MAX {
            accepted.insert(key_id(key), (token.to_owned(), now));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRESS: Rate = Rate {
        burst: 5.0,
        per_second: 10.0,
    };
    const KEY: Rate = Rate {
        burst: 3.0,
        per_second: 3.0 / 60.0,
    };

    #[test]
    fn a_few_failures_pass_then_the_address_waits() {
        let p = Penalties::new(ADDRESS, KEY, Duration::from_secs(3600));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let other: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(p.address(ip), Ok(()));
            p.failed(ip);
        }
        let Err(Slowed(wait)) = p.address(ip) else {
            panic!("not slowed")
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert_eq!(p.address(other), Ok(()), "other addresses are not slowed");
    }

    #[test]
    fn a_slowed_key_lets_only_its_accepted_token_through() {
        let p = Penalties::new(ADDRESS, KEY, Duration::from_secs(3600));
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        p.accepted("abc", "right");
        for _ in 0..3 {
            let Ok(Gate::Turn(turn)) = p.key("ABC", "guess") else {
                panic!("slowed too soon")
            };
            turn.failed();
        }
        let Err(s) = p.key("ABC", "guess") else {
            panic!("not slowed")
        };
        assert!(s.0 > Duration::from_secs(15), "{s:?}");
        assert_eq!(s.retry_in(), "20 s");
        assert!(matches!(p.key("abc", "right"), Ok(Gate::Remembered)));
        assert!(p.key("abc", "righ").is_err());
        assert!(matches!(p.key("DEF", "x"), Ok(Gate::Turn(_))));
        let _ = ip;
    }

    #[test]
    fn one_handshake_per_key_is_judged_at_a_time() {
        let p = std::sync::Arc::new(Penalties::new(ADDRESS, KEY, Duration::from_secs(3600)));
        let first = p.key("ABC", "t");
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        let waiter = std::thread::spawn(move || {
            let gate = p2.key("abc", "u");
            tx.send(matches!(gate, Ok(Gate::Turn(_)))).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "waits its turn"
        );
        drop(first);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(true));
        waiter.join().unwrap();
    }

    #[test]
    fn tracking_is_bounded() {
        let b = Buckets::new(ADDRESS);
        for i in 0..TRACKED_MAX as u32 + 10 {
            b.fail(IpAddr::from(i.to_be_bytes()));
        }
        assert!(b.len() <= TRACKED_MAX, "{}", b.len());
    }

    #[test]
    fn retry_times_read_well() {
        assert_eq!(Slowed(Duration::from_millis(42)).retry_in(), "0.1 s");
        assert_eq!(Slowed(Duration::from_millis(150)).retry_in(), "0.2 s");
        assert_eq!(Slowed(Duration::from_secs_f64(19.2)).retry_in(), "20 s");
    }
}
