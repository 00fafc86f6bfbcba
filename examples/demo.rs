//! `make demo`: a real tunnel on loopback with the real binaries, then the field report's
//! silent refusal and the one line the agent writes about it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "41e291";
const WAIT: Duration = Duration::from_secs(20);

/// The binaries sit next to the `examples` folder this program was built into.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join(name)
}

/// A child process that is killed when dropped, also when the demo panics.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a binary, echoes its log lines with a tag, and returns them on a channel.
fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Running, Receiver<String>) {
    let mut child = Command::new(binary(name))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name} (run `make build` first): {e}"));
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped");
    let tag = name.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("    [{tag}] {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// Waits for a log line containing `pat` and returns the text after it.
fn wait_for(rx: &Receiver<String>, pat: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no log line containing {pat:?}"));
        if let Some(i) = line.find(pat) {
            return line[i + pat.len()..].to_owned();
        }
    }
}

fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Starts the agent against the proxy whose log is `proxy_log`, once it listens; the agent may
/// open `service` (the only local port it will open).
fn start_agent(proxy_log: &Receiver<String>, service: u16) -> (Running, Receiver<String>) {
    let control = first_word(&wait_for(proxy_log, "listening for agents on "));
    let port = control.rsplit(':').next().unwrap_or_default().to_owned();
    let allow = service.to_string();
    let args = [
        "--device-key",
        KEY,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--allow-port",
        &allow,
        "--status-file",
        "",
    ];
    start("tunnel-agent", &args, &[("MEETING_TOKEN", TOKEN)])
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
    );
    let public = first_word(&wait_for(&proxy_log, "tunnel "));
    println!();

    println!("== 3. tunnel-agent dials out to the proxy (the token comes from MEETING_TOKEN)");
    let (agent, agent_log) = start_agent(&proxy_log, service_port);
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
    );
    let (agent, agent_log) = start_agent(&bad_log, service_port);
    wait_for(&agent_log, "reconnecting in");
    drop((agent, bad));
    println!("\n    The ERROR line above is what an operator reads: what happened, which device,");
    println!("    what to check. The token never appears in any log line.");
    std::process::exit(if back == msg { 0 } else { 1 });
}
