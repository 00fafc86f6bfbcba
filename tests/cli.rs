//! The agent's command line and configuration, through the real binary.

mod support;

use std::path::PathBuf;

use support::*;

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Tmp {
        let p =
            std::env::temp_dir().join(format!("tunnel-agent-cli-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn exit_of(mut p: Proc) -> (i32, String) {
    let status = p.wait_exit(SOON).expect("agent did not exit");
    (status.code().unwrap_or(-1), p.output())
}

#[test]
fn missing_device_key_exits_2_listing_every_place() {
    let t = Tmp::new("nokey");
    let cfg = t.file("c.json", r#"{"token_code": "abc"}"#);
    let (code, out) = exit_of(Proc::spawn(bin("tunnel-agent"), &["--config", &cfg], &[]));
    assert_eq!(code, 2, "{out}");
    for place in [
        "--device-key",
        "MEETING_DEVICE_KEY",
        cfg.as_str(),
        "/etc/meeting/device_info.json",
    ] {
        assert!(out.contains(place), "{place} not listed:\n{out}");
    }
}

#[test]
fn missing_token_exits_2_listing_every_place() {
    let t = Tmp::new("notoken");
    let cfg = t.file("c.json", &format!(r#"{{"device_key": "{KEY}"}}"#));
    let (code, out) = exit_of(Proc::spawn(bin("tunnel-agent"), &["--config", &cfg], &[]));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("no token configured"), "{out}");
    assert!(out.contains("MEETING_TOKEN") && out.contains(&cfg), "{out}");
}

#[test]
fn malformed_file_exits_2_naming_file_line_and_column() {
    let t = Tmp::new("malformed");
    let cfg = t.file(
        "meeting.json",
        "{\n  \"device_key\": \"K\",\n  \"tunnel_port\": 9001,,\n}\n",
    );
    let (code, out) = exit_of(Proc::spawn(bin("tunnel-agent"), &["--config", &cfg], &[]));
    assert_eq!(code, 2, "{out}");
    assert!(out.contains(&format!("{cfg}:3:23")), "{out}");
}

#[test]
fn token_flag_is_refused_with_the_reason() {
    let (code, out) = exit_of(Proc::spawn(bin("tunnel-agent"), &["--token", "x"], &[]));
    assert_eq!(code, 2);
    assert!(out.contains("visible to every local user"), "{out}");
}

#[test]
fn a_deployed_meeting_json_works_unchanged() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let t = Tmp::new("deployed");
    // As deployed, but the API is the suite's fake (on loopback, with its own CA).
    let api = FakeApi::start(&[KEY]);
    let cfg = t.file(
        "meeting.json",
        &format!(
            r#"{{
  "device_key": "{KEY}",
  "token_code": "{TOKEN}",
  "tunnel_host": "127.0.0.1",
  "tunnel_port": {},
  "tunnel_ssl": false,
  "api_url": "{}",
  "api_ca_file": "{}",
  "heartbeat_interval": 60,
  "allowed_ports": [{}],
  "status_file": "",
  "camera": {{"fps": 25}}
}}"#,
            proxy.control.port(),
            api.url,
            api.ca_file.display(),
            echo
        ),
    );
    let agent = Proc::spawn(bin("tunnel-agent"), &["--config", &cfg], &[]);
    proxy.wait_agent(1);
    assert_eq!(
        echo_through(proxy.tunnels[0], b"from meeting.json"),
        b"from meeting.json"
    );
    agent.wait_for(&format!("config {cfg}"), SOON);
    agent.wait_for("heartbeat to https://127.0.0.1", SOON);
    api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON);
    assert!(!agent.output().contains(TOKEN));
}

#[test]
fn environment_overrides_the_file_and_flags_override_both() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let t = Tmp::new("priority");
    let cfg = t.file(
        "c.json",
        &format!(r#"{{"device_key": "{KEY}", "token_code": "wrong", "tunnel_host": "127.0.0.1", "tunnel_port": 9}}"#),
    );
    let port = proxy.control.port().to_string();
    let agent = Proc::spawn(
        bin("tunnel-agent"),
        &["--config", &cfg, "--port", &port, "--status-file", ""],
        &[("MEETING_TOKEN", TOKEN), ("MEETING_TUNNEL_PORT", "10")],
    );
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
}

#[test]
fn version_and_help() {
    let out = std::process::Command::new(bin("tunnel-agent"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tunnel-agent "));
    let out = std::process::Command::new(bin("tunnel-agent"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("MEETING_TOKEN"));
}

/// The README's full configuration and the installed example both load as they are, and have
/// the same keys; no command line in the README carries a token.
#[test]
fn the_readme_configuration_and_the_example_load_and_agree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let at = readme
        .find("The full file a Meeting device needs:")
        .expect("the README shows a full configuration");
    let start = at + readme[at..].find("{").unwrap();
    let end = start + readme[start..].find("```").unwrap();
    let documented = &readme[start..end];
    let example = std::fs::read_to_string(format!(
        "{root}/buildroot/package/tunnel-agent/config.json.example"
    ))
    .unwrap();
    let keys = |text: &str| -> Vec<String> {
        let v: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(documented), keys(&example));
    let t = Tmp::new("readme-config");
    for text in [documented, example.as_str()] {
        let file = t.file("config.json", text);
        let mut flags = tunnel_agent::config::Flags::default();
        flags.config = Some(file.into());
        let none = |_: &str| None;
        tunnel_agent::config::load(&flags, &none, &tunnel_agent::config::SearchPaths::default())
            .unwrap_or_else(|e| panic!("{e}:\n{text}"));
    }
    for line in readme.lines() {
        assert!(
            !line.contains("MEETING_TOKEN=") || line.contains("$("),
            "a token typed on a command line: {line}"
        );
    }
}

/// Every command that prints, into a pipe whose reader is already gone (a watchdog's
/// `| grep -q` or `| head -1`): it ends quietly, never with a panic (exit 134).
#[test]
fn printing_commands_exit_quietly_into_a_closed_pipe() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let status_file =
        std::env::temp_dir().join(format!("tunnel-agent-pipe-{}.json", std::process::id()));
    let sf = status_file.display().to_string();
    let agent = proxy.agent(&["--status-file", &sf]);
    agent.wait_for("tunnel ready", SOON);
    // The status file says connected (it is written right after the log line).
    let deadline = std::time::Instant::now() + SOON;
    while !std::process::Command::new(bin("tunnel-agent"))
        .args(["status", "--status-file", &sf])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the status file never said connected"
        );
    }
    let closed = closed_port().to_string();
    let target = [
        "--host",
        "127.0.0.1",
        "--port",
        &closed,
        "--device-key",
        KEY,
    ];
    let commands: Vec<Vec<&str>> = vec![
        vec!["status", "--status-file", &sf],
        vec!["status", "--json", "--status-file", &sf],
        [&["check", "--json", "--timeout", "1"][..], &target].concat(),
        [&["check"][..], &target].concat(),
        vec!["--help"],
        vec!["--version"],
    ];
    for round in 0..10 {
        for args in &commands {
            let mut child = std::process::Command::new(bin("tunnel-agent"))
                .args(args)
                .env("MEETING_TOKEN", TOKEN)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            drop(child.stdout.take()); // the reader goes away before a byte is written
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.code().is_some_and(|c| c != 134)
                    && !err.contains("panicked")
                    && !err.contains("Is tunnel-agent running"),
                "round {round}, {args:?}: {:?} {err}",
                out.status
            );
        }
    }
    let _ = std::fs::remove_file(&status_file);
}
