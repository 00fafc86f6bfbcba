//! Byte helpers below every layer: a reader that remembers the first bytes it passed on
//! ([`recorded::Recorded`]) and untrusted bytes made printable for one log line
//! ([`printable::printable`]).
//!
//! Owns nothing but bytes: no sockets, no protocol, no configuration. Protocol, transport,
//! the API client and `check` all quote what a peer sent through these.

pub mod printable;
pub mod recorded;
