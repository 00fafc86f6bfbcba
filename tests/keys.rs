//! `tunnel-agent keys` against the suite's fake Meeting API over HTTPS: Meeting's key (made at
//! run time by OpenSSH's ssh-keygen) installed in an `authorized_keys` of the test's own, the
//! device key generated and published once, known_hosts kept; every refusal leaves the file
//! as it was. The login user is the user running the tests, so that the owner checks are real.

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

/// OpenSSH's ssh-keygen checks the keys the agent writes.
const SSH_KEYGEN: Need = tool("ssh-keygen", "openssh-client");

fn me() -> String {
    let out = Command::new("id").arg("-un").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// An OpenSSH key pair made by ssh-keygen: (private key path, public line, SHA256 fingerprint).
pub fn openssh_key(path: &Path) -> (PathBuf, String, String) {
    let line = ssh_keygen_ed25519(path, "meeting@meeting.example");
    (path.to_owned(), line, fingerprint(&pub_of(path)))
}

fn pub_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// OpenSSH's ssh-keygen with `args` then `path`; its stdout, after asserting it succeeded.
fn ssh_keygen(args: &[&str], path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen {args:?} refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `ssh-keygen -l -E sha256` of a key file: its fingerprint.
fn fingerprint(path: &Path) -> String {
    ssh_keygen(&["-l", "-E", "sha256", "-f"], path)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned()
}

/// A scratch tree: `ssh/authorized_keys`, `device/id_ed25519`, `device/known_hosts`, `state/`,
/// and a fake API serving a Meeting key and two host keys.
struct Setup {
    dir: PathBuf,
    api: FakeApi,
    meeting: (PathBuf, String, String),
    host_key: String,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let dir =
            std::env::temp_dir().join(format!("tunnel-agent-keys-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["ssh", "device", "state", "meeting"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let api = FakeApi::start(&[KEY]);
        let meeting = openssh_key(&dir.join("meeting/id_ed25519"));
        api.serve_meeting_key(&meeting.1, Some(&meeting.2));
        let (_, host, _) = openssh_key(&dir.join("meeting/host_ed25519"));
        let host_key = host.rsplit_once(' ').unwrap().0.to_owned();
        api.answer(
            "GET",
            "/api/ssh-hostkey",
            200,
            &format!("# meeting.example:22 SSH-2.0-OpenSSH_9.2\nmeeting.example {host_key}\n[meeting.example]:2222 {host_key}\n"),
        );
        Setup {
            dir,
            api,
            meeting,
            host_key,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn authorized_keys(&self) -> PathBuf {
        self.path("ssh/authorized_keys")
    }

    /// The key work's settings on the command line: the API at `api_url`, this user as the
    /// login user, every file in the setup's folder.
    fn key_args(&self, api_url: &str) -> Vec<String> {
        let p = |rel: &str| self.path(rel).display().to_string();
        [
            "--ssh-keys",
            "true",
            "--api-url",
            api_url,
            "--api-ca-file",
            &self.api.ca_file.display().to_string(),
            "--meeting-ssh-user",
            &me(),
            "--authorized-keys-file",
            &p("ssh/authorized_keys"),
            "--device-ssh-key",
            &p("device/id_ed25519"),
            "--known-hosts-file",
            &p("device/known_hosts"),
            "--state-dir",
            &p("state"),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Runs `tunnel-agent keys` with the setup's paths and `extra`: (exit code, stdout, stderr).
    fn keys_with(&self, api_url: &str, extra: &[&str]) -> (i32, String, String) {
        let out = Command::new(bin("tunnel-agent"))
            .args(["keys", "--device-key", KEY, "--host", "127.0.0.1"])
            .args(self.key_args(api_url))
            .args(extra)
            .env("MEETING_TOKEN", TOKEN)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn keys(&self, extra: &[&str]) -> (i32, String, String) {
        self.keys_with(&self.api.url.clone(), extra)
    }

    /// `tunnel-agent keys --retry` with the setup's paths, running: its stdout and stderr.
    fn keys_retry(&self, api_url: &str) -> Proc {
        Launch::new(bin("tunnel-agent"))
            .args(&[
                "keys",
                "--retry",
                "--device-key",
                KEY,
                "--host",
                "127.0.0.1",
            ])
            .args(&self.key_args(api_url))
            .envs(&[("MEETING_TOKEN", TOKEN)])
            .with_stdout()
            .start()
    }

    fn puts(&self) -> Vec<fake_api::Request> {
        self.api
            .requests_to("PUT", &format!("/api/devices/{KEY}/ssh-key"))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Content, mode, owner, inode and mtime: what "untouched" means.
fn snapshot(p: &Path) -> (Vec<u8>, u32, u32, u64, i64, i64) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (
        std::fs::read(p).unwrap_or_default(),
        m.mode(),
        m.uid(),
        m.ino(),
        m.mtime(),
        m.mtime_nsec(),
    )
}

const OTHERS: &str = "# the owner's own keys\r\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@laptop\n\nno-pty,command=\"uptime\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl monitor\n";

#[test]
fn meeting_key_installed_other_lines_kept_rotation_replaces_no_op_writes_nothing() {
    if !may_run(
        "meeting_key_installed_other_lines_kept_rotation_replaces_no_op_writes_nothing",
        &[SSH_KEYGEN],
    ) {
        return;
    }
    let s = Setup::new("install");
    let ak = s.authorized_keys();
    std::fs::write(&ak, OTHERS).unwrap();
    std::fs::set_permissions(&ak, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    let hosts = s.path("device/known_hosts");
    std::fs::write(
        &hosts,
        "other.example ssh-rsa AAAA\nmeeting.example ssh-rsa OLDKEY\n",
    )
    .unwrap();

    let (code, out, err) = s.keys(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "meeting key: installed Meeting's key {}",
            s.meeting.2
        )),
        "{out}"
    );
    let text = std::fs::read_to_string(&ak).unwrap();
    assert!(text.starts_with(OTHERS), "other lines moved:\n{text}");
    assert!(
        text.contains(&format!("\nfrom=\"127.0.0.1,::1\" {}\n", s.meeting.1)),
        "{text}"
    );
    let m = std::fs::metadata(&ak).unwrap();
    assert_eq!((m.mode() & 0o777, m.uid()), (0o640, uid()));
    // ssh-keygen reads the managed file and finds Meeting's key with its fingerprint.
    assert!(ssh_keygen(&["-l", "-E", "sha256", "-f"], &ak).contains(&s.meeting.2));

    // known_hosts: the old meeting.example line replaced, the other host kept.
    let kh = std::fs::read_to_string(&hosts).unwrap();
    assert_eq!(
        kh,
        format!(
            "other.example ssh-rsa AAAA\nmeeting.example {k}\n[meeting.example]:2222 {k}\n",
            k = s.host_key
        )
    );
    assert_eq!(s.puts().len(), 1, "the device key is published once");

    // A second round changes nothing and writes nothing.
    let before = snapshot(&ak);
    let kh_before = snapshot(&hosts);
    let (code, out, _) = s.keys(&[]);
    assert_eq!(code, 0);
    assert!(out.contains("meeting key: ok: Meeting's key"), "{out}");
    assert_eq!(
        snapshot(&ak),
        before,
        "no-op refresh rewrote authorized_keys"
    );
    assert_eq!(
        snapshot(&hosts),
        kh_before,
        "no-op refresh rewrote known_hosts"
    );
    assert_eq!(s.puts().len(), 1, "the same device key was published again");

    // meeting_key_from empty: the key goes in without from=.
    let plain = s.path("plain.json");
    std::fs::write(&plain, r#"{"meeting_key_from": ""}"#).unwrap();
    let (code, out, _) = s.keys(&["--config", plain.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let text = std::fs::read_to_string(&ak).unwrap();
    assert!(
        text.contains(&format!("\n{}\n# END", s.meeting.1)),
        "{text}"
    );
    assert!(text.starts_with(OTHERS) && !text.contains("from="));
    s.keys(&[]);

    // Meeting rotates its key: the block is replaced, nothing else moves.
    let rotated = openssh_key(&s.path("meeting/rotated"));
    s.api.serve_meeting_key(&rotated.1, Some(&rotated.2));
    let (code, out, err) = s.keys(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("replaced the previous Meeting key with"),
        "{out}"
    );
    let text = std::fs::read_to_string(&ak).unwrap();
    assert!(text.starts_with(OTHERS));
    assert!(
        text.contains(&rotated.1) && !text.contains(&s.meeting.1),
        "{text}"
    );
    assert_eq!(text.matches("# BEGIN tunnel-agent").count(), 1);
    assert_eq!(std::fs::metadata(&ak).unwrap().mode() & 0o777, 0o640);

    // A new device key is published, once.
    let (_, new_device, _) = openssh_key(&s.path("device/id_ed25519"));
    s.keys(&[]);
    s.keys(&[]);
    let puts = s.puts();
    assert_eq!(puts.len(), 2, "one PUT per device key");
    assert_eq!(puts[1].json()["pubkey"], new_device.as_str());
}

#[test]
fn the_device_key_is_generated_in_openssh_format_and_published() {
    if !may_run(
        "the_device_key_is_generated_in_openssh_format_and_published",
        &[SSH_KEYGEN],
    ) {
        return;
    }
    let s = Setup::new("generate");
    let (code, out, err) = s.keys(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    let private = s.path("device/id_ed25519");
    let public = pub_of(&private);
    assert_eq!(std::fs::metadata(&private).unwrap().mode() & 0o777, 0o600);
    // OpenSSH accepts both halves, and the private one derives the public one.
    let fp = fingerprint(&public);
    assert_eq!(fingerprint(&private), fp);
    let derived = ssh_keygen(&["-y", "-f"], &private);
    let line = std::fs::read_to_string(&public).unwrap();
    assert!(line.starts_with(derived.trim()), "{line}");
    assert!(
        out.contains(&format!("published the device key {fp}")),
        "{out}"
    );
    let puts = s.puts();
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].json()["pubkey"], line.trim());
    assert_eq!(
        puts[0].header("x-token-code"),
        None,
        "the token is not sent"
    );
}

#[test]
fn every_refusal_leaves_the_file_untouched() {
    if !may_run("every_refusal_leaves_the_file_untouched", &[SSH_KEYGEN]) {
        return;
    }
    let s = Setup::new("refusals");
    let ak = s.authorized_keys();
    std::fs::write(&ak, OTHERS).unwrap();
    let (_, other, other_fp) = openssh_key(&s.path("meeting/other"));
    let good = s.meeting.1.clone();
    let b64 = good.split_whitespace().nth(1).unwrap().to_owned();
    let right_fp = Some(s.meeting.2.clone());
    let pin = pin_config(&s, &other_fp);
    // (case, key served, fingerprint served, extra arguments, what the refusal says)
    let cases = [
        (
            "fingerprint mismatch",
            good.clone(),
            Some(other_fp.clone()),
            None,
            "but the server states",
        ),
        (
            "pinned fingerprint",
            good.clone(),
            right_fp,
            Some(pin.as_str()),
            "meeting_key_fingerprint pins",
        ),
        (
            "options",
            format!("command=\"/bin/sh\" {good}"),
            None,
            None,
            "options of its own",
        ),
        (
            "two lines",
            format!("{good}\n{other}"),
            None,
            None,
            "more than one line",
        ),
        (
            "bad base64",
            format!("ssh-ed25519 {}!!", &b64[..20]),
            None,
            None,
            "not valid base64",
        ),
        (
            "unknown algorithm",
            format!("ssh-dss {b64}"),
            None,
            None,
            "not an accepted key type",
        ),
    ];
    for (name, key, fp, config, says) in cases {
        s.api.serve_meeting_key(&key, fp.as_deref());
        let before = snapshot(&ak);
        let extra: Vec<&str> = config.map(|c| vec!["--config", c]).unwrap_or_default();
        let (code, out, err) = s.keys(&extra);
        assert_eq!(code, 3, "{name}: {out}\n{err}");
        assert!(
            err.contains("meeting key: FAILED: refusing Meeting's key") && err.contains(says),
            "{name}: {err}"
        );
        assert_eq!(snapshot(&ak), before, "{name}: the file changed");
    }

    // An API whose certificate is not trusted: nothing installed, and said.
    s.api.serve_meeting_key(&good, Some(&s.meeting.2));
    let stranger = FakeApi::start(&[]);
    let ca = stranger.ca_file.display().to_string();
    let before = snapshot(&ak);
    let (code, _, err) = s.keys(&["--api-ca-file", &ca]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("meeting key: FAILED: the Meeting API at")
            && err.contains("the server's certificate"),
        "{err}"
    );
    assert_eq!(snapshot(&ak), before);

    // Plain http: nothing installed, whatever the key.
    s.api.serve_meeting_key(&good, Some(&s.meeting.2));
    let before = snapshot(&ak);
    let (code, _, err) = s.keys_with(&s.api.http_url.clone(), &[]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("is plain http") && err.contains("nothing was installed"),
        "{err}"
    );
    assert_eq!(snapshot(&ak), before);

    // A symbolic link in place of authorized_keys: refused, its target untouched.
    let target = s.path("ssh/target");
    std::fs::write(&target, "root's secrets\n").unwrap();
    std::fs::remove_file(&ak).unwrap();
    std::os::unix::fs::symlink(&target, &ak).unwrap();
    let (code, _, err) = s.keys(&[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("it is a symbolic link"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "root's secrets\n"
    );
    assert!(std::fs::symlink_metadata(&ak)
        .unwrap()
        .file_type()
        .is_symlink());
}

/// A configuration file with the pin (the pin has no flag).
fn pin_config(s: &Setup, pin: &str) -> String {
    let p = s.path("pin.json");
    std::fs::write(&p, format!("{{\"meeting_key_fingerprint\": \"{pin}\"}}")).unwrap();
    p.display().to_string()
}

#[test]
fn exit_statuses_of_keys() {
    if !may_run("exit_statuses_of_keys", &[SSH_KEYGEN]) {
        return;
    }
    let s = Setup::new("exit");
    assert_eq!(s.keys(&[]).0, 0);
    // Turned off: nothing to do is success.
    let (code, out, _) = s.keys(&["--ssh-keys", "false"]);
    assert_eq!(code, 0);
    assert_eq!(out.matches(": off: ssh_keys false").count(), 3, "{out}");
    // A login user that does not exist: failed, said.
    let (code, _, err) = s.keys(&["--meeting-ssh-user", "no-such-user-x"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("meeting_ssh_user \"no-such-user-x\" does not exist"),
        "{err}"
    );
    // The API fails: failed, with the API's words.
    s.api.answer(
        "GET",
        "/api/ssh/pubkey",
        500,
        r#"{"error":"key store down"}"#,
    );
    let (code, _, err) = s.keys(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("HTTP 500") && err.contains("key store down"),
        "{err}"
    );
    // No API at all: said once, the other jobs do not wait for it again.
    let nowhere = format!("https://127.0.0.1:{}/api", closed_port());
    let (code, out, err) = s.keys_with(&nowhere, &[]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("meeting key: FAILED: the Meeting API at") && err.contains("did not answer"),
        "{err}"
    );
    assert_eq!(
        out.matches("off: skipped: the Meeting API did not answer")
            .count(),
        2,
        "{out}"
    );
    // A bad configuration.
    let (code, _, err) = s.keys(&["--port", "0"]);
    assert_eq!(code, 2, "{err}");
    // A foreign owner (root only can make one): refused.
    if uid() == 0 {
        s.api.serve_meeting_key(&s.meeting.1, None);
        let ak = s.authorized_keys();
        std::fs::write(&ak, OTHERS).unwrap();
        std::os::unix::fs::chown(&ak, Some(4242), Some(4242)).unwrap();
        let before = snapshot(&ak);
        let (code, _, err) = s.keys(&[]);
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("owned by uid 4242"), "{err}");
        assert_eq!(snapshot(&ak), before);
    }
}

#[test]
fn as_root_the_owner_of_another_users_file_and_a_new_ssh_dir_are_right() {
    let test = "as_root_the_owner_of_another_users_file_and_a_new_ssh_dir_are_right";
    if !may_run(test, &[SSH_KEYGEN, Need::Root]) {
        return;
    }
    // nobody (65534) is in every Debian passwd; its home is not ours to touch, so the path is
    // given, in a directory that belongs to nobody as ~/.ssh would.
    let s = Setup::new("owner");
    let dir = s.path("ssh");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let ak = s.authorized_keys();
    std::fs::write(&ak, OTHERS).unwrap();
    std::os::unix::fs::chown(&ak, Some(65534), Some(65534)).unwrap();
    let (code, out, err) = s.keys(&["--meeting-ssh-user", "nobody"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let m = std::fs::metadata(&ak).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (65534, 65534, 0o644));
    assert!(std::fs::read_to_string(&ak).unwrap().starts_with(OTHERS));
}

#[test]
fn an_agent_without_the_rights_says_so_once_and_carries_the_tunnel() {
    let needs = [SSH_KEYGEN, Need::Root, tool("setpriv", "util-linux")];
    if !may_run(
        "an_agent_without_the_rights_says_so_once_and_carries_the_tunnel",
        &needs,
    ) {
        return;
    }
    let s = Setup::new("rights");
    // The agent runs as nobody; the managed file is in a directory only root may write.
    for d in [&s.dir, &s.path("ssh")] {
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        &s.api.ca_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let allow = echo.to_string();
    let ak = s.authorized_keys().display().to_string();
    let ca = s.api.ca_file.display().to_string();
    let base = agent_args(proxy.control);
    let agent_bin = bin("tunnel-agent");
    let mut args = vec![
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &agent_bin,
        "-v",
    ];
    args.extend(base.iter().map(String::as_str));
    args.extend([
        "--allow-port",
        &allow,
        "--ssh-keys",
        "true",
        "--api-url",
        &s.api.url,
        "--api-ca-file",
        &ca,
        "--meeting-ssh-user",
        "nobody",
        "--authorized-keys-file",
        &ak,
        "--device-ssh-key",
        "",
        "--known-hosts-file",
        "",
        "--heartbeat",
        "false",
    ]);
    let agent = Proc::spawn("setpriv", &args, &[("MEETING_TOKEN", TOKEN)]);
    proxy.wait_agent(1);
    let said = "SSH keys (meeting key): cannot create a temporary file next to";
    agent.wait_for(said, SOON);
    // The tunnel works meanwhile.
    let data = random_bytes(64 << 10, 3);
    assert_eq!(echo_through(proxy.tunnels[0], &data), data);
    // A reload runs another round: the same failure is not said again at WARN.
    agent.signal("HUP");
    agent.wait_for_nth(said, 2, SOON);
    let out = agent.output();
    let warned: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(said) && l.contains(" WARN "))
        .collect();
    assert_eq!(warned.len(), 1, "{out}");
    assert!(
        warned[0].contains("the agent lacks the rights: run `tunnel-agent keys` as root"),
        "{}",
        warned[0]
    );
    assert!(!Path::new(&ak).exists());
}

/// At boot the Meeting API is often not reachable yet (Wi-Fi, DHCP): an agent that does the key
/// work (as root under BusyBox init) tries again 5 s later, doubling, not an hour later, and
/// installs Meeting's key as soon as the API answers.
#[test]
fn a_failed_key_round_is_retried_soon_until_meetings_key_is_installed() {
    if !may_run(
        "a_failed_key_round_is_retried_soon_until_meetings_key_is_installed",
        &[SSH_KEYGEN],
    ) {
        return;
    }
    let s = Setup::new("retry");
    s.api
        .answer("GET", "/api/ssh/pubkey", 503, r#"{"error": "starting"}"#);
    let proxy = Proxy::for_ports(&[], &[]);
    let args = s.key_args(&s.api.url);
    let agent = proxy.agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
    agent.wait_for("SSH keys (meeting key): the Meeting API", SOON);
    let line = agent.wait_for("SSH keys: trying the failed work again in", SOON);
    let secs: f64 = line
        .rsplit("again in ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::MAX);
    assert!(secs <= 6.0, "{line}");
    s.api.serve_meeting_key(&s.meeting.1, Some(&s.meeting.2));
    agent.wait_for("SSH keys (meeting key): installed Meeting's key", SOON);
    let text = std::fs::read_to_string(s.authorized_keys()).unwrap();
    assert!(text.contains(&s.meeting.1), "{text}");
}

#[test]
fn keys_retry_runs_until_the_api_answers_and_stops_at_an_answer_that_will_not_change() {
    if !may_run(
        "keys_retry_runs_until_the_api_answers_and_stops_at_an_answer_that_will_not_change",
        &[SSH_KEYGEN],
    ) {
        return;
    }
    // Unreachable at first (nothing listens), as at boot before the network: --retry waits
    // and tries again; once the API answers, the work is done and it exits 0.
    let s = Setup::new("retry-cmd");
    let api: std::net::SocketAddr = s.api.url[8..s.api.url.len() - 4].parse().unwrap();
    let relay = support::relay::Relay::closed(api);
    let url = format!("https://127.0.0.1:{}/api", relay.port);
    let keys = s.keys_retry(&url);
    keys.wait_for("meeting key: FAILED: ", SOON);
    let line = keys.wait_for("tunnel-agent keys: trying the failed work again in ", SOON);
    assert!(
        ["4 s", "5 s", "6 s"].iter().any(|d| line.ends_with(d)),
        "{line}"
    );
    relay.open();
    keys.wait_for("meeting key: installed Meeting's key", SOON * 2);
    let mut keys = keys;
    assert_eq!(keys.wait_exit(SOON).map(|s| s.code()), Some(Some(0)));
    assert!(std::fs::read_to_string(s.authorized_keys())
        .unwrap()
        .contains(&s.meeting.1));

    // An answer the API means (404: it has no key for Meeting) would come again: no retry.
    let s = Setup::new("retry-404");
    s.api
        .answer("GET", "/api/ssh/pubkey", 404, r#"{"error": "no key"}"#);
    let mut keys = s.keys_retry(&s.api.url);
    assert_eq!(keys.wait_exit(SOON).map(|s| s.code()), Some(Some(1)));
    assert_eq!(
        keys.count("trying the failed work again"),
        0,
        "{}",
        keys.output()
    );
}
