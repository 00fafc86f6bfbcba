//! SSH keys, so that Meeting's web terminal can log in through the tunnel: Meeting's key in
//! the login user's `authorized_keys`, the device's own key published to Meeting, Meeting's
//! SSH host keys in `known_hosts`. Described in `docs/protocol.md`, "SSH keys".
//!
//! Owns one round of that work ([`round`]), done by `tunnel-agent keys` and on the agent's
//! schedule, and what `check` reads of it. Keys come only over verified HTTPS, are validated
//! before anything is written (`key`), go in as whole-file edits that keep every line that is
//! not ours (`edit`), through a safe atomic write (`fs`). Must not know the tunnel; it never
//! sees the token.

pub mod devkey;
pub mod edit;
pub mod fs;
pub mod key;
pub mod server;
pub mod users;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Choice, Config};
use crate::meeting::{ApiError, Client};
use fs::{FsError, Owner, SafeDir};
use key::{KeyError, PublicKey};
use server::SshServer;

/// How long the SSH server on `ssh_port` may take to send its banner.
const BANNER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
use users::User;

/// The login user Meeting's terminal uses when `meeting_ssh_user` is not set.
pub const DEFAULT_USER: &str = "device";
/// File in `state_dir` remembering which device key was published, where and for whom.
pub const PUBLISHED_FILE: &str = "published-ssh-key";

/// What a job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// It wrote or sent something.
    Changed(String),
    /// Everything was already in place.
    Unchanged(String),
    /// It is turned off, or has nothing to do here.
    Off(String),
}

/// Why a job could not be done. Nothing was written when one of these is returned.
#[derive(Debug)]
pub enum KeysError {
    /// The API is plain http: keys would come unauthenticated.
    PlainHttp(String),
    /// The API did not give what was asked.
    Api(ApiError),
    /// A key (Meeting's, a host key, the device's) is not acceptable.
    BadKey {
        /// Which key.
        what: String,
        /// Why.
        why: KeyError,
    },
    /// The key's fingerprint differs from the one the server states beside it.
    Fingerprint {
        /// What the server states.
        server: String,
        /// What the key hashes to.
        computed: String,
    },
    /// The key's fingerprint differs from `meeting_key_fingerprint`.
    Pin {
        /// The configured pin.
        pinned: String,
        /// What the key hashes to.
        computed: String,
    },
    /// `meeting_key_fingerprint` is not a SHA256 fingerprint.
    BadPin(String),
    /// `meeting_ssh_user` names no user of this system.
    NoUser(String),
    /// A file could not be read or written safely.
    Fs(FsError),
    /// A file's content cannot be edited safely.
    Edit {
        /// The file.
        path: PathBuf,
        /// Why.
        why: edit::EditError,
    },
    /// The device key is missing and may not be generated.
    NoDeviceKey {
        /// Its path.
        path: PathBuf,
        /// What is missing.
        why: &'static str,
    },
    /// No randomness to make a key with.
    NoRandom,
    /// Dropbear needs the gate (a forced command naming this binary), which cannot be
    /// written; nothing was written rather than a key line the LAN could use.
    Gate(String),
}

impl KeysError {
    /// Refused for safety (a key, a fingerprint, a file or the transport is not trustworthy),
    /// as opposed to failed (the API or the system did not cooperate).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            KeysError::PlainHttp(_)
                | KeysError::BadKey { .. }
                | KeysError::Fingerprint { .. }
                | KeysError::Pin { .. }
                | KeysError::Edit { .. }
                | KeysError::Gate(_)
                | KeysError::Fs(FsError::Unsafe { .. })
        )
    }

    /// The agent lacks the rights (or the file system is read-only).
    pub fn is_permission(&self) -> bool {
        matches!(self, KeysError::Fs(e) if e.is_permission())
    }

    /// Failed for a reason that passes: no answer from the API (network, DNS, TLS with a
    /// clock not set yet at boot, a timeout) or an API that is down or busy (5xx, 408, 429).
    /// The same round may succeed soon; a refusal, lacking rights, a missing user or an answer
    /// the API means (4xx, a malformed body) would fail again the same way.
    pub fn passes(&self) -> bool {
        match self {
            KeysError::Api(ApiError::Unreachable { .. }) => true,
            KeysError::Api(ApiError::Status { code, .. }) => {
                *code >= 500 || *code == 408 || *code == 429
            }
            _ => false,
        }
    }
}

/// When a round that failed for a passing reason ([`KeysError::passes`]) is tried again: 5 s,
/// doubling to a minute, with jitter, so a device whose network or API comes late (a boot
/// before Wi-Fi or DHCP) gets Meeting's key within a minute of the API answering. The agent's
/// key thread and `tunnel-agent keys --retry` (the systemd unit's) both follow it.
#[derive(Debug)]
pub struct Retry {
    backoff: crate::backoff::Backoff,
    jitter: crate::backoff::Jitter,
}

impl Retry {
    /// The first retry after a failed round.
    pub const FIRST: std::time::Duration = std::time::Duration::from_secs(5);
    /// The longest wait between retries.
    pub const MAX: std::time::Duration = std::time::Duration::from_secs(60);

    /// A fresh sequence.
    pub fn new() -> Retry {
        Retry {
            backoff: Self::policy(),
            jitter: crate::backoff::Jitter::from_entropy(),
        }
    }

    fn policy() -> crate::backoff::Backoff {
        use std::time::Duration;
        crate::backoff::Backoff::new(Self::FIRST, Self::MAX, Duration::ZERO, Duration::ZERO)
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> std::time::Duration {
        self.backoff.next_delay(false, self.jitter.unit())
    }

    /// A round succeeded: the next failure starts again at [`Retry::FIRST`].
    pub fn reset(&mut self) {
        self.backoff = Self::policy();
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry::new()
    }
}

impl fmt::Display for KeysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeysError::PlainHttp(url) => write!(
                f,
                "the Meeting API {url} is plain http, so a key from it could come from anyone on \
                 the path; nothing was installed"
            ),
            KeysError::Api(e) => write!(f, "{e}"),
            KeysError::BadKey { what, why } => {
                write!(f, "refusing {what}: {why}; nothing was written")
            }
            KeysError::Fingerprint { server, computed } => write!(
                f,
                "refusing Meeting's key: it hashes to {computed} but the server states {server}; \
                 the answer was altered on the way or the server is inconsistent; nothing was \
                 written"
            ),
            KeysError::Pin { pinned, computed } => write!(
                f,
                "refusing Meeting's key: its fingerprint is {computed} but \
                 meeting_key_fingerprint pins {pinned}; nothing was written"
            ),
            KeysError::BadPin(p) => write!(
                f,
                "meeting_key_fingerprint \"{p}\" is not a SHA256 fingerprint (SHA256: and 43 \
                 base64 characters, as ssh-keygen -l prints it); nothing was written"
            ),
            KeysError::NoUser(u) => write!(
                f,
                "meeting_ssh_user \"{u}\" does not exist on this device (not in {})",
                users::PASSWD
            ),
            KeysError::Fs(e) => write!(f, "{e}"),
            KeysError::Edit { path, why } => write!(f, "cannot edit {}: {why}", path.display()),
            KeysError::NoDeviceKey { path, why } => {
                write!(f, "the device key {} {why}", path.display())
            }
            KeysError::Gate(why) => write!(
                f,
                "refusing to install Meeting's key for Dropbear, which has no from= option: the \
                 agent cannot name itself as the key's gate ({why}); nothing was written"
            ),
            KeysError::NoRandom => {
                f.write_str("the system gave no randomness to make the device key with")
            }
        }
    }
}

impl std::error::Error for KeysError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            KeysError::Api(e) => Some(e),
            KeysError::Fs(e) => Some(e),
            KeysError::BadKey { why, .. } => Some(why),
            KeysError::Edit { why, .. } => Some(why),
            _ => None,
        }
    }
}

impl From<FsError> for KeysError {
    fn from(e: FsError) -> Self {
        KeysError::Fs(e)
    }
}

impl From<ApiError> for KeysError {
    fn from(e: ApiError) -> Self {
        KeysError::Api(e)
    }
}

/// The jobs of a round, in order.
pub const JOBS: [&str; 3] = ["meeting key", "device key", "known_hosts"];

/// One job's outcome.
#[derive(Debug)]
pub struct Outcome {
    /// `meeting key`, `device key` or `known_hosts`.
    pub job: &'static str,
    /// What it did, or why it could not.
    pub result: Result<Done, KeysError>,
}

/// What is remembered from one round to the next: the device key last published.
#[derive(Debug, Default)]
pub struct Memory {
    published: Option<String>,
}

/// The API client for the key work, when an API is configured.
pub fn client(cfg: &Config) -> Option<Client> {
    cfg.api.client(std::time::Duration::from_secs(15))
}

/// One round of the key work: Meeting's key, the device key, known_hosts.
pub fn round(cfg: &Config, client: Option<&Client>, memory: &mut Memory) -> Vec<Outcome> {
    let off = match (&cfg.ssh.off, client) {
        (Some(why), _) => Some(why.clone()),
        (None, None) => Some(
            "no Meeting API configured (api_url), and the proxy is not the production one".into(),
        ),
        (None, Some(_)) => None,
    };
    let Some(c) = client.filter(|_| off.is_none()) else {
        let why = off.unwrap_or_default();
        return JOBS
            .into_iter()
            .map(|job| Outcome {
                job,
                result: Ok(Done::Off(why.clone())),
            })
            .collect();
    };
    let https = |c: &Client| {
        if c.url.to_string().starts_with("https://") {
            Ok(())
        } else {
            Err(KeysError::PlainHttp(c.url.to_string()))
        }
    };
    // Once the API did not answer, the next jobs would only wait as long again (at boot,
    // before the tunnel starts): they are skipped.
    let unreachable = |r: &Result<Done, KeysError>| {
        matches!(r, Err(KeysError::Api(ApiError::Unreachable { .. })))
    };
    let skipped = || {
        Ok(Done::Off(
            "skipped: the Meeting API did not answer (see above)".into(),
        ))
    };
    let mut out = Vec::new();
    let meeting = https(c).and_then(|()| meeting_key(cfg, c));
    let mut gone = unreachable(&meeting);
    out.push(Outcome {
        job: JOBS[0],
        result: meeting,
    });
    let (device, owner) = match gone {
        true => (skipped(), None),
        false => match https(c).and_then(|()| device_key(cfg, c, memory)) {
            Ok((done, owner)) => (Ok(done), owner),
            Err(e) => (Err(e), None),
        },
    };
    gone |= unreachable(&device);
    out.push(Outcome {
        job: JOBS[1],
        result: device,
    });
    out.push(Outcome {
        job: JOBS[2],
        result: match gone {
            true => skipped(),
            false => https(c).and_then(|()| known_hosts(cfg, c, owner)),
        },
    });
    out
}

/// The login user who gets Meeting's key: `Ok(Ok(user))`; `Ok(Err(why))` when there is none
/// to serve (turned off, or the default user does not exist); `Err` when a named user does not
/// exist.
pub fn login_user(cfg: &Config) -> Result<Result<User, String>, KeysError> {
    match &cfg.ssh.user {
        Choice::Off => Ok(Err("meeting_ssh_user is empty".into())),
        Choice::Default => Ok(users::by_name(DEFAULT_USER).ok_or_else(|| {
            format!(
                "no user \"{DEFAULT_USER}\" on this device and meeting_ssh_user is not set (root \
                 only when named explicitly)"
            )
        })),
        Choice::Given(name) => users::by_name(name)
            .map(Ok)
            .ok_or_else(|| KeysError::NoUser(name.clone())),
    }
}

/// The `authorized_keys` of `user`, and whether its directory is the default `~/.ssh` (which
/// is created when missing).
pub fn authorized_keys_path(cfg: &Config, user: &User) -> (PathBuf, bool) {
    match &cfg.ssh.authorized_keys_file {
        Some(p) => (p.clone(), false),
        None => (user.home.join(".ssh").join("authorized_keys"), true),
    }
}

/// The line installed for Meeting's key, in the form the SSH server on `ssh_port` accepts,
/// keeping the key useless from the LAN either way: `from="…"` for OpenSSH (and while no
/// server answers); for Dropbear, which refuses a line with `from=`, a forced command,
/// `tunnel-agent ssh-gate`, that lets in only the addresses `from=` would, then runs what
/// the client asked. Also what the line's form is, for the outcome's message.
fn installed_line(
    cfg: &Config,
    key: &PublicKey,
    server: Option<&SshServer>,
) -> Result<(String, String), KeysError> {
    let Some(from) = &cfg.ssh.from else {
        return Ok((key.line(), "no options (meeting_key_from is empty)".into()));
    };
    match server {
        Some(s @ SshServer::Dropbear(_)) => {
            let exe = std::env::current_exe().map_err(|e| KeysError::Gate(e.to_string()))?;
            let shown = exe.display().to_string();
            if !shown
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
            {
                return Err(KeysError::Gate(format!(
                    "its path {shown} cannot stand in a command= option"
                )));
            }
            Ok((
                format!("command=\"{shown} ssh-gate {from}\" {}", key.line()),
                format!("{}: only from {from}, through {shown} ssh-gate", s.name()),
            ))
        }
        other => Ok((
            format!("from=\"{from}\" {}", key.line()),
            match other {
                Some(s) => format!("{}: from=\"{from}\"", s.name()),
                None => format!("no SSH server answers yet: from=\"{from}\""),
            },
        )),
    }
}

/// Meeting's key, fetched and validated (fingerprint against the server's and the pin).
pub fn fetch_meeting_key(cfg: &Config, client: &Client) -> Result<PublicKey, KeysError> {
    let answer = client.meeting_key()?;
    let key = PublicKey::parse(&answer.pubkey).map_err(|why| KeysError::BadKey {
        what: "Meeting's key".into(),
        why,
    })?;
    let computed = key.fingerprint();
    if let Some(server) = answer.fingerprint.filter(|f| !f.trim().is_empty()) {
        if key::normalize_fingerprint(&server).as_deref() != Some(computed.as_str()) {
            return Err(KeysError::Fingerprint { server, computed });
        }
    }
    if let Some(pin) = &cfg.ssh.pin {
        let pinned =
            key::normalize_fingerprint(pin).ok_or_else(|| KeysError::BadPin(pin.clone()))?;
        if pinned != computed {
            return Err(KeysError::Pin { pinned, computed });
        }
    }
    Ok(key)
}

/// The directory and the name of `path`.
fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or(OsStr::new("")),
    )
}

/// Writes `new` over `name` in `dir` unless it is already its content; `existing` keeps its
/// owner and mode, a new file gets `fresh`.
fn write_if_changed(
    dir: &SafeDir,
    name: &OsStr,
    existing: Option<&fs::Existing>,
    new: &[u8],
    fresh: Owner,
) -> Result<bool, KeysError> {
    if existing.is_some_and(|e| e.bytes == new) {
        return Ok(false);
    }
    dir.replace(name, new, existing.map_or(fresh, |e| e.owner))?;
    Ok(true)
}

fn meeting_key(cfg: &Config, client: &Client) -> Result<Done, KeysError> {
    let user = match login_user(cfg)? {
        Ok(u) => u,
        Err(why) => return Ok(Done::Off(why)),
    };
    let key = fetch_meeting_key(cfg, client)?;
    let fp = key.fingerprint();
    let (path, default) = authorized_keys_path(cfg, &user);
    let (dir, name) = split(&path);
    let owners = [user.uid, 0];
    let dir = SafeDir::open(dir, &owners, default.then_some((user.uid, user.gid)))?;
    let existing = dir.read(name, &owners)?;
    let before = existing.as_ref().map(|e| edit::block_keys(&e.bytes));
    let server = server::banner(cfg.ssh.ssh_port, BANNER_WAIT)
        .ok()
        .and_then(|b| SshServer::from_banner(&b));
    // No server answers now (restarting, not up yet): a line already in place in a form this
    // configuration writes for some server stays as it is, rather than flip to OpenSSH's.
    let forms: Vec<String> = match server {
        Some(_) => Vec::new(),
        None => [
            SshServer::OpenSsh(String::new()),
            SshServer::Dropbear(String::new()),
        ]
        .iter()
        .filter_map(|s| installed_line(cfg, &key, Some(s)).ok().map(|(l, _)| l))
        .collect(),
    };
    let kept = before
        .as_ref()
        .and_then(|lines| lines.iter().find(|l| forms.contains(l)));
    if let Some(line) = kept {
        return Ok(Done::Unchanged(format!(
            "Meeting's key {fp} is in place for {} in {} (no SSH server answers on port {} now; \
             the line is kept as written: {})",
            user.name,
            path.display(),
            cfg.ssh.ssh_port,
            match line.strip_suffix(&key.line()).unwrap_or("").trim() {
                "" => "no options",
                options => options,
            }
        )));
    }
    let (line, form) = installed_line(cfg, &key, server.as_ref())?;
    let new = edit::with_block(existing.as_ref().map_or(&[][..], |e| &e.bytes), &[line]).map_err(
        |why| KeysError::Edit {
            path: path.clone(),
            why,
        },
    )?;
    let fresh = Owner {
        uid: user.uid,
        gid: user.gid,
        mode: 0o600,
    };
    if !write_if_changed(&dir, name, existing.as_ref(), &new, fresh)? {
        return Ok(Done::Unchanged(format!(
            "Meeting's key {fp} is in place for {} in {} ({form})",
            user.name,
            path.display()
        )));
    }
    let what = match before {
        Some(b) if !b.is_empty() => "replaced the previous Meeting key with",
        _ => "installed",
    };
    Ok(Done::Changed(format!(
        "{what} Meeting's key {fp} for {} in {} ({form})",
        user.name,
        path.display()
    )))
}

/// A user id and group id.
type Ids = (u32, u32);

/// The device key's public half, made first when it is missing and allowed; with the uid and
/// gid of its directory's owner.
pub fn device_public_key(cfg: &Config) -> Result<Option<(PublicKey, Ids)>, KeysError> {
    let Some(path) = &cfg.ssh.device_key else {
        return Ok(None);
    };
    let (me, my_group) = fs::effective_ids();
    let (dir_path, name) = split(path);
    let owners = [0, me];
    let dir = SafeDir::open(dir_path, &owners, Some((me, my_group)))?;
    let mut pub_name = name.to_owned();
    pub_name.push(".pub");
    let dir_owner = (dir.owner.uid, dir.owner.gid);
    if let Some(e) = dir.read(&pub_name, &owners)? {
        let text = String::from_utf8_lossy(&e.bytes);
        let key = PublicKey::parse(&text).map_err(|why| KeysError::BadKey {
            what: format!("the device key {}", dir.path_of(&pub_name).display()),
            why,
        })?;
        return Ok(Some((key, dir_owner)));
    }
    if dir.read(name, &owners)?.is_some() {
        return Err(KeysError::NoDeviceKey {
            path: path.clone(),
            why: "has no .pub beside it (ssh-keygen -y -f KEY > KEY.pub makes it)",
        });
    }
    if !cfg.ssh.generate {
        return Err(KeysError::NoDeviceKey {
            path: path.clone(),
            why: "does not exist and generate_device_key is false",
        });
    }
    let comment = format!("meeting-device-{}", cfg.device_key.value);
    let made = devkey::generate(&comment).ok_or(KeysError::NoRandom)?;
    let mine = |mode| Owner {
        uid: me,
        gid: my_group,
        mode,
    };
    dir.replace(name, made.private.as_bytes(), mine(0o600))?;
    dir.replace(
        &pub_name,
        format!("{}\n", made.public.line()).as_bytes(),
        mine(0o644),
    )?;
    log::info!(
        "created the device SSH key {} ({})",
        path.display(),
        made.public.fingerprint()
    );
    Ok(Some((made.public, dir_owner)))
}

/// Publishes the device key when it is not the one last published (for this API and device).
fn device_key(
    cfg: &Config,
    client: &Client,
    memory: &mut Memory,
) -> Result<(Done, Option<Ids>), KeysError> {
    let Some((key, owner)) = device_public_key(cfg)? else {
        return Ok((Done::Off("device_ssh_key is empty".into()), None));
    };
    let fp = key.fingerprint();
    let record = format!("{} {} {fp}", client.url, cfg.device_key.value);
    let state = cfg.ssh.state_dir.join(PUBLISHED_FILE);
    if memory.published.is_none() {
        memory.published = std::fs::read_to_string(&state)
            .ok()
            .map(|t| t.trim().to_owned());
    }
    if memory.published.as_deref() == Some(record.as_str()) {
        return Ok((
            Done::Unchanged(format!("the device key {fp} is published")),
            Some(owner),
        ));
    }
    client.publish_key(&cfg.device_key.value, &key.line())?;
    if let Err(e) = remember(&cfg.ssh.state_dir, &record) {
        log::warn!(
            "published the device key but cannot remember it in {} ({e}); it will be \
             published again at the next start",
            state.display()
        );
    }
    memory.published = Some(record);
    Ok((
        Done::Changed(format!(
            "published the device key {fp} ({}) to Meeting",
            cfg.ssh
                .device_key
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        )),
        Some(owner),
    ))
}

/// Writes the published record in the agent's own state directory (created 0755).
fn remember(state_dir: &Path, record: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(state_dir)?;
    let tmp = state_dir.join(format!(".{PUBLISHED_FILE}.tmp"));
    std::fs::write(&tmp, format!("{record}\n"))?;
    std::fs::rename(&tmp, state_dir.join(PUBLISHED_FILE))
}

/// Meeting's host keys into the known_hosts of the device key's owner.
fn known_hosts(cfg: &Config, client: &Client, key_owner: Option<Ids>) -> Result<Done, KeysError> {
    let (path, default_owner) = match &cfg.ssh.known_hosts {
        Choice::Off => return Ok(Done::Off("known_hosts_file is empty".into())),
        Choice::Given(p) => (p.clone(), None),
        Choice::Default => {
            let (uid, _) = key_owner.unwrap_or_else(fs::effective_ids);
            let user = users::by_uid(uid).ok_or_else(|| KeysError::NoUser(format!("uid {uid}")))?;
            (
                user.home.join(".ssh").join("known_hosts"),
                Some((user.uid, user.gid)),
            )
        }
    };
    let text = client.host_keys()?;
    let keys = edit::parse_host_keys(&text).map_err(|(line, why)| KeysError::BadKey {
        what: match line {
            0 => "Meeting's host keys (the answer has none)".to_owned(),
            n => format!("Meeting's host keys (line {n} of the answer)"),
        },
        why,
    })?;
    let (uid, gid) = default_owner
        .or(key_owner)
        .unwrap_or_else(fs::effective_ids);
    let owners = [uid, 0];
    let (dir, name) = split(&path);
    let dir = SafeDir::open(dir, &owners, default_owner)?;
    let existing = dir.read(name, &owners)?;
    let new = edit::with_host_keys(existing.as_ref().map_or(&[][..], |e| &e.bytes), &keys);
    let fresh = Owner {
        uid,
        gid,
        mode: 0o644,
    };
    let hosts: Vec<&str> = keys.iter().map(|k| k.host.as_str()).collect();
    let hosts = {
        let mut h = hosts;
        h.dedup();
        h.join(", ")
    };
    if write_if_changed(&dir, name, existing.as_ref(), &new, fresh)? {
        Ok(Done::Changed(format!(
            "wrote {} host keys of {hosts} into {}",
            keys.len(),
            path.display()
        )))
    } else {
        Ok(Done::Unchanged(format!(
            "the host keys of {hosts} are in {}",
            path.display()
        )))
    }
}
