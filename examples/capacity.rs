//! `make capacity`: how many devices and public connections one meeting-proxy holds, and what
//! each costs. One process plays `DEVICES` agents (default 1 000) over loopback against the
//! real meeting-proxy backed by the suite's fake Meeting API (HTTPS); Meeting grants each
//! device a public port, and `PUBLIC` public connections (default 5 000) are spread over
//! those ports, each proven open end to end by an echo. The proxy's resident memory, threads
//! and descriptors are read from /proc before, with the devices, and with the connections.
//! Prints a table, and writes it to bench/CAPACITY.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use support::{api_proxy, first_word, FakeApi, Proc, SOON};
use tunnel_agent::protocol::frame::{write_frame, Frame, FrameReader, DEFAULT_MAX_FRAME};
use tunnel_agent::protocol::handshake::handshake_line;

/// The fake agents' threads do nothing that needs a big stack.
const STACK: usize = 64 * 1024;

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident KiB, threads and open descriptors of `pid`.
fn footprint(pid: u32) -> (u64, u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0);
    (field("VmRSS:"), field("Threads:"), fds)
}

/// One fake agent: handshake, then echo every `D` frame back on its stream, until the proxy
/// closes. Says on `ready` when it is accepted (or why not).
fn fake_agent(
    (from, control): (IpAddr, SocketAddr),
    key: String,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let run = || -> Result<TcpStream, String> {
        let mut s = support::connect_from(from, control, None)
            .map_err(|e| format!("connect from {from}: {e}"))?;
        s.set_nodelay(true).ok();
        s.write_all(handshake_line("capacity", &key).as_bytes())
            .map_err(|e| format!("handshake: {e}"))?;
        Ok(s)
    };
    let sock = match run() {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut reader = BufReader::new(match sock.try_clone() {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("clone: {e}")));
            return;
        }
    });
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.contains("authenticated") {
        let _ = ready.send(Err(format!("{key}: not accepted: {line:?}")));
        return;
    }
    let _ = ready.send(Ok(()));
    let mut out = sock;
    let mut frames = FrameReader::after(reader, DEFAULT_MAX_FRAME);
    while let Ok(Some(f)) = frames.next_frame() {
        if let Frame::Data { stream, payload } = f {
            if write_frame(&mut out, b'D', stream, payload).is_err() {
                break;
            }
        }
    }
}

/// `n` loopback ports free right now, below the ephemeral range (so that no outgoing
/// connection of this run takes one before the proxy listens on it).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let ports: Vec<u16> = (10_000..low)
        .filter(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .take(n)
        .collect();
    if ports.len() < n {
        return Err(format!(
            "only {} free ports between 10000 and {low}",
            ports.len()
        ));
    }
    Ok(ports)
}

/// Counts log lines containing `pat` until there are `n` of them.
fn count_lines(log: &Proc, pat: &str, n: usize) -> Result<(), String> {
    for i in 0..n {
        log.try_next_after(pat)
            .map_err(|e| format!("{e} (after {i} of {n})"))?;
    }
    Ok(())
}

fn main() {
    let devices = env_count("DEVICES", 1000);
    let public = env_count("PUBLIC", 5000);
    println!("capacity: {devices} fake agents, {public} public connections, one meeting-proxy");
    // This process holds a socket per device and per public connection, and more for the
    // fake API.
    if let Err(e) = tunnel_agent::memory::raise_open_files() {
        eprintln!("capacity: cannot raise the open-file limit: {e}");
    }
    if let Err(e) = run(devices, public) {
        eprintln!("capacity: failed: {e}");
        std::process::exit(1);
    }
}

fn run(devices: usize, public: usize) -> Result<(), String> {
    let keys: Vec<String> = (0..devices).map(|i| format!("CAFE{i:028X}")).collect();
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let api = FakeApi::start(&key_refs);
    let ports = free_ports(devices)?;
    let tunnels: Vec<_> = keys
        .iter()
        .zip(&ports)
        .map(|(k, p)| {
            serde_json::json!({"device_key": k, "service": "ssh", "port": p,
                               "local_port": 22, "expires_at": null})
        })
        .collect();
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &serde_json::json!({ "tunnels": tunnels }).to_string(),
    );
    let proxy = api_proxy(&api).try_start()?;
    let pid = proxy.pid();
    let control: SocketAddr = first_word(&proxy.try_next_after("listening for agents on ")?)
        .parse()
        .map_err(|e| format!("the proxy's address: {e}"))?;
    count_lines(&proxy, "tunnel opened", devices)?;
    let idle = footprint(pid);

    let t0 = Instant::now();
    let (tx, rx) = mpsc::channel();
    for (i, key) in keys.iter().enumerate() {
        // Each device from an address of its own, as devices are.
        let from = IpAddr::from([127, 1, (i / 250) as u8, (i % 250 + 1) as u8]);
        let (k, tx) = (key.clone(), tx.clone());
        thread::Builder::new()
            .stack_size(STACK)
            .spawn(move || fake_agent((from, control), k, tx))
            .map_err(|e| format!("fake agent thread: {e}"))?;
    }
    for _ in 0..devices {
        rx.recv_timeout(SOON)
            .map_err(|_| "a fake agent did not answer".to_owned())??;
    }
    count_lines(&proxy, "connected from", devices)?;
    let connect_time = t0.elapsed();
    let api_calls = api
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/api/devices/"))
        .count();
    let with_devices = footprint(pid);

    let t1 = Instant::now();
    let mut held = Vec::with_capacity(public);
    for i in 0..public {
        let port = ports[i % devices];
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .map_err(|e| format!("public connection {i} to port {port}: {e}"))?;
        s.set_read_timeout(Some(SOON)).ok();
        let msg = (i as u32).to_be_bytes();
        s.write_all(&msg)
            .map_err(|e| format!("public connection {i}: {e}"))?;
        let mut back = [0u8; 4];
        s.read_exact(&mut back)
            .map_err(|e| format!("public connection {i}: no echo: {e}"))?;
        if back != msg {
            return Err(format!("public connection {i}: echo differs"));
        }
        held.push(s);
    }
    let open_time = t1.elapsed();
    // Settle: the proxy's threads have all started and logged.
    count_lines(&proxy, "stream ", public)?;
    let with_public = footprint(pid);

    let per_device = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / devices as f64;
    let per_public = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / public as f64;
    let mut t = String::new();
    let _ = writeln!(t, "# meeting-proxy capacity\n");
    let _ = writeln!(
        t,
        "One `make capacity` run on this machine ({} cores): {devices} devices played by one \
         process over loopback, each granted one public port by the fake Meeting API (HTTPS), \
         and {public} public connections spread over those ports, each proven open by an echo \
         through the proxy and the device. Figures are the proxy's, from /proc.\n",
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        t,
        "| stage | resident memory | threads | open descriptors |"
    );
    let _ = writeln!(t, "|---|---|---|---|");
    for (stage, (rss, threads, fds)) in [
        (format!("listening, {devices} API tunnels open"), idle),
        (format!("+ {devices} devices connected"), with_devices),
        (format!("+ {public} public connections"), with_public),
    ] {
        let _ = writeln!(t, "| {stage} | {rss} KiB | {threads} | {fds} |");
    }
    let _ = writeln!(t, "\n| per | memory | threads | descriptors |");
    let _ = writeln!(t, "|---|---|---|---|");
    let _ = writeln!(
        t,
        "| connected device | {:.1} KiB | {:.1} | {:.1} |",
        per_device(idle.0, with_devices.0),
        per_device(idle.1, with_devices.1),
        per_device(idle.2 as u64, with_devices.2 as u64)
    );
    let _ = writeln!(
        t,
        "| open public connection | {:.1} KiB | {:.1} | {:.1} |",
        per_public(with_devices.0, with_public.0),
        per_public(with_devices.1, with_public.1),
        per_public(with_devices.2 as u64, with_public.2 as u64)
    );
    let _ = writeln!(
        t,
        "\n{devices} handshakes decided by the API in {:.2} s ({api_calls} device requests to \
         the API); {public} public connections opened and echoed in {:.2} s.",
        connect_time.as_secs_f64(),
        open_time.as_secs_f64()
    );
    print!("{t}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/CAPACITY.md");
    std::fs::write(&path, &t).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    println!("written to {}", path.display());
    drop(held);
    drop(proxy);
    Ok(())
}
