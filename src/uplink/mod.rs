//! The uplink: everything that moves bytes from local services to the proxy.
//!
//! Owns the frame-writer thread (the only writer of the control connection), the copying pump
//! (local socket → `D` frames) and the zero-copy pump (local socket → pipe → control socket).
//! Layers, each importing only those below it: `pipe` (kernel calls) ← `writer` (queue and
//! thread) ← `copy` ← `splice`. It encodes frames with [`crate::protocol`] and must not know
//! about channels, sessions, configuration or how the control connection was made.

pub mod copy;
mod pipe;
pub mod splice;
pub mod writer;

pub use copy::{pump_to_frames, PumpEnd, MAX_DATA_PAYLOAD};
pub use writer::{FrameSender, WriterGone};
