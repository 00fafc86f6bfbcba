//! Meeting presence end to end: the real agent, the project's proxy and the suite's fake
//! Meeting API over HTTPS. The LAN the heartbeat reports comes from a file the test writes
//! (`TUNNEL_AGENT_LAN_FILE`), so an address change can be made without touching the machine.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;

const LAN_ENV: &str = "TUNNEL_AGENT_LAN_FILE";

fn online_path() -> String {
    format!("/api/devices/{KEY}/online")
}

/// A LAN file for the agent: `eth0 IP b8:27:eb:12:ab:cd`.
struct LanFile(PathBuf);

impl LanFile {
    fn new(name: &str, ip: &str) -> LanFile {
        let p =
            std::env::temp_dir().join(format!("tunnel-agent-lan-{}-{name}", std::process::id()));
        let f = LanFile(p);
        f.set(ip);
        f
    }
    fn set(&self, ip: &str) {
        let tmp = self.0.with_extension("tmp");
        std::fs::write(&tmp, format!("eth0 {ip} b8:27:eb:12:ab:cd\n")).unwrap();
        std::fs::rename(&tmp, &self.0).unwrap();
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for LanFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An agent for `proxy` sending heartbeats to `api` (URL as given) every `interval` seconds.
fn agent_with_api(proxy: &Proxy, api: &FakeApi, url: &str, lan: &LanFile, extra: &[&str]) -> Proc {
    let ca = api.ca_file.display().to_string();
    let mut args = vec!["--api-url", url, "--api-ca-file", &ca];
    args.extend(extra);
    let allow: Vec<String> = proxy.ports.iter().map(u16::to_string).collect();
    for p in &allow {
        args.extend(["--allow-port", p.as_str()]);
    }
    agent_with_env(proxy.control, &args, &[(LAN_ENV, lan.path())])
}

#[test]
fn beats_at_start_and_after_authentication_with_exactly_the_documented_request() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("exact", "192.0.2.10");
    // A long interval: a second beat within the test's wait can only be the one after the
    // handshake was accepted.
    let agent = agent_with_api(
        &proxy,
        &api,
        &api.url,
        &lan,
        &["--heartbeat-interval", "3600"],
    );
    proxy.wait_agent(1);
    let beats = api.wait_for("POST", &online_path(), 2, SOON);
    agent.wait_for("Meeting presence: online", SOON);
    for b in &beats {
        assert_eq!(b.header("content-type"), Some("application/json"));
        let body = b.json();
        assert_eq!(body["ip_address"], "192.0.2.10", "{}", b.body);
        assert_eq!(body["ip_lan"], "192.0.2.10", "{}", b.body);
        assert_eq!(body["mac"], "B8:27:EB:12:AB:CD", "{}", b.body);
        let note = body["note"].as_str().unwrap();
        assert!(
            note.starts_with(concat!("tunnel-agent ", env!("CARGO_PKG_VERSION"), " on ")),
            "{note}"
        );
        assert!(body.get("services").is_none(), "{}", b.body);
        assert!(
            body.get("ip_public").is_none(),
            "no public_ip_url: {}",
            b.body
        );
        assert!(b.header("x-token-code").is_none());
        assert!(!format!("{b:?}").contains(TOKEN), "the token leaked: {b:?}");
    }
    // Nothing but heartbeats went to the API, and the token is nowhere in the log.
    assert!(api.requests().iter().all(|r| r.path == online_path()));
    assert!(!agent.output().contains(TOKEN));
    assert_eq!(
        echo_through(proxy.tunnels[0], b"still a tunnel"),
        b"still a tunnel"
    );
}

#[test]
fn api_url_without_api_and_a_beat_every_interval() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("interval", "192.0.2.11");
    let bare = api.url.trim_end_matches("/api").to_owned();
    let _agent = agent_with_api(&proxy, &api, &bare, &lan, &["--heartbeat-interval", "5"]);
    let beats = api.wait_for("POST", &online_path(), 5, Duration::from_secs(40));
    // The two first are the start and the accepted handshake; from then on, the interval.
    let gaps: Vec<f64> = beats
        .windows(2)
        .skip(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect();
    for g in &gaps {
        assert!((4.5..=7.0).contains(g), "gaps {gaps:?}");
    }
}

#[test]
fn a_new_lan_address_is_told_at_once() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("change", "192.0.2.20");
    let agent = agent_with_api(
        &proxy,
        &api,
        &api.url,
        &lan,
        &["--heartbeat-interval", "3600"],
    );
    api.wait_for("POST", &online_path(), 2, SOON);
    lan.set("192.0.2.21");
    agent.wait_for("LAN address changed (192.0.2.20 → 192.0.2.21)", SOON);
    let beats = api.wait_for("POST", &online_path(), 3, SOON);
    assert_eq!(beats[2].json()["ip_address"], "192.0.2.21");
}

#[test]
fn failing_api_backs_off_and_never_holds_the_tunnel_or_a_stop() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let api = FakeApi::start(&[KEY]);
    api.answer("POST", &online_path(), 500, r#"{"error":"database down"}"#);
    let lan = LanFile::new("failing", "192.0.2.30");
    let mut agent = agent_with_api(
        &proxy,
        &api,
        &api.url,
        &lan,
        &["--heartbeat-interval", "60"],
    );
    proxy.wait_agent(1);
    let beats = api.wait_for("POST", &online_path(), 4, Duration::from_secs(60));
    let gaps: Vec<f64> = beats
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect();
    // The accepted handshake may add a beat at once; the retries then wait 5 s, 10 s, 20 s
    // (each ±20 %) from the first failure on.
    let retries: Vec<f64> = gaps.iter().copied().filter(|g| *g > 1.0).collect();
    assert!(retries.len() >= 2, "gaps {gaps:?}");
    assert!((3.5..=12.5).contains(&retries[0]), "gaps {gaps:?}");
    assert!(retries[1] > retries[0] * 1.3, "no backoff: gaps {gaps:?}");
    assert_eq!(agent.count("heartbeat failed"), 1, "{}", agent.output());
    assert!(agent.output().contains("HTTP 500"), "{}", agent.output());
    assert_eq!(echo_through(proxy.tunnels[0], b"up"), b"up");
    stop_promptly(&mut agent);
}

#[test]
fn a_hung_api_never_holds_the_tunnel_or_a_stop() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let api = FakeApi::start(&[KEY]);
    api.hang("POST", &online_path());
    let lan = LanFile::new("hung", "192.0.2.31");
    let mut agent = agent_with_api(&proxy, &api, &api.url, &lan, &[]);
    api.wait_for("POST", &online_path(), 1, SOON);
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    assert_eq!(
        echo_through(proxy.tunnels[0], b"not waiting"),
        b"not waiting"
    );
    stop_promptly(&mut agent);
}

fn stop_promptly(agent: &mut Proc) {
    let t0 = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_exit(SOON)
        .expect("agent still running after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", agent.output());
    assert!(
        !agent.output().contains("took too long"),
        "{}",
        agent.output()
    );
    eprintln!("agent exited {:?} after SIGTERM", t0.elapsed());
}

#[test]
fn an_unregistered_device_is_said_once_and_recovery_once() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    api.answer(
        "POST",
        &online_path(),
        404,
        r#"{"error":"Device not found"}"#,
    );
    let lan = LanFile::new("404", "192.0.2.40");
    let dir = std::env::temp_dir().join(format!("tunnel-agent-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status_file = dir.join("status.json").display().to_string();
    let cfg = dir.join("c.json");
    std::fs::write(&cfg, r#"{"heartbeat_retry_unregistered": 1}"#).unwrap();
    let cfg_arg = cfg.display().to_string();
    let agent = agent_with_api(
        &proxy,
        &api,
        &api.url,
        &lan,
        &["--config", &cfg_arg, "--status-file", &status_file],
    );
    api.wait_for("POST", &online_path(), 4, SOON);
    let errors = agent.count(&format!("device {KEY} is not registered in Meeting"));
    assert_eq!(errors, 1, "{}", agent.output());
    let snap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&status_file).unwrap()).unwrap();
    assert_eq!(snap["presence"]["state"], "not_registered", "{snap}");
    let out = std::process::Command::new(bin("tunnel-agent"))
        .args(["status", "--status-file", &status_file])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Meeting presence: not_registered"), "{text}");

    api.answer("POST", &online_path(), 200, "");
    agent.wait_for("heartbeat accepted again", SOON);
    assert_eq!(agent.count("heartbeat accepted again"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_an_api_the_heartbeat_is_off_and_says_so_once() {
    let proxy = Proxy::for_ports(&[], &[]);
    let agent = proxy.agent(&[]);
    agent.wait_for("tunnel ready", SOON);
    assert_eq!(
        agent.count("Meeting presence: heartbeat off"),
        1,
        "{}",
        agent.output()
    );
    assert!(agent.output().contains("no api_url configured"));
}

#[test]
fn a_plain_http_api_works_with_one_warning() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("http", "192.0.2.50");
    let agent = agent_with_api(&proxy, &api, &api.http_url, &lan, &[]);
    api.wait_for("POST", &online_path(), 1, SOON);
    agent.wait_for("Meeting presence: online", SOON);
    assert_eq!(agent.count("is plain http"), 1, "{}", agent.output());
}

#[test]
fn sighup_applies_changed_heartbeat_settings() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("hup", "192.0.2.60");
    let dir = std::env::temp_dir().join(format!("tunnel-agent-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.json");
    let write = |on: bool| {
        let v = serde_json::json!({
            "api_url": api.url, "api_ca_file": api.ca_file.display().to_string(), "heartbeat": on,
        });
        std::fs::write(&cfg, v.to_string()).unwrap();
    };
    write(false);
    let cfg_arg = cfg.display().to_string();
    let agent = agent_with_env(
        proxy.control,
        &["--config", &cfg_arg],
        &[(LAN_ENV, lan.path())],
    );
    agent.wait_for("Meeting presence: heartbeat off (heartbeat false", SOON);
    agent.wait_for("tunnel ready", SOON);
    // No heartbeat (the services reading, GET /devices/K, may have come: it is not one).
    assert!(api.requests_to("POST", &online_path()).is_empty());
    write(true);
    agent.signal("HUP");
    agent.wait_for("heartbeat settings changed", SOON);
    let beats = api.wait_for("POST", &online_path(), 1, SOON);
    assert_eq!(beats[0].json()["ip_address"], "192.0.2.60");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A certificate made out to another name: the advice names the API's settings, never the
/// proxy's (`tunnel_host`, `tls_server_name`), in the log and in `check`.
#[test]
fn an_api_certificate_for_another_name_names_api_url_and_api_ca_file() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::with_certificate_for(&[KEY], &["meeting.example"]);
    let ca = api.ca_file.display().to_string();
    let lan = LanFile::new("mismatch", "192.0.2.71");
    let args = ["--api-url", api.url.as_str(), "--api-ca-file", ca.as_str()];
    let agent = agent_with_env(proxy.control, &args, &[(LAN_ENV, lan.path())]);
    let line = agent.wait_for("heartbeat failed", SOON);
    assert!(line.contains("name mismatch"), "{line}");
    assert!(line.contains("meeting.example"), "{line}");
    assert!(
        line.contains("api_url") && line.contains("api_ca_file"),
        "{line}"
    );
    assert!(
        !line.contains("tunnel_host") && !line.contains("tls_server_name"),
        "{line}"
    );
    let mut all = agent_args(proxy.control);
    all.extend(["--timeout", "5"].map(str::to_owned));
    all.extend(args.map(str::to_owned));
    let mut cmd = std::process::Command::new(bin("tunnel-agent"));
    cmd.arg("check")
        .arg("--json")
        .args(&all)
        .env("MEETING_TOKEN", TOKEN);
    let out = cmd.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = check_step(&report, "api");
    let (detail, hint) = (step["detail"].to_string(), step["hint"].to_string());
    assert!(detail.contains("name mismatch"), "{step}");
    assert!(
        hint.contains("api_url") && hint.contains("api_ca_file"),
        "{step}"
    );
    assert!(!hint.contains("tunnel_host"), "{step}");
    assert!(api.requests().is_empty(), "{:?}", api.requests());
}

/// A Meeting API whose certificate starts in the future: the heartbeat says so with the
/// device's time next to the certificate's validity, and the device comes online by itself
/// once the API has a valid certificate.
#[test]
fn an_api_certificate_not_valid_yet_then_valid_the_device_comes_online_by_itself() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::with_future_certificate(&[KEY]);
    let ca = api.ca_file.display().to_string();
    let lan = LanFile::new("future", "192.0.2.72");
    let args = [
        "--api-url",
        api.url.as_str(),
        "--api-ca-file",
        ca.as_str(),
        "--heartbeat-interval",
        "5",
    ];
    let agent = agent_with_env(proxy.control, &args, &[(LAN_ENV, lan.path())]);
    let line = agent.wait_for("heartbeat failed", SOON);
    assert!(
        line.contains("not valid yet")
            && line.contains("valid from 2099-01-01 00:00:00 UTC")
            && line.contains("the device's clock reads"),
        "{line}"
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());
    api.renew_certificate();
    agent.wait_for("the device is online in Meeting", SOON);
    api.wait_for("POST", &online_path(), 1, SOON);
}

#[test]
fn an_api_certificate_nobody_trusts_is_named_and_nothing_is_sent_in_clear() {
    let proxy = Proxy::for_ports(&[], &[]);
    let api = FakeApi::start(&[KEY]);
    let lan = LanFile::new("untrusted", "192.0.2.70");
    // No api_ca_file: the fake's private CA is not among the public roots.
    let agent = agent_with_env(
        proxy.control,
        &["--api-url", &api.url],
        &[(LAN_ENV, lan.path())],
    );
    let line = agent.wait_for("heartbeat failed", SOON);
    assert!(line.contains("certificate not trusted"), "{line}");
    assert!(line.contains("set api_ca_file"), "{line}");
    assert!(
        api.requests().is_empty(),
        "a request got through: {:?}",
        api.requests()
    );
}
