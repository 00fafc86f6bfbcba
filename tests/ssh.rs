//! A real OpenSSH session and scp through the tunnel: Debian's sshd on a loopback port with its
//! own host key and configuration, reached through meeting-proxy and tunnel-agent.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::sshd::{keygen, run, Sshd, SSHD};
use support::*;

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `true` when OpenSSH's server and client are missing here (after saying so; under CI their
/// absence is a failure).
fn skip_without_openssh(test: &str) -> bool {
    !may_run(
        test,
        &[
            tool(SSHD, "openssh-server"),
            tool("ssh", "openssh-client"),
            tool("scp", "openssh-client"),
            tool("ssh-keygen", "openssh-client"),
        ],
    )
}

/// Debian's sshd on a loopback port with `dir/hostkey`, reading `authorized_keys`; returns it
/// once it listens, with its port.
fn start_sshd(dir: &Path, authorized_keys: &Path) -> (Proc, u16) {
    let sshd = Sshd::start(dir, authorized_keys);
    (sshd.proc, sshd.port)
}

fn client_opts(dir: &Path) -> Vec<String> {
    ssh_client_opts(&dir.join("client"))
}

#[test]
fn ssh_and_scp_through_the_tunnel() {
    if skip_without_openssh("ssh_and_scp_through_the_tunnel") {
        return;
    }
    let dir = Dir(std::env::temp_dir().join(format!("tunnel-agent-ssh-{}", std::process::id())));
    let d = &dir.0;
    std::fs::create_dir_all(d).unwrap();
    keygen(&d.join("client"));
    std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
    let (_sshd, port) = start_sshd(d, &d.join("authorized_keys"));

    let proxy = Proxy::for_ports(&[port], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    let public = proxy.tunnels[0].port().to_string();
    let opts = client_opts(d);

    let out = run(Command::new("ssh")
        .args(&opts)
        .args(["-p", &public, "127.0.0.1", "echo ok"]));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");

    let up = random_bytes(20 << 20, 11);
    std::fs::write(d.join("up.bin"), &up).unwrap();
    run(Command::new("scp")
        .args(&opts)
        .args(["-P", &public])
        .arg(d.join("up.bin"))
        .arg(format!("127.0.0.1:{}", d.join("up-remote.bin").display())));
    assert!(
        std::fs::read(d.join("up-remote.bin")).unwrap() == up,
        "upload differs"
    );

    let down = random_bytes(20 << 20, 12);
    std::fs::write(d.join("down-remote.bin"), &down).unwrap();
    run(Command::new("scp")
        .args(&opts)
        .args(["-P", &public])
        .arg(format!("127.0.0.1:{}", d.join("down-remote.bin").display()))
        .arg(d.join("down.bin")));
    assert!(
        std::fs::read(d.join("down.bin")).unwrap() == down,
        "download differs"
    );

    assert!(
        agent.count(&format!("open: 127.0.0.1:{port}")) >= 3,
        "{}",
        agent.output()
    );
    assert!(!agent.output().contains(TOKEN));
}

/// What Meeting's web terminal does: log in through the tunnel as the login user with
/// Meeting's own key, which the agent fetched from the (fake) Meeting API and installed in the
/// `authorized_keys` sshd reads.
#[test]
fn meetings_terminal_logs_in_with_the_key_the_agent_installed() {
    if skip_without_openssh("meetings_terminal_logs_in_with_the_key_the_agent_installed") {
        return;
    }
    let dir =
        Dir(std::env::temp_dir().join(format!("tunnel-agent-ssh-meeting-{}", std::process::id())));
    let d = &dir.0;
    for sub in ["managed", "device", "state"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    let authorized = d.join("managed/authorized_keys");
    let (sshd, port) = start_sshd(d, &authorized);
    // Meeting's key: made here, served by the fake API, never copied by the test.
    keygen(&d.join("client"));
    let meeting_line = std::fs::read_to_string(d.join("client.pub")).unwrap();
    let api = FakeApi::start(&[KEY]);
    api.serve_meeting_key(meeting_line.trim(), None);
    let host_line = std::fs::read_to_string(d.join("hostkey.pub")).unwrap();
    api.answer(
        "GET",
        "/api/ssh-hostkey",
        200,
        &format!("[127.0.0.1]:2222 {}", host_line.trim()),
    );
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let path = |p: &str| d.join(p).display().to_string();
    let ca = api.ca_file.display().to_string();
    let proxy = Proxy::for_ports(&[port], &[]);
    let agent = proxy.agent(&[
        "--ssh-keys",
        "true",
        "--api-url",
        &api.url,
        "--api-ca-file",
        &ca,
        "--meeting-ssh-user",
        user.trim(),
        "--authorized-keys-file",
        &authorized.display().to_string(),
        "--device-ssh-key",
        &path("device/id_ed25519"),
        "--known-hosts-file",
        &path("device/known_hosts"),
        "--state-dir",
        &path("state"),
    ]);
    proxy.wait_agent(1);
    agent.wait_for("SSH keys (meeting key): installed Meeting's key", SOON);
    assert!(
        std::fs::read_to_string(&authorized)
            .unwrap()
            .contains(&format!("from=\"127.0.0.1,::1\" {}", meeting_line.trim())),
        "the managed authorized_keys lacks Meeting's key"
    );

    let public = proxy.tunnels[0].port().to_string();
    let out = run(Command::new("ssh").args(client_opts(d)).args([
        "-p",
        &public,
        "127.0.0.1",
        "echo logged in as $(id -un)",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("logged in as {}", user.trim())
    );
    assert!(
        sshd.output().contains("Accepted publickey"),
        "{}",
        sshd.output()
    );
    // The rest of the round: the device key published, the host key in known_hosts.
    api.wait_for("PUT", &format!("/api/devices/{KEY}/ssh-key"), 1, SOON);
    agent.wait_for("SSH keys (known_hosts): wrote 1 host keys", SOON);
    assert!(!agent.output().contains(TOKEN));
}

/// The drop-in proxy: the device accepted by the (fake) Meeting API and the public port taken
/// from its tunnel list, then a real ssh session through it.
#[test]
fn ssh_through_a_tunnel_the_meeting_api_granted() {
    if skip_without_openssh("ssh_through_a_tunnel_the_meeting_api_granted") {
        return;
    }
    let dir =
        Dir(std::env::temp_dir().join(format!("tunnel-agent-ssh-api-{}", std::process::id())));
    let d = &dir.0;
    std::fs::create_dir_all(d).unwrap();
    keygen(&d.join("client"));
    std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
    let (_sshd, port) = start_sshd(d, &d.join("authorized_keys"));

    let api = FakeApi::start(&[KEY]);
    let record = serde_json::json!({"device_key": KEY, "authorized": true,
                                    "services": ["ssh"], "token_code": TOKEN});
    api.answer(
        "GET",
        &format!("/api/devices/{KEY}"),
        200,
        &record.to_string(),
    );
    let public = closed_port();
    let list = serde_json::json!({"tunnels": [{"device_key": KEY, "service": "ssh",
        "port": public, "local_port": port, "expires_at": null}]});
    api.answer("GET", "/api/tunnels", 200, &list.to_string());
    let proxy = Proxy::start(&[
        "--api-url",
        &api.url,
        "--api-ca-file",
        api.ca_file.to_str().unwrap(),
        "--public-bind",
        "127.0.0.1",
    ]);
    let allow = port.to_string();
    let agent = proxy.agent(&["--allow-port", &allow]);
    proxy.proc.wait_for(
        &format!(
            "tunnel opened: device {KEY} service ssh public port {public} -> local port {port}"
        ),
        SOON,
    );
    proxy.proc.wait_for("authenticated (Meeting API)", SOON);
    agent.wait_for("tunnel ready", SOON);

    let out = run(Command::new("ssh").args(client_opts(d)).args([
        "-p",
        &public.to_string(),
        "127.0.0.1",
        "echo through the API tunnel",
    ]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "through the API tunnel"
    );
    assert!(agent.count(&format!("open: 127.0.0.1:{port}")) >= 1);
    assert!(!proxy.proc.output().contains(TOKEN));
}
