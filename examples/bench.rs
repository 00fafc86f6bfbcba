//! `make bench`: every figure in one invocation on loopback, so ratios hold on a noisy machine.
//!
//! References: direct (iperf3 client to server), and one plain relay hop (socat). Then the
//! agent through meeting-proxy, plain and with TLS. Upload is device to operator (the agent
//! reads the local service), download the reverse. Prints a Markdown table and writes it to
//! bench/RESULTS.md with the previous results beside the new ones.

#[path = "support/peers.rs"]
mod peers;
#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{
    cpu_seconds, cpu_seconds_with_children, echo_server, first_word, free_port, start, start_agent,
    status_field, wait_for, Running,
};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "be7c40";

fn secs() -> u32 {
    std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

fn repeats() -> usize {
    std::env::var("BENCH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// One iperf3 run to `port`; `reverse`: the server sends. Returns bits per second received.
fn iperf(port: u16, reverse: bool, seconds: u32) -> f64 {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-t",
        &seconds.to_string(),
        "-J",
    ]);
    if reverse {
        cmd.arg("-R");
    }
    let out = cmd.output().expect("iperf3 (apt-get install iperf3)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
}

/// Throughput and CPU per GB of `pid` (None: no process to measure) through `port`.
struct Flow {
    gbit: f64,
    cpu_per_gb: Option<f64>,
}

fn measure(port: u16, reverse: bool, pid: Option<u32>) -> Flow {
    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for _ in 0..repeats() {
        let c0 = pid.map(cpu_seconds);
        let t0 = Instant::now();
        let bps = iperf(port, reverse, secs());
        let elapsed = t0.elapsed().as_secs_f64();
        rates.push(bps / 1e9);
        if let (Some(pid), Some(c0)) = (pid, c0) {
            let gb = bps * elapsed / 8.0 / 1e9;
            cpus.push((cpu_seconds(pid) - c0) / gb.max(1e-9));
        }
    }
    Flow {
        gbit: median(rates),
        cpu_per_gb: (!cpus.is_empty()).then(|| median(cpus)),
    }
}

/// Round trips of 1 byte through `port` (an echo behind it): p50 and p99 in microseconds.
fn latency(port: u16) -> (f64, f64) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    let mut v = Vec::new();
    for i in 0..3000 {
        let t = Instant::now();
        c.write_all(&[i as u8]).unwrap();
        c.read_exact(&mut b).unwrap();
        if i >= 200 {
            v.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn spawn_quiet(program: &str, args: &[&str]) -> Running {
    Running(
        Command::new(program)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}")),
    )
}

/// Waits until something accepts on `port`.
fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        thread::sleep(Duration::from_millis(20)); // polling a foreign process's listener
    }
}

/// A proxy and an agent allowed to open `ports`; returns them, the agent's pid and the public
/// port for each local port.
struct Tunnel {
    _proxy: Running,
    agent: Running,
    public: Vec<u16>,
}

fn tunnel(ports: &[u16], tls: Option<&(String, String, String)>) -> Tunnel {
    let device = format!("{KEY}={TOKEN}");
    let mut args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--device".into(),
        device,
    ];
    for p in ports {
        args.push("--tunnel".into());
        args.push(format!("127.0.0.1:0={KEY}:{p}"));
    }
    if let Some((_, cert, key)) = tls {
        args.extend([
            "--tls-cert".into(),
            cert.clone(),
            "--tls-key".into(),
            key.clone(),
        ]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (proxy, plog) = start("meeting-proxy", &argv, &[], false);
    let public: Vec<u16> = ports
        .iter()
        .map(|_| {
            let addr = first_word(&wait_for(&plog, "tunnel "));
            addr.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    let control = first_word(&wait_for(&plog, "listening for agents on "));
    thread::spawn(move || for _ in plog.iter() {});
    let mut extra: Vec<&str> = vec!["--max-channels", "300"];
    if let Some((ca, _, _)) = tls {
        extra.extend([
            "--tls",
            "--ca-file",
            ca.as_str(),
            "--tls-server-name",
            "localhost",
        ]);
    }
    let (agent, alog) = start_agent(&control, KEY, TOKEN, ports, &extra, false);
    wait_for(&alog, "tunnel ready");
    thread::spawn(move || for _ in alog.iter() {});
    Tunnel {
        _proxy: proxy,
        agent,
        public,
    }
}

/// The latency figures again with every process on CPU 0 (this program run again under
/// `taskset`): no thread waits for an idle CPU to wake, which on a virtual machine costs tens
/// of microseconds per hop and is not the tunnel's doing. p50 of direct, relay hop, agent.
fn pinned_latency() -> Option<[f64; 3]> {
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(std::env::current_exe().ok()?)
        .env("BENCH_ONLY", "latency")
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let p50 = |name: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "p50")?;
        words.get(at + 1)?.parse().ok()
    };
    Some([p50("direct")?, p50("relay hop")?, p50("agent")?])
}

/// `BENCH_ONLY=latency`: the three round-trip figures alone, printed, nothing written; for
/// profiling the interactive path quickly.
fn latency_only(echo: u16) {
    let show = |what: &str, (p50, p99): (f64, f64)| {
        println!("{what:<12} p50 {p50:.0} µs, p99 {p99:.0} µs")
    };
    show("direct", latency(echo));
    let relay_port = free_port();
    let relay = spawn_quiet(
        "socat",
        &[
            &format!("TCP-LISTEN:{relay_port},reuseaddr,fork,bind=127.0.0.1,nodelay"),
            &format!("TCP:127.0.0.1:{echo},nodelay"),
        ],
    );
    wait_listening(relay_port);
    show("relay hop", latency(relay_port));
    drop(relay);
    let plain = tunnel(&[echo], None);
    show("agent", latency(plain.public[0]));
}

/// `BENCH_ONLY=splice`: the upload through the agent splicing and copying, alternately, five
/// runs each on plain TCP; CPU per GB of the agent and throughput of every run, printed.
fn splice_vs_copy(iperf_port: u16) {
    for round in 0..5 {
        for copying in [false, true] {
            if copying {
                std::env::set_var("TUNNEL_AGENT_NO_SPLICE", "1");
            }
            let t = tunnel(&[iperf_port], None);
            std::env::remove_var("TUNNEL_AGENT_NO_SPLICE");
            let pid = t.agent.0.id();
            let c0 = cpu_seconds(pid);
            let t0 = Instant::now();
            let bps = iperf(t.public[0], true, secs());
            let gb = bps * t0.elapsed().as_secs_f64() / 8.0 / 1e9;
            let cpu = (cpu_seconds(pid) - c0) / gb.max(1e-9);
            let what = if copying { "copying" } else { "splicing" };
            println!(
                "run {round} {what:<8} {cpu:.3} s/GB {:.2} Gbit/s",
                bps / 1e9
            );
        }
    }
}

/// A CA and a localhost certificate for the TLS runs, as PEM files.
fn certificates(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let f = |n: &str, text: String| {
        let path = dir.join(n);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    (
        f("ca.pem", ca.pem()),
        f("cert.pem", cert.pem()),
        f("key.pem", key.serialize_pem()),
    )
}

fn main() {
    let dir = std::env::temp_dir().join(format!("tunnel-agent-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let iperf_port = free_port();
    let _iperf = spawn_quiet("iperf3", &["-s", "-p", &iperf_port.to_string()]);
    wait_listening(iperf_port);
    let echo = echo_server();
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        return latency_only(echo);
    }
    if std::env::var("BENCH_ONLY").as_deref() == Ok("splice") {
        return splice_vs_copy(iperf_port);
    }

    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| {
        println!("{k:<48} {v}");
        rows.push((k.to_owned(), v));
    };

    // References.
    let up_direct = measure(iperf_port, true, None);
    let down_direct = measure(iperf_port, false, None);
    let relay_port = free_port();
    let relay = spawn_quiet(
        "socat",
        &[&format!("TCP-LISTEN:{relay_port},reuseaddr,fork,bind=127.0.0.1,rcvbuf=4194304,sndbuf=4194304"),
          &format!("TCP:127.0.0.1:{iperf_port},rcvbuf=4194304,sndbuf=4194304")],
    );
    wait_listening(relay_port);
    let relay_pid = relay.0.id();
    // socat forks a child per connection: measure the whole family through the parent's
    // children, read from /proc after each run.
    let socat_cpu = |reverse: bool| -> Flow {
        let mut rates = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..repeats() {
            let before = family_cpu(relay_pid);
            let t0 = Instant::now();
            let bps = iperf(relay_port, reverse, secs());
            let elapsed = t0.elapsed().as_secs_f64();
            let after = family_cpu(relay_pid);
            rates.push(bps / 1e9);
            cpus.push((after - before) / (bps * elapsed / 8.0 / 1e9).max(1e-9));
        }
        Flow {
            gbit: median(rates),
            cpu_per_gb: Some(median(cpus)),
        }
    };
    let up_relay = socat_cpu(true);
    let down_relay = socat_cpu(false);
    let (lat_direct_50, lat_direct_99) = latency(echo);
    let echo_relay_port = free_port();
    let echo_relay = spawn_quiet(
        "socat",
        &[
            &format!("TCP-LISTEN:{echo_relay_port},reuseaddr,fork,bind=127.0.0.1,nodelay"),
            &format!("TCP:127.0.0.1:{echo},nodelay"),
        ],
    );
    wait_listening(echo_relay_port);
    let (lat_relay_50, lat_relay_99) = latency(echo_relay_port);
    drop(echo_relay);

    let plain = tunnel(&[iperf_port, echo], None);
    let apid = plain.agent.0.id();
    // Idle: connected, before any traffic.
    let idle = rss_kib(apid);
    let up = measure(plain.public[0], true, Some(apid));
    let down = measure(plain.public[0], false, Some(apid));
    let (lat50, lat99) = latency(plain.public[1]);

    // Memory with 100 idle channels open, against the same process after the runs.
    thread::sleep(Duration::from_millis(500)); // let the measurement's channels close
    let before_channels = rss_kib(apid);
    let t0 = Instant::now();
    let held: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut c = TcpStream::connect(("127.0.0.1", plain.public[1])).unwrap();
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).unwrap();
            c
        })
        .collect();
    let setup_ms = t0.elapsed().as_secs_f64() * 1000.0 / 100.0;
    let with_100 = rss_kib(apid);
    drop(held);
    drop(plain);

    // The upload again on the copying path, for comparison with splicing (the default).
    std::env::set_var("TUNNEL_AGENT_NO_SPLICE", "1");
    let copying = tunnel(&[iperf_port], None);
    std::env::remove_var("TUNNEL_AGENT_NO_SPLICE");
    let up_copying = measure(copying.public[0], true, Some(copying.agent.0.id()));
    drop(copying);

    let tls_files = certificates(&dir);
    let tls = tunnel(&[iperf_port], Some(&tls_files));
    let tpid = tls.agent.0.id();
    let up_tls = measure(tls.public[0], true, Some(tpid));
    let down_tls = measure(tls.public[0], false, Some(tpid));
    drop(tls);
    drop(relay);

    let cpu = |f: &Flow| f.cpu_per_gb.map_or("-".into(), |c| format!("{c:.2} s/GB"));
    let ratio = |a: &Flow, b: &Flow| match (a.cpu_per_gb, b.cpu_per_gb) {
        (Some(a), Some(b)) => format!("{:.2}×", a / b),
        _ => "-".into(),
    };
    let of_direct = |f: &Flow, d: &Flow| {
        format!(
            "{:.2} Gbit/s ({:.0} % of direct)",
            f.gbit,
            100.0 * f.gbit / d.gbit
        )
    };

    // Peers, when installed: their clients measured like the agent, one run carrying iperf3,
    // one carrying the echo service.
    let start_peer = |name: &str, service: u16| match name {
        "rathole" => peers::rathole(service, free_port(), free_port(), &dir),
        _ => peers::bore(service, free_port()),
    };
    let mut peer_rows: Vec<(String, String)> = Vec::new();
    for name in ["rathole", "bore"] {
        let Some(peer) = start_peer(name, iperf_port) else {
            peer_rows.push((
                format!("{name} client"),
                "not installed (make bench-peers)".into(),
            ));
            continue;
        };
        let pid = peer.client.0.id();
        let up_p = measure(peer.public, true, Some(pid));
        let down_p = measure(peer.public, false, Some(pid));
        drop(peer);
        let Some(peer) = start_peer(name, echo) else {
            continue;
        };
        let idle_p = rss_kib(peer.client.0.id());
        let (p50, p99) = latency(peer.public);
        drop(peer);
        peer_rows.extend([
            (
                format!("throughput up, {name}"),
                of_direct(&up_p, &up_direct),
            ),
            (
                format!("throughput down, {name}"),
                of_direct(&down_p, &down_direct),
            ),
            (
                format!("CPU per GB up, {name} client (ratio to relay)"),
                format!("{} ({})", cpu(&up_p), ratio(&up_p, &up_relay)),
            ),
            (
                format!("CPU per GB down, {name} client (ratio to relay)"),
                format!("{} ({})", cpu(&down_p), ratio(&down_p, &down_relay)),
            ),
            (
                format!("1-byte round trip, {name} p50 / p99"),
                format!("{p50:.0} / {p99:.0} µs"),
            ),
            (format!("{name} client RSS idle"), format!("{idle_p} KiB")),
        ]);
    }
    let pinned = pinned_latency();

    row(
        "throughput up, direct",
        format!("{:.2} Gbit/s", up_direct.gbit),
    );
    row(
        "throughput down, direct",
        format!("{:.2} Gbit/s", down_direct.gbit),
    );
    row(
        "throughput up, relay hop (socat)",
        format!("{:.2} Gbit/s", up_relay.gbit),
    );
    row(
        "throughput down, relay hop (socat)",
        format!("{:.2} Gbit/s", down_relay.gbit),
    );
    row(
        "throughput up, agent",
        format!(
            "{:.2} Gbit/s ({:.0} % of direct)",
            up.gbit,
            100.0 * up.gbit / up_direct.gbit
        ),
    );
    row(
        "throughput down, agent",
        format!(
            "{:.2} Gbit/s ({:.0} % of direct)",
            down.gbit,
            100.0 * down.gbit / down_direct.gbit
        ),
    );
    row(
        "throughput up, agent TLS",
        format!("{:.2} Gbit/s", up_tls.gbit),
    );
    row(
        "throughput down, agent TLS",
        format!("{:.2} Gbit/s", down_tls.gbit),
    );
    row("CPU per GB up, relay hop", cpu(&up_relay));
    row("CPU per GB down, relay hop", cpu(&down_relay));
    row(
        "CPU per GB up, agent (ratio to relay)",
        format!("{} ({})", cpu(&up), ratio(&up, &up_relay)),
    );
    row(
        "CPU per GB down, agent (ratio to relay)",
        format!("{} ({})", cpu(&down), ratio(&down, &down_relay)),
    );
    row(
        "CPU per GB up, agent copying, no splice (ratio to relay)",
        format!("{} ({})", cpu(&up_copying), ratio(&up_copying, &up_relay)),
    );
    row(
        "throughput up, agent copying, no splice",
        of_direct(&up_copying, &up_direct),
    );
    row("CPU per GB up, agent TLS", cpu(&up_tls));
    row("CPU per GB down, agent TLS", cpu(&down_tls));
    row(
        "1-byte round trip, direct p50 / p99",
        format!("{lat_direct_50:.0} / {lat_direct_99:.0} µs"),
    );
    row(
        "1-byte round trip, relay hop p50 / p99",
        format!("{lat_relay_50:.0} / {lat_relay_99:.0} µs"),
    );
    row(
        "1-byte round trip, agent p50 / p99",
        format!("{lat50:.0} / {lat99:.0} µs"),
    );
    row(
        "latency added by the tunnel, p50",
        format!(
            "{:.0} µs (one relay hop adds {:.0} µs)",
            lat50 - lat_direct_50,
            lat_relay_50 - lat_direct_50
        ),
    );
    match pinned {
        Some([direct, relay, agent]) => {
            row(
                "1-byte round trip p50, all on one CPU: direct / relay hop / agent",
                format!("{direct:.0} / {relay:.0} / {agent:.0} µs"),
            );
            row(
                "latency added by the tunnel, p50, all on one CPU",
                format!(
                    "{:.0} µs (one relay hop adds {:.0} µs)",
                    agent - direct,
                    relay - direct
                ),
            );
        }
        None => row(
            "latency added by the tunnel, p50, all on one CPU",
            "- (taskset failed)".into(),
        ),
    }
    row(
        "agent RSS idle (connected, before traffic)",
        format!("{idle} KiB"),
    );
    row(
        "agent RSS with 100 idle channels",
        format!(
            "{with_100} KiB ({:.0} KiB per channel)",
            (with_100 as f64 - before_channels as f64) / 100.0
        ),
    );
    row(
        "channel set-up (open + first round trip)",
        format!("{setup_ms:.2} ms"),
    );
    for (k, v) in peer_rows {
        row(&k, v);
    }
    let agent_bin = support::binary("tunnel-agent");
    let size = std::fs::metadata(&agent_bin).map(|m| m.len()).unwrap_or(0);
    row("agent binary measured", agent_bin.display().to_string());
    row("binary size (that build)", format!("{size} bytes"));
    write_results(&rows);
    let _ = std::fs::remove_dir_all(dir);
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

/// Writes bench/RESULTS.md: this run beside the previous one (read back from the file).
fn write_results(rows: &[(String, String)]) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/RESULTS.md");
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
        "# tunnel-agent benchmark\n\nOne `make bench` run on: {}.\nEvery figure comes from the same invocation; \
         `previous` is the run committed before this one.\n\n| figure | this run | previous |\n|---|---|---|\n",
        machine()
    );
    for (k, v) in rows {
        out.push_str(&format!(
            "| {k} | {v} | {} |\n",
            previous.get(k).map_or("-", String::as_str)
        ));
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &out).unwrap();
    println!("\n{out}");
}
