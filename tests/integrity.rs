//! Every byte arrives, in order: the randomized integrity suite (`tests/support/integrity.rs`)
//! through the real meeting-proxy and tunnel-agent, plain (with per-stream windows, as
//! meeting-proxy announces by default, and without), with TLS to the proxy, and through an
//! outbound HTTP proxy (Debian's tinyproxy). Seeded: the seed is printed on failure, and
//! `INTEGRITY_SEED=<n>` replays it. `make soak-integrity` runs it for 10 minutes
//! (`INTEGRITY_MINUTES`).

mod support;

use std::time::{Duration, Instant};

use support::integrity::{
    self, Services, Totals, Tunnel, LOCAL_WRITE_TIMEOUT, SEND_TIMEOUT, SLOTS,
};
use support::pki::{Pki, Validity};
use support::*;

/// The proxy's settings in the suite: its bounds short enough for a stopped reader to be cut
/// within seconds, and room for every slot's connections from one address.
const PROXY_BOUNDS: [&str; 4] = [
    "--send-timeout",
    SEND_TIMEOUT,
    "--max-public-per-address",
    "64",
];

/// The agent's: `local_write_timeout` short, for the same reason.
const AGENT_BOUNDS: [&str; 2] = ["--local-write-timeout", LOCAL_WRITE_TIMEOUT];

/// Runs `streams` streams (or until `until`) through a connected agent; panics with the seed.
fn suite(
    name: &str,
    proxy: &Proxy,
    agent: &Proc,
    services: &Services,
    (streams, until): (usize, Option<Instant>),
) -> Totals {
    let seed = integrity::seed();
    eprintln!("integrity ({name}): INTEGRITY_SEED={seed}");
    let t = Tunnel {
        public: proxy.tunnels.clone(),
        services,
        proxy: &proxy.proc,
        agent,
        name,
    };
    let totals = integrity::run(&t, seed, streams, until).unwrap_or_else(|e| {
        let warned = |p: &Proc| {
            let out = p.output();
            let lines: Vec<&str> = out.lines().filter(|l| !l.contains(" INFO ")).collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        // The whole logs, for the post-mortem.
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let _ = std::fs::write(
            dir.join(format!("integrity-{name}-proxy.log")),
            proxy.proc.output(),
        );
        let _ = std::fs::write(
            dir.join(format!("integrity-{name}-agent.log")),
            agent.output(),
        );
        panic!(
            "{e}\nmeeting-proxy, its last warnings:\n{}\ntunnel-agent, its last warnings:\n{}\n\
             (whole logs in {}/integrity-{name}-*.log)",
            warned(&proxy.proc),
            warned(agent),
            dir.display()
        )
    });
    // One connection from start to end: no bound dropped the device.
    assert_eq!(
        agent.count("tunnel ready"),
        1,
        "INTEGRITY_SEED={seed}: the agent reconnected"
    );
    eprintln!(
        "integrity ({name}): {} streams, {} MiB received, {} cut by a bound as planned, {} \
         closed mid-stream; INTEGRITY_SEED={seed}",
        totals.streams,
        totals.bytes >> 20,
        totals.cut,
        totals.mid
    );
    assert!(totals.streams >= streams.min(1));
    totals
}

fn plain(services: &Services, extra: &[&str]) -> (Proxy, Proc) {
    let proxy = Proxy::for_ports(&services.ports, &[&PROXY_BOUNDS[..], extra].concat());
    let agent = proxy.agent(&AGENT_BOUNDS);
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    (proxy, agent)
}

#[test]
fn every_byte_arrives_through_the_tunnel() {
    let services = Services::start(SLOTS);
    let (proxy, agent) = plain(&services, &[]);
    agent.wait_for("windows: at most 256 KiB", SOON);
    suite("plain", &proxy, &agent, &services, (160, None));
}

/// The same without windows (the protocol as the production proxy speaks it).
#[test]
fn every_byte_arrives_through_the_tunnel_without_windows() {
    let services = Services::start(SLOTS);
    let (proxy, agent) = plain(&services, &["--window", "0"]);
    suite("plain, no windows", &proxy, &agent, &services, (160, None));
    assert!(!agent.output().contains("windows:"), "{}", agent.output());
}

/// A TLS meeting-proxy (certificate for `proxy.test` from a CA of the test's own) with one
/// tunnel per local service, and an agent verifying it; `via` is an outbound proxy's URL.
fn with_tls(pki: &Pki, services: &Services, via: Option<&str>) -> (Proxy, Proc) {
    let ca = pki.ca("ca");
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let device = format!("{KEY}={TOKEN}");
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut args = vec![
        "--tls-cert".to_owned(),
        cert,
        "--tls-key".to_owned(),
        key,
        "--device".to_owned(),
        device,
    ];
    for p in &services.ports {
        args.extend(["--tunnel".to_owned(), format!("127.0.0.1:0={KEY}:{p}")]);
    }
    args.extend(PROXY_BOUNDS.map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&args);
    let ca_file = pki.path("ca.pem");
    let mut agent_args = vec![
        "--tls",
        "--ca-file",
        &ca_file,
        "--tls-server-name",
        "proxy.test",
    ];
    if let Some(url) = via {
        agent_args.extend(["--outbound-proxy", url]);
    }
    agent_args.extend(AGENT_BOUNDS);
    let agent = proxy.agent(&agent_args);
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    (proxy, agent)
}

#[test]
fn every_byte_arrives_with_tls_to_the_proxy() {
    let services = Services::start(SLOTS);
    let pki = Pki::new("integrity");
    let (proxy, agent) = with_tls(&pki, &services, None);
    agent.wait_for("TLS to proxy", SOON);
    suite("tls", &proxy, &agent, &services, (50, None));
}

#[test]
fn every_byte_arrives_through_an_outbound_http_proxy() {
    if !may_run(
        "every_byte_arrives_through_an_outbound_http_proxy",
        &[tool("tinyproxy", "tinyproxy")],
    ) {
        return;
    }
    let services = Services::start(SLOTS);
    let proxy = Proxy::for_ports(&services.ports, &PROXY_BOUNDS);
    let outbound =
        support::outbound::Outbound::tinyproxy(&[proxy.control.port()], false, "127.0.0.7");
    let url = outbound.url("http", None);
    let mut args = vec!["--outbound-proxy", url.as_str()];
    args.extend(AGENT_BOUNDS);
    let agent = proxy.agent(&args);
    proxy
        .proc
        .wait_for(&format!("device {KEY} connected from 127.0.0.7:"), SOON);
    agent.wait_for("tunnel ready", SOON);
    suite("outbound", &proxy, &agent, &services, (50, None));
}

/// `make soak-integrity`: the suite for `INTEGRITY_MINUTES` (10), plain.
#[test]
#[ignore = "a 10-minute soak: make soak-integrity"]
fn soak_integrity() {
    let minutes: u64 = std::env::var("INTEGRITY_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(10);
    let services = Services::start(SLOTS);
    let (proxy, agent) = plain(&services, &[]);
    let until = Instant::now() + Duration::from_secs(minutes * 60);
    let t = suite("soak", &proxy, &agent, &services, (0, Some(until)));
    println!(
        "soak-integrity: {minutes} min, {} streams, {} MiB received, {} cut by a bound as \
         planned, {} closed mid-stream",
        t.streams,
        t.bytes >> 20,
        t.cut,
        t.mid
    );
}
