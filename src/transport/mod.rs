//! The connection to the proxy: TCP dialing and dead-link forensics (`tcp`), the way through an
//! outbound HTTP or SOCKS5 proxy (`outbound`), TLS (`tls`), and
//! [`Control`], the connection as the tunnel code sees it: a reader half, a writer half, and
//! the socket underneath for timeouts and shutdown. Plain TCP or TLS, the tunnel never asks.
//!
//! Owns sockets and TLS sessions. Must not know the Meeting protocol (handshake, frames),
//! channels or the agent's configuration: callers pass plain values.

#[cfg(feature = "tls")]
mod der;
pub mod outbound;
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// What a TLS session negotiated, for logs and `check`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1_3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server certificate's subject common name (or the whole subject).
    pub subject: String,
    /// Its issuer's common name.
    pub issuer: String,
    /// Its `notAfter`, `YYYY-MM-DD HH:MM:SS UTC`.
    pub not_after: String,
}

/// A connected control connection, split for one reading thread and one writing thread.
pub struct Control {
    /// Decrypted bytes from the peer.
    pub reader: Box<dyn Read + Send>,
    /// Bytes to the peer (encrypted on the way when TLS).
    pub writer: Box<dyn Write + Send>,
    /// The TCP socket underneath: read timeouts and shutdown act on it.
    pub sock: TcpStream,
    /// Set when the connection is TLS.
    pub tls: Option<TlsInfo>,
}

impl Control {
    /// A plain TCP connection.
    pub fn plain(sock: TcpStream) -> io::Result<Control> {
        Ok(Control {
            reader: Box::new(sock.try_clone()?),
            writer: Box::new(sock.try_clone()?),
            sock,
            tls: None,
        })
    }
}

/// What TLS to speak on the control connection.
#[derive(Debug, Clone, Copy)]
pub struct TlsTarget<'a> {
    /// Name checked in the server's certificate.
    pub server_name: &'a str,
    /// PEM CA bundle trusted instead of the public roots.
    pub ca_file: Option<&'a Path>,
}

impl TlsTarget<'_> {
    /// What this target trusts, for messages.
    pub fn trusted(&self) -> String {
        match self.ca_file {
            Some(ca) => format!("the CA in {}", ca.display()),
            None => {
                #[cfg(feature = "tls")]
                if let Some(bundle) = tls::system_bundle() {
                    return format!(
                        "any public certificate authority (webpki-roots) and the system's \
                         bundle {}",
                        bundle.display()
                    );
                }
                "any public certificate authority (webpki-roots)".to_owned()
            }
        }
    }
}

/// Why the connection to the proxy could not be set up.
#[derive(Debug)]
pub enum TransportError {
    /// No TCP connection.
    Tcp(tcp::TcpError),
    /// The TLS session failed.
    #[cfg(feature = "tls")]
    Tls(tls::TlsError),
    /// TLS is configured but this build has no TLS.
    TlsUnavailable,
    /// The socket could not be duplicated for the reading and writing halves (out of file
    /// descriptors).
    Split(io::Error),
    /// The outbound proxy did not open the way.
    Outbound(outbound::OutboundError),
}

/// What happened, without advice: `advice::transport` says what to do.
impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Tcp(e) => e.fmt(f),
            #[cfg(feature = "tls")]
            TransportError::Tls(e) => write!(f, "TLS to the proxy: {e}"),
            TransportError::TlsUnavailable => f.write_str(
                "TLS is configured but this tunnel-agent was built without the tls feature",
            ),
            TransportError::Split(e) => write!(f, "cannot duplicate the control socket: {e}"),
            TransportError::Outbound(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Tcp(e) => Some(e),
            #[cfg(feature = "tls")]
            TransportError::Tls(e) => Some(e),
            TransportError::TlsUnavailable => None,
            TransportError::Split(e) => Some(e),
            TransportError::Outbound(e) => Some(e),
        }
    }
}

impl From<tcp::TcpError> for TransportError {
    fn from(e: tcp::TcpError) -> Self {
        TransportError::Tcp(e)
    }
}

#[cfg(feature = "tls")]
impl From<tls::TlsError> for TransportError {
    fn from(e: tls::TlsError) -> Self {
        TransportError::Tls(e)
    }
}

/// Makes the control connection on `sock`: plain, or TLS to `tls` when given, the TLS
/// handshake bounded by `timeout`.
pub fn secure(
    sock: TcpStream,
    tls: Option<TlsTarget<'_>>,
    timeout: Duration,
) -> Result<Control, TransportError> {
    let Some(target) = tls else {
        return Control::plain(sock).map_err(TransportError::Split);
    };
    #[cfg(feature = "tls")]
    {
        let config = tls::client_config(target.ca_file)?;
        Ok(tls::connect(
            sock,
            config,
            target.server_name,
            &target.trusted(),
            timeout,
        )?)
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (sock, target, timeout);
        Err(TransportError::TlsUnavailable)
    }
}
