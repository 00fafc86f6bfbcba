//! One control connection: connect, handshake, then frame mode until it ends; and the
//! decision of how it ended ([`conclude`]), which the agent's backoff and log follow.

use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown as How, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::noise::Cause;
use log::{debug, info, warn};

use crate::advice;
use crate::agent::channels::{Channels, Interrupt};
use crate::agent::pings::{Due, Pings};
use crate::agent::shutdown::Shutdown;
use crate::agent::status::{State, Status, Totals};
use crate::agent::Live;
use crate::bytes::printable::printable;
use crate::config::Config;
use crate::protocol::frame::{
    close_frame, ping_answer_frame, ping_frame, printable_type, window_frame, Frame, FrameError,
    FrameReader, MAX_REPLACED_BY,
};
use crate::protocol::handshake::{
    classify_bounded, handshake_line, read_reply, FailureClass, PingOffer, Reply, ReplyError,
    WindowOffer, MAX_REPLY_LINE,
};
use crate::transport::tcp::{self, acks_stopped, is_dead_link, peer_gone, Keepalive};
use crate::transport::{self, Control, TransportError};
use crate::uplink::writer::{self, FrameSender};

/// How long a TCP connect to the proxy may take.
pub const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer of the control connection.
const READ_BUFFER: usize = 64 * 1024;

/// What ended a control connection, or kept it from being made.
#[derive(Debug)]
pub enum Ending {
    /// No connection: TCP or TLS failed.
    Transport(TransportError),
    /// Sending the handshake failed.
    SendHandshake(io::Error),
    /// The reply to the handshake was a refusal or not understood.
    Reply(ReplyError),
    /// The frame stream broke (protocol error or truncated frame).
    Frame(FrameError),
    /// The proxy closed the control connection between frames.
    ClosedByProxy,
    /// The proxy said (`R`) that a newer connection for this device key, from `by`, took
    /// this one's place.
    Replaced {
        /// The newer connection's address, printable.
        by: String,
    },
    /// Writing to the proxy failed.
    Write(io::Error),
    /// The frame-writer thread could not be started.
    WriterSpawn(io::Error),
    /// The connection was closed on purpose to apply new settings.
    Reconfigured,
    /// The link died silently; `unacked`: data we sent was never acknowledged, else keepalive
    /// probes went unanswered.
    DeadLink {
        /// Sent data unacknowledged (TCP_USER_TIMEOUT) rather than idle probes unanswered.
        unacked: bool,
    },
    /// Nothing at all arrived for `quiet` though keepalive pings were agreed: `pings` of
    /// them, `every` apart, went unanswered.
    Silent {
        /// How long nothing arrived.
        quiet: Duration,
        /// Pings sent meanwhile.
        pings: u32,
        /// The agreed interval.
        every: Duration,
    },
}

/// Why a control connection could not be made or did not last, with what the operator needs
/// to read it: the proxy, the device key (never the token) and the dead-link limits.
#[derive(Debug)]
pub struct SessionError {
    /// What happened.
    pub ending: Ending,
    /// `host:port` of the proxy.
    pub proxy: String,
    /// The device key sent.
    pub device_key: String,
    /// The dead-link limits in force.
    pub keepalive: Keepalive,
}

impl SessionError {
    fn new(cfg: &Config, ending: Ending) -> SessionError {
        SessionError {
            ending,
            proxy: cfg.proxy_addr(),
            device_key: cfg.device_key.value.clone(),
            keepalive: cfg.keepalive.clone(),
        }
    }

    /// The class shown in the status file: `refusal`, `protocol`, `tls`, `dead_link`, `network`.
    pub fn class_name(&self) -> &'static str {
        self.ending.class_name()
    }

    /// Whether the proxy refused the device (long backoff) or it was transient.
    pub fn class(&self) -> FailureClass {
        self.ending.class()
    }
}

impl Ending {
    /// The class shown in the status file: `refusal`, `protocol`, `tls`, `dead_link`, `network`.
    pub fn class_name(&self) -> &'static str {
        match self {
            Ending::Reply(e) if e.class() == FailureClass::Refusal => "refusal",
            Ending::Reply(_) | Ending::Frame(_) => "protocol",
            #[cfg(feature = "tls")]
            Ending::Transport(TransportError::Tls(_)) => "tls",
            Ending::Transport(TransportError::TlsUnavailable) => "tls",
            Ending::DeadLink { .. } | Ending::Silent { .. } => "dead_link",
            Ending::Replaced { .. } => "replaced",
            _ => "network",
        }
    }

    /// Whether the proxy refused the device (long backoff) or it was transient.
    pub fn class(&self) -> FailureClass {
        match self {
            Ending::Reply(e) => e.class(),
            _ => FailureClass::Transient,
        }
    }
}

impl SessionError {
    /// The line the operator reads (log, status file): what happened, and what to do about
    /// it, worded by `advice` for the proxy and its settings.
    pub fn explained(&self) -> String {
        match &self.ending {
            Ending::Transport(e) => advice::explained(e, advice::transport(e)),
            Ending::Reply(e) => advice::reply(e, &self.device_key, &self.proxy),
            Ending::WriterSpawn(_) => advice::explained(self, Some(advice::no_thread())),
            _ => self.to_string(),
        }
    }
}

/// What happened, without advice: [`SessionError::explained`] adds it.
impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proxy = &self.proxy;
        let k = &self.keepalive;
        match &self.ending {
            Ending::Transport(e) => e.fmt(f),
            Ending::SendHandshake(e) => write!(
                f,
                "sending the handshake to {proxy} failed: {e}; the proxy or the network dropped \
                 the connection at once"
            ),
            Ending::Reply(e) => write!(
                f,
                "the proxy {proxy} answered the handshake of device {}: {e}",
                self.device_key
            ),
            Ending::Frame(e) => write!(f, "{e}; reconnecting to {proxy}"),
            Ending::ClosedByProxy => write!(f, "the proxy {proxy} closed the control connection"),
            Ending::Replaced { by } => write!(
                f,
                "the proxy {proxy} replaced this connection with a new one for device {} from {by}",
                self.device_key
            ),
            Ending::Write(e) => write!(f, "writing to the proxy {proxy} failed: {e}"),
            Ending::WriterSpawn(e) => {
                write!(f, "cannot start the frame-writer thread for {proxy}: {e}")
            }
            Ending::DeadLink { unacked: true } => write!(
                f,
                "dead link: data sent to the proxy {proxy} was unacknowledged for {} s \
                 (user_timeout): the network path or the proxy host is gone",
                k.user_timeout.as_secs_f64()
            ),
            Ending::DeadLink { unacked: false } => write!(
                f,
                "dead link: no answer to keepalive probes from the proxy {proxy} ({} probes {} s \
                 apart after {} s idle): the NAT mapping, the network path or the proxy host is \
                 gone",
                k.count,
                k.interval.as_secs_f64(),
                k.idle.as_secs_f64()
            ),
            Ending::Silent {
                quiet,
                pings,
                every,
            } => write!(
                f,
                "dead link: nothing from the proxy {proxy} for {:.0} s, no answer to {pings}                  keepalive ping(s) {} s apart (noticed by this device's pings): the network                  path, an outbound proxy on it, or the proxy host is gone",
                quiet.as_secs_f64(),
                every.as_secs_f64()
            ),
            Ending::Reconfigured => {
                write!(f, "closed the connection to {proxy} to apply new settings")
            }
        }
    }
}

impl std::error::Error for SessionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.ending {
            Ending::Transport(e) => Some(e),
            Ending::SendHandshake(e) | Ending::Write(e) | Ending::WriterSpawn(e) => Some(e),
            Ending::Reply(e) => Some(e),
            Ending::Frame(e) => Some(e),
            _ => None,
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

/// Whether the writer handed bytes to the socket after the last frame was received at
/// `last_rx`: on a dead link, that is the data that went unacknowledged.
fn sent_since(tx: &FrameSender, last_rx: Instant) -> bool {
    tx.since_last_flush().is_some_and(|t| t < last_rx.elapsed())
}

/// How the frame-writer thread ended.
#[derive(Debug)]
pub enum WriterEnd {
    /// It wrote everything it was given.
    Clean,
    /// A write to the proxy failed.
    Failed(io::Error),
    /// It panicked (a bug): nothing to learn about the connection from it.
    Panicked,
}

/// What the kernel and the writer report about the last moments of a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel {
    /// The socket is closed and no ACK came from the proxy for the quiet limit
    /// ([`acks_stopped`]).
    pub acks_stopped: bool,
    /// We sent bytes after the last frame we received.
    pub sent_since_rx: bool,
}

/// Why the session is ending on this side, if it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Nothing asked for an end: the connection ended by itself.
    No,
    /// SIGINT/SIGTERM.
    Requested,
    /// SIGHUP changed a connection setting.
    Reconfigure,
}

/// How a session in frame mode ended, from what the reading side saw (`reader`), how the
/// writer thread ended, what the kernel says, and whether this side stopped it. `Ok`: a
/// requested stop. The [`Ending`]'s class decides the log level and the backoff.
pub fn conclude(
    stop: Stop,
    reader: Ending,
    writer: WriterEnd,
    kernel: Kernel,
) -> Result<(), Ending> {
    let closed = matches!(reader, Ending::ClosedByProxy);
    match (stop, writer) {
        (Stop::Reconfigure, _) => Err(Ending::Reconfigured),
        (Stop::Requested, _) => Ok(()),
        (Stop::No, writer) if closed && kernel.acks_stopped => Err(Ending::DeadLink {
            unacked: kernel.sent_since_rx || matches!(writer, WriterEnd::Failed(_)),
        }),
        (Stop::No, WriterEnd::Failed(e)) if closed && is_dead_link(&e) => {
            Err(Ending::DeadLink { unacked: true })
        }
        (Stop::No, WriterEnd::Failed(e)) if closed => Err(Ending::Write(e)),
        (Stop::No, _) => Err(reader),
    }
}

/// Runs one control connection to its end, reporting its states to `status`.
pub fn run(cfg: &Config, live: &Arc<Live>, shutdown: &Shutdown, status: &Status) -> SessionOutcome {
    // Through the outbound proxy when one is set: keepalive and TCP_USER_TIMEOUT then watch
    // the socket to it, the one the tunnel's bytes cross.
    let dialed = match &cfg.outbound_proxy {
        Some(p) => p
            .value
            .connect(
                &cfg.host.value,
                cfg.port.value,
                PROXY_CONNECT_TIMEOUT,
                Some(&cfg.keepalive),
            )
            .map(|(sock, _)| sock)
            .map_err(transport::TransportError::Outbound),
        None => tcp::dial(
            &cfg.host.value,
            cfg.port.value,
            PROXY_CONNECT_TIMEOUT,
            &cfg.keepalive,
        )
        .map_err(Into::into),
    };
    let sock = match dialed {
        Ok(s) => s,
        Err(e) => return failed(cfg, Ending::Transport(e)),
    };
    // Registered before TLS, so that a stop interrupts a TLS handshake that hangs.
    shutdown.register(sock.try_clone().ok());
    status.set(State::Authenticating);
    let outcome = match transport::secure(sock, cfg.tls_target(), PROXY_CONNECT_TIMEOUT) {
        Ok(control) => handshake_then_frames(cfg, control, live, shutdown, status),
        Err(e) => failed(cfg, Ending::Transport(e)),
    };
    shutdown.register(None);
    outcome
}

/// A session that never reached frame mode.
fn failed(cfg: &Config, ending: Ending) -> SessionOutcome {
    SessionOutcome {
        uptime: Duration::ZERO,
        result: Err(SessionError::new(cfg, ending)),
    }
}

fn handshake_then_frames(
    cfg: &Config,
    control: Control,
    live: &Arc<Live>,
    shutdown: &Shutdown,
    status: &Status,
) -> SessionOutcome {
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
        return failed(cfg, Ending::SendHandshake(e));
    }
    let _ = sock.set_read_timeout(Some(cfg.handshake_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let started = Instant::now();
    // Set when no reply came in time: the first bytes of frame mode may still be the reply.
    let mut late = None;
    let mut offer = (PingOffer::Absent, WindowOffer::Absent);
    match read_reply(&mut reader) {
        Ok(Reply::Accepted {
            device_key,
            ping,
            window,
        }) => {
            // Said with the handshake, by this thread: the writer thread's first write is a
            // stream's (a dead link's class reads that the agent sent data unanswered).
            if let WindowOffer::Bytes(n) = window {
                if let Err(e) = writer
                    .write_all(&window_frame(0, n))
                    .and_then(|()| writer.flush())
                {
                    return failed(cfg, Ending::SendHandshake(e));
                }
            }
            offer = (ping, window);
            // The status file says connected before the log says "tunnel ready".
            status.set(State::Connected);
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
        Ok(Reply::NoReply) => {
            warn!(
                "no reply to the handshake from {proxy} within {:.1} s and the connection is \
                 still open: assuming an older proxy that does not answer; entering frame mode \
                 (a reply that comes later is still read as one)",
                cfg.handshake_timeout.as_secs_f64()
            );
            late = Some(started);
        }
        Ok(Reply::FramesStarted { first }) => info!(
            "proxy {proxy} sent no reply line and began with a frame ({}): older proxy; \
             entering frame mode",
            printable_type(first)
        ),
        Err(e) => return failed(cfg, Ending::Reply(e)),
    }
    let _ = sock.set_read_timeout(None);
    status.set(State::Connected);
    live.beacon().authenticated();
    let wire = Wire {
        sock,
        reader,
        writer,
        late,
        offer,
    };
    frames(cfg, wire, live, shutdown, status.totals())
}

/// The control connection once the handshake is over: its socket, its two halves, and when the
/// handshake was sent if no reply came in time (a late one may still begin the frames).
struct Wire {
    sock: TcpStream,
    reader: BufReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    late: Option<Instant>,
    /// What the acceptance said of keepalive pings and of windows.
    offer: (PingOffer, WindowOffer),
}

/// Windows, if the proxy announced them in a form this agent reads: said to the proxy (a `W`
/// on stream 0, the first frame) through `tx` (else it was said already) and to the
/// channels. Whether they are in use.
fn agree_windows(offer: &WindowOffer, tx: Option<&FrameSender>, channels: &Channels) -> bool {
    match offer {
        WindowOffer::Absent => false,
        WindowOffer::Unreadable(raw) => {
            warn!(
                "the proxy announced per-stream windows in a form this agent cannot read \
                 (\"window\": {raw}); not using them: one slow reader slows every stream"
            );
            false
        }
        WindowOffer::Bytes(n) => {
            if tx.is_some_and(|tx| tx.send(window_frame(0, *n)).is_err()) {
                return false;
            }
            channels.use_windows(*n);
            info!(
                "windows: at most {} KiB of a stream on its way each way before its reader \
                 takes it; a slow reader slows only its own stream",
                n / 1024
            );
            true
        }
    }
}

/// How long a read of the control connection may wait before the loop comes round: the
/// systemd watchdog's tick, and the ping interval once pings are agreed.
fn read_tick(pings: Option<&Pings>) -> Option<Duration> {
    match (crate::notify::tick(), pings.map(Pings::every)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn frames(
    cfg: &Config,
    wire: Wire,
    live: &Arc<Live>,
    shutdown: &Shutdown,
    totals: &Arc<Totals>,
) -> SessionOutcome {
    let Wire {
        sock,
        reader,
        writer,
        mut late,
        offer,
    } = wire;
    let since = Instant::now();
    let closer = match sock.try_clone() {
        Ok(c) => c,
        Err(e) => return failed(cfg, Ending::Transport(TransportError::Split(e))),
    };
    let (tx, writer) = match writer::spawn(writer, closer, "frame-writer") {
        Ok(w) => w,
        Err(e) => return failed(cfg, Ending::WriterSpawn(e)),
    };
    let channels = Channels::new(tx.clone(), live.clone(), totals.clone());
    let mut frames = FrameReader::after(reader, cfg.max_frame);
    let mut last_rx = Instant::now();
    let mut pings = Pings::agree(cfg.ping_interval, &offer.0, last_rx);
    let mut windows = agree_windows(&offer.1, None, &channels);
    // Looked at while a local service keeps the control loop waiting.
    let interrupted = || {
        crate::notify::alive();
        if shutdown.pending() {
            Some(Interrupt::Stop)
        } else if peer_gone(&sock) {
            Some(Interrupt::ProxyGone)
        } else {
            None
        }
    };
    // Under a systemd watchdog the loop comes round at least every tick to feed it, and with
    // pings every interval; a read cut by the tick resumes where it was (the frame reader
    // keeps what it has).
    let mut tick = read_tick(pings.as_ref());
    if tick.is_some() {
        let _ = sock.set_read_timeout(tick);
    }
    let end = loop {
        crate::notify::alive();
        if let Some(sent) = late {
            // A proxy that asks Meeting's API before it answers may answer after the wait.
            let line = match frames.late_line(MAX_REPLY_LINE) {
                Ok(line) => line,
                Err(e) if tick.is_some() && tcp::timed_out(&e) => continue,
                Err(e) if is_dead_link(&e) => {
                    break Ending::DeadLink {
                        unacked: sent_since(&tx, last_rx),
                    };
                }
                Err(e) => break Ending::Frame(FrameError::Io(e)),
            };
            late = None;
            let Some(line) = line else { continue };
            last_rx = Instant::now();
            match classify_bounded(line) {
                Ok(reply) => {
                    info!(
                        "authenticated by proxy {} as device {} after all, {:.1} s after the \
                         handshake (a late reply: the proxy was slow to decide); tunnel ready",
                        cfg.proxy_addr(),
                        cfg.device_key.value,
                        sent.elapsed().as_secs_f64()
                    );
                    if let Reply::Accepted { ping, window, .. } = reply {
                        windows = agree_windows(&window, Some(&tx), &channels);
                        pings = Pings::agree(cfg.ping_interval, &ping, last_rx);
                        tick = read_tick(pings.as_ref());
                        let _ = sock.set_read_timeout(tick);
                    }
                }
                Err(e) => break Ending::Reply(e),
            }
            continue;
        }
        let frame = match frames.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break Ending::ClosedByProxy,
            Err(FrameError::Io(e)) if tick.is_some() && tcp::timed_out(&e) => {
                match pings.as_mut().map(|p| p.tick(Instant::now())) {
                    Some(Due::Ping) => {
                        // Behind whatever is queued: if that is stuck, so is the link.
                        if tx.send_queued(ping_frame()).is_err() {
                            break Ending::ClosedByProxy;
                        }
                    }
                    Some(Due::Dead { quiet, pings: n }) => {
                        break Ending::Silent {
                            quiet,
                            pings: n,
                            every: pings.as_ref().map_or(Duration::ZERO, Pings::every),
                        };
                    }
                    Some(Due::Nothing) | None => {}
                }
                continue;
            }
            Err(FrameError::Io(e)) if is_dead_link(&e) => {
                break Ending::DeadLink {
                    unacked: sent_since(&tx, last_rx),
                };
            }
            Err(e) => break Ending::Frame(e),
        };
        last_rx = Instant::now();
        if let Some(p) = pings.as_mut() {
            if let Some(rtt) = p.received(last_rx, frame == Frame::PingAnswer) {
                debug!("keepalive ping answered in {} ms", rtt.as_millis());
            }
        }
        match frame {
            Frame::Open { stream, port } => channels.open(stream, port),
            Frame::Data { stream, payload } => {
                if channels.deliver(stream, payload, &interrupted).is_err() {
                    // A stop or reconnect: `stop` below says which; the reader's end is moot.
                    break Ending::ClosedByProxy;
                }
            }
            Frame::Close { stream } => channels.close_from_proxy(stream),
            Frame::BadOpen { stream, len } => {
                if totals.noise.allow(Cause::BadOpen) {
                    warn!("proxy sent an open request for stream {stream} with a {len}-byte payload (2 expected); refusing it");
                }
                let _ = tx.send(close_frame(stream));
            }
            // This agent pings, never the proxy; a ping is answered all the same, where pings
            // were agreed. Elsewhere the agent sends nothing that the proxy did not announce.
            Frame::Ping if pings.is_some() => {
                let _ = tx.send_queued(ping_answer_frame());
            }
            Frame::PingAnswer if pings.is_some() => {}
            Frame::Window { stream, grant } if windows => channels.grant(stream, grant),
            Frame::Window { .. } => {
                if totals.noise.allow(Cause::UnknownFrame) {
                    warn!(
                        "ignoring a window frame from a proxy that did not announce windows \
                         (its acceptance had no readable \"window\" member)"
                    );
                }
            }
            Frame::Ping | Frame::PingAnswer => {
                if totals.noise.allow(Cause::UnknownFrame) {
                    warn!(
                        "ignoring a keepalive frame from a proxy that did not announce \
                         keepalive (its acceptance had no \"keepalive\" member)"
                    );
                }
            }
            Frame::Replaced { by } => {
                break Ending::Replaced {
                    by: printable(by, MAX_REPLACED_BY),
                };
            }
            Frame::Unknown { kind, stream, len } => {
                if totals.noise.allow(Cause::UnknownFrame) {
                    warn!(
                        "ignoring a frame of unknown type {} (stream {stream}, {len} bytes \
                         skipped)",
                        printable_type(kind)
                    );
                }
            }
        }
    };
    // A late refusal: the session never was one.
    let uptime = if matches!(end, Ending::Reply(_)) {
        Duration::ZERO
    } else {
        since.elapsed()
    };
    // Read before this side shuts the socket down.
    let kernel = Kernel {
        acks_stopped: matches!(end, Ending::ClosedByProxy)
            && acks_stopped(&sock, cfg.keepalive.quiet_limit()),
        sent_since_rx: sent_since(&tx, last_rx),
    };
    let stop = if shutdown.requested() {
        Stop::Requested
    } else if shutdown.take_kick() {
        // Reconnecting on purpose (new settings): say so to the proxy like a stop does, and
        // leave the kick for the agent's loop.
        shutdown.kick();
        Stop::Reconfigure
    } else {
        Stop::No
    };
    if stop == Stop::No {
        let _ = sock.shutdown(How::Both);
        channels.close_all(false, "control connection lost");
    } else {
        // Tell the proxy about every open stream, then finish; never wait long on a stuck proxy.
        let _ = sock.set_write_timeout(Some(Duration::from_millis(500)));
        let n = channels.len();
        channels.close_all(true, "agent stopping");
        debug!("sent close for {n} open channels");
    }
    tx.finish();
    drop(tx);
    drop(channels);
    let written = match writer.join() {
        Ok(Ok(())) => WriterEnd::Clean,
        Ok(Err(e)) => WriterEnd::Failed(e),
        Err(_) => WriterEnd::Panicked,
    };
    let _ = sock.shutdown(How::Both);
    SessionOutcome {
        uptime,
        result: conclude(stop, end, written, kernel).map_err(|e| SessionError::new(cfg, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    /// Every way a session in frame mode ends: reader end × writer end × what the kernel
    /// says × this side's stop → the ending's class (log line and status file) and whether
    /// the backoff is a refusal's.
    #[test]
    fn end_of_session_table() {
        let quiet = Kernel::default();
        let died = Kernel {
            acks_stopped: true,
            sent_since_rx: false,
        };
        let died_busy = Kernel {
            acks_stopped: true,
            sent_since_rx: true,
        };
        type Row = (
            &'static str,
            Stop,
            fn() -> Ending,
            fn() -> WriterEnd,
            Kernel,
            Option<&'static str>,
        );
        let rows: Vec<Row> = vec![
            (
                "stop wins over anything",
                Stop::Requested,
                || Ending::ClosedByProxy,
                || WriterEnd::Failed(err(libc::EPIPE)),
                died,
                None,
            ),
            (
                "reload reconnects",
                Stop::Reconfigure,
                || Ending::ClosedByProxy,
                || WriterEnd::Clean,
                quiet,
                Some("reconfigured"),
            ),
            (
                "proxy closed, writer fine",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Clean,
                quiet,
                Some("closed"),
            ),
            (
                "proxy closed, write failed",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Failed(err(libc::EPIPE)),
                quiet,
                Some("write"),
            ),
            (
                "closed but ACKs stopped, idle",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Clean,
                died,
                Some("dead idle"),
            ),
            (
                "closed but ACKs stopped, we had sent",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Clean,
                died_busy,
                Some("dead unacked"),
            ),
            (
                "closed but ACKs stopped, writer failed",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Failed(err(libc::EPIPE)),
                died,
                Some("dead unacked"),
            ),
            (
                "closed, writer timed out",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Failed(err(libc::ETIMEDOUT)),
                quiet,
                Some("dead unacked"),
            ),
            (
                "closed, writer unreachable",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Failed(err(libc::EHOSTUNREACH)),
                quiet,
                Some("dead unacked"),
            ),
            (
                "reader saw the dead link",
                Stop::No,
                || Ending::DeadLink { unacked: false },
                || WriterEnd::Failed(err(libc::EPIPE)),
                quiet,
                Some("dead idle"),
            ),
            (
                "protocol error beats a writer error",
                Stop::No,
                || {
                    Ending::Frame(FrameError::TooLong {
                        kind: b'D',
                        stream: 1,
                        len: 9,
                        max: 1,
                    })
                },
                || WriterEnd::Failed(err(libc::EPIPE)),
                died,
                Some("protocol"),
            ),
            (
                "writer panicked: the reader's end stands",
                Stop::No,
                || Ending::ClosedByProxy,
                || WriterEnd::Panicked,
                quiet,
                Some("closed"),
            ),
        ];
        for (what, stop, reader, writer, kernel, want) in rows {
            let got = conclude(stop, reader(), writer(), kernel);
            let got = match &got {
                Ok(()) => None,
                Err(Ending::Reconfigured) => Some("reconfigured"),
                Err(Ending::ClosedByProxy) => Some("closed"),
                Err(Ending::Write(_)) => Some("write"),
                Err(Ending::DeadLink { unacked: false }) => Some("dead idle"),
                Err(Ending::DeadLink { unacked: true }) => Some("dead unacked"),
                Err(Ending::Frame(_)) => Some("protocol"),
                Err(other) => panic!("{what}: unexpected {other:?}"),
            };
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn classes_choose_the_log_line_and_backoff() {
        let cases: Vec<(Ending, &str, FailureClass)> = vec![
            (
                Ending::Reply(ReplyError::ClosedWithoutReply),
                "refusal",
                FailureClass::Refusal,
            ),
            (
                Ending::Reply(ReplyError::Refused {
                    reason: "no".into(),
                    code: None,
                }),
                "refusal",
                FailureClass::Refusal,
            ),
            (
                Ending::Reply(ReplyError::Io(err(libc::ECONNRESET))),
                "protocol",
                FailureClass::Transient,
            ),
            (
                Ending::DeadLink { unacked: true },
                "dead_link",
                FailureClass::Transient,
            ),
            (Ending::ClosedByProxy, "network", FailureClass::Transient),
            (
                Ending::Transport(TransportError::TlsUnavailable),
                "tls",
                FailureClass::Transient,
            ),
        ];
        for (ending, name, class) in cases {
            assert_eq!(ending.class_name(), name, "{ending:?}");
            assert_eq!(ending.class(), class, "{ending:?}");
        }
    }

    #[test]
    fn messages_name_the_proxy_and_never_a_debug_dump() {
        let e = SessionError {
            ending: Ending::DeadLink { unacked: false },
            proxy: "proxy.example:9001".into(),
            device_key: "K".into(),
            keepalive: Keepalive {
                idle: Duration::from_secs(30),
                interval: Duration::from_secs(10),
                count: 3,
                user_timeout: Duration::from_secs(60),
            },
        };
        let text = e.to_string();
        assert!(text.contains("proxy.example:9001"), "{text}");
        assert!(
            text.contains("3 probes 10 s apart after 30 s idle"),
            "{text}"
        );
        assert!(!text.contains("DeadLink"), "{text}");
    }
}
