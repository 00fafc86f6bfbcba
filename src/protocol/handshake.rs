//! Handshake of the control connection (docs/protocol.md, "Handshake"): the line the agent sends and
//! the classification of whatever the proxy does in reply.
//!
//! Pure code over `BufRead`; the caller sets the socket's read timeout so that "no byte for a
//! while" shows up here as a timeout error.

use std::io::{self, BufRead};

use serde_json::Value;

use crate::bytes::printable::{printable, trim_ascii};

/// Longest reply line accepted, without its newline.
pub const MAX_REPLY_LINE: usize = 4096;
/// How many raw reply bytes diagnoses quote.
pub const QUOTE: usize = 64;

/// How a refusal's reason begins when the proxy could not decide (meeting-proxy says
/// `cannot verify the device: Meeting API unreachable (...)`): nothing is wrong with the
/// device, so the agent retries as after a network failure, not after a refusal.
pub const UNVERIFIED: &str = "cannot verify the device";

/// The handshake line, exactly as the deployed Python agent writes it:
/// `{"token": "41e291", "name": "3316A52EB08837267BF6BD3E2B2E8DC7"}` and a newline.
pub fn handshake_line(token: &str, device_key: &str) -> String {
    format!(
        "{{\"token\": {}, \"name\": {}}}\n",
        Value::from(token),
        Value::from(device_key)
    )
}

/// A reply that lets the agent go on to frame mode.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `{"status":"authenticated",...}`. `device_key` is what the proxy echoed, if anything.
    Accepted {
        /// The device key the proxy says it authenticated.
        device_key: Option<String>,
        /// What the proxy says of keepalive pings.
        ping: PingOffer,
        /// What the proxy says of per-stream windows.
        window: WindowOffer,
    },
    /// Nothing arrived before the timeout and the connection is still open: an older proxy
    /// that answers nothing and sends frames when a tunnel opens.
    NoReply,
    /// The first byte was `N`, `D` or `C`: an older proxy with no reply line. The byte is still
    /// unread in the reader and begins the first frame.
    FramesStarted {
        /// The first byte, left in the reader.
        first: u8,
    },
}

/// What an acceptance says of keepalive pings: its `keepalive` member, the longest time in
/// seconds the proxy wants between two frames from the agent. Only a proxy that announces it
/// answers `P` frames; an older one has no such member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOffer {
    /// No `keepalive` member: send nothing new.
    Absent,
    /// Ping at least this often when nothing else arrives.
    Every(std::time::Duration),
    /// A `keepalive` member this agent cannot read (quoted): treated as absent.
    Unreadable(String),
}

/// Shortest and longest keepalive interval, in seconds, read from an acceptance.
pub const PING_RANGE: std::ops::RangeInclusive<f64> = 1.0..=3600.0;

impl PingOffer {
    fn read(value: Option<&Value>) -> PingOffer {
        match value {
            None => PingOffer::Absent,
            Some(v) => match v.as_f64() {
                Some(s) if PING_RANGE.contains(&s) => {
                    PingOffer::Every(std::time::Duration::from_secs_f64(s))
                }
                _ => PingOffer::Unreadable(printable(v.to_string().as_bytes(), 64)),
            },
        }
    }
}

/// What an acceptance says of per-stream windows: its `window` member, the bytes of a stream
/// either end may send before the other grants more (`W` frames). Only a proxy that announces
/// it keeps to windows and grants them; an older one has no such member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowOffer {
    /// No `window` member: no windows, today's frames.
    Absent,
    /// Windows of this many bytes.
    Bytes(u32),
    /// A `window` member this agent cannot read (quoted): treated as absent.
    Unreadable(String),
}

/// Smallest and largest window, in bytes, read from an acceptance.
pub const WINDOW_RANGE: std::ops::RangeInclusive<u64> = 16 * 1024..=16 * 1024 * 1024;

impl WindowOffer {
    fn read(value: Option<&Value>) -> WindowOffer {
        match value.map(|v| (v, v.as_u64())) {
            None => WindowOffer::Absent,
            Some((_, Some(n))) if WINDOW_RANGE.contains(&n) => WindowOffer::Bytes(n as u32),
            Some((v, _)) => WindowOffer::Unreadable(printable(v.to_string().as_bytes(), 64)),
        }
    }
}

/// A reply that means the agent cannot go on with this connection.
#[derive(Debug)]
pub enum ReplyError {
    /// The proxy refused the device and said why (`status: error` or an `error` member).
    Refused {
        /// The server's reason, as sent (`message`, `reason`, or the `error` code).
        reason: String,
        /// The `error` code of form B, when present.
        code: Option<String>,
    },
    /// The connection closed with zero bytes received: a refusal without a reason.
    ClosedWithoutReply,
    /// The first byte was a TLS record type: the port speaks TLS, the agent does not.
    TlsOnPlainAgent {
        /// The first bytes received.
        raw: Vec<u8>,
    },
    /// Text that is not JSON: wrong port or wrong service (`http` when it starts with `HTTP/`).
    NotMeetingProxy {
        /// The first bytes received.
        raw: Vec<u8>,
        /// The reply starts with `HTTP/`.
        http: bool,
    },
    /// A reply line over [`MAX_REPLY_LINE`] bytes.
    LineTooLong {
        /// The first bytes received.
        raw: Vec<u8>,
    },
    /// Valid JSON that is not an object.
    NotAnObject {
        /// The first bytes received.
        raw: Vec<u8>,
    },
    /// A JSON object that is neither an acceptance nor a refusal.
    UnexpectedObject {
        /// The first bytes received.
        raw: Vec<u8>,
    },
    /// A socket error before the reply could be read.
    Io(io::Error),
}

/// How the agent should back off after a failed connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The proxy refused this device (with or without a reason): wait long.
    Refusal,
    /// Network trouble or a protocol mismatch: the usual exponential backoff.
    Transient,
}

impl ReplyError {
    /// Whether this is a refusal (long backoff) or something transient.
    pub fn class(&self) -> FailureClass {
        match self {
            ReplyError::Refused { reason, .. } if reason.starts_with(UNVERIFIED) => {
                FailureClass::Transient
            }
            ReplyError::Refused { .. } | ReplyError::ClosedWithoutReply => FailureClass::Refusal,
            _ => FailureClass::Transient,
        }
    }

    /// What happened, in a few words (the diagnosis says what to do).
    pub fn short(&self) -> String {
        match self {
            ReplyError::Refused { reason, code } => format!(
                "refused: \"{}\"{}",
                printable(reason.as_bytes(), 200),
                code.as_deref()
                    .map(|c| format!(" [{}]", printable(c.as_bytes(), QUOTE)))
                    .unwrap_or_default()
            ),
            ReplyError::ClosedWithoutReply => {
                "the proxy closed the connection without answering (a refusal without a reason)"
                    .into()
            }
            ReplyError::TlsOnPlainAgent { .. } => {
                "the port answered with TLS bytes; the agent is not using TLS".into()
            }
            ReplyError::NotMeetingProxy { http: true, .. } => {
                "answered like a web server (HTTP), not a Meeting proxy".into()
            }
            ReplyError::NotMeetingProxy { http: false, .. } => {
                "answered something that is not the Meeting protocol".into()
            }
            ReplyError::LineTooLong { .. } => {
                format!("reply line longer than {MAX_REPLY_LINE} bytes")
            }
            ReplyError::NotAnObject { .. } => "reply is JSON but not an object".into(),
            ReplyError::UnexpectedObject { .. } => {
                "reply is a JSON object that is neither an acceptance nor a refusal".into()
            }
            ReplyError::Io(e) => format!("reading the reply failed: {e}"),
        }
    }
}

impl std::fmt::Display for ReplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

impl std::error::Error for ReplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReplyError::Io(e) => Some(e),
            _ => None,
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Reads and classifies the proxy's answer to the handshake.
///
/// On `Ok`, bytes after the reply line (or the first frame byte) stay in `r` for the frame
/// reader.
pub fn read_reply<R: BufRead>(r: &mut R) -> Result<Reply, ReplyError> {
    let first = loop {
        match r.fill_buf() {
            Ok([]) => return Err(ReplyError::ClosedWithoutReply),
            Ok(b) => break b[0],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Ok(Reply::NoReply),
            Err(e) if is_reset(&e) => return Err(ReplyError::ClosedWithoutReply),
            Err(e) => return Err(ReplyError::Io(e)),
        }
    };
    match first {
        b'N' | b'D' | b'C' => return Ok(Reply::FramesStarted { first }),
        0x15 | 0x16 => {
            let raw = r.fill_buf().map(|b| b[..b.len().min(16)].to_vec());
            return Err(ReplyError::TlsOnPlainAgent {
                raw: raw.unwrap_or_else(|_| vec![first]),
            });
        }
        _ => {}
    }
    classify_bounded(read_bounded_line(r, MAX_REPLY_LINE).map_err(ReplyError::Io)?)
}

/// Classifies a reply line as [`read_bounded_line`] (or a frame reader finding a late reply)
/// read it.
pub fn classify_bounded(line: BoundedLine) -> Result<Reply, ReplyError> {
    match line {
        BoundedLine::Line(line) | BoundedLine::Partial(line) => classify_line(&line),
        BoundedLine::TooLong(raw) => Err(ReplyError::LineTooLong { raw }),
    }
}

/// A line read with a length limit by [`read_bounded_line`].
#[derive(Debug, PartialEq, Eq)]
pub enum BoundedLine {
    /// A whole line; the newline was consumed and is not included.
    Line(Vec<u8>),
    /// The stream ended, timed out or was reset before a newline: what arrived.
    Partial(Vec<u8>),
    /// More than the limit arrived without a newline: the first bytes, for quoting.
    TooLong(Vec<u8>),
}

/// Reads one line of at most `max` bytes (newline excluded). Bytes after the newline stay in
/// `r`. A timeout or reset part-way is not an error: the bytes so far come back as `Partial`.
pub fn read_bounded_line<R: BufRead>(r: &mut R, max: usize) -> io::Result<BoundedLine> {
    let mut line = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) || is_reset(&e) => return Ok(BoundedLine::Partial(line)),
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(BoundedLine::Partial(line));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max {
            line.extend_from_slice(&buf[..QUOTE.min(take)]);
            line.truncate(QUOTE);
            return Ok(BoundedLine::TooLong(line));
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(BoundedLine::Line(line));
        }
    }
}

/// Classifies one reply line (without its newline).
pub fn classify_line(line: &[u8]) -> Result<Reply, ReplyError> {
    let raw = || line[..line.len().min(QUOTE)].to_vec();
    let value: Value = match serde_json::from_slice(trim_ascii(line)) {
        Ok(v) => v,
        Err(_) => {
            return Err(ReplyError::NotMeetingProxy {
                raw: raw(),
                http: line.starts_with(b"HTTP/"),
            })
        }
    };
    let Value::Object(map) = value else {
        return Err(ReplyError::NotAnObject { raw: raw() });
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_owned);
    let status = text("status");
    if status.as_deref() == Some("authenticated") {
        return Ok(Reply::Accepted {
            device_key: text("device_key"),
            ping: PingOffer::read(map.get("keepalive")),
            window: WindowOffer::read(map.get("window")),
        });
    }
    if status.as_deref() == Some("error") || map.contains_key("error") {
        let code = text("error");
        let reason = text("message")
            .or_else(|| text("reason"))
            .or_else(|| code.clone())
            .unwrap_or_else(|| "(the proxy gave no reason)".to_owned());
        return Err(ReplyError::Refused { reason, code });
    }
    Err(ReplyError::UnexpectedObject { raw: raw() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Read};

    const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";

    fn classify(bytes: &[u8]) -> Result<Reply, ReplyError> {
        read_reply(&mut BufReader::new(bytes))
    }

    /// A reader that yields `data` and then fails with `kind`, like a socket with a read timeout.
    struct ThenErr<'a>(&'a [u8], io::ErrorKind);
    impl Read for ThenErr<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::from(self.1));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn handshake_line_matches_the_python_agent_byte_for_byte() {
        let line = handshake_line("41e291", KEY);
        assert_eq!(
            line,
            "{\"token\": \"41e291\", \"name\": \"3316A52EB08837267BF6BD3E2B2E8DC7\"}\n"
        );
        assert_eq!(line.len(), 64);
    }

    #[test]
    fn handshake_line_escapes_json() {
        let line = handshake_line("a\"b", "k\\");
        let v: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["token"], "a\"b");
        assert_eq!(v["name"], "k\\");
    }

    #[test]
    fn accepted_keeps_following_frame_bytes() {
        let mut r = BufReader::new(
            &b"{\"status\":\"authenticated\",\"device_key\":\"K\"}\nN\0\0\0\x01"[..],
        );
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Accepted {
                device_key: Some("K".into()),
                ping: PingOffer::Absent,
                window: WindowOffer::Absent,
            }
        );
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"N\0\0\0\x01");
    }

    #[test]
    fn the_window_member_in_every_form() {
        let offer = |member: &str| match classify(
            format!("{{\"status\":\"authenticated\",\"keepalive\":25{member}}}\n").as_bytes(),
        ) {
            Ok(Reply::Accepted { window, .. }) => window,
            other => panic!("{member}: {other:?}"),
        };
        assert_eq!(offer(""), WindowOffer::Absent);
        assert_eq!(offer(",\"window\":262144"), WindowOffer::Bytes(262_144));
        assert_eq!(offer(",\"window\":16384"), WindowOffer::Bytes(16_384));
        assert_eq!(offer(",\"window\":16777216"), WindowOffer::Bytes(16 << 20));
        for bad in [
            "0",
            "-1",
            "16383",
            "16777217",
            "4294967296",
            "1e30",
            "65536.5",
            "\"262144\"",
            "true",
            "null",
            "{}",
            "[262144]",
        ] {
            assert!(
                matches!(
                    offer(&format!(",\"window\":{bad}")),
                    WindowOffer::Unreadable(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_keepalive_member_in_every_form() {
        use std::time::Duration;
        let offer = |member: &str| match classify(
            format!("{{\"status\":\"authenticated\"{member}}}\n").as_bytes(),
        ) {
            Ok(Reply::Accepted { ping, .. }) => ping,
            other => panic!("{member}: {other:?}"),
        };
        assert_eq!(offer(""), PingOffer::Absent);
        assert_eq!(
            offer(",\"keepalive\":25"),
            PingOffer::Every(Duration::from_secs(25))
        );
        assert_eq!(
            offer(",\"keepalive\":2.5"),
            PingOffer::Every(Duration::from_millis(2500))
        );
        for bad in [
            "0", "-1", "0.5", "86400", "\"25\"", "true", "null", "{}", "[25]",
        ] {
            assert!(
                matches!(
                    offer(&format!(",\"keepalive\":{bad}")),
                    PingOffer::Unreadable(_)
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn refusal_form_a_and_b() {
        match classify(b"{\"status\":\"error\",\"message\":\"Invalid token\"}\n") {
            Err(e @ ReplyError::Refused { .. }) => {
                assert_eq!(e.class(), FailureClass::Refusal);
                assert!(e.short().contains("\"Invalid token\""));
            }
            other => panic!("{other:?}"),
        }
        match classify(b"{\"error\":\"auth_failed\",\"reason\":\"Device not authorized\"}\n") {
            Err(ReplyError::Refused { reason, code }) => {
                assert_eq!(reason, "Device not authorized");
                assert_eq!(code.as_deref(), Some("auth_failed"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_proxy_that_cannot_verify_the_device_is_transient_not_a_refusal() {
        let line = b"{\"error\":\"auth_failed\",\"reason\":\"cannot verify the device: Meeting API unreachable (HTTP 503)\"}\n";
        let e = classify(line).unwrap_err();
        assert!(matches!(e, ReplyError::Refused { .. }));
        assert_eq!(e.class(), FailureClass::Transient);
        // The same words elsewhere in a reason do not make a refusal transient.
        let other =
            b"{\"status\":\"error\",\"message\":\"wrong token; cannot verify the device\"}\n";
        assert_eq!(classify(other).unwrap_err().class(), FailureClass::Refusal);
    }

    #[test]
    fn zero_bytes_then_close_is_a_silent_refusal_naming_the_key() {
        let e = classify(b"").unwrap_err();
        assert!(matches!(e, ReplyError::ClosedWithoutReply));
        assert_eq!(e.class(), FailureClass::Refusal);
        let reset = read_reply(&mut BufReader::new(ThenErr(
            b"",
            io::ErrorKind::ConnectionReset,
        )));
        assert!(matches!(reset, Err(ReplyError::ClosedWithoutReply)));
    }

    #[test]
    fn silence_is_no_reply_not_failure() {
        let mut r = BufReader::new(ThenErr(b"", io::ErrorKind::WouldBlock));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::NoReply);
    }

    #[test]
    fn frame_byte_first_is_kept() {
        for b in [b'N', b'D', b'C'] {
            let bytes = [b, 0, 0, 0, 1];
            let mut r = BufReader::new(&bytes[..]);
            assert_eq!(
                read_reply(&mut r).unwrap(),
                Reply::FramesStarted { first: b }
            );
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, bytes);
        }
    }

    #[test]
    fn tls_bytes_say_enable_tls() {
        for b in [0x15u8, 0x16] {
            let e = classify(&[b, 3, 1, 0, 2]).unwrap_err();
            assert!(matches!(e, ReplyError::TlsOnPlainAgent { .. }));
        }
    }

    #[test]
    fn http_and_other_text_are_wrong_service_with_quoted_bytes() {
        let e = classify(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert!(matches!(e, ReplyError::NotMeetingProxy { http: true, .. }));
        assert!(
            matches!(&e, ReplyError::NotMeetingProxy { raw, .. } if raw.starts_with(b"HTTP/1.1 400"))
        );
        let e = classify(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap_err();
        assert!(matches!(e, ReplyError::NotMeetingProxy { http: false, .. }));
        let e = classify(b"\x01\x02garbage").unwrap_err();
        assert!(matches!(e, ReplyError::NotMeetingProxy { http: false, .. }));
    }

    #[test]
    fn partial_text_then_silence_is_classified_on_what_arrived() {
        let mut r = BufReader::new(ThenErr(b"220 smtp ready", io::ErrorKind::WouldBlock));
        assert!(matches!(
            read_reply(&mut r),
            Err(ReplyError::NotMeetingProxy { http: false, .. })
        ));
    }

    #[test]
    fn overlong_line_and_non_object_are_protocol_errors() {
        let long = vec![b'a'; MAX_REPLY_LINE + 1];
        let e = classify(&long).unwrap_err();
        assert!(matches!(e, ReplyError::LineTooLong { .. }));
        assert_eq!(e.class(), FailureClass::Transient);
        let mut exact = vec![b' '; MAX_REPLY_LINE - 2];
        exact.extend_from_slice(b"{}\n");
        assert!(matches!(
            classify(&exact),
            Err(ReplyError::UnexpectedObject { .. })
        ));
        assert!(matches!(
            classify(b"[1,2]\n"),
            Err(ReplyError::NotAnObject { .. })
        ));
        assert!(matches!(
            classify(b"\"authenticated\"\n"),
            Err(ReplyError::NotAnObject { .. })
        ));
    }

    #[test]
    fn accepts_crlf_and_missing_newline_before_close() {
        assert!(matches!(
            classify(b"{\"status\":\"authenticated\"}\r\n"),
            Ok(Reply::Accepted {
                device_key: None,
                ..
            })
        ));
        assert!(matches!(
            classify(b"{\"status\":\"error\",\"message\":\"x\"}"),
            Err(ReplyError::Refused { .. })
        ));
    }
}
