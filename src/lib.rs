//! tunnel-agent: the device side of the Meeting reverse tunnel, and the protocol code its
//! reference proxy shares.
//!
//! Layers, each importing only those before it:
//! - [`bytes`]: byte helpers every layer may use (the first bytes read, printable text);
//! - [`protocol`]: the wire format, pure (no sockets, no threads);
//! - [`notify`]: systemd's service notifications (ready, status, watchdog), for both daemons;
//! - [`transport`]: the TCP/TLS connection to the proxy;
//! - [`uplink`]: the frame-writer thread and the pumps from local sockets into frames;
//! - [`downlink`]: the stream sink, the way from frames to one socket (the agent's local
//!   services, meeting-proxy's public clients);
//! - [`meeting`]: the Meeting REST API client (the agent's calls and the proxy's);
//! - [`config`]: where every setting comes from;
//! - `sshkeys`: Meeting's SSH key, the device key and known_hosts (with the `tls` feature);
//! - [`advice`]: what the operator should do about a failure, worded once per situation for
//!   the peer (proxy, Meeting API) and the setting that applies; errors only state facts;
//! - [`agent`]: the agent's roles (session, channels, status, shutdown);
//! - [`check`]: the end-to-end diagnosis.
//!
//! The wire protocol and the Meeting API are described in `docs/protocol.md`.
#![warn(missing_docs)]
// Only the modules that call libc may use `unsafe`; they say so with `#![allow(unsafe_code)]`,
// and each block carries a SAFETY comment.
#![deny(unsafe_code)]

pub mod advice;
pub mod agent;
mod backoff;
pub mod bytes;
pub mod check;
pub mod clock;
pub mod config;
pub mod downlink;
pub mod logging;
pub mod meeting;
pub mod memory;
pub mod notify;
pub mod protocol;
#[cfg(feature = "tls")]
pub mod sshkeys;
pub mod transport;
pub mod uplink;
