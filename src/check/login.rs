//! The `ssh-login` step: will Meeting's terminal be able to log in? Something answers on the
//! SSH port with an SSH banner; the login user exists; its `authorized_keys` holds Meeting's
//! current key (by fingerprint, asked of the API); the file and the directories up to the
//! user's home have owners and modes sshd's StrictModes accepts. Reads only.

use std::path::Path;
use std::time::Duration;

use super::verdict::Login;
use super::{Options, Step};
use crate::config::Config;

/// The step and its finding.
#[cfg(not(feature = "tls"))]
pub(super) fn login_step(_cfg: &Config, _opts: &Options) -> (Step, Login) {
    (
        super::skipped(
            "ssh-login",
            "this build has no TLS, so it cannot ask Meeting which key is current",
        ),
        Login::Unknown,
    )
}

/// The step and its finding.
#[cfg(feature = "tls")]
pub(super) fn login_step(cfg: &Config, opts: &Options) -> (Step, Login) {
    use super::{step, Status};
    use crate::sshkeys::{self, edit};
    let t = std::time::Instant::now();
    let fail = |detail: String, hint: &str, login: Login| {
        (
            step("ssh-login", Status::Fail, detail, Some(hint.into()), t),
            login,
        )
    };
    let user = match sshkeys::login_user(cfg) {
        Ok(Ok(u)) => u,
        Ok(Err(why)) => {
            return (
                super::skipped("ssh-login", &format!("no login user to check: {why}")),
                Login::Unknown,
            )
        }
        Err(e) => {
            let name = match &cfg.ssh.user {
                crate::config::Choice::Given(n) => n.clone(),
                _ => sshkeys::DEFAULT_USER.into(),
            };
            return fail(
                e.to_string(),
                &crate::advice::no_user(&name),
                Login::NoUser(name),
            );
        }
    };
    let port = cfg.ssh.ssh_port;
    if let Err(seen) = ssh_banner(port, opts.timeout) {
        return fail(
            format!("127.0.0.1:{port}: {seen}"),
            "start sshd (or set ssh_port to the port it listens on)",
            Login::NoSsh(format!("127.0.0.1:{port}: {seen}")),
        );
    }
    let (path, _) = sshkeys::authorized_keys_path(cfg, &user);
    if let Err(why) = strict_modes(&path, user.uid, &user.home) {
        return fail(
            why.clone(),
            "chmod go-w the path named, and chown it to the user or root",
            Login::Modes(why),
        );
    }
    let bytes = std::fs::read(&path).unwrap_or_default();
    let installed = edit::authorized_keys(&bytes);
    let Some(client) = sshkeys::client(cfg) else {
        return (
            step(
                "ssh-login",
                Status::Warn,
                format!(
                    "sshd answers and {} has {} keys, but without api_url which key Meeting uses \
                     is unknown",
                    path.display(),
                    installed.len()
                ),
                Some("set api_url".into()),
                t,
            ),
            Login::Unknown,
        );
    };
    let client = client.with_timeout(opts.timeout);
    match sshkeys::fetch_meeting_key(cfg, &client) {
        Ok(key) => {
            let fp = key.fingerprint();
            if installed.iter().any(|k| k.fingerprint() == fp) {
                (
                    step(
                        "ssh-login",
                        Status::Pass,
                        format!(
                            "sshd answers on 127.0.0.1:{port}; {} holds Meeting's key {fp} for {}",
                            path.display(),
                            user.name
                        ),
                        None,
                        t,
                    ),
                    Login::Ready,
                )
            } else {
                let what = format!(
                    "{} lacks Meeting's current key {fp} (user {})",
                    path.display(),
                    user.name
                );
                fail(
                    what.clone(),
                    "run `tunnel-agent keys` as root",
                    Login::KeyMissing(what),
                )
            }
        }
        Err(e) => (
            step(
                "ssh-login",
                Status::Warn,
                format!("sshd answers, but Meeting's current key could not be checked: {e}"),
                Some("see the api step; tunnel-agent keys says the same".into()),
                t,
            ),
            Login::Unknown,
        ),
    }
}

/// `Ok` when an SSH banner comes from 127.0.0.1:`port`; else what was seen.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
fn ssh_banner(port: u16, timeout: Duration) -> Result<(), String> {
    use std::io::Read;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut sock = std::net::TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))
        .map_err(|e| format!("nothing accepts connections ({e})"))?;
    let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let n = sock.read(&mut buf).unwrap_or(0);
    if buf[..n].starts_with(b"SSH-") {
        Ok(())
    } else if n == 0 {
        Err("it accepts connections but sends no SSH banner".into())
    } else {
        Err(format!(
            "it answers \"{}\", not an SSH banner",
            crate::bytes::printable::printable(&buf[..n], 40)
        ))
    }
}

/// What sshd's StrictModes checks: the file and every directory up to the user's home (or to
/// `/` when the file is outside it) owned by the user or root and not writable by group or
/// others; the file exists.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
fn strict_modes(file: &Path, uid: u32, home: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let bad = |p: &Path, m: &std::fs::Metadata| {
        let owner_ok = m.uid() == uid || m.uid() == 0;
        let mode = m.mode() & 0o7777;
        (!owner_ok || mode & 0o022 != 0).then(|| {
            format!(
                "{} is owned by uid {} with mode {mode:04o}: sshd wants it owned by the user or \
                 root and not writable by group or others",
                p.display(),
                m.uid()
            )
        })
    };
    let m =
        std::fs::metadata(file).map_err(|e| format!("{} cannot be read ({e})", file.display()))?;
    if let Some(why) = bad(file, &m) {
        return Err(why);
    }
    for dir in file.ancestors().skip(1) {
        if dir.as_os_str().is_empty() {
            break;
        }
        let m = std::fs::metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(why) = bad(dir, &m) {
            return Err(why);
        }
        if dir == home {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_modes_walk_to_the_home_and_name_the_bad_path() {
        let home = std::env::temp_dir().join(format!("tunnel-agent-modes-{}", std::process::id()));
        let ssh = home.join(".ssh");
        std::fs::create_dir_all(&ssh).unwrap();
        let file = ssh.join("authorized_keys");
        std::fs::write(&file, "").unwrap();
        let set = |p: &Path, mode| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let me = std::fs::metadata(&home)
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap();
        set(&home, 0o755);
        set(&ssh, 0o700);
        set(&file, 0o600);
        assert_eq!(strict_modes(&file, me, &home), Ok(()));
        set(&ssh, 0o777);
        assert!(strict_modes(&file, me, &home)
            .unwrap_err()
            .contains(".ssh is owned by"));
        set(&ssh, 0o700);
        set(&file, 0o664);
        assert!(strict_modes(&file, me, &home)
            .unwrap_err()
            .contains("mode 0664"));
        // Outside the home, the walk goes on to / (and /tmp is world-writable).
        set(&file, 0o600);
        assert!(strict_modes(&file, me, Path::new("/nonexistent")).is_err());
        let _ = std::fs::remove_dir_all(&home);
    }
}
