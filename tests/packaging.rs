//! What goes on a device: `make install`, the systemd unit (`systemd-analyze verify`), the
//! init script driven by BusyBox's start-stop-daemon, and logging to a syslog socket.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Tmp {
        let p =
            std::env::temp_dir().join(format!("tunnel-agent-pkg-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `make install` into `root` (PREFIX=root/usr, SYSCONFDIR=root/etc) with the test build.
fn install(root: &Path) {
    let out = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-s", "install"])
        .arg(format!("PREFIX={}/usr", root.display()))
        .arg(format!("SYSCONFDIR={}/etc", root.display()))
        .arg(format!("INSTALL_BIN={}", bin("tunnel-agent")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "make install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// `make install TARGET=…` installs that cross build, building it first; the README's command.
/// Shown with `make -n`: the cross build itself is `make test-cross`'s.
#[test]
fn make_install_with_a_target_installs_the_cross_build() {
    if !may_run("packaging", &[tool("make", "make")]) {
        return;
    }
    let plan = |args: &[&str]| {
        let out = Command::new("make")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["-n", "install", "DESTDIR=/nonexistent", "PREFIX=/usr"])
            .args(args)
            .output()
            .unwrap();
        ok_stdout(out, "make -n install")
    };
    let armv7 = plan(&["TARGET=armv7-unknown-linux-musleabihf"]);
    assert!(
        armv7.contains("install -D -m 0755 target/cross/armv7-unknown-linux-musleabihf/release/tunnel-agent /nonexistent/usr/bin/tunnel-agent"),
        "{armv7}"
    );
    assert!(
        armv7.contains("--target armv7-unknown-linux-musleabihf"),
        "built first: {armv7}"
    );
    let notls = plan(&[
        "TARGET=aarch64-unknown-linux-musl",
        "FEATURES=--no-default-features",
    ]);
    assert!(
        notls.contains("target/cross-notls/aarch64-unknown-linux-musl/release/tunnel-agent /nonexistent/usr/bin/"),
        "{notls}"
    );
    let host = plan(&[]);
    assert!(
        host.contains("install -D -m 0755 target/release/tunnel-agent "),
        "{host}"
    );
    let help = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("make install TARGET=armv7-unknown-linux-musleabihf"),
        "{help}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains("make install TARGET=armv7-unknown-linux-musleabihf"),
        "README"
    );
}

#[test]
fn make_install_lays_out_the_files_and_the_unit_verifies() {
    if !may_run("packaging", &[tool("make", "make")]) {
        return;
    }
    let t = Tmp::new("install");
    install(&t.0);
    let r = &t.0;
    assert_eq!(mode(&r.join("usr/bin/tunnel-agent")), 0o755);
    assert_eq!(mode(&r.join("etc/init.d/S95tunnel-agent")), 0o755);
    assert_eq!(
        mode(&r.join("etc/tunnel-agent/config.json.example")),
        0o600,
        "the example holds a token field"
    );
    let unit = r.join("usr/lib/systemd/system/tunnel-agent.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={}/usr/bin/tunnel-agent run",
            r.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("Wants=tunnel-agent-keys.timer tunnel-agent-keys.service\n")
            && !text.contains("ExecStartPre"),
        "the key work runs beside the agent, in its own units, and never blocks it: {text}"
    );
    let keys_unit = r.join("usr/lib/systemd/system/tunnel-agent-keys.service");
    let keys_text = std::fs::read_to_string(&keys_unit).unwrap();
    assert!(
        keys_text.contains(&format!(
            "ExecStart={}/usr/bin/tunnel-agent keys --retry",
            r.display()
        )),
        "{keys_text}"
    );
    let timer = r.join("usr/lib/systemd/system/tunnel-agent-keys.timer");
    assert!(std::fs::read_to_string(&timer)
        .unwrap()
        .contains("OnUnitInactiveSec=1h"));
    for hardening in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=\n",
        "RuntimeDirectory=tunnel-agent",
        "StateDirectory=tunnel-agent",
        "Restart=always",
    ] {
        assert!(text.contains(hardening), "{hardening} missing");
    }
    let script = std::fs::read_to_string(r.join("etc/init.d/S95tunnel-agent")).unwrap();
    assert!(
        script.contains(&format!("\"{}/usr/bin/$DAEMON\"", r.display())),
        "{script}"
    );
    assert!(
        script.contains(&format!("\"{}/etc/default/$DAEMON\"", r.display())),
        "{script}"
    );
    if may_run(
        "systemd-analyze verify",
        &[tool("systemd-analyze", "systemd")],
    ) {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .args([&unit, &keys_unit, &timer])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn script(t: &Path, action: &str, path: &str) -> Output {
    Command::new("sh")
        .arg(t.join("etc/init.d/S95tunnel-agent"))
        .arg(action)
        .env("PATH", path)
        .env_remove("MEETING_TOKEN")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

/// Receives syslog datagrams until one contains `pat`.
fn syslog_line(sock: &UnixDatagram, pat: &str) -> String {
    let mut buf = vec![0u8; 8192];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no syslog line containing {pat:?}: {e}"));
        let line = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(!line.contains(TOKEN), "token in syslog: {line}");
        if line.contains(pat) {
            return line;
        }
    }
}

#[test]
fn init_script_with_busybox_start_stop_daemon() {
    if !may_run(
        "packaging",
        &[tool("make", "make"), tool("busybox", "busybox")],
    ) {
        return;
    }
    let t = Tmp::new("init");
    install(&t.0);
    // The script calls `start-stop-daemon`: make it BusyBox's applet.
    let bindir = t.0.join("bin");
    std::fs::create_dir_all(&bindir).unwrap();
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(busybox.trim(), bindir.join("start-stop-daemon")).unwrap();
    let log = UnixDatagram::bind(t.0.join("syslog.sock")).unwrap();
    log.set_read_timeout(Some(SOON)).unwrap();

    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let pidfile = t.0.join("agent.pid");
    // The settings a device keeps in /etc/default/tunnel-agent (here under the test's root).
    std::fs::create_dir_all(t.0.join("etc/default")).unwrap();
    let defaults = format!(
        "PIDFILE=\"{}\"\nSTATUS_FILE=\"{}\"\nTUNNEL_AGENT_ARGS=\"--device-key {KEY} --host 127.0.0.1 --port {} --allow-port {echo} --syslog-socket {}\"\nexport MEETING_TOKEN=\"{TOKEN}\"\n",
        pidfile.display(),
        t.0.join("run/status.json").display(),
        proxy.control.port(),
        t.0.join("syslog.sock").display()
    );
    std::fs::write(t.0.join("etc/default/tunnel-agent"), defaults).unwrap();
    let env = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = script(&t.0, "start", &env);
    assert!(
        out.status.success() && text(&out).contains("OK"),
        "start: {}",
        text(&out)
    );
    // The key work ran first (off here: no Meeting API is configured).
    assert!(
        text(&out).contains("meeting key: off: no Meeting API configured"),
        "start: {}",
        text(&out)
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    proxy.wait_agent(1);
    let ready = syslog_line(&log, "tunnel ready");
    assert!(
        ready.starts_with("<30>") && ready.contains(&format!("tunnel-agent[{pid}]: ")),
        "{ready}"
    );
    assert_eq!(echo_through(proxy.tunnels[0], b"via init.d"), b"via init.d");

    // status goes through `tunnel-agent status`; the file is written on state changes.
    let out = script(&t.0, "status", &env);
    assert!(out.status.success(), "status: {}", text(&out));
    assert!(text(&out).contains("connected since"), "{}", text(&out));

    let out = script(&t.0, "reload", &env);
    assert!(out.status.success(), "reload: {}", text(&out));
    syslog_line(&log, "SIGHUP: configuration reloaded");

    let out = script(&t.0, "stop", &env);
    assert!(out.status.success(), "stop: {}", text(&out));
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the agent is still running"
    );
    assert!(!pidfile.exists(), "pidfile left behind");
    syslog_line(&log, "tunnel-agent stopped");
    proxy
        .proc
        .wait_for("the device closed the connection", SOON);
    let out = script(&t.0, "status", &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "status after stop: {}",
        text(&out)
    );
}
