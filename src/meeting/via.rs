//! The Meeting API through the outbound proxy: a ureq connector that opens each connection
//! with [`OutboundProxy::connect`] (the same code as the tunnel's, so its failures read the
//! same), then rustls over it, verifying the Meeting API's certificate end to end. The API's
//! name is never looked up here: the outbound proxy reaches it (ureq's own proxy support and
//! its reading of `HTTPS_PROXY`/`ALL_PROXY` are not used).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

use crate::transport::outbound::OutboundProxy;

/// Connects through `proxy`; the next connector in the chain (rustls) adds TLS.
#[derive(Debug)]
pub struct Via {
    /// The outbound proxy.
    pub proxy: OutboundProxy,
    /// The bound of the connection through it (the request's own bound when shorter).
    pub timeout: Duration,
}

impl Connector<()> for Via {
    type Out = ViaTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let uri = details.uri;
        let host = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or(ureq::Error::HostNotFound)?;
        let port = uri
            .port_u16()
            .unwrap_or(match uri.scheme_str() == Some("http") {
                true => 80,
                false => 443,
            });
        let timeout = details
            .timeout
            .not_zero()
            .map_or(self.timeout, |t| (*t).min(self.timeout));
        let (stream, _) = self
            .proxy
            .connect(host, port, timeout, None)
            .map_err(|e| ureq::Error::Io(io::Error::other(e)))?;
        let config = details.config;
        Ok(Some(ViaTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

/// A TCP stream through the outbound proxy, as ureq reads and writes it. Never pooled: each
/// request opens its own (a heartbeat every 30 s does not need to keep one open).
#[derive(Debug)]
pub struct ViaTransport {
    stream: TcpStream,
    buffers: LazyBuffers,
}

fn io_error(e: io::Error, timeout: &NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ureq::Error::Timeout(timeout.reason),
        _ => ureq::Error::Io(e),
    }
}

impl Transport for ViaTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        self.stream
            .set_write_timeout(timeout.not_zero().map(|t| *t))
            .map_err(ureq::Error::Io)?;
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .map_err(|e| io_error(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        self.stream
            .set_read_timeout(timeout.not_zero().map(|t| *t))
            .map_err(ureq::Error::Io)?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match self.stream.read(input) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(e, &timeout)),
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        false
    }
}

/// No name lookup: the outbound proxy reaches the API's host (ureq wants an address, which
/// [`Via`] does not use).
#[derive(Debug)]
pub struct NoLookup;

impl Resolver for NoLookup {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
        Ok(addrs)
    }
}
