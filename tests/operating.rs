//! meeting-proxy for the people who run it: its metrics scraped by Debian's Prometheus while a
//! device connects, carries data and is replaced, read back through Prometheus's HTTP API;
//! the text checked by `promtool check metrics`; `GET /devices`; and the metrics listener
//! under a flood.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// `GET path` on `addr`, HTTP/1.0: the status line's code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

/// The proxy's `--metrics-listen` address, from its log.
fn metrics_addr(proxy: &Proc) -> SocketAddr {
    let line = proxy.wait_for("metrics on http://", SOON);
    let rest = &line[line.find("metrics on http://").unwrap() + 18..];
    rest.split('/').next().unwrap().parse().unwrap()
}

/// A value of `name{labels}` in the proxy's own text (no Prometheus in between).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Prometheus {
    proc: Proc,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Debian's Prometheus scraping `target` every second, storing in a folder of its own.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "tunnel-agent-prometheus-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: meeting-proxy\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let proc = Proc::spawn(
            "prometheus",
            &[
                &format!("--config.file={}", dir.join("prometheus.yml").display()),
                &format!("--storage.tsdb.path={}", dir.join("data").display()),
                &format!("--web.listen-address={addr}"),
            ],
            &[],
        );
        proc.wait_for("Server is ready to receive web requests", SOON * 2);
        Prometheus { proc, addr, dir }
    }

    /// The value of `query` (one series) once `want` holds for it, polling the HTTP API.
    fn wait_value(&self, query: &str, want: impl Fn(f64) -> bool) -> f64 {
        let until = Instant::now() + SOON * 2;
        let path = format!("/api/v1/query?query={}", encode(query));
        let mut last = String::new();
        while Instant::now() < until {
            let (_, body) = get(self.addr, &path);
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if let Some(x) = v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
            {
                if want(x) {
                    return x;
                }
            }
            last = body;
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{query}: never as wanted; last answer {last}\n{}",
            self.proc.output()
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a PromQL query for a URL.
fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_reads_a_device_connecting_carrying_data_and_being_replaced() {
    if !may_run(
        "prometheus_reads_a_device_connecting_carrying_data_and_being_replaced",
        &[
            tool("prometheus", "prometheus"),
            tool("promtool", "prometheus"),
        ],
    ) {
        return;
    }
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&proxy.proc);
    let prometheus = Prometheus::start(metrics);
    let first = proxy.agent(&[]);
    proxy.wait_agent(1);
    let data = random_bytes(200_000, 39);
    assert!(echo_through(proxy.tunnels[0], &data) == data);
    // The device's old connection lingers (its agent frozen, as a device that lost power
    // while its connection stays open) and a new one replaces it.
    first.signal("STOP");
    let second = proxy.agent(&[]);
    proxy.wait_agent(2);
    proxy
        .proc
        .wait_for("disconnected: replaced by a new connection", SOON);
    // A public connection to a device that is not there: refused, and counted.
    let wrong = Proxy::for_ports(&[echo], &["--metrics-listen", "127.0.0.1:0"]);
    let mut c = TcpStream::connect(wrong.tunnels[0]).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    assert!(matches!(c.read(&mut [0u8; 1]), Ok(0) | Err(_)));

    // Through Prometheus: what it scraped.
    prometheus.wait_value("meeting_proxy_devices_connected", |v| v == 1.0);
    prometheus.wait_value(
        "meeting_proxy_handshakes_total{outcome=\"accepted\"}",
        |v| v == 2.0,
    );
    prometheus.wait_value(
        "meeting_proxy_sessions_ended_total{reason=\"replaced\"}",
        |v| v == 1.0,
    );
    prometheus.wait_value("meeting_proxy_session_duration_seconds_count", |v| v == 1.0);
    prometheus.wait_value("meeting_proxy_bytes_to_devices_total", |v| v >= 200_000.0);
    prometheus.wait_value("meeting_proxy_bytes_from_devices_total", |v| v >= 200_000.0);
    prometheus.wait_value("meeting_proxy_tunnels_open", |v| v == 1.0);
    prometheus.wait_value("process_resident_memory_bytes", |v| v > 1_000_000.0);
    prometheus.wait_value("process_open_fds", |v| v >= 5.0);
    prometheus.wait_value("up", |v| v == 1.0);

    // The other proxy's own text: the refusal, and no device.
    let (code, text) = get(metrics_addr(&wrong.proc), "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &text,
            "meeting_proxy_public_connections_refused_total{reason=\"device_offline\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "meeting_proxy_devices_connected"), Some(0.0));

    // promtool finds nothing to say about the text.
    let (_, text) = get(metrics, "/metrics");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // GET /devices: the device online, its peer, its streams and bytes, its tunnel; no token.
    let (code, body) = get(metrics, "/devices");
    assert_eq!(code, 200);
    assert!(!body.contains(TOKEN), "{body}");
    let devices: Value = serde_json::from_str(&body).unwrap();
    let list = devices.as_array().unwrap();
    assert_eq!(list.len(), 1, "{body}");
    let d = &list[0];
    assert_eq!(d["device_key"], KEY);
    assert!(d["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{d}");
    assert_eq!(d["open_streams"], 0);
    assert_eq!(d["tunnels"][0]["listen"], proxy.tunnels[0].to_string());
    assert_eq!(d["tunnels"][0]["port"], echo);
    // The second session has carried nothing yet.
    assert_eq!(d["bytes_to_device"], 0);
    assert!(d["since"].as_str().unwrap().ends_with('Z') || d["since"].is_string());
    // Anything else: 404; another method: 405.
    assert_eq!(get(metrics, "/").0, 404);
    drop(second);
}

/// The hardening suite's floods on the agents' port (handshakes held open up to the bounds,
/// hundreds more refused as busy) while the metrics are scraped again and again: every scrape
/// answers and counts the floods, the proxy's threads stay at the bounds, and hundreds of
/// scrapes leave its memory where it was.
#[test]
fn scraping_during_floods_costs_the_proxy_nothing_unbounded() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(
        &[echo],
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--max-pending-per-address",
            "5",
            "--max-pending",
            "12",
            "--handshake-timeout",
            "30",
        ],
    );
    let metrics = metrics_addr(&proxy.proc);
    let _agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    let pid = proxy.proc.pid();
    assert_eq!(get(metrics, "/metrics").0, 200);
    let base = status_field(pid, "Threads:");

    // Twelve handshakes held open from three addresses (the bounds), then 300 refused at
    // once, while the scrapes go on.
    let control = proxy.control;
    let from = |a: &str| connect_from(a.parse().unwrap(), control, None).unwrap();
    let held: Vec<TcpStream> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        .iter()
        .flat_map(|a| (0..4).map(move |_| *a))
        .map(from)
        .collect();
    let flood = std::thread::spawn(move || {
        for i in 0..300 {
            let a = format!("127.0.1.{}", 1 + i % 200);
            if let Ok(mut s) = connect_from(a.parse().unwrap(), control, None) {
                let _ = s.set_read_timeout(Some(SOON));
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
    });
    let mut scrapes = 0;
    while !flood.is_finished() {
        let (code, text) = get(metrics, "/metrics");
        assert_eq!(code, 200);
        assert!(text.contains("meeting_proxy_devices_connected 1"), "{text}");
        scrapes += 1;
    }
    flood.join().unwrap();
    let (_, text) = get(metrics, "/metrics");
    let busy = sample(&text, "meeting_proxy_handshakes_total{outcome=\"busy\"}").unwrap_or(0.0);
    assert!(busy >= 300.0, "{busy} busy refusals counted:\n{text}");
    // The threads: the twelve handshakes in progress, not one more for 300 refusals and
    // {scrapes} scrapes.
    assert_eq!(
        status_field(pid, "Threads:"),
        base + 12,
        "{scrapes} scrapes"
    );

    // Hundreds of scrapes leave the memory where it was: every series is fixed.
    for _ in 0..100 {
        get(metrics, "/metrics");
    }
    let rss = status_field(pid, "VmRSS:");
    for _ in 0..500 {
        assert_eq!(get(metrics, "/metrics").0, 200);
        assert_eq!(get(metrics, "/devices").0, 200);
    }
    let grown = status_field(pid, "VmRSS:").saturating_sub(rss);
    assert!(grown < 1024, "500 scrapes took {grown} KiB more");
    drop(held);
}
