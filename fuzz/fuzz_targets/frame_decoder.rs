//! Fuzz target: the frame decoder on arbitrary bytes, split at arbitrary points.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use tunnel_agent::protocol::frame::{Frame, FrameError, FrameReader};

/// Hands out the input in pieces whose sizes come from the input's first byte.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else { return };
    let reader = Pieces { data: rest, step: 1 + first as usize % 17 };
    let mut frames = FrameReader::new(reader, 64 * 1024);
    loop {
        match frames.next_frame() {
            Ok(Some(Frame::Data { payload, .. })) => assert!(payload.len() <= 64 * 1024),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(FrameError::TooLong { len, max, .. }) => {
                assert!(len > max);
                break;
            }
            Err(_) => break,
        }
    }
});
