//! TLS over the control connection (rustls, ring provider): handshakes that say exactly what
//! failed, and a reader/writer split for the tunnel's two threads.
//!
//! Both halves share one rustls connection behind a mutex that is never held while blocking on
//! the socket: the reader reads ciphertext without the lock, the writer encrypts under the lock
//! and sends without it. Only the writer writes to the socket, so records stay in order.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, Connection, RootCertStore};
use rustls::{ServerConfig, ServerConnection};

use super::{Control, TlsInfo};
use crate::bytes::printable::printable;
use crate::bytes::recorded::Recorded;
use crate::clock;

/// Why a TLS session could not be set up.
#[derive(Debug)]
pub enum TlsError {
    /// `ca_file` could not be read or holds no certificate.
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The name to check is not a valid DNS name or IP address.
    BadServerName(String),
    /// The server's certificate chain is not signed by a trusted authority.
    Untrusted {
        /// What the agent trusts.
        trusted: String,
    },
    /// The certificate does not carry the name the agent checks.
    NameMismatch {
        /// The name checked.
        expected: String,
        /// Names the certificate has.
        presented: Vec<String>,
    },
    /// The certificate has expired, by the device's clock.
    Expired {
        /// The device's clock at the check, seconds since the epoch.
        now: u64,
        /// The end of the certificate's validity, when rustls said it.
        not_after: Option<u64>,
    },
    /// The certificate is not valid yet, by the device's clock (often a clock never set).
    NotYetValid {
        /// The device's clock at the check, seconds since the epoch.
        now: u64,
        /// The start of the certificate's validity, when rustls said it.
        not_before: Option<u64>,
    },
    /// Another certificate problem.
    Certificate(String),
    /// The server answered something that is not TLS: the port is plain.
    NotTls {
        /// The first bytes it sent.
        raw: Vec<u8>,
    },
    /// The server closed the connection after the ClientHello without a TLS answer.
    ClosedAfterHello,
    /// The peer closed the connection part-way through the handshake, after its first bytes.
    ClosedDuringHandshake,
    /// The server refused the handshake with a TLS alert.
    Alert(String),
    /// No TLS answer within the timeout.
    Timeout,
    /// Anything else (socket error, protocol violation).
    Other(String),
    /// The proxy's own certificate or key could not be used (`meeting-proxy`).
    ServerKeys {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl TlsError {
    /// True when the peer simply does not speak TLS (a configuration mismatch), false for a
    /// failed TLS session (certificates, alerts).
    pub fn is_mismatch(&self) -> bool {
        matches!(self, TlsError::NotTls { .. } | TlsError::ClosedAfterHello)
    }
}

/// What happened, without advice and without naming the peer: the same failure reads the
/// same for the proxy and the Meeting API; `advice::tls` says what to do about each.
impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::CaFile { path, why } => {
                write!(f, "cannot use the CA file {}: {why}", path.display())
            }
            TlsError::BadServerName(n) => write!(f, "\"{n}\" is not a valid TLS server name"),
            TlsError::Untrusted { trusted } => write!(
                f,
                "certificate not trusted: the server's certificate is not signed by {trusted}"
            ),
            TlsError::NameMismatch {
                expected,
                presented,
            } => write!(
                f,
                "name mismatch: the server's certificate is for [{}], not \"{expected}\"",
                presented.join(", ")
            ),
            TlsError::Expired { now, not_after } => write!(
                f,
                "the server's certificate has expired ({}the device's clock reads {})",
                not_after.map_or(String::new(), |t| format!(
                    "valid until {}; ",
                    clock::utc(t)
                )),
                clock::utc(*now)
            ),
            TlsError::NotYetValid { now, not_before } => write!(
                f,
                "the server's certificate is not valid yet ({}the device's clock reads {})",
                not_before.map_or(String::new(), |t| format!("valid from {}; ", clock::utc(t))),
                clock::utc(*now)
            ),
            TlsError::Certificate(d) => write!(f, "the server's certificate was rejected: {d}"),
            TlsError::NotTls { raw } => write!(
                f,
                "the server does not speak TLS on this port: it answered plain text \"{}\"",
                printable(raw, 64)
            ),
            TlsError::ClosedAfterHello => write!(
                f,
                "the server closed the connection after our TLS ClientHello: it does not speak \
                 TLS on this port"
            ),
            TlsError::ClosedDuringHandshake => {
                write!(
                    f,
                    "the server closed the connection during the TLS handshake"
                )
            }
            TlsError::Alert(a) => write!(f, "the server refused the TLS handshake with alert {a}"),
            TlsError::Timeout => write!(f, "no TLS answer from the server in time"),
            TlsError::Other(e) => write!(f, "TLS handshake failed: {e}"),
            TlsError::ServerKeys { cert, key, why } => write!(
                f,
                "cannot use the TLS certificate {} with key {}: {why}",
                cert.display(),
                key.display()
            ),
        }
    }
}

impl std::error::Error for TlsError {}

impl TlsError {
    /// The failure of a handshake this side served (`meeting-proxy`), in words about what its
    /// client did. `Display` is a client's view of a server.
    pub fn from_client(&self) -> FromClient<'_> {
        FromClient(self)
    }
}

/// A [`TlsError`] worded by the server about its client ([`TlsError::from_client`]). What
/// the client sent is never quoted when it may be a handshake line: that line holds a token.
pub struct FromClient<'a>(&'a TlsError);

impl fmt::Display for FromClient<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TlsError::ClosedAfterHello => f.write_str(
                "the agent closed the connection without sending a TLS ClientHello (it stopped \
                 or gave up, or this was a port probe)",
            ),
            TlsError::ClosedDuringHandshake => f.write_str(
                "the agent closed the connection in the middle of the TLS handshake, after this \
                 proxy's certificate (an agent that does not trust it says so in its own log)",
            ),
            TlsError::NotTls { raw } if raw.first() == Some(&b'{') => f.write_str(
                "the agent sent a plain-text line, not a TLS ClientHello: it has TLS off \
                 (tunnel_ssl) and this port serves TLS",
            ),
            TlsError::NotTls { raw } => write!(
                f,
                "the client sent plain text, not a TLS ClientHello: \"{}\"",
                printable(&raw[..raw.len().min(16)], 16)
            ),
            TlsError::Alert(a) if a.contains("Certificate") || a.contains("UnknownCA") => write!(
                f,
                "the agent refused this proxy's certificate (alert {a}): it does not trust its \
                 issuer, or checks another name (its ca_file and tls_server_name)"
            ),
            TlsError::Alert(a) => write!(f, "the agent ended the TLS handshake with alert {a}"),
            TlsError::Timeout => f.write_str("the agent sent no complete TLS handshake in time"),
            other => other.fmt(f),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's provider: ring's suites, ChaCha20-Poly1305 first on a CPU without AES
/// instructions (a Raspberry Pi 3's Cortex-A53 has none), where AES-GCM runs in software and
/// costs several times more per byte. The server picks in the client's order (rustls' default;
/// the suite chosen is logged at connect).
fn client_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = suites_for(cpu_has_aes(), p.cipher_suites);
    Arc::new(p)
}

/// `suites` in the order to offer them: as they are with AES instructions, else the
/// ChaCha20-Poly1305 ones first (the rest keeping their order).
fn suites_for(
    has_aes: bool,
    mut suites: Vec<rustls::SupportedCipherSuite>,
) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite as C;
    if !has_aes {
        suites.sort_by_key(|s| {
            !matches!(
                s.suite(),
                C::TLS13_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                    | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            )
        });
    }
    suites
}

/// Whether the CPU has AES instructions: the kernel's hardware capability bits on arm and
/// aarch64, CPUID on x86. Elsewhere assumed, which keeps ring's default order.
fn cpu_has_aes() -> bool {
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(target_arch = "arm")]
    {
        // HWCAP2_AES, arch/arm/include/uapi/asm/hwcap.h.
        const HWCAP2_AES: libc::c_ulong = 1;
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
        #[allow(unsafe_code)]
        let hwcap2 = unsafe { libc::getauxval(libc::AT_HWCAP2) };
        hwcap2 & HWCAP2_AES != 0
    }
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("aes")
    }
    #[cfg(not(any(
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "x86_64",
        target_arch = "x86"
    )))]
    {
        true
    }
}

/// The system's CA bundle, where Debian, Raspberry Pi OS, Buildroot and Yocto keep it
/// (ca-certificates, with the CAs an administrator installed).
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The system's CA bundle in use: `SSL_CERT_FILE` when set (as OpenSSL and Python read it),
/// else [`SYSTEM_BUNDLE`] when it exists.
pub fn system_bundle() -> Option<PathBuf> {
    match std::env::var_os("SSL_CERT_FILE").filter(|v| !v.is_empty()) {
        Some(file) => Some(PathBuf::from(file)),
        None => Some(PathBuf::from(SYSTEM_BUNDLE)).filter(|p| p.is_file()),
    }
}

/// A client configuration trusting `ca_file` alone if given, else the public roots compiled
/// in (webpki-roots) and the certificates of the system's bundle ([`system_bundle`]): a
/// private CA installed there is trusted, as the Python agent trusted it. A bundle that
/// cannot be read leaves the compiled-in roots.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |why: String| TlsError::CaFile {
                path: path.to_owned(),
                why,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        None => {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            if let Some(bundle) = system_bundle() {
                match CertificateDer::pem_file_iter(&bundle) {
                    Ok(certs) => {
                        let (added, ignored) =
                            roots.add_parsable_certificates(certs.filter_map(Result::ok));
                        log::debug!(
                            "trusting {added} certificates of {} besides the compiled-in roots \
                             ({ignored} unusable)",
                            bundle.display()
                        );
                    }
                    Err(e) => log::debug!("system CA bundle {}: {e}", bundle.display()),
                }
            }
        }
    }
    let config = ClientConfig::builder_with_provider(client_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A server configuration from PEM files (for `meeting-proxy`).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let keys = |why: String| TlsError::ServerKeys {
        cert: cert.to_owned(),
        key: key.to_owned(),
        why,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| keys(format!("{}: {e}", cert.display())))?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| keys(format!("{}: {e}", key.display())))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| keys(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| keys(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Runs the client handshake on `sock`; `trusted` names what the config trusts, for messages.
pub fn connect(
    sock: TcpStream,
    config: Arc<ClientConfig>,
    server_name: &str,
    trusted: &str,
    timeout: Duration,
) -> Result<Control, TlsError> {
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsError::BadServerName(server_name.to_owned()))?;
    let conn = ClientConnection::new(config, name).map_err(|e| TlsError::Other(e.to_string()))?;
    handshake(sock, conn.into(), trusted, timeout)
}

/// Runs the server handshake on an accepted `sock` (for `meeting-proxy`).
pub fn accept(
    sock: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> Result<Control, TlsError> {
    let conn = ServerConnection::new(config).map_err(|e| TlsError::Other(e.to_string()))?;
    handshake(sock, conn.into(), "", timeout)
}

fn handshake(
    sock: TcpStream,
    mut conn: Connection,
    trusted: &str,
    timeout: Duration,
) -> Result<Control, TlsError> {
    let io_err = |e: io::Error| TlsError::Other(e.to_string());
    sock.set_read_timeout(Some(timeout)).map_err(io_err)?;
    let mut input = Recorded::new(&sock, 64);
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut &sock).map_err(io_err)?;
        }
        if !conn.is_handshaking() {
            break;
        }
        match conn.read_tls(&mut input) {
            Ok(0) if input.seen().is_empty() => return Err(TlsError::ClosedAfterHello),
            Ok(0) => return Err(TlsError::ClosedDuringHandshake),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(TlsError::Timeout)
            }
            Err(e)
                if matches!(e.kind(), io::ErrorKind::ConnectionReset)
                    && input.seen().is_empty() =>
            {
                return Err(TlsError::ClosedAfterHello)
            }
            Err(e) => return Err(io_err(e)),
        }
        if let Err(e) = conn.process_new_packets() {
            // Tell the peer why (an alert), then report.
            let _ = conn.write_tls(&mut &sock);
            return Err(classify(e, input.seen(), trusted));
        }
    }
    while conn.wants_write() {
        conn.write_tls(&mut &sock).map_err(io_err)?;
    }
    sock.set_read_timeout(None).map_err(io_err)?;
    let info = info(&conn);
    let conn = Arc::new(Mutex::new(conn));
    let reader = TlsReader {
        sock: sock.try_clone().map_err(io_err)?,
        conn: conn.clone(),
        buf: vec![0u8; 32 * 1024].into_boxed_slice(),
        start: 0,
        end: 0,
    };
    let writer = TlsWriter {
        sock: sock.try_clone().map_err(io_err)?,
        conn,
        out: Vec::new(),
    };
    Ok(Control {
        reader: Box::new(reader),
        writer: Box::new(writer),
        sock,
        tls: Some(info),
    })
}

fn classify(e: rustls::Error, seen: &[u8], trusted: &str) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => TlsError::Untrusted {
                trusted: trusted.to_owned(),
            },
            CertificateError::NotValidForName => TlsError::NameMismatch {
                expected: "(the configured name)".into(),
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => TlsError::NameMismatch {
                expected: server_name_text(&expected),
                presented,
            },
            CertificateError::Expired => TlsError::Expired {
                now: clock::now(),
                not_after: None,
            },
            CertificateError::ExpiredContext { time, not_after } => TlsError::Expired {
                now: time.as_secs(),
                not_after: Some(not_after.as_secs()),
            },
            CertificateError::NotValidYet => TlsError::NotYetValid {
                now: clock::now(),
                not_before: None,
            },
            CertificateError::NotValidYetContext { time, not_before } => TlsError::NotYetValid {
                now: time.as_secs(),
                not_before: Some(not_before.as_secs()),
            },
            other => TlsError::Certificate(E::InvalidCertificate(other).to_string()),
        },
        // Bytes that are not TLS records: a plain-text service.
        E::InvalidMessage(_) | E::InappropriateMessage { .. }
            if seen.first().is_some_and(|b| !(0x14..=0x17).contains(b)) =>
        {
            TlsError::NotTls { raw: seen.to_vec() }
        }
        E::AlertReceived(a) => TlsError::Alert(format!("{a:?}")),
        other => TlsError::Other(other.to_string()),
    }
}

/// The diagnosis of a rustls error met elsewhere (the Meeting API client): `trusted` names
/// what the configuration trusts.
pub fn diagnose(e: rustls::Error, trusted: &str) -> TlsError {
    classify(e, &[], trusted)
}

fn server_name_text(n: &ServerName<'_>) -> String {
    match n {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

fn info(conn: &Connection) -> TlsInfo {
    let (subject, issuer, not_after) = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| super::der::describe(c))
        .unwrap_or_default();
    TlsInfo {
        version: conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        cipher: conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        subject,
        issuer,
        not_after,
    }
}

fn lock(conn: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The reading half: ciphertext from the socket (no lock held while waiting), plaintext out.
struct TlsReader {
    sock: TcpStream,
    conn: Arc<Mutex<Connection>>,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Read for TlsReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut c = lock(&self.conn);
                match c.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                if self.start < self.end {
                    let mut pending = &self.buf[self.start..self.end];
                    let before = pending.len();
                    c.read_tls(&mut pending)?;
                    self.start += before - pending.len();
                    c.process_new_packets().map_err(tls_io)?;
                    continue;
                }
            }
            let n = self.sock.read(&mut self.buf)?;
            if n == 0 {
                return Ok(0);
            }
            self.start = 0;
            self.end = n;
        }
    }
}

/// The writing half: encrypts under the lock, sends without it.
struct TlsWriter {
    sock: TcpStream,
    conn: Arc<Mutex<Connection>>,
    out: Vec<u8>,
}

impl TlsWriter {
    fn send_pending(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            (&self.sock).write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }
}

impl Write for TlsWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = {
            let mut c = lock(&self.conn);
            let n = c.writer().write(data)?;
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
            n
        };
        self.send_pending()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        {
            let mut c = lock(&self.conn);
            while c.wants_write() {
                c.write_tls(&mut self.out)?;
            }
        }
        self.send_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CipherSuite as C;

    fn names(suites: &[rustls::SupportedCipherSuite]) -> Vec<C> {
        suites.iter().map(|s| s.suite()).collect()
    }

    #[test]
    fn without_aes_instructions_chacha_is_offered_first() {
        let ring = rustls::crypto::ring::default_provider().cipher_suites;
        let plain = names(&ring);
        assert_ne!(
            plain[0],
            C::TLS13_CHACHA20_POLY1305_SHA256,
            "ring's own order starts with AES"
        );

        let with_aes = names(&suites_for(true, ring.clone()));
        assert_eq!(with_aes, plain, "with AES instructions the order is ring's");

        let without = names(&suites_for(false, ring));
        assert_eq!(without[0], C::TLS13_CHACHA20_POLY1305_SHA256);
        assert_eq!(without.len(), plain.len(), "no suite is dropped");
        // TLS 1.3 ChaCha first, then the TLS 1.2 ChaCha suites, then the AES ones in ring's order.
        let chacha = without
            .iter()
            .take_while(|s| format!("{s:?}").contains("CHACHA20"))
            .count();
        assert_eq!(chacha, 3, "{without:?}");
        let aes: Vec<_> = plain
            .iter()
            .filter(|s| !format!("{s:?}").contains("CHACHA20"))
            .collect();
        assert_eq!(without[chacha..].iter().collect::<Vec<_>>(), aes);
    }

    #[test]
    fn the_client_config_offers_the_order_this_cpu_wants() {
        let offered = names(&client_provider().cipher_suites);
        let first_is_chacha = offered[0] == C::TLS13_CHACHA20_POLY1305_SHA256;
        assert_eq!(first_is_chacha, !cpu_has_aes(), "{offered:?}");
    }
}
