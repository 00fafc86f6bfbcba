//! The downlink: everything that moves bytes from the control connection to one stream's
//! socket, the twin of [`crate::uplink`].
//!
//! Owns the stream sink (the only way `D` payloads reach a stream's socket: written by the
//! connection's reader when nothing is held for the socket, else queued, within a bound, for
//! the stream's own drain thread) on both sides of the tunnel: the agent toward a local
//! service, meeting-proxy toward a public client. A stream ends only once its queue has
//! drained, or once a bound cuts it. `sink` knows nothing of frames, channels, sessions or
//! configuration: the side that owns the stream gives it a [`sink::SinkSettings`] and words
//! what the [`sink::Cut`] it reports means for its peer.

pub mod sink;

pub use sink::{Cut, CutReason, FullQueue, Owner, SinkSettings, Stall, StreamSink, Undelivered};
