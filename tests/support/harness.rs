//! The tunnel on loopback, as the tests and examples drive it: `meeting-proxy` with its bound
//! addresses read from its log, agents for a device, a scriptable fake proxy, echoes through a
//! tunnel.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;

use super::fake_api::FakeApi;
use super::free_port;
use super::process::{bin, Launch, Proc, SOON};

/// A device key as in the field report.
pub const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
/// A token that is easy to search for in logs; it must never appear there.
pub const TOKEN: &str = "7e57c0de";

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
        let mut args = proxy_args(KEY, TOKEN, ports);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proxy::start(&args)
    }

    /// A proxy deciding by the fake Meeting API `api`, with the API's public ports on loopback
    /// and a quick tunnel poll; `extra` arguments follow.
    pub fn for_api(api: &super::FakeApi, extra: &[&str]) -> Proxy {
        let mut args = vec![
            "--api-url",
            api.url.as_str(),
            "--api-ca-file",
            api.ca_file.to_str().unwrap(),
            "--public-bind",
            "127.0.0.1",
            "--tunnels-interval",
            "0.2",
        ];
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

/// meeting-proxy's arguments for device `key` with `token` and one public port on loopback
/// (any free one) for each of the device's `ports`, agents on any free loopback port.
pub fn proxy_args(key: &str, token: &str, ports: &[u16]) -> Vec<String> {
    let mut args = vec![
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        "--device".to_owned(),
        format!("{key}={token}"),
    ];
    for p in ports {
        args.extend(["--tunnel".to_owned(), format!("127.0.0.1:0={key}:{p}")]);
    }
    args
}

/// The arguments of an agent for [`KEY`] against `proxy`, with no status file unless the
/// test names one (a later `--status-file` wins).
pub fn agent_args(proxy: SocketAddr) -> Vec<String> {
    device_args(proxy, KEY)
}

/// The step named `name` of a `check --json` report.
pub fn check_step(report: &serde_json::Value, name: &str) -> serde_json::Value {
    report["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name}: {report}"))
        .clone()
}

/// The arguments of an agent for device `key` against `proxy`, without a status file.
pub fn device_args(proxy: SocketAddr, key: &str) -> Vec<String> {
    let port = proxy.port().to_string();
    [
        "--device-key",
        key,
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

/// An agent as device `key` with `token` against the proxy at `control` (`host:port`, as the
/// proxy logs it), allowed to open `ports`; `extra` arguments follow. Not started yet.
pub fn device_agent(
    control: &str,
    key: &str,
    token: &str,
    ports: &[u16],
    extra: &[&str],
) -> Result<Launch, String> {
    let proxy: SocketAddr = control
        .parse()
        .map_err(|e| format!("proxy address {control:?}: {e}"))?;
    let mut args = device_args(proxy, key);
    for p in ports {
        args.extend(["--allow-port".to_owned(), p.to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    Ok(Launch::new(bin("tunnel-agent"))
        .args(&args)
        .envs(&[("MEETING_TOKEN", token)]))
}

/// Starts meeting-proxy backed by the fake Meeting API `api`: agents on any free loopback
/// port, the API's tunnels on 127.0.0.1, the tunnel list fetched every second.
pub fn api_proxy(api: &FakeApi) -> Launch {
    let ca = api.ca_file.display().to_string();
    Launch::new(bin("meeting-proxy")).args(&[
        "--listen",
        "127.0.0.1:0",
        "--api-url",
        &api.url,
        "--api-ca-file",
        &ca,
        "--public-bind",
        "127.0.0.1",
        "--tunnels-interval",
        "1",
    ])
}

/// The first word of `s`.
pub fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_owned()
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
    echo_through_from([127, 0, 0, 1], addr, data)
}

/// [`echo_through`] from the loopback address `from` (the proxy bounds the public
/// connections of one address: tests that open many at once spread them over addresses).
pub fn echo_through_from(from: [u8; 4], addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let s = super::connect_from(from.into(), addr, None).unwrap();
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

/// OpenSSH client options for a test login with `key` alone: no configuration file, no host
/// key checks (a server made for the test), no prompt.
pub fn ssh_client_opts(key: &std::path::Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([key.display().to_string()])
    .collect()
}
