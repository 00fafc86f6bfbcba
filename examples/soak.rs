//! `make soak DURATION=30m`: mixed traffic through the real agent and proxy on loopback
//! (ssh-like small writes, bulk copies, channel churn), with the proxy killed and restarted
//! every few minutes. Every byte is checked; at the end it prints bytes verified, corruptions
//! (must be 0), reconnects, and the agent's fds / threads / RSS at start and end.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use support::{bin, device_agent, free_port, random_bytes, Launch, Proc};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "50a4c0de";

#[derive(Default)]
struct Stats {
    verified: AtomicU64,
    corruptions: AtomicU64,
    interrupted: AtomicU64,
    channels: AtomicU64,
}

fn parse_duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .unwrap_or_else(|_| panic!("DURATION: bad number in {s:?} (e.g. 30m, 90s, 1h)"));
    Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => panic!("DURATION: unit of {s:?} must be s, m or h"),
    })
}

/// Sends `data` and reads it back through the tunnel; `Err` if the connection broke (proxy
/// restarts do that), `Ok(false)` if bytes came back different.
fn echo(c: &TcpStream, data: &[u8]) -> std::io::Result<bool> {
    let mut w = c.try_clone()?;
    let out = data.to_vec();
    let writer = thread::spawn(move || w.write_all(&out));
    let mut back = vec![0u8; data.len()];
    let read = (&*c).read_exact(&mut back);
    let written = writer.join().unwrap_or(Ok(()));
    read?;
    written?;
    Ok(back == data)
}

fn connect(public: SocketAddr) -> std::io::Result<TcpStream> {
    let c = TcpStream::connect(public)?;
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    c.set_nodelay(true)?;
    Ok(c)
}

fn record(stats: &Stats, result: std::io::Result<bool>, n: usize) -> bool {
    match result {
        Ok(true) => {
            stats.verified.fetch_add(n as u64, Ordering::Relaxed);
            true
        }
        Ok(false) => {
            stats.corruptions.fetch_add(1, Ordering::Relaxed);
            eprintln!("CORRUPTION: {n} bytes came back different");
            false
        }
        Err(_) => {
            stats.interrupted.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(200)); // the proxy is restarting: try again soon
            false
        }
    }
}

/// One worker: `kind` 0 = interactive small writes, 1 = bulk copies, 2 = churn.
fn worker(kind: u32, id: u64, public: SocketAddr, stats: Arc<Stats>, stop: Arc<AtomicBool>) {
    let mut seed = id * 1_000_003;
    while !stop.load(Ordering::Relaxed) {
        seed += 1;
        let Ok(c) = connect(public) else {
            stats.interrupted.fetch_add(1, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(200));
            continue;
        };
        stats.channels.fetch_add(1, Ordering::Relaxed);
        match kind {
            0 => {
                for i in 0..500u64 {
                    let msg = random_bytes(1 + (seed + i) as usize % 64, seed + i);
                    if !record(&stats, echo(&c, &msg), msg.len()) || stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }
            1 => {
                let msg = random_bytes((1 << 20) + (seed as usize % (7 << 20)), seed);
                record(&stats, echo(&c, &msg), msg.len());
            }
            _ => {
                let msg = random_bytes(16, seed);
                record(&stats, echo(&c, &msg), msg.len());
            }
        }
    }
}

fn usage_line(pid: u32) -> String {
    let (fds, threads, rss) = support::usage(pid);
    format!("fds {fds}, threads {threads}, RSS {rss} kB")
}

fn main() {
    let duration = parse_duration(&std::env::var("DURATION").unwrap_or_else(|_| "30m".into()));
    let restart_every = (duration / 6).clamp(Duration::from_secs(20), Duration::from_secs(300));
    println!("soak: {duration:?}, proxy restarted every {restart_every:?}");

    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let service_port = service.local_addr().unwrap().port();
    thread::spawn(move || {
        for c in service.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut r = c.try_clone().unwrap();
                let mut w = c;
                let _ = std::io::copy(&mut r, &mut w);
            });
        }
    });
    let control = format!("127.0.0.1:{}", free_port());
    let public: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let device = format!("{KEY}={TOKEN}");
    let tunnel = format!("{public}={KEY}:{service_port}");
    let proxy_args = [
        "--listen", &control, "--device", &device, "--tunnel", &tunnel,
    ];
    let start_proxy = || {
        let p = Launch::new(bin("meeting-proxy")).args(&proxy_args).start();
        p.next_after("listening for agents on");
        p
    };
    let mut proxy: Proc = start_proxy();
    // Every line of the agent's log is looked at, however long the soak: connections made, and
    // the token, which must never be there.
    let connects = Arc::new(AtomicU64::new(0));
    let leaked = Arc::new(AtomicBool::new(false));
    let (c, l) = (connects.clone(), leaked.clone());
    let agent = device_agent(
        &control,
        KEY,
        TOKEN,
        &[service_port],
        &["--max-channels", "200"],
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .tap(Box::new(move |line: &str| {
        if line.contains("tunnel ready") {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if line.contains(TOKEN) {
            l.store(true, Ordering::Relaxed);
        }
    }))
    .start();
    agent.next_after("tunnel ready");
    let pid = agent.pid();
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    // Warm up, then take the starting figures.
    thread::sleep(Duration::from_secs(1)); // let the first channels come and go
    let at_start = usage_line(pid);
    let workers: Vec<_> = [(0, 4), (1, 2), (2, 2)]
        .iter()
        .flat_map(|&(kind, n)| (0..n).map(move |i| (kind, i)))
        .map(|(kind, i)| {
            let (s, st) = (stats.clone(), stop.clone());
            thread::spawn(move || worker(kind, u64::from(kind) * 100 + i, public, s, st))
        })
        .collect();
    let t0 = Instant::now();
    let mut next_restart = restart_every;
    let mut restarts = 0;
    let mut next_report = Duration::from_secs(60);
    while t0.elapsed() < duration {
        thread::sleep(Duration::from_secs(1)); // the soak's clock
        let t = t0.elapsed();
        if t >= next_restart {
            drop(proxy);
            proxy = start_proxy();
            restarts += 1;
            next_restart += restart_every;
        }
        if t >= next_report {
            println!(
                "[{:>5.0} s] verified {} MB, corruptions {}, interrupted {}, channels {}, restarts {restarts}; agent {}",
                t.as_secs_f64(),
                stats.verified.load(Ordering::Relaxed) >> 20,
                stats.corruptions.load(Ordering::Relaxed),
                stats.interrupted.load(Ordering::Relaxed),
                stats.channels.load(Ordering::Relaxed),
                usage_line(pid)
            );
            next_report += Duration::from_secs(60);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    thread::sleep(Duration::from_secs(2)); // let the last channel threads end before measuring
    let at_end = usage_line(pid);
    let corruptions = stats.corruptions.load(Ordering::Relaxed);
    println!("soak finished after {:.0} s", t0.elapsed().as_secs_f64());
    println!(
        "  bytes verified:  {}",
        stats.verified.load(Ordering::Relaxed)
    );
    println!("  corruptions:     {corruptions}");
    println!(
        "  channels:        {}",
        stats.channels.load(Ordering::Relaxed)
    );
    println!(
        "  interrupted:     {} (connections cut by proxy restarts)",
        stats.interrupted.load(Ordering::Relaxed)
    );
    println!("  proxy restarts:  {restarts}");
    println!(
        "  reconnects:      {}",
        connects.load(Ordering::Relaxed) - 1
    );
    println!("  agent at start:  {at_start}");
    println!("  agent at end:    {at_end}");
    println!(
        "  token in logs:   {}",
        if leaked.load(Ordering::Relaxed) {
            "YES"
        } else {
            "no"
        }
    );
    drop(agent);
    drop(proxy);
    std::process::exit(if corruptions == 0 && !leaked.load(Ordering::Relaxed) {
        0
    } else {
        1
    });
}
