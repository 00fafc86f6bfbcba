//! The `ssh-login` step: will Meeting's terminal be able to log in? An SSH server answers on
//! the SSH port (named from its banner: OpenSSH, Dropbear); the login user exists; its
//! `authorized_keys` holds Meeting's current key (by fingerprint, asked of the API) in a line
//! that server accepts as written (Dropbear refuses an option it does not know, `from=`
//! among them); the file and the directories up to the user's home have owners and modes
//! sshd's StrictModes accepts. Reads only.

use std::path::Path;
#[cfg(feature = "tls")]
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
    use crate::sshkeys::server::SshServer;
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
    let banner = sshkeys::server::banner(port, opts.timeout.min(Duration::from_secs(5)));
    let server = match banner {
        Ok(line) => SshServer::from_banner(&line).unwrap_or(SshServer::Other(line)),
        Err(seen) => {
            return fail(
                seen.clone(),
                &crate::advice::ssh_not_answering(),
                Login::NoSsh(seen.clone()),
            )
        }
    };
    let (path, _) = sshkeys::authorized_keys_path(cfg, &user);
    if let Err(why) = strict_modes(&path, user.uid, &user.home) {
        return fail(
            why.clone(),
            &crate::advice::login_modes(),
            Login::Modes(why),
        );
    }
    let bytes = std::fs::read(&path).unwrap_or_default();
    let installed = edit::authorized_lines(&bytes);
    let Some(client) = sshkeys::client(cfg) else {
        return (
            step(
                "ssh-login",
                Status::Warn,
                format!(
                    "{} answers and {} has {} keys, but without api_url which key Meeting uses \
                     is unknown",
                    server.name(),
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
            let line = installed.iter().find(|(_, k)| k.fingerprint() == fp);
            if let Some((options, _)) = line {
                if let Some(why) = line_refused(&server, options) {
                    let why = format!("{why} ({}, user {})", path.display(), user.name);
                    return fail(
                        why.clone(),
                        &crate::advice::line_refused(),
                        Login::LineRefused(why),
                    );
                }
                let ready = format!(
                    "{} answers on 127.0.0.1:{port}; {} holds Meeting's key {fp} for {} in a \
                     line it accepts ({})",
                    server.name(),
                    path.display(),
                    user.name,
                    if options.is_empty() {
                        "no options"
                    } else {
                        options
                    }
                );
                let copies = unrestricted_copies(&path, &fp);
                if copies.is_empty() {
                    return (
                        step("ssh-login", Status::Pass, ready, None, t),
                        Login::Ready,
                    );
                }
                (
                    step(
                        "ssh-login",
                        Status::Warn,
                        format!(
                            "{ready}; but Meeting's key is also in {} without a restriction \
                             (no from=, command= or restrict): that copy lets it log in from \
                             anywhere, not only through the tunnel",
                            copies.join(", ")
                        ),
                        Some(crate::advice::unrestricted_copy()),
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
                    &crate::advice::key_missing(),
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

/// Where Meeting's key (fingerprint `fp`) is also installed without a restriction, as
/// `FILE line N`: in the login user's `authorized_keys` (`ours`) and in root's, which the web
/// manager's "install key" button also writes to.
#[cfg(feature = "tls")]
fn unrestricted_copies(ours: &Path, fp: &str) -> Vec<String> {
    let mut files = vec![ours.to_owned()];
    if let Some(root) = crate::sshkeys::users::by_uid(0) {
        let file = root.home.join(".ssh").join("authorized_keys");
        if file != ours {
            files.push(file);
        }
    }
    files
        .iter()
        .flat_map(|file| {
            let bytes = std::fs::read(file).unwrap_or_default();
            crate::sshkeys::edit::unrestricted_copies(&bytes, fp)
                .into_iter()
                .map(move |n| format!("{} line {n}", file.display()))
        })
        .collect()
}

/// Why `server` would not accept Meeting's key line with `options`: an option it does not
/// know, or a forced command (the Dropbear gate) that cannot run.
#[cfg(feature = "tls")]
fn line_refused(server: &crate::sshkeys::server::SshServer, options: &str) -> Option<String> {
    if let Some(why) = server.refuses(options) {
        return Some(why);
    }
    use std::os::unix::fs::PermissionsExt;
    let program = crate::sshkeys::server::forced_program(options)?;
    match std::fs::metadata(&program) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => None,
        Ok(_) => Some(format!(
            "the key's forced command {program} is not an executable file"
        )),
        Err(e) => Some(format!(
            "the key's forced command {program} cannot be run: {e}"
        )),
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
