//! `make bench-tls-arm`: what the TLS suite costs on a CPU without AES instructions (the
//! Raspberry Pi 3's Cortex-A53 as the BCM2837 ships it). Encrypts and decrypts the same bytes
//! in memory, client to server, with each TLS 1.3 suite the agent offers, and prints MB/s per
//! suite and their ratio. Under qemu the figures are emulated: only the ratio means much.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// Bytes sent through each suite.
const TOTAL: usize = 16 << 20;
/// One write: a TLS record's worth.
const CHUNK: usize = 16 * 1024;

type Res<T> = Result<T, String>;

fn provider(suite: rustls::SupportedCipherSuite) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![suite],
        ..ring::default_provider()
    })
}

/// Moves what `from` has to send into `to`.
fn carry(from: &mut rustls::Connection, to: &mut rustls::Connection) -> Res<()> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).map_err(|e| e.to_string())?;
    }
    let mut rd = &wire[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// MB/s of `TOTAL` bytes client → server with `suite` only.
fn run(suite: rustls::SupportedCipherSuite) -> Res<f64> {
    let e = |e: rcgen::Error| e.to_string();
    let key = rcgen::KeyPair::generate().map_err(e)?;
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .map_err(e)?
        .self_signed(&key)
        .map_err(e)?;
    let der = CertificateDer::from(cert.der().to_vec());
    let mut roots = RootCertStore::empty();
    roots.add(der.clone()).map_err(|e| e.to_string())?;
    let r = |e: rustls::Error| e.to_string();
    let server = ServerConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(r)?
        .with_no_client_auth()
        .with_single_cert(
            vec![der],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .map_err(r)?;
    let client = ClientConfig::builder_with_provider(provider(suite))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(r)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = "localhost".try_into().map_err(|_| "bad name".to_string())?;
    let mut c: rustls::Connection = ClientConnection::new(Arc::new(client), name)
        .map_err(r)?
        .into();
    let mut s: rustls::Connection = ServerConnection::new(Arc::new(server)).map_err(r)?.into();
    while c.is_handshaking() || s.is_handshaking() {
        carry(&mut c, &mut s)?;
        carry(&mut s, &mut c)?;
    }
    let chunk = vec![0x5au8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    let t0 = Instant::now();
    let mut got = 0;
    while got < TOTAL {
        c.writer().write_all(&chunk).map_err(|e| e.to_string())?;
        carry(&mut c, &mut s)?;
        loop {
            match s.reader().read(&mut back) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
    Ok(TOTAL as f64 / 1e6 / t0.elapsed().as_secs_f64())
}

fn main() {
    let suites = [
        rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    let mut rates = Vec::new();
    for suite in suites {
        match run(suite) {
            Ok(mbs) => {
                println!("{:?}: {mbs:.1} MB/s", suite.suite());
                rates.push(mbs);
            }
            Err(why) => println!("{:?}: failed: {why}", suite.suite()),
        }
    }
    if let [aes, chacha] = rates[..] {
        println!("ChaCha20-Poly1305 / AES-128-GCM: {:.2}×", chacha / aes);
    }
}
