//! Keepalive pings and Meeting on port 443, against the middleboxes of the field: Debian's
//! tinyproxy and squid closing idle tunnels, a path cut behind the outbound proxy while the
//! tunnel is idle, an older proxy and the Python agent that must see today's bytes, and
//! HAProxy routing 443 by name in front of meeting-proxy and the web site, reached through
//! Debian's own squid configuration.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::frontend::SniRouter;
use support::outbound::Outbound;
use support::relay::{frame_types, Tap};
use support::sshd::Sshd;
use support::*;

/// Device keys and tokens of the second, third and fourth devices.
const KEY2: &str = "A2A2A2A2A2A2A2A2A2A2A2A2A2A2A2A2";
const KEY3: &str = "B3B3B3B3B3B3B3B3B3B3B3B3B3B3B3B3";
const KEY4: &str = "C4C4C4C4C4C4C4C4C4C4C4C4C4C4C4C4";
const TOKEN2: &str = "2222aa";

/// Waits until `tap`'s connection `i` carried at least `n` pings up (polled: the bytes are the
/// signal); all its bytes then.
fn wait_pings(tap: &Tap, i: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
    let until = Instant::now() + SOON;
    loop {
        let (up, down) = tap.recorded(i);
        if frame_types(&up).iter().filter(|&&t| t == b'P').count() >= n {
            return (up, down);
        }
        assert!(Instant::now() < until, "no {n} pings: {up:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every device of these tests, with its token.
const DEVICES: [(&str, &str); 4] = [(KEY, TOKEN), (KEY2, TOKEN2), (KEY3, TOKEN), (KEY4, TOKEN2)];

/// meeting-proxy with `extra` arguments, accepting every device of these tests, one public
/// port per (device, local port) of `tunnels`.
fn proxy(extra: &[&str], tunnels: &[(&str, u16)]) -> Proxy {
    let mut args: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
    for (key, token) in DEVICES {
        args.extend(["--device".to_owned(), format!("{key}={token}")]);
    }
    for (key, port) in tunnels {
        args.extend(["--tunnel".to_owned(), format!("127.0.0.1:0={key}:{port}")]);
    }
    Proxy::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A proxy's line that names a listener of `kind` ("TLS" or "plain TCP"): its address.
fn listener(proxy: &Proc, kind: &str) -> SocketAddr {
    let until = Instant::now() + SOON;
    loop {
        if let Some(line) = proxy
            .output()
            .lines()
            .find(|l| l.contains("listening for agents on ") && l.contains(&format!("({kind},")))
        {
            let rest = &line[line.find("listening for agents on ").unwrap() + 24..];
            return rest.split_whitespace().next().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < until,
            "no {kind} listener:\n{}",
            proxy.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The announcement and the pings are all that is new, and only between two ends that know
/// them: our agent against a proxy that does not announce, and the field's Python agent
/// against meeting-proxy, see today's bytes exactly, while an agent of ours beside them pings.
#[test]
fn only_ends_that_agreed_ping_and_the_older_ends_see_todays_bytes() {
    if !may_run(
        "only_ends_that_agreed_ping_and_the_older_ends_see_todays_bytes",
        &[tool("python3", "python3")],
    ) {
        return;
    }
    let echo = echo_server();
    // A: announces a 1 s keepalive (so pings come quickly), and windows; B: announces
    // nothing.
    let a = proxy(&["--keepalive", "1"], &[(KEY2, echo)]);
    let b = proxy(&["--keepalive", "0", "--window", "0"], &[]);
    // check says whether a proxy answers pings (as a device of its own: a handshake for a
    // device that is connected would replace its connection).
    for (proxy, said) in [
        (
            &a,
            "accepted; the proxy answers keepalive pings (every 1 s at most); per-stream \
             windows of 256 KiB",
        ),
        (&b, "accepted"),
    ] {
        let out = std::process::Command::new(bin("tunnel-agent"))
            .args(["check", "--json", "--timeout", "5", "--device-key", KEY3])
            .args(["--host", "127.0.0.1", "--port"])
            .arg(proxy.control.port().to_string())
            .args(["--status-file", ""])
            .env("MEETING_TOKEN", TOKEN)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let detail = check_step(&report, "handshake")["detail"].to_string();
        assert!(
            detail.contains(&format!(": {said}; reply bytes")),
            "{detail}"
        );
    }
    let (tap_a, tap_py, tap_b) = (
        Tap::start(a.control),
        Tap::start(a.control),
        Tap::start(b.control),
    );

    // The older ends first, so that they are idle for all of the pinging agent's time.
    let python = Proc::spawn(
        "python3",
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/python_agent.py"),
            "127.0.0.1",
            &tap_py.addr.port().to_string(),
            KEY2,
            TOKEN2,
        ],
        &[],
    );
    python.wait_for("Starting frame read loop", SOON);
    let quiet = agent(tap_b.addr, &[]);
    quiet.wait_for("tunnel ready", SOON);
    let pinging = agent(tap_a.addr, &[]);
    pinging.wait_for(
        "keepalive: the proxy answers pings; pinging after 1 s with nothing received, the \
         connection is taken for dead after 3 s of silence",
        SOON,
    );
    // Five pings: over 3 s, the bound a device that pinged would be held to.
    let (up, down) = wait_pings(&tap_a, 0, 5);
    let hello = format!("{{\"token\": \"{TOKEN}\", \"name\": \"{KEY}\"}}\n");
    assert!(up.starts_with(hello.as_bytes()));
    // Its answer to the windows, then pings only.
    let types = frame_types(&up);
    assert_eq!(types.first(), Some(&b'W'), "{up:?}");
    assert!(
        types[1..].iter().all(|&t| t == b'P'),
        "the pinging agent sent other frames: {up:?}"
    );
    let reply = format!(
        "{{\"device_key\":\"{KEY}\",\"keepalive\":1,\"status\":\"authenticated\",\
         \"window\":262144}}\n"
    );
    assert!(down.starts_with(reply.as_bytes()), "{down:?}");
    assert!(frame_types(&down).iter().all(|&t| t == b'A'), "{down:?}");
    assert!(frame_types(&down).len() >= 4, "pings unanswered: {down:?}");

    // Our agent against a proxy that announces nothing: the handshake line, and not a byte
    // more; the reply as it always was.
    let (up, down) = tap_b.recorded(0);
    assert_eq!(String::from_utf8_lossy(&up), hello);
    assert_eq!(
        String::from_utf8_lossy(&down),
        format!("{{\"device_key\":\"{KEY}\",\"status\":\"authenticated\"}}\n")
    );
    assert!(!quiet.output().contains("keepalive:"), "{}", quiet.output());

    // The Python agent against meeting-proxy: its own handshake, the acceptance with the
    // members it does not read, and no frame at all (no window grant either, though its
    // tunnel carries 100 kB); it is not dropped for its silence.
    let (up, down) = tap_py.recorded(0);
    assert_eq!(
        String::from_utf8_lossy(&up),
        format!("{{\"token\": \"{TOKEN2}\", \"name\": \"{KEY2}\"}}\n")
    );
    assert_eq!(
        String::from_utf8_lossy(&down),
        format!(
            "{{\"device_key\":\"{KEY2}\",\"keepalive\":1,\"status\":\"authenticated\",\
             \"window\":262144}}\n"
        )
    );
    let data = random_bytes(100_000, 38);
    assert!(echo_through(a.tunnels[0], &data) == data);
    let (_, down) = tap_py.recorded(0);
    assert!(
        !frame_types(&down).contains(&b'W'),
        "meeting-proxy granted a window to the Python agent"
    );
    let log = python.output();
    assert!(!log.contains("Unknown frame type"), "{log}");
    assert!(!log.contains("Connection closed by proxy"), "{log}");
    assert!(
        !a.proc.output().contains(&format!("device {KEY2} from")),
        "the Python agent was dropped:\n{}",
        a.proc.output()
    );
}

/// The path cut behind the outbound proxy while the tunnel is idle: the agent that pings
/// notices within its bound, meeting-proxy drops the silent device with its public
/// connections, and an agent that does not ping (the old behaviour, kept as the control)
/// notices nothing meanwhile.
#[test]
fn a_path_cut_behind_the_outbound_proxy_is_noticed_by_both_ends() {
    if !may_run(
        "a_path_cut_behind_the_outbound_proxy_is_noticed_by_both_ends",
        &[Need::Root, tool("tinyproxy", "tinyproxy")],
    ) {
        return;
    }
    let echo = echo_server();
    let proxy = proxy(&["--keepalive", "2"], &[(KEY, echo), (KEY2, echo)]);
    let path = Tap::start(proxy.control);
    let outbound = Outbound::tinyproxy(&[path.addr.port()], false, "127.0.0.36");
    let via = outbound.url("http", None);
    let control = path.addr.to_string();
    let pinging = device_agent(&control, KEY, TOKEN, &[echo], &["--outbound-proxy", &via])
        .unwrap()
        .start();
    let silent = device_agent(
        &control,
        KEY2,
        TOKEN2,
        &[echo],
        &["--outbound-proxy", &via, "--ping-interval", "0"],
    )
    .unwrap()
    .start();
    pinging.wait_for("connection is taken for dead after 6 s", SOON);
    silent.wait_for("tunnel ready", SOON);
    proxy
        .proc
        .wait_for(&format!("device {KEY} pings (keepalive 2 s)"), SOON);
    // A public connection open through the tunnel, and idle.
    let mut open = TcpStream::connect(proxy.tunnels[0]).unwrap();
    open.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    open.read_exact(&mut back).unwrap();

    let cut = Instant::now();
    path.cut();
    let line = pinging.wait_for("dead link: nothing from the proxy", SOON);
    let noticed = cut.elapsed();
    assert!(line.contains("noticed by this device's pings"), "{line}");
    // Within the bound (6 s: 3 intervals of 2 s, counted from the last frame), and well
    // before TCP would have (keepalive probes: 60 s; and here the outbound proxy answers them).
    assert!(
        noticed < Duration::from_secs(12),
        "noticed after {noticed:?}: {line}"
    );
    let dropped = proxy
        .proc
        .wait_for("disconnected: nothing from the device for 6 s", SOON);
    assert!(
        dropped.contains(&format!("device {KEY} from"))
            && dropped.contains("though it pings (noticed by the proxy")
            && dropped.contains("dropped with its 1 public connection(s)"),
        "{dropped}"
    );
    // Its public connection is closed, and a new one is closed at once.
    open.set_read_timeout(Some(SOON)).unwrap();
    assert!(matches!(open.read(&mut back), Ok(0) | Err(_)));
    let mut again = TcpStream::connect(proxy.tunnels[0]).unwrap();
    again.set_read_timeout(Some(SOON)).unwrap();
    assert!(matches!(again.read(&mut back), Ok(0) | Err(_)));
    proxy
        .proc
        .wait_for(&format!("device {KEY} has no agent online"), SOON);

    // The agent that does not ping saw nothing, and the proxy holds its device on.
    assert!(
        !silent.output().contains("dead link"),
        "{}",
        silent.output()
    );
    assert!(
        !proxy.proc.output().contains(&format!("device {KEY2} from")),
        "{}",
        proxy.proc.output()
    );
}

/// tinyproxy (`Timeout 30`) and squid (`read_timeout 30 seconds`) close a tunnel idle for
/// 30 s: an agent that does not ping is cut and reconnects, while one that pings (every 25 s,
/// the default) keeps its one connection for 3 minutes and then carries a login.
#[test]
fn an_idle_tunnel_outlives_tinyproxy_and_squid_idle_limits() {
    if !may_run(
        "an_idle_tunnel_outlives_tinyproxy_and_squid_idle_limits",
        &[
            Need::Root,
            tool("tinyproxy", "tinyproxy"),
            tool("squid", "squid"),
            tool(support::sshd::SSHD, "openssh-server"),
            tool("ssh", "openssh-client"),
        ],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tunnel-agent-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = Sshd::with_client_key(&dir);
    let proxy = proxy(&[], &[(KEY, sshd.port), (KEY3, sshd.port)]);
    let port = proxy.control.port();
    let tinyproxy = Outbound::tinyproxy_idle(&[port], false, 30, "127.0.0.37");
    let squid = Outbound::squid_with(&[port], 10, "read_timeout 30 seconds\n", "127.0.0.38");
    let control = proxy.control.to_string();
    let start = |key: &str, token: &str, via: &Outbound, extra: &[&str]| {
        let url = via.url("http", None);
        let mut args = vec!["--outbound-proxy", url.as_str()];
        args.extend(extra);
        device_agent(&control, key, token, &[sshd.port], &args)
            .unwrap()
            .start()
    };
    let agents = [
        ("tinyproxy, pinging", start(KEY, TOKEN, &tinyproxy, &[])),
        (
            "tinyproxy, not pinging",
            start(KEY2, TOKEN2, &tinyproxy, &["--ping-interval", "0"]),
        ),
        ("squid, pinging", start(KEY3, TOKEN, &squid, &[])),
        (
            "squid, not pinging",
            start(KEY4, TOKEN2, &squid, &["--ping-interval", "0"]),
        ),
    ];
    for (_, a) in &agents {
        a.wait_for("tunnel ready", SOON);
    }
    let t0 = Instant::now();
    // The premise: each middlebox does close an idle tunnel.
    for (name, a) in agents.iter().filter(|(n, _)| n.ends_with("not pinging")) {
        let line = a.wait_for("closed the control connection", Duration::from_secs(90));
        assert!(
            t0.elapsed() > Duration::from_secs(25),
            "{name}: closed too soon to be the idle limit: {line}"
        );
        a.wait_for_nth("connected to proxy", 2, SOON);
    }
    // Three minutes idle, counted from when all were up.
    std::thread::sleep(Duration::from_secs(180).saturating_sub(t0.elapsed()));
    for (name, a) in agents.iter().filter(|(n, _)| n.ends_with(", pinging")) {
        let log = a.output();
        assert_eq!(
            a.count("connected to proxy"),
            1,
            "{name} reconnected:\n{log}"
        );
        assert!(
            log.contains("keepalive: the proxy answers pings; pinging after 25 s"),
            "{name}:\n{log}"
        );
    }
    for (i, tunnel) in proxy.tunnels.iter().enumerate() {
        assert_eq!(sshd.login_through(tunnel.port()), "ok", "tunnel {i}");
    }
    for key in [KEY, KEY3] {
        assert_eq!(
            proxy.proc.count(&format!("device {key} connected from")),
            1,
            "{}",
            proxy.proc.output()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Meeting on 443 beside its web site: HAProxy routes TLS by name to meeting-proxy's TLS
/// listener or to the web site (the fake Meeting API), and a device behind Debian's own squid
/// configuration (CONNECT to 443 only) reaches both, TLS verified end to end for each name;
/// the tunnel carries a login, and meeting-proxy's plain listener still serves older agents.
#[test]
fn meeting_on_443_through_debians_squid_and_an_sni_router() {
    if !may_run(
        "meeting_on_443_through_debians_squid_and_an_sni_router",
        &[
            Need::Root,
            tool("haproxy", "haproxy"),
            tool("squid", "squid"),
            tool(support::sshd::SSHD, "openssh-server"),
            tool("ssh", "openssh-client"),
        ],
    ) {
        return;
    }
    // Port 443 of this test's own loopback.
    own_network();
    let dir = std::env::temp_dir().join(format!("tunnel-agent-443-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sshd = Sshd::with_client_key(&dir);
    let web = "meeting.example.test";
    let name = "tunnel.meeting.example.test";
    let api = FakeApi::with_certificate_for(&[KEY], &[web]);
    let api_addr: SocketAddr = api
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/api")
        .parse()
        .unwrap();
    let pki = support::pki::Pki::new("443");
    let ca = pki.ca("meeting");
    pki.server(&ca, "proxy", &[name], support::pki::Validity::Now);
    let proxy = Proc::spawn(
        bin("meeting-proxy"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen-tls",
            "127.0.0.1:0",
            "--tls-cert",
            &pki.path("proxy.pem"),
            "--tls-key",
            &pki.path("proxy.key"),
            "--device",
            &format!("{KEY}={TOKEN}"),
            "--device",
            &format!("{KEY2}={TOKEN2}"),
            "--tunnel",
            &format!("127.0.0.1:0={KEY}:{}", sshd.port),
        ],
        &[],
    );
    let plain = listener(&proxy, "plain TCP");
    let tls = listener(&proxy, "TLS");
    let public = first_word(&proxy.next_after("tunnel "));
    let _router = SniRouter::start("127.0.0.1:443", &[(name, tls)], api_addr);
    let squid = Outbound::squid_debian_default(&format!("127.0.0.1 {web} {name}\n"), "127.0.0.1");
    let via = squid.url("http", None);

    // The premise: this squid forbids the agents' usual port.
    let out = std::process::Command::new(bin("tunnel-agent"))
        .args(["check", "--json", "--timeout", "5", "--device-key", KEY])
        .args(["--host", name, "--port", &plain.port().to_string()])
        .args(["--outbound-proxy", &via, "--status-file", ""])
        .env("MEETING_TOKEN", TOKEN)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let step = check_step(&report, "outbound proxy");
    assert!(
        step.to_string().contains(&format!(
            "forbids connections to port {} (403)",
            plain.port()
        )),
        "{report}"
    );

    let ca_file = pki.path("meeting.pem");
    let agent = Proc::spawn(
        bin("tunnel-agent"),
        &[
            "--device-key",
            KEY,
            "--host",
            name,
            "--port",
            "443",
            "--tls",
            "--ca-file",
            &ca_file,
            "--outbound-proxy",
            &via,
            "--api-url",
            &format!("https://{web}/api"),
            "--api-ca-file",
            api.ca_file.to_str().unwrap(),
            "--allow-port",
            &sshd.port.to_string(),
            "--status-file",
            "",
        ],
        &[("MEETING_TOKEN", TOKEN)],
    );
    let tls_line = agent.wait_for(&format!("TLS to proxy {name}:443"), SOON);
    assert!(
        tls_line.contains(&format!("certificate \"{name}\"")),
        "{tls_line}"
    );
    agent.wait_for("tunnel ready", SOON);
    agent.wait_for("keepalive: the proxy answers pings", SOON);
    proxy.wait_for(&format!("device {KEY} connected from 127.0.0.1"), SOON);
    let port: u16 = public.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(sshd.login_through(port), "ok");
    // The web site on the same 443, through the same squid: the heartbeat reached it, its
    // certificate verified for its own name.
    api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON);

    // An older agent on the plain listener, as on 9001.
    let older = agent_with_env(plain, &["--device-key", KEY2], &[("MEETING_TOKEN", TOKEN2)]);
    older.wait_for("tunnel ready", SOON);
    proxy.wait_for(&format!("device {KEY2} connected from 127.0.0.1"), SOON);
    let _ = std::fs::remove_dir_all(&dir);
}
