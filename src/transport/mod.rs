//! The control connection as the tunnel code sees it: a reader half, a writer half, and the
//! socket underneath for timeouts and shutdown. Plain TCP or TLS, the tunnel logic never asks.

#[cfg(feature = "tls")]
pub mod der;
#[cfg(feature = "tls")]
pub mod tls;

use std::io::{self, Read, Write};
use std::net::TcpStream;

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
