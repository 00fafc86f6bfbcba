//! `make demo`: a real tunnel on loopback with the real binaries, the device shown online in
//! a (fake) Meeting API by the agent's heartbeat, then the field report's silent refusal and
//! the one line the agent writes about it.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use support::{api_proxy, bin, device_agent, first_word, proxy_args, FakeApi, Launch, Proc, SOON};

const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";
const TOKEN: &str = "41e291";

/// Starts the agent against `proxy`, once it listens; the agent may open `service` (the only
/// local port it will open); `extra` arguments follow.
fn agent_for(proxy: &Proc, service: u16, extra: &[&str]) -> Proc {
    let control = first_word(&proxy.next_after("listening for agents on "));
    start_agent(&control, KEY, service, extra)
}

/// The agent as device `key` against the proxy at `control`, its log shown.
fn start_agent(control: &str, key: &str, service: u16, extra: &[&str]) -> Proc {
    device_agent(control, key, TOKEN, &[service], extra)
        .unwrap_or_else(|e| panic!("{e}"))
        .echo(true)
        .start()
}

/// meeting-proxy with `args`, its log shown.
fn start_proxy<S: AsRef<str>>(args: &[S]) -> Proc {
    Launch::new(bin("meeting-proxy"))
        .args(args)
        .echo(true)
        .start()
}

fn main() {
    println!("== 1. A local service on the device (an echo server standing in for sshd)");
    let service = TcpListener::bind("127.0.0.1:0").expect("bind");
    let service_port = service.local_addr().expect("addr").port();
    thread::spawn(move || {
        for mut c in service.incoming().map_while(Result::ok) {
            thread::spawn(move || {
                let mut r = c.try_clone().expect("clone");
                let _ = std::io::copy(&mut r, &mut c);
            });
        }
    });
    println!("    listening on 127.0.0.1:{service_port}\n");

    println!("== 2. meeting-proxy, the server side, with one public port for the device");
    let device = format!("{KEY}={TOKEN}");
    let proxy = start_proxy(&proxy_args(KEY, TOKEN, &[service_port]));
    let public = first_word(&proxy.next_after("tunnel "));
    println!();

    println!("== 3. A Meeting REST API (the suite's fake, HTTPS on loopback)");
    let api = FakeApi::start(&[KEY]);
    let availability = format!("/api/devices/{KEY}/availability");
    println!(
        "    {}; before the agent runs, Meeting shows the device: {}\n",
        api.url,
        meeting_shows(&api, &availability)
    );

    println!("== 4. tunnel-agent dials out to the proxy (the token comes from MEETING_TOKEN)");
    println!("   and keeps the device online in Meeting with its heartbeat");
    let ca = api.ca_file.display().to_string();
    let agent = agent_for(
        &proxy,
        service_port,
        &["--api-url", &api.url, "--api-ca-file", &ca],
    );
    proxy.next_after("connected from");
    agent.next_after("tunnel ready");
    agent.next_after("Meeting presence: online");
    let beat = api.wait_for("POST", &format!("/api/devices/{KEY}/online"), 1, SOON);
    println!(
        "    heartbeat received by Meeting: POST {} {}",
        beat[0].path, beat[0].body
    );
    let online = meeting_shows(&api, &availability);
    println!("    Meeting now shows the device: {online}\n");

    println!("== 5. An operator connects to the public port {public}");
    let mut c = TcpStream::connect(&public).expect("connect to the public port");
    let msg = b"hello through the Meeting tunnel";
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    drop(c);
    agent.next_after("closed:");
    println!(
        "    sent {:?}, got back {:?}: {}\n",
        String::from_utf8_lossy(msg),
        String::from_utf8_lossy(&back),
        if back == msg {
            "the tunnel works"
        } else {
            "MISMATCH"
        }
    );
    drop((agent, proxy));

    println!("== 6. meeting-proxy as a drop-in for the production proxy: every handshake decided");
    println!("   by the Meeting API, the public port taken from Meeting's tunnel list");
    let api_back = through_api_proxy(&api, service_port, msg);
    println!();

    println!("== 7. The field report: a proxy that closes right after the handshake");
    let bad = start_proxy(&[
        "--listen",
        "127.0.0.1:0",
        "--device",
        &device,
        "--reply",
        "silent-close",
    ]);
    let agent = agent_for(&bad, service_port, &[]);
    agent.next_after("reconnecting in");
    drop((agent, bad));
    println!("\n    The ERROR line above is what an operator reads: what happened, which device,");
    println!("    what to check. The token never appears in any log line.");
    std::process::exit(if back == msg && api_back && online == "Available" {
        0
    } else {
        1
    });
}

/// Step 6: a proxy with `--api-url`; Meeting grants a tunnel, the agent is accepted by the
/// API, `msg` goes through the granted port; then a device Meeting has not authorized is
/// refused with that reason. Whether `msg` came back.
fn through_api_proxy(api: &FakeApi, service_port: u16, msg: &[u8]) -> bool {
    let public = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let list = serde_json::json!({"tunnels": [{"device_key": KEY, "service": "ssh",
        "port": public, "local_port": service_port, "expires_at": null}]});
    api.answer("GET", "/api/tunnels", 200, &list.to_string());
    let proxy = api_proxy(api).echo(true).start();
    // The two lines may come in either order (the tunnel poller is a thread of its own).
    let line = proxy.wait_for("listening for agents on ", SOON);
    let control = first_word(
        line.split("listening for agents on ")
            .nth(1)
            .unwrap_or_default(),
    );
    proxy.wait_for("tunnel opened", SOON);
    let agent = start_agent(&control, KEY, service_port, &[]);
    proxy.wait_for("authenticated (Meeting API)", SOON);
    agent.next_after("tunnel ready");
    let mut c = TcpStream::connect(("127.0.0.1", public)).expect("connect to the API's port");
    c.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    c.read_exact(&mut back).expect("read");
    drop(c);
    println!(
        "    through public port {public} (from GET /api/tunnels): got back {:?}",
        String::from_utf8_lossy(&back)
    );
    drop(agent);
    let unauthorized = "0123456789ABCDEF0123456789ABCDEF";
    let record = serde_json::json!({"device_key": unauthorized, "authorized": false});
    api.answer(
        "GET",
        &format!("/api/devices/{unauthorized}"),
        200,
        &record.to_string(),
    );
    let other = start_agent(&control, unauthorized, service_port, &[]);
    other.next_after("reconnecting in");
    drop((other, proxy));
    back == msg
}

/// What the fake Meeting API answers for the device's availability (as a client would ask).
fn meeting_shows(api: &FakeApi, path: &str) -> String {
    let before = api.requests_to("GET", path).len();
    let ca = std::fs::read(&api.ca_file).expect("the fake API's CA");
    let certs: Vec<_> = ureq::tls::parse_pem(&ca)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        )
        .build()
        .into();
    let url = api.url.trim_end_matches("/api").to_owned() + path;
    let answer = agent
        .get(&url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
    assert!(api.requests_to("GET", path).len() > before);
    answer
        .and_then(|v| v["status"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no answer".to_owned())
}
