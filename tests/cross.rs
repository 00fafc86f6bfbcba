//! The cross-built agent under Debian's qemu-user (the ARMv6 build on qemu's ARM1176, the Pi
//! Zero's CPU): `--version`, and a real tunnel session against the native meeting-proxy on
//! loopback, echoing data byte-exact.
//! Run by `make test-cross`, which builds the binary and sets CROSS_TARGET and CROSS_AGENT.

mod support;

use std::process::Command;

use support::*;

/// The qemu-user to run the target's agent with, and the CPU it emulates by default: the
/// ARMv6 build runs on the Pi Zero's and Pi 1's ARM1176, where an ARMv7 instruction would
/// stop it with "Illegal instruction".
fn qemu_and_agent() -> (&'static str, String) {
    let target =
        std::env::var("CROSS_TARGET").expect("run with `make test-cross` (CROSS_TARGET unset)");
    let agent =
        std::env::var("CROSS_AGENT").expect("run with `make test-cross` (CROSS_AGENT unset)");
    let qemu = match target.split('-').next() {
        Some("aarch64") => "qemu-aarch64",
        Some("armv7") | Some("arm") => "qemu-arm",
        other => panic!("no qemu for {other:?}"),
    };
    (qemu, agent)
}

/// `QEMU_CPU` for the target: `arm1176` for the ARMv6 build, qemu's default otherwise.
fn cpu_env() -> Vec<(&'static str, &'static str)> {
    match std::env::var("CROSS_TARGET")
        .unwrap_or_default()
        .split('-')
        .next()
    {
        Some("arm") => vec![("QEMU_CPU", "arm1176")],
        _ => Vec::new(),
    }
}

/// The CPU without AES instructions the TLS suite test runs the 32-bit build on.
fn cpu_without_aes() -> &'static str {
    match cpu_env().first() {
        Some((_, cpu)) => cpu,
        None => "cortex-a7",
    }
}

#[test]
#[ignore = "needs a cross-built agent: make test-cross"]
fn cross_agent_version_under_qemu() {
    let (qemu, agent) = qemu_and_agent();
    let out = Command::new(qemu)
        .envs(cpu_env())
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
    let mut env = vec![("MEETING_TOKEN", TOKEN)];
    env.extend(cpu_env());
    let p = Proc::spawn(qemu, &args, &env);
    proxy.wait_agent(1);
    let data = random_bytes(4 << 20, 77);
    assert!(
        echo_through(proxy.tunnels[0], &data) == data,
        "bytes differ through the emulated agent"
    );
    p.wait_for("channel 1 open", SOON);
    assert!(!p.output().contains(TOKEN));
}

/// On a CPU without AES instructions the agent offers ChaCha20-Poly1305 first and the proxy
/// takes it; with them, AES-GCM. qemu-arm's cortex-a7 (ARMv7) and arm1176 (ARMv6, the Pi
/// Zero's) have no AES instructions, its `max` CPU has the ARMv8 crypto extension. qemu has no aarch64 CPU model without them, so
/// the aarch64 run checks only that the suite is AES-GCM there.
#[test]
#[ignore = "needs a cross-built agent: make test-cross"]
fn the_tls_suite_follows_the_cpu_under_qemu() {
    let (qemu, agent) = qemu_and_agent();
    let dir = std::env::temp_dir().join(format!("ta-cross-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("proxy.pem"), dir.join("proxy.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (cert_file, key_file) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let proxy = Proxy::for_ports(&[], &["--tls-cert", cert_file, "--tls-key", key_file]);
    let port = proxy.control.port().to_string();
    let suite_on = |cpu: &str| {
        let out = Command::new(qemu)
            .args([
                "-cpu",
                cpu,
                &agent,
                "check",
                "--tls",
                "--ca-file",
                cert_file,
            ])
            .args(["--host", "127.0.0.1", "--port", &port, "--device-key", KEY])
            .env("MEETING_TOKEN", TOKEN)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("PASS  tls"));
        line.unwrap_or_else(|| panic!("no TLS line from check on {cpu}:\n{text}"))
            .to_string()
    };
    let with_aes = suite_on("max");
    assert!(with_aes.contains("TLS13_AES_"), "{with_aes}");
    if qemu == "qemu-arm" {
        let without = suite_on(cpu_without_aes());
        assert!(without.contains("TLS13_CHACHA20_POLY1305"), "{without}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The 32-bit ARM builds with TLS fit the budget: 1.5 MB (the README's size section).
#[test]
#[ignore = "needs a cross-built agent: make test-cross"]
fn the_32_bit_arm_builds_stay_within_the_size_budget() {
    let (_, agent) = qemu_and_agent();
    let target = std::env::var("CROSS_TARGET").unwrap_or_default();
    let size = std::fs::metadata(&agent).unwrap().len();
    println!("{target}: {size} bytes");
    if target.starts_with("arm") {
        assert!(size <= 1_500_000, "{target}: {size} bytes, over 1.5 MB");
    }
}
