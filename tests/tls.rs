//! TLS end to end: meeting-proxy serving TLS with certificates made at run time, the agent
//! and `check` against it, and every failure named for what it is.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::thread;

use serde_json::Value;
use support::pki::{Pki, Validity};
use support::*;

/// Runs `tunnel-agent check --json` with `args` against `proxy`; returns exit code and JSON.
fn check(proxy: SocketAddr, args: &[&str]) -> (i32, Value) {
    let port = proxy.port().to_string();
    let out = Command::new(bin("tunnel-agent"))
        .args([
            "check",
            "--json",
            "--timeout",
            "5",
            "--device-key",
            KEY,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ])
        .args(args)
        .env("MEETING_TOKEN", TOKEN)
        .env_remove("MEETING_TUNNEL_TLS")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains(TOKEN), "token leaked: {text}");
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn tls_step(v: &Value) -> String {
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "tls")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn trusted_tls_session_carries_data() {
    let pki = Pki::new("trusted");
    let ca = pki.ca("ca");
    pki.server(&ca, "server", &["proxy.test", "localhost"], Validity::Now);
    let echo = echo_server();
    let proxy = pki.proxy("server", echo);
    let ca_file = pki.path("ca.pem");
    let agent = proxy.agent(&[
        "--tls",
        "--ca-file",
        &ca_file,
        "--tls-server-name",
        "proxy.test",
    ]);
    proxy.wait_agent(1);
    let data = random_bytes(2 << 20, 5);
    assert!(
        echo_through(proxy.tunnels[0], &data) == data,
        "bytes differ through TLS"
    );
    let line = agent.wait_for("TLS to proxy", SOON);
    assert!(
        line.contains("TLSv1_3") && line.contains("proxy.test") && line.contains("ca test CA"),
        "{line}"
    );
    assert!(!agent.output().contains(TOKEN));

    let allow = echo.to_string();
    let (code, v) = check(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &ca_file,
            "--tls-server-name",
            "proxy.test",
            "--allow-port",
            &allow,
        ],
    );
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{v}");
    let tls = tls_step(&v);
    assert!(
        tls.contains("TLSv1_3") && tls.contains("\"proxy.test\"") && tls.contains("valid until"),
        "{tls}"
    );
}

#[test]
fn untrusted_ca_is_named_as_such() {
    let pki = Pki::new("untrusted");
    let ca = pki.ca("ca");
    pki.ca("other");
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let proxy = pki.proxy("server", 22);
    let other = pki.path("other.pem");
    let agent = agent(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &other,
            "--tls-server-name",
            "proxy.test",
        ],
    );
    let line = agent.wait_for("certificate not trusted", SOON);
    assert!(line.contains("other.pem"), "names what it trusts: {line}");
    // The proxy's side, in its own words: what its client did.
    let line = proxy
        .proc
        .wait_for("the agent refused this proxy's certificate (alert", SOON);
    assert!(line.contains("its ca_file and tls_server_name"), "{line}");
    let (code, v) = check(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &other,
            "--tls-server-name",
            "proxy.test",
        ],
    );
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_failed"),
        "{v}"
    );
    assert!(tls_step(&v).contains("certificate not trusted"));
    // Without ca_file the public roots are trusted, and a private CA is not among them.
    let (_, v) = check(proxy.control, &["--tls", "--tls-server-name", "proxy.test"]);
    assert!(tls_step(&v).contains("public certificate authority"), "{v}");
}

#[test]
fn name_mismatch_says_which_names_the_certificate_has() {
    let pki = Pki::new("name");
    let ca = pki.ca("ca");
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let proxy = pki.proxy("server", 22);
    let ca_file = pki.path("ca.pem");
    let agent = agent(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &ca_file,
            "--tls-server-name",
            "wrong.test",
        ],
    );
    let line = agent.wait_for("name mismatch", SOON);
    assert!(
        line.contains("proxy.test") && line.contains("wrong.test"),
        "{line}"
    );
    let (code, v) = check(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &ca_file,
            "--tls-server-name",
            "wrong.test",
        ],
    );
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_failed"),
        "{v}"
    );
}

/// A proxy whose certificate starts in the future: the agent says so with the device's time
/// next to the certificate's validity, and connects by itself, without a restart, once the
/// proxy has a valid certificate.
#[test]
fn a_certificate_not_valid_yet_shows_both_times_and_the_agent_recovers_by_itself() {
    let pki = Pki::new("future");
    let ca = pki.ca("ca");
    pki.server(&ca, "future", &["proxy.test"], Validity::Future);
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let listen = format!("127.0.0.1:{}", free_port());
    let early = pki.proxy_on("future", 22, &listen);
    let ca_file = pki.path("ca.pem");
    let args = [
        "--tls",
        "--ca-file",
        &ca_file,
        "--tls-server-name",
        "proxy.test",
    ];
    let agent = agent(early.control, &args);
    let line = agent.wait_for("not valid yet", SOON);
    let today = &tunnel_agent::clock::utc(tunnel_agent::clock::now())[..10];
    assert!(
        line.contains("valid from 2099-01-01 00:00:00 UTC")
            && line.contains(&format!("the device's clock reads {today}")),
        "{line}"
    );
    // This clock is after the build, so the advice is to check it, not that it is unset.
    assert!(
        line.contains("date -u") && !line.contains("probably not set"),
        "{line}"
    );
    drop(early);
    let proxy = pki.proxy_on("server", 22, &listen);
    agent.wait_for("tunnel ready", SOON);
    proxy.wait_agent(1);
}

#[test]
fn expired_certificate_is_named_as_expired() {
    let pki = Pki::new("expired");
    let ca = pki.ca("ca");
    pki.server(&ca, "server", &["proxy.test"], Validity::Expired);
    let proxy = pki.proxy("server", 22);
    let ca_file = pki.path("ca.pem");
    let agent = agent(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &ca_file,
            "--tls-server-name",
            "proxy.test",
        ],
    );
    agent.wait_for("certificate has expired", SOON);
    let (code, v) = check(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &ca_file,
            "--tls-server-name",
            "proxy.test",
        ],
    );
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_failed"),
        "{v}"
    );
    assert!(tls_step(&v).contains("expired"));
}

#[test]
fn tls_agent_against_a_plain_proxy() {
    let proxy = Proxy::start(&["--device", &format!("{KEY}={TOKEN}")]);
    let agent = agent(proxy.control, &["--tls", "--tls-server-name", "proxy.test"]);
    let line = agent.wait_for("does not speak TLS on this port", SOON);
    assert!(line.contains("disable TLS"), "{line}");
    proxy
        .proc
        .wait_for("started a TLS handshake but this port is plain TCP", SOON);
    let (code, v) = check(proxy.control, &["--tls"]);
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_mismatch"),
        "{v}"
    );
}

#[test]
fn tls_agent_against_a_server_that_closes_after_client_hello() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for c in l.incoming().map_while(Result::ok) {
            let _ = (&c).read(&mut [0u8; 4096]);
        }
    });
    let agent = agent(addr, &["--tls", "--tls-server-name", "proxy.test"]);
    agent.wait_for("closed the connection after our TLS ClientHello", SOON);
    let (code, v) = check(addr, &["--tls"]);
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_mismatch"),
        "{v}"
    );
}

#[test]
fn plain_agent_against_a_tls_proxy_says_enable_tls() {
    let pki = Pki::new("plainagent");
    let ca = pki.ca("ca");
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let proxy = pki.proxy("server", 22);
    let agent = agent(proxy.control, &[]);
    agent.wait_for("enable TLS", SOON);
    proxy.proc.wait_for(
        "the agent sent a plain-text line, not a TLS ClientHello: it has TLS off",
        SOON,
    );
    // That line was the handshake: its token is not quoted.
    assert!(
        !proxy.proc.output().contains(TOKEN),
        "{}",
        proxy.proc.output()
    );
    // A client that connects and closes without a byte.
    drop(std::net::TcpStream::connect(proxy.control).unwrap());
    proxy.proc.wait_for(
        "the agent closed the connection without sending a TLS ClientHello",
        SOON,
    );
    let (code, v) = check(proxy.control, &[]);
    assert_eq!(
        (code, v["verdict"].as_str().unwrap()),
        (2, "tls_mismatch"),
        "{v}"
    );
}

#[test]
fn the_proxy_refuses_a_bad_certificate_file_clearly() {
    let pki = Pki::new("badcert");
    std::fs::write(pki.dir.join("bad.pem"), "not a certificate").unwrap();
    std::fs::write(pki.dir.join("bad.key"), "not a key").unwrap();
    let out = Command::new(bin("meeting-proxy"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &pki.path("bad.pem"),
            "--tls-key",
            &pki.path("bad.key"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot load the TLS certificate/key"), "{err}");
}

#[test]
fn tls_to_the_proxy_runs_end_to_end_inside_an_outbound_proxy() {
    if !may_run(
        "tls_to_the_proxy_runs_end_to_end_inside_an_outbound_proxy",
        &[tool("tinyproxy", "tinyproxy")],
    ) {
        return;
    }
    let pki = Pki::new("outbound");
    let ca = pki.ca("ca");
    let other = pki.ca("other");
    drop(other);
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let echo = echo_server();
    let proxy = pki.proxy("server", echo);
    let outbound =
        support::outbound::Outbound::tinyproxy(&[proxy.control.port()], false, "127.0.0.7");
    let url = outbound.url("http", None);
    let tls = |ca: &str| {
        [
            "--tls",
            "--ca-file",
            &pki.path(ca),
            "--tls-server-name",
            "proxy.test",
            "--outbound-proxy",
            &url,
        ]
        .map(str::to_owned)
    };
    // Verified against the Meeting proxy's CA and name, through the outbound proxy.
    let args = tls("ca.pem");
    let agent = proxy.agent(&args.each_ref().map(String::as_str));
    proxy
        .proc
        .wait_for(&format!("device {KEY} connected from 127.0.0.7:"), SOON);
    let line = agent.wait_for("TLS to proxy", SOON);
    assert!(
        line.contains("proxy.test") && line.contains("ca test CA"),
        "{line}"
    );
    let data = random_bytes(1 << 20, 6);
    assert!(echo_through(proxy.tunnels[0], &data) == data);
    drop(agent);
    // Another CA: refused by the agent itself, as without an outbound proxy.
    let args = tls("other.pem");
    let agent = proxy.agent(&args.each_ref().map(String::as_str));
    let line = agent.wait_for("WARN", SOON);
    assert!(line.contains("certificate"), "{line}");
    assert_eq!(proxy.proc.count(&format!("device {KEY} connected from")), 1);
}

/// A private CA installed in the system's bundle (`SSL_CERT_FILE` here; on a device
/// /etc/ssl/certs/ca-certificates.crt, where update-ca-certificates puts it) is trusted for the
/// proxy and for the Meeting API, beside the compiled-in roots, as the Python agent trusted
/// it; `ca_file` narrows trust to its own CA.
#[test]
fn a_private_ca_in_the_system_bundle_is_trusted_for_the_proxy_and_the_api_and_ca_file_narrows() {
    let pki = Pki::new("system-bundle");
    let ca = pki.ca("ca");
    pki.ca("other");
    pki.server(&ca, "server", &["proxy.test"], Validity::Now);
    let echo = echo_server();
    let proxy = pki.proxy("server", echo);
    let api = FakeApi::start(&[KEY]);
    // The system's bundle: what the machine has (public CAs), then the two private ones.
    let mut bundle =
        std::fs::read_to_string("/etc/ssl/certs/ca-certificates.crt").unwrap_or_default();
    bundle.push_str(&std::fs::read_to_string(pki.path("ca.pem")).unwrap());
    bundle.push_str(&std::fs::read_to_string(&api.ca_file).unwrap());
    let bundle_file = pki.path("bundle.crt");
    std::fs::write(&bundle_file, bundle).unwrap();
    let allow = echo.to_string();
    let env = [("SSL_CERT_FILE", bundle_file.as_str())];
    let agent = agent_with_env(
        proxy.control,
        &[
            "--tls",
            "--tls-server-name",
            "proxy.test",
            "--api-url",
            &api.url,
            "--allow-port",
            &allow,
        ],
        &env,
    );
    proxy.wait_agent(1);
    let line = agent.wait_for("TLS to proxy", SOON);
    assert!(line.contains("issued by \"ca test CA\""), "{line}");
    assert_eq!(echo_through(proxy.tunnels[0], b"system"), b"system");
    // The API over HTTPS, verified against the same bundle: the heartbeat arrives.
    api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON);
    drop(agent);

    // ca_file narrows: only its CA, the bundle's private CA no longer.
    let other = pki.path("other.pem");
    let agent = agent_with_env(
        proxy.control,
        &[
            "--tls",
            "--ca-file",
            &other,
            "--tls-server-name",
            "proxy.test",
        ],
        &env,
    );
    let line = agent.wait_for("certificate not trusted", SOON);
    assert!(line.contains("other.pem"), "{line}");
}
