//! What the internet can make the proxy say at any rate, each cause logged a few times per
//! window and then counted in one summary line (the agent's limiter, shared:
//! `tunnel_agent::logging::repeats`). Owns the causes and the one set of counts.

use std::time::Duration;

use tunnel_agent::logging::repeats::{self, Repeats};

/// A cause of repeated warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// A handshake refused: wrong token, unknown or unauthorized device, malformed.
    Refused,
    /// A connection refused before its handshake: slowed address, too many in progress.
    Busy,
    /// A handshake that did not arrive within `handshake_timeout`.
    Late,
    /// A frame from a device the proxy does not take (unknown type, an open request).
    BadFrame,
    /// A public connection refused by the per-address or per-device bound.
    PublicRefused,
    /// An accept that failed (out of descriptors or memory).
    AcceptFailed,
}

impl repeats::Cause for Cause {
    fn key(self) -> &'static str {
        match self {
            Cause::Refused => "refused_handshakes",
            Cause::Busy => "refused_before_handshake",
            Cause::Late => "late_handshakes",
            Cause::BadFrame => "bad_frames",
            Cause::PublicRefused => "refused_public_connections",
            Cause::AcceptFailed => "accept_errors",
        }
    }

    fn counted(self, n: u64) -> String {
        match self {
            Cause::Refused => format!("{n} more handshakes refused"),
            Cause::Busy => format!("{n} more connections refused before their handshake"),
            Cause::Late => format!("{n} more connections sent no complete handshake in time"),
            Cause::BadFrame => format!("{n} more frames from devices ignored"),
            Cause::PublicRefused => format!("{n} more public connections refused"),
            Cause::AcceptFailed => format!("{n} more accepts failed"),
        }
    }
}

/// The proxy's counts.
pub static NOISE: Repeats<Cause> = Repeats::new();

/// Whether this occurrence of `cause` is to be logged one by one.
pub fn allow(cause: Cause) -> bool {
    NOISE.allow(cause)
}

/// Says, every few seconds, the summary of each flood whose window is over.
pub fn spawn_summaries() {
    let _ = std::thread::Builder::new()
        .name("log-summary".into())
        .stack_size(64 * 1024)
        .spawn(|| loop {
            std::thread::sleep(Duration::from_secs(5));
            NOISE.flush();
        });
}
