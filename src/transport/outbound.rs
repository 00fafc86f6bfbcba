//! The outbound proxy: a network that reaches the internet only through an HTTP proxy (HTTP
//! CONNECT, RFC 9110 §9.3.6, with Basic authentication) or a SOCKS5 proxy (RFC 1928, with
//! RFC 1929 user/password). [`OutboundProxy::connect`] returns a TCP stream to the target
//! through it; whatever runs on that stream (the Meeting protocol, TLS to the proxy or to the
//! API) is end to end, so TLS still verifies the Meeting host's certificate.
//!
//! The wire exchanges are pure functions ([`connect_request`], [`http_reply`], [`socks_greeting`],
//! …), tested without sockets. The password is never shown: [`OutboundProxy`]'s `Display` and
//! `Debug` mask it.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use base64::Engine;

use super::tcp::{self, Keepalive};

/// How the outbound proxy is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`: HTTP CONNECT.
    Http,
    /// `socks5://`: SOCKS5, the target's name resolved here.
    Socks5,
    /// `socks5h://`: SOCKS5, the target's name resolved by the proxy.
    Socks5h,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        }
    }
}

/// An outbound proxy: `http://[user:pass@]host:port`, `socks5://…` or `socks5h://…`.
#[derive(Clone, PartialEq, Eq)]
pub struct OutboundProxy {
    /// How it is spoken to.
    pub scheme: Scheme,
    /// Its host name or address.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The user name, when it wants one.
    pub user: Option<String>,
    password: Option<String>,
}

impl OutboundProxy {
    /// Parses `scheme://[user[:password]@]host:port`; user and password may be
    /// percent-encoded. The error says what is wrong, without the password.
    pub fn parse(url: &str) -> Result<OutboundProxy, String> {
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or("expected http://host:port, socks5://host:port or socks5h://host:port")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "socks5" => Scheme::Socks5,
            "socks5h" => Scheme::Socks5h,
            "https" => {
                return Err(
                    "https:// (TLS to the outbound proxy) is not supported: use \
                            http:// (the tunnel's own TLS runs inside CONNECT)"
                        .to_owned(),
                )
            }
            other => {
                return Err(format!(
                    "unknown scheme {other:?}: expected http, socks5 or socks5h"
                ))
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err("expected no path after host:port".to_owned());
        }
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((a, b)) => (a, Some(b)),
                    None => (u, None),
                };
                let user = percent_decode(user).ok_or("the user name has a bad %-escape")?;
                let pass = pass
                    .map(|p| percent_decode(p).ok_or("the password has a bad %-escape"))
                    .transpose()?;
                if user.is_empty() {
                    return Err("the user name before '@' is empty".to_owned());
                }
                (Some(user), pass)
            }
        };
        let (host, port) = tcp::split_host_port(hostport)?;
        if scheme != Scheme::Http {
            // RFC 1929: each field is one length byte.
            let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > 255);
            if long(&user) || long(&password) {
                return Err("SOCKS5 user names and passwords are at most 255 bytes".to_owned());
            }
        }
        Ok(OutboundProxy {
            scheme,
            host,
            port,
            user,
            password,
        })
    }

    /// Whether a password is configured.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Whether credentials are configured.
    pub fn has_credentials(&self) -> bool {
        self.user.is_some()
    }

    /// `host:port` of the outbound proxy.
    pub fn addr(&self) -> String {
        tcp::join_host_port(&self.host, self.port)
    }

    /// Connects to `host:port` through the outbound proxy: TCP to the proxy within `timeout`
    /// (with `keepalive` armed on that socket: it is the one the tunnel's data crosses), then
    /// its exchange, all within `timeout`. Returns the stream and the proxy's address.
    pub fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        keepalive: Option<&Keepalive>,
    ) -> Result<(TcpStream, SocketAddr), OutboundError> {
        let err = |cause| OutboundError {
            proxy: self.to_string(),
            target: tcp::join_host_port(host, port),
            cause,
        };
        let unreachable = |e: tcp::TcpError| {
            err(OutboundCause::Unreachable(match e {
                tcp::TcpError::Resolve { err, .. } => {
                    format!("its name {} does not resolve: {err}", self.host)
                }
                tcp::TcpError::Connect { addr, err, .. } => format!("connecting to {addr}: {err}"),
            }))
        };
        let addrs = tcp::resolve(&self.host, self.port).map_err(unreachable)?;
        let (sock, addr) = tcp::connect_any(&self.addr(), &addrs, timeout).map_err(unreachable)?;
        if let Some(k) = keepalive {
            tcp::arm_keepalive(&sock, k);
        }
        let deadline = Instant::now() + timeout;
        let result = match self.scheme {
            Scheme::Http => self.http_connect(&sock, host, port, deadline),
            Scheme::Socks5 | Scheme::Socks5h => self.socks_connect(&sock, host, port, deadline),
        };
        result.map_err(err)?;
        sock.set_read_timeout(None)
            .map_err(|e| err(OutboundCause::Io(e.to_string())))?;
        sock.set_write_timeout(None)
            .map_err(|e| err(OutboundCause::Io(e.to_string())))?;
        Ok((sock, addr))
    }

    fn http_connect(
        &self,
        sock: &TcpStream,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<(), OutboundCause> {
        let credentials = self
            .user
            .as_ref()
            .map(|u| (u.as_str(), self.password.as_deref().unwrap_or("")));
        let request = connect_request(host, port, credentials);
        exchange_write(sock, &request, deadline)?;
        // Byte by byte up to the blank line, so nothing after the reply's head is taken from
        // the tunnel's first bytes.
        let mut head = Vec::with_capacity(256);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
            if head.len() >= MAX_REPLY_HEAD {
                return Err(OutboundCause::Malformed(format!(
                    "its reply's head is longer than {MAX_REPLY_HEAD} bytes"
                )));
            }
            match exchange_read(sock, &mut byte, deadline)? {
                0 if head.is_empty() => return Err(OutboundCause::Closed),
                0 => {
                    return Err(OutboundCause::Malformed(
                        "it closed the connection in the middle of its reply".to_owned(),
                    ))
                }
                _ => head.push(byte[0]),
            }
        }
        http_reply(&head, self.has_credentials(), port)
    }

    fn socks_connect(
        &self,
        sock: &TcpStream,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<(), OutboundCause> {
        exchange_write(sock, &socks_greeting(self.has_credentials()), deadline)?;
        let mut choice = [0u8; 2];
        exchange_read_exact(sock, &mut choice, deadline)?;
        match socks_method(choice, self.has_credentials())? {
            SocksMethod::None => {}
            SocksMethod::UserPassword => {
                let user = self.user.as_deref().unwrap_or("");
                let pass = self.password.as_deref().unwrap_or("");
                exchange_write(sock, &socks_auth(user, pass), deadline)?;
                let mut status = [0u8; 2];
                exchange_read_exact(sock, &mut status, deadline)?;
                if status[1] != 0 {
                    return Err(OutboundCause::SocksAuthRejected);
                }
            }
        }
        let target = match self.scheme {
            Scheme::Socks5h => SocksTarget::Name(host),
            _ => SocksTarget::Addr(resolve_here(host, port)?),
        };
        exchange_write(sock, &socks_request(&target, port), deadline)?;
        let mut head = [0u8; 4];
        exchange_read_exact(sock, &mut head, deadline)?;
        socks_reply(head)?;
        // The bound address that follows: skipped, its length by its type.
        let rest = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut n = [0u8; 1];
                exchange_read_exact(sock, &mut n, deadline)?;
                n[0] as usize + 2
            }
            other => {
                return Err(OutboundCause::Malformed(format!(
                    "its reply has address type {other}"
                )))
            }
        };
        let mut skip = vec![0u8; rest];
        exchange_read_exact(sock, &mut skip, deadline)
    }
}

/// The most of an HTTP reply head read from the outbound proxy.
const MAX_REPLY_HEAD: usize = 16 * 1024;

impl fmt::Display for OutboundProxy {
    /// `scheme://user:****@host:port`: the password never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        if let Some(u) = &self.user {
            match self.password.is_some() {
                true => write!(f, "{u}:****@")?,
                false => write!(f, "{u}@")?,
            }
        }
        f.write_str(&self.addr())
    }
}

impl fmt::Debug for OutboundProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OutboundProxy({self})")
    }
}

/// The connection through the outbound proxy failed.
#[derive(Debug, Clone)]
pub struct OutboundError {
    /// The outbound proxy, password masked.
    pub proxy: String,
    /// `host:port` asked for.
    pub target: String,
    /// What happened.
    pub cause: OutboundCause,
}

/// What the outbound proxy did, or did not do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCause {
    /// No TCP connection to the outbound proxy itself (or its name does not resolve).
    Unreachable(String),
    /// It did not finish its exchange in time.
    Timeout,
    /// It closed the connection without a reply.
    Closed,
    /// HTTP 407: it wants credentials (none were configured) or refused the ones given.
    AuthRequired {
        /// Whether credentials were sent.
        sent: bool,
    },
    /// HTTP 403: it forbids this destination (port).
    Forbidden {
        /// The port asked for.
        port: u16,
    },
    /// HTTP 504 (or 408): it could not reach the target in its own time.
    ProxyTimeout {
        /// The status.
        status: u16,
    },
    /// Another HTTP status.
    Status {
        /// The status code.
        status: u16,
        /// Its reason phrase, printable and cut.
        reason: String,
    },
    /// SOCKS5: it accepts none of the methods offered (0xFF), e.g. it wants a user name.
    SocksNoMethod {
        /// Whether user/password was offered.
        offered_password: bool,
    },
    /// SOCKS5: it rejected the user name and password (RFC 1929 status not 0).
    SocksAuthRejected,
    /// SOCKS5: a reply code other than success.
    SocksReply(u8),
    /// The target's name does not resolve here (`socks5://`).
    Resolve(String),
    /// Not the protocol expected.
    Malformed(String),
    /// The socket failed during the exchange.
    Io(String),
}

/// The words for a SOCKS5 reply code (RFC 1928 §6).
pub fn socks_reply_words(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned reply code",
    }
}

impl fmt::Display for OutboundCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboundCause::Unreachable(e) => write!(f, "the outbound proxy is unreachable: {e}"),
            OutboundCause::Timeout => f.write_str("the outbound proxy did not answer in time"),
            OutboundCause::Closed => {
                f.write_str("the outbound proxy closed the connection without a reply")
            }
            OutboundCause::AuthRequired { sent: false } => f.write_str(
                "the outbound proxy requires authentication (407) and none is configured",
            ),
            OutboundCause::AuthRequired { sent: true } => {
                f.write_str("the outbound proxy rejected the user name and password (407)")
            }
            OutboundCause::Forbidden { port } => {
                write!(
                    f,
                    "the outbound proxy forbids connections to port {port} (403)"
                )
            }
            OutboundCause::ProxyTimeout { status } => write!(
                f,
                "the outbound proxy could not reach the destination in its own time ({status})"
            ),
            OutboundCause::Status { status, reason } => {
                write!(f, "the outbound proxy answered {status} {reason}")
            }
            OutboundCause::SocksNoMethod {
                offered_password: false,
            } => f.write_str(
                "the SOCKS5 proxy accepts no method offered: it requires a user name and \
                 password, and none is configured",
            ),
            OutboundCause::SocksNoMethod {
                offered_password: true,
            } => {
                f.write_str("the SOCKS5 proxy accepts neither no authentication nor user/password")
            }
            OutboundCause::SocksAuthRejected => {
                f.write_str("the SOCKS5 proxy rejected the user name and password")
            }
            OutboundCause::SocksReply(code) => write!(
                f,
                "the SOCKS5 proxy answered {}: {}",
                code,
                socks_reply_words(*code)
            ),
            OutboundCause::Resolve(e) => write!(f, "{e}"),
            OutboundCause::Malformed(e) => {
                write!(f, "the outbound proxy's answer is not valid: {e}")
            }
            OutboundCause::Io(e) => write!(f, "the connection to the outbound proxy failed: {e}"),
        }
    }
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "through {} to {}: {}",
            self.proxy, self.target, self.cause
        )
    }
}

impl std::error::Error for OutboundError {}

/// The HTTP CONNECT request for `host:port`, with Basic authentication when `credentials`.
pub fn connect_request(host: &str, port: u16, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let target = tcp::join_host_port(host, port);
    let mut r = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some((user, pass)) = credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        r.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    r.push_str(concat!(
        "User-Agent: tunnel-agent/",
        env!("CARGO_PKG_VERSION"),
        "\r\n\r\n"
    ));
    r.into_bytes()
}

/// Judges the head of the outbound proxy's reply to CONNECT for `port`.
pub fn http_reply(head: &[u8], sent_credentials: bool, port: u16) -> Result<(), OutboundCause> {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (true, Some(status)) = (version.starts_with("HTTP/"), status) else {
        return Err(OutboundCause::Malformed(format!(
            "expected an HTTP status line, got \"{}\"",
            crate::bytes::printable::printable(line.as_bytes(), 80)
        )));
    };
    let reason =
        crate::bytes::printable::printable(parts.next().unwrap_or("").trim().as_bytes(), 80);
    // Squid says why a connection failed in a header of its own: errno 110 is its timeout.
    let squid_timeout = text.lines().any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("x-squid-error")
                && value.trim().starts_with("ERR_CONNECT_FAIL 110")
        })
    });
    match status {
        200..=299 => Ok(()),
        // 401: tinyproxy's answer to wrong credentials (a 407 when there are none).
        401 | 407 => Err(OutboundCause::AuthRequired {
            sent: sent_credentials,
        }),
        _ if squid_timeout => Err(OutboundCause::ProxyTimeout { status }),
        403 => Err(OutboundCause::Forbidden { port }),
        408 | 504 => Err(OutboundCause::ProxyTimeout { status }),
        _ => Err(OutboundCause::Status { status, reason }),
    }
}

/// SOCKS5's first message: the methods offered (no authentication, and user/password when
/// configured).
pub fn socks_greeting(with_password: bool) -> Vec<u8> {
    match with_password {
        true => vec![5, 2, 0, 2],
        false => vec![5, 1, 0],
    }
}

/// The method a SOCKS5 proxy chose.
#[derive(Debug, PartialEq, Eq)]
pub enum SocksMethod {
    /// No authentication.
    None,
    /// RFC 1929 user/password.
    UserPassword,
}

/// Judges the proxy's method choice.
pub fn socks_method(reply: [u8; 2], offered_password: bool) -> Result<SocksMethod, OutboundCause> {
    match reply {
        [5, 0] => Ok(SocksMethod::None),
        [5, 2] if offered_password => Ok(SocksMethod::UserPassword),
        [5, 0xFF] => Err(OutboundCause::SocksNoMethod { offered_password }),
        [5, m] => Err(OutboundCause::Malformed(format!(
            "it chose method {m}, which was not offered"
        ))),
        [v, _] => Err(OutboundCause::Malformed(format!(
            "it speaks SOCKS version {v}, not 5"
        ))),
    }
}

/// RFC 1929's user/password message.
pub fn socks_auth(user: &str, pass: &str) -> Vec<u8> {
    let (u, p) = (user.as_bytes(), pass.as_bytes());
    let mut m = vec![1, u.len().min(255) as u8];
    m.extend_from_slice(&u[..u.len().min(255)]);
    m.push(p.len().min(255) as u8);
    m.extend_from_slice(&p[..p.len().min(255)]);
    m
}

/// Where a SOCKS5 CONNECT goes.
#[derive(Debug)]
pub enum SocksTarget<'a> {
    /// A name the proxy resolves (`socks5h://`).
    Name(&'a str),
    /// An address resolved here (`socks5://`).
    Addr(IpAddr),
}

/// SOCKS5's CONNECT request.
pub fn socks_request(target: &SocksTarget<'_>, port: u16) -> Vec<u8> {
    let mut m = vec![5, 1, 0];
    match target {
        SocksTarget::Name(n) => {
            let b = n.as_bytes();
            m.push(3);
            m.push(b.len().min(255) as u8);
            m.extend_from_slice(&b[..b.len().min(255)]);
        }
        SocksTarget::Addr(IpAddr::V4(a)) => {
            m.push(1);
            m.extend_from_slice(&a.octets());
        }
        SocksTarget::Addr(IpAddr::V6(a)) => {
            m.push(4);
            m.extend_from_slice(&a.octets());
        }
    }
    m.extend_from_slice(&port.to_be_bytes());
    m
}

/// Judges the first four bytes of SOCKS5's reply to CONNECT.
pub fn socks_reply(head: [u8; 4]) -> Result<(), OutboundCause> {
    match head {
        [5, 0, _, _] => Ok(()),
        [5, code, _, _] => Err(OutboundCause::SocksReply(code)),
        [v, ..] => Err(OutboundCause::Malformed(format!(
            "it speaks SOCKS version {v}, not 5"
        ))),
    }
}

fn resolve_here(host: &str, port: u16) -> Result<IpAddr, OutboundCause> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip);
    }
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .ok_or_else(|| {
            OutboundCause::Resolve(format!(
                "{host} does not resolve on this device (socks5://; socks5h:// lets the proxy \
                 resolve it)"
            ))
        })
}

fn remaining(deadline: Instant) -> Result<Duration, OutboundCause> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or(OutboundCause::Timeout)
}

fn io_cause(e: io::Error) -> OutboundCause {
    match tcp::timed_out(&e) {
        true => OutboundCause::Timeout,
        false if e.kind() == io::ErrorKind::UnexpectedEof => OutboundCause::Closed,
        false => OutboundCause::Io(e.to_string()),
    }
}

fn exchange_write(
    mut sock: &TcpStream,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), OutboundCause> {
    sock.set_write_timeout(Some(remaining(deadline)?))
        .map_err(io_cause)?;
    sock.write_all(bytes).map_err(io_cause)
}

fn exchange_read(
    mut sock: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<usize, OutboundCause> {
    sock.set_read_timeout(Some(remaining(deadline)?))
        .map_err(io_cause)?;
    sock.read(buf).map_err(io_cause)
}

fn exchange_read_exact(
    sock: &TcpStream,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<(), OutboundCause> {
    let mut got = 0;
    while got < buf.len() {
        match exchange_read(sock, &mut buf[got..], deadline)? {
            0 => return Err(OutboundCause::Closed),
            n => got += n,
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let p = OutboundProxy::parse("http://alice:s%40cret@proxy.lan:3128").unwrap();
        assert_eq!(p.scheme, Scheme::Http);
        assert_eq!((p.host.as_str(), p.port), ("proxy.lan", 3128));
        assert_eq!(p.user.as_deref(), Some("alice"));
        assert_eq!(p.password.as_deref(), Some("s@cret"));
        assert_eq!(p.to_string(), "http://alice:****@proxy.lan:3128");
        assert!(!format!("{p:?}").contains("cret"));
        let s = OutboundProxy::parse("socks5h://[::1]:1080/").unwrap();
        assert_eq!(
            (s.scheme, s.host.as_str(), s.port),
            (Scheme::Socks5h, "::1", 1080)
        );
        assert_eq!(s.to_string(), "socks5h://[::1]:1080");
        for bad in [
            "proxy.lan:3128",
            "ftp://p:1",
            "https://p:1",
            "http://p",
            "http://p:0",
            "http://p:3128/path",
            "http://:pw@p:1",
            "http://u:%zz@p:1",
            "http://user:zzpass",
        ] {
            let e = OutboundProxy::parse(bad).unwrap_err();
            assert!(!e.contains("zz"), "{bad}: {e}");
        }
    }

    #[test]
    fn connect_request_carries_basic_credentials() {
        let r =
            String::from_utf8(connect_request("meeting.example", 9001, Some(("u", "p")))).unwrap();
        assert!(r.starts_with(
            "CONNECT meeting.example:9001 HTTP/1.1\r\nHost: meeting.example:9001\r\n"
        ));
        assert!(r.contains("Proxy-Authorization: Basic dTpw\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(connect_request("::1", 22, None)).unwrap();
        assert!(r.starts_with("CONNECT [::1]:22 HTTP/1.1\r\n") && !r.contains("Authorization"));
    }

    #[test]
    fn http_replies_are_told_apart() {
        let ok = b"HTTP/1.1 200 Connection established\r\n\r\n";
        assert_eq!(http_reply(ok, false, 9001), Ok(()));
        let r = |s: &str, sent| http_reply(s.as_bytes(), sent, 9001);
        assert_eq!(
            r("HTTP/1.0 407 Proxy Authentication Required\r\n\r\n", false),
            Err(OutboundCause::AuthRequired { sent: false })
        );
        assert_eq!(
            r("HTTP/1.1 407 x\r\n\r\n", true),
            Err(OutboundCause::AuthRequired { sent: true })
        );
        assert_eq!(
            r("HTTP/1.1 403 Forbidden\r\n\r\n", true),
            Err(OutboundCause::Forbidden { port: 9001 })
        );
        assert_eq!(
            r("HTTP/1.1 504 Gateway Timeout\r\n\r\n", true),
            Err(OutboundCause::ProxyTimeout { status: 504 })
        );
        assert_eq!(
            r("HTTP/1.1 502 Bad Gateway\r\n\r\n", true),
            Err(OutboundCause::Status {
                status: 502,
                reason: "Bad Gateway".into()
            })
        );
        assert!(matches!(
            r("SSH-2.0-x\r\n\r\n", true),
            Err(OutboundCause::Malformed(_))
        ));
        // Squid: 503 for both; its header tells its connect timeout from a refusal.
        let squid = |errno: u16| {
            r(
                &format!("HTTP/1.1 503 Service Unavailable\r\nX-Squid-Error: ERR_CONNECT_FAIL {errno}\r\n\r\n"),
                true,
            )
        };
        assert_eq!(squid(110), Err(OutboundCause::ProxyTimeout { status: 503 }));
        assert!(matches!(
            squid(111),
            Err(OutboundCause::Status { status: 503, .. })
        ));
        assert_eq!(
            r("HTTP/1.0 401 Unauthorized\r\n\r\n", true),
            Err(OutboundCause::AuthRequired { sent: true })
        );
        assert!(OutboundCause::Forbidden { port: 9001 }
            .to_string()
            .contains("port 9001"));
    }

    #[test]
    fn socks_messages_and_replies() {
        assert_eq!(socks_greeting(false), [5, 1, 0]);
        assert_eq!(socks_greeting(true), [5, 2, 0, 2]);
        assert_eq!(socks_method([5, 2], true), Ok(SocksMethod::UserPassword));
        assert_eq!(
            socks_method([5, 0xFF], false),
            Err(OutboundCause::SocksNoMethod {
                offered_password: false
            })
        );
        assert!(matches!(
            socks_method([4, 0], false),
            Err(OutboundCause::Malformed(_))
        ));
        assert_eq!(socks_auth("u", "pw"), [1, 1, b'u', 2, b'p', b'w']);
        assert_eq!(
            socks_request(&SocksTarget::Name("m.example"), 9001),
            [&[5u8, 1, 0, 3, 9][..], b"m.example", &[0x23, 0x29]].concat()
        );
        assert_eq!(
            socks_request(&SocksTarget::Addr("127.0.0.1".parse().unwrap()), 22),
            [5, 1, 0, 1, 127, 0, 0, 1, 0, 22]
        );
        assert_eq!(socks_reply([5, 0, 0, 1]), Ok(()));
        for code in 1..=8u8 {
            let e = socks_reply([5, code, 0, 1]).unwrap_err();
            assert_eq!(e, OutboundCause::SocksReply(code));
            assert!(e.to_string().contains(socks_reply_words(code)));
        }
        assert!(OutboundCause::SocksReply(2)
            .to_string()
            .contains("not allowed by ruleset"));
    }
}
