//! Rendering untrusted bytes (server replies, reasons) safely into one log line.

/// Renders `bytes` as one printable line: ASCII as is, `\r` `\n` `\t` escaped, anything else
/// as `\xNN`; cut after `max` input bytes with a trailing `…`.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 4);
    for &b in bytes.iter().take(max) {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    if bytes.len() > max {
        out.push('…');
    }
    out
}

/// `bytes` without leading and trailing ASCII white space (`<[u8]>::trim_ascii` needs Rust
/// 1.80; this crate supports 1.75).
pub fn trim_ascii(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::{printable, trim_ascii};

    #[test]
    fn trims_ascii_white_space() {
        assert_eq!(trim_ascii(b" \r\n{}\r\n"), b"{}");
        assert_eq!(trim_ascii(b"   "), b"");
        assert_eq!(trim_ascii(b""), b"");
    }

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(printable(b"ok\r\n\x16\\", 10), "ok\\r\\n\\x16\\\\");
        assert_eq!(printable(b"abcdef", 3), "abc…");
    }
}
