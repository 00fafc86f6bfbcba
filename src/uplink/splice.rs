//! Zero-copy upload on plain TCP (Linux): payload bytes go local socket → pipe → control
//! socket with `splice(2)` and never enter user memory. The channel thread fills its pipe;
//! the frame writer writes the 9-byte header and splices the payload after it.
//!
//! Only bulk transfers take this path: a read of a few bytes (a keystroke) costs fewer
//! system calls copied than spliced, so a channel starts copying and switches to splicing
//! once reads come back large, and back again when they turn small. TLS always copies.

use std::io;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::copy::{copy_one, PumpEnd, MAX_DATA_PAYLOAD};
use super::pipe::{Pipe, Spliced};
use super::writer::{FrameSender, WriterGone};
use crate::protocol::frame::{encode_header, TYPE_DATA};

/// Environment variable that turns splicing off (`1`), should a kernel misbehave with it.
pub const NO_SPLICE_ENV: &str = "TUNNEL_AGENT_NO_SPLICE";
/// A copied read at least this large switches the channel to splicing.
const BULK: usize = 16 * 1024;
/// A spliced read smaller than this switches the channel back to copying.
const SMALL: usize = 4 * 1024;

/// Whether splicing is allowed by the environment (it is unless `TUNNEL_AGENT_NO_SPLICE=1`).
pub fn enabled() -> bool {
    std::env::var(NO_SPLICE_ENV).map_or(true, |v| v.trim() != "1")
}

enum Step {
    /// This many payload bytes were queued as one frame.
    Sent(usize),
    /// Splicing does not work on this socket: copy from now on.
    Unsupported,
    End(PumpEnd),
}

/// Splices one frame's worth from `sock` into `pipe` and queues it.
fn splice_one(sock: &TcpStream, pipe: &Arc<Pipe>, stream: u32, tx: &FrameSender) -> Step {
    let n = loop {
        match pipe.fill(sock, MAX_DATA_PAYLOAD) {
            Ok(0) => return Step::End(PumpEnd::Eof),
            Ok(n) => break n,
            // The pipe is full (or, with nothing queued, the socket had nothing after all:
            // poll again).
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !pipe.wait_for_room() {
                    return Step::End(PumpEnd::WriterGone);
                }
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                return Step::Unsupported
            }
            Err(e) => return Step::End(PumpEnd::ReadError(e)),
        }
    };
    let spliced = Spliced::new(encode_header(TYPE_DATA, stream, n as u32), pipe, n);
    match tx.send_spliced(spliced) {
        Ok(()) => Step::Sent(n),
        Err(WriterGone) => Step::End(PumpEnd::WriterGone),
    }
}

/// Reads `sock` until it ends, sending its bytes as `D` frames for `stream`: copied while
/// reads are small, spliced while they are large (see the module comment). Each of
/// `counters` counts the payload bytes sent. Without a pipe (out of descriptors) it copies.
pub fn pump(sock: &TcpStream, stream: u32, tx: &FrameSender, counters: &[&AtomicU64]) -> PumpEnd {
    let mut pipe: Option<Arc<Pipe>> = None;
    let mut can_splice = true;
    let mut bulk = false;
    loop {
        if bulk && pipe.is_none() {
            match Pipe::new() {
                Ok(p) => {
                    log::debug!("channel {stream}: bulk transfer, splicing (zero copy)");
                    pipe = Some(p);
                }
                Err(e) => {
                    log::debug!("channel {stream}: no pipe for splicing ({e}); copying");
                    (bulk, can_splice) = (false, false);
                }
            }
        }
        let step = match (&pipe, bulk) {
            (Some(p), true) => splice_one(sock, p, stream, tx),
            _ => match copy_one(&mut &*sock, stream, tx) {
                Ok(n) => Step::Sent(n),
                Err(end) => Step::End(end),
            },
        };
        let n = match step {
            Step::Sent(n) => n,
            Step::Unsupported => {
                log::debug!("channel {stream}: splice not supported on this socket; copying");
                (bulk, can_splice, pipe) = (false, false, None);
                continue;
            }
            Step::End(end) => return end,
        };
        for c in counters {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
        let was_bulk = bulk;
        bulk = can_splice && if bulk { n >= SMALL } else { n >= BULK };
        if was_bulk && !bulk {
            log::debug!("channel {stream}: small reads again, copying");
        } else if bulk && !was_bulk && pipe.is_some() {
            log::debug!("channel {stream}: bulk transfer again, splicing");
        }
    }
}
