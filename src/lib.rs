//! tunnel-agent: the device side of the Meeting reverse tunnel, and the protocol code its
//! reference proxy shares.

pub mod agent;
pub mod backoff;
pub mod check;
pub mod clock;
pub mod config;
pub mod frame;
pub mod handshake;
pub mod logging;
pub mod memory;
pub mod printable;
pub mod relay;
pub mod splice;
pub mod transport;
pub mod writer;
