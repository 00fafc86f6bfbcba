//! OpenSSH public key lines (`algorithm base64 comment`): validated before anything is
//! written, and their SHA256 fingerprints as `ssh-keygen -l` prints them. Pure: no files, no
//! network.

use std::fmt;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine;

use crate::bytes::printable::printable;

/// The algorithms accepted, as named on a key line and inside its blob.
pub const ALGORITHMS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A validated public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// One of [`ALGORITHMS`].
    pub algorithm: String,
    /// The decoded key blob.
    pub blob: Vec<u8>,
    /// The comment (may be empty).
    pub comment: String,
}

/// Why a key line is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Nothing but blanks.
    Empty,
    /// More than one line.
    SeveralLines,
    /// Control characters in the line.
    ControlCharacters,
    /// Something stands before the algorithm: `authorized_keys` options of its own.
    Options(String),
    /// The first word is no algorithm of the list.
    UnknownAlgorithm(String),
    /// No base64 after the algorithm, or not base64.
    BadBase64,
    /// The blob names another algorithm than the line.
    BlobMismatch {
        /// Named on the line.
        line: String,
        /// Named in the blob.
        blob: String,
    },
    /// The blob does not have the structure of its algorithm.
    Malformed(&'static str),
    /// An RSA key shorter than [`MIN_RSA_BITS`].
    WeakRsa(usize),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => f.write_str("it is empty"),
            KeyError::SeveralLines => f.write_str("it has more than one line"),
            KeyError::ControlCharacters => f.write_str("it contains control characters"),
            KeyError::Options(before) => write!(
                f,
                "it carries authorized_keys options of its own (\"{before}\" before the key)"
            ),
            KeyError::UnknownAlgorithm(a) => write!(
                f,
                "\"{a}\" is not an accepted key type (accepted: {})",
                ALGORITHMS.join(", ")
            ),
            KeyError::BadBase64 => f.write_str("the key data is not valid base64"),
            KeyError::BlobMismatch { line, blob } => write!(
                f,
                "the line says {line} but the key data is a \"{blob}\" key"
            ),
            KeyError::Malformed(why) => write!(f, "the key data is malformed: {why}"),
            KeyError::WeakRsa(bits) => write!(
                f,
                "an RSA key of {bits} bits is too weak (at least {MIN_RSA_BITS})"
            ),
        }
    }
}

impl std::error::Error for KeyError {}

impl PublicKey {
    /// Parses and validates one key line (a trailing newline is allowed).
    pub fn parse(text: &str) -> Result<PublicKey, KeyError> {
        let text = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(text);
        if text.contains(['\n', '\r']) {
            return Err(KeyError::SeveralLines);
        }
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Err(KeyError::ControlCharacters);
        }
        let text = text.trim();
        let mut words = text.split_whitespace();
        let first = words.next().ok_or(KeyError::Empty)?;
        if !ALGORITHMS.contains(&first) {
            // Options come first; the algorithm follows them somewhere.
            let words: Vec<&str> = text.split_whitespace().collect();
            return Err(match words.iter().position(|w| ALGORITHMS.contains(w)) {
                Some(i) => KeyError::Options(printable(words[..i].join(" ").as_bytes(), 60)),
                None => KeyError::UnknownAlgorithm(printable(first.as_bytes(), 40)),
            });
        }
        let data = words.next().ok_or(KeyError::BadBase64)?;
        let blob = STANDARD.decode(data).map_err(|_| KeyError::BadBase64)?;
        check_blob(first, &blob)?;
        let rest = text[text.find(data).unwrap_or(0) + data.len()..].trim();
        Ok(PublicKey {
            algorithm: first.to_owned(),
            blob,
            comment: rest.to_owned(),
        })
    }

    /// `algorithm base64` (no comment): what identifies the key on a line.
    pub fn key_part(&self) -> String {
        format!("{} {}", self.algorithm, STANDARD.encode(&self.blob))
    }

    /// The whole line, comment included (no newline).
    pub fn line(&self) -> String {
        if self.comment.is_empty() {
            self.key_part()
        } else {
            format!("{} {}", self.key_part(), self.comment)
        }
    }

    /// `SHA256:` and the unpadded base64 of the blob's SHA-256, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.blob);
        format!("SHA256:{}", STANDARD_NO_PAD.encode(digest.as_ref()))
    }
}

/// A fingerprint as people paste it: `SHA256:` prefix optional, padding ignored. `None` when
/// it is not a SHA256 fingerprint (an MD5 one, say).
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    let t = text.trim();
    let b64 = t.strip_prefix("SHA256:").unwrap_or(t).trim_end_matches('=');
    let ok = STANDARD_NO_PAD.decode(b64).is_ok_and(|d| d.len() == 32);
    ok.then(|| format!("SHA256:{b64}"))
}

/// Reads the SSH wire format: length-prefixed strings.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn string(&mut self) -> Result<&'a [u8], KeyError> {
        let short = KeyError::Malformed("a field runs past the end");
        if self.0.len() < 4 {
            return Err(short);
        }
        let (len, rest) = self.0.split_at(4);
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if rest.len() < len {
            return Err(short);
        }
        let (s, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(s)
    }

    fn end(&self) -> Result<(), KeyError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(KeyError::Malformed("bytes follow the last field"))
        }
    }
}

/// The blob has the structure its algorithm defines (RFC 4253, 5656, 8709; OpenSSH's
/// PROTOCOL.u2f for the `sk-` forms).
fn check_blob(algorithm: &str, blob: &[u8]) -> Result<(), KeyError> {
    let mut r = Reader(blob);
    let name = r.string()?;
    if name != algorithm.as_bytes() {
        return Err(KeyError::BlobMismatch {
            line: algorithm.to_owned(),
            blob: printable(name, 40),
        });
    }
    let ed25519 = |r: &mut Reader| match r.string()?.len() {
        32 => Ok(()),
        _ => Err(KeyError::Malformed("an Ed25519 key is 32 bytes")),
    };
    let ecdsa = |r: &mut Reader, curve: &str| {
        if r.string()? != curve.as_bytes() {
            return Err(KeyError::Malformed("the curve does not match the key type"));
        }
        let coordinate = match curve {
            "nistp256" => 32,
            "nistp384" => 48,
            _ => 66,
        };
        let q = r.string()?;
        if q.len() != 1 + 2 * coordinate || q[0] != 4 {
            return Err(KeyError::Malformed("the curve point has the wrong size"));
        }
        Ok(())
    };
    match algorithm {
        "ssh-ed25519" => ed25519(&mut r)?,
        "sk-ssh-ed25519@openssh.com" => {
            ed25519(&mut r)?;
            r.string()?; // application
        }
        "sk-ecdsa-sha2-nistp256@openssh.com" => {
            ecdsa(&mut r, "nistp256")?;
            r.string()?; // application
        }
        "ssh-rsa" => {
            let e = r.string()?;
            let n = r.string()?;
            if e.is_empty() || n.is_empty() {
                return Err(KeyError::Malformed("an RSA exponent or modulus is empty"));
            }
            let bits = bits(n);
            if bits < MIN_RSA_BITS {
                return Err(KeyError::WeakRsa(bits));
            }
        }
        ecdsa_name => {
            let curve = ecdsa_name.trim_start_matches("ecdsa-sha2-");
            ecdsa(&mut r, curve)?;
        }
    }
    r.end()
}

/// Significant bits of a big-endian unsigned integer (an mpint's leading zero ignored).
fn bits(n: &[u8]) -> usize {
    match n.iter().position(|&b| b != 0) {
        Some(i) => (n.len() - i - 1) * 8 + (8 - n[i].leading_zeros() as usize),
        None => 0,
    }
}

/// Writes the SSH wire format (for the device key and for tests).
pub(crate) fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(parts: &[&[u8]]) -> String {
        let mut b = Vec::new();
        for p in parts {
            put_string(&mut b, p);
        }
        STANDARD.encode(b)
    }

    fn ed25519() -> String {
        format!(
            "ssh-ed25519 {} meeting@host",
            blob(&[b"ssh-ed25519", &[7; 32]])
        )
    }

    fn rsa(bytes: usize) -> String {
        let mut n = vec![0u8];
        n.push(0xC5);
        n.extend(std::iter::repeat_n(0x11, bytes - 1));
        format!("ssh-rsa {}", blob(&[b"ssh-rsa", &[1, 0, 1], &n]))
    }

    #[test]
    fn accepted_keys_keep_their_comment_and_round_trip() {
        let k = PublicKey::parse(&(ed25519() + "\n")).unwrap();
        assert_eq!(k.algorithm, "ssh-ed25519");
        assert_eq!(k.comment, "meeting@host");
        assert_eq!(k.line(), ed25519());
        let mut q = vec![4u8];
        q.extend([9u8; 64]);
        for line in [
            format!(
                "ecdsa-sha2-nistp256 {}",
                blob(&[b"ecdsa-sha2-nistp256", b"nistp256", &q])
            ),
            format!(
                "sk-ssh-ed25519@openssh.com {} yubi",
                blob(&[b"sk-ssh-ed25519@openssh.com", &[1; 32], b"ssh:"])
            ),
            rsa(256),
        ] {
            assert!(PublicKey::parse(&line).is_ok(), "{line}");
        }
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let ed = ed25519();
        let refused = |text: &str| PublicKey::parse(text).unwrap_err();
        assert_eq!(
            refused(&format!("command=\"/bin/sh\" {ed}")),
            KeyError::Options("command=\"/bin/sh\"".into())
        );
        assert_eq!(refused(&format!("{ed}\n{ed}\n")), KeyError::SeveralLines);
        assert_eq!(refused("ssh-ed25519 AAAA!!!"), KeyError::BadBase64);
        assert_eq!(refused("ssh-ed25519"), KeyError::BadBase64);
        assert_eq!(
            refused("ssh-dss AAAAB3NzaC1kc3M="),
            KeyError::UnknownAlgorithm("ssh-dss".into())
        );
        assert_eq!(refused("  \n"), KeyError::Empty);
        assert_eq!(
            refused(&format!("{ed}\u{1b}[2J")),
            KeyError::ControlCharacters
        );
        assert_eq!(
            refused(&format!("ssh-rsa {}", blob(&[b"ssh-ed25519", &[7; 32]]))),
            KeyError::BlobMismatch {
                line: "ssh-rsa".into(),
                blob: "ssh-ed25519".into()
            }
        );
        assert_eq!(
            refused(&format!(
                "ssh-ed25519 {}",
                blob(&[b"ssh-ed25519", &[7; 31]])
            )),
            KeyError::Malformed("an Ed25519 key is 32 bytes")
        );
        assert_eq!(refused(&rsa(128)), KeyError::WeakRsa(1024));
        assert!(refused(&rsa(128)).to_string().contains("1024 bits"));
    }

    #[test]
    fn fingerprints_are_ssh_keygen_s() {
        // ssh-keygen -l -E sha256 of this key, computed once with OpenSSH 9.
        let k = PublicKey::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        )
        .unwrap();
        assert_eq!(
            k.fingerprint(),
            "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"
        );
        let fp = k.fingerprint();
        assert_eq!(normalize_fingerprint(&fp), Some(fp.clone()));
        assert_eq!(
            normalize_fingerprint(&(fp.trim_start_matches("SHA256:").to_owned() + "=")),
            Some(fp)
        );
        assert_eq!(normalize_fingerprint("MD5:12:34"), None);
    }
}
