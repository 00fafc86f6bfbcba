//! `make demo`: a real tunnel on loopback with the real binaries, then the field report's
//! silent refusal and the one line the agent writes about it.

#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::Receiver;
use std::thread;

use support::{first_word, start, start_agent, wait_for, Running};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "41e291";

/// Starts the agent against the proxy whose log is `proxy_log`, once it listens; the agent may
/// open `service` (the only local port it will open).
fn agent_for(proxy_log: &Receiver<String>, service: u16) -> (Running, Receiver<String>) {
    let control = first_word(&wait_for(proxy_log, "listening for agents on "));
    start_agent(&control, KEY, TOKEN, &[service], &[], true)
}

fn main() {
    println!("== 1. A local service on the device (an echo server standing in for sshd)");
    let service = TcpListener::bind("127.0.0.1:0").expect("bind");
    let service_port = service.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut c in service.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut r = c.try_clone().expect("clone");
                let _ = std::io::copy(&mut r, &mut c);
            });
        }
    });
    println!("    listening on 127.0.0.1:{service_port}\n");

    println!("== 2. meeting-proxy, the server side, with one public port for the device");
    let tunnel = format!("127.0.0.1:0={KEY}:{service_port}");
    let device = format!("{KEY}={TOKEN}");
    let (proxy, proxy_log) = start(
        "meeting-proxy",
        &[
            "--listen",
            "127.0.0.1:0",
            "--device",
            &device,
            "--tunnel",
            &tunnel,
        ],
        &[],
        true,
    );
    let public = first_word(&wait_for(&proxy_log, "tunnel "));
    println!();

    println!("== 3. tunnel-agent dials out to the proxy (the token comes from MEETING_TOKEN)");
    let (agent, agent_log) = agent_for(&proxy_log, service_port);
    wait_for(&proxy_log, "connected from");
    wait_for(&agent_log, "tunnel ready");
    println!();

    println!("== 4. An operator connects to the public port {public}");
    let mut c = TcpStream::connect(&public).expect("connect to the public port");
    let msg = b"hello through the Meeting tunnel";
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    drop(c);
    wait_for(&agent_log, "closed:");
    println!(
        "    sent {:?}, got back {:?}: {}\n",
        String::from_utf8_lossy(msg),
        String::from_utf8_lossy(&back),
        if back == msg {
            "the tunnel works"
        } else {
            "MISMATCH"
        }
    );
    drop((agent, proxy));

    println!("== 5. The field report: a proxy that closes right after the handshake");
    let (bad, bad_log) = start(
        "meeting-proxy",
        &[
            "--listen",
            "127.0.0.1:0",
            "--device",
            &device,
            "--reply",
            "silent-close",
        ],
        &[],
        true,
    );
    let (agent, agent_log) = agent_for(&bad_log, service_port);
    wait_for(&agent_log, "reconnecting in");
    drop((agent, bad));
    println!("\n    The ERROR line above is what an operator reads: what happened, which device,");
    println!("    what to check. The token never appears in any log line.");
    std::process::exit(if back == msg { 0 } else { 1 });
}
