//! The agent's side of systemd's protocols, against sockets and files the test holds: the
//! notify datagrams (READY=1, STATUS=, WATCHDOG=1) and the journal's priority prefixes. The
//! same under a real systemd is in tests/systemd.rs.

mod support;

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// The notify socket, and every message received on it.
struct Notify {
    sock: UnixDatagram,
    path: std::path::PathBuf,
}

impl Notify {
    fn new(name: &str) -> Notify {
        let path =
            std::env::temp_dir().join(format!("tunnel-agent-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(SOON)).unwrap();
        Notify { sock, path }
    }

    /// The next message (waits at most `SOON`).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Messages until one contains `what`; all of them.
    fn until(&self, what: &str) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let m = self.next();
            let done = m.contains(what);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
}

impl Drop for Notify {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn ready_once_connected_then_the_state_and_the_watchdog_from_the_control_loop() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let notify = Notify::new("ready");
    let socket = notify.path.display().to_string();
    // A 3 s watchdog: systemd would restart an agent that let 3 s pass without a feed.
    let agent = agent_with_env(
        proxy.control,
        &["--allow-port", &echo.to_string()],
        &[
            ("NOTIFY_SOCKET", socket.as_str()),
            ("WATCHDOG_USEC", "3000000"),
        ],
    );
    let seen = notify.until("READY=1");
    let ready = seen.last().unwrap();
    assert!(
        ready.contains(&format!(
            "STATUS=connected (proxy 127.0.0.1:{})",
            proxy.control.port()
        )),
        "{seen:?}"
    );
    assert_eq!(seen.iter().filter(|m| m.contains("READY=1")).count(), 1);
    // Idle and connected, the control loop comes round and feeds the watchdog, each feed
    // within the watchdog's time (the contract with systemd, not a speed).
    let mut last = Instant::now();
    for _ in 0..3 {
        while notify.next() != "WATCHDOG=1" {}
        let gap = last.elapsed();
        assert!(gap < Duration::from_secs(3), "no feed for {gap:?}");
        last = Instant::now();
    }
    // Stopped (a wedged agent), it feeds nothing; resumed, it feeds again.
    agent.signal("STOP");
    notify
        .sock
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 64];
    // Drain what was in flight at the stop, then nothing comes.
    while notify.sock.recv(&mut buf).is_ok() {}
    agent.signal("CONT");
    notify.sock.set_read_timeout(Some(SOON)).unwrap();
    notify.until("WATCHDOG=1");
    // Nothing else changed: the tunnel works.
    let back = echo_through(proxy.tunnels[0], b"fed");
    assert_eq!(back, b"fed", "{}\n{}", agent.output(), proxy.proc.output());
}

#[test]
fn ready_when_the_first_attempt_fails_so_boot_never_waits_on_the_proxy() {
    let notify = Notify::new("down");
    let socket = notify.path.display().to_string();
    let port = closed_port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let _agent = agent_with_env(addr, &[], &[("NOTIFY_SOCKET", socket.as_str())]);
    let seen = notify.until("READY=1");
    assert!(
        seen.last().unwrap().contains("STATUS=backing_off"),
        "{seen:?}"
    );
}

#[test]
fn on_the_journals_stream_each_line_carries_its_priority() {
    // stderr a file, and JOURNAL_STREAM naming it, as systemd does for a journal stream.
    let dir = std::env::temp_dir().join(format!("tunnel-agent-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let err = dir.join("stderr");
    let file = std::fs::File::create(&err).unwrap();
    let meta = file.metadata().unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let down: std::net::SocketAddr = ([127, 0, 0, 1], closed_port()).into();
    // Refused at once: a WARN line, among INFO ones.
    let mut child = Command::new(bin("tunnel-agent"))
        .args(agent_args(down))
        .env("MEETING_TOKEN", TOKEN)
        .env("JOURNAL_STREAM", &stream)
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let until = Instant::now() + SOON;
    let text = loop {
        let text = std::fs::read_to_string(&err).unwrap();
        if text.contains("<4>WARN") || Instant::now() > until {
            break text;
        }
        // Polling a file the child writes: there is no event to wait on.
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>INFO  tunnel-agent ")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("<4>WARN  ")), "{text}");
    // Every line has its prefix, and no time stamp of its own (the journal adds one).
    assert!(text.lines().all(|l| l.starts_with('<')), "{text}");
    assert!(!text.contains("Z INFO"), "{text}");
}
