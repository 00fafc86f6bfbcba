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
