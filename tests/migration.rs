//! A device migrated from the Python agent: its `/etc/rpi-cam/meeting.json` kept as it is
//! (here a copy in a temporary directory), with the web manager's `enabled` switch and its
//! 60 s heartbeat interval. The real agent, the real proxy and the fake Meeting API.

mod support;

use std::path::PathBuf;
use std::process::Command;

use support::*;

/// A temporary directory holding a configuration and a status file, removed with it.
struct Device {
    dir: PathBuf,
}

impl Device {
    fn new(name: &str) -> Device {
        let dir = std::env::temp_dir().join(format!("tunnel-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Device { dir }
    }

    fn config(&self) -> String {
        self.dir.join("meeting.json").display().to_string()
    }

    fn status_file(&self) -> String {
        self.dir.join("status.json").display().to_string()
    }

    /// Writes the fleet's configuration, with `enabled` as given.
    fn write(&self, proxy: &Proxy, api: &FakeApi, enabled: bool) {
        let v = serde_json::json!({
            "enabled": enabled, "api_url": api.url, "device_key": KEY, "token_code": TOKEN,
            "heartbeat_interval": 60, "auto_connect": true, "provisioned": true,
            "tunnel_host": "127.0.0.1", "tunnel_port": proxy.control.port(), "tunnel_ssl": false,
            // Not in the fleet's file: the fake API's own CA, and the test's ports.
            "api_ca_file": api.ca_file, "allowed_ports": proxy.ports,
        });
        let tmp = self.dir.join("meeting.json.tmp");
        std::fs::write(&tmp, v.to_string()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    fn agent(&self) -> Proc {
        Proc::spawn(
            bin("tunnel-agent"),
            &[
                "--config",
                &self.config(),
                "--status-file",
                &self.status_file(),
                "--ssh-keys",
                "false",
            ],
            &[],
        )
    }

    /// `tunnel-agent status` and `check --json` for this device: exit codes and outputs.
    fn status(&self) -> (Option<i32>, String) {
        let out = Command::new(bin("tunnel-agent"))
            .args(["status", "--status-file", &self.status_file()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn check(&self) -> (Option<i32>, serde_json::Value) {
        let out = Command::new(bin("tunnel-agent"))
            .args([
                "check",
                "--json",
                "--timeout",
                "2",
                "--config",
                &self.config(),
            ])
            .env_remove("MEETING_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            serde_json::from_slice(&out.stdout).unwrap(),
        )
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn online() -> String {
    format!("/api/devices/{KEY}/online")
}

#[test]
fn switched_off_it_holds_no_tunnel_and_sends_no_heartbeat_until_switched_on() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let api = FakeApi::start(&[KEY]);
    let device = Device::new("disabled");
    device.write(&proxy, &api, false);
    let agent = device.agent();
    let said = agent.wait_for("Meeting is switched off on this device", SOON);
    assert!(
        said.contains(&format!("(enabled false, file {})", device.config())),
        "{said}"
    );
    agent.wait_for("Meeting presence: heartbeat off (enabled false", SOON);
    // Its state is its own, and no failure.
    let (code, text) = device.status();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(": disabled since"), "{text}");
    assert!(
        text.contains("Meeting is switched off on this device"),
        "{text}"
    );
    assert!(!text.contains("tunnel down"), "{text}");
    let (code, json) = device.check();
    assert_eq!(
        (code, json["verdict"].as_str()),
        (Some(0), Some("disabled")),
        "{json}"
    );
    assert!(
        json["summary"]
            .as_str()
            .unwrap()
            .contains("set enabled to true"),
        "{json}"
    );
    // Nothing reached the proxy or the API.
    assert_eq!(proxy.proc.count("connected from"), 0);
    assert!(api.requests_to("POST", &online()).is_empty());
    assert_eq!(agent.count("switched off"), 1, "said once");

    // Switched on (the web manager writes the file; systemctl reload sends SIGHUP).
    device.write(&proxy, &api, true);
    agent.signal("HUP");
    proxy.wait_agent(1);
    api.wait_for("POST", &online(), 1, SOON);
    assert_eq!(echo_through(proxy.tunnels[0], b"on"), b"on");

    // And off again: the tunnel goes, and the heartbeats stop.
    device.write(&proxy, &api, false);
    agent.signal("HUP");
    agent.wait_for_nth("Meeting is switched off on this device", 2, SOON);
    proxy
        .proc
        .wait_for(&format!("device {KEY} from 127.0.0.1:"), SOON);
    agent.wait_for("Meeting presence: heartbeat off (enabled false", SOON);
}

#[test]
fn the_fleets_60_s_heartbeat_interval_is_capped_with_one_warning() {
    let proxy = Proxy::for_ports(&[echo_server()], &[]);
    let api = FakeApi::start(&[KEY]);
    let device = Device::new("interval");
    device.write(&proxy, &api, true);
    let agent = device.agent();
    let warned = agent.wait_for("heartbeat_interval 60 s", SOON);
    assert!(warned.contains("WARN"), "{warned}");
    assert!(
        warned.contains(&format!("(file {})", device.config())) && warned.ends_with("using 30 s"),
        "{warned}"
    );
    agent.wait_for("Meeting presence: heartbeat to ", SOON);
    assert!(agent.output().contains("every 30 s"), "{}", agent.output());
    assert_eq!(agent.count("heartbeat_interval 60 s"), 1);
}

/// The device record the fake API gives, granting `services`.
fn record(services: &[&str]) -> String {
    serde_json::json!({"device_key": KEY, "authorized": true, "services": services,
                       "token_code": TOKEN})
    .to_string()
}

#[test]
fn the_services_meeting_grants_open_their_ports_and_a_revoked_one_closes_at_the_next_reading() {
    let (ssh, http, other) = (echo_server(), echo_server(), echo_server());
    let proxy = Proxy::for_ports(&[ssh, http, other], &[]);
    let (to_ssh, to_http, to_other) = (proxy.tunnels[0], proxy.tunnels[1], proxy.tunnels[2]);
    let api = FakeApi::start(&[KEY]);
    let path = format!("/api/devices/{KEY}");
    api.answer("GET", &path, 200, &record(&["ssh", "scp", "http", "debug"]));
    let device = Device::new("services");
    // No allowed_ports: Meeting's services decide; their ports are this test's services.
    let v = serde_json::json!({
        "api_url": api.url, "api_ca_file": api.ca_file, "device_key": KEY, "token_code": TOKEN,
        "tunnel_host": "127.0.0.1", "tunnel_port": proxy.control.port(),
        "service_ports": [format!("ssh={ssh}"), format!("scp={ssh}"), format!("http={http}")],
        "services_interval": 1,
    });
    std::fs::write(device.config(), v.to_string()).unwrap();
    let agent = device.agent();
    let granted = agent.wait_for("Meeting grants this device ssh, scp, http, debug", SOON);
    for part in [
        format!("{ssh} (granted by Meeting: ssh, scp)"),
        format!("{http} (granted by Meeting: http)"),
        "(debug without a local port: service_ports maps them)".to_owned(),
    ] {
        assert!(granted.contains(&part), "{part}: {granted}");
    }
    proxy.wait_agent(1);
    assert_eq!(echo_through(to_ssh, b"ssh"), b"ssh");
    assert_eq!(echo_through(to_http, b"http"), b"http");
    // A port no service grants: the proxy cannot open it.
    assert_eq!(echo_through(to_other, b"no"), b"");
    agent.wait_for(
        &format!("refusing channel 3: the proxy asked for local port {other}, which no service"),
        SOON,
    );
    // The status file says which ports are open and why.
    let snap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(device.status_file()).unwrap()).unwrap();
    assert_eq!(
        snap["ports"][http.to_string()],
        "granted by Meeting: http",
        "{snap}"
    );
    let (_, text) = device.status();
    assert!(
        text.contains(&format!("{http} (granted by Meeting: http)")),
        "{text}"
    );
    // check says the same, from its own reading.
    let (_, json) = device.check();
    let api_step = check_step(&json, "api");
    assert!(
        api_step["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("{http} (granted by Meeting: http)")),
        "{api_step}"
    );

    // Meeting revokes http: at the next reading its port closes; ssh goes on.
    api.answer("GET", &path, 200, &record(&["ssh", "scp"]));
    agent.wait_for("Meeting grants this device ssh, scp:", SOON);
    assert_eq!(echo_through(to_http, b"gone"), b"");
    assert_eq!(echo_through(to_ssh, b"still"), b"still");
    // The proxy was never asked: the grant came over verified HTTPS from the API alone.
    assert!(api.requests_to("GET", &path).len() >= 2);
}

/// Meeting's answers in every form they take: `authorized` as 1, services as a map, then as a
/// list of `{name, enabled}`, and `relay`, which reaches the port its operator chose; a form
/// the agent cannot read is said once, naming it, and the last good grant stays.
#[test]
fn every_form_of_meetings_answer_is_read_relay_included_and_an_unreadable_one_keeps_the_grant() {
    let (ssh, relayed, vnc) = (echo_server(), echo_server(), echo_server());
    let proxy = Proxy::for_ports(&[ssh, relayed, vnc], &[]);
    let (to_ssh, to_relayed, to_vnc) = (proxy.tunnels[0], proxy.tunnels[1], proxy.tunnels[2]);
    let api = FakeApi::start(&[KEY]);
    let path = format!("/api/devices/{KEY}");
    let answer = |authorized: serde_json::Value, services: serde_json::Value| {
        let body = serde_json::json!({"device_key": KEY, "authorized": authorized,
                                      "services": services, "token_code": TOKEN});
        api.answer("GET", &path, 200, &body.to_string());
    };
    answer(
        serde_json::json!(1),
        serde_json::json!({"ssh": true, "relay": 1, "vnc": false}),
    );
    let device = Device::new("forms");
    let v = serde_json::json!({
        "api_url": api.url, "api_ca_file": api.ca_file, "device_key": KEY, "token_code": TOKEN,
        "tunnel_host": "127.0.0.1", "tunnel_port": proxy.control.port(),
        "service_ports": [format!("ssh={ssh}"), format!("vnc={vnc}")],
        "services_interval": 1,
    });
    std::fs::write(device.config(), v.to_string()).unwrap();
    let agent = device.agent();
    let granted = agent.wait_for("Meeting grants this device relay, ssh:", SOON);
    assert!(
        granted.contains("and any other port the operator of a relay tunnel chooses"),
        "{granted}"
    );
    proxy.wait_agent(1);
    assert_eq!(echo_through(to_ssh, b"ssh"), b"ssh");
    // The relay's port is whatever the operator chose: here another local service's.
    assert_eq!(echo_through(to_relayed, b"relayed"), b"relayed");

    // The web manager's other form: a list of {name, enabled}. relay goes, vnc comes.
    answer(
        serde_json::json!("true"),
        serde_json::json!([{"name": "ssh", "enabled": true}, {"name": "relay", "enabled": false},
                           {"name": "vnc"}]),
    );
    agent.wait_for("Meeting grants this device ssh, vnc:", SOON);
    assert_eq!(echo_through(to_vnc, b"vnc"), b"vnc");
    assert_eq!(echo_through(to_relayed, b"no"), b"");

    // A form nobody expected: said once, naming it; the grant stays as it was.
    answer(serde_json::json!(true), serde_json::json!("ssh;vnc"));
    let said = agent.wait_for("cannot read the services Meeting grants", SOON);
    assert!(
        said.contains("`services` is a string this agent cannot read: \"ssh;vnc\"")
            && said.contains("the ports stay as they were"),
        "{said}"
    );
    let before = api.requests_to("GET", &path).len();
    api.wait_for("GET", &path, before + 3, SOON);
    assert_eq!(agent.count("cannot read the services Meeting grants"), 1);
    assert_eq!(echo_through(to_ssh, b"still"), b"still");
    assert_eq!(echo_through(to_vnc, b"still"), b"still");
}

/// The web manager beats too, with its own `note`, `ip_address` and `ip_public`: on its device
/// (configured from /etc/rpi-cam/meeting.json) the agent's beats say only that the device is
/// there, so Meeting's record, built from the beats in the order the fake API received them,
/// never alternates between two senders' values.
#[test]
fn where_the_web_manager_beats_too_meetings_record_does_not_alternate() {
    let proxy = Proxy::for_ports(&[echo_server()], &[]);
    let api = FakeApi::start(&[KEY]);
    let dir = std::env::temp_dir().join(format!("tunnel-agent-beats-{}", std::process::id()));
    let file = dir.join("rpi-cam/meeting.json");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let v = serde_json::json!({
        "enabled": true, "api_url": api.url, "device_key": KEY, "token_code": TOKEN,
        "heartbeat_interval": 5, "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(), "api_ca_file": api.ca_file,
        "allowed_ports": proxy.ports,
    });
    std::fs::write(&file, v.to_string()).unwrap();
    let path = format!("/api/devices/{KEY}/online");
    // The web manager's heartbeat, as it sends it, every 300 ms here.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beating = {
        let (stop, url, path) = (stop.clone(), api.http_url.clone(), path.clone());
        std::thread::spawn(move || {
            let addr = url
                .trim_start_matches("http://")
                .split('/')
                .next()
                .unwrap()
                .to_owned();
            let body = r#"{"ip_address":"192.168.1.50","ip_public":"203.0.113.7","note":"RTSP Recorder - Raspberry Pi 3 Model B Rev 1.2 - 192.168.1.50"}"#;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut s = std::net::TcpStream::connect(&addr).unwrap();
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: python-requests/2.28.1\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                std::io::Write::write_all(&mut s, req.as_bytes()).unwrap();
                let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
                std::thread::sleep(std::time::Duration::from_millis(300));
            }
        })
    };
    let agent = Proc::spawn(
        bin("tunnel-agent"),
        &["--config", file.to_str().unwrap(), "--ssh-keys", "false"],
        &[],
    );
    proxy.wait_agent(1);
    // The agent beats at start, after the handshake and every 5 s: wait for three of them.
    let deadline = std::time::Instant::now() + SOON;
    let from_agent = |r: &support::fake_api::Request| {
        r.header("user-agent")
            .is_some_and(|u| u.starts_with("tunnel-agent/"))
    };
    while api
        .requests_to("POST", &path)
        .iter()
        .filter(|r| from_agent(r))
        .count()
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "{}", agent.output());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    beating.join().unwrap();
    let beats = api.requests_to("POST", &path);
    // Meeting's record as the beats leave it, member by member, after each beat.
    let mut record = serde_json::Map::new();
    let mut seen: Vec<(String, String)> = Vec::new();
    for beat in &beats {
        let body = beat.json();
        let members = body.as_object().unwrap();
        if from_agent(beat) {
            for m in ["note", "ip_address", "ip_lan", "ip_public", "mac"] {
                assert!(!members.contains_key(m), "the agent's beat has {m}: {body}");
            }
        }
        for (k, v) in members {
            record.insert(k.clone(), v.clone());
        }
        for m in ["note", "ip_address", "ip_public"] {
            if let Some(v) = record.get(m) {
                let v = v.to_string();
                match seen.iter().find(|(k, _)| k == m) {
                    Some((_, first)) => assert_eq!(&v, first, "{m} changed: {beats:?}"),
                    None => seen.push((m.to_owned(), v)),
                }
            }
        }
    }
    let agents = beats.iter().filter(|r| from_agent(r)).count();
    assert!(
        agents >= 3 && beats.len() > agents,
        "{agents} of {} beats",
        beats.len()
    );
    assert_eq!(
        record["note"],
        "RTSP Recorder - Raspberry Pi 3 Model B Rev 1.2 - 192.168.1.50"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
