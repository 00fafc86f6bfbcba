//! Copying one TCP socket's bytes into `D` frames for the frame writer.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use super::window::Credit;
use super::writer::Lane;
use crate::protocol::frame::{encode_header, HEADER_LEN, TYPE_DATA};

/// Largest payload of the `D` frames we send: well under what any Meeting proxy reads at once.
pub const MAX_DATA_PAYLOAD: usize = 32 * 1024;

/// How a pump ended.
#[derive(Debug)]
pub enum PumpEnd {
    /// The socket reached end of file.
    Eof,
    /// Reading the socket failed.
    ReadError(io::Error),
    /// The frame writer stopped (control connection gone or finishing), or the stream's
    /// window ended.
    WriterGone,
}

/// Reads `src` until it ends, sending its bytes as `D` frames for `stream` through `lane`;
/// each of `counters` counts the payload bytes sent. With a `window`, each read takes at most
/// what the window has open, waiting for it to open (a stream whose window ended stops as
/// if its writer had).
pub fn pump_to_frames<R: Read>(
    mut src: R,
    stream: u32,
    lane: &Lane,
    counters: &[&AtomicU64],
    window: Option<&Credit>,
) -> PumpEnd {
    loop {
        let most = match window.map(|w| w.room(MAX_DATA_PAYLOAD)) {
            None => MAX_DATA_PAYLOAD,
            Some(Some(n)) => n,
            Some(None) => return PumpEnd::WriterGone,
        };
        match copy_one(&mut src, stream, lane, most) {
            Ok(n) => {
                if let Some(w) = window {
                    w.sent(n);
                }
                for c in counters {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
            Err(end) => return end,
        }
    }
}

/// Reads once from `src` straight into a frame buffer behind the header (no copy on the way
/// up) and queues the frame; returns the payload size (at most `most`).
fn copy_one<R: Read>(src: &mut R, stream: u32, lane: &Lane, most: usize) -> Result<usize, PumpEnd> {
    let size = HEADER_LEN + MAX_DATA_PAYLOAD;
    let tx = lane.sender();
    loop {
        let mut buf = tx.buffer(size);
        let n = match src.read(&mut buf[HEADER_LEN..HEADER_LEN + most]) {
            Ok(0) => {
                tx.recycle(buf);
                return Err(PumpEnd::Eof);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                tx.recycle(buf);
                continue;
            }
            Err(e) => {
                tx.recycle(buf);
                return Err(PumpEnd::ReadError(e));
            }
        };
        buf[..HEADER_LEN].copy_from_slice(&encode_header(TYPE_DATA, stream, n as u32));
        return match lane.send_buffer(buf, HEADER_LEN + n) {
            Ok(()) => Ok(n),
            Err(_) => Err(PumpEnd::WriterGone),
        };
    }
}
