//! A reader that remembers the first bytes it passed on, so a diagnosis can quote the peer.

use std::io;

/// A reader that keeps a copy of the first bytes it passes on, so a diagnosis can quote
/// exactly what the peer sent.
pub struct Recorded<R> {
    inner: R,
    seen: Vec<u8>,
    keep: usize,
}

impl<R> Recorded<R> {
    /// Records up to `keep` bytes read through `inner`.
    pub fn new(inner: R, keep: usize) -> Self {
        Recorded {
            inner,
            seen: Vec::new(),
            keep,
        }
    }

    /// The bytes recorded so far.
    pub fn seen(&self) -> &[u8] {
        &self.seen
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }
}

impl<R: io::Read> io::Read for Recorded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = self.keep.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }
}
