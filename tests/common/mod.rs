//! Test harness: runs the real binaries, reads their logs as readiness signals, and provides
//! loopback services (echo, a scriptable fake proxy).
#![allow(dead_code)]

#[path = "../support/mod.rs"]
mod support;
#[allow(unused_imports)]
pub use support::fake_api::FakeApi;
pub use support::*;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// A device key as in the field report.
pub const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
/// A token that is easy to search for in logs; it must never appear there.
pub const TOKEN: &str = "7e57c0de";
/// Generous bound for anything that should happen "at once" (never a performance assertion).
pub const SOON: Duration = Duration::from_secs(20);

/// Path of one of the crate's binaries.
pub fn bin(name: &str) -> &'static str {
    match name {
        "tunnel-agent" => env!("CARGO_BIN_EXE_tunnel-agent"),
        "meeting-proxy" => env!("CARGO_BIN_EXE_meeting-proxy"),
        other => panic!("no binary {other}"),
    }
}

type Lines = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// A running process whose stderr is collected line by line.
pub struct Proc {
    pub name: String,
    child: Child,
    lines: Lines,
}

impl Proc {
    /// Starts `bin` with `args` and extra environment.
    pub fn spawn(bin_path: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(bin_path);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .env_remove("MEETING_DEVICE_KEY")
            .env_remove("MEETING_TOKEN")
            .env_remove("MEETING_TUNNEL_HOST")
            .env_remove("MEETING_TUNNEL_PORT")
            .env_remove("MEETING_TUNNEL_TLS")
            // The agent never touches this machine's SSH keys (/root/.ssh) unless a test asks
            // for it, with paths of its own (--ssh-keys true or MEETING_SSH_KEYS in `env`).
            .env("MEETING_SSH_KEYS", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin_path}: {e}"));
        let lines: Lines = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l = lines.clone();
        let name = bin_path.rsplit('/').next().unwrap().to_owned();
        let echo = std::env::var_os("TEST_ECHO_LOGS").is_some();
        let tag = name.clone();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{tag}] {line}");
                }
                let mut g = l.0.lock().unwrap();
                g.0.push(line);
                l.1.notify_all();
            }
            l.0.lock().unwrap().1 = true;
            l.1.notify_all();
        });
        Proc { name, child, lines }
    }

    /// Everything logged so far.
    pub fn output(&self) -> String {
        self.lines.0.lock().unwrap().0.join("\n")
    }

    /// Number of lines containing `pat`.
    pub fn count(&self, pat: &str) -> usize {
        self.lines
            .0
            .lock()
            .unwrap()
            .0
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    /// Waits for the `n`-th line (1-based) containing `pat`; panics with the log on timeout.
    pub fn wait_for_nth(&self, pat: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut g = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = g.0.iter().filter(|l| l.contains(pat)).nth(n - 1) {
                return l.clone();
            }
            let now = Instant::now();
            if now >= deadline || g.1 {
                let log = g.0.join("\n");
                drop(g);
                panic!(
                    "{}: no line #{n} containing {pat:?} (ended: {}). Log:\n{log}",
                    self.name,
                    now < deadline
                );
            }
            g = self.lines.1.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for the first line containing `pat`.
    pub fn wait_for(&self, pat: &str, timeout: Duration) -> String {
        self.wait_for_nth(pat, 1, timeout)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the log reader drain.
                let mut g = self.lines.0.lock().unwrap();
                while !g.1 {
                    g = self
                        .lines
                        .1
                        .wait_timeout(g, Duration::from_secs(5))
                        .unwrap()
                        .0;
                }
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10)); // polling a child has no readiness signal
        }
    }

    /// Kills the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `meeting-proxy` and the addresses it bound.
pub struct Proxy {
    pub proc: Proc,
    pub control: SocketAddr,
    pub tunnels: Vec<SocketAddr>,
    /// The device ports its tunnels reach.
    pub ports: Vec<u16>,
}

impl Proxy {
    /// Starts the proxy with `args`; `--listen 127.0.0.1:0` unless `args` has `--listen`.
    /// Reads the bound addresses from its log.
    pub fn start(args: &[&str]) -> Proxy {
        let mut all: Vec<&str> = args.to_vec();
        if !args.contains(&"--listen") {
            all.extend(["--listen", "127.0.0.1:0"]);
        }
        let n_tunnels = args.iter().filter(|a| **a == "--tunnel").count();
        let proc = Proc::spawn(bin("meeting-proxy"), &all, &[]);
        let line = proc.wait_for("listening for agents on ", SOON);
        let control = addr_after(&line, "listening for agents on ");
        let tunnels = (1..=n_tunnels)
            .map(|i| addr_after(&proc.wait_for_nth("tunnel ", i, SOON), "tunnel "))
            .collect();
        let ports = args
            .windows(2)
            .filter(|w| w[0] == "--tunnel")
            .filter_map(|w| w[1].rsplit(':').next()?.parse().ok())
            .collect();
        Proxy {
            proc,
            control,
            tunnels,
            ports,
        }
    }

    /// Starts an agent against this proxy, allowed to open the ports its tunnels reach.
    pub fn agent(&self, extra: &[&str]) -> Proc {
        let allow: Vec<String> = self.ports.iter().map(u16::to_string).collect();
        let mut args: Vec<&str> = Vec::new();
        for p in &allow {
            args.extend(["--allow-port", p.as_str()]);
        }
        args.extend(extra);
        agent(self.control, &args)
    }

    /// A proxy that knows device [`KEY`] with [`TOKEN`] and one tunnel per local port.
    pub fn for_ports(ports: &[u16], extra: &[&str]) -> Proxy {
        let device = format!("{KEY}={TOKEN}");
        let tunnels: Vec<String> = ports
            .iter()
            .map(|p| format!("127.0.0.1:0={KEY}:{p}"))
            .collect();
        let mut args = vec!["--device", device.as_str()];
        for t in &tunnels {
            args.extend(["--tunnel", t.as_str()]);
        }
        args.extend(extra);
        Proxy::start(&args)
    }

    /// Waits until the proxy has registered the `n`-th agent connection.
    pub fn wait_agent(&self, n: usize) {
        self.proc
            .wait_for_nth(&format!("device {KEY} connected from"), n, SOON);
    }
}

fn addr_after(line: &str, marker: &str) -> SocketAddr {
    let rest = &line[line.find(marker).unwrap() + marker.len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// The arguments of an agent for [`KEY`] against `proxy`, with no status file unless the
/// test names one (a later `--status-file` wins).
pub fn agent_args(proxy: SocketAddr) -> Vec<String> {
    let port = proxy.port().to_string();
    [
        "--device-key",
        KEY,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--status-file",
        "",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Starts `tunnel-agent` against `proxy` for [`KEY`]/[`TOKEN`], with `extra` arguments.
pub fn agent(proxy: SocketAddr, extra: &[&str]) -> Proc {
    agent_with_env(proxy, extra, &[])
}

/// Like [`agent`] with additional environment.
pub fn agent_with_env(proxy: SocketAddr, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let base = agent_args(proxy);
    let mut args: Vec<&str> = base.iter().map(String::as_str).collect();
    args.extend(extra);
    let mut all_env = vec![("MEETING_TOKEN", TOKEN)];
    all_env.extend(env);
    Proc::spawn(bin("tunnel-agent"), &args, &all_env)
}

/// A loopback port on which nothing listens.
pub fn closed_port() -> u16 {
    free_port()
}

/// Sends `data` through `addr` (an echo behind the tunnel) and returns what came back,
/// writing and reading at the same time. The tunnel has no half-close, so it reads exactly
/// `data.len()` bytes.
pub fn echo_through(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    let mut w = s.try_clone().unwrap();
    let out = data.to_vec();
    let writer = thread::spawn(move || w.write_all(&out));
    let mut back = vec![0u8; data.len()];
    let mut got = 0;
    while got < back.len() {
        match (&s).read(&mut back[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("reading echo after {got} of {} bytes: {e}", data.len()),
        }
    }
    back.truncate(got);
    writer.join().unwrap().unwrap();
    back
}

/// A fake proxy for scripted replies: hands each accepted connection and its handshake line
/// to the test.
pub struct FakeProxy {
    pub addr: SocketAddr,
    rx: mpsc::Receiver<(TcpStream, String)>,
}

impl FakeProxy {
    /// Listens on a loopback port.
    pub fn start() -> FakeProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { continue };
                let mut line = String::new();
                let mut r = BufReader::new(c.try_clone().unwrap());
                if r.read_line(&mut line).is_err() || tx.send((c, line)).is_err() {
                    break;
                }
            }
        });
        FakeProxy { addr, rx }
    }

    /// The next connection and the handshake line it sent.
    pub fn next(&self) -> (TcpStream, String) {
        self.rx
            .recv_timeout(SOON)
            .expect("the agent did not connect to the fake proxy")
    }

    /// The next connection, authenticated and in frame mode: the socket to write frames on
    /// and a reader of the agent's frames (reads time out after [`SOON`]).
    pub fn session(
        &self,
    ) -> (
        TcpStream,
        tunnel_agent::protocol::frame::FrameReader<TcpStream>,
    ) {
        let (mut s, _) = self.next();
        s.write_all(b"{\"status\":\"authenticated\"}\n").unwrap();
        s.set_read_timeout(Some(SOON)).unwrap();
        let r = tunnel_agent::protocol::frame::FrameReader::new(s.try_clone().unwrap(), 1 << 20);
        (s, r)
    }
}

/// The agent's delay before reconnecting, from its log line "reconnecting in N s".
pub fn reconnect_delay(agent: &Proc) -> f64 {
    let line = agent.wait_for("reconnecting in ", SOON);
    let rest = &line[line.find("reconnecting in ").unwrap() + 16..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}
