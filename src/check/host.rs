//! What kind of system the device is, as far as advice needs it: the init system (systemd, or
//! SysV/BusyBox scripts in /etc/init.d) and the SSH server installed (OpenSSH or dropbear). Read
//! from the filesystem under a root, so tests can build one; nothing is changed.

use std::path::{Path, PathBuf};

/// How services are started here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// systemd runs (`/run/systemd/system` exists); the SSH server's unit name if found.
    Systemd(Option<String>),
    /// Scripts in /etc/init.d (SysV init or BusyBox); the SSH server's script if found.
    Scripts(Option<PathBuf>),
    /// Neither could be told.
    Unknown,
}

/// The SSH server installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshServer {
    /// OpenSSH's sshd.
    OpenSsh,
    /// Dropbear.
    Dropbear,
    /// None found.
    Unknown,
}

impl SshServer {
    fn name(self) -> &'static str {
        match self {
            SshServer::OpenSsh => "sshd (OpenSSH)",
            SshServer::Dropbear => "dropbear",
            SshServer::Unknown => "the SSH server",
        }
    }
}

/// The device as advice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Init system.
    pub init: Init,
    /// SSH server.
    pub ssh: SshServer,
}

fn exists(root: &Path, p: &str) -> bool {
    root.join(p.trim_start_matches('/')).exists()
}

/// Reads the system under `root` (`/` on a device).
pub fn detect(root: &Path) -> Host {
    let ssh = if ["/usr/sbin/sshd", "/usr/bin/sshd", "/sbin/sshd"]
        .iter()
        .any(|p| exists(root, p))
    {
        SshServer::OpenSsh
    } else if [
        "/usr/sbin/dropbear",
        "/usr/bin/dropbear",
        "/usr/sbin/dropbearmulti",
    ]
    .iter()
    .any(|p| exists(root, p))
    {
        SshServer::Dropbear
    } else {
        SshServer::Unknown
    };
    let init = if exists(root, "/run/systemd/system") {
        let units = [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ];
        let names: &[&str] = match ssh {
            SshServer::Dropbear => &["dropbear"],
            _ => &["ssh", "sshd"],
        };
        let unit = names.iter().find(|n| {
            units
                .iter()
                .any(|d| exists(root, &format!("{d}/{n}.service")))
        });
        Init::Systemd(unit.map(|n| (*n).to_owned()))
    } else if exists(root, "/etc/init.d") {
        let wanted = match ssh {
            SshServer::Dropbear => "dropbear",
            _ => "ssh",
        };
        let mut scripts: Vec<PathBuf> = std::fs::read_dir(root.join("etc/init.d"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.contains(wanted))
                    .map(|n| Path::new("/etc/init.d").join(n))
                    .collect()
            })
            .unwrap_or_default();
        scripts.sort();
        Init::Scripts(scripts.into_iter().next())
    } else {
        Init::Unknown
    };
    Host { init, ssh }
}

/// What to do when nothing listens on `127.0.0.1:port`; `ssh_port` is where the SSH server
/// should be. Names a command only when this system shows which one.
pub fn start_advice(host: &Host, port: u16, ssh_port: u16) -> String {
    let generic = format!("nothing listens on 127.0.0.1:{port}: start the service that should");
    if port != ssh_port {
        return generic;
    }
    let server = host.ssh.name();
    let command = match &host.init {
        Init::Systemd(Some(unit)) => format!("systemctl start {unit}"),
        Init::Scripts(Some(script)) => format!("{} start", script.display()),
        _ => return format!("nothing listens on 127.0.0.1:{port}: start {server}"),
    };
    format!("nothing listens on 127.0.0.1:{port}: start {server} ({command})")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Root(PathBuf);

    impl Root {
        fn new(name: &str, files: &[&str]) -> Root {
            let dir = std::env::temp_dir()
                .join(format!("tunnel-agent-host-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for f in files {
                let p = dir.join(f.trim_start_matches('/'));
                if f.ends_with('/') {
                    std::fs::create_dir_all(&p).unwrap();
                } else {
                    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                    std::fs::write(&p, "").unwrap();
                }
            }
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn advice_fits_the_init_system_and_the_ssh_server() {
        let cases: &[(&str, &[&str], &str)] = &[
            (
                "debian",
                &[
                    "/run/systemd/system/",
                    "/usr/sbin/sshd",
                    "/lib/systemd/system/ssh.service",
                ],
                "start sshd (OpenSSH) (systemctl start ssh)",
            ),
            (
                "yocto-systemd",
                &[
                    "/run/systemd/system/",
                    "/usr/sbin/sshd",
                    "/usr/lib/systemd/system/sshd.service",
                ],
                "(systemctl start sshd)",
            ),
            (
                "buildroot-dropbear",
                &[
                    "/etc/init.d/S50dropbear",
                    "/etc/init.d/S01syslogd",
                    "/usr/sbin/dropbear",
                ],
                "start dropbear (/etc/init.d/S50dropbear start)",
            ),
            (
                "busybox-openssh",
                &["/etc/init.d/S50sshd", "/usr/sbin/sshd"],
                "(/etc/init.d/S50sshd start)",
            ),
            (
                "bare",
                &["/usr/sbin/sshd"],
                "127.0.0.1:22: start sshd (OpenSSH)",
            ),
            ("nothing", &[], "127.0.0.1:22: start the SSH server"),
        ];
        for (name, files, want) in cases {
            let root = Root::new(name, files);
            let advice = start_advice(&detect(&root.0), 22, 22);
            assert!(advice.contains(want), "{name}: {advice}");
            assert!(advice.contains("127.0.0.1:22"), "{name}: {advice}");
            if !name.contains("debian") {
                assert!(!advice.contains("systemctl start ssh)"), "{name}: {advice}");
            }
        }
    }

    #[test]
    fn other_ports_get_generic_advice_naming_the_port() {
        let root = Root::new("web", &["/run/systemd/system/", "/usr/sbin/sshd"]);
        assert_eq!(
            start_advice(&detect(&root.0), 2223, 22),
            "nothing listens on 127.0.0.1:2223: start the service that should"
        );
        // An SSH server on another port is the SSH port.
        assert!(start_advice(&detect(&root.0), 2223, 2223).contains("start sshd"));
    }
}
