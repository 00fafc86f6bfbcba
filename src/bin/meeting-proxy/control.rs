//! One agent's control connection: the handshake decision, then frames from the agent. The
//! whole handshake (TLS included) must arrive within `handshake_timeout` of the accept, however
//! it trickles in (OpenSSH's `LoginGraceTime`, nginx's `client_header_timeout`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::{json, Value};

use tunnel_agent::bytes::printable::{printable, trim_ascii};
use tunnel_agent::downlink::sink::Undelivered;
use tunnel_agent::protocol::frame::{
    ping_answer_frame, printable_type, replaced_frame, Frame, FrameError, FrameReader, Sender,
    DEAD_AFTER_INTERVALS, DEFAULT_MAX_FRAME,
};
use tunnel_agent::protocol::handshake::{read_bounded_line, BoundedLine, MAX_REPLY_LINE};
use tunnel_agent::transport::tcp::{is_dead_link, timed_out};
use tunnel_agent::transport::Control;
use tunnel_agent::uplink::writer;

use crate::auth::{Auth, Decision, Refusal};
use crate::metrics::{self, Ended, Handshake};
use crate::noise::{self, Cause};
use crate::penalty::{Gate, Penalties};
use crate::pending::Slot;
use crate::registry::{cut_words, DeviceSession, PublicLimits, Registry};
use crate::settings::{ErrorForm, ReplyMode, Settings};

/// The acceptance line: the device key, the keepalive interval when pings are answered and
/// the per-stream window when windows are kept (extra members older agents do not read).
fn accepted(key: &str, keepalive: Option<Duration>, window: u32) -> Value {
    let mut v = json!({"status": "authenticated", "device_key": key});
    if window > 0 {
        v["window"] = json!(window);
    }
    if let Some(every) = keepalive {
        // Whole seconds as an integer, the form an agent most surely reads.
        v["keepalive"] = if every.subsec_nanos() == 0 {
            json!(every.as_secs())
        } else {
            json!(every.as_secs_f64())
        };
    }
    v
}

/// How long a refusal line may take to leave: a client that reads nothing gets no more.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Dead-link detection on agents' connections: the agent's own defaults.
const AGENT_KEEPALIVE: tunnel_agent::transport::tcp::Keepalive =
    tunnel_agent::transport::tcp::Keepalive {
        idle: Duration::from_secs(30),
        interval: Duration::from_secs(10),
        count: 3,
        user_timeout: Duration::from_secs(60),
    };

/// The handshake's reads, each bounded by what is left of the deadline: a client sending one
/// byte at a time cannot hold its connection past it.
struct ByDeadline {
    inner: Box<dyn Read + Send>,
    sock: TcpStream,
    until: Instant,
}

impl Read for ByDeadline {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.sock.set_read_timeout(Some(left))?;
        self.inner.read(buf)
    }
}

/// What the handshake line says.
struct Hello {
    token: String,
    name: String,
}

fn parse_hello(line: &[u8]) -> Result<Hello, String> {
    let v: Value = serde_json::from_slice(trim_ascii(line))
        .map_err(|e| format!("not JSON ({e}): \"{}\"", printable(line, 64)))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    match (field("token"), field("name")) {
        (Some(token), Some(name)) => Ok(Hello { token, name }),
        _ => Err("expected a JSON object with string members \"token\" and \"name\"".to_owned()),
    }
}

/// A refusal line in the form the settings ask for.
pub fn refusal(form: ErrorForm, reason: &str) -> Value {
    match form {
        ErrorForm::Status => json!({"status": "error", "message": reason}),
        ErrorForm::Error => json!({"error": "auth_failed", "reason": reason}),
    }
}

fn send_line(w: &mut dyn Write, v: &Value) -> io::Result<()> {
    w.write_all(format!("{v}\n").as_bytes())?;
    w.flush()
}

/// TLS settings of the agent port, when it serves TLS.
#[cfg(feature = "tls")]
pub type Tls = Option<Arc<rustls::ServerConfig>>;
/// TLS settings of the agent port (this build has no TLS).
#[cfg(not(feature = "tls"))]
pub type Tls = Option<std::convert::Infallible>;

#[cfg_attr(not(feature = "tls"), allow(unused_variables))]
fn open(sock: TcpStream, tls: &Tls, peer: SocketAddr, left: Duration) -> Option<Control> {
    let _ = sock.set_nodelay(true);
    match tls {
        #[cfg(feature = "tls")]
        Some(config) => match tunnel_agent::transport::tls::accept(sock, config.clone(), left) {
            Ok(c) => Some(c),
            Err(e) => {
                metrics::get().handshake(Handshake::TlsFailed);
                warn!(
                    "TLS handshake with agent {peer} failed: {}",
                    e.from_client()
                );
                None
            }
        },
        #[cfg(not(feature = "tls"))]
        Some(never) => match *never {},
        None => Control::plain(sock).ok(),
    }
}

/// One accepted connection, and what it needs until its handshake is decided.
pub struct Accepted {
    /// The socket.
    pub sock: TcpStream,
    /// Its peer.
    pub peer: SocketAddr,
    /// When it was accepted: the handshake deadline counts from here.
    pub at: Instant,
    /// Its place among the handshakes in progress, given back once decided.
    pub slot: Slot,
}

/// Serves one agent connection to its end: its handshake judged by `auth` once `penalties`
/// let it be, then its frames.
pub fn serve(
    conn: Accepted,
    settings: &Settings,
    tls: &Tls,
    (auth, penalties): (&Auth, &Penalties),
    registry: &Registry,
) {
    let Accepted {
        sock,
        peer,
        at,
        slot,
    } = conn;
    let limit = settings.handshake_timeout;
    let until = at + limit;
    let Some(Control {
        reader,
        mut writer,
        sock,
        ..
    }) = open(
        sock,
        tls,
        peer,
        until.saturating_duration_since(Instant::now()),
    )
    else {
        return;
    };
    let _ = sock.set_write_timeout(Some(REFUSAL_WRITE));
    let Ok(clock) = sock.try_clone() else {
        return;
    };
    let mut reader = BufReader::with_capacity(
        1024,
        ByDeadline {
            inner: reader,
            sock: clock,
            until,
        },
    );
    if tls.is_none() && reader.fill_buf().is_ok_and(|b| b.first() == Some(&0x16)) {
        metrics::get().handshake(Handshake::TlsOnPlainPort);
        warn!(
            "agent {peer} started a TLS handshake but this port is plain TCP: start meeting-proxy \
             with --tls-cert/--tls-key, or turn TLS off on the agent"
        );
        let _ = send_line(
            &mut writer,
            &refusal(settings.error_form, "this port does not speak TLS"),
        );
        return;
    }
    let read = read_bounded_line(&mut reader, MAX_REPLY_LINE);
    // A read cut by the deadline ends as a partial line (or a timeout error).
    let late = Instant::now() >= until
        && match &read {
            Ok(BoundedLine::Partial(_)) => true,
            Err(e) => timed_out(e),
            Ok(_) => false,
        };
    if late {
        metrics::get().handshake(Handshake::Late);
        let why = format!("handshake not received within {} s", limit.as_secs_f64());
        if noise::allow(Cause::Late) {
            warn!("agent {peer}: {why}; closed");
        }
        if settings.reply == ReplyMode::Normal {
            let _ = send_line(&mut writer, &refusal(settings.error_form, &why));
        }
        return;
    }
    let hello = match read {
        Ok(BoundedLine::Line(l)) => parse_hello(&l),
        Ok(BoundedLine::Partial(l)) if l.is_empty() => {
            metrics::get().handshake(Handshake::Silent);
            if noise::allow(Cause::Refused) {
                info!("agent {peer} sent no handshake; closed");
            }
            return;
        }
        Ok(BoundedLine::Partial(l)) => Err(format!(
            "incomplete handshake line: \"{}\"",
            printable(&l, 64)
        )),
        Ok(BoundedLine::TooLong(_)) => Err(format!("handshake line over {MAX_REPLY_LINE} bytes")),
        Err(e) => Err(format!("read error: {e}")),
    };
    let hello = match hello {
        Ok(h) => h,
        Err(why) => {
            penalties.failed(peer.ip());
            metrics::get().handshake(Handshake::Malformed);
            if noise::allow(Cause::Refused) {
                warn!("malformed handshake from {peer}: {why}");
            }
            if settings.reply == ReplyMode::Normal {
                let _ = send_line(
                    &mut writer,
                    &refusal(settings.error_form, "malformed handshake"),
                );
            }
            return;
        }
    };
    // The key is printed escaped: it comes from the network.
    let key = printable(hello.name.as_bytes(), 128);
    // One handshake per key judged at a time; a failure charges its key (during its turn)
    // and its address.
    let gate = penalties.key(&hello.name, &hello.token);
    let decision = match &gate {
        Ok(Gate::Turn(_)) => auth.decide(&hello.name, &hello.token),
        Ok(Gate::Remembered) => Decision {
            verdict: Ok(()),
            source: "the token accepted for this device within remember_accepted; its key is \
                     slowed for failed handshakes",
        },
        Err(slowed) => Decision {
            verdict: Err(Refusal::Slowed(*slowed)),
            source: "not judged",
        },
    };
    match &decision.verdict {
        Ok(()) => penalties.accepted(&hello.name, &hello.token),
        Err(r) if r.is_failure() => {
            if let Ok(Gate::Turn(turn)) = &gate {
                turn.failed();
            }
            penalties.failed(peer.ip());
        }
        // One more attempt at a key being slowed.
        Err(Refusal::Slowed(_)) => penalties.failed(peer.ip()),
        Err(_) => {}
    }
    drop(gate);
    metrics::get().handshake(match &decision.verdict {
        Ok(()) => Handshake::Accepted,
        Err(Refusal::UnknownDevice) => Handshake::UnknownDevice,
        Err(Refusal::NotAuthorized) => Handshake::NotAuthorized,
        Err(Refusal::WrongToken) => Handshake::WrongToken,
        Err(Refusal::Unverified(_)) => Handshake::ApiUnreachable,
        Err(Refusal::Slowed(_)) => Handshake::SlowedKey,
    });
    let source = decision.source;
    match (decision.verdict, settings.reply) {
        (verdict, ReplyMode::SilentClose) => {
            info!(
                "device {key} from {peer}: {} ({source}); closing without a reply \
                 (--reply silent-close)",
                verdict.err().map_or("accepted".into(), |r| r.to_string())
            );
            return;
        }
        (Err(why), mode) => {
            if noise::allow(Cause::Refused) {
                info!("device {key} from {peer} refused: {why} ({source})");
            }
            if mode == ReplyMode::Normal {
                let _ = send_line(&mut writer, &refusal(settings.error_form, &why.to_string()));
            }
            return;
        }
        (Ok(()), ReplyMode::Normal | ReplyMode::None) => {}
    }
    let key = hello.name;
    // Decided: the slot goes back, and the frames are read without a deadline, from what the
    // handshake's buffer holds beyond the line (nothing, from an agent waiting for its reply).
    drop(slot);
    let _ = sock.set_read_timeout(None);
    // A device that takes nothing for send_timeout is dropped (its writes fail, the writer
    // shuts the socket); a dead link is noticed as the agent notices it.
    let send_timeout = settings.send_timeout;
    let _ = sock.set_write_timeout(Some(send_timeout));
    tunnel_agent::transport::tcp::arm_keepalive(&sock, &AGENT_KEEPALIVE);
    // The frame reader takes over the bytes the handshake's buffer holds beyond the line.
    let beyond = reader.buffer().to_vec();
    let reader = FrameReader::with_buffered(reader.into_inner().inner, &beyond, DEFAULT_MAX_FRAME);
    let reply = (settings.reply == ReplyMode::Normal)
        .then(|| accepted(&key, settings.keepalive, settings.window));
    let link = Link {
        sock,
        reader,
        writer,
        peer,
        send_timeout,
        keepalive: settings.keepalive,
        // Announced only in a reply: without one, no agent can know of windows.
        window: if reply.is_some() { settings.window } else { 0 },
        limits: PublicLimits {
            per_address: settings.max_public_per_address,
            per_device: settings.max_public_per_device,
        },
    };
    frames(link, (key, source), registry, reply);
}

/// An authenticated device's connection.
struct Link {
    sock: TcpStream,
    reader: FrameReader<Box<dyn Read + Send>>,
    writer: Box<dyn Write + Send>,
    peer: SocketAddr,
    /// How long a write to it may make no progress.
    send_timeout: Duration,
    /// The keepalive interval announced to it, if any.
    keepalive: Option<Duration>,
    /// The per-stream window announced to it; 0: none.
    window: u32,
    /// Bounds of its public connections.
    limits: PublicLimits,
}

fn frames(link: Link, (key, source): (String, &str), registry: &Registry, reply: Option<Value>) {
    let Link {
        sock,
        reader,
        mut writer,
        peer,
        send_timeout,
        keepalive,
        window,
        limits,
    } = link;
    // The reply is written before the session is registered: no open request can go ahead of
    // it, and a newer connection for the device cannot cut this one off with its reply unsent.
    if let Some(reply) = &reply {
        if let Err(e) = send_line(&mut writer, reply) {
            info!("device {key} from {peer}: the reply could not be sent ({e}); closing");
            return;
        }
    }
    let (Ok(closer), Ok(kill_half)) = (sock.try_clone(), sock.try_clone()) else {
        return;
    };
    let Ok((tx, writer)) = writer::spawn(writer, closer, "agent-writer") else {
        return;
    };
    let session = Arc::new(DeviceSession::new(
        key.clone(),
        peer,
        tx.clone(),
        kill_half,
        (send_timeout, limits, window),
    ));
    if let Some(old) = registry.insert(session.clone()) {
        info!(
            "device {key}: new connection from {peer} replaces the one from {}; closing the old one",
            old.peer
        );
        old.replace(peer);
    }
    info!(
        "device {key} connected from {peer}: authenticated ({source}){}",
        if reply.is_some() {
            ""
        } else {
            " (no reply sent, --reply none)"
        }
    );
    let mut frames = reader;
    // Set by the device's first ping: from then on, silence for this long drops it.
    let mut silence: Option<Duration> = None;
    let (ended, why) = loop {
        match frames.next_frame() {
            Ok(Some(Frame::Ping)) => {
                if silence.is_none() {
                    // Only a device that pings is held to it: an older agent may stay idle.
                    if let Some(every) = keepalive {
                        let bound = every * DEAD_AFTER_INTERVALS;
                        let _ = sock.set_read_timeout(Some(bound));
                        silence = Some(bound);
                        info!(
                            "device {key} pings (keepalive {} s): dropped if nothing comes from \
                             it for {} s",
                            every.as_secs_f64(),
                            bound.as_secs_f64()
                        );
                    }
                }
                // Behind what is queued for the device, never holding up this reader.
                let _ = tx.send_queued(ping_answer_frame());
            }
            Ok(Some(Frame::Window { stream, grant })) if session.announced_windows() => {
                if stream == 0 {
                    session.keep_windows();
                    info!("device {key} keeps to per-stream windows of {window} bytes");
                } else {
                    session.grant(stream, grant);
                }
            }
            Ok(Some(Frame::Window { .. })) => {
                if noise::allow(Cause::BadFrame) {
                    warn!("device {key}: the device sent a window frame though this proxy announced no windows; ignored");
                }
            }
            Ok(Some(Frame::PingAnswer)) => {
                if noise::allow(Cause::BadFrame) {
                    warn!(
                        "device {key}: the device answered a ping this proxy never sent; ignored"
                    );
                }
            }
            Err(FrameError::Io(e)) if silence.is_some() && timed_out(&e) => {
                break (Ended::KeepaliveTimeout, String::new());
            }
            Ok(Some(Frame::Data { stream, payload })) => {
                metrics::get().bytes_from_devices(payload.len());
                session
                    .bytes_from
                    .fetch_add(payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let Some(public) = session.stream(stream) else {
                    continue;
                };
                // Nothing interrupts the wait for room but its bound (the sink's STALL_WAIT).
                if let Err(e) = public.deliver(payload, &mut |_| None::<()>) {
                    if session.remove_stream(stream).is_some() {
                        let _ = tx.send(tunnel_agent::protocol::frame::close_frame(stream));
                    }
                    // Said here, once: the stream's own thread says only how it closed.
                    if let Undelivered::Cut(cut) = e {
                        warn!("device {key}: stream {stream} closed: {}", cut_words(&cut));
                    }
                }
            }
            Ok(Some(Frame::Close { stream })) => {
                if let Some(public) = session.remove_stream(stream) {
                    // The client gets everything held for it, then the close.
                    public.finish();
                    info!("device {key}: the device closed stream {stream}");
                }
            }
            Ok(Some(Frame::Open { stream, .. } | Frame::BadOpen { stream, .. })) => {
                if noise::allow(Cause::BadFrame) {
                    warn!("device {key}: the device sent an open request (stream {stream}); devices may not open streams, ignored");
                }
            }
            Ok(Some(Frame::Replaced { .. })) => {
                if noise::allow(Cause::BadFrame) {
                    warn!("device {key}: the device sent a replacement notice; only the proxy sends those, ignored");
                }
            }
            Ok(Some(Frame::Unknown { kind, stream, len })) => {
                if noise::allow(Cause::BadFrame) {
                    warn!(
                        "device {key}: ignoring frame of unknown type {} (stream {stream}, {len} bytes)",
                        printable_type(kind)
                    );
                }
            }
            Ok(None) => {
                break (
                    Ended::DeviceClosed,
                    "the device closed the connection".to_owned(),
                )
            }
            Err(e) => {
                let ended = match &e {
                    FrameError::Io(io) if is_dead_link(io) => Ended::DeadLink,
                    FrameError::TooLong { .. } => Ended::ProtocolError,
                    _ => Ended::ConnectionError,
                };
                break (ended, e.from_sender(Sender::Device).to_string());
            }
        }
    };
    registry.remove_if_current(&session);
    let replaced_by = session.replaced_by();
    if let Some(by) = replaced_by {
        // The notice goes after what was queued, then the writer stops (its writes bounded by
        // send_timeout), and only then the socket is closed.
        let _ = tx.send(replaced_frame(&by.to_string()));
        tx.finish();
        drop(tx);
        let _ = writer.join();
        session.close();
        metrics::get().session_ended(Ended::Replaced, session.since.elapsed());
        info!("device {key} from {peer} disconnected: replaced by a new connection from {by}");
        return;
    }
    session.close();
    tx.finish();
    drop(tx);
    let streams = session.streams_at_close();
    let (ended, why) = match (silence, writer.join()) {
        (Some(bound), _) if ended == Ended::KeepaliveTimeout => (
            ended,
            format!(
                "nothing from the device for {} s though it pings (noticed by the proxy: its \
                 network path or the device is gone); dropped with its {streams} public \
                 connection(s)",
                bound.as_secs_f64()
            ),
        ),
        (_, Ok(Err(e))) if timed_out(&e) => (
            Ended::SendTimeout,
            format!(
                "the device took no data for {} s (send_timeout); dropped with its {streams} \
                 public connection(s)",
                send_timeout.as_secs_f64()
            ),
        ),
        _ => (ended, why),
    };
    metrics::get().session_ended(ended, session.since.elapsed());
    info!("device {key} from {peer} disconnected: {why}");
}
