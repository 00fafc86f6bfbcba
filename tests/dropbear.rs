//! Meeting's terminal on a device whose SSH server is Dropbear (Buildroot's default, Debian's
//! `dropbear-bin`): the agent writes Meeting's key in a line Dropbear accepts, kept useless
//! from the LAN by the `ssh-gate` forced command; Meeting's key logs in through the tunnel; and
//! `check` names the server and tells whether the line as written would be accepted, the
//! field's `from=` line included.
//!
//! Each login test runs against two Dropbears: Debian's `dropbear-bin` and Dropbear as
//! Buildroot's package builds it (`make dropbear-buildroot`: Buildroot's configure options and
//! localoptions.h with its defaults, from the newest upstream release in Debian's archive).
//!
//! Needs root, Dropbear, OpenSSH's client and the user `tunnel-test` (`.ci/run` creates it):
//! Dropbear reads only `~/.ssh/authorized_keys`, so the test logs in as a user of its own; the
//! tests that log in take turns (one lock), as they share that file.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use support::*;

const USER: &str = "tunnel-test";

/// One Dropbear build: its server and key generator.
struct Dropbear {
    /// A word for file names and messages.
    label: &'static str,
    server: &'static str,
    keygen: &'static str,
}

/// Debian's dropbear-bin, on PATH.
const DEBIAN: Dropbear = Dropbear {
    label: "debian",
    server: "dropbear",
    keygen: "dropbearkey",
};

/// Dropbear as Buildroot's package builds it (`make dropbear-buildroot`).
const BUILDROOT: Dropbear = Dropbear {
    label: "buildroot",
    server: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/dropbear-buildroot/dropbear"
    ),
    keygen: concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/target/dropbear-buildroot/dropbearkey"
    ),
};

/// The login tests share the test user's authorized_keys: one at a time.
static LOGINS: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn needs(test: &str, db: &Dropbear) -> bool {
    let package = match db.label {
        "debian" => "dropbear-bin",
        _ => "none: `make dropbear-buildroot` builds it",
    };
    may_run(
        test,
        &[
            Need::Root,
            Need::User(USER),
            tool(db.server, package),
            tool(db.keygen, package),
            tool("ssh", "openssh-client"),
            tool("scp", "openssh-client"),
            tool("ssh-keygen", "openssh-client"),
        ],
    )
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn home(user: &str) -> PathBuf {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.split(':').next() == Some(user))
        .unwrap_or_else(|| panic!("{user} not in /etc/passwd"));
    PathBuf::from(line.split(':').nth(5).unwrap())
}

/// Dropbear on 127.0.0.1:`port`, logging to stderr, password logins off; returns once it
/// sends its banner (polling the port: Dropbear logs nothing when it starts to listen).
fn start_dropbear(db: &Dropbear, dir: &Path) -> (Proc, u16) {
    let hostkey = dir.join("dropbear_ed25519");
    let out = run(Command::new(db.keygen)
        .args(["-t", "ed25519", "-f"])
        .arg(&hostkey));
    assert!(out.status.success(), "{out:?}");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let key = hostkey.display().to_string();
    let server = Proc::spawn(
        db.server,
        &["-F", "-E", "-s", "-p", &listen, "-r", &key],
        &[],
    );
    let until = Instant::now() + SOON;
    loop {
        let banner = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(SOON))?;
            let mut b = [0u8; 4];
            s.read_exact(&mut b).map(|()| b)
        });
        if matches!(banner, Ok(b) if &b == b"SSH-") {
            return (server, port);
        }
        assert!(
            Instant::now() < until,
            "dropbear did not answer: {}",
            server.output()
        );
        // Polling a port: Dropbear says nothing when it starts listening.
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The configuration the device runs with: the fake API, Dropbear's port as `ssh_port`,
/// Meeting's key for `tunnel-test`, nothing else of the key work; the heartbeat on, so Meeting
/// shows the device online and the verdict is about the login.
fn config(dir: &Path, api: &FakeApi, ssh_port: u16, proxy: std::net::SocketAddr) -> PathBuf {
    let file = dir.join("config.json");
    let v = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN,
        "tunnel_host": "127.0.0.1", "tunnel_port": proxy.port(),
        "api_url": api.url, "api_ca_file": api.ca_file.display().to_string(),
        "heartbeat": true, "ssh_keys": true, "meeting_ssh_user": USER, "ssh_port": ssh_port,
        "device_ssh_key": "", "known_hosts_file": "",
        "state_dir": dir.join("state").display().to_string(), "status_file": "",
        "allowed_ports": [ssh_port],
    });
    std::fs::write(&file, v.to_string()).unwrap();
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    file
}

/// `tunnel-agent check --json --config FILE`: exit code and the report.
fn check(config: &Path) -> (i32, serde_json::Value) {
    let out = run(Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--timeout", "5", "--config"])
        .arg(config));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn login_step(report: &serde_json::Value) -> serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ssh-login")
        .unwrap()
        .clone()
}

#[test]
fn meetings_terminal_logs_in_to_debians_dropbear_and_check_tells_the_truth() {
    if needs(
        "meetings_terminal_logs_in_to_debians_dropbear_and_check_tells_the_truth",
        &DEBIAN,
    ) {
        logs_in_and_check_tells_the_truth(&DEBIAN);
    }
}

#[test]
fn meetings_terminal_logs_in_to_buildroots_dropbear_and_check_tells_the_truth() {
    if needs(
        "meetings_terminal_logs_in_to_buildroots_dropbear_and_check_tells_the_truth",
        &BUILDROOT,
    ) {
        logs_in_and_check_tells_the_truth(&BUILDROOT);
    }
}

fn logs_in_and_check_tells_the_truth(db: &Dropbear) {
    let _turn = LOGINS.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Dir(std::env::temp_dir().join(format!(
        "tunnel-agent-dropbear-{}-{}",
        db.label,
        std::process::id()
    )));
    let d = &dir.0;
    std::fs::create_dir_all(d.join("state")).unwrap();
    let ssh_dir = home(USER).join(".ssh");
    let _ = std::fs::remove_dir_all(&ssh_dir);
    let (mut dropbear, port) = start_dropbear(db, d);
    // Meeting's key: made here, served by the fake API.
    let meeting = d.join("meeting");
    let out = run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&meeting));
    assert!(out.status.success(), "{out:?}");
    let meeting_pub = std::fs::read_to_string(d.join("meeting.pub")).unwrap();
    let api = FakeApi::start(&[KEY]);
    api.serve_meeting_key(meeting_pub.trim(), None);
    let proxy = Proxy::for_ports(&[port], &[]);
    let cfg = config(d, &api, port, proxy.control);

    // The key work as the service runs it before the agent: the line Dropbear accepts.
    let out = run(Command::new(bin("tunnel-agent"))
        .arg("keys")
        .arg("--config")
        .arg(&cfg));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("Dropbear") && said.contains("ssh-gate"),
        "{said}"
    );
    let ak = ssh_dir.join("authorized_keys");
    let text = std::fs::read_to_string(&ak).unwrap();
    let gate = format!(
        "command=\"{} ssh-gate 127.0.0.1,::1\" {}",
        bin("tunnel-agent"),
        meeting_pub.trim()
    );
    assert!(text.contains(&gate), "{text}");
    assert!(!text.contains("from="), "{text}");

    // Meeting's terminal: through the proxy's public port, the tunnel, Dropbear, the gate.
    let agent = proxy.agent(&[
        "--config",
        &cfg.display().to_string(),
        "--ssh-keys",
        "false",
    ]);
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    agent.wait_for("Meeting presence: online", SOON);
    let public = proxy.tunnels[0].port().to_string();
    let login = |cmd: &str| {
        run(Command::new("ssh").args(ssh_client_opts(&meeting)).args([
            "-p",
            &public,
            &format!("{USER}@127.0.0.1"),
            cmd,
        ]))
    };
    let out = login("echo logged in as $(id -un)");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("logged in as {USER}"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        dropbear.output()
    );
    // scp's own protocol (-O): the gate passes the client's command through.
    let payload = random_bytes(1 << 20, 7);
    std::fs::write(d.join("up.bin"), &payload).unwrap();
    let up = format!("/tmp/tunnel-agent-dropbear-{}-up.bin", db.label);
    let out = run(Command::new("scp")
        .arg("-O")
        .args(ssh_client_opts(&meeting))
        .args(["-P", &public])
        .arg(d.join("up.bin"))
        .arg(format!("{USER}@127.0.0.1:{up}")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&up).unwrap(), payload);
    let _ = std::fs::remove_file(&up);

    // check: the server named, the line accepted.
    let (code, report) = check(&cfg);
    let step = login_step(&report);
    assert_eq!(step["status"], "pass", "{report}");
    assert!(
        step["detail"].as_str().unwrap().contains("Dropbear 20"),
        "{step}"
    );
    assert_eq!(code, 0, "{report}");

    // The field's bug: the OpenSSH form of the line. Dropbear refuses it, and check says so.
    std::fs::write(
        &ak,
        text.replace(
            &gate,
            &format!("from=\"127.0.0.1,::1\" {}", meeting_pub.trim()),
        ),
    )
    .unwrap();
    // Straight to Dropbear: check's handshake above took the device's session from the agent
    // for a moment, and the refusal is Dropbear's own anyway.
    let out = run(Command::new("ssh").args(ssh_client_opts(&meeting)).args([
        "-p",
        &port.to_string(),
        &format!("{USER}@127.0.0.1"),
        "echo logged in",
    ]));
    assert!(!out.status.success(), "Dropbear took a from= line");
    dropbear.wait_for("Bad public key options", SOON);
    let (code, report) = check(&cfg);
    let step = login_step(&report);
    assert_eq!(
        (
            code,
            report["verdict"].as_str().unwrap(),
            step["status"].as_str().unwrap()
        ),
        (7, "meeting_key_refused", "fail"),
        "{report}"
    );
    let detail = step["detail"].as_str().unwrap();
    assert!(detail.contains("does not know the option from"), "{detail}");

    // The next key round puts the line Dropbear accepts back.
    let keys = || {
        run(Command::new(bin("tunnel-agent"))
            .arg("keys")
            .arg("--config")
            .arg(&cfg))
    };
    let out = keys();
    assert!(out.status.success(), "{out:?}");
    assert!(std::fs::read_to_string(&ak).unwrap().contains(&gate));
    // A round while Dropbear is down (restarting) keeps the line as written for it.
    dropbear.kill();
    let out = keys();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("no SSH server answers"), "{said}");
    assert!(std::fs::read_to_string(&ak).unwrap().contains(&gate));
    let _ = std::fs::remove_dir_all(&ssh_dir);
}

/// The gate itself, as Dropbear runs it: a client from the LAN gets nothing run and a reason;
/// a client through the tunnel (loopback) gets its command run by the user's shell.
#[test]
fn the_gate_lets_in_only_the_tunnel() {
    let marker = std::env::temp_dir().join(format!("tunnel-agent-gate-{}", std::process::id()));
    let gate = |client: &str| {
        run(Command::new(bin("tunnel-agent"))
            .args(["ssh-gate", "127.0.0.1,::1"])
            .env("SSH_CLIENT", client)
            .env("SHELL", "/bin/sh")
            .env(
                "SSH_ORIGINAL_COMMAND",
                format!("touch {} && echo gate-ok", marker.display()),
            ))
    };
    let out = gate("192.0.2.10 40000 22");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("for the tunnel only") && err.contains("192.0.2.10"),
        "{err}"
    );
    assert!(!marker.exists(), "the gate ran a command for the LAN");
    for client in ["127.0.0.1 40000 22", "::1 40000 22"] {
        let out = gate(client);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "gate-ok",
            "{out:?}"
        );
        assert!(marker.exists());
        std::fs::remove_file(&marker).unwrap();
    }
    let out = run(Command::new(bin("tunnel-agent")).args(["ssh-gate"]));
    assert_eq!(out.status.code(), Some(2));
}
