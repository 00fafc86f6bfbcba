//! meeting-proxy backed by the (fake) Meeting API over HTTPS: every handshake decided by
//! `GET /api/devices/{key}` and answered, the answers cached, and the public ports taken from
//! `GET /api/tunnels` as they appear, expire and go away.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::json;
use support::*;
use tunnel_agent::protocol::handshake::handshake_line;

/// Two more devices of the fake API.
const OTHER: &str = "0123456789ABCDEF0123456789ABCDEF";
const GONE: &str = "FEDCBA9876543210FEDCBA9876543210";

fn record(key: &str, authorized: bool, token_code: &str) -> String {
    json!({"device_key": key, "authorized": authorized, "services": ["ssh"],
           "token_code": token_code})
    .to_string()
}

fn tunnels(entries: &[serde_json::Value]) -> String {
    json!({ "tunnels": entries }).to_string()
}

fn entry(
    key: &str,
    service: &str,
    port: u16,
    local: u16,
    expires: Option<u64>,
) -> serde_json::Value {
    let at = expires.map(|t| {
        tunnel_agent::clock::utc(t)
            .trim_end_matches(" UTC")
            .to_owned()
    });
    json!({"device_key": key, "service": service, "port": port, "local_port": local,
           "expires_at": at})
}

/// Sends a handshake for `key` with `token` and returns the reply line.
fn handshake(proxy: SocketAddr, key: &str, token: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(proxy).unwrap();
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(handshake_line(token, key).as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    (line, s)
}

#[test]
fn each_refusal_reaches_the_agent_with_its_reason_in_both_forms() {
    let api = FakeApi::start(&[KEY]);
    api.answer(
        "GET",
        &format!("/api/devices/{OTHER}"),
        200,
        &record(OTHER, false, ""),
    );
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}"),
        200,
        &record(KEY, true, "not-the-token"),
    );
    for form in ["status", "error"] {
        let proxy = Proxy::for_api(&api, &["--error-form", form]);
        for (key, reason) in [
            (GONE, "unknown device"),
            (OTHER, "device not authorized"),
            (KEY, "wrong token"),
        ] {
            let mut agent = agent(proxy.control, &["--device-key", key]);
            agent.wait_for(&format!("refused device {key}: \"{reason}\""), SOON);
            proxy
                .proc
                .wait_for(&format!("device {key} from 127.0.0.1"), SOON);
            proxy
                .proc
                .wait_for(&format!("refused: {reason} (Meeting API)"), SOON);
            agent.kill();
            assert!(!agent.output().contains(TOKEN));
        }
        let (line, _) = handshake(proxy.control, OTHER, TOKEN);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match form {
            "status" => assert_eq!(
                v,
                json!({"status":"error","message":"device not authorized"})
            ),
            _ => assert_eq!(
                v,
                json!({"error":"auth_failed","reason":"device not authorized"})
            ),
        }
        let asked = api.requests_to("GET", &format!("/api/devices/{KEY}"));
        assert_eq!(asked.last().unwrap().header("x-token-code"), Some(TOKEN));
        assert!(
            !proxy.proc.output().contains(TOKEN),
            "{}",
            proxy.proc.output()
        );
    }
}

#[test]
fn api_down_is_an_explicit_refusal_then_the_device_is_accepted_once_it_is_back() {
    let api = FakeApi::start(&[KEY]);
    let path = format!("/api/devices/{KEY}");
    api.answer("GET", &path, 503, r#"{"error":"maintenance"}"#);
    let proxy = Proxy::for_api(&api, &["--cache-refuse", "1"]);
    let agent = proxy.agent(&[]);
    // Not a refusal of the device: it retries as after a network failure.
    agent.wait_for(
        &format!("could not verify device {KEY}: \"cannot verify the device: Meeting API unreachable (HTTP 503: "),
        SOON,
    );
    agent.wait_for("reconnecting in", SOON);
    assert_eq!(
        agent.count("refused by the proxy;"),
        0,
        "{}",
        agent.output()
    );
    api.answer("GET", &path, 200, &record(KEY, true, TOKEN));
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    proxy.proc.wait_for("authenticated (Meeting API)", SOON);

    // An API nobody listens on: the reason says so.
    let dead = format!("https://127.0.0.1:{}/api", closed_port());
    let proxy = Proxy::start(&[
        "--api-url",
        &dead,
        "--api-ca-file",
        api.ca_file.to_str().unwrap(),
    ]);
    let (line, _) = handshake(proxy.control, KEY, TOKEN);
    assert!(
        line.contains("cannot verify the device: Meeting API unreachable (")
            && line.contains("connection refused: nothing listens"),
        "{line}"
    );
}

#[test]
fn a_burst_of_handshakes_makes_one_api_call_and_answers_are_reused() {
    let api = FakeApi::start(&[KEY]);
    let path = format!("/api/devices/{KEY}");
    api.hang("GET", &path);
    // (Guesses are not slowed here: this is about the answers' reuse.)
    let proxy = Proxy::for_api(
        &api,
        &[
            "--cache-refuse",
            "2",
            "--api-timeout",
            "15",
            "--key-penalty-burst",
            "1000",
            "--address-penalty-burst",
            "1000",
        ],
    );
    let control = proxy.control;
    let burst: Vec<_> = (0..20)
        .map(|_| thread::spawn(move || handshake(control, KEY, TOKEN).0))
        .collect();
    api.wait_for("GET", &path, 1, SOON);
    // Readiness: the other 19 handshakes are parked on the first one's answer.
    let pid = proxy.proc.pid();
    let deadline = std::time::Instant::now() + SOON;
    while wchans(pid, "agent")
        .iter()
        .filter(|w| w.starts_with("futex"))
        .count()
        < 19
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            wchans(pid, "agent")
        );
        thread::sleep(Duration::from_millis(20));
    }
    api.answer("GET", &path, 200, &record(KEY, true, TOKEN));
    api.release();
    for h in burst {
        let line = h.join().unwrap();
        assert!(line.contains("\"status\":\"authenticated\""), "{line}");
    }
    assert_eq!(api.requests_to("GET", &path).len(), 1);

    // Accepted answers are reused: no call for the next handshakes.
    for _ in 0..5 {
        assert!(handshake(control, KEY, TOKEN).0.contains("authenticated"));
    }
    assert_eq!(api.requests_to("GET", &path).len(), 1);
    // Another token is another question; its refusal is reused for a few seconds only.
    let (line, _) = handshake(control, KEY, "guess");
    assert!(line.contains("wrong token"), "{line}");
    assert_eq!(api.requests_to("GET", &path).len(), 2);
    assert!(handshake(control, KEY, "guess").0.contains("wrong token"));
    assert_eq!(api.requests_to("GET", &path).len(), 2);
    // The wrong guess did not evict the right token's answer.
    assert!(handshake(control, KEY, TOKEN).0.contains("authenticated"));
    assert_eq!(api.requests_to("GET", &path).len(), 2);
    proxy
        .proc
        .wait_for("refused: wrong token (Meeting API, cached)", SOON);
    // Once the refusal has aged out (2 s), the API is asked again.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        assert!(handshake(control, KEY, "guess").0.contains("wrong token"));
        if api.requests_to("GET", &path).len() == 3 {
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        thread::sleep(Duration::from_millis(200));
    }
    assert!(!proxy.proc.output().contains(TOKEN));
}

/// Echoes `data` through `s` (an echo service behind the tunnel).
fn echo(s: &mut TcpStream, data: &[u8]) {
    s.set_read_timeout(Some(SOON)).unwrap();
    s.write_all(data).unwrap();
    let mut back = vec![0; data.len()];
    std::io::Read::read_exact(s, &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn tunnels_from_the_api_appear_expire_and_go_away_while_a_session_is_open() {
    let api = FakeApi::start(&[KEY]);
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}"),
        200,
        &record(KEY, true, TOKEN),
    );
    api.answer("GET", "/api/tunnels", 200, &tunnels(&[]));
    let service = echo_server();
    let (a, b, c, fixed) = (free_port(), free_port(), free_port(), free_port());
    let static_tunnel = format!("127.0.0.1:{fixed}={KEY}:{service}");
    let proxy = Proxy::for_api(&api, &["--tunnel", &static_tunnel]);
    let allow = service.to_string();
    let agent = proxy.agent(&["--allow-port", &allow]);
    proxy.wait_agent(1);
    agent.wait_for("tunnel ready", SOON);
    let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));

    // Appearing: a tunnel without expiry, one expiring in a few seconds, and one for a device
    // that is not connected.
    let soon = tunnel_agent::clock::now() + 4;
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &tunnels(&[
            entry(KEY, "ssh", a, service, None),
            entry(KEY, "http", b, service, Some(soon)),
            entry(OTHER, "vnc", c, 5900, None),
        ]),
    );
    proxy.proc.wait_for(
        &format!("tunnel opened: device {KEY} service ssh public port {a} -> local port {service} (no expiry) on 127.0.0.1:{a}"),
        SOON,
    );
    proxy.proc.wait_for(
        &format!("tunnel opened: device {KEY} service http public port {b} -> local port {service} (expires "),
        SOON,
    );
    proxy.proc.wait_for(
        &format!("service vnc public port {c} -> local port 5900"),
        SOON,
    );
    let mut on_a = TcpStream::connect(addr(a)).unwrap();
    echo(&mut on_a, b"through a");
    let mut on_b = TcpStream::connect(addr(b)).unwrap();
    echo(&mut on_b, b"through b");
    let mut on_fixed = TcpStream::connect(addr(fixed)).unwrap();
    echo(&mut on_fixed, b"the --tunnel beside them");
    // A device that is not connected: the connection is closed, with a line in the log.
    let mut on_c = TcpStream::connect(addr(c)).unwrap();
    on_c.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(std::io::Read::read(&mut on_c, &mut [0; 8]).unwrap_or(0), 0);
    proxy
        .proc
        .wait_for(&format!("device {OTHER} has no agent online"), SOON);

    // Expiring: b stops accepting at its expiry; its open connection goes on.
    proxy.proc.wait_for(
        &format!("tunnel closed, expired at {}: device {KEY} service http public port {b} -> local port {service}; 1 open connection(s) go on until they end", tunnel_agent::clock::utc(soon)),
        SOON,
    );
    let refused = TcpStream::connect(addr(b)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    echo(&mut on_b, b"still through b after its expiry");

    // Disappearing: a goes away from the list; its connection goes on too.
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &tunnels(&[entry(OTHER, "vnc", c, 5900, None)]),
    );
    proxy.proc.wait_for(
        &format!("tunnel closed, removed from Meeting: device {KEY} service ssh public port {a} -> local port {service}; 1 open connection(s)"),
        SOON,
    );
    assert_eq!(
        TcpStream::connect(addr(a)).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    echo(&mut on_a, b"still through a after its removal");
    echo(&mut on_fixed, b"and the --tunnel is untouched");

    // An unreadable list keeps what is open; a bad entry is said once and left out.
    api.answer("GET", "/api/tunnels", 500, r#"{"error":"db down"}"#);
    proxy.proc.wait_for("cannot fetch the tunnel list", SOON);
    let mut on_c2 = TcpStream::connect(addr(c)).unwrap();
    on_c2.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(std::io::Read::read(&mut on_c2, &mut [0; 8]).unwrap_or(0), 0);
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &tunnels(&[
            entry(OTHER, "vnc", c, 5900, None),
            json!({"device_key": KEY, "service": "ssh", "port": "nine", "local_port": 22}),
        ]),
    );
    proxy.proc.wait_for("tunnel list answers again", SOON);
    proxy.proc.wait_for("\"port\" is not a port number", SOON);
    // Several polls later it has still been said once.
    let polls = api.requests_to("GET", "/api/tunnels").len();
    api.wait_for("GET", "/api/tunnels", polls + 3, SOON);
    assert_eq!(proxy.proc.count("\"port\" is not a port number"), 1);
    assert!(!agent.output().contains("ERROR"), "{}", agent.output());
}

#[test]
fn close_expired_cuts_the_open_connections_of_a_removed_tunnel() {
    let api = FakeApi::start(&[KEY]);
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}"),
        200,
        &record(KEY, true, ""),
    );
    let service = echo_server();
    let port = free_port();
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &tunnels(&[entry(KEY, "ssh", port, service, None)]),
    );
    let proxy = Proxy::for_api(&api, &["--close-expired"]);
    let allow = service.to_string();
    let _agent = proxy.agent(&["--allow-port", &allow]);
    proxy.wait_agent(1);
    proxy.proc.wait_for("tunnel opened", SOON);
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    echo(&mut s, b"before");
    api.answer("GET", "/api/tunnels", 200, &tunnels(&[]));
    proxy.proc.wait_for(
        "removed from Meeting: device 3316A52EB08837267BF6BD3E2B2E8DC7 service ssh",
        SOON,
    );
    proxy
        .proc
        .wait_for("1 open connection(s) cut (--close-expired)", SOON);
    let mut buf = [0; 8];
    let n = std::io::Read::read(&mut s, &mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection of a removed tunnel was not cut");
}

/// A Meeting API that answers `after` seconds late, behind a proxy that waits for it: the
/// agent (waiting 5 s, the old default, so that every reply here is late) enters frame mode,
/// then reads the proxy's reply when it comes.
fn late_reply(after: u64, authorized: bool) -> (FakeApi, Proxy, Proc, u16) {
    let api = FakeApi::start(&[KEY]);
    let service = echo_server();
    let port = free_port();
    api.answer(
        "GET",
        "/api/tunnels",
        200,
        &tunnels(&[entry(KEY, "ssh", port, service, None)]),
    );
    api.answer_late(
        "GET",
        &format!("/api/devices/{KEY}"),
        Duration::from_secs(after),
        200,
        &record(KEY, authorized, ""),
    );
    let proxy = Proxy::for_api(&api, &["--api-timeout", "30"]);
    let allow = service.to_string();
    let agent = proxy.agent(&["--allow-port", &allow, "--handshake-timeout", "5"]);
    agent.wait_for("assuming an older proxy that does not answer", SOON);
    (api, proxy, agent, port)
}

fn late_acceptance(after: u64) {
    let (api, proxy, agent, port) = late_reply(after, true);
    agent.wait_for(
        &format!(
            "authenticated by proxy 127.0.0.1:{} as device {KEY} after all",
            proxy.control.port()
        ),
        Duration::from_secs(after) + SOON,
    );
    proxy.wait_agent(1);
    proxy.proc.wait_for("tunnel opened", SOON);
    let mut s = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    echo(&mut s, b"a slow Meeting, then a tunnel");
    let said = agent.output();
    assert!(!said.contains("protocol error"), "{said}");
    assert_eq!(
        agent.count("connected to proxy"),
        1,
        "one connection: {said}"
    );
    assert_eq!(
        api.requests_to("GET", &format!("/api/devices/{KEY}")).len(),
        1,
        "one API call"
    );
}

#[test]
fn a_reply_6_s_late_is_read_as_the_reply_and_the_tunnel_works() {
    late_acceptance(6);
}

#[test]
fn a_reply_20_s_late_is_read_as_the_reply_and_the_tunnel_works() {
    late_acceptance(20);
}

/// A refusal that comes after the wait is a refusal, with its reason and the long back-off.
#[test]
fn a_refusal_7_s_late_is_a_refusal_with_its_back_off() {
    let (_api, _proxy, agent, _) = late_reply(7, false);
    agent.wait_for(
        &format!("refused device {KEY}: \"device not authorized\""),
        SOON,
    );
    let line = agent.wait_for("refused by the proxy; reconnecting in ", SOON);
    let secs: f64 = line
        .split("reconnecting in ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(secs >= 30.0, "a refusal's back-off, not a retry: {line}");
    assert!(
        !agent.output().contains("protocol error"),
        "{}",
        agent.output()
    );
}
