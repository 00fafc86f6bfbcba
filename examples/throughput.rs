//! A quick throughput run through the real agent and proxy on loopback: bytes per second each
//! way and the agent's CPU seconds per GB (from /proc). Used to choose the release opt-level;
//! `SECONDS` (default 5) per direction.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use support::{bin, cpu_seconds, device_agent, first_word, proxy_args, Launch};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "7410ad";

/// Pushes bytes through `public` for `secs` in one direction; returns (bytes, seconds).
fn run(public: &str, service: &TcpListener, upload: bool, secs: f64) -> (u64, f64) {
    let client = TcpStream::connect(public).unwrap();
    let (local, _) = service.accept().unwrap();
    // Upload: device → operator, the agent reads the local socket. Download: the reverse.
    let (mut src, mut dst) = if upload {
        (local, client)
    } else {
        (client, local)
    };
    let buf = vec![0x5au8; 256 * 1024];
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let reader = thread::spawn(move || {
        let mut b = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        while let Ok(k) = dst.read(&mut b) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    let t0 = Instant::now();
    while Instant::now() < until {
        if src.write_all(&buf).is_err() {
            break;
        }
    }
    let _ = src.shutdown(std::net::Shutdown::Both);
    let n = reader.join().unwrap();
    (n, t0.elapsed().as_secs_f64())
}

fn main() {
    let secs: f64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = service.local_addr().unwrap().port();
    let proxy = Launch::new(bin("meeting-proxy"))
        .args(&proxy_args(KEY, TOKEN, &[port]))
        .start();
    let public = first_word(&proxy.next_after("tunnel "));
    let control = first_word(&proxy.next_after("listening for agents on "));
    let agent = device_agent(&control, KEY, TOKEN, &[port], &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .start();
    agent.next_after("tunnel ready");
    let pid = agent.pid();
    for (name, upload) in [("upload", true), ("download", false)] {
        let c0 = cpu_seconds(pid);
        let (bytes, t) = run(&public, &service, upload, secs);
        let cpu = cpu_seconds(pid) - c0;
        let gb = bytes as f64 / 1e9;
        println!(
            "{name:>8}: {:7.2} Gbit/s, agent CPU {:5.2} s/GB ({bytes} bytes in {t:.1} s)",
            gb * 8.0 / t,
            cpu / gb
        );
    }
    let size = std::fs::metadata(bin("tunnel-agent"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("    size: {size} bytes (tunnel-agent, this profile)");
}
