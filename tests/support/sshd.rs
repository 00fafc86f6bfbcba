//! Debian's OpenSSH server on a loopback port, with a host key and configuration of the test's
//! own, and a client key that logs in to it: the real login a tunnel must carry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{closed_port, ssh_client_opts, Proc, SOON};

/// Where Debian's sshd is.
pub const SSHD: &str = "/usr/sbin/sshd";

/// Runs `cmd`, which must succeed; its output.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An Ed25519 key pair without a passphrase at `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

/// A running sshd.
pub struct Sshd {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
}

impl Sshd {
    /// Debian's sshd on a loopback port with `dir/hostkey`, reading `authorized_keys`; returns
    /// once it listens.
    pub fn start(dir: &Path, authorized_keys: &Path) -> Sshd {
        keygen(&dir.join("hostkey"));
        // sshd as root insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = closed_port();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {keys}\nStrictModes no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nPermitRootLogin prohibit-password\n\
                 Subsystem sftp internal-sftp\nLogLevel VERBOSE\n",
                d = dir.display(),
                keys = authorized_keys.display()
            ),
        )
        .unwrap();
        let cfg = dir.join("sshd_config").display().to_string();
        let proc = Proc::spawn(SSHD, &["-D", "-e", "-f", &cfg], &[]);
        proc.wait_for(&format!("Server listening on 127.0.0.1 port {port}"), SOON);
        Sshd {
            proc,
            port,
            dir: dir.to_owned(),
        }
    }

    /// An sshd in `dir` that lets in `dir/client`, a key made here.
    pub fn with_client_key(dir: &Path) -> Sshd {
        keygen(&dir.join("client"));
        std::fs::copy(dir.join("client.pub"), dir.join("authorized_keys")).unwrap();
        Sshd::start(dir, &dir.join("authorized_keys"))
    }

    /// Logs in through `port` of 127.0.0.1 (a tunnel's public port) with `dir/client` and runs
    /// `echo ok`; its standard output.
    pub fn login_through(&self, port: u16) -> String {
        let out = run(Command::new("ssh")
            .args(ssh_client_opts(&self.dir.join("client")))
            .args(["-p", &port.to_string(), "127.0.0.1", "echo ok"]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}
