//! One control connection: connect, handshake, then frame mode until it ends.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown as How, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::agent::channels::{Channels, Totals};
use crate::agent::shutdown::Shutdown;
use crate::agent::status::{State, Status};
use crate::agent::Live;
use crate::config::{Config, Keepalive};
use crate::frame::{close_frame, printable_type, Frame, FrameError, FrameReader};
use crate::handshake::{handshake_line, read_reply, FailureClass, Reply, ReplyError};
use crate::transport::Control;
use crate::writer::{self, FrameSender};

/// How long a TCP connect to the proxy may take.
pub const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of the control connection.
const READ_BUFFER: usize = 64 * 1024;

/// Why a control connection could not be made or did not last.
#[derive(Debug)]
pub enum SessionError {
    /// The proxy host name did not resolve.
    Resolve {
        /// `host:port` as configured.
        proxy: String,
        /// Resolver error.
        err: io::Error,
    },
    /// No address of the proxy accepted the connection.
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// The error.
        err: io::Error,
    },
    /// Sending the handshake failed.
    SendHandshake(io::Error),
    /// The reply to the handshake was a refusal or not understood.
    Reply(ReplyError),
    /// The frame stream broke (protocol error or truncated frame).
    Frame(FrameError),
    /// The proxy closed the control connection between frames.
    ClosedByProxy,
    /// Writing to the proxy failed.
    Write(io::Error),
    /// TLS could not be set up.
    #[cfg(feature = "tls")]
    Tls(crate::transport::tls::TlsError),
    /// TLS is configured but this build has no TLS.
    TlsUnavailable,
    /// The connection was closed on purpose to apply new settings.
    Reconfigured,
    /// The link died silently; `unacked`: data we sent was never acknowledged, else keepalive
    /// probes went unanswered.
    DeadLink {
        /// Sent data unacknowledged (TCP_USER_TIMEOUT) rather than idle probes unanswered.
        unacked: bool,
    },
}

impl SessionError {
    /// The class shown in the status file: `refusal`, `protocol`, `tls`, `dead_link`, `network`.
    pub fn class_name(&self) -> &'static str {
        match self {
            SessionError::Reply(e) if e.class() == FailureClass::Refusal => "refusal",
            SessionError::Reply(_) | SessionError::Frame(_) => "protocol",
            #[cfg(feature = "tls")]
            SessionError::Tls(_) => "tls",
            SessionError::TlsUnavailable => "tls",
            SessionError::DeadLink { .. } => "dead_link",
            _ => "network",
        }
    }

    /// Whether the proxy refused the device (long backoff) or it was transient.
    pub fn class(&self) -> FailureClass {
        match self {
            SessionError::Reply(e) => e.class(),
            _ => FailureClass::Transient,
        }
    }

    /// The message for the log: what happened, likely cause, what to check.
    pub fn describe(&self, cfg: &Config) -> String {
        let proxy = cfg.proxy_addr();
        match self {
            SessionError::Resolve { proxy, err } => format!(
                "cannot resolve the proxy host of {proxy}: {err}; check the tunnel_host setting \
                 and the device's DNS (/etc/resolv.conf)"
            ),
            SessionError::Connect { addr, err } => match err.kind() {
                io::ErrorKind::ConnectionRefused => format!(
                    "the proxy {proxy} ({addr}) refused the TCP connection: the proxy is down or \
                     tunnel_port is wrong"
                ),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => format!(
                    "no answer from the proxy {proxy} ({addr}) within {} s: a firewall drops the \
                     traffic or the network is down",
                    PROXY_CONNECT_TIMEOUT.as_secs()
                ),
                _ => format!("cannot connect to the proxy {proxy} ({addr}): {err}"),
            },
            SessionError::SendHandshake(e) => {
                format!("sending the handshake to {proxy} failed: {e}")
            }
            SessionError::Reply(e) => e.diagnosis(&cfg.device_key.value, &proxy),
            SessionError::Frame(e) => format!("{e}; reconnecting to {proxy}"),
            SessionError::ClosedByProxy => {
                format!("the proxy {proxy} closed the control connection")
            }
            SessionError::Write(e) => format!("writing to the proxy {proxy} failed: {e}"),
            #[cfg(feature = "tls")]
            SessionError::Tls(e) => format!("TLS to the proxy {proxy}: {e}"),
            SessionError::DeadLink { unacked: true } => format!(
                "dead link: data sent to the proxy {proxy} was unacknowledged for {} s \
                 (user_timeout): the network path or the proxy host is gone",
                cfg.keepalive.user_timeout.as_secs_f64()
            ),
            SessionError::DeadLink { unacked: false } => format!(
                "dead link: no answer to keepalive probes from the proxy {proxy} ({} probes {} s \
                 apart after {} s idle): the NAT mapping, the network path or the proxy host is \
                 gone",
                cfg.keepalive.count,
                cfg.keepalive.interval.as_secs_f64(),
                cfg.keepalive.idle.as_secs_f64()
            ),
            SessionError::Reconfigured => {
                format!("closed the connection to {proxy} to apply new settings")
            }
            SessionError::TlsUnavailable => format!(
                "TLS is configured for {proxy} but this tunnel-agent was built without the tls \
                 feature: install a build with TLS or set tunnel_ssl to false"
            ),
        }
    }
}

/// How a session went.
pub struct SessionOutcome {
    /// How long the connection was in frame mode (zero if it never got there).
    pub uptime: Duration,
    /// `Ok` when it ended because a stop was requested.
    pub result: Result<(), SessionError>,
}

/// Resolves the proxy's addresses.
pub fn resolve(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the name has no address",
        ));
    }
    Ok(addrs)
}

/// Connects to the first of `addrs` that accepts within `timeout` each; on failure, the error
/// of the last address tried.
pub fn connect_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), (SocketAddr, io::Error)> {
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
    Err(last.unwrap_or_else(|| {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        (
            unspecified,
            io::Error::new(io::ErrorKind::NotFound, "no address to connect to"),
        )
    }))
}

/// Whether an error on an established connection means the link died: the kernel gave up on
/// keepalive probes or unacknowledged data. It reports `ETIMEDOUT`, or the soft error it met on
/// the way (`EHOSTUNREACH`, `ENETUNREACH`; matched by number: their `ErrorKind`s need Rust 1.83).
fn is_dead_link(e: &io::Error) -> bool {
    const ENETUNREACH: i32 = 101;
    const ETIMEDOUT: i32 = 110;
    const EHOSTUNREACH: i32 = 113;
    e.kind() == io::ErrorKind::TimedOut
        || matches!(
            e.raw_os_error(),
            Some(ENETUNREACH | ETIMEDOUT | EHOSTUNREACH)
        )
}

/// Whether the kernel gave up on `sock` with no acknowledgement from the proxy for at least
/// `quiet`: a dead link whose error was reported where the session does not see it. splice(2)
/// drops the `ETIMEDOUT` when it had moved some bytes before it, and then the read sees end of
/// file and the next write `EPIPE`, as if the proxy had closed. A proxy that really closes
/// sends FIN or RST, so the connection is either not closed yet or its last ACK is recent.
fn acks_stopped(sock: &TcpStream, quiet: Duration) -> bool {
    const TCP_CLOSE: u8 = 7;
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
    rc == 0
        && info.tcpi_state == TCP_CLOSE
        && Duration::from_millis(info.tcpi_last_ack_recv.into()) >= quiet
}

/// Whether the writer handed bytes to the socket after the last frame was received at
/// `last_rx`: on a dead link, that is the data that went unacknowledged.
fn sent_since(tx: &FrameSender, last_rx: Instant) -> bool {
    tx.since_last_flush().is_some_and(|t| t < last_rx.elapsed())
}

/// Arms dead-link detection on the control socket: the protocol has no ping frame, so TCP
/// keepalive notices an idle dead link and `TCP_USER_TIMEOUT` a busy one.
fn arm_keepalive(sock: &TcpStream, k: &Keepalive) {
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

fn connect(cfg: &Config) -> Result<TcpStream, SessionError> {
    let addrs = resolve(&cfg.host.value, cfg.port.value).map_err(|err| SessionError::Resolve {
        proxy: cfg.proxy_addr(),
        err,
    })?;
    connect_any(&addrs, PROXY_CONNECT_TIMEOUT)
        .map(|(s, _)| {
            arm_keepalive(&s, &cfg.keepalive);
            s
        })
        .map_err(|(addr, err)| SessionError::Connect { addr, err })
}

/// Describes what the TLS configuration trusts, for messages.
pub fn trusted(cfg: &Config) -> String {
    match &cfg.ca_file {
        Some(ca) => format!("the CA in ca_file {}", ca.value.display()),
        None => "any public certificate authority (webpki-roots)".to_owned(),
    }
}

/// Makes the control connection on `sock`: plain, or TLS when configured.
pub fn secure(cfg: &Config, sock: TcpStream, timeout: Duration) -> Result<Control, SessionError> {
    if !cfg.tls.value {
        return Control::plain(sock).map_err(SessionError::SendHandshake);
    }
    #[cfg(feature = "tls")]
    {
        use crate::transport::tls;
        let ca = cfg.ca_file.as_ref().map(|c| c.value.as_path());
        let config = tls::client_config(ca).map_err(SessionError::Tls)?;
        tls::connect(
            sock,
            config,
            &cfg.tls_server_name.value,
            &trusted(cfg),
            timeout,
        )
        .map_err(SessionError::Tls)
    }
    #[cfg(not(feature = "tls"))]
    {
        let _ = (sock, timeout);
        Err(SessionError::TlsUnavailable)
    }
}

/// Runs one control connection to its end, reporting its states to `status`.
pub fn run(cfg: &Config, live: &Arc<Live>, shutdown: &Shutdown, status: &Status) -> SessionOutcome {
    let failed = |e| SessionOutcome {
        uptime: Duration::ZERO,
        result: Err(e),
    };
    let sock = match connect(cfg) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    shutdown.register(sock.try_clone().ok());
    status.set(State::Authenticating);
    let outcome = match secure(cfg, sock, PROXY_CONNECT_TIMEOUT) {
        Ok(control) => handshake_then_frames(cfg, control, live, shutdown, status),
        Err(e) => failed(e),
    };
    shutdown.register(None);
    outcome
}

fn handshake_then_frames(
    cfg: &Config,
    control: Control,
    live: &Arc<Live>,
    shutdown: &Shutdown,
    status: &Status,
) -> SessionOutcome {
    let failed = |e| SessionOutcome {
        uptime: Duration::ZERO,
        result: Err(e),
    };
    let Control {
        reader,
        mut writer,
        sock,
        tls,
    } = control;
    let proxy = cfg.proxy_addr();
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| proxy.clone());
    let _ = sock.set_nodelay(true);
    if let Some(t) = &tls {
        info!(
            "TLS to proxy {proxy}: {}, {}, certificate \"{}\" issued by \"{}\", valid until {}",
            t.version, t.cipher, t.subject, t.issuer, t.not_after
        );
    }
    info!(
        "connected to proxy {proxy} ({peer}); sending handshake for device {}",
        cfg.device_key.value
    );
    let line = handshake_line(cfg.token.value.expose(), &cfg.device_key.value);
    if let Err(e) = writer
        .write_all(line.as_bytes())
        .and_then(|()| writer.flush())
    {
        return failed(SessionError::SendHandshake(e));
    }
    let _ = sock.set_read_timeout(Some(cfg.handshake_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let started = Instant::now();
    match read_reply(&mut reader) {
        Ok(Reply::Accepted { device_key }) => {
            if let Some(k) = device_key.filter(|k| !k.eq_ignore_ascii_case(&cfg.device_key.value)) {
                warn!(
                    "the proxy authenticated us as device {k}, not {}",
                    cfg.device_key.value
                );
            }
            info!(
                "authenticated by proxy {proxy} as device {} in {} ms; tunnel ready",
                cfg.device_key.value,
                started.elapsed().as_millis()
            );
        }
        Ok(Reply::NoReply) => warn!(
            "no reply to the handshake from {proxy} within {:.1} s and the connection is still \
             open: assuming an older proxy that does not answer; entering frame mode",
            cfg.handshake_timeout.as_secs_f64()
        ),
        Ok(Reply::FramesStarted { first }) => info!(
            "proxy {proxy} sent no reply line and began with a frame ({}): older proxy; \
             entering frame mode",
            printable_type(first)
        ),
        Err(e) => return failed(SessionError::Reply(e)),
    }
    let _ = sock.set_read_timeout(None);
    status.set(State::Connected);
    frames(cfg, sock, reader, writer, live, shutdown, status.totals())
}

fn frames(
    cfg: &Config,
    sock: TcpStream,
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    live: &Arc<Live>,
    shutdown: &Shutdown,
    totals: &Arc<Totals>,
) -> SessionOutcome {
    let since = Instant::now();
    // Splicing writes to the socket itself, so never under TLS.
    let splice = !cfg.tls.value && crate::splice::enabled();
    let spawned = sock
        .try_clone()
        .and_then(|closer| writer::spawn(writer, closer, splice, "frame-writer"));
    let (tx, writer) = match spawned {
        Ok(w) => w,
        Err(e) => {
            return SessionOutcome {
                uptime: Duration::ZERO,
                result: Err(SessionError::Write(e)),
            }
        }
    };
    let channels = Channels::new(tx.clone(), live.clone(), totals.clone());
    let mut frames = FrameReader::after(reader, cfg.max_frame);
    let mut last_rx = Instant::now();
    let end = loop {
        let frame = match frames.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break Err(SessionError::ClosedByProxy),
            Err(FrameError::Io(e)) if is_dead_link(&e) => {
                break Err(SessionError::DeadLink {
                    unacked: sent_since(&tx, last_rx),
                });
            }
            Err(e) => break Err(SessionError::Frame(e)),
        };
        last_rx = Instant::now();
        match frame {
            Frame::Open { stream, port } => channels.open(stream, port),
            Frame::Data { stream, payload } => channels.deliver(stream, payload),
            Frame::Close { stream } => channels.close_from_proxy(stream),
            Frame::BadOpen { stream, len } => {
                warn!("proxy sent an open request for stream {stream} with a {len}-byte payload (2 expected); refusing it");
                let _ = tx.send(close_frame(stream));
            }
            Frame::Unknown { kind, stream, len } => warn!(
                "ignoring a frame of unknown type {} (stream {stream}, {len} bytes skipped)",
                printable_type(kind)
            ),
        }
    };
    let uptime = since.elapsed();
    // Checked before this side shuts the socket down; half the shorter of the two limits, so
    // a slow timer does not hide a dead link and a recent ACK never looks like one.
    let k = &cfg.keepalive;
    let quiet = k.user_timeout.min(k.idle + k.interval * k.count) / 2;
    let died = matches!(end, Err(SessionError::ClosedByProxy)) && acks_stopped(&sock, quiet);
    let sent_since_rx = sent_since(&tx, last_rx);
    let stopping = shutdown.requested();
    let kicked = !stopping && end.is_err() && shutdown.take_kick();
    if kicked {
        // Reconnecting on purpose (new settings): say so to the proxy like a stop does.
        shutdown.kick();
    }
    let stopping = stopping || kicked;
    if stopping {
        // Tell the proxy about every open stream, then finish; never wait long on a stuck proxy.
        let _ = sock.set_write_timeout(Some(Duration::from_millis(500)));
        let n = channels.len();
        channels.close_all(true, "agent stopping");
        debug!("sent close for {n} open channels");
    } else {
        let _ = sock.shutdown(How::Both);
        channels.close_all(false, "control connection lost");
    }
    tx.finish();
    drop(tx);
    drop(channels);
    let written = writer.join();
    let _ = sock.shutdown(How::Both);
    let result = match (stopping, end, written) {
        (true, _, _) if kicked => Err(SessionError::Reconfigured),
        (true, _, _) => Ok(()),
        (false, _, written) if died => Err(SessionError::DeadLink {
            unacked: sent_since_rx || matches!(written, Ok(Err(_))),
        }),
        (false, Err(SessionError::ClosedByProxy), Ok(Err(e))) if is_dead_link(&e) => {
            Err(SessionError::DeadLink { unacked: true })
        }
        (false, Err(SessionError::ClosedByProxy), Ok(Err(e))) => Err(SessionError::Write(e)),
        (false, end, _) => end,
    };
    SessionOutcome { uptime, result }
}
