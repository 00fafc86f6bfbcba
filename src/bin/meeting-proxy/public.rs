//! Public tunnel ports: each accepted connection becomes a stream to a device's local port.
//! A port can be closed while it runs ([`Gate::close`]): it stops accepting, and its open
//! connections go on to their end or are cut.

use std::collections::HashMap;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;

use log::{info, warn};

use tunnel_agent::protocol::frame::{close_frame, open_frame};
use tunnel_agent::uplink::copy::pump_to_frames;

use crate::noise::{self, Cause};
use crate::registry::{DeviceSession, Registry};
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

/// Accepts public connections on `listener` until `gate` (made for it) closes.
pub fn serve(listener: TcpListener, tunnel: Tunnel, registry: Arc<Registry>, gate: Arc<Gate>) {
    let tunnel = Arc::new(tunnel);
    for conn in listener.incoming() {
        if gate.is_closed() {
            break;
        }
        match conn {
            Ok(sock) => {
                let sock = Arc::new(sock);
                let Some((stream, session)) = admit(&sock, &tunnel, &registry) else {
                    continue;
                };
                let (t, g, s) = (tunnel.clone(), gate.clone(), session.clone());
                if let Err(e) = thread::Builder::new()
                    .name("public".into())
                    .stack_size(THREAD_STACK)
                    .spawn(move || relay(sock, stream, &t, &s, &g))
                {
                    session.remove_stream(stream);
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
}

/// The stream of a public connection just accepted, and its device's session; `None` (the
/// connection is closed at once, before any thread) when the device is offline or the
/// connection is over the device's bounds.
fn admit(
    sock: &Arc<TcpStream>,
    tunnel: &Tunnel,
    registry: &Registry,
) -> Option<(u32, Arc<DeviceSession>)> {
    let peer = sock.peer_addr().ok()?;
    let Some(session) = registry.get(&tunnel.device) else {
        if noise::allow(Cause::PublicRefused) {
            info!(
                "public connection from {peer} to {} closed: device {} has no agent online",
                tunnel.listen, tunnel.device
            );
        }
        return None;
    };
    match session.add_stream(sock.clone(), peer.ip()) {
        Ok(id) => Some((id, session)),
        Err(over) => {
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

fn relay(sock: Arc<TcpStream>, id: u32, tunnel: &Tunnel, session: &DeviceSession, gate: &Gate) {
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
        session.remove_stream(id);
        gate.conns().remove(&slot);
        return;
    }
    info!(
        "stream {id} opened: {peer} -> device {} port {}",
        session.key, tunnel.port
    );
    let sent = AtomicU64::new(0);
    pump_to_frames(&*sock, id, &lane, &[&sent]);
    gate.conns().remove(&slot);
    // If the stream is still ours, the public side ended it: tell the agent.
    if session.remove_stream(id) {
        let _ = lane.send_last(close_frame(id));
    }
    info!(
        "stream {id} closed: {peer}, {} bytes to the device",
        sent.into_inner()
    );
}
