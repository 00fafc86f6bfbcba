//! The cross-built agent under Debian's qemu-user: `--version`, and a real tunnel session
//! against the native meeting-proxy on loopback, echoing data byte-exact.
//! Run by `make test-cross`, which builds the binary and sets CROSS_TARGET and CROSS_AGENT.

mod common;

use std::process::Command;

use common::*;

fn qemu_and_agent() -> (&'static str, String) {
    let target =
        std::env::var("CROSS_TARGET").expect("run with `make test-cross` (CROSS_TARGET unset)");
    let agent =
        std::env::var("CROSS_AGENT").expect("run with `make test-cross` (CROSS_AGENT unset)");
    let qemu = match target.split('-').next() {
        Some("aarch64") => "qemu-aarch64",
        Some("armv7") => "qemu-arm",
        other => panic!("no qemu for {other:?}"),
    };
    (qemu, agent)
}

#[test]
#[ignore = "needs a cross-built agent: make test-cross"]
fn cross_agent_version_under_qemu() {
    let (qemu, agent) = qemu_and_agent();
    let out = Command::new(qemu)
        .arg(&agent)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tunnel-agent "));
}

#[test]
#[ignore = "needs a cross-built agent: make test-cross"]
fn cross_agent_carries_a_tunnel_under_qemu() {
    let (qemu, agent) = qemu_and_agent();
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let port = proxy.control.port().to_string();
    let allow = echo.to_string();
    let args = [
        agent.as_str(),
        "--device-key",
        KEY,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--allow-port",
        &allow,
        "--status-file",
        "",
    ];
    let p = Proc::spawn(qemu, &args, &[("MEETING_TOKEN", TOKEN)]);
    proxy.wait_agent(1);
    let data = random_bytes(4 << 20, 77);
    assert!(
        echo_through(proxy.tunnels[0], &data) == data,
        "bytes differ through the emulated agent"
    );
    p.wait_for("channel 1 open", SOON);
    assert!(!p.output().contains(TOKEN));
}
