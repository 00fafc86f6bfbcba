//! Agent configuration: command-line flags, then environment, then a JSON file, then defaults;
//! every value remembers where it came from. The settings themselves are declared once, in
//! `settings.rs`; this module finds their values and builds the [`Config`] the roles read.

mod settings;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

pub use crate::transport::tcp::Keepalive;
pub use settings::*;

/// Shortest heartbeat (and key round) interval accepted.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Meeting shows a device Disconnected about this long after its last beat.
pub const AVAILABILITY_WINDOW: Duration = Duration::from_secs(60);
/// What a heartbeat interval the window cannot tolerate is capped at: two beats per window,
/// so one lost beat does not show the device Disconnected.
pub const SAFE_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Configuration files read when `--config` is not given: every one that exists, a key in an
/// earlier file winning over the same key in a later one. So the package's own file holds what
/// this agent adds or overrides, and the fleet's `/etc/rpi-cam/meeting.json` (which the web
/// manager edits, `enabled` included) keeps serving the rest unchanged.
pub const DEFAULT_CONFIG_FILES: &[&str] =
    &["/etc/tunnel-agent/config.json", "/etc/rpi-cam/meeting.json"];
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

impl<T> Sourced<T> {
    fn map<U>(self, f: impl FnOnce(T) -> U) -> Sourced<U> {
        Sourced {
            value: f(self.value),
            source: self.source,
        }
    }
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

/// Settings given on the command line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// (setting key, value) in command-line order; a switch has the value `true`.
    values: Vec<(&'static str, String)>,
}

impl Flags {
    /// Records `value` for `setting`.
    pub fn set<T>(&mut self, setting: &'static Setting<T>, value: impl Into<String>) {
        self.set_spec(&setting.spec, value);
    }

    /// Records `value` for the setting `spec` describes (the command-line parser, which finds
    /// it by flag).
    pub fn set_spec(&mut self, spec: &'static Spec, value: impl Into<String>) {
        self.values.push((spec.key, value.into()));
    }

    /// The same, by value (for tests and callers that build flags in one expression).
    pub fn with<T>(mut self, setting: &'static Setting<T>, value: impl Into<String>) -> Self {
        self.set(setting, value);
        self
    }

    /// Every value given for the setting `spec`, in order (a list's flag repeats).
    pub fn given(&self, spec: &Spec) -> Vec<&str> {
        self.values
            .iter()
            .filter(|(k, _)| *k == spec.key)
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
    /// Meeting on this device at all: `false` holds no tunnel and sends no heartbeat.
    pub enabled: Sourced<bool>,
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
    /// Every Meeting proxy address, in the order they are tried: `tunnel_hosts`, else
    /// `tunnel_host:tunnel_port` alone (then the same as `host`, `port` and `tls`).
    pub hosts: Vec<Endpoint>,
    /// Time away from the first of `hosts` after which a new connection tries it again.
    pub hosts_return: Duration,
    /// The outbound HTTP or SOCKS5 proxy the tunnel and the Meeting API go through.
    pub outbound_proxy: Option<Sourced<crate::transport::outbound::OutboundProxy>>,
    /// The proxy variables of other programs set in the environment, which are not read.
    pub ignored_proxy_env: Vec<&'static str>,
    /// The Meeting REST API: presence, keys and `check` reach it through this.
    pub api: Api,
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
    /// Local ports the proxy may ask for, when configured: they override Meeting's services.
    pub allowed_ports: Option<Sourced<Vec<u16>>>,
    /// Meeting's services: their local ports and how often the grant is read again.
    pub services: Services,
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
    /// Keepalive pings, with a proxy that announces them (`None`: never).
    pub ping_interval: Option<Duration>,
    /// Where the status file is written (`None`: not written).
    pub status_file: Option<PathBuf>,
    /// Log to this syslog socket instead of stderr (`None`: stderr).
    pub syslog: Option<PathBuf>,
    /// The configuration files that were read, the first winning key by key.
    pub files: Vec<PathBuf>,
}

impl Config {
    /// This configuration with entry `i` of `hosts` as the proxy (its host, port and TLS; the
    /// name checked in its certificate unless `tls_server_name` is set apart from the host).
    pub fn at(&self, i: usize) -> Config {
        let mut c = self.clone();
        if let Some(e) = self.hosts.get(i) {
            if self.tls_server_name.value == self.host.value {
                c.tls_server_name.value = e.host.clone();
            }
            c.host.value = e.host.clone();
            c.port.value = e.port;
            c.tls.value = e.tls.unwrap_or(self.tls.value);
        }
        c
    }

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

/// The Meeting REST API's settings, one struct for every caller: presence, the key work and
/// `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Api {
    /// `api_url`, or the production API for the production proxy host; `None`: no API.
    pub url: Option<Sourced<String>>,
    /// CA bundle for the API: `api_ca_file`, else `ca_file`; `None`: the public roots.
    pub ca_file: Option<Sourced<PathBuf>>,
    /// The outbound proxy the API's requests go through, as the tunnel's do.
    pub outbound: Option<crate::transport::outbound::OutboundProxy>,
}

impl Api {
    /// A client for the API with `timeout` per request, when an API is configured.
    pub fn client(&self, timeout: Duration) -> Option<crate::meeting::Client> {
        let url = self.url.as_ref()?;
        Some(
            crate::meeting::Client::new(
                crate::meeting::ApiUrl::new(&url.value),
                self.ca_file.as_ref().map(|c| c.value.clone()),
                timeout,
            )
            .through(self.outbound.clone()),
        )
    }
}

/// Meeting presence: the heartbeat's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// `Some(why)` when no heartbeat is sent.
    pub off: Option<String>,
    /// Time between beats.
    pub interval: Duration,
    /// The interval configured, and where, when it was capped at [`SAFE_HEARTBEAT_INTERVAL`].
    pub capped: Option<Sourced<Duration>>,
    /// Time between beats while the server answers 404, 401 or 403.
    pub retry_unregistered: Duration,
    /// The `note` member.
    pub note: String,
    /// URL answering the public address, when configured.
    pub public_ip_url: Option<String>,
    /// `heartbeat_details`: the beat carries note, addresses and MAC; else it only says the
    /// device is there (the web manager, which beats too, describes it).
    pub details: bool,
}

/// Meeting's services on this device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// Each service's local port.
    pub ports: Vec<(String, u16)>,
    /// Time between two readings of what Meeting grants.
    pub interval: Duration,
    /// `relay_ports`: what a granted `relay` may reach; `None`: any port its operator chooses.
    pub relay_ports: Option<Vec<u16>>,
}

/// Meeting's service whose local port its operator chooses (`POST /devices/{key}/service
/// {"service":"relay","port":N}`).
pub const RELAY: &str = "relay";

/// The built-in local port of each Meeting service.
pub const DEFAULT_SERVICE_PORTS: &[(&str, u16)] =
    &[("ssh", 22), ("scp", 22), ("vnc", 5900), ("http", 80)];
/// The web manager's port on the fleet's camera recorders (`/etc/rpi-cam`).
pub const RPI_CAM_HTTP_PORT: u16 = 5000;
/// The port open while Meeting's services are not known yet (and no `allowed_ports`): ssh's.
pub const UNTIL_KNOWN_PORT: u16 = 22;

/// Why a local port is open to the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// `allowed_ports`, from there.
    Configured(Source),
    /// Meeting grants these services, which use it.
    Granted(Vec<String>),
    /// Meeting's services are not known yet: ssh's port meanwhile.
    UntilKnown,
    /// Meeting grants `relay`, which may reach any port its operator chooses (no
    /// `relay_ports`).
    Relay,
}

impl fmt::Display for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Opened::Configured(source) => write!(f, "configured (allowed_ports, {source})"),
            Opened::Granted(services) => write!(f, "granted by Meeting: {}", services.join(", ")),
            Opened::UntilKnown => f.write_str("ssh's, until Meeting's services are known"),
            Opened::Relay => {
                f.write_str("granted by Meeting: relay, any port its operator chooses")
            }
        }
    }
}

impl Config {
    /// The local ports the proxy may open and why: `allowed_ports` when configured, else the
    /// ports of the services Meeting grants (`granted`, `None` until it has answered).
    pub fn open_ports(&self, granted: Option<&[String]>) -> Vec<(u16, Opened)> {
        if let Some(given) = &self.allowed_ports {
            return given
                .value
                .iter()
                .map(|p| (*p, Opened::Configured(given.source.clone())))
                .collect();
        }
        let Some(granted) = granted else {
            return vec![(UNTIL_KNOWN_PORT, Opened::UntilKnown)];
        };
        let mut out: Vec<(u16, Opened)> = Vec::new();
        let mut add = |port: u16, service: &str| match out.iter_mut().find(|(p, _)| *p == port) {
            Some((_, Opened::Granted(names))) => names.push(service.to_owned()),
            _ => out.push((port, Opened::Granted(vec![service.to_owned()]))),
        };
        for service in granted {
            if service == RELAY {
                for port in self.services.relay_ports.iter().flatten() {
                    add(*port, service);
                }
            }
            if let Some((_, port)) = self.services.ports.iter().find(|(n, _)| n == service) {
                add(*port, service);
            }
        }
        out.sort_by_key(|(p, _)| *p);
        out
    }

    /// Whether the proxy may open `port`, and why: one of [`Config::open_ports`], or any port
    /// while Meeting grants `relay` and `relay_ports` does not narrow it.
    pub fn may_open(&self, granted: Option<&[String]>, port: u16) -> Option<Opened> {
        if let Some((_, why)) = self
            .open_ports(granted)
            .into_iter()
            .find(|(p, _)| *p == port)
        {
            return Some(why);
        }
        let relay = self.allowed_ports.is_none()
            && self.services.relay_ports.is_none()
            && granted.is_some_and(|g| g.iter().any(|s| s == RELAY));
        relay.then_some(Opened::Relay)
    }
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
                 feature"
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

    /// The member `spec` names, as text: numbers and booleans turned into text, a list's
    /// array joined with commas. `null` counts as absent.
    fn text(&self, spec: &Spec) -> Result<Option<String>, ConfigError> {
        let invalid = |why: String| ConfigError::Invalid {
            what: spec.key,
            source: self.source(),
            why,
        };
        fn scalar(v: &Value) -> Result<String, &Value> {
            match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(other),
            }
        }
        match (self.map.get(spec.key), spec.list) {
            (None | Some(Value::Null), _) => Ok(None),
            (Some(Value::Array(items)), true) => items
                .iter()
                .map(|v| {
                    scalar(v).map_err(|other| {
                        invalid(format!(
                            "expected a list of values, found {} in it",
                            json_kind(other)
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| Some(v.join(","))),
            (Some(other), true) => Err(invalid(format!(
                "expected a list like [22, 5900], found {}",
                json_kind(other)
            ))),
            (Some(v), false) => scalar(v)
                .map(Some)
                .map_err(|other| invalid(format!("expected a string, found {}", json_kind(other)))),
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

/// Where [`load`] looks for each setting: the flags, the environment, and the files found.
struct Places<'a> {
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    /// The configuration files read, in order: a key in an earlier one wins.
    files: Vec<FileValues>,
    /// Configuration files looked for and not found (when `--config` was not given).
    not_found: Vec<PathBuf>,
}

impl Places<'_> {
    /// The text of `spec` where it is first found, flag before environment before file, with
    /// its source; `None` when none gives one. A list's repeated flags are joined by commas.
    fn raw(&self, spec: &Spec) -> Result<Option<Sourced<String>>, ConfigError> {
        let given = self.flags.given(spec);
        if let (Some(flag), Some(last)) = (spec.flag, given.last()) {
            let value = match spec.list {
                true => given.join(","),
                false => (*last).to_owned(),
            };
            return Ok(Some(Sourced {
                value,
                source: Source::Flag(flag),
            }));
        }
        if let Some((env, value)) = spec.env.and_then(|e| (self.env)(e).map(|v| (e, v))) {
            return Ok(Some(Sourced {
                value,
                source: Source::Env(env),
            }));
        }
        for f in &self.files {
            if let Some(value) = f.text(spec)? {
                return Ok(Some(Sourced {
                    value,
                    source: f.source(),
                }));
            }
        }
        Ok(None)
    }

    /// The value of `setting` where it was given, parsed and trimmed; `None` when it was not
    /// given (or given empty, for a setting that empty does not turn off).
    fn given<T>(&self, setting: &Setting<T>) -> Result<Option<Sourced<T>>, ConfigError> {
        let spec = &setting.spec;
        let Some(raw) = self.raw(spec)? else {
            return Ok(None);
        };
        let text = raw.value.trim();
        if text.is_empty() && !spec.empty_is_off {
            return Ok(None);
        }
        match (setting.parse)(text) {
            Ok(value) => Ok(Some(Sourced {
                value,
                source: raw.source,
            })),
            Err(why) => Err(ConfigError::Invalid {
                what: spec.key,
                source: raw.source,
                why,
            }),
        }
    }

    /// The value of `setting`: where it was given, else its declared default.
    fn get<T>(&self, setting: &Setting<T>) -> Result<Sourced<T>, ConfigError> {
        if let Some(v) = self.given(setting)? {
            return Ok(v);
        }
        let Fallback::Value(text) = setting.spec.default else {
            // A declaration bug (a setting without a default value read as one), said rather
            // than panicked on.
            return Err(ConfigError::Invalid {
                what: setting.spec.key,
                source: Source::Default,
                why: "it has no default value and was not given".to_owned(),
            });
        };
        (setting.parse)(text)
            .map(|value| Sourced {
                value,
                source: Source::Default,
            })
            .map_err(|why| ConfigError::Invalid {
                what: setting.spec.key,
                source: Source::Default,
                why,
            })
    }

    /// Every place `spec` was looked for, for a "missing" error.
    fn looked(&self, spec: &Spec) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(flag) = spec.flag {
            v.push(format!("flag {flag} (not given)"));
        }
        if let Some(env) = spec.env {
            v.push(format!("environment {env} (not set)"));
        }
        v.extend(
            self.not_found
                .iter()
                .map(|p| format!("{} (not found)", p.display())),
        );
        v.extend(
            self.files
                .iter()
                .map(|f| format!("{} (key \"{}\")", f.path.display(), spec.key)),
        );
        v
    }
}

/// The places settings are read from: the flags, the environment, and the configuration files
/// (`--config`, else every one of the search paths that exists, in order).
fn places<'a>(
    flags: &'a Flags,
    env: &'a dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Places<'a>, ConfigError> {
    let mut places = Places {
        flags,
        env,
        files: Vec::new(),
        not_found: Vec::new(),
    };
    match &flags.config {
        Some(path) => places.files.push(FileValues::read(path)?),
        None => {
            for path in &paths.config_files {
                match path.exists() {
                    true => places.files.push(FileValues::read(path)?),
                    false => places.not_found.push(path.clone()),
                }
            }
        }
    }
    Ok(places)
}

/// The device key from the device-info file, the last resort.
fn device_info(path: &Path) -> Result<Option<Sourced<String>>, ConfigError> {
    if !path.exists() {
        return Ok(None);
    }
    let info = FileValues::read(path)?;
    Ok(info
        .text(&DEVICE_KEY.spec)?
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .map(|value| Sourced {
            value,
            source: info.source(),
        }))
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
    for &spec in SETTINGS {
        let mut value = p.raw(spec).ok().flatten();
        if value.is_none() && spec.key == DEVICE_KEY.spec.key {
            value = device_info(&paths.device_info).ok().flatten();
        }
        let Some(v) = value.filter(|v| !v.value.trim().is_empty()) else {
            continue;
        };
        out.push(Found {
            key: spec.key,
            value: match (spec.secret, spec.url_secret) {
                (true, _) => Secret::new(v.value).masked(),
                (_, true) => masked_url(&v.value),
                _ => v.value.replace(',', ", "),
            },
            source: v.source,
        });
    }
    Ok(out)
}

/// A URL as shown: its password masked (`user:****@`), or all of it masked when it does not
/// parse (where the password is cannot be told).
fn masked_url(url: &str) -> String {
    match crate::transport::outbound::OutboundProxy::parse(url) {
        Ok(p) => p.to_string(),
        Err(_) => "****".to_owned(),
    }
}

/// The proxy variables of other programs, which the agent does not read (the tunnel and the
/// API go the same way, set by `outbound_proxy` alone).
pub const IGNORED_PROXY_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "HTTP_PROXY",
    "http_proxy",
];

/// Resolves the configuration. `env` looks up an environment variable.
pub fn load(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Config, ConfigError> {
    let places = places(flags, env, paths)?;
    let p = &places;

    // The device key's last resort is a file of its own.
    let device_key = match p.given(&DEVICE_KEY)? {
        Some(k) => k,
        None => device_info(&paths.device_info)?.ok_or_else(|| {
            let mut looked = p.looked(&DEVICE_KEY.spec);
            let info = &paths.device_info;
            looked.push(match info.exists() {
                true => format!("{} (key \"device_key\")", info.display()),
                false => format!("{} (not found)", info.display()),
            });
            ConfigError::Missing {
                what: "device key",
                looked,
            }
        })?,
    };
    let token = p
        .given(&TOKEN_CODE)?
        .ok_or_else(|| ConfigError::Missing {
            what: "token",
            looked: p.looked(&TOKEN_CODE.spec),
        })?
        .map(Secret::new);
    let mut host = p.get(&TUNNEL_HOST)?;
    let mut port = p.get(&TUNNEL_PORT)?;
    let mut tls = p.get(&TUNNEL_SSL)?;
    // tunnel_hosts, when given, is the whole list, and its first entry the proxy: host, port
    // and TLS below are that entry's.
    let hosts = match p.given(&TUNNEL_HOSTS)? {
        Some(mut list) => {
            // Each entry's TLS settled here: its own, else tunnel_ssl's.
            for e in &mut list.value {
                e.tls = Some(e.tls.unwrap_or(tls.value));
            }
            let first = &list.value[0];
            host = Sourced {
                value: first.host.clone(),
                source: list.source.clone(),
            };
            port = Sourced {
                value: first.port,
                source: list.source.clone(),
            };
            if let Some(t) = first.tls {
                tls = Sourced {
                    value: t,
                    source: list.source.clone(),
                };
            }
            if !cfg!(feature = "tls") && list.value.iter().any(|e| e.tls == Some(true)) {
                return Err(ConfigError::TlsUnavailable {
                    source: list.source,
                });
            }
            list.value
        }
        None => vec![Endpoint {
            host: host.value.clone(),
            port: port.value,
            tls: None,
        }],
    };
    if tls.value && !cfg!(feature = "tls") {
        return Err(ConfigError::TlsUnavailable { source: tls.source });
    }
    let tls_server_name = p.given(&TLS_SERVER_NAME)?.unwrap_or_else(|| host.clone());
    let outbound_proxy = p.given(&OUTBOUND_PROXY)?;
    let ignored_proxy_env = IGNORED_PROXY_ENV
        .iter()
        .copied()
        .filter(|name| env(name).is_some_and(|v| !v.trim().is_empty()))
        .collect();
    let ca_file = p.given(&CA_FILE)?;
    let api = Api {
        url: p.given(&API_URL)?.or_else(|| {
            (host.value == DEFAULT_HOST).then(|| Sourced {
                value: DEFAULT_API_URL.to_owned(),
                source: Source::Default,
            })
        }),
        ca_file: p.given(&API_CA_FILE)?.or_else(|| ca_file.clone()),
        outbound: outbound_proxy.as_ref().map(|o| o.value.clone()),
    };
    let keepalive = Keepalive {
        idle: p.get(&KEEPALIVE_IDLE)?.value,
        interval: p.get(&KEEPALIVE_INTERVAL)?.value,
        count: p.get(&KEEPALIVE_COUNT)?.value as u32,
        user_timeout: p.get(&USER_TIMEOUT)?.value,
    };
    let syslog_socket = p.get(&SYSLOG_SOCKET)?.value;

    let enabled = p.get(&ENABLED)?;
    Ok(Config {
        device_key,
        token,
        port,
        tls,
        hosts,
        hosts_return: p.get(&TUNNEL_HOSTS_RETURN)?.value,
        outbound_proxy,
        ignored_proxy_env,
        heartbeat: heartbeat(p, &api, &enabled)?,
        enabled,
        ssh: ssh_keys(p)?,
        api,
        host,
        handshake_timeout: p.get(&HANDSHAKE_TIMEOUT)?.value,
        connect_timeout: p.get(&CONNECT_TIMEOUT)?.value,
        local_write_timeout: p.get(&LOCAL_WRITE_TIMEOUT)?.value,
        allowed_ports: p.given(&ALLOWED_PORTS)?,
        services: services(p)?,
        ca_file,
        tls_server_name,
        max_channels: p.get(&MAX_CHANNELS)?.value as usize,
        max_frame: p.get(&MAX_FRAME)?.value as u32,
        keepalive,
        ping_interval: p.get(&PING_INTERVAL)?.value,
        status_file: p.get(&STATUS_FILE)?.value,
        syslog: p.get(&SYSLOG)?.value.then_some(syslog_socket),
        files: places.files.into_iter().map(|f| f.path).collect(),
    })
}

/// The heartbeat's settings.
fn heartbeat(p: &Places, api: &Api, enabled: &Sourced<bool>) -> Result<Heartbeat, ConfigError> {
    let wanted = p.given(&HEARTBEAT)?;
    let off = match (&api.url, wanted) {
        _ if !enabled.value => Some(format!("enabled false ({})", enabled.source)),
        (_, Some(w)) if !w.value => Some(format!("heartbeat false ({})", w.source)),
        (None, _) => Some(
            "no api_url configured, and the proxy is not the production one (set api_url or \
             MEETING_API_URL)"
                .to_owned(),
        ),
        (Some(_), _) => None,
    };
    let note = match p.given(&HEARTBEAT_NOTE)? {
        Some(n) => n.value.chars().take(200).collect(),
        None => format!(
            "tunnel-agent {} on {}",
            env!("CARGO_PKG_VERSION"),
            device_model()
        ),
    };
    let interval = p.get(&HEARTBEAT_INTERVAL)?;
    let capped = (interval.value >= AVAILABILITY_WINDOW).then(|| interval.clone());
    Ok(Heartbeat {
        off,
        interval: match capped {
            Some(_) => SAFE_HEARTBEAT_INTERVAL,
            None => interval.value.max(MIN_HEARTBEAT_INTERVAL),
        },
        capped,
        retry_unregistered: p.get(&HEARTBEAT_RETRY_UNREGISTERED)?.value,
        note,
        public_ip_url: p.given(&PUBLIC_IP_URL)?.map(|s| s.value),
        details: match p.given(&HEARTBEAT_DETAILS)? {
            Some(d) => d.value,
            None => !web_manager_device(p),
        },
    })
}

/// Whether the configuration comes from the RTSP-recorder web manager's file: that web manager
/// serves http on its port 5000, and sends heartbeats of its own, with its own `note`,
/// `ip_address` and `ip_public`.
fn web_manager_device(p: &Places) -> bool {
    p.files
        .iter()
        .any(|f| f.path.ends_with("rpi-cam/meeting.json"))
}

/// Meeting's services: the built-in ports, the web manager's on a device configured from
/// `/etc/rpi-cam` (that file among those read), then `service_ports`.
fn services(p: &Places) -> Result<Services, ConfigError> {
    let mut ports: Vec<(String, u16)> = DEFAULT_SERVICE_PORTS
        .iter()
        .map(|(n, port)| (n.to_string(), *port))
        .collect();
    if web_manager_device(p) {
        set_port(&mut ports, "http", RPI_CAM_HTTP_PORT);
    }
    if let Some(given) = p.given(&SERVICE_PORTS)? {
        for (name, port) in given.value {
            set_port(&mut ports, &name, port);
        }
    }
    Ok(Services {
        ports,
        interval: p.get(&SERVICES_INTERVAL)?.value.max(Duration::from_secs(1)),
        relay_ports: p.given(&RELAY_PORTS)?.map(|r| r.value),
    })
}

fn set_port(ports: &mut Vec<(String, u16)>, name: &str, port: u16) {
    match ports.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = port,
        None => ports.push((name.to_owned(), port)),
    }
}

/// The SSH key work's settings.
fn ssh_keys(p: &Places) -> Result<SshKeys, ConfigError> {
    let wanted = p.get(&SSH_KEYS)?;
    Ok(SshKeys {
        off: (!wanted.value).then(|| format!("ssh_keys false ({})", wanted.source)),
        user: p
            .given(&MEETING_SSH_USER)?
            .map_or(Choice::Default, |s| s.value),
        authorized_keys_file: p.given(&AUTHORIZED_KEYS_FILE)?.map(|s| s.value),
        pin: p.given(&MEETING_KEY_FINGERPRINT)?.map(|s| s.value),
        from: p.get(&MEETING_KEY_FROM)?.value,
        interval: p.get(&SSH_KEYS_INTERVAL)?.value.max(MIN_HEARTBEAT_INTERVAL),
        device_key: p.get(&DEVICE_SSH_KEY)?.value,
        generate: p.get(&GENERATE_DEVICE_KEY)?.value,
        known_hosts: p
            .given(&KNOWN_HOSTS_FILE)?
            .map_or(Choice::Default, |s| s.value),
        state_dir: p.get(&STATE_DIR)?.value,
        ssh_port: p.get(&SSH_PORT)?.value,
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

#[cfg(test)]
mod tests;
