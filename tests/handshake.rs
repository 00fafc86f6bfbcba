//! Every row of the handshake table of docs/protocol.md section 2, checked on what the real agent
//! logs and does (frame mode, or which backoff).

mod support;

use std::io::Write;

use support::*;

/// What every refusal-type row must satisfy: one ERROR line with the diagnosis, the device key
/// named, the token nowhere, and the long (refusal) backoff.
fn assert_refusal(agent: &Proc, must_contain: &[&str]) {
    let line = agent.wait_for(" ERROR ", SOON);
    for s in must_contain {
        assert!(line.contains(s), "ERROR line lacks {s:?}: {line}");
    }
    assert!(line.contains(KEY), "the device key is named: {line}");
    let delay = reconnect_delay(agent);
    assert!(
        delay >= 30.0,
        "refusal backoff is at least 30 s, got {delay}"
    );
    assert!(
        !agent.output().contains(TOKEN),
        "token leaked:\n{}",
        agent.output()
    );
}

/// What a protocol-mismatch row must satisfy: a WARN with the diagnosis, short backoff.
fn assert_mismatch(agent: &Proc, must_contain: &[&str]) {
    let line = agent.wait_for(" WARN ", SOON);
    for s in must_contain {
        assert!(line.contains(s), "WARN line lacks {s:?}: {line}");
    }
    let delay = reconnect_delay(agent);
    assert!(delay < 30.0, "a mismatch is not a refusal: {delay}");
    assert!(
        !agent.output().contains(TOKEN),
        "token leaked:\n{}",
        agent.output()
    );
}

#[test]
fn handshake_line_is_the_python_agents_64_bytes() {
    let fake = FakeProxy::start();
    let _agent = agent(fake.addr, &[]);
    let (_sock, line) = fake.next();
    assert_eq!(
        line,
        format!("{{\"token\": \"{TOKEN}\", \"name\": \"{KEY}\"}}\n")
    );
    assert_eq!(
        line.len(),
        58 + TOKEN.len(),
        "64 bytes with the field's 6-character tokens"
    );
}

#[test]
fn accepted_enters_frame_mode() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    agent.wait_for(
        &format!(
            "authenticated by proxy 127.0.0.1:{} as device {KEY}",
            proxy.control.port()
        ),
        SOON,
    );
    assert_eq!(echo_through(proxy.tunnels[0], b"accepted"), b"accepted");
}

#[test]
fn refused_form_a_logs_the_servers_reason_and_backs_off_long() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}=not-the-token")]);
    let agent = proxy.agent(&[]);
    assert_refusal(&agent, &["refused device", "\"wrong token\""]);
}

#[test]
fn refused_form_b_is_a_refusal_not_a_success() {
    let proxy = Proxy::start(&[
        "--device",
        &format!("{KEY}={TOKEN}:unauthorized"),
        "--error-form",
        "error",
    ]);
    let agent = proxy.agent(&[]);
    assert_refusal(&agent, &["\"device not authorized\"", "[auth_failed]"]);
    assert!(!agent.output().contains("tunnel ready"));
}

#[test]
fn closed_with_zero_bytes_is_the_field_report_diagnosis() {
    let proxy = Proxy::start(&[
        "--device",
        &format!("{KEY}={TOKEN}"),
        "--reply",
        "silent-close",
    ]);
    let agent = proxy.agent(&[]);
    assert_refusal(
        &agent,
        &[
            "closed the connection without answering the handshake",
            "token",
            "authorized",
            "registered",
        ],
    );
    assert_eq!(agent.count(" ERROR "), 1, "one ERROR line per attempt");
}

#[test]
fn no_reply_but_open_connection_enters_frame_mode_after_the_timeout() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &["--reply", "none"]);
    let agent = proxy.agent(&["--handshake-timeout", "0.5"]);
    agent.wait_for("no reply to the handshake", SOON);
    assert_eq!(echo_through(proxy.tunnels[0], b"old proxy"), b"old proxy");
    assert_eq!(agent.count("no reply to the handshake"), 1, "logged once");
}

#[test]
fn first_byte_of_a_frame_instead_of_a_reply_is_kept() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &["--reply", "none"]);
    // A long reply timeout: the tunnel can only work at once if the N byte was kept.
    let agent = proxy.agent(&["--handshake-timeout", "600"]);
    proxy.wait_agent(1);
    assert_eq!(
        echo_through(proxy.tunnels[0], b"first frame"),
        b"first frame"
    );
    agent.wait_for("began with a frame ('N')", SOON);
    assert_eq!(agent.count("no reply to the handshake"), 0);
}

fn fake_reply(bytes: &[u8]) -> Proc {
    let fake = FakeProxy::start();
    let agent = agent(fake.addr, &[]);
    let (mut sock, _) = fake.next();
    sock.write_all(bytes).unwrap();
    drop(sock);
    std::mem::forget(fake); // keep the listener: the agent will come back
    agent
}

#[test]
fn tls_record_bytes_say_enable_tls() {
    for first in [0x16u8, 0x15] {
        let agent = fake_reply(&[first, 0x03, 0x01, 0x00, 0x02, 0x02, 0x28]);
        assert_mismatch(&agent, &["TLS", "enable TLS"]);
    }
}

#[test]
fn http_reply_says_wrong_service_and_shows_it() {
    let agent = fake_reply(b"HTTP/1.1 400 Bad Request\r\nServer: nginx\r\n\r\n");
    assert_mismatch(&agent, &["web server", "HTTP/1.1 400 Bad Request"]);
}

#[test]
fn other_text_says_not_meeting_and_shows_printable_bytes() {
    let agent = fake_reply(b"SSH-2.0-OpenSSH_9.2p1\r\n");
    assert_mismatch(
        &agent,
        &[
            "not speaking the Meeting protocol",
            "SSH-2.0-OpenSSH_9.2p1\\r",
        ],
    );
}

#[test]
fn reply_line_over_four_kib_is_a_protocol_error() {
    let mut long = vec![b'{'; 5000];
    long.push(b'\n');
    let agent = fake_reply(&long);
    assert_mismatch(&agent, &["protocol error", "longer than 4096 bytes"]);
}

#[test]
fn json_that_is_not_an_object_is_a_protocol_error() {
    let agent = fake_reply(b"[\"authenticated\"]\n");
    assert_mismatch(&agent, &["protocol error", "not an object"]);
}
