//! Agent configuration: command-line flags, then environment, then a JSON file, then defaults;
//! every value remembers where it came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// Proxy host used when nothing else is configured.
pub const DEFAULT_HOST: &str = "meeting.ygsoft.fr";
/// Meeting API of the production proxy host, used when `tunnel_host` is [`DEFAULT_HOST`].
pub const DEFAULT_API_URL: &str = "https://meeting.ygsoft.fr/api";
/// Shortest heartbeat interval accepted.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Proxy control port used when nothing else is configured.
pub const DEFAULT_PORT: u16 = 9001;
/// Configuration files tried in order when `--config` is not given.
pub const DEFAULT_CONFIG_FILES: &[&str] =
    &["/etc/tunnel-agent/config.json", "/etc/rpi-cam/meeting.json"];
/// The device's own SSH key, unless `device_ssh_key` says otherwise.
pub const DEFAULT_DEVICE_SSH_KEY: &str = "/root/.ssh/id_ed25519";
/// The agent's own state, unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tunnel-agent";
/// Last place a device key is looked for.
pub const DEFAULT_DEVICE_INFO: &str = "/etc/meeting/device_info.json";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag, e.g. `--host`.
    Flag(&'static str),
    /// An environment variable, e.g. `MEETING_TOKEN`.
    Env(&'static str),
    /// A key in a JSON file.
    File(PathBuf),
    /// The built-in default.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag(name) => write!(f, "flag {name}"),
            Source::Env(name) => write!(f, "environment {name}"),
            Source::File(path) => write!(f, "file {}", path.display()),
            Source::Default => f.write_str("default"),
        }
    }
}

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Its origin.
    pub source: Source,
}

/// A token: never printed, only masked (`41****`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a token.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The token itself, for the handshake only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first two characters then `****`: enough to tell two tokens apart, not to use one.
    pub fn masked(&self) -> String {
        let head: String = self.0.chars().take(2).collect();
        format!("{head}****")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

/// One setting, written once: its JSON key (also its name in messages), command-line flag and
/// environment variable, in the order they are looked at: flag, environment, file, default.
#[derive(Debug)]
pub struct Setting {
    /// Key in the JSON configuration file.
    pub key: &'static str,
    /// Command-line flag, if it has one (the token never does: a command line is public).
    pub flag: Option<&'static str>,
    /// Environment variable, if it has one.
    pub env: Option<&'static str>,
    /// What the flag's value is called in the usage (`""`: a switch without a value).
    pub arg: &'static str,
    /// The default, as shown in the usage (`""`: none).
    pub default: &'static str,
    /// What it does, for the usage.
    pub help: &'static str,
}

const fn setting(
    key: &'static str,
    flag: Option<&'static str>,
    env: Option<&'static str>,
    arg: &'static str,
    default: &'static str,
    help: &'static str,
) -> Setting {
    Setting {
        key,
        flag,
        env,
        arg,
        default,
        help,
    }
}

/// Every setting of the agent. `--config` and the verbosity flags are not settings: they say
/// where to look and how much to log.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    // key, flag, environment, the flag's value, default (as shown), what it does
    setting("device_key", Some("--device-key"), Some("MEETING_DEVICE_KEY"), "KEY", "", "device key (last resort: /etc/meeting/device_info.json)"),
    setting("token_code", None, Some("MEETING_TOKEN"), "", "", "token (never a flag)"),
    setting("tunnel_host", Some("--host"), Some("MEETING_TUNNEL_HOST"), "HOST", DEFAULT_HOST, "proxy host"),
    setting("tunnel_port", Some("--port"), Some("MEETING_TUNNEL_PORT"), "PORT", "9001", "proxy control port"),
    setting("tunnel_ssl", Some("--tls"), Some("MEETING_TUNNEL_TLS"), "", "false", "TLS to the proxy"),
    setting("ca_file", Some("--ca-file"), None, "FILE", "", "trust this PEM CA bundle instead of the public roots"),
    setting("tls_server_name", Some("--tls-server-name"), None, "NAME", "the host", "name checked in the proxy certificate"),
    setting("api_url", Some("--api-url"), Some("MEETING_API_URL"), "URL", "https://meeting.ygsoft.fr/api with the default host, else none", "Meeting API base URL, with or without /api"),
    setting("api_ca_file", Some("--api-ca-file"), None, "FILE", "ca_file", "PEM CA bundle for the Meeting API, when it differs from the proxy's"),
    setting("heartbeat", Some("--heartbeat"), Some("MEETING_HEARTBEAT"), "true|false", "true when an API URL is known", "keep the device online in Meeting"),
    setting("heartbeat_interval", Some("--heartbeat-interval"), None, "SECS", "30", "time between heartbeats (at least 5)"),
    setting("heartbeat_note", None, None, "", "tunnel-agent VERSION on MODEL", "the note the heartbeat sends"),
    setting("heartbeat_retry_unregistered", None, None, "", "600", "seconds between heartbeats while Meeting answers 404/401/403"),
    setting("public_ip_url", None, None, "", "", "URL answering the device's public address as text (none: not sent)"),
    setting("ssh_keys", Some("--ssh-keys"), Some("MEETING_SSH_KEYS"), "true|false", "true", "install Meeting's SSH key, publish the device key, keep known_hosts (verified HTTPS only)"),
    setting("meeting_ssh_user", Some("--meeting-ssh-user"), None, "USER", "device, when that user exists", "login user of Meeting's terminal, who gets Meeting's key ('' turns this off)"),
    setting("authorized_keys_file", Some("--authorized-keys-file"), None, "PATH", "HOME/.ssh/authorized_keys", "where Meeting's key is installed"),
    setting("meeting_key_fingerprint", None, None, "", "", "pin: Meeting's key must have this SHA256 fingerprint"),
    setting("meeting_key_from", None, None, "", "127.0.0.1,::1", "from= option put on Meeting's key ('' puts none)"),
    setting("ssh_keys_interval", None, None, "", "3600", "seconds between two rounds of key work"),
    setting("device_ssh_key", Some("--device-ssh-key"), None, "PATH", DEFAULT_DEVICE_SSH_KEY, "the device's own SSH key, whose .pub is published to Meeting ('' turns this off)"),
    setting("generate_device_key", None, None, "", "true", "create device_ssh_key (Ed25519) when it is missing"),
    setting("known_hosts_file", Some("--known-hosts-file"), None, "PATH", "HOME/.ssh/known_hosts of the device key's owner", "where Meeting's SSH host keys go ('' turns this off)"),
    setting("state_dir", Some("--state-dir"), None, "DIR", DEFAULT_STATE_DIR, "the agent's own state (which device key was published)"),
    setting("ssh_port", None, None, "", "22", "port of the local sshd (check)"),
    setting("handshake_timeout", Some("--handshake-timeout"), None, "SECS", "5", "wait for the handshake reply before assuming an older proxy"),
    setting("connect_timeout", Some("--connect-timeout"), None, "SECS", "5", "local connect timeout per channel"),
    setting("local_write_timeout", Some("--local-write-timeout"), None, "SECS", "15", "a local service that takes no data this long is closed"),
    setting("allowed_ports", Some("--allow-port"), None, "PORT", "22", "local port the proxy may open (flag repeatable; file: [22, 5900])"),
    setting("max_channels", Some("--max-channels"), None, "N", "64", "channels open at once"),
    setting("max_frame", Some("--max-frame"), None, "BYTES", "1048576", "largest frame accepted from the proxy"),
    setting("keepalive_idle", Some("--keepalive-idle"), None, "SECS", "30", "dead-link detection: idle time before TCP keepalive probes"),
    setting("keepalive_interval", Some("--keepalive-interval"), None, "SECS", "10", "time between probes"),
    setting("keepalive_count", Some("--keepalive-count"), None, "N", "3", "unanswered probes before the link is declared dead"),
    setting("user_timeout", Some("--user-timeout"), None, "SECS", "60", "sent data unacknowledged this long: the link is dead"),
    setting("status_file", Some("--status-file"), None, "PATH", DEFAULT_STATUS_FILE, "status file ('' turns it off)"),
    setting("syslog", Some("--syslog"), None, "", "false", "log to the local syslog socket instead of stderr"),
    setting("syslog_socket", Some("--syslog-socket"), None, "PATH", crate::logging::SYSLOG_SOCKET, "that socket"),
];

/// The setting with JSON key `key`.
fn lookup(key: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .unwrap_or_else(|| unreachable!("no setting {key}"))
}

/// The setting a command-line flag sets.
pub fn setting_of_flag(flag: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.flag == Some(flag))
}

/// The options part of the usage, from [`SETTINGS`].
pub fn usage() -> String {
    let mut out = String::new();
    for s in SETTINGS {
        let Some(flag) = s.flag else { continue };
        let left = if s.arg.is_empty() {
            flag.to_owned()
        } else {
            format!("{flag} {}", s.arg)
        };
        let mut right = s.help.to_owned();
        let mut also = Vec::new();
        if let Some(env) = s.env {
            also.push(env.to_owned());
        }
        also.push(s.key.to_owned());
        right.push_str(&format!(" [{}", also.join(", ")));
        if !s.default.is_empty() {
            right.push_str(&format!("; default {}", s.default));
        }
        right.push(']');
        out.push_str(&format!("  {left:<27}{right}\n"));
    }
    out
}

/// Settings given on the command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// (setting key, value) in command-line order; a switch has the value `true`.
    values: Vec<(&'static str, String)>,
}

impl Flags {
    /// Records `value` for the setting of `key` (panics on a key that is not in [`SETTINGS`]).
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.values.push((lookup(key).key, value.into()));
    }

    /// The same, by value (for tests and callers that build flags in one expression).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.set(key, value);
        self
    }

    /// The last value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value given for `key`, in order (repeatable flags).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Where the files are looked for; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct SearchPaths {
    /// Configuration files tried in order when `--config` is not given.
    pub config_files: Vec<PathBuf>,
    /// File holding only `device_key`, the last resort.
    pub device_info: PathBuf,
}

impl Default for SearchPaths {
    fn default() -> Self {
        SearchPaths {
            config_files: DEFAULT_CONFIG_FILES.iter().map(PathBuf::from).collect(),
            device_info: PathBuf::from(DEFAULT_DEVICE_INFO),
        }
    }
}

/// The agent's resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Device key (32 hex characters in the field); may be logged.
    pub device_key: Sourced<String>,
    /// Token code; never logged.
    pub token: Sourced<Secret>,
    /// Proxy host.
    pub host: Sourced<String>,
    /// Proxy control port.
    pub port: Sourced<u16>,
    /// TLS to the proxy.
    pub tls: Sourced<bool>,
    /// Meeting REST API base URL, when configured (or the production one for the default
    /// proxy host).
    pub api_url: Option<Sourced<String>>,
    /// Meeting presence.
    pub heartbeat: Heartbeat,
    /// SSH keys: Meeting's key, the device key, known_hosts.
    pub ssh: SshKeys,
    /// How long to wait for the proxy's handshake reply before assuming an older proxy.
    pub handshake_timeout: Duration,
    /// How long a local connection (e.g. to sshd) may take before the channel is closed.
    pub connect_timeout: Duration,
    /// How long a local service may take no data from the proxy before its channel is closed.
    pub local_write_timeout: Duration,
    /// Local ports the proxy may ask for (default `[22]`).
    pub allowed_ports: Sourced<Vec<u16>>,
    /// PEM CA bundle trusted instead of the public roots.
    pub ca_file: Option<Sourced<PathBuf>>,
    /// Name checked in the proxy's certificate (default: the host).
    pub tls_server_name: Sourced<String>,
    /// Most channels open at once.
    pub max_channels: usize,
    /// Largest frame payload accepted from the proxy.
    pub max_frame: u32,
    /// Dead-link detection on the control socket.
    pub keepalive: Keepalive,
    /// Where the status file is written (`None`: not written).
    pub status_file: Option<PathBuf>,
    /// Log to this syslog socket instead of stderr (`None`: stderr).
    pub syslog: Option<PathBuf>,
    /// The configuration file that was read, if any.
    pub file: Option<PathBuf>,
}

impl Config {
    /// `host:port` of the proxy.
    pub fn proxy_addr(&self) -> String {
        format!("{}:{}", self.host.value, self.port.value)
    }

    /// The configuration file that holds the token, with its permission bits, when group or
    /// others may read it.
    pub fn token_file_exposure(&self) -> Option<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        let Source::File(path) = &self.token.source else {
            return None;
        };
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| (path.clone(), mode))
    }

    /// The TLS to speak to the proxy (`None`: plain TCP).
    pub fn tls_target(&self) -> Option<crate::transport::TlsTarget<'_>> {
        self.tls.value.then(|| crate::transport::TlsTarget {
            server_name: &self.tls_server_name.value,
            ca_file: self.ca_file.as_ref().map(|c| c.value.as_path()),
        })
    }

    /// Whether the device key has the expected form (32 hexadecimal characters).
    pub fn device_key_well_formed(&self) -> bool {
        let k = &self.device_key.value;
        k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

pub use crate::transport::tcp::Keepalive;

/// Meeting presence: the heartbeat's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The Meeting API (`api_url`, or the production default), when known.
    pub api: Option<Sourced<String>>,
    /// `Some(why)` when no heartbeat is sent.
    pub off: Option<String>,
    /// Time between beats.
    pub interval: Duration,
    /// Time between beats while the server answers 404, 401 or 403.
    pub retry_unregistered: Duration,
    /// The `note` member.
    pub note: String,
    /// URL answering the public address, when configured.
    pub public_ip_url: Option<String>,
    /// CA bundle for the API (`api_ca_file`, else `ca_file`).
    pub ca_file: Option<PathBuf>,
}

/// A setting with a built-in default that can also be turned off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<T> {
    /// Not configured: the default applies.
    Default,
    /// Configured empty: off.
    Off,
    /// Configured.
    Given(T),
}

/// The SSH key work's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshKeys {
    /// `Some(why)` when none of it is done (`ssh_keys` false).
    pub off: Option<String>,
    /// `meeting_ssh_user`.
    pub user: Choice<String>,
    /// `authorized_keys_file`.
    pub authorized_keys_file: Option<PathBuf>,
    /// `meeting_key_fingerprint`, as given.
    pub pin: Option<String>,
    /// `meeting_key_from` (`None`: no `from=` option).
    pub from: Option<String>,
    /// Time between two rounds.
    pub interval: Duration,
    /// `device_ssh_key` (`None`: off).
    pub device_key: Option<PathBuf>,
    /// `generate_device_key`.
    pub generate: bool,
    /// `known_hosts_file`.
    pub known_hosts: Choice<PathBuf>,
    /// `state_dir`.
    pub state_dir: PathBuf,
    /// `ssh_port`.
    pub ssh_port: u16,
}

/// Default status file.
pub const DEFAULT_STATUS_FILE: &str = "/run/tunnel-agent/status.json";

/// Why the configuration cannot be used. The agent exits with status 2 on any of these.
#[derive(Debug)]
pub enum ConfigError {
    /// A required value was found nowhere; `looked` lists every place tried.
    Missing {
        /// Which value.
        what: &'static str,
        /// Every place that was looked at, with what was found there.
        looked: Vec<String>,
    },
    /// A file could not be read.
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// A file is not valid JSON.
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser said.
        msg: String,
    },
    /// TLS is asked for but this build has none.
    TlsUnavailable {
        /// Where TLS was asked for.
        source: Source,
    },
    /// A value has the wrong form.
    Invalid {
        /// Which setting.
        what: &'static str,
        /// Where it came from.
        source: Source,
        /// What is wrong and what is expected.
        why: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Missing { what, looked } => {
                write!(
                    f,
                    "no {what} configured. Looked in, highest priority first:"
                )?;
                for place in looked {
                    write!(f, "\n  - {place}")?;
                }
                Ok(())
            }
            ConfigError::Unreadable { path, err } => {
                write!(
                    f,
                    "cannot read configuration file {}: {err}",
                    path.display()
                )
            }
            ConfigError::Malformed {
                path,
                line,
                column,
                msg,
            } => write!(
                f,
                "configuration file {}:{line}:{column} is not valid JSON: {msg}",
                path.display()
            ),
            ConfigError::TlsUnavailable { source } => write!(
                f,
                "TLS is requested ({source}) but this tunnel-agent was built without the tls \
                 feature; install a build with TLS, or set tunnel_ssl to false if the proxy \
                 port is plain TCP"
            ),
            ConfigError::Invalid { what, source, why } => {
                write!(f, "invalid {what} (from {source}): {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Unreadable { err, .. } => Some(err),
            _ => None,
        }
    }
}

/// The keys of a configuration file, as deployed devices have them (docs/protocol.md, section 6).
/// Unknown keys are ignored.
struct FileValues {
    path: PathBuf,
    map: Map<String, Value>,
}

impl FileValues {
    fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Unreadable {
            path: path.to_owned(),
            err,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|e| ConfigError::Malformed {
            path: path.to_owned(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        match value {
            Value::Object(map) => Ok(FileValues {
                path: path.to_owned(),
                map,
            }),
            other => Err(ConfigError::Malformed {
                path: path.to_owned(),
                line: 1,
                column: 1,
                msg: format!(
                    "expected a JSON object {{...}}, found {}",
                    json_kind(&other)
                ),
            }),
        }
    }

    fn source(&self) -> Source {
        Source::File(self.path.clone())
    }

    /// A string member; numbers are accepted and turned into text. `null` counts as absent.
    fn text(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => Err(ConfigError::Invalid {
                what: key,
                source: self.source(),
                why: format!("expected a string, found {}", json_kind(other)),
            }),
        }
    }
}

impl FileValues {
    /// A list of ports: `[22, 5900]` (numbers or numeric strings).
    fn ports(&self, key: &'static str) -> Result<Vec<u16>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid {
            what: key,
            source: self.source(),
            why,
        };
        match self.map.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Number(n) => parse_port(key, &n.to_string(), &self.source()),
                    Value::String(s) => parse_port(key, s, &self.source()),
                    other => Err(invalid(format!(
                        "expected port numbers, found {}",
                        json_kind(other)
                    ))),
                })
                .collect(),
            Some(other) => Err(invalid(format!(
                "expected a list of ports like [22, 5900], found {}",
                json_kind(other)
            ))),
            None => Ok(Vec::new()),
        }
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a port number.
fn parse_port(what: &'static str, text: &str, source: &Source) -> Result<u16, ConfigError> {
    match text.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::Invalid {
            what,
            source: source.clone(),
            why: format!("\"{text}\" is not a TCP port (1 to 65535)"),
        }),
    }
}

/// Parses a yes/no setting: true/false, 1/0, yes/no, on/off.
fn parse_bool(what: &'static str, text: &str, source: &Source) -> Result<bool, ConfigError> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            what,
            source: source.clone(),
            why: format!("\"{text}\" is not a yes/no value (use true or false, 1 or 0)"),
        }),
    }
}

/// Parses a duration in seconds (fractions allowed).
pub fn parse_secs(
    what: &'static str,
    text: &str,
    source: &Source,
) -> Result<Duration, ConfigError> {
    match text.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
        _ => Err(ConfigError::Invalid {
            what,
            source: source.clone(),
            why: format!("\"{text}\" is not a number of seconds between 0 and 86400"),
        }),
    }
}

/// Where [`load`] looks for each setting: the flags, the environment, and the file found.
struct Places<'a> {
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    file: Option<FileValues>,
    /// Configuration files looked for and not found (when `--config` was not given).
    not_found: Vec<PathBuf>,
}

impl Places<'_> {
    /// The first value of `key` found, flag before environment before file, with its source;
    /// `None` when none gives one. An empty text counts as given (callers decide what it
    /// means); `null` in the file counts as absent.
    fn raw(&self, key: &str) -> Result<Option<Sourced<String>>, ConfigError> {
        let s = lookup(key);
        if let (Some(flag), Some(v)) = (s.flag, self.flags.get(key)) {
            return Ok(Some(Sourced {
                value: v.to_owned(),
                source: Source::Flag(flag),
            }));
        }
        if let Some(v) = s.env.and_then(|e| (self.env)(e).map(|v| (e, v))) {
            return Ok(Some(Sourced {
                value: v.1,
                source: Source::Env(v.0),
            }));
        }
        match &self.file {
            Some(f) => Ok(f.text(s.key)?.map(|value| Sourced {
                value,
                source: f.source(),
            })),
            None => Ok(None),
        }
    }

    /// Like [`Self::raw`], but blank text counts as not given, and the value is trimmed.
    fn text(&self, key: &str) -> Result<Option<Sourced<String>>, ConfigError> {
        Ok(self.raw(key)?.and_then(|s| {
            let value = s.value.trim().to_owned();
            (!value.is_empty()).then_some(Sourced {
                value,
                source: s.source,
            })
        }))
    }

    /// A typed setting: parsed from where it was found, else the default.
    fn parsed<T>(
        &self,
        key: &'static str,
        default: T,
        parse: impl Fn(&'static str, &str, &Source) -> Result<T, ConfigError>,
    ) -> Result<Sourced<T>, ConfigError> {
        match self.text(key)? {
            Some(s) => Ok(Sourced {
                value: parse(key, &s.value, &s.source)?,
                source: s.source,
            }),
            None => Ok(Sourced {
                value: default,
                source: Source::Default,
            }),
        }
    }

    /// Every place `key` was looked for, for a "missing" error.
    fn looked(&self, key: &str) -> Vec<String> {
        let s = lookup(key);
        let mut v = Vec::new();
        if let Some(flag) = s.flag {
            v.push(format!("flag {flag} (not given)"));
        }
        if let Some(env) = s.env {
            v.push(format!("environment {env} (not set)"));
        }
        v.extend(
            self.not_found
                .iter()
                .map(|p| format!("{} (not found)", p.display())),
        );
        if let Some(f) = &self.file {
            v.push(format!("{} (key \"{key}\")", f.path.display()));
        }
        v
    }
}

/// A whole number from 1 to `max`.
fn parse_count(max: u64) -> impl Fn(&'static str, &str, &Source) -> Result<u64, ConfigError> {
    move |what, text, source| match text.trim().parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            what,
            source: source.clone(),
            why: format!("\"{text}\" is not a whole number from 1 to {max}"),
        }),
    }
}

/// A path as given.
fn parse_path(_: &'static str, text: &str, _: &Source) -> Result<PathBuf, ConfigError> {
    Ok(PathBuf::from(text))
}

/// The places settings are read from: the flags, the environment, and the configuration file
/// (`--config`, else the first of the search paths that exists).
fn places<'a>(
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Places<'a>, ConfigError> {
    let mut places = Places {
        flags,
        env,
        file: None,
        not_found: Vec::new(),
    };
    match &flags.config {
        Some(path) => places.file = Some(FileValues::read(path)?),
        None => {
            for path in &paths.config_files {
                if path.exists() {
                    places.file = Some(FileValues::read(path)?);
                    break;
                }
                places.not_found.push(path.clone());
            }
        }
    }
    Ok(places)
}

/// A setting's value as found, for showing what was fine next to what is missing or wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The configuration key.
    pub key: &'static str,
    /// The value as given (the token masked; lists joined with commas).
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// Every setting given somewhere (flag, environment, configuration file, and the device-info
/// file for the device key), with where it came from, the token masked: what a configuration
/// that cannot be loaded did have right. Defaults are not listed. Fails only when the
/// configuration file itself cannot be read.
pub fn found(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Vec<Found>, ConfigError> {
    let p = places(flags, env, paths)?;
    let mut out = Vec::new();
    for s in SETTINGS {
        let value = match p.raw(s.key) {
            Ok(Some(v)) => Some(v),
            // A list in the file (allowed_ports): shown as numbers.
            Err(_) => p.file.as_ref().and_then(|f| {
                f.ports(s.key).ok().map(|ports| Sourced {
                    value: ports
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    source: f.source(),
                })
            }),
            Ok(None) => None,
        };
        let value = value.or_else(|| {
            (s.key == "device_key" && paths.device_info.exists())
                .then(|| FileValues::read(&paths.device_info).ok())
                .flatten()
                .and_then(|info| {
                    let v = info.text("device_key").ok()??;
                    Some(Sourced {
                        value: v.trim().to_owned(),
                        source: info.source(),
                    })
                })
        });
        let Some(v) = value.filter(|v| !v.value.trim().is_empty()) else {
            continue;
        };
        let shown = if s.key == "token_code" {
            Secret::new(v.value).masked()
        } else {
            v.value
        };
        out.push(Found {
            key: s.key,
            value: shown,
            source: v.source,
        });
    }
    Ok(out)
}

/// Resolves the configuration. `env` looks up an environment variable.
pub fn load(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Config, ConfigError> {
    let places = places(flags, env, paths)?;
    let p = &places;

    // The device key's last resort is a file of its own.
    let mut device_key = p.text("device_key")?;
    if device_key.is_none() && paths.device_info.exists() {
        let info = FileValues::read(&paths.device_info)?;
        device_key = info
            .text("device_key")?
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|value| Sourced {
                value,
                source: info.source(),
            });
    }
    let device_key = device_key.ok_or_else(|| {
        let mut looked = p.looked("device_key");
        let info = &paths.device_info;
        looked.push(match info.exists() {
            true => format!("{} (key \"device_key\")", info.display()),
            false => format!("{} (not found)", info.display()),
        });
        ConfigError::Missing {
            what: "device key",
            looked,
        }
    })?;
    let token = p.text("token_code")?.ok_or_else(|| ConfigError::Missing {
        what: "token",
        looked: p.looked("token_code"),
    })?;
    let host = p.text("tunnel_host")?.unwrap_or(Sourced {
        value: DEFAULT_HOST.to_owned(),
        source: Source::Default,
    });
    let port = p.parsed("tunnel_port", DEFAULT_PORT, parse_port)?;
    let tls = p.parsed("tunnel_ssl", false, parse_bool)?;
    if tls.value && !cfg!(feature = "tls") {
        return Err(ConfigError::TlsUnavailable { source: tls.source });
    }
    let secs = |key, default| p.parsed(key, Duration::from_secs(default), parse_secs);
    let count = |key, default, max| p.parsed(key, default, parse_count(max));
    let tls_server_name = p.text("tls_server_name")?.unwrap_or_else(|| host.clone());
    let ca_file = p.text("ca_file")?.map(|s| Sourced {
        value: PathBuf::from(s.value),
        source: s.source,
    });
    let api_url = p.text("api_url")?.or_else(|| {
        (host.value == DEFAULT_HOST).then(|| Sourced {
            value: DEFAULT_API_URL.to_owned(),
            source: Source::Default,
        })
    });
    let allowed_ports = allowed_ports(p)?;
    let keepalive = Keepalive {
        idle: secs("keepalive_idle", 30)?.value,
        interval: secs("keepalive_interval", 10)?.value,
        count: count("keepalive_count", 3, 100)?.value as u32,
        user_timeout: secs("user_timeout", 60)?.value,
    };
    // An empty path, on the command line or in the file, turns the status file off.
    let status_file = match p.raw("status_file")? {
        Some(s) => (!s.value.is_empty()).then(|| PathBuf::from(s.value)),
        None => Some(PathBuf::from(DEFAULT_STATUS_FILE)),
    };
    let syslog_socket = p.parsed(
        "syslog_socket",
        PathBuf::from(crate::logging::SYSLOG_SOCKET),
        parse_path,
    )?;
    let syslog = p
        .parsed("syslog", false, parse_bool)?
        .value
        .then_some(syslog_socket.value);

    Ok(Config {
        device_key,
        token: Sourced {
            value: Secret::new(token.value),
            source: token.source,
        },
        host,
        port,
        tls,
        heartbeat: heartbeat(p, api_url.clone(), ca_file.as_ref())?,
        ssh: ssh_keys(p)?,
        api_url,
        handshake_timeout: secs("handshake_timeout", 5)?.value,
        connect_timeout: secs("connect_timeout", 5)?.value,
        local_write_timeout: secs("local_write_timeout", 15)?.value,
        allowed_ports,
        ca_file,
        tls_server_name,
        max_channels: count("max_channels", 64, 100_000)?.value as usize,
        max_frame: count(
            "max_frame",
            u64::from(crate::protocol::frame::DEFAULT_MAX_FRAME),
            64 * 1024 * 1024,
        )?
        .value as u32,
        keepalive,
        status_file,
        syslog,
        file: places.file.map(|f| f.path),
    })
}

/// The heartbeat's settings.
fn heartbeat(
    p: &Places,
    api: Option<Sourced<String>>,
    ca_file: Option<&Sourced<PathBuf>>,
) -> Result<Heartbeat, ConfigError> {
    let wanted = p.parsed("heartbeat", true, parse_bool)?;
    let off = match (&api, wanted.value) {
        (_, false) => Some(format!("heartbeat false ({})", wanted.source)),
        (None, true) => Some(
            "no api_url configured, and the proxy is not the production one (set api_url or \
             MEETING_API_URL)"
                .to_owned(),
        ),
        (Some(_), true) => None,
    };
    let interval = p
        .parsed("heartbeat_interval", Duration::from_secs(30), parse_secs)?
        .value
        .max(MIN_HEARTBEAT_INTERVAL);
    let retry = p.parsed(
        "heartbeat_retry_unregistered",
        Duration::from_secs(600),
        parse_secs,
    )?;
    let note = match p.text("heartbeat_note")? {
        Some(n) => n.value.chars().take(200).collect(),
        None => format!(
            "tunnel-agent {} on {}",
            env!("CARGO_PKG_VERSION"),
            device_model()
        ),
    };
    Ok(Heartbeat {
        api,
        off,
        interval,
        retry_unregistered: retry.value,
        note,
        public_ip_url: p.text("public_ip_url")?.map(|s| s.value),
        ca_file: p
            .text("api_ca_file")?
            .map(|s| PathBuf::from(s.value))
            .or_else(|| ca_file.map(|c| c.value.clone())),
    })
}

/// The SSH key work's settings.
fn ssh_keys(p: &Places) -> Result<SshKeys, ConfigError> {
    let wanted = p.parsed("ssh_keys", true, parse_bool)?;
    // Given empty (or as none/off): off; not given: the default.
    let choice = |key| -> Result<Choice<String>, ConfigError> {
        Ok(match p.raw(key)? {
            None => Choice::Default,
            Some(s) => match s.value.trim() {
                "" | "none" | "off" => Choice::Off,
                v => Choice::Given(v.to_owned()),
            },
        })
    };
    let path = |key| -> Result<Choice<PathBuf>, ConfigError> {
        Ok(match choice(key)? {
            Choice::Default => Choice::Default,
            Choice::Off => Choice::Off,
            Choice::Given(v) => Choice::Given(PathBuf::from(v)),
        })
    };
    let from = match p.raw("meeting_key_from")? {
        None => Some("127.0.0.1,::1".to_owned()),
        Some(s) if s.value.trim().is_empty() => None,
        Some(s) => {
            let v = s.value.trim().to_owned();
            if !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:,/*?!-_[]".contains(&b))
            {
                return Err(ConfigError::Invalid {
                    what: "meeting_key_from",
                    source: s.source,
                    why: format!(
                        "\"{v}\" is not a from= pattern list (addresses, host names, CIDR, \
                         comma-separated)"
                    ),
                });
            }
            Some(v)
        }
    };
    Ok(SshKeys {
        off: (!wanted.value).then(|| format!("ssh_keys false ({})", wanted.source)),
        user: choice("meeting_ssh_user")?,
        authorized_keys_file: p.text("authorized_keys_file")?.map(|s| s.value.into()),
        pin: p.text("meeting_key_fingerprint")?.map(|s| s.value),
        from,
        interval: p
            .parsed("ssh_keys_interval", Duration::from_secs(3600), parse_secs)?
            .value
            .max(MIN_HEARTBEAT_INTERVAL),
        device_key: match path("device_ssh_key")? {
            Choice::Default => Some(PathBuf::from(DEFAULT_DEVICE_SSH_KEY)),
            Choice::Off => None,
            Choice::Given(p) => Some(p),
        },
        generate: p.parsed("generate_device_key", true, parse_bool)?.value,
        known_hosts: path("known_hosts_file")?,
        state_dir: p
            .parsed("state_dir", PathBuf::from(DEFAULT_STATE_DIR), parse_path)?
            .value,
        ssh_port: p.parsed("ssh_port", 22, parse_port)?.value,
    })
}

/// The board's model (`/proc/device-tree/model`, e.g. "Raspberry Pi 4 Model B Rev 1.4"), else
/// the host name.
fn device_model() -> String {
    let read = |p: &str| {
        std::fs::read(p).ok().map(|b| {
            String::from_utf8_lossy(&b)
                .trim_matches(|c: char| c == '\0' || c.is_whitespace())
                .to_owned()
        })
    };
    read("/proc/device-tree/model")
        .filter(|m| !m.is_empty())
        .or_else(|| read("/proc/sys/kernel/hostname").filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown device".to_owned())
}

/// `allowed_ports`: every `--allow-port`, else the file's list, else 22.
fn allowed_ports(p: &Places) -> Result<Sourced<Vec<u16>>, ConfigError> {
    let given = p.flags.all("allowed_ports");
    if !given.is_empty() {
        let source = Source::Flag("--allow-port");
        let ports = given
            .iter()
            .map(|v| parse_port("allowed port", v, &source))
            .collect::<Result<_, _>>()?;
        return Ok(Sourced {
            value: ports,
            source,
        });
    }
    match p
        .file
        .as_ref()
        .filter(|f| f.map.contains_key("allowed_ports"))
    {
        Some(f) => Ok(Sourced {
            value: f.ports("allowed_ports")?,
            source: f.source(),
        }),
        None => Ok(Sourced {
            value: vec![22],
            source: Source::Default,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir()
                .join(format!("tunnel-agent-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tmp(dir)
        }
        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
        fn paths(&self) -> SearchPaths {
            SearchPaths {
                config_files: vec![self.0.join("config.json"), self.0.join("meeting.json")],
                device_info: self.0.join("device_info.json"),
            }
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const MEETING_JSON: &str = r#"{
  "device_key": "3316A52EB08837267BF6BD3E2B2E8DC7",
  "token_code": "41e291",
  "tunnel_host": "proxy.example",
  "tunnel_port": 9001,
  "tunnel_ssl": false,
  "api_url": "https://meeting.ygsoft.fr/api",
  "something_else": [1, 2, 3]
}"#;

    #[test]
    fn deployed_meeting_json_works_unchanged() {
        let t = Tmp::new("deployed");
        t.file("meeting.json", MEETING_JSON);
        let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
        assert_eq!(c.device_key.value, "3316A52EB08837267BF6BD3E2B2E8DC7");
        assert_eq!(c.token.value.expose(), "41e291");
        assert_eq!(c.host.value, "proxy.example");
        assert_eq!(c.port.value, 9001);
        assert!(!c.tls.value);
        assert_eq!(c.file.as_deref(), Some(t.0.join("meeting.json").as_path()));
        assert_eq!(c.token.source, Source::File(t.0.join("meeting.json")));
        assert!(c.device_key_well_formed());
    }

    #[test]
    fn flags_beat_environment_beat_file_beat_defaults() {
        let t = Tmp::new("priority");
        t.file("config.json", MEETING_JSON);
        let flags = Flags::default().with("tunnel_host", "flag.example");
        let env = env_of(&[
            ("MEETING_TUNNEL_HOST", "env.example"),
            ("MEETING_TUNNEL_PORT", "9443"),
            ("MEETING_TOKEN", "abcdef"),
            ("MEETING_TUNNEL_TLS", "1"),
        ]);
        let c = load(&flags, &env, &t.paths()).unwrap();
        assert_eq!(c.host.value, "flag.example");
        assert_eq!(c.host.source, Source::Flag("--host"));
        assert_eq!(c.port.value, 9443);
        assert_eq!(c.port.source, Source::Env("MEETING_TUNNEL_PORT"));
        assert_eq!(c.token.value.expose(), "abcdef");
        assert!(c.tls.value);
        assert_eq!(c.device_key.source, Source::File(t.0.join("config.json")));
    }

    #[test]
    fn defaults_apply_and_device_info_is_the_last_resort() {
        let t = Tmp::new("defaults");
        t.file(
            "device_info.json",
            r#"{"device_key": "AAAABBBBCCCCDDDDEEEEFFFF00001111"}"#,
        );
        let c = load(
            &Flags::default(),
            &env_of(&[("MEETING_TOKEN", "41e291")]),
            &t.paths(),
        )
        .unwrap();
        assert_eq!(c.host.value, DEFAULT_HOST);
        assert_eq!(c.port.value, DEFAULT_PORT);
        assert_eq!(c.port.source, Source::Default);
        assert_eq!(c.device_key.value, "AAAABBBBCCCCDDDDEEEEFFFF00001111");
        assert_eq!(
            c.device_key.source,
            Source::File(t.0.join("device_info.json"))
        );
        assert_eq!(c.handshake_timeout, Duration::from_secs(5));
        assert_eq!(c.local_write_timeout, Duration::from_secs(15));
        assert_eq!(c.allowed_ports.value, vec![22]);
        assert_eq!(c.max_channels, 64);
        assert_eq!(c.max_frame, 1024 * 1024);
        assert_eq!(c.tls_server_name.value, DEFAULT_HOST);
        assert!(c.ca_file.is_none());
    }

    #[test]
    fn tls_settings_and_limits() {
        let t = Tmp::new("tls");
        let p = t.file(
            "c.json",
            r#"{"device_key":"K","token_code":"t","tunnel_host":"10.0.0.1","tunnel_ssl":true,
               "ca_file":"/etc/tunnel-agent/ca.pem","tls_server_name":"proxy.example",
               "max_channels":8,"max_frame":65536,"local_write_timeout":2.5}"#,
        );
        let flags = Flags {
            config: Some(p),
            ..Flags::default()
        };
        let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
        assert!(c.tls.value);
        assert_eq!(
            c.ca_file.unwrap().value,
            PathBuf::from("/etc/tunnel-agent/ca.pem")
        );
        assert_eq!(c.tls_server_name.value, "proxy.example");
        assert_eq!((c.max_channels, c.max_frame), (8, 65536));
        assert_eq!(c.local_write_timeout, Duration::from_millis(2500));
        let c = load(
            &Flags::default().with("tunnel_ssl", "true"),
            &env_of(&[
                ("MEETING_DEVICE_KEY", "K"),
                ("MEETING_TOKEN", "t"),
                ("MEETING_TUNNEL_TLS", "0"),
            ]),
            &t.paths(),
        )
        .unwrap();
        assert!(c.tls.value, "--tls beats the environment");
        let e = load(
            &flags.clone().with("max_channels", "0"),
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_channels"), "{e}");
        let e = load(
            &flags.clone().with("local_write_timeout", "0"),
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("local_write_timeout"), "{e}");
    }

    #[test]
    fn allowed_ports_from_file_or_flags() {
        let t = Tmp::new("ports");
        let p = t.file(
            "c.json",
            r#"{"device_key":"K","token_code":"t","allowed_ports":[22,"5900"]}"#,
        );
        let mut flags = Flags {
            config: Some(p),
            ..Flags::default()
        };
        let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
        assert_eq!(c.allowed_ports.value, vec![22, 5900]);
        flags.set("allowed_ports", "8080");
        let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
        assert_eq!(c.allowed_ports.value, vec![8080]);
        assert_eq!(c.allowed_ports.source, Source::Flag("--allow-port"));
        let p = t.file(
            "d.json",
            r#"{"device_key":"K","token_code":"t","allowed_ports":22}"#,
        );
        let e = load(
            &Flags {
                config: Some(p),
                ..Flags::default()
            },
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected a list of ports"), "{e}");
    }

    #[test]
    fn missing_values_list_every_place_looked() {
        let t = Tmp::new("missing");
        let e = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("no device key configured"), "{msg}");
        for place in [
            "--device-key",
            "MEETING_DEVICE_KEY",
            "config.json",
            "meeting.json",
            "device_info.json",
        ] {
            assert!(msg.contains(place), "{place} missing from: {msg}");
        }
        let e = load(
            &Flags::default(),
            &env_of(&[("MEETING_DEVICE_KEY", "K")]),
            &t.paths(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("no token configured"), "{msg}");
        assert!(
            msg.contains("MEETING_TOKEN") && msg.contains("meeting.json"),
            "{msg}"
        );
    }

    #[test]
    fn malformed_file_names_line_and_column() {
        let t = Tmp::new("malformed");
        let p = t.file(
            "meeting.json",
            "{\n  \"device_key\": \"K\",\n  \"token_code\" \"x\"\n}",
        );
        let e = load(
            &Flags {
                config: Some(p.clone()),
                ..Flags::default()
            },
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        match &e {
            ConfigError::Malformed {
                path, line, column, ..
            } => {
                assert_eq!(path, &p);
                assert_eq!((*line, *column), (3, 16));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("meeting.json:3:16"), "{e}");
    }

    #[test]
    fn wrong_types_and_values_are_named() {
        let t = Tmp::new("types");
        let p = t.file(
            "c.json",
            r#"{"device_key":"K","token_code":"t","tunnel_port":"http"}"#,
        );
        let flags = Flags {
            config: Some(p),
            ..Flags::default()
        };
        let e = load(&flags, &env_of(&[]), &t.paths()).unwrap_err();
        assert!(e.to_string().contains("\"http\" is not a TCP port"), "{e}");
        let e = load(
            &flags,
            &env_of(&[("MEETING_TUNNEL_PORT", "70000")]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("MEETING_TUNNEL_PORT"), "{e}");
        let p = t.file("d.json", r#"{"device_key":["K"],"token_code":"t"}"#);
        let e = load(
            &Flags {
                config: Some(p),
                ..Flags::default()
            },
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("expected a string, found an array"),
            "{e}"
        );
        let p = t.file("e.json", "[1]");
        let e = load(
            &Flags {
                config: Some(p),
                ..Flags::default()
            },
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
    }

    #[test]
    fn explicit_config_that_does_not_exist_is_an_error() {
        let t = Tmp::new("absent");
        let flags = Flags {
            config: Some(t.0.join("nope.json")),
            ..Flags::default()
        };
        let e = load(&flags, &env_of(&[]), &t.paths()).unwrap_err();
        assert!(matches!(e, ConfigError::Unreadable { .. }));
        assert!(e.to_string().contains("nope.json"));
    }

    #[test]
    fn secret_is_masked_in_debug() {
        let s = Secret::new("41e291");
        assert_eq!(s.masked(), "41****");
        assert!(!format!("{s:?}").contains("e291"));
    }

    #[test]
    fn heartbeat_api_defaults_to_production_only_for_the_production_proxy() {
        let t = Tmp::new("heartbeat-default");
        let env = env_of(&[("MEETING_DEVICE_KEY", "K"), ("MEETING_TOKEN", "t")]);
        let c = load(&Flags::default(), &env, &t.paths()).unwrap();
        assert_eq!(c.host.value, DEFAULT_HOST);
        let api = c.heartbeat.api.as_ref().unwrap();
        assert_eq!(
            (api.value.as_str(), &api.source),
            (DEFAULT_API_URL, &Source::Default)
        );
        assert_eq!(c.heartbeat.off, None);
        assert_eq!(c.heartbeat.interval, Duration::from_secs(30));
        assert!(
            c.heartbeat.note.starts_with("tunnel-agent "),
            "{}",
            c.heartbeat.note
        );

        let own = Flags::default().with("tunnel_host", "proxy.example");
        let c = load(&own, &env, &t.paths()).unwrap();
        assert_eq!(c.heartbeat.api, None);
        assert!(c.heartbeat.off.as_deref().unwrap().contains("no api_url"));
    }

    #[test]
    fn heartbeat_settings_from_environment_file_and_flags() {
        let t = Tmp::new("heartbeat-settings");
        t.file(
            "config.json",
            r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example",
                "heartbeat_interval": 2, "heartbeat_note": "cam 3", "ca_file": "/ca.pem"}"#,
        );
        let env = env_of(&[("MEETING_API_URL", "https://m.example")]);
        let c = load(&Flags::default(), &env, &t.paths()).unwrap();
        let hb = &c.heartbeat;
        assert_eq!(
            hb.api.as_ref().unwrap().source,
            Source::Env("MEETING_API_URL")
        );
        assert_eq!(
            hb.interval, MIN_HEARTBEAT_INTERVAL,
            "2 s is raised to the minimum"
        );
        assert_eq!(hb.note, "cam 3");
        assert_eq!(
            hb.ca_file.as_deref(),
            Some(Path::new("/ca.pem")),
            "ca_file serves the API too"
        );
        let flags = Flags::default()
            .with("api_ca_file", "/api-ca.pem")
            .with("heartbeat", "false");
        let c = load(&flags, &env, &t.paths()).unwrap();
        assert_eq!(
            c.heartbeat.ca_file.as_deref(),
            Some(Path::new("/api-ca.pem"))
        );
        assert!(c
            .heartbeat
            .off
            .as_deref()
            .unwrap()
            .contains("heartbeat false (flag --heartbeat)"));
    }
}
