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

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn escapes_and_truncates() {
        assert_eq!(printable(b"ok\r\n\x16\\", 10), "ok\\r\\n\\x16\\\\");
        assert_eq!(printable(b"abcdef", 3), "abc…");
    }
}
