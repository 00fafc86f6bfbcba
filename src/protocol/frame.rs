//! Meeting frame codec (docs/protocol.md, "Frames"): a 9-byte header, then the payload.
//!
//! Pure code over `Read`/`Write`; no sockets, no threads.

use std::fmt;
use std::io::{self, Read, Write};

use super::handshake::{BoundedLine, QUOTE};

/// Size of a frame header: type (1), stream id (4), payload length (4).
pub const HEADER_LEN: usize = 9;
/// Frame type byte of an open request (`N`, proxy to agent).
pub const TYPE_OPEN: u8 = b'N';
/// Frame type byte of a data frame (`D`, both ways).
pub const TYPE_DATA: u8 = b'D';
/// Frame type byte of a close frame (`C`, both ways).
pub const TYPE_CLOSE: u8 = b'C';
/// Frame type byte of a replacement notice (`R`, proxy to agent, stream 0): a newer
/// connection for the same device key took this one's place, and this one is closed next.
/// Its payload is the newer connection's address as text. Agents that do not know it skip it
/// as any frame of unknown type.
pub const TYPE_REPLACED: u8 = b'R';
/// Frame type byte of a keepalive ping (`P`, agent to proxy, stream 0, no payload): sent only
/// to a proxy whose acceptance announced `keepalive`, after a while with nothing received.
pub const TYPE_PING: u8 = b'P';
/// Frame type byte of the answer to a ping (`A`, stream 0, no payload).
pub const TYPE_PING_ANSWER: u8 = b'A';
/// Frame type byte of a window frame (`W`), sent only where the proxy's acceptance announced
/// `window`. On a stream, its payload (4 bytes, big-endian) is a grant: the receiver of that
/// stream's data wrote this many more of its bytes out, and the sender may send as many more.
/// On stream 0 (agent to proxy, first frame after the acceptance) it says the agent keeps to
/// the windows and grants them too. A payload of another length reads as a grant of 0.
pub const TYPE_WINDOW: u8 = b'W';
/// Either end takes a connection over which pings were agreed for dead once nothing at all
/// arrived for this many keepalive intervals.
pub const DEAD_AFTER_INTERVALS: u32 = 3;
/// Longest address a replacement notice carries.
pub const MAX_REPLACED_BY: usize = 128;
/// Default largest payload accepted from the peer. Real proxies send tens of KiB at most.
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// One decoded frame. `Data` borrows the reader's buffer until the next call.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `N`: open a local connection to `127.0.0.1:port` for `stream`.
    Open {
        /// Stream id chosen by the proxy.
        stream: u32,
        /// Local TCP port to connect to.
        port: u16,
    },
    /// `N` whose payload is not exactly two bytes: answer it with `C`.
    BadOpen {
        /// Stream id of the request.
        stream: u32,
        /// Payload length that was received instead of 2.
        len: u32,
    },
    /// `D`: bytes for `stream`.
    Data {
        /// Stream id.
        stream: u32,
        /// Payload bytes.
        payload: &'a [u8],
    },
    /// `C`: close `stream` (any payload is ignored).
    Close {
        /// Stream id.
        stream: u32,
    },
    /// `R`: this connection was replaced by a newer one for the same device key, from the
    /// address in the payload (as sent: printable it is not guaranteed to be).
    Replaced {
        /// The newer connection's address, as text.
        by: &'a [u8],
    },
    /// `P`: a keepalive ping, to be answered with `A` (any payload is ignored).
    Ping,
    /// `A`: the answer to a ping (any payload is ignored).
    PingAnswer,
    /// `W`: a window grant for `stream`, or on stream 0 the agent's use of windows.
    Window {
        /// Stream id (0: the agent's use of windows).
        stream: u32,
        /// Bytes granted.
        grant: u32,
    },
    /// A type byte this agent does not know; its payload has been skipped.
    Unknown {
        /// The type byte.
        kind: u8,
        /// Stream id.
        stream: u32,
        /// Payload length that was skipped.
        len: u32,
    },
}

/// Why the frame stream cannot go on. Every variant means: drop the connection.
#[derive(Debug)]
pub enum FrameError {
    /// The peer announced a payload larger than we accept; nothing was allocated for it.
    TooLong {
        /// Frame type byte.
        kind: u8,
        /// Stream id.
        stream: u32,
        /// Announced payload length.
        len: u32,
        /// Largest accepted payload.
        max: u32,
    },
    /// The connection ended part-way through a frame.
    Truncated {
        /// Bytes of the frame (header and payload) received before the end.
        got: usize,
        /// Bytes the frame should have had, when the header was complete.
        expected: Option<usize>,
    },
    /// A socket error while reading.
    Io(io::Error),
}

/// Who sent the frames a [`FrameError`] is about: its words name that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// The Meeting proxy (the agent reading).
    Proxy,
    /// The device's agent (the proxy reading).
    Device,
}

/// A [`FrameError`] worded for its sender ([`FrameError::from_sender`]).
pub struct Worded<'a>(&'a FrameError, Sender);

impl FrameError {
    /// The error in words that name who sent the frames. `Display` is the agent's view
    /// (frames from the proxy).
    pub fn from_sender(&self, sender: Sender) -> Worded<'_> {
        Worded(self, sender)
    }
}

impl fmt::Display for Worded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (peer, sends, kind_of) = match self.1 {
            Sender::Proxy => ("the proxy", "any Meeting proxy sends", "a Meeting proxy"),
            Sender::Device => ("the device", "any tunnel agent sends", "a tunnel agent"),
        };
        match self.0 {
            FrameError::TooLong {
                kind,
                stream,
                len,
                max,
            } => write!(
                f,
                "protocol error: {peer} announced a {len}-byte payload (type {}, stream {stream}), \
                 more than the {max} bytes {sends}; the stream is out of sync or this is not \
                 {kind_of}",
                printable_type(*kind)
            ),
            FrameError::Truncated { got, expected } => match expected {
                Some(n) => write!(
                    f,
                    "{peer} closed the connection in the middle of a frame ({got} of {n} bytes)"
                ),
                None => write!(
                    f,
                    "{peer} closed the connection in the middle of a frame header ({got} of {HEADER_LEN} bytes)"
                ),
            },
            FrameError::Io(e) => write!(f, "reading from {peer} failed: {e}"),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.from_sender(Sender::Proxy).fmt(f)
    }
}

impl std::error::Error for FrameError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FrameError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Shows a frame type byte as `'N'` when printable, `0x07` otherwise.
pub fn printable_type(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        format!("'{}'", kind as char)
    } else {
        format!("0x{kind:02x}")
    }
}

/// Encodes a frame header.
pub fn encode_header(kind: u8, stream: u32, len: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = kind;
    h[1..5].copy_from_slice(&stream.to_be_bytes());
    h[5..9].copy_from_slice(&len.to_be_bytes());
    h
}

/// Writes one whole frame (header then payload) to `w`.
pub fn write_frame<W: Write>(w: &mut W, kind: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame payload over 4 GiB"))?;
    w.write_all(&encode_header(kind, stream, len))?;
    w.write_all(payload)
}

/// Returns the bytes of a `C` frame for `stream`.
pub fn close_frame(stream: u32) -> Vec<u8> {
    encode_header(TYPE_CLOSE, stream, 0).to_vec()
}

/// Returns the bytes of an `R` frame: replaced by a newer connection from `by` (cut to
/// [`MAX_REPLACED_BY`] bytes).
pub fn replaced_frame(by: &str) -> Vec<u8> {
    let by = &by.as_bytes()[..by.len().min(MAX_REPLACED_BY)];
    let mut v = encode_header(TYPE_REPLACED, 0, by.len() as u32).to_vec();
    v.extend_from_slice(by);
    v
}

/// The bytes of a keepalive ping (`P`, stream 0, no payload).
pub fn ping_frame() -> Vec<u8> {
    encode_header(TYPE_PING, 0, 0).to_vec()
}

/// The bytes of the answer to a ping (`A`, stream 0, no payload).
pub fn ping_answer_frame() -> Vec<u8> {
    encode_header(TYPE_PING_ANSWER, 0, 0).to_vec()
}

/// The bytes of a `W` frame granting `bytes` more on `stream` (on stream 0: the agent keeps to
/// windows of `bytes`).
pub fn window_frame(stream: u32, bytes: u32) -> Vec<u8> {
    let mut v = encode_header(TYPE_WINDOW, stream, 4).to_vec();
    v.extend_from_slice(&bytes.to_be_bytes());
    v
}

/// Returns the bytes of an `N` frame asking for local `port` on `stream`.
pub fn open_frame(stream: u32, port: u16) -> Vec<u8> {
    let mut v = encode_header(TYPE_OPEN, stream, 2).to_vec();
    v.extend_from_slice(&port.to_be_bytes());
    v
}

/// How much a [`FrameReader`] asks of its stream at once, and its buffer's usual size.
pub const READ_CHUNK: usize = 128 * 1024;

/// Reads frames from a byte stream through one buffer of its own.
///
/// Reads are large (up to [`READ_CHUNK`]) and a payload is handed out as a slice of that
/// buffer, not copied out of it; only a frame cut by the buffer's end is moved to its front.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    max_len: u32,
}

impl<R: Read> FrameReader<R> {
    /// Wraps `inner`; payloads longer than `max_len` are a protocol error.
    pub fn new(inner: R, max_len: u32) -> Self {
        Self::with_buffered(inner, &[], max_len)
    }

    /// Wraps `inner` when `already` (bytes read from it past the handshake, e.g. what a
    /// `BufReader` still holds) comes first.
    pub fn with_buffered(inner: R, already: &[u8], max_len: u32) -> Self {
        FrameReader {
            inner,
            buf: already.to_vec(),
            start: 0,
            end: already.len(),
            max_len,
        }
    }

    /// Takes over from the `BufReader` the handshake reply was read through, keeping the bytes
    /// it had already read past the reply.
    pub fn after(reader: io::BufReader<R>, max_len: u32) -> Self {
        let already = reader.buffer().to_vec();
        Self::with_buffered(reader.into_inner(), &already, max_len)
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Reads until `need` unread bytes are buffered or the stream ends; returns how many
    /// unread bytes there are.
    fn fill(&mut self, need: usize) -> io::Result<usize> {
        if self.end - self.start >= need {
            return Ok(self.end - self.start);
        }
        if self.start + need > self.buf.len() {
            // Move the unread part to the front, into a new buffer when this one is too small.
            // A new buffer is zeroed memory the allocator takes fresh from the kernel: its pages
            // count in RSS only once bytes are read into them.
            let size = need.max(READ_CHUNK);
            if self.buf.len() < size {
                let mut bigger = vec![0u8; size];
                bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
                self.buf = bigger;
            } else {
                self.buf.copy_within(self.start..self.end, 0);
            }
            self.end -= self.start;
            self.start = 0;
        }
        while self.end - self.start < need {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => break,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }

    /// After a handshake that got no reply in time: whether the proxy answered late after all,
    /// a line that begins with `{` where the first frame would begin. `Ok(None)`: the next byte
    /// begins a frame (or the stream ended), and nothing is consumed. A line is consumed with
    /// its newline, at most `max` bytes of it. A timeout part-way is an error that leaves what
    /// arrived buffered: the call can be repeated.
    pub fn late_line(&mut self, max: usize) -> io::Result<Option<BoundedLine>> {
        let mut need = 1;
        loop {
            let got = self.fill(need)?;
            if got == 0 || self.buf[self.start] != b'{' {
                return Ok(None);
            }
            let unread = &self.buf[self.start..self.end];
            let quote = |b: &[u8]| b[..b.len().min(QUOTE)].to_vec();
            let line = match unread.iter().position(|&b| b == b'\n') {
                Some(i) if i > max => BoundedLine::TooLong(quote(unread)),
                Some(i) => {
                    let line = BoundedLine::Line(unread[..i].to_vec());
                    self.start += i + 1;
                    line
                }
                None if got > max => BoundedLine::TooLong(quote(unread)),
                None if got < need => {
                    let line = BoundedLine::Partial(unread.to_vec());
                    self.start = self.end;
                    line
                }
                None => {
                    need = got + 1;
                    continue;
                }
            };
            if self.start == self.end {
                (self.start, self.end) = (0, 0);
            }
            return Ok(Some(line));
        }
    }

    /// Reads the next frame. `Ok(None)` means the peer closed cleanly between frames.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, FrameError> {
        let got = self.fill(HEADER_LEN).map_err(FrameError::Io)?;
        if got == 0 {
            return Ok(None);
        }
        if got < HEADER_LEN {
            return Err(FrameError::Truncated {
                got,
                expected: None,
            });
        }
        let h = &self.buf[self.start..self.start + HEADER_LEN];
        let kind = h[0];
        let stream = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
        let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
        if len > self.max_len {
            return Err(FrameError::TooLong {
                kind,
                stream,
                len,
                max: self.max_len,
            });
        }
        let total = HEADER_LEN + len as usize;
        let got = self.fill(total).map_err(FrameError::Io)?;
        if got < total {
            return Err(FrameError::Truncated {
                got,
                expected: Some(total),
            });
        }
        let payload = &self.buf[self.start + HEADER_LEN..self.start + total];
        self.start += total;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        let n = len as usize;
        Ok(Some(match kind {
            TYPE_OPEN if n == 2 => Frame::Open {
                stream,
                port: u16::from_be_bytes([payload[0], payload[1]]),
            },
            TYPE_OPEN => Frame::BadOpen { stream, len },
            TYPE_DATA => Frame::Data { stream, payload },
            TYPE_CLOSE => Frame::Close { stream },
            TYPE_REPLACED => Frame::Replaced { by: payload },
            TYPE_PING => Frame::Ping,
            TYPE_PING_ANSWER => Frame::PingAnswer,
            TYPE_WINDOW => Frame::Window {
                stream,
                grant: match payload {
                    [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
                    _ => 0,
                },
            },
            _ => Frame::Unknown { kind, stream, len },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &[u8]) -> FrameReader<&[u8]> {
        FrameReader::new(bytes, DEFAULT_MAX_FRAME)
    }

    #[test]
    fn decodes_each_frame_type() {
        let mut wire = open_frame(7, 22);
        write_frame(&mut wire, TYPE_DATA, 7, b"hello").unwrap();
        wire.extend(close_frame(7));
        let mut r = reader(&wire);
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Open {
                stream: 7,
                port: 22
            })
        );
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Data {
                stream: 7,
                payload: b"hello"
            })
        );
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 7 }));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn window_frames_and_their_odd_forms() {
        let mut wire = window_frame(7, 131_072);
        assert_eq!(wire.len(), HEADER_LEN + 4);
        wire.extend(window_frame(0, 262_144));
        write_frame(&mut wire, TYPE_WINDOW, 9, b"xy").unwrap();
        write_frame(&mut wire, TYPE_WINDOW, 9, b"").unwrap();
        write_frame(&mut wire, TYPE_WINDOW, 9, &[0xff; 8]).unwrap();
        let mut r = reader(&wire);
        let w = |stream, grant| Frame::Window { stream, grant };
        for want in [w(7, 131_072), w(0, 262_144), w(9, 0), w(9, 0), w(9, 0)] {
            assert_eq!(r.next_frame().unwrap(), Some(want));
        }
        assert_eq!(r.next_frame().unwrap(), None);
    }

    /// Gives its bytes a few at a time, with a timeout (`WouldBlock`) between pieces.
    struct Halting {
        pieces: Vec<Vec<u8>>,
        timeout_next: bool,
    }

    impl io::Read for Halting {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.timeout_next = !self.timeout_next;
            if !self.timeout_next {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if self.pieces.is_empty() {
                return Ok(0);
            }
            let p = self.pieces.remove(0);
            buf[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    /// A reply line that comes after frame mode began, cut by timeouts, is taken whole, and
    /// the frame after it is read as a frame; a frame first is left alone.
    #[test]
    fn a_late_reply_line_is_taken_before_the_frames() {
        let mut wire = b"{\"status\":\"authenticated\",\"device_key\":\"K\"}\n".to_vec();
        wire.extend(open_frame(3, 22));
        let pieces = wire.chunks(5).map(<[u8]>::to_vec).collect();
        let mut r = FrameReader::new(
            Halting {
                pieces,
                timeout_next: false,
            },
            DEFAULT_MAX_FRAME,
        );
        let line = loop {
            match r.late_line(4096) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => break other.unwrap(),
            }
        };
        assert_eq!(
            line,
            Some(BoundedLine::Line(
                b"{\"status\":\"authenticated\",\"device_key\":\"K\"}".to_vec()
            ))
        );
        let frame = loop {
            match r.next_frame() {
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => break other.unwrap(),
            }
        };
        assert_eq!(
            frame,
            Some(Frame::Open {
                stream: 3,
                port: 22
            })
        );

        let wire = open_frame(4, 80);
        let mut r = reader(&wire);
        assert_eq!(r.late_line(4096).unwrap(), None);
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Open {
                stream: 4,
                port: 80
            })
        );
        assert_eq!(reader(b"").late_line(4096).unwrap(), None);
    }

    /// A late "reply" with no end is bounded, and one cut by the close comes back as it is.
    #[test]
    fn a_late_reply_line_is_bounded() {
        let long = [b'{'; 5000];
        match reader(&long).late_line(4096).unwrap() {
            Some(BoundedLine::TooLong(raw)) => assert_eq!(raw.len(), QUOTE),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            reader(b"{\"status\":\"err").late_line(4096).unwrap(),
            Some(BoundedLine::Partial(b"{\"status\":\"err".to_vec()))
        );
    }

    #[test]
    fn a_read_cut_by_a_timeout_resumes_where_it_was() {
        let mut wire = Vec::new();
        write_frame(&mut wire, TYPE_DATA, 5, b"hello world").unwrap();
        let pieces = wire.chunks(4).map(<[u8]>::to_vec).collect();
        let mut r = FrameReader::new(
            Halting {
                pieces,
                timeout_next: false,
            },
            DEFAULT_MAX_FRAME,
        );
        let mut timeouts = 0;
        let frame = loop {
            match r.next_frame() {
                Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => timeouts += 1,
                other => break other.unwrap(),
            }
        };
        assert_eq!(
            frame,
            Some(Frame::Data {
                stream: 5,
                payload: b"hello world"
            })
        );
        assert!(timeouts >= 4, "{timeouts}");
    }

    #[test]
    fn a_replacement_notice_carries_the_address() {
        let wire = replaced_frame("203.0.113.9:40022");
        assert_eq!(&wire[..9], &[b'R', 0, 0, 0, 0, 0, 0, 0, 17]);
        assert_eq!(
            reader(&wire).next_frame().unwrap(),
            Some(Frame::Replaced {
                by: b"203.0.113.9:40022"
            })
        );
        assert_eq!(replaced_frame(&"x".repeat(500)).len(), 9 + MAX_REPLACED_BY);
    }

    #[test]
    fn header_is_big_endian() {
        assert_eq!(
            encode_header(TYPE_DATA, 0x01020304, 0x0A0B0C0D),
            [b'D', 1, 2, 3, 4, 0x0A, 0x0B, 0x0C, 0x0D]
        );
        assert_eq!(
            open_frame(1, 0x1F90),
            vec![b'N', 0, 0, 0, 1, 0, 0, 0, 2, 0x1F, 0x90]
        );
    }

    #[test]
    fn pings_and_answers_are_nine_bytes_on_stream_zero_and_a_payload_is_skipped() {
        assert_eq!(ping_frame(), [b'P', 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ping_answer_frame(), [b'A', 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut wire = ping_frame();
        write_frame(&mut wire, TYPE_PING_ANSWER, 0, b"from a newer peer").unwrap();
        write_frame(&mut wire, TYPE_DATA, 1, b"next").unwrap();
        let mut r = reader(&wire);
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Ping));
        assert_eq!(r.next_frame().unwrap(), Some(Frame::PingAnswer));
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Data {
                stream: 1,
                payload: b"next"
            })
        );
    }

    #[test]
    fn unknown_type_is_skipped_and_the_stream_goes_on() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b'Z', 3, b"xyz").unwrap();
        write_frame(&mut wire, TYPE_DATA, 3, b"ok").unwrap();
        let mut r = reader(&wire);
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Unknown {
                kind: b'Z',
                stream: 3,
                len: 3
            })
        );
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Data {
                stream: 3,
                payload: b"ok"
            })
        );
    }

    #[test]
    fn oversize_length_is_refused_before_allocating() {
        let wire = encode_header(TYPE_DATA, 1, u32::MAX);
        let mut r = reader(&wire);
        match r.next_frame() {
            Err(FrameError::TooLong { len, max, .. }) => {
                assert_eq!(len, u32::MAX);
                assert_eq!(max, DEFAULT_MAX_FRAME);
            }
            other => panic!("expected TooLong, got {other:?}"),
        }
        assert!(
            r.buf.capacity() <= READ_CHUNK,
            "nothing allocated for the frame's claimed length"
        );
    }

    #[test]
    fn truncated_header_and_payload_are_errors() {
        let mut r = reader(&[b'D', 0, 0]);
        assert!(matches!(
            r.next_frame(),
            Err(FrameError::Truncated {
                got: 3,
                expected: None
            })
        ));
        let mut wire = encode_header(TYPE_DATA, 1, 10).to_vec();
        wire.extend_from_slice(b"abc");
        let mut r = reader(&wire);
        assert!(matches!(
            r.next_frame(),
            Err(FrameError::Truncated {
                got: 12,
                expected: Some(19)
            })
        ));
    }

    #[test]
    fn open_with_wrong_payload_length_is_reported_not_fatal() {
        let mut wire = Vec::new();
        write_frame(&mut wire, TYPE_OPEN, 9, b"\x00\x16\x00").unwrap();
        wire.extend(close_frame(9));
        let mut r = reader(&wire);
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::BadOpen { stream: 9, len: 3 })
        );
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 9 }));
    }

    /// Deterministic property test: random frame sequences survive encode/decode unchanged,
    /// however the bytes are split across reads.
    #[test]
    fn round_trip_of_random_frame_sequences() {
        struct Chunky<'a> {
            data: &'a [u8],
            pos: usize,
            seed: u64,
        }
        impl Read for Chunky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                let step = 1 + (self.seed >> 33) as usize % 13;
                let n = step.min(buf.len()).min(self.data.len() - self.pos);
                buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
                self.pos += n;
                Ok(n)
            }
        }
        let mut seed = 0x5eed_u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..200 {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..(next() % 20) {
                let stream = next() as u32;
                match next() % 3 {
                    0 => {
                        let port = next() as u16;
                        wire.extend(open_frame(stream, port));
                        expected.push((TYPE_OPEN, stream, port.to_be_bytes().to_vec()));
                    }
                    1 => {
                        let payload: Vec<u8> = (0..next() % 300).map(|_| next() as u8).collect();
                        write_frame(&mut wire, TYPE_DATA, stream, &payload).unwrap();
                        expected.push((TYPE_DATA, stream, payload));
                    }
                    _ => {
                        wire.extend(close_frame(stream));
                        expected.push((TYPE_CLOSE, stream, Vec::new()));
                    }
                }
            }
            let mut r = FrameReader::new(
                Chunky {
                    data: &wire,
                    pos: 0,
                    seed: round,
                },
                DEFAULT_MAX_FRAME,
            );
            for (kind, stream, payload) in &expected {
                let got = r.next_frame().unwrap().expect("a frame");
                let (k, s, p) = match got {
                    Frame::Open { stream, port } => {
                        (TYPE_OPEN, stream, port.to_be_bytes().to_vec())
                    }
                    Frame::Data { stream, payload } => (TYPE_DATA, stream, payload.to_vec()),
                    Frame::Close { stream } => (TYPE_CLOSE, stream, Vec::new()),
                    other => panic!("unexpected {other:?}"),
                };
                assert_eq!((k, s, &p), (*kind, *stream, payload));
            }
            assert_eq!(r.next_frame().unwrap(), None);
        }
    }
    /// Large frames, some bigger than the read buffer, arriving in large uneven reads: every
    /// frame that the buffer's end cuts in two still comes out whole and in order.
    #[test]
    fn large_frames_cut_by_the_buffer_end_come_out_whole() {
        struct Uneven<'a>(&'a [u8], usize);
        impl Read for Uneven<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 += 1;
                let n = (7_919 * self.1 % 70_001).min(buf.len()).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let sizes = [40_000, 100_000, 0, 1, 200_000, 32_768, 60_000, 131_063, 5];
        let mut wire = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..*n).map(|j| (i * 31 + j % 251) as u8).collect();
            write_frame(&mut wire, TYPE_DATA, i as u32, &payload).unwrap();
        }
        let mut r = FrameReader::new(Uneven(&wire, 0), DEFAULT_MAX_FRAME);
        for (i, n) in sizes.iter().enumerate() {
            match r.next_frame().unwrap() {
                Some(Frame::Data { stream, payload }) => {
                    assert_eq!(stream, i as u32);
                    assert_eq!(payload.len(), *n);
                    assert!(payload
                        .iter()
                        .enumerate()
                        .all(|(j, b)| *b == (i * 31 + j % 251) as u8));
                }
                other => panic!("frame {i}: {other:?}"),
            }
        }
        assert_eq!(r.next_frame().unwrap(), None);
    }

    /// Bytes a `BufReader` read past the handshake line are the start of the frames.
    #[test]
    fn frames_continue_after_the_handshake_reader() {
        let mut wire = b"{\"status\":\"ok\"}\n".to_vec();
        write_frame(&mut wire, TYPE_DATA, 3, b"first").unwrap();
        wire.extend(close_frame(3));
        let mut br = io::BufReader::new(&wire[..]);
        let mut line = String::new();
        io::BufRead::read_line(&mut br, &mut line).unwrap();
        assert!(!br.buffer().is_empty(), "the BufReader holds frame bytes");
        let mut r = FrameReader::after(br, DEFAULT_MAX_FRAME);
        assert_eq!(
            r.next_frame().unwrap(),
            Some(Frame::Data {
                stream: 3,
                payload: b"first"
            })
        );
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 3 }));
        assert_eq!(r.next_frame().unwrap(), None);
    }
}
