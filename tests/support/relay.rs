//! A peer that is unreachable until the test says otherwise: a TCP relay on a port of
//! 127.0.0.1 where nothing listens (connections are refused, as to a host whose network is not
//! up yet) until [`Relay::open`], then every connection is carried to the target.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread;

/// The relay: [`Relay::port`] refuses until opened.
pub struct Relay {
    /// The port it answers on once open.
    pub port: u16,
    target: SocketAddr,
}

impl Relay {
    /// A closed relay to `target`, on a port that was free a moment ago.
    pub fn closed(target: SocketAddr) -> Relay {
        Relay {
            port: super::free_port(),
            target,
        }
    }

    /// Listens from now on and carries every connection to the target, both ways.
    pub fn open(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("relay port taken");
        let target = self.target;
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                thread::spawn(move || pump(client, server));
                thread::spawn(move || pump(s2, c2));
            }
        });
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A TCP relay on 127.0.0.1 to a target that records every byte each way, and whose path can
/// be cut without a packet ([`Tap::cut`]): from then on it carries nothing and closes nothing,
/// like a router that lost its route, while each end's kernel still holds its connection.
pub struct Tap {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: std::sync::Arc<TapShared>,
}

#[derive(Default)]
struct TapShared {
    cut: std::sync::atomic::AtomicBool,
    /// Per connection, in accept order: (client to target, target to client).
    conns: std::sync::Mutex<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Tap {
    /// Starts relaying every connection to `target`.
    pub fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = std::sync::Arc::new(TapShared::default());
        let s = shared.clone();
        thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let index = {
                    let mut conns = s.conns.lock().unwrap();
                    conns.push((Vec::new(), Vec::new()));
                    conns.len() - 1
                };
                if s.cut.load(std::sync::atomic::Ordering::SeqCst) {
                    // Accepted by this kernel, never carried on: the SYN went nowhere further.
                    std::mem::forget(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (a, b) = (s.clone(), s.clone());
                thread::spawn(move || a.pump(client, server, index, true));
                thread::spawn(move || b.pump(s2, c2, index, false));
            }
        });
        Tap { addr, shared }
    }

    /// Cuts the path: nothing more is carried either way, on open connections or new ones,
    /// and no connection is closed.
    pub fn cut(&self) {
        self.shared
            .cut
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The bytes of connection `i` (in accept order): (client to target, target to client).
    pub fn recorded(&self, i: usize) -> (Vec<u8>, Vec<u8>) {
        self.shared
            .conns
            .lock()
            .unwrap()
            .get(i)
            .cloned()
            .unwrap_or_default()
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }
}

impl TapShared {
    fn pump(&self, mut from: TcpStream, mut to: TcpStream, index: usize, up: bool) {
        use std::sync::atomic::Ordering;
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if self.cut.load(Ordering::SeqCst) {
                // Holds both sockets open for good and carries nothing.
                std::mem::forget((from, to));
                return;
            }
            {
                let mut conns = self.conns.lock().unwrap();
                let (a, b) = &mut conns[index];
                if up { a } else { b }.extend_from_slice(&buf[..n]);
            }
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// The frame types in `bytes` (what a [`Tap`] recorded one way) after their first line (the
/// handshake or its reply), in order; a frame cut short at the end is left out.
pub fn frame_types(bytes: &[u8]) -> Vec<u8> {
    let Some(nl) = bytes.iter().position(|&b| b == b'\n') else {
        return Vec::new();
    };
    let mut rest = &bytes[nl + 1..];
    let mut types = Vec::new();
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]) as usize;
        if rest.len() < 9 + len {
            break;
        }
        types.push(rest[0]);
        rest = &rest[9 + len..];
    }
    types
}
