//! Public tunnel ports: each accepted connection becomes a stream to a device's local port.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread;

use log::{info, warn};

use tunnel_agent::protocol::frame::{close_frame, open_frame};
use tunnel_agent::uplink::copy::pump_to_frames;

use crate::registry::Registry;
use crate::settings::Tunnel;

/// Accepts public connections on `listener` forever.
pub fn serve(listener: TcpListener, tunnel: Tunnel, registry: Arc<Registry>) {
    let tunnel = Arc::new(tunnel);
    for conn in listener.incoming() {
        match conn {
            Ok(sock) => {
                let (t, r) = (tunnel.clone(), registry.clone());
                if let Err(e) = thread::Builder::new()
                    .name("public".into())
                    .spawn(move || relay(sock, &t, &r))
                {
                    warn!("cannot start a thread for a public connection: {e}");
                }
            }
            Err(e) => warn!("accept on {} failed: {e}", tunnel.listen),
        }
    }
}

fn relay(sock: TcpStream, tunnel: &Tunnel, registry: &Registry) {
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let Some(session) = registry.get(&tunnel.device) else {
        info!(
            "public connection from {peer} to {} closed: device {} has no agent online",
            tunnel.listen, tunnel.device
        );
        return;
    };
    let _ = sock.set_nodelay(true);
    let sock = Arc::new(sock);
    let id = session.add_stream(sock.clone());
    // Every frame of the stream on one lane: the open goes before its data, the close after.
    let lane = session.tx.pipelined_lane();
    if lane.send(open_frame(id, tunnel.port)).is_err() {
        session.remove_stream(id);
        return;
    }
    info!(
        "stream {id} opened: {peer} -> device {} port {}",
        session.key, tunnel.port
    );
    let sent = AtomicU64::new(0);
    pump_to_frames(&*sock, id, &lane, &[&sent]);
    // If the stream is still ours, the public side ended it: tell the agent.
    if session.remove_stream(id) {
        let _ = lane.send_last(close_frame(id));
    }
    info!(
        "stream {id} closed: {peer}, {} bytes to the device",
        sent.into_inner()
    );
}
