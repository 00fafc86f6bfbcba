//! `make bench-idle`: what an idle tunnel costs. An agent connected to meeting-proxy on
//! loopback, carrying nothing, for `IDLE_MINUTES` (10); at the end, the agent's CPU time and
//! wake-ups (context switches of all its threads) over that time, and the proxy's.
//!
//! `BEFORE=DIR` runs a second pair at the same time from the binaries in DIR (an earlier
//! build), so both see the same machine. Results go to `bench/IDLE.md`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use support::{device_args, proxy_args, Launch, Proc, KEY, SOON, TOKEN};

/// CPU nanoseconds (from each thread's schedstat) and context switches of a process's live
/// threads.
fn sample(pid: u32) -> (u64, u64) {
    let mut cpu = 0;
    let mut switches = 0;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.flatten() {
        let path = t.path();
        if let Ok(s) = std::fs::read_to_string(path.join("schedstat")) {
            cpu += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(path.join("status")) {
            for l in s.lines() {
                if l.starts_with("voluntary_ctxt_switches:")
                    || l.starts_with("nonvoluntary_ctxt_switches:")
                {
                    switches += l
                        .split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                }
            }
        }
    }
    (cpu, switches)
}

/// One proxy and one agent from the binaries in `dir`.
struct Pair {
    name: String,
    proxy: Proc,
    agent: Proc,
}

fn start(name: &str, dir: &str) -> Pair {
    let proxy = Launch::new(format!("{dir}/meeting-proxy"))
        .args(&proxy_args(KEY, TOKEN, &[22]))
        .start();
    let line = proxy.wait_for("listening for agents on ", SOON);
    let addr = line
        .split("listening for agents on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap();
    let agent = Launch::new(format!("{dir}/tunnel-agent"))
        .args(&device_args(addr.parse().unwrap(), KEY))
        .envs(&[("MEETING_TOKEN", TOKEN)])
        .start();
    agent.wait_for("tunnel ready", SOON);
    Pair {
        name: name.to_owned(),
        proxy,
        agent,
    }
}

fn main() {
    let minutes: f64 = std::env::var("IDLE_MINUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10.0);
    let now_dir = std::env::var("NOW").unwrap_or_else(|_| "target/release".to_owned());
    let mut pairs = vec![start("this build", &now_dir)];
    if let Ok(before) = std::env::var("BEFORE") {
        pairs.push(start(&format!("before ({before})"), &before));
    }
    let first: Vec<_> = pairs
        .iter()
        .map(|p| (sample(p.agent.pid()), sample(p.proxy.pid())))
        .collect();
    let t0 = Instant::now();
    println!("idle for {minutes} min ...");
    std::thread::sleep(Duration::from_secs_f64(minutes * 60.0));
    let took = t0.elapsed().as_secs_f64();
    let mut table = format!(
        "# An idle tunnel's cost\n\n`make bench-idle`: an agent connected to meeting-proxy on \
         loopback, carrying nothing, for {:.1} min; CPU time (the threads' schedstat) and \
         wake-ups (context switches) over that time. Every pair ran at the same time on this \
         machine ({} cores).\n\n| build | agent CPU, ms | agent wake-ups | agent wake-ups/min | \
         agent connections | proxy CPU, ms | proxy wake-ups |\n|---|---|---|---|---|---|---|\n",
        took / 60.0,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (p, ((a0, aw0), (p0, pw0))) in pairs.iter().zip(first) {
        let (a1, aw1) = sample(p.agent.pid());
        let (p1, pw1) = sample(p.proxy.pid());
        let _ = writeln!(
            table,
            "| {} | {:.1} | {} | {:.1} | {} | {:.1} | {} |",
            p.name,
            (a1 - a0) as f64 / 1e6,
            aw1 - aw0,
            (aw1 - aw0) as f64 / (took / 60.0),
            p.agent.count("connected to proxy"),
            (p1 - p0) as f64 / 1e6,
            pw1 - pw0
        );
    }
    print!("{table}");
    std::fs::write("bench/IDLE.md", &table).expect("cannot write bench/IDLE.md");
}
