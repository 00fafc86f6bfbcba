//! A real OpenSSH session and scp through the tunnel: Debian's sshd on a loopback port with its
//! own host key and configuration, reached through meeting-proxy and tunnel-agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

const SSHD: &str = "/usr/sbin/sshd";

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tools_present() -> bool {
    Path::new(SSHD).exists()
        && ["ssh", "scp", "ssh-keygen"].iter().all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

fn client_opts(dir: &Path) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "LogLevel=ERROR",
        "-i",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([dir.join("client").display().to_string()])
    .collect()
}

#[test]
fn ssh_and_scp_through_the_tunnel() {
    if !tools_present() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but sshd/ssh/scp/ssh-keygen are missing: .ci/run must install openssh-server and openssh-client");
        }
        eprintln!(
            "SKIPPED ssh_and_scp_through_the_tunnel: openssh-server/openssh-client not installed"
        );
        return;
    }
    let dir = Dir(std::env::temp_dir().join(format!("tunnel-agent-ssh-{}", std::process::id())));
    let d = &dir.0;
    std::fs::create_dir_all(d).unwrap();
    keygen(&d.join("hostkey"));
    keygen(&d.join("client"));
    std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).unwrap();
    // sshd as root insists on its privilege separation directory.
    let _ = std::fs::create_dir_all("/run/sshd");
    let port = closed_port();
    std::fs::write(
        d.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/hostkey\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nStrictModes no\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
             Subsystem sftp internal-sftp\nLogLevel VERBOSE\n",
            dir = d.display()
        ),
    )
    .unwrap();
    let cfg = d.join("sshd_config").display().to_string();
    let sshd = Proc::spawn(SSHD, &["-D", "-e", "-f", &cfg], &[]);
    sshd.wait_for(&format!("Server listening on 127.0.0.1 port {port}"), SOON);

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
