//! Who may connect: each handshake decided by the `--device` list, else by the Meeting API
//! (`GET {api}/devices/{key}` with `X-Token-Code`), with the API's answers cached briefly and
//! one API call for a burst of handshakes of the same device.
//!
//! Owns the decision and its cache; must not touch sockets or frames. The token is compared
//! in constant time and never logged.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tunnel_agent::meeting::{ApiError, Client, DeviceRecord};
use tunnel_agent::protocol::handshake::UNVERIFIED;

use crate::penalty::Slowed;
use crate::settings::Device;
use tunnel_agent::bytes::same_secret;

/// Why a handshake is refused; its `Display` is the reason sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No such device (API: 404, or not in `--device` without an API).
    UnknownDevice,
    /// The device exists but `authorized` is false.
    NotAuthorized,
    /// The token is not the device's.
    WrongToken,
    /// The API could not answer; what went wrong.
    Unverified(String),
    /// Too many failed handshakes for this device: not judged.
    Slowed(Slowed),
}

impl Refusal {
    /// Whether this counts as a failed handshake for the penalties: a guess that was judged
    /// wrong, not an API that could not answer nor an attempt that was not judged.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Refusal::UnknownDevice | Refusal::NotAuthorized | Refusal::WrongToken
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownDevice => f.write_str("unknown device"),
            Refusal::NotAuthorized => f.write_str("device not authorized"),
            Refusal::WrongToken => f.write_str("wrong token"),
            Refusal::Unverified(why) => write!(f, "{UNVERIFIED}: Meeting API unreachable ({why})"),
            Refusal::Slowed(s) => write!(
                f,
                "too many failed handshakes for this device; retry in {}",
                s.retry_in()
            ),
        }
    }
}

/// A decision and where it came from, for the log.
pub struct Decision {
    /// Accepted, or refused and why.
    pub verdict: Result<(), Refusal>,
    /// `--device list`, `Meeting API`, `Meeting API, cached`.
    pub source: &'static str,
}

/// A device key the proxy will put in an API path: what Meeting's keys look like (hex, and
/// letters, digits, `-`, `_` to be lenient), never `/`, `.` or `?`.
fn plausible_key(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A token that can go in an HTTP header: printable ASCII, not too long.
fn plausible_token(token: &str) -> bool {
    token.len() <= 512 && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The handshake judge.
pub struct Auth {
    devices: Vec<Device>,
    api: Option<ApiJudge>,
}

struct ApiJudge {
    client: Client,
    accept_ttl: Duration,
    refuse_ttl: Duration,
    /// By (upper-case key, token): a wrong token never evicts the right one's answer.
    cache: Mutex<HashMap<(String, String), Slot>>,
    answered: Condvar,
    calls: AtomicU64,
    /// API requests under way: when the last of a burst ends, free memory goes back.
    asking: AtomicUsize,
}

enum Slot {
    /// A thread is asking the API for this device; others wait for its answer.
    Asking,
    /// The API's answer for this device and token, good until `until`.
    Known {
        verdict: Result<(), Refusal>,
        until: Instant,
    },
}

/// Entries beyond which expired answers are swept out of the cache.
const CACHE_SWEEP: usize = 50_000;

impl Auth {
    /// A judge over `devices` and, when given, the API.
    pub fn new(
        devices: Vec<Device>,
        api: Option<Client>,
        accept_ttl: Duration,
        refuse_ttl: Duration,
    ) -> Auth {
        Auth {
            devices,
            api: api.map(|client| ApiJudge {
                client,
                accept_ttl,
                refuse_ttl,
                cache: Mutex::new(HashMap::new()),
                answered: Condvar::new(),
                calls: AtomicU64::new(0),
                asking: AtomicUsize::new(0),
            }),
        }
    }

    /// How many device requests went to the API so far.
    #[cfg(test)]
    pub fn api_calls(&self) -> u64 {
        self.api
            .as_ref()
            .map_or(0, |a| a.calls.load(Ordering::Relaxed))
    }

    /// Decides the handshake of `key` with `token`.
    pub fn decide(&self, key: &str, token: &str) -> Decision {
        if let Some(d) = self
            .devices
            .iter()
            .find(|d| d.key.eq_ignore_ascii_case(key))
        {
            let verdict = if !same_secret(d.token.as_bytes(), token.as_bytes()) {
                Err(Refusal::WrongToken)
            } else if !d.authorized {
                Err(Refusal::NotAuthorized)
            } else {
                Ok(())
            };
            return Decision {
                verdict,
                source: "--device list",
            };
        }
        let Some(api) = &self.api else {
            return Decision {
                verdict: Err(Refusal::UnknownDevice),
                source: "--device list",
            };
        };
        if !plausible_key(key) {
            return Decision {
                verdict: Err(Refusal::UnknownDevice),
                source: "key check (not a device key; the API was not asked)",
            };
        }
        if !plausible_token(token) {
            return Decision {
                verdict: Err(Refusal::WrongToken),
                source: "token check (not a token; the API was not asked)",
            };
        }
        api.decide(key, token)
    }
}

impl ApiJudge {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Slot>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, key: &str, token: &str) -> Decision {
        // The token is found by its keyed hash (std's SipHash); only an entry whose hash
        // matches is compared, with plain equality. Refusals age out in seconds, so the map
        // holds a few seconds' worth of wrong tokens at most.
        let id = (key.to_ascii_uppercase(), token.to_owned());
        let mut cache = self.lock();
        loop {
            match cache.get(&id) {
                Some(Slot::Known { verdict, until }) if *until > Instant::now() => {
                    return Decision {
                        verdict: verdict.clone(),
                        source: "Meeting API, cached",
                    };
                }
                Some(Slot::Asking) => {
                    cache = self.answered.wait(cache).unwrap_or_else(|p| p.into_inner());
                }
                _ => break,
            }
        }
        if cache.len() > CACHE_SWEEP {
            let now = Instant::now();
            cache.retain(|_, s| !matches!(s, Slot::Known { until, .. } if *until <= now));
        }
        cache.insert(id.clone(), Slot::Asking);
        drop(cache);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.asking.fetch_add(1, Ordering::SeqCst);
        let at = std::time::Instant::now();
        let answer = self.client.device_record(key, token);
        crate::metrics::get().api("device", at, &answer);
        let verdict = judge(answer, token);
        if self.asking.fetch_sub(1, Ordering::SeqCst) == 1 {
            tunnel_agent::memory::release_free_heap();
        }
        let ttl = match verdict {
            Ok(()) => self.accept_ttl,
            Err(_) => self.refuse_ttl,
        };
        let mut cache = self.lock();
        cache.insert(
            id,
            Slot::Known {
                verdict: verdict.clone(),
                until: Instant::now() + ttl,
            },
        );
        drop(cache);
        self.answered.notify_all();
        Decision {
            verdict,
            source: "Meeting API",
        }
    }
}

/// The verdict on the API's answer about a device, for a handshake with `token`.
fn judge(answer: Result<DeviceRecord, ApiError>, token: &str) -> Result<(), Refusal> {
    match answer {
        Ok(DeviceRecord::NotFound) => Err(Refusal::UnknownDevice),
        Ok(DeviceRecord::Found {
            authorized,
            token_code,
            ..
        }) => {
            if token_code.is_some_and(|t| !same_secret(t.as_bytes(), token.as_bytes())) {
                Err(Refusal::WrongToken)
            } else if !authorized {
                Err(Refusal::NotAuthorized)
            } else {
                Ok(())
            }
        }
        // The API itself refusing the X-Token-Code.
        Err(ApiError::Status { code: 401, .. }) => Err(Refusal::WrongToken),
        Err(ApiError::Status { code: 403, .. }) => Err(Refusal::NotAuthorized),
        Err(ApiError::Status { code, body, .. }) => {
            Err(Refusal::Unverified(format!("HTTP {code}: \"{body}\"")))
        }
        Err(ApiError::Unreachable { cause, .. }) => Err(Refusal::Unverified(cause.to_string())),
        Err(e) => Err(Refusal::Unverified(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(authorized: bool, token_code: Option<&str>) -> Result<DeviceRecord, ApiError> {
        Ok(DeviceRecord::Found {
            authorized,
            services: vec![],
            token_code: token_code.map(str::to_owned),
        })
    }

    #[test]
    fn the_record_decides_in_the_documented_order() {
        assert_eq!(judge(found(true, None), "t"), Ok(()));
        assert_eq!(judge(found(true, Some("t")), "t"), Ok(()));
        assert_eq!(judge(found(true, Some("t")), "u"), Err(Refusal::WrongToken));
        // A wrong token is said before "not authorized": the device cannot learn more than
        // that its token is wrong.
        assert_eq!(
            judge(found(false, Some("t")), "u"),
            Err(Refusal::WrongToken)
        );
        assert_eq!(judge(found(false, None), "t"), Err(Refusal::NotAuthorized));
        assert_eq!(
            judge(Ok(DeviceRecord::NotFound), "t"),
            Err(Refusal::UnknownDevice)
        );
        let status = |code| ApiError::Status {
            url: "u".into(),
            code,
            body: "Service Unavailable".into(),
        };
        assert_eq!(judge(Err(status(401)), "t"), Err(Refusal::WrongToken));
        assert_eq!(judge(Err(status(403)), "t"), Err(Refusal::NotAuthorized));
        let down = judge(Err(status(503)), "t").unwrap_err().to_string();
        assert_eq!(
            down,
            "cannot verify the device: Meeting API unreachable (HTTP 503: \"Service Unavailable\")"
        );
        assert!(down.starts_with(UNVERIFIED));
    }

    #[test]
    fn keys_and_tokens_that_cannot_go_to_the_api_are_refused_without_asking() {
        let client = Client::new(
            tunnel_agent::meeting::ApiUrl::new("https://127.0.0.1:1/api"),
            None,
            Duration::from_millis(100),
        );
        let auth = Auth::new(vec![], Some(client), Duration::ZERO, Duration::ZERO);
        for key in ["../tunnels", "K?x=1", "K/online", "", "K K"] {
            assert_eq!(
                auth.decide(key, "t").verdict,
                Err(Refusal::UnknownDevice),
                "{key}"
            );
        }
        assert_eq!(
            auth.decide("ABC", "t\r\nX-Evil: 1").verdict,
            Err(Refusal::WrongToken)
        );
        assert_eq!(auth.api_calls(), 0);
    }

    #[test]
    fn the_device_list_comes_before_the_api() {
        let dev = |token: &str, authorized| Device {
            key: "abc".into(),
            token: token.into(),
            authorized,
        };
        let auth = Auth::new(vec![dev("t", true)], None, Duration::ZERO, Duration::ZERO);
        assert_eq!(auth.decide("ABC", "t").verdict, Ok(()));
        assert_eq!(auth.decide("ABC", "x").verdict, Err(Refusal::WrongToken));
        assert_eq!(auth.decide("DEF", "t").verdict, Err(Refusal::UnknownDevice));
        let auth = Auth::new(vec![dev("t", false)], None, Duration::ZERO, Duration::ZERO);
        assert_eq!(auth.decide("abc", "t").verdict, Err(Refusal::NotAuthorized));
    }
}
