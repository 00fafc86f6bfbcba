//! Several Meeting proxy addresses (`tunnel_hosts`), with two real `meeting-proxy` instances
//! on loopback: the agent moves to the second when the first is killed mid-session, `status`
//! and `check` name the one in use, it goes back to the first for a new connection once
//! `tunnel_hosts_return` has passed, and a refusal (the device's, not the host's) is not tried
//! on the next host.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// A meeting-proxy for [`KEY`] with `token`, its control port `port` (0: any), one tunnel to
/// the device's `echo` port.
fn meeting_proxy(port: u16, token: &str, echo: u16) -> Proxy {
    let listen = format!("127.0.0.1:{port}");
    let device = format!("{KEY}={token}");
    let tunnel = format!("127.0.0.1:0={KEY}:{echo}");
    Proxy::start(&[
        "--listen", &listen, "--device", &device, "--tunnel", &tunnel,
    ])
}

fn config(dir: &std::path::Path, hosts: &[SocketAddr], echo: u16, back_after: u64) -> String {
    let path = dir.join("config.json");
    let list: Vec<String> = hosts.iter().map(SocketAddr::to_string).collect();
    let text = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN, "tunnel_hosts": list,
        "tunnel_hosts_return": back_after, "allowed_ports": [echo],
        "status_file": dir.join("status.json"),
    });
    std::fs::write(&path, text.to_string()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("tunnel-agent-hosts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `tunnel-agent status --json` of the agent using `config`.
fn status(config: &str) -> Value {
    let out = Command::new(bin("tunnel-agent"))
        .args(["status", "--json", "--config", config])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_agent_moves_to_the_next_proxy_when_one_dies_and_comes_back_to_the_first() {
    let dir = scratch("failover");
    let echo = echo_server();
    let mut first = meeting_proxy(0, TOKEN, echo);
    let mut second = meeting_proxy(0, TOKEN, echo);
    let (a, b) = (first.control, second.control);
    let back_after = 2;
    let file = config(&dir, &[a, b], echo, back_after);
    let agent = Proc::spawn(bin("tunnel-agent"), &["--config", &file], &[]);
    first.wait_agent(1);
    let data = random_bytes(100_000, 40);
    assert!(echo_through(first.tunnels[0], &data) == data);

    // The first dies mid-session: the agent's next connection to it fails, the one after goes
    // to the second, and the tunnel works there.
    first.proc.kill();
    second.wait_agent(1);
    // tunnel_hosts_return counts from the first attempt on the second, before this.
    let moved_at = Instant::now();
    let moved = agent.wait_for(
        &format!("the next attempt goes to the next of tunnel_hosts, {b} (2 of 2)"),
        SOON,
    );
    assert!(moved.contains(&a.to_string()), "{moved}");
    assert!(echo_through(second.tunnels[0], &data) == data);
    let log = agent.output();
    assert!(
        log.contains(&format!("connecting to proxy {b} (2 of 2 in tunnel_hosts)")),
        "{log}"
    );
    // status and check name the one in use; check says what the first did.
    let deadline = Instant::now() + SOON;
    while status(&file)["proxy"] != b.to_string() {
        assert!(Instant::now() < deadline, "{}", status(&file));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status(&file)["state"], "connected");
    let out = Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--timeout", "3", "--config", &file])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = check_step(&report, "tunnel_hosts");
    let detail = hosts["detail"].as_str().unwrap();
    assert_eq!(hosts["status"], "pass", "{report}");
    assert!(
        detail.starts_with(&format!("{b} (2 of 2); before it: {a}: "))
            && detail.ends_with(&format!("the running agent uses {b}")),
        "{detail}"
    );
    assert_eq!(report["verdict"], "ok", "{report}");

    // The first is back. The working session on the second is kept; once tunnel_hosts_return
    // has passed (a duration, waited as such), the next connection tries the first again
    // though the second is up again too.
    first = meeting_proxy(a.port(), TOKEN, echo);
    let left = Duration::from_secs(back_after).saturating_sub(moved_at.elapsed());
    std::thread::sleep(left + Duration::from_millis(200));
    assert_eq!(
        second.proc.count(&format!("device {KEY} connected from")),
        1
    );
    second.proc.kill();
    second = meeting_proxy(b.port(), TOKEN, echo);
    first.wait_agent(1);
    agent.wait_for(
        &format!("{back_after} s on other tunnel_hosts: trying the first, {a}, again"),
        SOON,
    );
    assert!(echo_through(first.tunnels[0], &data) == data);
    assert_eq!(
        second.proc.count(&format!("device {KEY} connected from")),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_refusal_is_the_devices_and_is_not_tried_on_the_next_proxy() {
    let dir = scratch("refusal");
    let echo = echo_server();
    // The first knows the device with another token: it refuses it, with a reason.
    let first = meeting_proxy(0, "0ther-token", echo);
    let second = meeting_proxy(0, TOKEN, echo);
    let file = config(&dir, &[first.control, second.control], echo, 600);
    let agent = Proc::spawn(bin("tunnel-agent"), &["--config", &file], &[]);
    let line = agent.wait_for("refused by the proxy; reconnecting in ", SOON);
    let wait: f64 = line
        .rsplit("reconnecting in ")
        .next()
        .and_then(|t| t.trim().trim_end_matches(" s").parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(wait >= 30.0, "{line}");
    let log = agent.output();
    assert!(!log.contains("next of tunnel_hosts"), "{log}");
    assert_eq!(second.proc.count("connected from"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
