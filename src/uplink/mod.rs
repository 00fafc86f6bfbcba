//! The uplink: everything that moves bytes from local services to the proxy.
//!
//! Owns the frame writer (the only way frames reach the control connection: written by the
//! sending thread when the connection is free, else by the writer thread) and the pump
//! (local socket → `D` frames), held by the stream's send [`window`] where the ends agreed on
//! windows. `writer` knows nothing of sockets' contents; `copy` builds
//! frames with [`crate::protocol`] and hands them to a [`Lane`]. Neither knows about
//! channels, sessions, configuration or how the control connection was made.

pub mod copy;
pub mod window;
pub mod writer;

pub use copy::{pump_to_frames, PumpEnd, MAX_DATA_PAYLOAD};
pub use window::Credit;
pub use writer::{FrameSender, Lane, WriterGone};
