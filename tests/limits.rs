//! What a hostile or buggy proxy cannot make the agent do: open a port outside
//! allowed_ports, exceed max_channels, make it allocate a huge frame, or log the token.

mod support;

use std::io::Write;
use std::net::{TcpListener, TcpStream};

use support::*;
use tunnel_agent::protocol::frame::{
    encode_header, open_frame, write_frame, Frame, FrameReader, TYPE_DATA,
};

/// Reads frames until `stream` gets `want` bytes of data back.
fn echo_back(r: &mut FrameReader<TcpStream>, stream: u32, want: usize) -> Vec<u8> {
    let mut got = Vec::new();
    while got.len() < want {
        match r
            .next_frame()
            .unwrap()
            .expect("agent closed the connection")
        {
            Frame::Data {
                stream: id,
                payload,
            } if id == stream => got.extend_from_slice(payload),
            Frame::Data { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

#[test]
fn a_port_outside_allowed_ports_is_closed_at_once_and_never_connected() {
    let forbidden = TcpListener::bind("127.0.0.1:0").unwrap();
    forbidden.set_nonblocking(true).unwrap();
    let port = forbidden.local_addr().unwrap().port();
    let echo = echo_server();
    let fake = FakeProxy::start();
    let allow = echo.to_string();
    let agent = agent(fake.addr, &["--allow-port", &allow]);
    let (mut s, mut r) = fake.session();
    s.write_all(&open_frame(7, port)).unwrap();
    assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 7 }));
    let line = agent.wait_for("refusing channel 7", SOON);
    assert!(
        line.contains(&format!("local port {port}")) && line.contains("allowed_ports"),
        "{line}"
    );
    // The allowed port works on the same connection, and nothing ever knocked on the other.
    s.write_all(&open_frame(8, echo)).unwrap();
    write_frame(&mut s, TYPE_DATA, 8, b"allowed").unwrap();
    assert_eq!(echo_back(&mut r, 8, 7), b"allowed");
    assert!(
        forbidden.accept().is_err(),
        "the agent connected to a port it must refuse"
    );
}

#[test]
fn channels_beyond_max_channels_are_refused_and_the_connection_stays() {
    let echo = echo_server();
    let fake = FakeProxy::start();
    let allow = echo.to_string();
    let agent = agent(fake.addr, &["--allow-port", &allow, "--max-channels", "2"]);
    let (mut s, mut r) = fake.session();
    for id in [1, 2] {
        s.write_all(&open_frame(id, echo)).unwrap();
        write_frame(&mut s, TYPE_DATA, id, b"ping").unwrap();
        assert_eq!(echo_back(&mut r, id, 4), b"ping");
    }
    s.write_all(&open_frame(3, echo)).unwrap();
    assert_eq!(r.next_frame().unwrap(), Some(Frame::Close { stream: 3 }));
    agent.wait_for("the limit (max_channels) is 2", SOON);
    write_frame(&mut s, TYPE_DATA, 1, b"still").unwrap();
    assert_eq!(echo_back(&mut r, 1, 5), b"still");
    assert_eq!(agent.count("connection lost"), 0);
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[test]
fn a_four_gib_announcement_allocates_nothing() {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &[]);
    let (mut s, _r) = fake.session();
    s.write_all(&encode_header(TYPE_DATA, 1, u32::MAX)).unwrap();
    agent.wait_for("announced a 4294967295-byte payload", SOON);
    let _again = fake.next();
    // Peak memory of the whole process: nowhere near the 4 GiB it was asked to take.
    let peak = peak_rss_kib(agent.pid());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn max_frame_is_configurable() {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &["--max-frame", "1000"]);
    let (mut s, _r) = fake.session();
    write_frame(&mut s, TYPE_DATA, 1, &[0u8; 1001]).unwrap();
    agent.wait_for("announced a 1001-byte payload", SOON);
    let _again = fake.next();
}

#[test]
fn a_token_file_readable_by_others_is_warned_about_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("tunnel-agent-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("meeting.json");
    std::fs::write(&cfg, format!(r#"{{"device_key":"{KEY}","token_code":"{TOKEN}","tunnel_host":"127.0.0.1","tunnel_port":9,"status_file":""}}"#)).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o640)).unwrap();
    let path = cfg.display().to_string();
    let agent = Proc::spawn(bin("tunnel-agent"), &["--config", &path], &[]);
    let line = agent.wait_for("holds the token and is readable by group or others", SOON);
    assert!(
        line.contains(&format!("chmod 600 {path}")) && line.contains("640"),
        "{line}"
    );
    assert!(!agent.output().contains(TOKEN));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The suite's scenarios at the most verbose log level, with a recognisable token: it must
/// appear in none of the output.
#[test]
fn the_token_appears_in_no_output_at_any_log_level() {
    let echo = echo_server();
    let mut outputs = Vec::new();
    let scenarios: Vec<Vec<String>> = vec![
        vec!["--device".into(), format!("{KEY}={TOKEN}")],
        vec!["--device".into(), format!("{KEY}=other")],
        vec![
            "--device".into(),
            format!("{KEY}={TOKEN}"),
            "--reply".into(),
            "silent-close".into(),
        ],
        vec![
            "--device".into(),
            format!("{KEY}={TOKEN}:unauthorized"),
            "--error-form".into(),
            "error".into(),
        ],
    ];
    for extra in &scenarios {
        let tunnel = format!("127.0.0.1:0={KEY}:{echo}");
        let mut args: Vec<&str> = extra.iter().map(String::as_str).collect();
        args.extend(["--tunnel", &tunnel, "-vv"]);
        let proxy = Proxy::start(&args);
        let mut agent = proxy.agent(&["-vv"]);
        agent.wait_for_nth("connecting to proxy", 1, SOON);
        if extra.len() == 2 && extra[1].ends_with(TOKEN) {
            proxy.wait_agent(1);
            assert_eq!(echo_through(proxy.tunnels[0], b"data"), b"data");
        } else {
            agent.wait_for("reconnecting in", SOON);
        }
        let port = proxy.control.port().to_string();
        for form in [&[][..], &["--json"][..], &["--report"][..]] {
            let out = std::process::Command::new(bin("tunnel-agent"))
                .args([
                    "check",
                    "--timeout",
                    "2",
                    "--device-key",
                    KEY,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port,
                ])
                .args(form)
                .env("MEETING_TOKEN", TOKEN)
                .env("RUST_LOG", "trace")
                .output()
                .unwrap();
            outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
            outputs.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        agent.signal("TERM");
        agent.wait_exit(SOON);
        outputs.push(agent.output());
        outputs.push(proxy.proc.output());
    }
    for out in &outputs {
        assert!(!out.contains(TOKEN), "token leaked:\n{out}");
    }
    assert!(
        outputs
            .iter()
            .any(|o| o.contains("TRACE") || o.contains("DEBUG")),
        "verbose logs were captured"
    );
}

#[test]
fn a_flood_of_refused_channels_writes_a_few_lines_then_one_summary_with_the_count() {
    let echo = echo_server();
    let fake = FakeProxy::start();
    let allow = echo.to_string();
    let status =
        std::env::temp_dir().join(format!("tunnel-agent-flood-{}.json", std::process::id()));
    let sf = status.display().to_string();
    let agent = agent(
        fake.addr,
        &[
            "--allow-port",
            &allow,
            "--max-channels",
            "2",
            "--status-file",
            &sf,
        ],
    );
    let (mut s, mut r) = fake.session();
    for id in [1, 2] {
        s.write_all(&open_frame(id, echo)).unwrap();
        write_frame(&mut s, TYPE_DATA, id, b"ping").unwrap();
        assert_eq!(echo_back(&mut r, id, 4), b"ping");
    }
    const FLOOD: u32 = 5000;
    let burst: Vec<u8> = (3..3 + FLOOD).flat_map(|id| open_frame(id, echo)).collect();
    s.write_all(&burst).unwrap();
    let mut closed = 0;
    while closed < FLOOD {
        if let Some(Frame::Close { .. }) = r.next_frame().unwrap() {
            closed += 1;
        }
    }
    // The summary comes when the 10 s window is over (the status thread sums up every 10 s).
    let summary = agent.wait_for("more channels above max_channels in the last", 3 * SOON / 2);
    assert!(
        summary.contains(&format!("refused {} more", FLOOD - 3)),
        "{summary}"
    );
    assert_eq!(agent.count("refusing channel"), 3, "{}", agent.output());
    let lines = agent.output().lines().count();
    assert!(
        lines < 20,
        "{lines} log lines for one flood:\n{}",
        agent.output()
    );
    // The status file has the count (written in the same pass as the summary).
    let snap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&status).unwrap()).unwrap();
    assert_eq!(snap["warnings"]["refused_over_max_channels"], FLOOD);
    // The connection stayed up through it.
    write_frame(&mut s, TYPE_DATA, 1, b"still").unwrap();
    assert_eq!(echo_back(&mut r, 1, 5), b"still");
    let _ = std::fs::remove_file(&status);
}
