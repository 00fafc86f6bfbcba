//! `make bench`: every figure in one invocation on loopback, so ratios hold on a noisy machine.
//!
//! References: direct (iperf3 client to server); one plain relay hop (socat with 256 KiB
//! transfer blocks and 4 MiB socket buffers, its best plain configuration for bulk, and
//! `nodelay` for round trips); the rathole and bore clients when installed. Then the agent
//! through meeting-proxy, plain and with TLS, and through an HTTP CONNECT proxy (tinyproxy,
//! its defaults) in front of it. Upload is device to operator (the agent reads
//! the local service), download the reverse.
//!
//! Each path is checked to carry bytes before it is measured; each figure is the median of
//! `BENCH_REPEATS` runs (at least 5) with their minimum and maximum, and the round trips of
//! all paths are measured interleaved, run by run; a figure that cannot be
//! measured is shown as failed, with why, and the rest go on. Prints a Markdown table, writes
//! it to bench/RESULTS.md with the previous results beside the new ones, and regenerates the
//! summary table in README.md's performance section from it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    bin, cpu_seconds, cpu_seconds_with_children, device_agent, first_word, peers, proxy_args,
    Launch, Proc,
};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "be7c40";
/// Round trips per latency run, after [`WARM_UP`] that are not counted.
const ROUND_TRIPS: usize = 2000;
const WARM_UP: usize = 200;
/// How long a path may take to carry its first bytes.
const READY: Duration = Duration::from_secs(10);

type Res<T> = Result<T, String>;

fn secs() -> u32 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

/// Runs per figure: `BENCH_REPEATS`, never fewer than 5.
fn repeats() -> usize {
    std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
        .max(5)
}

/// One figure over its runs, or why it could not be measured.
#[derive(Clone)]
struct Figure(Res<Vec<f64>>);

impl Figure {
    fn failed(why: impl Into<String>) -> Figure {
        Figure(Err(why.into()))
    }

    fn median(&self) -> Option<f64> {
        let v = self.0.as_ref().ok()?;
        let mut v = v.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    fn range(&self) -> Option<(f64, f64)> {
        let v = self.0.as_ref().ok()?;
        let min = v.iter().copied().reduce(f64::min)?;
        let max = v.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    /// `median unit (min–max)`, with `digits` decimals; or `failed: why`.
    fn show(&self, digits: usize, unit: &str) -> String {
        match (&self.0, self.median(), self.range()) {
            (Ok(_), Some(m), Some((lo, hi))) => {
                format!("{m:.digits$} {unit} ({lo:.digits$}–{hi:.digits$})")
            }
            (Err(why), ..) => format!("failed: {why}"),
            _ => "failed: no runs".into(),
        }
    }

    /// The median only, for the short README table.
    fn short(&self, digits: usize) -> String {
        self.median()
            .map_or("failed".into(), |m| format!("{m:.digits$}"))
    }
}

/// A loopback port free a moment ago.
fn free_port() -> Res<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

fn rss_kib(pid: u32) -> u64 {
    support::status_field(pid, "VmRSS:")
}

/// The iperf3 server's log: it says [`IPERF_READY`] when it starts and again after each test.
static IPERF: OnceLock<Mutex<Proc>> = OnceLock::new();
const IPERF_READY: &str = "Server listening on";

/// One iperf3 run to `port`; `reverse`: the server sends. Bits per second received. Returns
/// once the server is ready for the next test: through a tunnel the end of a test reaches it
/// later than the client's exit, and a test started before that finds it busy.
fn iperf(port: u16, reverse: bool, seconds: u32) -> Res<f64> {
    let result = iperf_client(port, reverse, seconds);
    let ready = match IPERF.get() {
        Some(server) => {
            let server = server.lock().unwrap_or_else(|p| p.into_inner());
            server
                .try_next_after(IPERF_READY)
                .map_err(|e| format!("iperf3 server: {e}"))
        }
        None => Ok(String::new()),
    };
    // The client's own error says more than the server's silence after it.
    let bps = result?;
    ready.map(|_| bps)
}

fn iperf_client(port: u16, reverse: bool, seconds: u32) -> Res<f64> {
    let mut cmd = Command::new("iperf3");
    cmd.args(["-c", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", &seconds.to_string(), "-J"]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("iperf3: {e} (apt-get install iperf3)"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("iperf3 wrote no JSON ({e}), exit {}", out.status))?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    match v["end"]["sum_received"]["bits_per_second"].as_f64() {
        Some(b) if b > 0.0 => Ok(b),
        _ => Err("iperf3 reported no bytes received".into()),
    }
}

/// Throughput and CPU per GB of one path.
struct Flow {
    gbit: Figure,
    cpu_per_gb: Figure,
}

impl Flow {
    fn failed(why: &str) -> Flow {
        Flow {
            gbit: Figure::failed(why),
            cpu_per_gb: Figure::failed(why),
        }
    }
}

/// iperf3 through `port`, [`repeats`] times; `cpu` reads the measured processes' CPU seconds
/// so far (`None`: nothing to measure, as for direct).
fn measure(port: u16, reverse: bool, cpu: Option<&dyn Fn() -> f64>) -> Flow {
    let n = repeats();
    let (mut rates, mut cpus) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let c0 = cpu.map(|c| c());
        let t0 = Instant::now();
        let bps = match iperf(port, reverse, secs()) {
            Ok(b) => b,
            Err(why) => return Flow::failed(&format!("run {} of {n}: {why}", i + 1)),
        };
        let gb = bps * t0.elapsed().as_secs_f64() / 8.0 / 1e9;
        rates.push(bps / 1e9);
        if let (Some(cpu), Some(c0)) = (cpu, c0) {
            cpus.push((cpu() - c0) / gb.max(1e-9));
        }
    }
    Flow {
        gbit: Figure(Ok(rates)),
        cpu_per_gb: if cpu.is_some() {
            Figure(Ok(cpus))
        } else {
            Figure::failed("not measured")
        },
    }
}

/// One connection's 1-byte round trips through `port` (an echo behind it): p50 and p99 in
/// microseconds.
fn round_trips(port: u16) -> Res<(f64, f64)> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    let mut c = TcpStream::connect(("127.0.0.1", port)).map_err(|e| io("connect", e))?;
    c.set_nodelay(true).map_err(|e| io("nodelay", e))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| io("timeout", e))?;
    let mut b = [0u8; 1];
    let mut v = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..WARM_UP + ROUND_TRIPS {
        let t = Instant::now();
        c.write_all(&[i as u8])
            .and_then(|()| c.read_exact(&mut b))
            .map_err(|e| io(&format!("round trip {i}"), e))?;
        if b[0] != i as u8 {
            return Err(format!("round trip {i}: the echo answered another byte"));
        }
        if i >= WARM_UP {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(f64::total_cmp);
    Ok((v[v.len() / 2], v[v.len() * 99 / 100]))
}

/// p50 and p99 figures over [`repeats`] connections.
fn latency(port: u16) -> (Figure, Figure) {
    let n = repeats();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for i in 0..n {
        match round_trips(port) {
            Ok((a, b)) => {
                p50.push(a);
                p99.push(b);
            }
            Err(why) => {
                let f = Figure::failed(format!("run {} of {n}: {why}", i + 1));
                return (f.clone(), f);
            }
        }
    }
    (Figure(Ok(p50)), Figure(Ok(p99)))
}

/// Waits until `port` echoes a byte: the whole path is up.
fn echo_ready(port: u16) -> Res<()> {
    let until = Instant::now() + READY;
    let try_once = || -> std::io::Result<()> {
        let mut c = TcpStream::connect(("127.0.0.1", port))?;
        c.set_read_timeout(Some(Duration::from_secs(1)))?;
        c.write_all(b"?")?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
    };
    loop {
        match try_once() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= until => {
                return Err(format!(
                    "the path through port {port} echoed nothing within {} s: {e}",
                    READY.as_secs()
                ))
            }
            // Polling a path through other processes: no event says it is up.
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Starts `program` and waits for the log line `ready` it writes once it listens. (Not a
/// test connection: iperf3 and a socat in front of it take one as a failed test, and may
/// reset the next real one.)
fn start_ready(program: &str, args: &[&str], ready: &str) -> Res<Proc> {
    let p = peers::start_logged(program, args)?;
    p.try_next_after(ready)
        .map_err(|e| format!("{program}: {e}"))?;
    Ok(p)
}

/// socat as one relay hop in front of `to`; returns it and its port. `bulk`: 256 KiB
/// transfer blocks and 4 MiB socket buffers; otherwise `nodelay` for round trips.
fn relay(to: u16, bulk: bool) -> Res<(Proc, u16)> {
    let port = free_port()?;
    let opts = if bulk {
        ",rcvbuf=4194304,sndbuf=4194304"
    } else {
        ",nodelay"
    };
    let mut args = Vec::new();
    if bulk {
        args.extend(["-b", "262144"]);
    }
    let listen = format!("TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1{opts}");
    let connect = format!("TCP:127.0.0.1:{to}{opts}");
    args.extend(["-d", "-d", listen.as_str(), connect.as_str()]);
    let r = start_ready("socat", &args, "listening on")?;
    Ok((r, port))
}

/// A proxy and an agent allowed to open `ports`; the public port for each local port.
struct Tunnel {
    _proxy: Proc,
    agent: Proc,
    public: Vec<u16>,
}

fn tunnel(ports: &[u16], tls: Option<&(String, String, String)>, more: &[&str]) -> Res<Tunnel> {
    let mut args = proxy_args(KEY, TOKEN, ports);
    if let Some((_, cert, key)) = tls {
        args.extend(["--tls-cert".into(), cert.clone()]);
        args.extend(["--tls-key".into(), key.clone()]);
    }
    let proxy = Launch::new(bin("meeting-proxy")).args(&args).try_start()?;
    let mut public = Vec::new();
    for _ in ports {
        let addr = first_word(&proxy.try_next_after("tunnel ")?);
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok());
        public.push(port.ok_or(format!("meeting-proxy logged tunnel {addr:?}"))?);
    }
    let control = first_word(&proxy.try_next_after("listening for agents on ")?);
    let mut extra: Vec<&str> = vec!["--max-channels", "300"];
    if let Some((ca, _, _)) = tls {
        extra.extend(["--tls", "--ca-file", ca, "--tls-server-name", "localhost"]);
    }
    extra.extend(more);
    let agent = device_agent(&control, KEY, TOKEN, ports, &extra)?.try_start()?;
    agent.try_next_after("tunnel ready")?;
    // The proxy registers the session after its reply: a public connection before this line
    // would find no agent online.
    proxy.try_next_after("connected from")?;
    Ok(Tunnel {
        _proxy: proxy,
        agent,
        public,
    })
}

/// A CA and a localhost certificate for the TLS runs, as PEM files.
fn certificates(dir: &Path) -> Res<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let e = |e: rcgen::Error| format!("making a test certificate: {e}");
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().map_err(e)?).map_err(e)?;
    let key = KeyPair::generate().map_err(e)?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .map_err(e)?
        .signed_by(&key, &ca)
        .map_err(e)?;
    let f = |n: &str, text: String| -> Res<String> {
        let path = dir.join(n);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path.display().to_string())
    };
    Ok((
        f("ca.pem", ca.pem())?,
        f("cert.pem", cert.pem())?,
        f("key.pem", key.serialize_pem())?,
    ))
}

/// Waits (at most [`READY`]) until `pid` has no child: the children of the runs before have
/// ended and been reaped, so their CPU is in the parent's totals.
fn reaped(pid: u32) {
    let until = Instant::now() + READY;
    let children = || std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    while children().is_ok_and(|c| !c.trim().is_empty()) && Instant::now() < until {
        thread::sleep(Duration::from_millis(10)); // polling /proc: no event marks a reap
    }
}

/// CPU seconds of a process and all its descendants still alive, plus what finished
/// children already handed back to it (socat forks one child per connection).
fn family_cpu(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds_with_children(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
            .map(family_cpu)
            .sum::<f64>()
}

/// What one tunnel (the agent or a peer) measured.
struct Measured {
    up: Flow,
    down: Flow,
    p50: Figure,
    p99: Figure,
    idle_kib: Res<u64>,
}

impl Measured {
    fn failed(why: &str) -> Measured {
        Measured {
            up: Flow::failed(why),
            down: Flow::failed(why),
            p50: Figure::failed(why),
            p99: Figure::failed(why),
            idle_kib: Err(why.to_owned()),
        }
    }
}

/// A peer carrying `iperf` for the flows; then one carrying `echo`, returned running for the
/// round trips (measured with every other path's, interleaved), with its idle size read.
fn measure_peer(
    name: &str,
    iperf_port: u16,
    echo: u16,
    dir: &Path,
) -> (Measured, Res<peers::Peer>) {
    let start = |service: u16| -> Res<peers::Peer> {
        match name {
            "rathole" => peers::rathole(service, free_port()?, free_port()?, dir),
            _ => peers::bore(service, free_port()?),
        }
    };
    let (up, down) = match start(iperf_port) {
        Ok(peer) => {
            let pid = peer.client.pid();
            let cpu = move || cpu_seconds(pid);
            (
                measure(peer.public, true, Some(&cpu)),
                measure(peer.public, false, Some(&cpu)),
            )
        }
        Err(why) => return (Measured::failed(&why), Err(why)),
    };
    let for_echo = start(echo).and_then(|p| echo_ready(p.public).map(|()| p));
    let idle_kib = match &for_echo {
        Ok(peer) => Ok(rss_kib(peer.client.pid())),
        Err(why) => Err(why.clone()),
    };
    let pending = Figure::failed("not measured");
    let m = Measured {
        up,
        down,
        p50: pending.clone(),
        p99: pending,
        idle_kib,
    };
    (m, for_echo)
}

/// Round trips through every path (`Err`: the path is not up, and why), interleaved: run `i`
/// of each path before run `i + 1` of any, so a machine that gets faster or slower during the
/// bench moves them all alike. p50 and p99 figures per path.
fn interleaved(paths: &[Res<u16>]) -> Vec<(Figure, Figure)> {
    let n = repeats();
    let mut runs: Vec<Res<(Vec<f64>, Vec<f64>)>> = paths
        .iter()
        .map(|p| {
            p.as_ref()
                .map(|_| (Vec::new(), Vec::new()))
                .map_err(Clone::clone)
        })
        .collect();
    for i in 0..n {
        for (path, run) in paths.iter().zip(runs.iter_mut()) {
            let (Ok(port), Ok((p50, p99))) = (path, &mut *run) else {
                continue;
            };
            match round_trips(*port) {
                Ok((a, b)) => {
                    p50.push(a);
                    p99.push(b);
                }
                Err(why) => *run = Err(format!("run {} of {n}: {why}", i + 1)),
            }
        }
    }
    runs.into_iter()
        .map(|r| match r {
            Ok((a, b)) => (Figure(Ok(a)), Figure(Ok(b))),
            Err(why) => (Figure::failed(&why), Figure::failed(why)),
        })
        .collect()
}

/// The round-trip p50s again with every process on CPU 0 (this program run again under
/// `taskset`): no thread waits for an idle CPU to wake, which on a virtual machine costs tens
/// of microseconds per hop and is not the tunnel's doing. Direct, relay hop, agent.
fn pinned_latency() -> Res<[f64; 3]> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(exe)
        .env("BENCH_ONLY", "latency")
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("taskset: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let p50 = |name: &str| -> Res<f64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or(format!("the pinned run printed no {name} line"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "p50");
        at.and_then(|i| words.get(i + 1)?.parse().ok())
            .ok_or(format!("the pinned run's {name} line: {line:?}"))
    };
    Ok([p50("direct")?, p50("relay hop")?, p50("agent")?])
}

/// `BENCH_ONLY=latency`: the three round-trip figures alone, printed, nothing written; for
/// profiling the interactive path quickly.
fn latency_only(echo: u16) {
    let show = |what: &str, (p50, p99): (Figure, Figure)| {
        println!("{what:<12} p50 {} p99 {}", p50.short(0), p99.short(0))
    };
    show("direct", latency(echo));
    match relay(echo, false) {
        Ok((_relay, port)) => show("relay hop", latency(port)),
        Err(why) => println!("relay hop    failed: {why}"),
    }
    match tunnel(&[echo], None, &[]).and_then(|t| echo_ready(t.public[0]).map(|()| t)) {
        Ok(t) => show("agent", latency(t.public[0])),
        Err(why) => println!("agent        failed: {why}"),
    }
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tunnel-agent-bench-{}", std::process::id()));
    let setup = || -> Res<(u16, u16)> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let iperf_port = free_port()?;
        let port = iperf_port.to_string();
        let args = ["-s", "-p", &port, "--forceflush"];
        let iperf = peers::start_logged("iperf3", &args)?;
        iperf
            .try_next_after(IPERF_READY)
            .map_err(|e| format!("iperf3: {e}"))?;
        let _ = IPERF.set(Mutex::new(iperf));
        let echo = support::try_echo_server().map_err(|e| format!("echo service: {e}"))?;
        Ok((iperf_port, echo))
    };
    let (iperf_port, echo) = match setup() {
        Ok(s) => s,
        Err(why) => {
            eprintln!("bench: cannot start the services it measures through: {why}");
            std::process::exit(1);
        }
    };
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        latency_only(echo);
    } else {
        let results = run(iperf_port, echo, &dir);
        write_results(&results);
    }
    let _ = std::fs::remove_dir_all(dir);
    // The iperf3 server lives in a static: stopped here, not by a drop.
    if let Some(server) = IPERF.get() {
        server.lock().unwrap_or_else(|p| p.into_inner()).kill();
    }
}

/// Everything one run measured.
struct Results {
    up_direct: Flow,
    down_direct: Flow,
    up_relay: Flow,
    down_relay: Flow,
    direct_p50: Figure,
    direct_p99: Figure,
    relay_p50: Figure,
    relay_p99: Figure,
    agent: Measured,
    up_tls: Flow,
    down_tls: Flow,
    /// The agent through an HTTP CONNECT proxy (tinyproxy).
    via: Measured,
    rss_100: Res<(u64, u64)>,
    setup_ms: Res<f64>,
    pinned: Res<[f64; 3]>,
    peers: Vec<(&'static str, Measured)>,
}

fn run(iperf_port: u16, echo: u16, dir: &Path) -> Results {
    let n = repeats();
    println!("measuring, {n} runs per figure, {} s per flow", secs());
    let up_direct = measure(iperf_port, true, None);
    let down_direct = measure(iperf_port, false, None);
    let (up_relay, down_relay) = match relay(iperf_port, true) {
        Ok((r, port)) => {
            let pid = r.pid();
            // socat forks a child per connection: the whole family counts, read once the
            // last run's child has been reaped into the parent's totals.
            let cpu = move || {
                reaped(pid);
                family_cpu(pid)
            };
            (
                measure(port, true, Some(&cpu)),
                measure(port, false, Some(&cpu)),
            )
        }
        Err(why) => (Flow::failed(&why), Flow::failed(&why)),
    };
    // Paths for the round trips, measured together at the end.
    let relay_echo = relay(echo, false).and_then(|(r, p)| {
        echo_ready(p)?;
        Ok((r, p))
    });

    let mut rss_100 = Err("no tunnel".to_owned());
    let mut setup_ms = Err("no tunnel".to_owned());
    let ready = |t: Tunnel| -> Res<Tunnel> {
        echo_ready(t.public[1])?;
        settled(t.agent.pid())?;
        Ok(t)
    };
    let agent_tunnel = tunnel(&[iperf_port, echo], None, &[]).and_then(ready);
    let mut agent = match &agent_tunnel {
        Ok(t) => {
            let pid = t.agent.pid();
            // Idle: connected, the readiness check's channel closed, before any measurement.
            let idle = rss_kib(pid);
            let cpu = move || cpu_seconds(pid);
            let up = measure(t.public[0], true, Some(&cpu));
            let down = measure(t.public[0], false, Some(&cpu));
            (rss_100, setup_ms) = match settled(pid) {
                Ok(()) => hundred_channels(pid, t.public[1]),
                Err(why) => (Err(why.clone()), Err(why)),
            };
            let pending = Figure::failed("not measured");
            Measured {
                up,
                down,
                p50: pending.clone(),
                p99: pending,
                idle_kib: Ok(idle),
            }
        }
        Err(why) => Measured::failed(why),
    };
    let (up_tls, down_tls) =
        match certificates(dir).and_then(|files| tunnel(&[iperf_port], Some(&files), &[])) {
            Ok(t) => {
                let pid = t.agent.pid();
                let cpu = move || cpu_seconds(pid);
                (
                    measure(t.public[0], true, Some(&cpu)),
                    measure(t.public[0], false, Some(&cpu)),
                )
            }
            Err(why) => (Flow::failed(&why), Flow::failed(&why)),
        };
    // The agent through an HTTP CONNECT proxy (tinyproxy, its defaults, no authentication):
    // the agent's CPU per GB and the round trip, beside the agent's own direct path above.
    let connect_proxy = support::outbound::Outbound::tinyproxy(&[], false, "127.0.0.1");
    let via_url = connect_proxy.url("http", None);
    let via_tunnel =
        tunnel(&[iperf_port, echo], None, &["--outbound-proxy", &via_url]).and_then(ready);
    let (up_via, down_via) = match &via_tunnel {
        Ok(t) => {
            let pid = t.agent.pid();
            let cpu = move || cpu_seconds(pid);
            (
                measure(t.public[0], true, Some(&cpu)),
                measure(t.public[0], false, Some(&cpu)),
            )
        }
        Err(why) => (Flow::failed(why), Flow::failed(why)),
    };
    let (mut peers, peer_echo): (Vec<_>, Vec<_>) = ["bore", "rathole"]
        .into_iter()
        .map(|name| {
            let (m, for_echo) = measure_peer(name, iperf_port, echo, dir);
            ((name, m), for_echo)
        })
        .unzip();
    // The round trips of every path, interleaved.
    let mut paths = vec![
        Ok(echo),
        relay_echo.as_ref().map(|r| r.1).map_err(Clone::clone),
        agent_tunnel
            .as_ref()
            .map(|t| t.public[1])
            .map_err(Clone::clone),
    ];
    paths.push(
        via_tunnel
            .as_ref()
            .map(|t| t.public[1])
            .map_err(Clone::clone),
    );
    paths.extend(
        peer_echo
            .iter()
            .map(|p| p.as_ref().map(|p| p.public).map_err(Clone::clone)),
    );
    let mut lat = interleaved(&paths).into_iter();
    let mut next = || {
        lat.next()
            .unwrap_or_else(|| (Figure::failed("-"), Figure::failed("-")))
    };
    let (direct_p50, direct_p99) = next();
    let (relay_p50, relay_p99) = next();
    (agent.p50, agent.p99) = next();
    let (via_p50, via_p99) = next();
    for (_, m) in peers.iter_mut() {
        (m.p50, m.p99) = next();
    }
    drop((
        relay_echo,
        agent_tunnel,
        peer_echo,
        via_tunnel,
        connect_proxy,
    ));
    Results {
        up_direct,
        down_direct,
        up_relay,
        down_relay,
        direct_p50,
        direct_p99,
        relay_p50,
        relay_p99,
        agent,
        up_tls,
        down_tls,
        via: Measured {
            up: up_via,
            down: down_via,
            p50: via_p50,
            p99: via_p99,
            idle_kib: Err("not measured".into()),
        },
        rss_100,
        setup_ms,
        pinned: pinned_latency(),
        peers,
    }
}

/// Waits until the agent has no channel thread left (they are named `channel-<stream>`): the
/// measurements' channels closed. Counting all threads raced with the frame writer's start.
fn settled(pid: u32) -> Res<()> {
    let until = Instant::now() + READY;
    loop {
        let channels = support::wchans(pid, "channel-").len();
        if channels == 0 {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "the agent still runs {channels} channel thread(s) after the measurement"
            ));
        }
        thread::sleep(Duration::from_millis(20)); // polling /proc: no event marks it
    }
}

/// The agent's resident size (KiB) before and with 100 idle channels open, and what opening
/// one cost (ms, open plus first round trip).
#[allow(clippy::type_complexity)]
fn hundred_channels(pid: u32, public: u16) -> (Res<(u64, u64)>, Res<f64>) {
    let before = rss_kib(pid);
    let t0 = Instant::now();
    let mut held = Vec::new();
    for i in 0..100 {
        let open = || -> std::io::Result<TcpStream> {
            // From 10 addresses: the proxy lets one address have 16 at most.
            let from = std::net::IpAddr::from([127, 0, 1, (i % 10 + 1) as u8]);
            let mut c = support::connect_from(from, ([127, 0, 0, 1], public).into(), None)?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"x")?;
            c.read_exact(&mut [0u8; 1])?;
            Ok(c)
        };
        match open() {
            Ok(c) => held.push(c),
            Err(e) => {
                let why = format!("channel {i} of 100: {e}");
                return (Err(why.clone()), Err(why));
            }
        }
    }
    let setup = t0.elapsed().as_secs_f64() * 1000.0 / 100.0;
    (Ok((before, rss_kib(pid))), Ok(setup))
}

fn ratio(a: &Figure, b: &Figure) -> String {
    match (a.median(), b.median()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "-".into(),
    }
}

fn pct(a: &Figure, b: &Figure) -> String {
    match (a.median(), b.median()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.0} %", 100.0 * a / b),
        _ => "-".into(),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

/// The rows of bench/RESULTS.md.
fn rows(r: &Results) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
    let a = &r.agent;
    let gbit = |f: &Flow| f.gbit.show(2, "Gbit/s");
    let cpu = |f: &Flow| f.cpu_per_gb.show(3, "s/GB");
    let us = |f: &Figure| f.show(0, "µs");
    row("throughput up, direct", gbit(&r.up_direct));
    row("throughput down, direct", gbit(&r.down_direct));
    row("throughput up, relay hop", gbit(&r.up_relay));
    row("throughput down, relay hop", gbit(&r.down_relay));
    for (dir, f, d) in [
        ("up", &a.up, &r.up_direct),
        ("down", &a.down, &r.down_direct),
    ] {
        row(
            &format!("throughput {dir}, agent (of direct)"),
            format!("{} ({})", gbit(f), pct(&f.gbit, &d.gbit)),
        );
    }
    row("throughput up, agent TLS", gbit(&r.up_tls));
    row("throughput down, agent TLS", gbit(&r.down_tls));
    row("CPU per GB up, relay hop", cpu(&r.up_relay));
    row("CPU per GB down, relay hop", cpu(&r.down_relay));
    for (dir, f, rel) in [("up", &a.up, &r.up_relay), ("down", &a.down, &r.down_relay)] {
        row(
            &format!("CPU per GB {dir}, agent (ratio to relay hop)"),
            format!("{} ({})", cpu(f), ratio(&f.cpu_per_gb, &rel.cpu_per_gb)),
        );
    }
    row("CPU per GB up, agent TLS", cpu(&r.up_tls));
    row("CPU per GB down, agent TLS", cpu(&r.down_tls));
    for (dir, f, own) in [("up", &r.via.up, &a.up), ("down", &r.via.down, &a.down)] {
        row(
            &format!("throughput {dir}, agent through HTTP CONNECT (tinyproxy)"),
            gbit(f),
        );
        row(
            &format!("CPU per GB {dir}, agent through HTTP CONNECT (ratio to the agent direct)"),
            format!("{} ({})", cpu(f), ratio(&f.cpu_per_gb, &own.cpu_per_gb)),
        );
    }
    row("1-byte round trip p50, direct", us(&r.direct_p50));
    row("1-byte round trip p99, direct", us(&r.direct_p99));
    row("1-byte round trip p50, relay hop", us(&r.relay_p50));
    row("1-byte round trip p99, relay hop", us(&r.relay_p99));
    row("1-byte round trip p50, agent", us(&a.p50));
    row("1-byte round trip p99, agent", us(&a.p99));
    row(
        "1-byte round trip p50, agent through HTTP CONNECT (tinyproxy)",
        us(&r.via.p50),
    );
    row(
        "1-byte round trip p99, agent through HTTP CONNECT (tinyproxy)",
        us(&r.via.p99),
    );
    match &r.pinned {
        Ok([direct, relay, agent]) => row(
            "1-byte round trip p50, all on one CPU: direct / relay hop / agent",
            format!("{direct:.0} / {relay:.0} / {agent:.0} µs"),
        ),
        Err(why) => row(
            "1-byte round trip p50, all on one CPU: direct / relay hop / agent",
            format!("failed: {why}"),
        ),
    }
    row(
        "agent RSS idle (connected, before traffic)",
        match &a.idle_kib {
            Ok(k) => format!("{k} KiB"),
            Err(why) => format!("failed: {why}"),
        },
    );
    row(
        "agent RSS with 100 idle channels",
        match &r.rss_100 {
            Ok((before, with)) => format!(
                "{with} KiB ({:.0} KiB per channel)",
                (*with as f64 - *before as f64) / 100.0
            ),
            Err(why) => format!("failed: {why}"),
        },
    );
    row(
        "channel set-up (open + first round trip)",
        match &r.setup_ms {
            Ok(ms) => format!("{ms:.2} ms"),
            Err(why) => format!("failed: {why}"),
        },
    );
    for (name, p) in &r.peers {
        for (dir, f, d, rel) in [
            ("up", &p.up, &r.up_direct, &r.up_relay),
            ("down", &p.down, &r.down_direct, &r.down_relay),
        ] {
            row(
                &format!("throughput {dir}, {name} (of direct)"),
                format!("{} ({})", gbit(f), pct(&f.gbit, &d.gbit)),
            );
            row(
                &format!("CPU per GB {dir}, {name} client (ratio to relay hop)"),
                format!("{} ({})", cpu(f), ratio(&f.cpu_per_gb, &rel.cpu_per_gb)),
            );
        }
        row(&format!("1-byte round trip p50, {name}"), us(&p.p50));
        row(&format!("1-byte round trip p99, {name}"), us(&p.p99));
        row(
            &format!("{name} client RSS idle"),
            match &p.idle_kib {
                Ok(k) => format!("{k} KiB"),
                Err(why) => format!("failed: {why}"),
            },
        );
    }
    let agent_bin = bin("tunnel-agent");
    let size = std::fs::metadata(&agent_bin).map(|m| m.len()).unwrap_or(0);
    row("agent binary measured", agent_bin);
    row("binary size (that build)", format!("{size} bytes"));
    rows
}

/// The short table for README.md's performance section: medians only, one column per tool.
fn summary(r: &Results) -> String {
    let a = &r.agent;
    let peer = |name: &str| r.peers.iter().find(|(n, _)| *n == name).map(|(_, p)| p);
    let cols = [Some(a), peer("bore"), peer("rathole")];
    let both = |f: &dyn Fn(&Measured) -> String| cols.map(|m| m.map_or("-".to_owned(), f));
    let slash = |x: &Figure, y: &Figure, d: usize| format!("{} / {}", x.short(d), y.short(d));
    let thr = both(&|m| slash(&m.up.gbit, &m.down.gbit, 1));
    let cpu = both(&|m| slash(&m.up.cpu_per_gb, &m.down.cpu_per_gb, 2));
    let lat = both(&|m| slash(&m.p50, &m.p99, 0));
    let rss = both(&|m| {
        m.idle_kib
            .as_ref()
            .map_or("failed".into(), |k| format!("{:.1} MB", *k as f64 / 1024.0))
    });
    let mut s = String::from(
        "| figure (median of the runs) | tunnel-agent + meeting-proxy | relay hop: socat `-b 262144`, 4 MiB socket buffers | bore | rathole |\n|---|---|---|---|---|\n",
    );
    s += &format!(
        "| throughput up / down, Gbit/s | {} | {} | {} | {} |\n",
        thr[0],
        slash(&r.up_relay.gbit, &r.down_relay.gbit, 1),
        thr[1],
        thr[2]
    );
    s += &format!(
        "| CPU per GB up / down (client side), s | {} ({} / {} of the relay hop) | {} | {} | {} |\n",
        cpu[0],
        ratio(&a.up.cpu_per_gb, &r.up_relay.cpu_per_gb),
        ratio(&a.down.cpu_per_gb, &r.down_relay.cpu_per_gb),
        slash(&r.up_relay.cpu_per_gb, &r.down_relay.cpu_per_gb, 2),
        cpu[1],
        cpu[2]
    );
    s += &format!(
        "| 1-byte round trip p50 / p99, µs (direct: {}) | {} | {} | {} | {} |\n",
        slash(&r.direct_p50, &r.direct_p99, 0),
        lat[0],
        slash(&r.relay_p50, &r.relay_p99, 0),
        lat[1],
        lat[2]
    );
    s += &format!(
        "| TLS throughput up / down, Gbit/s; CPU per GB, s | {}; {} | | | |\n",
        slash(&r.up_tls.gbit, &r.down_tls.gbit, 1),
        slash(&r.up_tls.cpu_per_gb, &r.down_tls.cpu_per_gb, 2)
    );
    s += &format!("| idle RSS | {} | | {} | {} |\n", rss[0], rss[1], rss[2]);
    s
}

const README_BEGIN: &str = "<!-- bench summary: written by make bench -->\n";
const README_END: &str = "<!-- end of bench summary -->\n";

/// Writes bench/RESULTS.md (this run beside the previous one, read back from the file) and
/// the summary table in README.md.
fn write_results(r: &Results) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("bench/RESULTS.md");
    let previous: std::collections::HashMap<String, String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() >= 4
                && !cells[1].is_empty()
                && cells[1] != "figure"
                && !cells[1].starts_with('-'))
            .then(|| (cells[1].to_owned(), cells[2].to_owned()))
        })
        .collect();
    let mut out = format!(
        "# tunnel-agent benchmark\n\nOne `make bench` run on: {}.\nEvery figure comes from the \
         same invocation: the median of {} runs ({} s each for a flow, {ROUND_TRIPS} round trips \
         for a latency), minimum–maximum in brackets. The relay hop is socat with 256 KiB \
         transfer blocks (`-b 262144`) and 4 MiB socket buffers (`nodelay` for round trips). \
         `previous` is the run committed before this one.\n\n| figure | this run | previous |\n|---|---|---|\n",
        machine(),
        repeats(),
        secs()
    );
    for (k, v) in rows(r) {
        println!("{k:<58} {v}");
        let prev = previous.get(&k).map_or("-", String::as_str);
        out.push_str(&format!("| {k} | {v} | {prev} |\n"));
    }
    let summary = summary(r);
    println!("\n{summary}");
    let written = std::fs::create_dir_all(root.join("bench"))
        .and_then(|()| std::fs::write(&path, &out))
        .map_err(|e| format!("{}: {e}", path.display()));
    if let Err(e) = written {
        eprintln!("bench: cannot write the results: {e}");
    }
    let readme = root.join("README.md");
    let text = std::fs::read_to_string(&readme).unwrap_or_default();
    match (text.find(README_BEGIN), text.find(README_END)) {
        (Some(b), Some(e)) if b < e => {
            let new = format!("{}{README_BEGIN}{summary}{}", &text[..b], &text[e..]);
            if let Err(e) = std::fs::write(&readme, new) {
                eprintln!("bench: cannot update {}: {e}", readme.display());
            }
        }
        _ => eprintln!("bench: README.md has no bench summary markers; not updated"),
    }
}
