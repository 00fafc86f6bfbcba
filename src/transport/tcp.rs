//! The TCP socket to the proxy: resolving, dialing, dead-link detection (keepalive and
//! `TCP_USER_TIMEOUT`), and reading what the kernel knows when a connection ends (`TCP_INFO`,
//! errno); and the few questions std cannot ask of any TCP socket (the peer gone, bytes not
//! acknowledged), which the channels ask of their local sockets. Linux-specific; errno values come from `libc`, so they are right on every
//! architecture (MIPS numbers them differently from x86 and ARM).
#![allow(unsafe_code)]

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::Duration;

use log::{debug, warn};

/// TCP keepalive and user timeout of the control socket: how a dead link is noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead.
    pub count: u32,
    /// How long sent data may stay unacknowledged (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
}

impl Keepalive {
    /// How long without any acknowledgement from the peer means the kernel has given up for
    /// sure: half the shorter of the two limits, so a slow timer does not hide a dead link
    /// and a recent ACK never looks like one.
    pub fn quiet_limit(&self) -> Duration {
        self.user_timeout
            .min(self.idle + self.interval * self.count)
            / 2
    }
}

/// Why no TCP connection to the proxy could be made.
#[derive(Debug)]
pub enum TcpError {
    /// The host name did not resolve.
    Resolve {
        /// `host:port` as configured.
        target: String,
        /// Resolver error.
        err: io::Error,
    },
    /// No address of the host accepted the connection.
    Connect {
        /// `host:port` as configured.
        target: String,
        /// The address tried last.
        addr: SocketAddr,
        /// Its error.
        err: io::Error,
        /// The bound of each attempt.
        timeout: Duration,
    },
}

impl TcpError {
    /// True when the peer answered with a refusal (nothing listens on the port).
    pub fn is_refused(&self) -> bool {
        matches!(self, TcpError::Connect { err, .. } if err.kind() == io::ErrorKind::ConnectionRefused)
    }

    /// True when nothing answered within the bound.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TcpError::Connect { err, .. }
            if matches!(err.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock))
    }
}

/// What happened, without advice: `advice::tcp` says what to do.
impl fmt::Display for TcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TcpError::Resolve { target, err } => {
                write!(f, "cannot resolve the proxy host of {target}: {err}")
            }
            TcpError::Connect { target, addr, .. } if self.is_refused() => {
                write!(f, "the proxy {target} ({addr}) refused the TCP connection")
            }
            TcpError::Connect {
                target,
                addr,
                timeout,
                ..
            } if self.is_timeout() => write!(
                f,
                "no answer from the proxy {target} ({addr}) within {} s",
                timeout.as_secs()
            ),
            TcpError::Connect {
                target, addr, err, ..
            } => write!(f, "cannot connect to the proxy {target} ({addr}): {err}"),
        }
    }
}

impl std::error::Error for TcpError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TcpError::Resolve { err, .. } | TcpError::Connect { err, .. } => Some(err),
        }
    }
}

/// `host:port`, an IPv6 address in brackets.
pub fn join_host_port(host: &str, port: u16) -> String {
    match host.contains(':') && !host.starts_with('[') {
        true => format!("[{host}]:{port}"),
        false => format!("{host}:{port}"),
    }
}

/// Reads `HOST:PORT` or `[IPv6]:PORT` (the port required, 1-65535). The error never quotes
/// the text: in a URL whose host was left out, the part read as the port is a password.
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or("expected [IPv6]:PORT")?,
        None => s
            .rsplit_once(':')
            .ok_or("expected HOST:PORT (the port is required)")?,
    };
    if host.is_empty() {
        return Err("the host before the port is empty".to_owned());
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or("the port after the host is not a number from 1 to 65535")?;
    Ok((host.to_owned(), port))
}

/// Resolves `host:port`.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, TcpError> {
    let target = format!("{host}:{port}");
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|err| TcpError::Resolve {
            target: target.clone(),
            err,
        })?
        .collect::<Vec<_>>();
    if addrs.is_empty() {
        return Err(TcpError::Resolve {
            target,
            err: io::Error::new(io::ErrorKind::NotFound, "the name has no address"),
        });
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that accepts within `timeout` each; on failure, the error
/// of the last address tried. `target` names the destination in the error.
pub fn connect_any(
    target: &str,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), TcpError> {
    let mut last = None;
    for &addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok((s, addr)),
            Err(err) => {
                debug!("connect to {addr} failed: {err}");
                last = Some((addr, err));
            }
        }
    }
    let (addr, err) = last.unwrap_or_else(|| {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
        )
    });
    Err(TcpError::Connect {
        target: target.to_owned(),
        addr,
        err,
        timeout,
    })
}

/// Resolves and connects to `host:port`, then arms dead-link detection on the socket.
pub fn dial(
    host: &str,
    port: u16,
    timeout: Duration,
    keepalive: &Keepalive,
) -> Result<TcpStream, TcpError> {
    let addrs = resolve(host, port)?;
    let (sock, _) = connect_any(&format!("{host}:{port}"), &addrs, timeout)?;
    arm_keepalive(&sock, keepalive);
    Ok(sock)
}

/// Arms dead-link detection on `sock`: the protocol has no ping frame, so TCP keepalive
/// notices an idle dead link and `TCP_USER_TIMEOUT` a busy one.
pub fn arm_keepalive(sock: &TcpStream, k: &Keepalive) {
    let s = socket2::SockRef::from(sock);
    let ka = socket2::TcpKeepalive::new()
        .with_time(k.idle)
        .with_interval(k.interval)
        .with_retries(k.count);
    if let Err(e) = s.set_tcp_keepalive(&ka) {
        warn!("cannot enable TCP keepalive on the control connection: {e}; a dead link may go unnoticed");
    }
    if let Err(e) = s.set_tcp_user_timeout(Some(k.user_timeout)) {
        warn!("cannot set TCP_USER_TIMEOUT on the control connection: {e}");
    }
}

/// Whether a read or write ran into the socket's timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`
/// report `EAGAIN`).
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Sends what `sock` takes of `bytes` now, without waiting: the count, 0 when it takes nothing.
pub fn send_now(sock: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    loop {
        match socket2::SockRef::from(sock).send_with_flags(bytes, flags) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Whether an error on an established connection means the link died: the kernel gave up on
/// keepalive probes or unacknowledged data. It reports `ETIMEDOUT`, or the soft error it met
/// on the way (`EHOSTUNREACH`, `ENETUNREACH`).
pub fn is_dead_link(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || matches!(
            e.raw_os_error(),
            Some(libc::ENETUNREACH | libc::ETIMEDOUT | libc::EHOSTUNREACH)
        )
}

/// Whether the kernel gave up on `sock` with no acknowledgement from the peer for at least
/// `quiet`: a dead link whose error was reported where the session does not see it. A write
/// that had moved some bytes returns their count, not the `ETIMEDOUT`, and then the read sees
/// end of file and the next write `EPIPE`, as if the proxy had closed. A proxy that really closes
/// sends FIN or RST, so the connection is either not closed yet or its last ACK is recent.
pub fn acks_stopped(sock: &TcpStream, quiet: Duration) -> bool {
    tcp_info(sock).is_some_and(|info| {
        info.tcpi_state == TCP_CLOSE
            && Duration::from_millis(info.tcpi_last_ack_recv.into()) >= quiet
    })
}

/// Whether the peer has closed (FIN) or reset (RST) `sock`, even with bytes from it still
/// unread: the connection left the established state.
pub fn peer_gone(sock: &TcpStream) -> bool {
    tcp_info(sock).is_some_and(|info| matches!(info.tcpi_state, TCP_CLOSE_WAIT | TCP_CLOSE))
}

/// Bytes written to `sock` that its peer has not acknowledged yet (`SIOCOUTQ`): on loopback,
/// what the peer application has not made room for by reading. `None` when it cannot say.
pub fn unacked_bytes(sock: &TcpStream) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int through the pointer, which is valid for the
    // call; the descriptor is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n as *mut libc::c_int) };
    (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
}

/// Bytes the peer sent that are waiting in `sock` unread (`FIONREAD`); `None` when it cannot
/// say.
pub fn unread_bytes(sock: &TcpStream) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD (SIOCINQ) writes one int through the pointer, which is valid for the
    // call; the descriptor is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    (rc == 0).then(|| usize::try_from(n).unwrap_or(0))
}

/// Makes the last close of `sock` a reset (`SO_LINGER` 0): a peer blocked writing to it
/// learns at once that nothing more is read, and bytes not yet acknowledged are dropped.
pub fn reset_on_close(sock: &TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

// Connection states from the kernel's tcp_states.h (libc has no constants for them).
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;

/// What the kernel knows of `sock` (`TCP_INFO`); `None` when it cannot say.
fn tcp_info(sock: &TcpStream) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain integers, valid when zeroed; getsockopt writes at most `len`
    // bytes into it and the descriptor is open for the call.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc, info)
    };
    (rc == 0).then_some(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    /// Waits (bounded) for the kernel to process what the peer did.
    fn becomes(what: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if what() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn peer_gone_sees_a_close_and_a_reset_even_with_data_unread() {
        let (a, b) = pair();
        assert!(!peer_gone(&a));
        (&b).write_all(b"unread").unwrap();
        b.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(becomes(|| peer_gone(&a)), "FIN behind unread data");

        let (a, b) = pair();
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        (&b).write_all(b"unread").unwrap();
        drop(b);
        assert!(becomes(|| peer_gone(&a)), "RST");
    }

    #[test]
    fn peer_gone_sees_a_reset_into_a_full_receive_window() {
        let (a, b) = pair();
        b.set_nonblocking(true).unwrap();
        let chunk = [0u8; 64 * 1024];
        // Fill everything until the sender would block: `a` reads nothing.
        let mut sent = 0usize;
        while let Ok(n) = (&b).write(&chunk) {
            sent += n;
        }
        assert!(sent > 0);
        assert!(!peer_gone(&a));
        socket2::SockRef::from(&b)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(b);
        assert!(becomes(|| peer_gone(&a)), "RST at zero window");
    }

    #[test]
    fn unacked_bytes_counts_what_the_peer_has_no_room_for() {
        let (a, b) = pair();
        assert_eq!(unacked_bytes(&a), Some(0));
        a.set_nonblocking(true).unwrap();
        let chunk = [0u8; 64 * 1024];
        while (&a).write(&chunk).is_ok() {}
        // `b` reads nothing: its buffer is full and what `a` holds beyond it is unacknowledged.
        let stuck = unacked_bytes(&a).unwrap();
        assert!(stuck > 0);
        let mut sink = vec![0u8; 1 << 20];
        let mut b = b;
        b.read_exact(&mut sink[..256 * 1024]).unwrap();
        assert!(
            becomes(|| unacked_bytes(&a).unwrap() < stuck),
            "reading makes progress"
        );
    }

    #[test]
    fn dead_link_errors_by_libc_number() {
        for errno in [libc::ETIMEDOUT, libc::EHOSTUNREACH, libc::ENETUNREACH] {
            assert!(
                is_dead_link(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        for errno in [libc::ECONNRESET, libc::EPIPE, libc::ECONNREFUSED] {
            assert!(
                !is_dead_link(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    #[test]
    fn refused_connect_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = connect_any("p:1", &[addr], Duration::from_secs(2)).unwrap_err();
        assert!(e.is_refused());
        let text = e.to_string();
        assert!(text.contains("refused the TCP connection"), "{text}");
        assert!(std::error::Error::source(&e).is_some());
    }

    /// A label over 63 characters fails in the resolver itself: no query leaves the machine.
    #[test]
    fn an_unresolvable_name_is_named_with_the_resolver_error() {
        let host = format!("{}.invalid", "x".repeat(64));
        let e = resolve(&host, 9001).unwrap_err();
        assert!(matches!(e, TcpError::Resolve { .. }));
        assert!(e.to_string().contains(&format!("{host}:9001")), "{e}");
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn quiet_limit_is_half_the_shorter_limit() {
        let k = Keepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
            user_timeout: Duration::from_secs(60),
        };
        assert_eq!(k.quiet_limit(), Duration::from_secs(30));
    }
}
