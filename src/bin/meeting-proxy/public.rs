//! Public tunnel ports, opened here and only here (the `--tunnel` ports and the API's): each
//! accepted connection becomes a stream to a device's local port. The connection's own thread
//! pumps the client's bytes up to the device; the device's bytes come down through the
//! stream's sink (see [`crate::registry`]). A port can be closed while it runs
//! ([`Gate::close`]): it stops accepting, and its open connections go on to their end or are
//! cut.

use std::collections::HashMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use log::{info, warn};

use tunnel_agent::downlink::sink::{CutReason, StreamSink};
use tunnel_agent::protocol::frame::{close_frame, open_frame};
use tunnel_agent::uplink::copy::{pump_to_frames, PumpEnd};
use tunnel_agent::uplink::window::Credit;

use crate::metrics::{self, PublicRefused};
use crate::noise::{self, Cause};
use crate::registry::{cut_words, DeviceSession, OverPublic, Registry, Stream};
use crate::settings::Tunnel;

/// Stack of a thread serving one public connection or one agent: they hold no big buffer on
/// the stack (frames live in the heap pool), and thousands of them must fit in a 32-bit
/// address space.
pub const THREAD_STACK: usize = 256 * 1024;

/// The open/closed state of one public port and its live connections.
#[derive(Default)]
pub struct Gate {
    /// Set once closed; the accept loop ends at its next wake-up.
    closed: AtomicBool,
    listener: Mutex<Option<TcpListener>>,
    conns: Mutex<HashMap<u64, Arc<TcpStream>>>,
    next: AtomicU64,
}

impl Gate {
    fn conns(&self) -> MutexGuard<'_, HashMap<u64, Arc<TcpStream>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops accepting (the port is released once the accept loop sees it), and with `cut`
    /// shuts the open connections; returns how many were open.
    pub fn close(&self, cut: bool) -> usize {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(l) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            // Shutting a listening socket wakes the thread blocked in accept (Linux).
            let _ = socket2::SockRef::from(&l).shutdown(Shutdown::Both);
        }
        let conns = self.conns();
        if cut {
            for c in conns.values() {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        conns.len()
    }

    /// A gate for `listener`, holding a handle to it so that [`Gate::close`] can stop it
    /// even before its accept loop has started.
    pub fn new(listener: &TcpListener) -> Gate {
        let gate = Gate::default();
        match listener.try_clone() {
            Ok(l) => *gate.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l),
            Err(e) => warn!("cannot keep a handle to stop a public port later: {e}"),
        }
        gate
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

/// A public port that is open.
pub struct Opened {
    /// The address it listens on (the port the system chose for `:0`).
    pub listen: String,
    /// Its gate, to close it.
    pub gate: Arc<Gate>,
}

/// Opens the public port of `tunnel` and serves it on a thread of its own (`tunnel`).
pub fn open(mut tunnel: Tunnel, registry: Arc<Registry>) -> std::io::Result<Opened> {
    let listener = crate::listen::bind_listener(&tunnel.listen)?;
    if let Ok(addr) = listener.local_addr() {
        tunnel.listen = addr.to_string();
    }
    let gate = Arc::new(Gate::new(&listener));
    registry.tunnel_opened(&tunnel.listen, &tunnel.device, tunnel.port);
    let opened = Opened {
        listen: tunnel.listen.clone(),
        gate: gate.clone(),
    };
    thread::Builder::new()
        .name("tunnel".into())
        .stack_size(THREAD_STACK)
        .spawn(move || serve(listener, tunnel, registry, gate))?;
    Ok(opened)
}

/// Accepts public connections on `listener` until `gate` (made for it) closes.
fn serve(listener: TcpListener, tunnel: Tunnel, registry: Arc<Registry>, gate: Arc<Gate>) {
    let tunnel = Arc::new(tunnel);
    for conn in listener.incoming() {
        if gate.is_closed() {
            break;
        }
        match conn {
            Ok(sock) => {
                let sock = Arc::new(sock);
                let Some((stream, ways, session)) = admit(&sock, &tunnel, &registry) else {
                    continue;
                };
                let (t, g, s) = (tunnel.clone(), gate.clone(), session.clone());
                let conn = Conn {
                    sock,
                    id: stream,
                    sink: ways.sink,
                    up: ways.up,
                };
                if let Err(e) = thread::Builder::new()
                    .name("public".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || relay(conn, &t, &s, &g))
                {
                    if let Some(sink) = session.remove_stream(stream) {
                        sink.abort("no thread for the connection");
                    }
                    metrics::get().public_refused(PublicRefused::NoThread);
                    warn!("cannot start a thread for a public connection: {e}");
                }
            }
            Err(e) => {
                if noise::allow(Cause::AcceptFailed) {
                    warn!("accept on {} failed: {e}", tunnel.listen);
                }
                // Out of descriptors or memory: do not spin on it.
                thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }
    registry.tunnel_closed(&tunnel.listen);
}

/// The stream of a public connection just accepted, its sink and its device's session;
/// `None` (the connection is closed at once, before any thread) when the device is offline or
/// the connection is over the device's bounds.
fn admit(
    sock: &Arc<TcpStream>,
    tunnel: &Tunnel,
    registry: &Registry,
) -> Option<(u32, Stream, Arc<DeviceSession>)> {
    let peer = sock.peer_addr().ok()?;
    let Some(session) = registry.get(&tunnel.device) else {
        metrics::get().public_refused(PublicRefused::DeviceOffline);
        if noise::allow(Cause::PublicRefused) {
            info!(
                "public connection from {peer} to {} closed: device {} has no agent online",
                tunnel.listen, tunnel.device
            );
        }
        return None;
    };
    match session.add_stream(sock.clone(), peer.ip()) {
        Ok((id, stream)) => Some((id, stream, session)),
        Err(over) => {
            metrics::get().public_refused(match over {
                OverPublic::Address(_) => PublicRefused::PerAddress,
                OverPublic::Device(_) => PublicRefused::PerDevice,
            });
            if noise::allow(Cause::PublicRefused) {
                warn!(
                    "public connection from {peer} to {} refused: {over}",
                    tunnel.listen
                );
            }
            None
        }
    }
}

/// A public connection admitted as a stream.
struct Conn {
    sock: Arc<TcpStream>,
    id: u32,
    /// The device's bytes to it.
    sink: Arc<StreamSink>,
    /// The window of its bytes to the device.
    up: Arc<Credit>,
}

/// Serves one public connection: its bytes up to the device until it ends, then waits for
/// the device's bytes to it to be delivered (or cut), and says how the stream ended.
fn relay(conn: Conn, tunnel: &Tunnel, session: &DeviceSession, gate: &Gate) {
    let Conn { sock, id, sink, up } = conn;
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = sock.set_nodelay(true);
    let slot = gate.next.fetch_add(1, Ordering::Relaxed);
    gate.conns().insert(slot, sock.clone());
    // Every frame of the stream on one lane: the open goes before its data, the close after.
    let lane = session.tx.pipelined_lane();
    if lane.send(open_frame(id, tunnel.port)).is_err() {
        if let Some(sink) = session.remove_stream(id) {
            sink.abort("the device's connection ended");
        }
        gate.conns().remove(&slot);
        return;
    }
    info!(
        "stream {id} opened: {peer} -> device {} port {}",
        session.key, tunnel.port
    );
    let sent = AtomicU64::new(0);
    let end = pump_to_frames(
        &*sock,
        id,
        &lane,
        &[&sent, &session.bytes_to, metrics::get().bytes_to_devices()],
        session.announced_windows().then_some(&*up),
    );
    // If the stream is still ours, the public side ended it (or its sink cut it, which shut
    // the socket): tell the agent. What the client may still read of what is held goes on.
    if session.remove_stream(id).is_some() {
        match end {
            PumpEnd::Eof => sink.finish(),
            PumpEnd::ReadError(e) => sink.abort(&format!("reading the public client failed: {e}")),
            PumpEnd::WriterGone => sink.abort("the device's connection ended"),
        }
        let _ = lane.send_last(close_frame(id));
    }
    // A stream the device closed goes on until the client has everything (or a bound cuts it).
    let cut = sink.wait_ended();
    sink.close_out(&sock);
    gate.conns().remove(&slot);
    let to_device = sent.into_inner();
    let delivered = sink.delivered();
    match cut {
        None => info!(
            "stream {id} closed: {peer}, {to_device} bytes to the device, {delivered} bytes to \
             the client"
        ),
        Some(cut) => {
            let words = cut_words(&cut);
            // A client cut for taking nothing is the operator's business (one cut for having
            // no room is said by the device's thread); the others are the client's own end.
            if matches!(cut.reason, CutReason::Idle(_)) {
                warn!(
                    "stream {id} closed: {peer}, {to_device} bytes to the device, {delivered} \
                     bytes to the client; cut: {words}"
                );
            } else {
                info!(
                    "stream {id} closed: {peer}, {to_device} bytes to the device, {delivered} \
                     bytes to the client; {words}"
                );
            }
        }
    }
}
