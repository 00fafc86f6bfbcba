//! `make bench-windows`: how fast one stream goes through the agent and meeting-proxy for
//! each per-stream window (and without windows), over a control connection with an added
//! round trip, both ways; the measurement the default window and the grant rule were chosen
//! from (docs/protocol.md, "Windows"). Results go to `bench/WINDOWS.md`.
//!
//! The round trip is added by a relay on loopback in front of meeting-proxy's agent port that
//! holds every piece for half the round trip each way, with at most 4 MiB on its way each
//! way (a link's buffer): no bandwidth is taken away, so what limits a stream is the window,
//! the round trip and the two processes' CPU. Each cell moves bytes for `WINDOWS_SECONDS`
//! (3) and counts what arrived, checking nothing but the count (the integrity suite checks
//! bytes).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use support::{device_args, proxy_args, Launch, Proc, KEY, SOON, TOKEN};

/// A relay that delays each direction by `one_way`; returns its port.
fn delaying_relay(to: SocketAddr, one_way: Duration) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(a) = c else { continue };
            let Ok(b) = TcpStream::connect(to) else {
                continue;
            };
            let _ = a.set_nodelay(true);
            let _ = b.set_nodelay(true);
            for (from, into) in [(a.try_clone().unwrap(), b.try_clone().unwrap()), (b, a)] {
                pipe(from, into, one_way);
            }
        }
    });
    port
}

/// Copies `from` to `into`, each piece `delay` later, at most 64 pieces of 64 KiB held.
fn pipe(mut from: TcpStream, mut into: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(64);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    thread::spawn(move || {
        for (due, piece) in rx {
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
            if into.write_all(&piece).is_err() {
                break;
            }
        }
        let _ = into.shutdown(Shutdown::Write);
    });
}

/// A local service that discards what it gets and counts it, or sends without end.
fn service(send: bool, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let (count, stop) = (count.clone(), stop.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    let r = if send {
                        c.write(&buf)
                    } else {
                        c.read(&mut buf)
                    };
                    match r {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if !send {
                                count.fetch_add(n as u64, Ordering::Relaxed);
                            }
                        }
                    }
                }
                buf.clear();
            });
        }
    });
    port
}

/// Mbit/s of one stream for `secs`: up (public client to local service) or down.
fn one_stream(window: u32, one_way: Duration, up: bool, secs: f64) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let port = service(!up, count.clone(), stop.clone());
    let mut args = proxy_args(KEY, TOKEN, &[port]);
    args.extend(["--window".to_owned(), window.to_string()]);
    let dir = std::env::var("NOW").unwrap_or_else(|_| "target/release".to_owned());
    let proxy: Proc = Launch::new(format!("{dir}/meeting-proxy"))
        .args(&args)
        .start();
    let line = proxy.wait_for("listening for agents on ", SOON);
    let control: SocketAddr = line
        .split("listening for agents on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let public: SocketAddr = {
        let line = proxy.wait_for("tunnel ", SOON);
        let rest = &line[line.find("tunnel ").unwrap() + 7..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    let relay = delaying_relay(control, one_way);
    let mut dev = device_args(SocketAddr::from(([127, 0, 0, 1], relay)), KEY);
    dev.extend(["--allow-port".to_owned(), port.to_string()]);
    let agent = Launch::new(format!("{dir}/tunnel-agent"))
        .args(&dev)
        .envs(&[("MEETING_TOKEN", TOKEN)])
        .start();
    agent.wait_for("tunnel ready", SOON);
    proxy.wait_for(&format!("device {KEY} connected from"), SOON);
    if window > 0 {
        proxy.wait_for("keeps to per-stream windows", SOON);
    }
    let mut c = TcpStream::connect(public).unwrap();
    let buf = vec![7u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    // A second to reach its pace, then the measured span.
    let warm = Instant::now() + Duration::from_secs(1);
    let mut start = None;
    let until = warm + Duration::from_secs_f64(secs);
    let mut down = 0u64;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        if now >= warm && start.is_none() {
            start = Some((now, count.load(Ordering::Relaxed), down));
        }
        if up {
            if c.write_all(&buf).is_err() {
                break;
            }
        } else {
            match c.read(&mut got) {
                Ok(0) | Err(_) => break,
                Ok(n) => down += n as u64,
            }
        }
    }
    let (t0, up0, down0) = start.unwrap_or((Instant::now(), 0, 0));
    let bytes = if up {
        count.load(Ordering::Relaxed) - up0
    } else {
        down - down0
    };
    let mbit = bytes as f64 * 8.0 / t0.elapsed().as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    drop(c);
    drop(agent);
    drop(proxy);
    mbit
}

fn main() {
    let secs: f64 = std::env::var("WINDOWS_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0);
    let windows: [u32; 6] = [0, 64 << 10, 128 << 10, 256 << 10, 512 << 10, 1 << 20];
    let rtts_ms: Vec<u64> = std::env::var("WINDOWS_RTTS")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 2, 10, 40]);
    let mut out = format!(
        "# One stream against the per-stream window\n\n`make bench-windows` \
         (`examples/windows.rs`): one stream through tunnel-agent and meeting-proxy (release \
         builds, plain TCP), its control connection through a relay on loopback that adds the \
         round trip shown (half each way, at most 4 MiB on its way each way, no bandwidth \
         taken away), for {secs} s after 1 s to reach its pace; Mbit/s that arrived. \
         \"off\": `--window 0`, the protocol without windows (TCP's flow control on the one \
         connection alone). Grants every half of the current window, which grows to 4 windows for a reader that keeps up. {} cores.\n\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for up in [true, false] {
        let _ = writeln!(
            out,
            "## {}\n\n| round trip | {} |\n|---|{}",
            if up {
                "Up: public client to the device's local service"
            } else {
                "Down: the device's local service to a public client"
            },
            windows
                .iter()
                .map(|w| match w {
                    0 => "off".to_owned(),
                    w => format!("{} KiB", w >> 10),
                })
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(windows.len())
        );
        for &rtt in &rtts_ms {
            let mut row = format!("| {rtt} ms |");
            for &w in &windows {
                let mbit = one_stream(w, Duration::from_millis(rtt) / 2, up, secs);
                eprintln!(
                    "{} rtt {rtt} ms window {w}: {mbit:.0} Mbit/s",
                    if up { "up" } else { "down" }
                );
                let _ = write!(row, " {mbit:.0} |");
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    print!("{out}");
    std::fs::write("bench/WINDOWS.md", out).unwrap();
}
