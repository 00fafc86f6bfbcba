//! Warnings a misbehaving proxy or a down service can repeat at any rate (refused channels,
//! unknown frames, failed local connects): the first few of each cause in a window are logged
//! one by one, the rest are counted and said in one summary line when the window is over, so no
//! cause writes more than a few lines per window to a small flash. The counts since start go
//! into the status file.

use crate::logging::repeats::Repeats;
pub use crate::logging::repeats::BURST;

/// A repeatable warning: its key in the status file and how a count of it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cause {
    /// `N` beyond `max_channels`.
    OverMaxChannels,
    /// `N` for a port not in `allowed_ports`.
    PortNotAllowed,
    /// `N` whose payload is not a port.
    BadOpen,
    /// A frame of a type the agent does not know.
    UnknownFrame,
    /// `N` for a stream already open.
    Reopened,
    /// A local service that refused or did not accept in time.
    LocalConnectFailed,
    /// A local service that took no data while the control loop waited on it.
    LocalStalled,
    /// A channel closed because its local service took no data for `local_write_timeout`
    /// (or the control connection ended while it was stuck).
    LocalStuck,
}

impl crate::logging::repeats::Cause for Cause {
    const NOTE: &'static str = "; totals in the status file";

    /// Key in the status file's `suppressed` and `counts`.
    fn key(self) -> &'static str {
        match self {
            Cause::OverMaxChannels => "refused_over_max_channels",
            Cause::PortNotAllowed => "refused_port_not_allowed",
            Cause::BadOpen => "refused_bad_open",
            Cause::UnknownFrame => "unknown_frames",
            Cause::Reopened => "reopened_streams",
            Cause::LocalConnectFailed => "local_connect_failed",
            Cause::LocalStalled => "local_service_stalled",
            Cause::LocalStuck => "closed_local_service_stuck",
        }
    }

    fn counted(self, n: u64) -> String {
        match self {
            Cause::OverMaxChannels => format!("refused {n} more channels above max_channels"),
            Cause::PortNotAllowed => {
                format!("refused {n} more channels to ports not in allowed_ports")
            }
            Cause::BadOpen => format!("refused {n} more open requests without a port"),
            Cause::UnknownFrame => format!("ignored {n} more frames of unknown type"),
            Cause::Reopened => format!("{n} more streams reopened without a close"),
            Cause::LocalConnectFailed => format!("{n} more local connects failed"),
            Cause::LocalStalled => format!("{n} more stalls of a local service"),
            Cause::LocalStuck => format!("closed {n} more channels whose local service was stuck"),
        }
    }
}

/// The counts of every cause.
pub type Noise = Repeats<Cause>;
