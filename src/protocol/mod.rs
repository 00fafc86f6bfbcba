//! The Meeting wire protocol, pure: the handshake line and the classification of the proxy's
//! reply, and the frame codec. Described in `docs/protocol.md`.
//!
//! Owns bytes in and bytes out over any `Read`/`Write`. Must not open sockets, start threads,
//! read configuration or log: callers decide what an outcome means for the device.

pub mod frame;
pub mod handshake;
