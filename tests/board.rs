//! `make test-image`: the agent on emulated boards, booting an image laid out as a Buildroot
//! BusyBox image from Debian's packages (tests/board/mkimage.sh): a Cortex-A7 board
//! (`qemu-system-arm -M virt`, the armv7 agent) and a Cortex-A53 board (`qemu-system-aarch64 -M
//! virt`, the aarch64 agent), each with Dropbear as its SSH server.
//!
//! Meeting runs on the host: `meeting-proxy` backed by the suite's fake API over HTTPS, with the
//! device's ssh tunnel from `/api/tunnels`. Each test first moves its thread into a network
//! namespace of its own, so every socket it and its children open (the proxy, the fake API,
//! qemu, ssh) is on that namespace's loopback; the board reaches it only through qemu's user
//! networking (the host is 10.0.2.2, `meeting.test` in the board's /etc/hosts).
//!
//! On each board: boot → BusyBox init starts the agent with the package's init script → with the
//! API unreachable for the first 60 s, Meeting's key is installed within a minute of it coming
//! back, and the heartbeat arrives → the operator's ssh through the proxy logs in to Dropbear
//! with Meeting's key, runs a command, and 3 MB go each way intact → `tunnel-agent status` and
//! `check`, run by the logged-in user, tell the truth → the board's link is cut for 90 s (qemu
//! monitor `set_link`): the agent logs the dead link, reconnects when the link is back, and the
//! login works again without a reboot → `poweroff`: the init script stops the agent, whose log
//! says so, and the board powers off.
//!
//! The tests are `#[ignore]`d in `make test` (they take minutes); `make test-image` builds the
//! images and runs them, and `.ci/run` runs that.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::relay::Relay;
use support::*;

/// An emulated board.
struct Board {
    /// Debian's architecture, the image's folder under `target/board/`.
    arch: &'static str,
    qemu: &'static str,
    machine: &'static str,
    cpu: &'static str,
    /// The agent's `uname -m` there.
    uname: &'static str,
}

const CORTEX_A7: Board = Board {
    arch: "armhf",
    qemu: "qemu-system-arm",
    machine: "virt,highmem=off",
    cpu: "cortex-a7",
    uname: "armv7l",
};

const CORTEX_A53: Board = Board {
    arch: "arm64",
    qemu: "qemu-system-aarch64",
    machine: "virt",
    cpu: "cortex-a53",
    uname: "aarch64",
};

/// How long the API stays unreachable after boot.
const API_DOWN: Duration = Duration::from_secs(60);
/// How long the board's link is cut.
const CUT: Duration = Duration::from_secs(90);
/// Time for what the board does under emulation (boot, a login, a check).
const BOARD: Duration = Duration::from_secs(120);

fn image_dir(board: &Board) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/board/{}", board.arch))
}

/// The test's own files: the configuration the board gets, Meeting's key, the monitor socket.
struct Dir(PathBuf);

impl Dir {
    fn new(board: &Board) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "tunnel-agent-board-{}-{}",
            board.arch,
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("overlay/etc/tunnel-agent")).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The image's root file system with the test's files appended as a second cpio archive (the
/// kernel unpacks both into the initramfs).
fn initrd(board: &Board, dir: &Dir) -> PathBuf {
    let list = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc --quiet")
        .current_dir(dir.0.join("overlay"))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(list.status.success(), "cpio");
    let mut all = std::fs::read(image_dir(board).join("rootfs.cpio.gz")).unwrap();
    // A gzip member, then an uncompressed archive: the kernel takes a sequence of both, each
    // archive starting on a 4-byte boundary (zero bytes between them are skipped).
    all.resize(all.len().next_multiple_of(4), 0);
    all.extend_from_slice(&list.stdout);
    let path = dir.0.join("initrd");
    std::fs::write(&path, all).unwrap();
    path
}

/// The board's serial console (a root shell once booted) and qemu's monitor.
struct Running {
    qemu: Proc,
    monitor: PathBuf,
}

impl Running {
    /// Types `line` at the board's root shell.
    fn type_line(&self, line: &str) {
        self.qemu.send(&format!("{line}\n"));
    }

    /// A command to qemu's monitor.
    fn monitor(&self, command: &str) {
        let mut s = UnixStream::connect(&self.monitor).expect("qemu monitor");
        s.write_all(format!("{command}\n").as_bytes()).unwrap();
        // The monitor answers with its banner and the command's echo; reading until the next
        // prompt shows the command was taken.
        s.set_read_timeout(Some(SOON)).unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains(command) {
            match std::io::Read::read(&mut s, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
        assert!(
            String::from_utf8_lossy(&seen).contains(command),
            "qemu monitor: {}",
            String::from_utf8_lossy(&seen)
        );
    }
}

/// The operator's ssh through the proxy's public port to the board, as `device` with
/// Meeting's key: (exit status, stdout, stderr).
fn ssh(key: &Path, port: u16, command: &str, input: &[u8]) -> (i32, Vec<u8>, String) {
    let mut child = Command::new("ssh")
        .args(ssh_client_opts(key))
        .args(["-p", &port.to_string(), "device@127.0.0.1", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn needs(test: &str, board: &Board) -> bool {
    if !may_run(
        test,
        &[
            Need::Root,
            tool(board.qemu, "qemu-system-arm"),
            tool("cpio", "cpio"),
            tool("ssh", "openssh-client"),
            tool("ip", "iproute2"),
        ],
    ) {
        return false;
    }
    let image = image_dir(board).join("rootfs.cpio.gz");
    assert!(
        image.exists(),
        "{} is missing: `make test-image` builds it",
        image.display()
    );
    true
}

#[test]
#[ignore = "make test-image: boots an emulated board (minutes)"]
fn cortex_a7_board_boots_the_image_and_meetings_terminal_logs_in_to_dropbear() {
    if needs(
        "cortex_a7_board_boots_the_image_and_meetings_terminal_logs_in_to_dropbear",
        &CORTEX_A7,
    ) {
        prove(&CORTEX_A7);
    }
}

#[test]
#[ignore = "make test-image: boots an emulated board (minutes)"]
fn cortex_a53_board_boots_the_image_and_meetings_terminal_logs_in_to_dropbear() {
    if needs(
        "cortex_a53_board_boots_the_image_and_meetings_terminal_logs_in_to_dropbear",
        &CORTEX_A53,
    ) {
        prove(&CORTEX_A53);
    }
}

fn prove(board: &Board) {
    own_network();
    let dir = Dir::new(board);

    // Meeting: the fake API (its certificate also names meeting.test, as the board asks for
    // it), Meeting's SSH key, and meeting-proxy deciding by the API, the ssh tunnel from it.
    let api = FakeApi::with_certificate_for(&[KEY], &["127.0.0.1", "localhost", "meeting.test"]);
    let meeting_key = dir.0.join("meeting");
    let meeting_pub = ssh_keygen_ed25519(&meeting_key, "meeting@meeting.test");
    api.serve_meeting_key(&meeting_pub, None);
    let host_pub = ssh_keygen_ed25519(&dir.0.join("host"), "host");
    let host_key = host_pub.rsplit_once(' ').unwrap().0;
    api.answer(
        "GET",
        "/api/ssh-hostkey",
        200,
        &format!("meeting.test {host_key}\n"),
    );
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}"),
        200,
        &serde_json::json!({"device_key": KEY, "authorized": true, "services": ["ssh"],
                            "token_code": TOKEN})
        .to_string(),
    );
    let public = free_port();
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &serde_json::json!({"tunnels": [{"device_key": KEY, "service": "ssh", "port": public,
                                         "local_port": 22, "expires_at": null}]})
        .to_string(),
    );
    let proxy = api_proxy(&api).start();
    let line = proxy.wait_for("listening for agents on ", SOON);
    let control: std::net::SocketAddr = line
        .split("listening for agents on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the proxy's address");
    let api_addr: std::net::SocketAddr = api.url[8..api.url.len() - 4].parse().unwrap();
    // The board's way to the API: nothing listens there until the test opens it.
    let relay = Relay::closed(api_addr);

    // The board's configuration, as an operator writes it.
    let etc = dir.0.join("overlay/etc/tunnel-agent");
    std::fs::copy(&api.ca_file, etc.join("meeting-ca.pem")).unwrap();
    let config = serde_json::json!({
        "device_key": KEY,
        "token_code": TOKEN,
        "tunnel_host": "meeting.test",
        "tunnel_port": control.port(),
        "tunnel_ssl": false,
        "api_url": format!("https://meeting.test:{}/api", relay.port),
        "api_ca_file": "/etc/tunnel-agent/meeting-ca.pem",
        "allowed_ports": [22],
        "heartbeat_interval": 30,
        "ssh_keys": true,
        "meeting_ssh_user": "device",
    });
    let config_path = etc.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(&config_path, mode).unwrap();
    let initrd = initrd(board, &dir);

    let monitor = dir.0.join("monitor");
    let image = image_dir(board);
    let booted = Instant::now();
    let qemu = Launch::new(board.qemu)
        .args(&[
            "-M",
            board.machine,
            "-cpu",
            board.cpu,
            "-m",
            "256",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-monitor",
            &format!("unix:{},server=on,wait=off", monitor.display()),
            "-kernel",
            image.join("vmlinuz").to_str().unwrap(),
            "-initrd",
            initrd.to_str().unwrap(),
            "-append",
            "console=ttyAMA0",
            "-netdev",
            "user,id=net0",
            "-device",
            "virtio-net-device,netdev=net0",
            "-device",
            "virtio-rng-device",
        ])
        .with_stdin()
        .with_stdout()
        .start();
    let board_run = Running { qemu, monitor };
    let console = &board_run.qemu;

    // Boot: BusyBox init runs the package's init script; its key round fails (the API is not
    // reachable yet) and the tunnel starts anyway.
    // (The board's syslog writes to the console too: a daemon's first line may come between
    // an init script's "Starting X: " and its "OK", so the test waits for the first half.)
    console.wait_for("Starting dropbear sshd: ", BOARD);
    console.wait_for(
        "tunnel-agent keys failed (exit 1): Meeting's terminal may not log in; starting the tunnel anyway",
        BOARD,
    );
    console.wait_for("Starting tunnel-agent: ", BOARD);
    proxy.wait_for(&format!("device {KEY} connected from"), BOARD);
    console.wait_for("SSH keys (meeting key): ", BOARD);
    console.wait_for("SSH keys: trying the failed work again in", BOARD);

    // The API comes back 60 s after boot: Meeting's key within a minute, the heartbeat too.
    std::thread::sleep(API_DOWN.saturating_sub(booted.elapsed()));
    assert!(
        api.requests_to("POST", &format!("/api/devices/{KEY}/online"))
            .is_empty(),
        "no heartbeat can arrive while the API is unreachable"
    );
    relay.open();
    let back = Instant::now();
    let installed = console.wait_for(
        "SSH keys (meeting key): installed Meeting's key",
        Duration::from_secs(70),
    );
    assert!(
        back.elapsed() <= Duration::from_secs(62),
        "Meeting's key came {:?} after the API: {installed}",
        back.elapsed()
    );
    assert!(
        installed.contains("Dropbear"),
        "the line Dropbear accepts: {installed}"
    );
    api.wait_for(
        "POST",
        &format!("/api/devices/{KEY}/online"),
        1,
        Duration::from_secs(60),
    );

    // The operator's terminal: ssh through the proxy to Dropbear on the board.
    let (code, out, err) = ssh(&meeting_key, public, "id -un; uname -m", b"");
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, format!("device\n{}\n", board.uname), "{err}");
    let up = random_bytes(3 << 20, 27);
    let (code, out, err) = ssh(
        &meeting_key,
        public,
        "cat > /tmp/up && sha256sum /tmp/up",
        &up,
    );
    let out = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(first_word(&out), sha256_hex(&up), "3 MB up, intact");
    let (code, down, err) = ssh(
        &meeting_key,
        public,
        "head -c 3145728 /dev/urandom > /tmp/down && sha256sum /tmp/down >&2 && cat /tmp/down",
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(down.len(), 3 << 20);
    assert!(err.contains(&sha256_hex(&down)), "3 MB down, intact: {err}");

    // status and check, run by the logged-in user.
    let (code, out, err) = ssh(&meeting_key, public, "tunnel-agent status", b"");
    let status = String::from_utf8_lossy(&out).into_owned();
    assert_eq!(code, 0, "{status}{err}");
    assert!(status.contains("connected"), "{status}");
    // check as the logged-in user: the configuration holds the token and is root's alone, and
    // check says exactly that, with what to run instead; nothing else is claimed.
    let (code, out, err) = ssh(&meeting_key, public, "tunnel-agent check --json", b"");
    let report: serde_json::Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "check --json as device: {e}: {}{err}",
            String::from_utf8_lossy(&out)
        )
    });
    assert_eq!(
        (code, report["verdict"].as_str()),
        (1, Some("config_error")),
        "{report}"
    );
    let summary = report["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("This user cannot read the agent's configuration")
            && summary.contains("Permission denied")
            && summary.contains("su -c 'tunnel-agent check'"),
        "{summary}"
    );
    // check as root on the board's console: everything passes, the login step names Dropbear.
    // (printf's format keeps the typed line, which the console echoes, from matching.)
    board_run.type_line(
        "tunnel-agent check --json > /tmp/check.json; printf '%s=%s\\n' check-status $?; cat /tmp/check.json; echo",
    );
    let exit = console.wait_for("check-status=", BOARD);
    let report = console.wait_for("\"verdict\":", BOARD);
    let report: serde_json::Value = serde_json::from_str(&report[report.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("check --json as root: {e}: {report}"));
    assert!(exit.ends_with("check-status=0"), "{exit}: {report}");
    assert_eq!(report["verdict"], "ok", "{report}");
    let login = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "ssh-login")
        .unwrap();
    assert_eq!(login["status"], "pass", "{login}");
    assert!(
        login["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("Dropbear 20"),
        "{login}"
    );

    // The link is cut for 90 s: the agent says the link is dead, then reconnects.
    board_run.monitor("set_link net0 off");
    let cut = Instant::now();
    let dead = console.wait_for("connection lost after", CUT);
    assert!(dead.contains("dead link"), "{dead}");
    std::thread::sleep(CUT.saturating_sub(cut.elapsed()));
    board_run.monitor("set_link net0 on");
    proxy.wait_for_nth(&format!("device {KEY} connected from"), 2, BOARD);
    let (code, out, err) = ssh(&meeting_key, public, "echo again", b"");
    assert_eq!(
        (code, String::from_utf8_lossy(&out).into_owned()),
        (0, "again\n".to_owned()),
        "{err}"
    );

    // poweroff: the init script stops the agent, which says so, and the board powers off.
    board_run.type_line("poweroff");
    console.wait_for("Stopping tunnel-agent: ", BOARD);
    console.wait_for("received SIGTERM: closing channels and exiting", BOARD);
    console.wait_for("tunnel-agent stopped", BOARD);
    let mut qemu = board_run.qemu;
    assert!(
        qemu.wait_exit(BOARD).is_some(),
        "the board did not power off"
    );
    let console = qemu.output();
    for failed in [
        "tunnel-agent: FAIL",
        "sshd: FAIL",
        "network: FAIL",
        "syslogd: FAIL",
    ] {
        assert!(!console.contains(failed), "{failed}:\n{console}");
    }
    let _ = (dir, proxy);
}
