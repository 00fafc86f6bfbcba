//! The outbound proxy (`outbound_proxy`) against real proxy servers from Debian's packages on
//! loopback: tinyproxy (HTTP CONNECT with Basic authentication), squid (its own connect
//! timeout) and dante (SOCKS5 with user/password). Each connects out from a loopback address of
//! its own, so the Meeting proxy and the fake Meeting API see which way each connection came.
//!
//! Shown: the tunnel, the heartbeat, the services reading and the key work all go through
//! each proxy, and TLS to the API still verifies the API's certificate; every failure reads as
//! what it is, in `check`'s `outbound proxy` step and in the agent's log; the proxies'
//! passwords and the token are in neither.

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use support::outbound::*;
use support::*;

fn needs(test: &str) -> bool {
    may_run(
        test,
        &[
            Need::Root,
            tool("tinyproxy", "tinyproxy"),
            tool("squid", "squid"),
            tool("danted", "dante-server"),
            tool("ssh-keygen", "openssh-client"),
            Need::User(SOCKS_USER),
        ],
    )
}

/// Writes `config` to `dir/config.json`, mode 0600 (it holds the token and a password).
fn config_file(dir: &Path, config: &Value) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("config.json");
    std::fs::write(&path, config.to_string()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tunnel-agent-outbound-t-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The port of the fake API's HTTPS front.
fn api_port(api: &FakeApi) -> u16 {
    api.url
        .trim_start_matches("https://127.0.0.1:")
        .trim_end_matches("/api")
        .parse()
        .unwrap()
}

/// One device through the outbound proxy that `start` starts for the ports the device needs
/// (the Meeting proxy's and the API's), its URL by `url`: the tunnel, the heartbeat, the
/// services and the key work, each seen arriving from the outbound proxy's address.
fn everything_goes_through(
    name: &str,
    start: impl Fn(&[u16]) -> Outbound,
    url: impl Fn(&Outbound) -> String,
) {
    let api = FakeApi::start(&[KEY]);
    let dir = scratch(name);
    let host_key = api.serve_host_key(&dir.join("host_ed25519"));
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let outbound = start(&[proxy.control.port(), api_port(&api)]);
    let url = url(&outbound);
    let config = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN, "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(), "api_url": api.url,
        "api_ca_file": api.ca_file, "outbound_proxy": &url, "heartbeat_interval": 5,
        "service_ports": [format!("ssh={echo}")], "meeting_ssh_user": "",
        "device_ssh_key": dir.join("id_ed25519"), "known_hosts_file": dir.join("known_hosts"),
        "state_dir": dir.join("state"), "status_file": dir.join("status.json"),
    });
    let file = config_file(&dir, &config);
    // The key work is on (the suite's agents have it off unless asked), on files of the test.
    let agent = Proc::spawn(
        bin("tunnel-agent"),
        &["--config", &file],
        &[("MEETING_SSH_KEYS", "true")],
    );

    // The tunnel: the Meeting proxy sees the device come from the outbound proxy's address,
    // and bytes cross it both ways.
    proxy.proc.wait_for(
        &format!("device {KEY} connected from {}:", outbound.source),
        SOON,
    );
    // ssh is among the services Meeting grants, and its port is the echo server's here.
    api.wait_for("GET", &format!("/api/devices/{KEY}"), 1, SOON * 2);
    agent.wait_for("local ports open to the tunnel", SOON);
    let data = random_bytes(300_000, 30);
    assert!(echo_through(proxy.tunnels[0], &data) == data, "{name}");
    // The heartbeat, the services reading and the key work (the device key published,
    // Meeting's host key read): through it too, with TLS to the API verified against its CA.
    api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON * 2);
    api.wait_for("PUT", &format!("/api/devices/{KEY}/ssh-key"), 1, SOON * 2);
    api.wait_for("GET", "/api/ssh-hostkey", 1, SOON * 2);
    agent.wait_for("SSH keys (known_hosts): ", SOON);
    let known = std::fs::read_to_string(dir.join("known_hosts")).unwrap();
    assert!(known.contains(&host_key), "{known}");
    let peers = api.peers();
    assert!(!peers.is_empty());
    for peer in &peers {
        assert_eq!(
            peer.ip().to_string(),
            outbound.source,
            "{name}: an API connection did not come through the outbound proxy: {peers:?}"
        );
    }
    let log = agent.output();
    assert!(
        log.contains(&format!(
            "through the outbound proxy {}",
            url.replace(&secret_of(&url), "****")
        )),
        "{log}"
    );
    for secret in [TOKEN, &secret_of(&url)] {
        assert!(!log.contains(secret), "{name}: a secret in the log:\n{log}");
    }
    // check: the way open, and the password masked in its configuration step.
    let out = Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--timeout", "5", "--config", &file])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!report.contains(&secret_of(&url)) && !report.contains(TOKEN));
    let report: Value = serde_json::from_str(&report).unwrap();
    let step = check_step(&report, "outbound proxy");
    assert_eq!(step["status"], "pass", "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The password in `url`.
fn secret_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| "no password in the url".to_owned())
}

#[test]
fn the_tunnel_heartbeat_and_key_work_go_through_http_connect_and_socks5() {
    if !needs("the_tunnel_heartbeat_and_key_work_go_through_http_connect_and_socks5") {
        return;
    }
    // tinyproxy allows CONNECT to the two ports the device needs and no other.
    everything_goes_through(
        "tinyproxy",
        |ports| Outbound::tinyproxy(ports, true, "127.0.0.7"),
        |o| o.url("http", Some((HTTP_USER, HTTP_PASSWORD))),
    );
    // squid, no authentication, allowing the same two ports.
    everything_goes_through(
        "squid",
        |ports| Outbound::squid(ports, 5, "127.0.0.9"),
        |o| o.url("http", None),
    );
    for scheme in ["socks5h", "socks5"] {
        everything_goes_through(
            &format!("dante-{scheme}"),
            |_| Outbound::dante(1, "127.0.0.8"),
            |o| o.url(scheme, Some((SOCKS_USER, SOCKS_PASSWORD))),
        );
    }
}

/// `check`'s report and the agent's first failure line, for a device whose outbound proxy is
/// `url` and whose Meeting proxy is at 127.0.0.1:`port`.
fn failure(url: &str, port: u16) -> (Value, String) {
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let out = Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--timeout", "10", "--device-key", KEY])
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("MEETING_TOKEN", TOKEN)
        .env("MEETING_OUTBOUND_PROXY", url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for secret in [TOKEN, &secret_of(url)] {
        assert!(!text.contains(secret), "a secret in check's report: {text}");
    }
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let mut agent = agent_with_env(target, &[], &[("MEETING_OUTBOUND_PROXY", url)]);
    let line = agent.wait_for("WARN  through ", SOON);
    agent.kill();
    let log = agent.output();
    for secret in [TOKEN, &secret_of(url)] {
        assert!(!log.contains(secret), "a secret in the log: {log}");
    }
    (report, line)
}

#[test]
fn each_failure_of_the_outbound_proxy_is_told_apart_in_check_and_in_the_log() {
    if !needs("each_failure_of_the_outbound_proxy_is_told_apart_in_check_and_in_the_log") {
        return;
    }
    let proxy = Proxy::for_ports(&[], &[]);
    let meeting = proxy.control.port();
    let silent = Silent::new();
    let closed = closed_port();
    let tiny = Outbound::tinyproxy(&[meeting], true, "127.0.0.7");
    let tiny_open = Outbound::tinyproxy(&[1], true, "127.0.0.7");
    let squid = Outbound::squid(&[silent.addr.port()], 2, "127.0.0.9");
    let dante = Outbound::dante(meeting, "127.0.0.8");
    let socks = |scheme| dante.url(scheme, Some((SOCKS_USER, SOCKS_PASSWORD)));
    let creds = Some((HTTP_USER, HTTP_PASSWORD));
    // (what, outbound proxy, Meeting proxy's port, the fact, the advice)
    let cases: Vec<(&str, String, u16, String, &str)> = vec![
        (
            "unreachable",
            format!("http://127.0.0.1:{closed}"),
            meeting,
            "the outbound proxy is unreachable".into(),
            "check the host and port in outbound_proxy",
        ),
        (
            "407 without credentials",
            tiny.url("http", None),
            meeting,
            "requires authentication (407) and none is configured".into(),
            "put the user and password in outbound_proxy",
        ),
        (
            "wrong credentials",
            tiny.url("http", Some((HTTP_USER, "wrong-Pw"))),
            meeting,
            "rejected the user name and password".into(),
            "check the user and password in outbound_proxy",
        ),
        (
            "403 for the port",
            tiny_open.url("http", creds),
            meeting,
            format!("forbids connections to port {meeting} (403)"),
            "to allow connections to port",
        ),
        (
            "the HTTP proxy's own timeout",
            squid.url("http", None),
            silent.addr.port(),
            "could not reach the destination in its own time (503)".into(),
            "cannot reach tunnel_host in time",
        ),
        (
            "SOCKS5 without credentials",
            dante.url("socks5h", None),
            closed,
            "requires a user name and password, and none is configured".into(),
            "put the user and password in outbound_proxy",
        ),
        (
            "SOCKS5 wrong credentials",
            dante.url("socks5h", Some((SOCKS_USER, "wrong-Pw"))),
            closed,
            "the SOCKS5 proxy rejected the user name and password".into(),
            "check the user and password in outbound_proxy",
        ),
        (
            "SOCKS5 reply 2",
            socks("socks5h"),
            meeting,
            "the SOCKS5 proxy answered 2: connection not allowed by ruleset".into(),
            "its rules forbid this destination",
        ),
        (
            "SOCKS5 reply 5",
            socks("socks5"),
            closed,
            "the SOCKS5 proxy answered 5: connection refused".into(),
            "nothing listens at that port",
        ),
        (
            "SOCKS5 reply 6: the SOCKS proxy's own timeout",
            socks("socks5h"),
            silent.addr.port(),
            "the SOCKS5 proxy answered 6: TTL expired".into(),
            "cannot reach tunnel_host in time",
        ),
    ];
    for (what, url, port, fact, advice) in cases {
        let (report, line) = failure(&url, port);
        let step = check_step(&report, "outbound proxy");
        assert_eq!(step["status"], "fail", "{what}: {report}");
        let detail = step["detail"].as_str().unwrap_or("");
        let hint = step["hint"].as_str().unwrap_or("");
        assert!(detail.contains(&fact), "{what}: {detail}");
        assert!(hint.contains(advice), "{what}: {hint}");
        assert_eq!(report["verdict"], "outbound_proxy", "{what}: {report}");
        for name in ["tcp", "tls", "handshake"] {
            assert_eq!(check_step(&report, name)["status"], "skipped", "{what}");
        }
        // The log: one line with the same fact and advice.
        assert!(
            line.contains(&fact) && line.contains(advice),
            "{what}: {line}"
        );
        println!("{what}:\n  check: {detail}; {hint}\n  log: {line}");
    }
}

#[test]
fn https_proxy_and_all_proxy_are_not_read_and_the_agent_says_so() {
    // A proxy variable pointing nowhere: the tunnel and the heartbeat still go direct (ureq's
    // own reading of these variables is off), and the agent says once that it ignores it.
    let api = FakeApi::start(&[KEY]);
    let proxy = Proxy::for_ports(&[], &[]);
    let nowhere = format!("http://127.0.0.1:{}", closed_port());
    let agent = agent_with_env(
        proxy.control,
        &[
            "--api-url",
            &api.url,
            "--api-ca-file",
            api.ca_file.to_str().unwrap(),
        ],
        &[("HTTPS_PROXY", &nowhere), ("ALL_PROXY", &nowhere)],
    );
    agent.wait_for(
        "HTTPS_PROXY and ALL_PROXY are set in the environment, but tunnel-agent does not read them",
        SOON,
    );
    proxy.wait_agent(1);
    api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON);
    assert!(api
        .peers()
        .iter()
        .all(|p| p.ip().to_string() == "127.0.0.1"));
}
