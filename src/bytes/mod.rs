//! Byte helpers below every layer: a reader that remembers the first bytes it passed on
//! ([`recorded::Recorded`]) and untrusted bytes made printable for one log line
//! ([`printable::printable`]), and a comparison of secrets ([`same_secret`]).
//!
//! Owns nothing but bytes: no sockets, no protocol, no configuration. Protocol, transport,
//! the API client and `check` all quote what a peer sent through these.

pub mod printable;
pub mod recorded;

/// Equal in time that depends only on the lengths, not on where the bytes differ: for
/// tokens and other secrets a peer could otherwise guess byte by byte.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"41e291", b"41e291"));
        assert!(!same_secret(b"41e291", b"41e292"));
        assert!(!same_secret(b"41e291", b"41e29"));
        assert!(!same_secret(b"", b"x"));
        assert!(same_secret(b"", b""));
    }
}
