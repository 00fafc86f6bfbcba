//! The device's own SSH key: an Ed25519 pair made with ring (already linked for TLS) and
//! written in OpenSSH's format, for images without `ssh-keygen` (dropbear-only). Pure: bytes
//! in, text out; the caller writes the files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use super::key::{put_string, PublicKey};

/// A new key pair.
pub struct Generated {
    /// The private key file's text (`-----BEGIN OPENSSH PRIVATE KEY-----`, unencrypted).
    pub private: String,
    /// The public key, with its comment.
    pub public: PublicKey,
}

/// Makes a new Ed25519 pair; `None` when the system has no randomness to give.
pub fn generate(comment: &str) -> Option<Generated> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 32];
    rng.fill(&mut seed).ok()?;
    let mut check = [0u8; 4];
    rng.fill(&mut check).ok()?;
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed).ok()?;
    Some(from_seed(&seed, pair.public_key().as_ref(), check, comment))
}

/// The OpenSSH encoding of a pair (PROTOCOL.key in OpenSSH's sources): `openssh-key-v1`, no
/// cipher, no KDF, one key; the private section is `checkint checkint keytype pub seed||pub
/// comment` padded 1, 2, 3... to a multiple of 8.
fn from_seed(seed: &[u8; 32], public: &[u8], check: [u8; 4], comment: &str) -> Generated {
    const ALG: &[u8] = b"ssh-ed25519";
    let mut blob = Vec::new();
    put_string(&mut blob, ALG);
    put_string(&mut blob, public);

    let mut private = Vec::new();
    private.extend_from_slice(&check);
    private.extend_from_slice(&check);
    put_string(&mut private, ALG);
    put_string(&mut private, public);
    let mut secret = seed.to_vec();
    secret.extend_from_slice(public);
    put_string(&mut private, &secret);
    put_string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }

    let mut file = b"openssh-key-v1\0".to_vec();
    put_string(&mut file, b"none");
    put_string(&mut file, b"none");
    put_string(&mut file, b"");
    file.extend_from_slice(&1u32.to_be_bytes());
    put_string(&mut file, &blob);
    put_string(&mut file, &private);

    let b64 = STANDARD.encode(&file);
    let mut text = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(70) {
        text.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        text.push('\n');
    }
    text.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    Generated {
        private: text,
        public: PublicKey {
            algorithm: "ssh-ed25519".into(),
            blob,
            comment: comment.to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_a_valid_public_line_and_an_openssh_private_file() {
        let g = generate("meeting-device-K").unwrap();
        let line = g.public.line();
        assert_eq!(PublicKey::parse(&line).unwrap(), g.public);
        assert!(line.ends_with(" meeting-device-K"));
        assert!(g
            .private
            .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA"));
        assert!(g
            .private
            .lines()
            .all(|l| l.len() <= 70 || l.starts_with("-----")));
        // Two keys differ.
        assert_ne!(generate("x").unwrap().public.blob, g.public.blob);
    }
}
