//! `tunnel-agent check`: every verdict produced by a real situation on loopback, asserted on
//! the exit status, the JSON verdict and the key facts in the text and Markdown outputs.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;

use serde_json::Value;
use support::*;

/// A loopback server that answers every connection by calling `f`.
fn serve(f: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let f = Arc::new(f);
    thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            let f = f.clone();
            thread::spawn(move || f(c));
        }
    });
    addr
}

/// A fake proxy that reads the handshake line and answers `reply`, then closes.
fn replies(reply: &'static [u8]) -> SocketAddr {
    serve(move |mut c| {
        let mut line = String::new();
        let _ = BufReader::new(c.try_clone().unwrap()).read_line(&mut line);
        let _ = c.write_all(reply);
    })
}

/// A service that greets like sshd.
fn fake_sshd() -> u16 {
    serve(|mut c| {
        let _ = c.write_all(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n");
        let _ = c.read(&mut [0u8; 64]);
    })
    .port()
}

/// A loopback port that drops SYNs: listen backlog 0, already full.
fn black_hole() -> (SocketAddr, socket2::Socket, TcpStream) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    (addr, s, filler)
}

/// The suite's fake Meeting API (HTTPS) answering the device record with `status`/`body`, and
/// showing the device Available.
fn fake_api(status: u16, body: &str) -> FakeApi {
    let api = FakeApi::start(&[KEY]);
    api.answer("GET", &format!("/api/devices/{KEY}"), status, body);
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}/availability"),
        200,
        AVAILABLE,
    );
    api
}

const AVAILABLE: &str = r#"{"status":"Available","last_heartbeat":"2026-11-25 07:00:00","since":"2026-11-25 06:00:00","uptime":3600}"#;
const AUTHORIZED: &str = r#"{"device_key":"3316A52EB08837267BF6BD3E2B2E8DC7","authorized":true,"services":["ssh","scp","debug"]}"#;
const UNAUTHORIZED: &str =
    r#"{"device_key":"3316A52EB08837267BF6BD3E2B2E8DC7","authorized":false,"services":["ssh"]}"#;

/// A situation to check.
struct Setup {
    host: String,
    port: u16,
    api: Option<String>,
    api_ca: Option<PathBuf>,
    local: u16,
    timeout: &'static str,
    /// Members for Meeting's terminal login (default: no login user, the step is skipped).
    login: Value,
}

impl Setup {
    fn new(proxy: SocketAddr, local: u16) -> Setup {
        Setup {
            host: "127.0.0.1".into(),
            port: proxy.port(),
            api: None,
            api_ca: None,
            local,
            timeout: "1",
            login: serde_json::json!({"meeting_ssh_user": ""}),
        }
    }
}

/// The three outputs of one situation.
struct Outcome {
    code: i32,
    json: Value,
    text: String,
    report: String,
}

impl Outcome {
    fn verdict(&self) -> &str {
        self.json["verdict"].as_str().unwrap()
    }
    fn step(&self, name: &str) -> &Value {
        self.json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step {name} in {}", self.json))
    }
    fn assert(&self, verdict: &str, code: i32, facts: &[&str]) {
        assert_eq!(self.verdict(), verdict, "{}", self.text);
        assert_eq!(self.code, code, "{}", self.text);
        assert_eq!(self.json["exit_code"], code);
        for f in facts {
            assert!(self.text.contains(f), "text lacks {f:?}:\n{}", self.text);
            assert!(
                self.report.contains(f),
                "report lacks {f:?}:\n{}",
                self.report
            );
        }
        for out in [&self.text, &self.report, &self.json.to_string()] {
            assert!(!out.contains(TOKEN), "token leaked:\n{out}");
        }
        self.assert_questions_are_true();
    }

    /// Asserts the Markdown report holds `want`.
    fn report_has(&self, want: &str) {
        assert!(
            self.report.contains(want),
            "{want:?} missing:\n{}",
            self.report
        );
    }

    /// The report's questions for the Meeting team.
    fn questions(&self) -> &str {
        let at = self
            .report
            .find("## Questions for the Meeting team")
            .expect("no questions section");
        &self.report[at..]
    }

    /// What every verdict's questions must not claim falsely.
    fn assert_questions_are_true(&self) {
        let q = self.questions();
        let verdict = self.verdict();
        if self.step("api")["status"] == "skipped" {
            assert!(
                !q.contains("api step") && !q.contains("below"),
                "{verdict}: {q}"
            );
        }
        if verdict != "ok" {
            assert!(
                !q.contains("looks right") && !q.contains("every step passed"),
                "{verdict}: {q}"
            );
        }
        if verdict != "silently_rejected" {
            assert!(
                !q.contains("without a byte") && !q.contains("without an error line"),
                "{verdict}: {q}"
            );
        }
        let handshake_sent = self.step("handshake")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("sent to");
        if !handshake_sent {
            assert!(
                !q.contains("proxy log"),
                "{verdict}: no handshake was sent: {q}"
            );
        }
    }
}

fn check(s: &Setup) -> Outcome {
    let dir = std::env::temp_dir().join(format!(
        "tunnel-agent-check-{}-{}",
        std::process::id(),
        s.port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg: PathBuf = dir.join("meeting.json");
    let mut v = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN, "tunnel_host": s.host, "tunnel_port": s.port,
        "allowed_ports": [s.local],
    });
    if let Some(api) = &s.api {
        v["api_url"] = api.clone().into();
    }
    if let Some(ca) = &s.api_ca {
        v["api_ca_file"] = ca.display().to_string().into();
    }
    for (k, val) in s.login.as_object().unwrap() {
        v[k] = val.clone();
    }
    std::fs::write(&cfg, v.to_string()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = outcome_of(&cfg, s.timeout);
    let _ = std::fs::remove_dir_all(&dir);
    o
}

/// Runs check on the configuration `cfg` in its three output forms.
fn outcome_of(cfg: &std::path::Path, timeout: &str) -> Outcome {
    let run = |extra: &[&str]| {
        let out = Command::new(bin("tunnel-agent"))
            .args(["check", "--timeout", timeout, "--config"])
            .arg(cfg)
            .args(extra)
            .env_remove("MEETING_TOKEN")
            .env_remove("MEETING_DEVICE_KEY")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, json) = run(&["--json"]);
    let (tcode, text) = run(&[]);
    let (_, report) = run(&["--report"]);
    assert_eq!(
        code, tcode,
        "the exit status does not depend on the output form"
    );
    Outcome {
        code,
        json: serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}")),
        text,
        report,
    }
}

#[test]
fn ok_when_everything_works() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let api = fake_api(200, AUTHORIZED);
    let mut s = Setup::new(proxy.control, fake_sshd());
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    let o = check(&s);
    o.assert("ok", 0, &["SSH-2.0-OpenSSH_9.2p1", "authorized: true", KEY]);
    assert_eq!(o.step("handshake")["status"], "pass");
    assert_eq!(o.step("api")["status"], "pass");
    assert_eq!(o.step("presence")["status"], "pass");
    let seen = api.requests_to("GET", &format!("/api/devices/{KEY}"));
    assert_eq!(seen[0].header("x-token-code"), Some(TOKEN));
    // The token goes only into that header: not into the presence request.
    for r in api.requests_to("GET", &format!("/api/devices/{KEY}/availability")) {
        assert!(r.header("x-token-code").is_none(), "{r:?}");
        assert!(!format!("{r:?}").contains(TOKEN), "{r:?}");
    }
}

#[test]
fn accepted_but_disconnected_in_meeting_says_why() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let api = FakeApi::start(&[KEY]);
    let mut s = Setup::new(proxy.control, fake_sshd());
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    // No agent runs, so nothing sends heartbeats: the fake shows the device Disconnected.
    let o = check(&s);
    o.assert(
        "offline_in_meeting",
        6,
        &[
            "Meeting shows it Disconnected",
            "no running tunnel-agent was found",
        ],
    );
    assert_eq!(o.step("presence")["status"], "fail");
}

#[test]
fn the_field_report_is_silently_rejected() {
    let proxy = Proxy::start(&[
        "--device",
        &format!("{KEY}={TOKEN}"),
        "--reply",
        "silent-close",
    ]);
    let api = fake_api(200, AUTHORIZED);
    let mut s = Setup::new(proxy.control, fake_sshd());
    // Configured without the trailing /api, as some devices have it.
    s.api = Some(api.url.trim_end_matches("/api").to_owned());
    s.api_ca = Some(api.ca_file.clone());
    let o = check(&s);
    o.assert(
        "silently_rejected",
        3,
        &[
            "proxy's own validation rejected device key",
            KEY,
            "0 bytes",
            "ask the Meeting team",
        ],
    );
    assert!(
        o.json["summary"].as_str().unwrap().contains("authorized"),
        "{}",
        o.json
    );
    // The one cause Meeting's own documents leave open: which token the handshake carries.
    assert!(
        o.json["summary"]
            .as_str()
            .unwrap()
            .contains("control token"),
        "{}",
        o.json
    );
    let q = o.questions();
    assert!(
        q.contains("without a byte") && q.contains("control token"),
        "{q}"
    );
    assert!(
        q.contains("the api step under Device-side verifications"),
        "the API was asked: {q}"
    );
    assert_eq!(
        api.requests_to("GET", &format!("/api/devices/{KEY}")).len(),
        3
    );
    // The report has the field report's shape, with the masked token.
    let token_masked = format!("{}****", &TOKEN[..2]);
    for section in [
        "## Summary",
        "## Environment",
        "## Observed behaviour",
        "## Device-side verifications",
        "## Expected behaviour",
        "## Questions for the Meeting team",
    ] {
        o.report_has(section);
    }
    o.report_has(&format!("**Token:** {token_masked}"));
    assert!(
        o.report.contains(&format!(
            "{{\"token\": \"{token_masked}\", \"name\": \"{KEY}\"}}\\n"
        )),
        "{}",
        o.report
    );
}

#[test]
fn rejected_with_the_servers_reason() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}=another")]);
    let o = check(&Setup::new(proxy.control, fake_sshd()));
    o.assert("rejected", 3, &["\"wrong token\""]);
    // The questions quote the reason received, and ask nothing of a silent close.
    assert!(
        o.questions().contains("saying \"wrong token\""),
        "{}",
        o.questions()
    );
}

#[test]
fn the_api_names_an_unknown_or_unauthorized_device() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}=another")]);
    let api = fake_api(404, r#"{"error":"Device not found"}"#);
    let mut s = Setup::new(proxy.control, fake_sshd());
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    check(&s).assert("device_unknown", 4, &["HTTP 404", KEY]);

    let proxy = Proxy::start(&[
        "--device",
        &format!("{KEY}={TOKEN}"),
        "--reply",
        "silent-close",
    ]);
    let api = fake_api(200, UNAUTHORIZED);
    let mut s = Setup::new(proxy.control, fake_sshd());
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    check(&s).assert("device_not_authorized", 4, &["authorized: false"]);
}

#[test]
fn ssh_missing_from_services_is_its_own_finding() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let api = fake_api(200, r#"{"authorized":true,"services":["vnc"]}"#);
    let mut s = Setup::new(proxy.control, fake_sshd());
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    let o = check(&s);
    o.assert("ok", 0, &["ssh is not among the device's services"]);
    assert_eq!(o.step("api")["status"], "warn");
}

#[test]
fn local_service_down() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let closed = closed_port();
    let o = check(&Setup::new(proxy.control, closed));
    o.assert("local_service_down", 5, &[&format!("127.0.0.1:{closed}")]);
    assert_eq!(o.step(&format!("local:{closed}"))["status"], "fail");
    // Not the SSH port: generic advice naming the port, no systemctl for a service we cannot name.
    let want = format!("nothing listens on 127.0.0.1:{closed}: start the service that should");
    assert_eq!(o.step(&format!("local:{closed}"))["hint"], want.as_str());
    assert!(
        o.json["summary"].as_str().unwrap().contains(&want),
        "{}",
        o.json
    );
    assert!(!o.text.contains("systemctl"), "{}", o.text);
    assert!(
        o.questions().contains("the fault found is on the device"),
        "{}",
        o.questions()
    );
}

#[test]
fn no_reply_from_an_older_proxy() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}"), "--reply", "none"]);
    let o = check(&Setup::new(proxy.control, fake_sshd()));
    o.assert("no_reply", 0, &["no reply within 1 s"]);
    assert_eq!(o.step("handshake")["status"], "warn");
}

#[test]
fn a_listener_that_never_answers_is_no_reply_too() {
    let silent = serve(|c| {
        let _ = (&c).read(&mut [0u8; 4096]);
        let _ = (&c).read(&mut [0u8; 1]);
    });
    check(&Setup::new(silent, fake_sshd())).assert("no_reply", 0, &["connection stays open"]);
}

#[test]
fn http_is_not_a_meeting_proxy() {
    let http = replies(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n\r\n");
    check(&Setup::new(http, fake_sshd())).assert(
        "not_meeting_proxy",
        2,
        &["HTTP/1.1 400 Bad Request"],
    );
}

#[test]
fn tls_bytes_are_a_tls_mismatch() {
    let tls = replies(&[0x16, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28]);
    check(&Setup::new(tls, fake_sshd())).assert(
        "tls_mismatch",
        2,
        &["\\x16\\x03\\x03", "tunnel_ssl"],
    );
}

#[test]
fn connect_refused_and_timeout_are_different_failures() {
    let closed: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    check(&Setup::new(closed, fake_sshd())).assert("connect_refused", 2, &["refused"]);
    let (hole, _listener, _filler) = black_hole();
    check(&Setup::new(hole, fake_sshd())).assert("connect_timeout", 2, &["timed out"]);
}

/// The name's first label is over 63 characters, so the resolver refuses it itself: no DNS
/// query leaves the machine.
#[test]
fn a_name_that_does_not_resolve() {
    let mut s = Setup::new("127.0.0.1:9001".parse().unwrap(), fake_sshd());
    s.host = format!("{}.meeting-proxy.invalid", "x".repeat(64));
    check(&s).assert(
        "dns_failed",
        2,
        &["meeting-proxy.invalid", "/etc/resolv.conf", "tunnel_host"],
    );
}

#[test]
fn configuration_errors_exit_1() {
    let out = Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--config", "/nonexistent/meeting.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "config_error");
    assert!(v["summary"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/meeting.json"));
}

#[test]
fn a_configuration_error_shows_every_value_found_next_to_what_is_missing() {
    let dir = std::env::temp_dir().join(format!("tunnel-agent-notoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("meeting.json");
    let v = serde_json::json!({
        "device_key": KEY, "tunnel_host": "127.0.0.1", "tunnel_port": 9100,
        "allowed_ports": [22, 5900],
    });
    std::fs::write(&cfg, v.to_string()).unwrap();
    let o = outcome_of(&cfg, "1");
    let file = format!("file {}", cfg.display());
    o.assert(
        "config_error",
        1,
        &["no token configured", KEY, "127.0.0.1:9100"],
    );
    let detail = o.step("config")["detail"].as_str().unwrap();
    for want in [
        format!("device_key {KEY} ({file})"),
        format!("tunnel_host 127.0.0.1 ({file})"),
        format!("tunnel_port 9100 ({file})"),
        format!("allowed_ports 22, 5900 ({file})"),
    ] {
        assert!(detail.contains(&want), "{want} missing from: {detail}");
    }
    assert!(
        o.text.starts_with(&format!(
            "tunnel-agent check: device {KEY}, proxy 127.0.0.1:9100"
        )),
        "{}",
        o.text
    );
    o.report_has(&format!("**Device key:** {KEY}"));
    o.report_has("**Token:** (not configured)");
    assert!(o.questions().contains("None yet"), "{}", o.questions());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_token_file_readable_by_others_is_a_warning_with_the_fix() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let dir = std::env::temp_dir().join(format!("tunnel-agent-perm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("meeting.json");
    std::fs::write(
        &cfg,
        format!(r#"{{"device_key":"{KEY}","token_code":"{TOKEN}","tunnel_host":"127.0.0.1","tunnel_port":{},"allowed_ports":[{}]}}"#, proxy.control.port(), fake_sshd()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(bin("tunnel-agent"))
        .arg("check")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARN  config"), "{text}");
    assert!(
        text.contains(&format!("chmod 600 {}", cfg.display())),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The user running the tests: (name, home) from the password database.
fn login_user() -> (String, PathBuf) {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let f: Vec<&str> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2] == uid.to_string())
        .expect("the test user in /etc/passwd");
    (f[0].to_owned(), PathBuf::from(f[5]))
}

const MEETING_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl meeting";

#[test]
fn meetings_terminal_login_user_key_modes_and_sshd() {
    use std::os::unix::fs::PermissionsExt;
    let (user, home) = login_user();
    // Inside the user's home, as ~/.ssh is: sshd's StrictModes walk stops there.
    let dir = home.join(format!(".tunnel-agent-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let file = dir.join("authorized_keys");
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let api = fake_api(200, AUTHORIZED);
    api.serve_meeting_key(
        MEETING_KEY,
        Some("SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"),
    );
    let sshd = fake_sshd();
    let mut s = Setup::new(proxy.control, sshd);
    s.api = Some(api.url.clone());
    s.api_ca = Some(api.ca_file.clone());
    let login = |user: &str, port: u16| {
        serde_json::json!({
            "meeting_ssh_user": user, "authorized_keys_file": file.display().to_string(),
            "ssh_port": port,
        })
    };
    s.login = login(&user, sshd);

    std::fs::write(
        &file,
        format!("ssh-rsa AAAA other\nfrom=\"127.0.0.1,::1\" {MEETING_KEY}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let o = check(&s);
    o.assert(
        "ok",
        0,
        &["holds Meeting's key SHA256:+DiY3wvvV6TuJJhbpZisF"],
    );
    assert_eq!(o.step("ssh-login")["status"], "pass");

    // The web manager's "install key" appended Meeting's key as it is: said, with the file and
    // the line, and left in place.
    let both = format!(
        "ssh-rsa AAAA other\nfrom=\"127.0.0.1,::1\" {MEETING_KEY}\n{MEETING_KEY} web-manager\n"
    );
    std::fs::write(&file, &both).unwrap();
    let o = check(&s);
    o.assert(
        "ok",
        0,
        &["holds Meeting's key SHA256:+DiY3wvvV6TuJJhbpZisF"],
    );
    let step = o.step("ssh-login");
    assert_eq!(step["status"], "warn", "{step}");
    let detail = step["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "Meeting's key is also in {} line 3 without a restriction",
            file.display()
        )),
        "{detail}"
    );
    assert!(
        step["hint"]
            .as_str()
            .unwrap()
            .contains("delete the line named"),
        "{step}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        both,
        "never rewritten"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    check(&s).assert("login_file_modes", 7, &["mode 0666", "StrictModes"]);

    std::fs::write(&file, "ssh-rsa AAAA other\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    check(&s).assert(
        "meeting_key_missing",
        7,
        &["lacks Meeting's current key", "tunnel-agent keys"],
    );

    s.login = login("no-such-user-x", sshd);
    check(&s).assert(
        "login_user_missing",
        7,
        &["\"no-such-user-x\"", "meeting_ssh_user"],
    );

    s.login = login(&user, echo_server());
    check(&s).assert("ssh_not_answering", 7, &["no SSH banner", "start sshd"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes `data` to `s` and reads it back (an echo behind the tunnel).
fn round_trip(s: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(data)?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

#[test]
fn a_connected_agent_is_left_alone_and_its_state_is_the_handshake_evidence() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let dir = std::env::temp_dir().join(format!("tunnel-agent-live-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status = dir.join("status.json");
    let sf = status.display().to_string();
    let agent = proxy.agent(&["--status-file", &sf]);
    agent.wait_for("tunnel ready", SOON);
    proxy.wait_agent(1);
    // An operator's session through the tunnel, open while check runs.
    let mut session = TcpStream::connect(proxy.tunnels[0]).unwrap();
    session.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(round_trip(&mut session, b"before").unwrap(), b"before");

    let cfg = dir.join("meeting.json");
    let v = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN, "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(), "allowed_ports": [echo], "status_file": sf,
        "meeting_ssh_user": "",
    });
    std::fs::write(&cfg, v.to_string()).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(bin("tunnel-agent"))
            .args(["check", "--json", "--timeout", "2", "--config"])
            .arg(&cfg)
            .args(extra)
            .env_remove("MEETING_TOKEN")
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        (
            out.status.code(),
            json,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let step = |json: &Value| {
        json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "handshake")
            .unwrap()
            .clone()
    };

    let (code, json, _) = run(&[]);
    assert_eq!(
        (code, json["verdict"].as_str()),
        (Some(0), Some("ok")),
        "{json}"
    );
    let hs = step(&json);
    let detail = hs["detail"].as_str().unwrap();
    assert_eq!(hs["status"], "pass", "{hs}");
    assert!(
        detail.starts_with("not sent")
            && detail.contains(&format!("pid {}", agent.pid()))
            && detail.contains(&format!("connected to 127.0.0.1:{}", proxy.control.port())),
        "{detail}"
    );
    assert!(hs["hint"].as_str().unwrap().contains("--handshake"), "{hs}");
    // The running agent kept its connection: the session still echoes, the proxy saw no
    // second authentication, the agent lost nothing.
    assert_eq!(round_trip(&mut session, b"after").unwrap(), b"after");
    assert_eq!(
        proxy.proc.count("replaces the one from"),
        0,
        "{}",
        proxy.proc.output()
    );
    assert_eq!(agent.count("connection lost"), 0, "{}", agent.output());
    assert_eq!(
        agent.count("replaced this connection"),
        0,
        "{}",
        agent.output()
    );

    // --handshake: warned, and the proxy hands the device's connection to check.
    let (_, json, stderr) = run(&["--handshake"]);
    assert!(
        stderr.contains("drops its connection and every tunnel"),
        "{stderr}"
    );
    let detail = step(&json)["detail"].as_str().unwrap().to_owned();
    assert!(detail.starts_with("forced with --handshake"), "{detail}");
    proxy.proc.wait_for("replaces the one from", SOON);
    assert!(
        round_trip(&mut session, b"gone").is_err(),
        "the session survived a second handshake"
    );
    // The agent remakes its connection.
    proxy.wait_agent(3);
    let _ = std::fs::remove_dir_all(&dir);
}
