//! What meeting-proxy counts for the people who run it: Prometheus metrics and a JSON list of
//! the devices online, served on a listener of their own (`--metrics-listen`, off by default,
//! never the agents' port).
//!
//! Owns the counters (process-wide, an atomic add per event, always on) and the small HTTP
//! responder. The text format is the `prometheus-client` crate's (OpenMetrics, which
//! Prometheus reads); the live figures (devices, public connections, tunnels, the process's
//! memory, descriptors and threads) are read from the registry and `/proc` at each scrape.
//! No series has a per-device label: the devices are `GET /devices`' business, so the
//! number of series stays fixed however many devices connect.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry as Prometheus;
use serde_json::json;

use tunnel_agent::meeting::ApiError;

use crate::registry::Registry;

/// One label, as `(name, value)`: every value is a word of this module's.
type Labels = Vec<(&'static str, &'static str)>;

/// Session lengths, in seconds: from a flapping device (under 10 s) to a week.
const SESSION_BUCKETS: [f64; 9] = [
    1.0, 10.0, 60.0, 600.0, 3600.0, 21_600.0, 86_400.0, 259_200.0, 604_800.0,
];
/// Meeting API latencies, in seconds.
const API_BUCKETS: [f64; 9] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// How a handshake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Accepted: the device is connected.
    Accepted,
    /// The token is not the device's.
    WrongToken,
    /// No such device.
    UnknownDevice,
    /// The device may not open tunnels.
    NotAuthorized,
    /// Not a handshake line.
    Malformed,
    /// Not complete within `handshake_timeout`.
    Late,
    /// Refused before reading: the address is slowed for its failed handshakes.
    SlowedAddress,
    /// Refused before judging: the device key is slowed.
    SlowedKey,
    /// Refused before reading: too many handshakes in progress.
    Busy,
    /// The Meeting API could not answer.
    ApiUnreachable,
    /// The TLS handshake failed.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    TlsFailed,
    /// A TLS ClientHello on a plain port.
    TlsOnPlainPort,
    /// The connection closed without a handshake line.
    Silent,
}

impl Handshake {
    fn label(self) -> &'static str {
        match self {
            Handshake::Accepted => "accepted",
            Handshake::WrongToken => "wrong_token",
            Handshake::UnknownDevice => "unknown_device",
            Handshake::NotAuthorized => "not_authorized",
            Handshake::Malformed => "malformed",
            Handshake::Late => "late",
            Handshake::SlowedAddress => "slowed_address",
            Handshake::SlowedKey => "slowed_key",
            Handshake::Busy => "busy",
            Handshake::ApiUnreachable => "api_unreachable",
            Handshake::TlsFailed => "tls_failed",
            Handshake::TlsOnPlainPort => "tls_on_plain_port",
            Handshake::Silent => "no_handshake",
        }
    }
}

/// How a device's session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The device closed the connection.
    DeviceClosed,
    /// A newer connection for the same key replaced it.
    Replaced,
    /// The device took no data for `send_timeout`.
    SendTimeout,
    /// The kernel gave up on the link (keepalive probes, unacknowledged data).
    DeadLink,
    /// A device that pings sent nothing for 3 keepalive intervals.
    KeepaliveTimeout,
    /// A frame broke the protocol.
    ProtocolError,
    /// Reading failed otherwise (a reset).
    ConnectionError,
}

impl Ended {
    fn label(self) -> &'static str {
        match self {
            Ended::DeviceClosed => "device_closed",
            Ended::Replaced => "replaced",
            Ended::SendTimeout => "send_timeout",
            Ended::DeadLink => "dead_link",
            Ended::KeepaliveTimeout => "keepalive_timeout",
            Ended::ProtocolError => "protocol_error",
            Ended::ConnectionError => "connection_error",
        }
    }
}

/// Why a public connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublicRefused {
    /// Its device has no agent online.
    DeviceOffline,
    /// `max_public_per_address`.
    PerAddress,
    /// `max_public_per_device`.
    PerDevice,
    /// No thread could be started for it.
    NoThread,
}

impl PublicRefused {
    fn label(self) -> &'static str {
        match self {
            PublicRefused::DeviceOffline => "device_offline",
            PublicRefused::PerAddress => "max_public_per_address",
            PublicRefused::PerDevice => "max_public_per_device",
            PublicRefused::NoThread => "no_thread",
        }
    }
}

/// The counters.
pub struct Metrics {
    handshakes: Family<Labels, Counter>,
    sessions_ended: Family<Labels, Counter>,
    session_seconds: Histogram,
    public_refused: Family<Labels, Counter>,
    to_devices: Counter,
    from_devices: Counter,
    api_requests: Family<Labels, Counter>,
    api_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    prometheus: Prometheus,
}

fn api_histogram() -> Histogram {
    Histogram::new(API_BUCKETS)
}

/// The process's counters, made at the first use.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    fn new() -> Metrics {
        let mut p = Prometheus::default();
        let m = Metrics {
            handshakes: Family::default(),
            sessions_ended: Family::default(),
            session_seconds: Histogram::new(SESSION_BUCKETS),
            public_refused: Family::default(),
            to_devices: Counter::default(),
            from_devices: Counter::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(api_histogram),
            prometheus: Prometheus::default(),
        };
        p.register(
            "meeting_proxy_handshakes",
            "Agent connections by how their handshake ended",
            m.handshakes.clone(),
        );
        p.register(
            "meeting_proxy_sessions_ended",
            "Device sessions ended, by reason",
            m.sessions_ended.clone(),
        );
        p.register(
            "meeting_proxy_session_duration_seconds",
            "How long device sessions lasted",
            m.session_seconds.clone(),
        );
        p.register(
            "meeting_proxy_public_connections_refused",
            "Public connections closed at once, by reason",
            m.public_refused.clone(),
        );
        p.register(
            "meeting_proxy_bytes_to_devices",
            "Bytes from public clients sent to devices",
            m.to_devices.clone(),
        );
        p.register(
            "meeting_proxy_bytes_from_devices",
            "Bytes from devices to their public clients",
            m.from_devices.clone(),
        );
        p.register(
            "meeting_proxy_api_requests",
            "Meeting API requests, by call and outcome",
            m.api_requests.clone(),
        );
        p.register(
            "meeting_proxy_api_request_duration_seconds",
            "Meeting API request latency, by call",
            m.api_seconds.clone(),
        );
        Metrics { prometheus: p, ..m }
    }

    /// A handshake ended so.
    pub fn handshake(&self, how: Handshake) {
        self.handshakes
            .get_or_create(&vec![("outcome", how.label())])
            .inc();
    }

    /// A device's session ended so, after `lasted`.
    pub fn session_ended(&self, why: Ended, lasted: Duration) {
        self.sessions_ended
            .get_or_create(&vec![("reason", why.label())])
            .inc();
        self.session_seconds.observe(lasted.as_secs_f64());
    }

    /// A public connection was closed at once.
    pub fn public_refused(&self, why: PublicRefused) {
        self.public_refused
            .get_or_create(&vec![("reason", why.label())])
            .inc();
    }

    /// The counter of bytes to devices, for the pumps to add to.
    pub fn bytes_to_devices(&self) -> &AtomicU64 {
        self.to_devices.inner()
    }

    /// Bytes from a device arrived for its clients.
    pub fn bytes_from_devices(&self, n: usize) {
        self.from_devices.inc_by(n as u64);
    }

    /// A Meeting API call (`device`, `tunnels`) started at `at` ended with `result`.
    pub fn api<T>(&self, call: &'static str, at: Instant, result: &Result<T, ApiError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(ApiError::Unreachable { .. }) => "unreachable",
            Err(ApiError::Status { code: 404, .. }) => "not_found",
            Err(ApiError::Status {
                code: 401 | 403, ..
            }) => "refused",
            Err(ApiError::Status { code, .. }) if *code >= 500 => "http_5xx",
            Err(ApiError::Status { .. }) => "http_4xx",
            Err(ApiError::BadAnswer { .. }) => "bad_answer",
            Err(_) => "other",
        };
        self.api_requests
            .get_or_create(&vec![("call", call), ("outcome", outcome)])
            .inc();
        self.api_seconds
            .get_or_create(&vec![("call", call)])
            .observe(at.elapsed().as_secs_f64());
    }

    /// The text Prometheus reads: the counters, the live figures and the process's.
    fn render(&self, live: &Registry) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.prometheus)?;
        let mut now = Prometheus::default();
        let figures = live.figures();
        now.register(
            "meeting_proxy_devices_connected",
            "Devices with an agent connected now",
            ConstGauge::new(figures.devices as i64),
        );
        now.register(
            "meeting_proxy_public_connections_open",
            "Public connections open now",
            ConstGauge::new(figures.public as i64),
        );
        now.register(
            "meeting_proxy_tunnels_open",
            "Public ports listening now",
            ConstGauge::new(figures.tunnels as i64),
        );
        process(&mut now);
        encode_registry(&mut out, &now)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

/// The standard `process_*` series, from `/proc/self`.
fn process(p: &mut Prometheus) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as i64);
    let (cpu, start) = cpu_and_start();
    p.register(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
        ConstGauge::new(field("VmRSS:") * 1024),
    );
    p.register(
        "process_virtual_memory_bytes",
        "Virtual memory size in bytes",
        ConstGauge::new(field("VmSize:") * 1024),
    );
    p.register(
        "process_open_fds",
        "Number of open file descriptors",
        ConstGauge::new(fds),
    );
    p.register(
        "process_max_fds",
        "Maximum number of open file descriptors",
        ConstGauge::new(max_fds()),
    );
    p.register(
        "process_threads",
        "Number of OS threads in the process",
        ConstGauge::new(field("Threads:")),
    );
    p.register(
        "process_cpu_seconds",
        "Total user and system CPU time spent in seconds",
        ConstCounter::new(cpu),
    );
    p.register(
        "process_start_time_seconds",
        "Start time of the process since unix epoch in seconds",
        ConstGauge::new(start),
    );
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> i64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used, and the start time in seconds since the epoch, from `/proc`.
fn cpu_and_start() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3.
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 on Linux.
    let cpu = (num(11) + num(12)) / 100.0;
    let boot = std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, boot + num(19) / 100.0)
}

/// Longest request head read from a scraper.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a scraper may take to send its request, and to take the answer.
const SCRAPER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` and `GET /devices` on `listener`, one connection at a time on one
/// thread: a scraper that stalls holds it for [`SCRAPER_TIMEOUT`] at most, and a flood of
/// connections waits in the accept queue, costing no thread or memory.
pub fn serve(listener: TcpListener, registry: Arc<Registry>) -> std::io::Result<()> {
    if let Ok(a) = listener.local_addr() {
        info!("metrics on http://{a}/metrics, devices on http://{a}/devices");
    }
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => answer(c, &registry),
                    Err(e) => {
                        warn!("metrics: accept failed: {e}");
                        thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
}

/// Reads one request head and answers it; the connection is closed after.
fn answer(mut conn: TcpStream, registry: &Registry) {
    let _ = conn.set_read_timeout(Some(SCRAPER_TIMEOUT));
    let _ = conn.set_write_timeout(Some(SCRAPER_TIMEOUT));
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_REQUEST {
            let _ = respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            );
            return;
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = std::str::from_utf8(line).unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let _ = match (method, path) {
        ("GET", "/metrics") => match get().render(registry) {
            // Prometheus asks for OpenMetrics; anything else (promtool, curl) gets the
            // Prometheus text format.
            Ok(text) if accepts_openmetrics(&head) => respond(
                &mut conn,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &text,
            ),
            Ok(text) => respond(
                &mut conn,
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                &prometheus_text(&text),
            ),
            Err(_) => respond(&mut conn, "500 Internal Server Error", "text/plain", ""),
        },
        ("GET", "/devices") => {
            let body = json!(registry.devices()).to_string();
            respond(&mut conn, "200 OK", "application/json", &body)
        }
        ("GET", _) => respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            "not found: GET /metrics or /devices\n",
        ),
        _ => respond(
            &mut conn,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        ),
    };
}

/// Whether the request's `Accept` header names OpenMetrics.
fn accepts_openmetrics(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("accept:") && l.contains("application/openmetrics-text")
    })
}

/// The Prometheus text format (0.0.4) of OpenMetrics text as `prometheus-client` writes it.
/// For the metric types used here the two differ in three ways only: a counter's `# HELP`
/// and `# TYPE` lines name its samples (`x_total`) rather than its family (`x`), there is no
/// `# UNIT` line, and no `# EOF`.
fn prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{p}{name}_total {tail}\n"));
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn respond(conn: &mut TcpStream, status: &str, kind: &str, body: &str) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prometheus_text_names_counters_by_their_samples_and_has_no_eof() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\n\
                    a_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n\
                    # HELP a_s Seconds.\n# TYPE a_s histogram\n# UNIT a_s seconds\n\
                    a_s_bucket{le=\"+Inf\"} 1\na_s_sum 0.5\na_s_count 1\n# EOF\n";
        assert_eq!(
            prometheus_text(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\n\
             a_requests_total{x=\"1\"} 3\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n\
             # HELP a_s Seconds.\n# TYPE a_s histogram\na_s_bucket{le=\"+Inf\"} 1\n\
             a_s_sum 0.5\na_s_count 1\n"
        );
    }

    #[test]
    fn openmetrics_only_when_asked() {
        assert!(accepts_openmetrics(
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n"
        ));
        assert!(!accepts_openmetrics(b"GET /metrics HTTP/1.0\r\n\r\n"));
    }
}
