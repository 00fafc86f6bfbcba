//! Agent configuration: command-line flags, then environment, then a JSON file, then defaults;
//! every value remembers where it came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

/// Proxy host used when nothing else is configured.
pub const DEFAULT_HOST: &str = "meeting.ygsoft.fr";
/// Proxy control port used when nothing else is configured.
pub const DEFAULT_PORT: u16 = 9001;
/// Configuration files tried in order when `--config` is not given.
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

/// Settings given on the command line (`None`: not given).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Flags {
    /// `--config FILE`.
    pub config: Option<PathBuf>,
    /// `--device-key KEY`.
    pub device_key: Option<String>,
    /// `--host HOST`.
    pub host: Option<String>,
    /// `--port PORT`.
    pub port: Option<String>,
    /// `--handshake-timeout SECS`.
    pub handshake_timeout: Option<String>,
    /// `--connect-timeout SECS`.
    pub connect_timeout: Option<String>,
    /// `--allow-port PORT`, repeatable.
    pub allow_ports: Vec<String>,
    /// `--tls`.
    pub tls: bool,
    /// `--ca-file FILE`.
    pub ca_file: Option<String>,
    /// `--tls-server-name NAME`.
    pub tls_server_name: Option<String>,
    /// `--max-channels N`.
    pub max_channels: Option<String>,
    /// `--max-frame BYTES`.
    pub max_frame: Option<String>,
    /// `--keepalive-idle SECS`.
    pub keepalive_idle: Option<String>,
    /// `--keepalive-interval SECS`.
    pub keepalive_interval: Option<String>,
    /// `--keepalive-count N`.
    pub keepalive_count: Option<String>,
    /// `--user-timeout SECS`.
    pub user_timeout: Option<String>,
    /// `--status-file PATH` (`Some("")` turns it off).
    pub status_file: Option<String>,
    /// `--syslog`.
    pub syslog: bool,
    /// `--syslog-socket PATH`.
    pub syslog_socket: Option<String>,
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
    /// Meeting REST API base URL, when configured.
    pub api_url: Option<Sourced<String>>,
    /// How long to wait for the proxy's handshake reply before assuming an older proxy.
    pub handshake_timeout: Duration,
    /// How long a local connection (e.g. to sshd) may take before the channel is closed.
    pub connect_timeout: Duration,
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

    /// Whether the device key has the expected form (32 hexadecimal characters).
    pub fn device_key_well_formed(&self) -> bool {
        let k = &self.device_key.value;
        k.len() == 32 && k.bytes().all(|b| b.is_ascii_hexdigit())
    }
}

/// TCP keepalive and user timeout of the control socket: how a dead link is noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is declared dead.
    pub count: u32,
    /// How long sent data may stay unacknowledged (`TCP_USER_TIMEOUT`).
    pub user_timeout: Duration,
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
            ConfigError::Invalid { what, source, why } => {
                write!(f, "invalid {what} (from {source}): {why}")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The keys of a configuration file, as deployed devices have them (PROTOCOL.md section 5).
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

/// One setting's candidates in priority order: (source, raw text).
fn pick(candidates: Vec<(Source, Option<String>)>) -> Option<Sourced<String>> {
    candidates.into_iter().find_map(|(source, v)| {
        v.filter(|s| !s.trim().is_empty())
            .map(|value| Sourced { value, source })
    })
}

/// Resolves the configuration. `env` looks up an environment variable.
pub fn load(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
) -> Result<Config, ConfigError> {
    let mut looked_file = Vec::new();
    let file = match &flags.config {
        Some(path) => Some(FileValues::read(path)?),
        None => {
            let mut found = None;
            for path in &paths.config_files {
                if path.exists() {
                    found = Some(FileValues::read(path)?);
                    break;
                }
                looked_file.push(format!("{} (not found)", path.display()));
            }
            found
        }
    };
    let from_file = |key: &'static str| -> Result<(Source, Option<String>), ConfigError> {
        match &file {
            Some(f) => Ok((f.source(), f.text(key)?)),
            None => Ok((Source::Default, None)),
        }
    };
    let file_place = |key: &str| -> Vec<String> {
        let mut v = looked_file.clone();
        if let Some(f) = &file {
            v.push(format!("{} (key \"{key}\")", f.path.display()));
        }
        v
    };

    // Device key: flag, env, file, then device_info.json.
    let mut device_key = pick(vec![
        (Source::Flag("--device-key"), flags.device_key.clone()),
        (Source::Env("MEETING_DEVICE_KEY"), env("MEETING_DEVICE_KEY")),
        from_file("device_key")?,
    ]);
    if device_key.is_none() && paths.device_info.exists() {
        let info = FileValues::read(&paths.device_info)?;
        device_key = pick(vec![(info.source(), info.text("device_key")?)]);
    }
    let device_key = device_key.ok_or_else(|| {
        let mut looked = vec![
            "flag --device-key (not given)".to_owned(),
            "environment MEETING_DEVICE_KEY (not set)".to_owned(),
        ];
        looked.extend(file_place("device_key"));
        let info = &paths.device_info;
        looked.push(if info.exists() {
            format!("{} (key \"device_key\")", info.display())
        } else {
            format!("{} (not found)", info.display())
        });
        ConfigError::Missing {
            what: "device key",
            looked,
        }
    })?;

    // Token: env, file. Never a flag: every local user can read a command line.
    let token = pick(vec![
        (Source::Env("MEETING_TOKEN"), env("MEETING_TOKEN")),
        from_file("token_code")?,
    ])
    .ok_or_else(|| {
        let mut looked = vec!["environment MEETING_TOKEN (not set)".to_owned()];
        looked.extend(file_place("token_code"));
        ConfigError::Missing {
            what: "token",
            looked,
        }
    })?;

    let host = pick(vec![
        (Source::Flag("--host"), flags.host.clone()),
        (
            Source::Env("MEETING_TUNNEL_HOST"),
            env("MEETING_TUNNEL_HOST"),
        ),
        from_file("tunnel_host")?,
    ])
    .unwrap_or(Sourced {
        value: DEFAULT_HOST.to_owned(),
        source: Source::Default,
    });

    let port = match pick(vec![
        (Source::Flag("--port"), flags.port.clone()),
        (
            Source::Env("MEETING_TUNNEL_PORT"),
            env("MEETING_TUNNEL_PORT"),
        ),
        from_file("tunnel_port")?,
    ]) {
        Some(s) => Sourced {
            value: parse_port("tunnel port", &s.value, &s.source)?,
            source: s.source,
        },
        None => Sourced {
            value: DEFAULT_PORT,
            source: Source::Default,
        },
    };

    let tls = match pick(vec![
        (Source::Flag("--tls"), flags.tls.then(|| "true".to_owned())),
        (Source::Env("MEETING_TUNNEL_TLS"), env("MEETING_TUNNEL_TLS")),
        from_file("tunnel_ssl")?,
    ]) {
        Some(s) => Sourced {
            value: parse_bool("tunnel_ssl", &s.value, &s.source)?,
            source: s.source,
        },
        None => Sourced {
            value: false,
            source: Source::Default,
        },
    };

    let api_url = pick(vec![from_file("api_url")?]);

    let secs = |flag: Option<String>, flag_name: &'static str, key: &'static str, default: u64| {
        match pick(vec![(Source::Flag(flag_name), flag), from_file(key)?]) {
            Some(s) => parse_secs(key, &s.value, &s.source),
            None => Ok(Duration::from_secs(default)),
        }
    };
    let handshake_timeout = secs(
        flags.handshake_timeout.clone(),
        "--handshake-timeout",
        "handshake_timeout",
        5,
    )?;
    let connect_timeout = secs(
        flags.connect_timeout.clone(),
        "--connect-timeout",
        "connect_timeout",
        5,
    )?;

    let ca_file = pick(vec![
        (Source::Flag("--ca-file"), flags.ca_file.clone()),
        from_file("ca_file")?,
    ])
    .map(|s| Sourced {
        value: PathBuf::from(s.value),
        source: s.source,
    });
    let tls_server_name = pick(vec![
        (
            Source::Flag("--tls-server-name"),
            flags.tls_server_name.clone(),
        ),
        from_file("tls_server_name")?,
    ])
    .unwrap_or_else(|| host.clone());
    let count =
        |flag: Option<String>, name: &'static str, key: &'static str, default: u64, max: u64| {
            match pick(vec![(Source::Flag(name), flag), from_file(key)?]) {
                Some(s) => match s.value.trim().parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(n),
                    _ => Err(ConfigError::Invalid {
                        what: key,
                        source: s.source,
                        why: format!("\"{}\" is not a whole number from 1 to {max}", s.value),
                    }),
                },
                None => Ok(default),
            }
        };
    let max_channels = count(
        flags.max_channels.clone(),
        "--max-channels",
        "max_channels",
        64,
        100_000,
    )? as usize;
    let max_frame = count(
        flags.max_frame.clone(),
        "--max-frame",
        "max_frame",
        u64::from(crate::frame::DEFAULT_MAX_FRAME),
        64 * 1024 * 1024,
    )? as u32;

    let keepalive = Keepalive {
        idle: secs(
            flags.keepalive_idle.clone(),
            "--keepalive-idle",
            "keepalive_idle",
            30,
        )?,
        interval: secs(
            flags.keepalive_interval.clone(),
            "--keepalive-interval",
            "keepalive_interval",
            10,
        )?,
        count: count(
            flags.keepalive_count.clone(),
            "--keepalive-count",
            "keepalive_count",
            3,
            100,
        )? as u32,
        user_timeout: secs(
            flags.user_timeout.clone(),
            "--user-timeout",
            "user_timeout",
            60,
        )?,
    };
    // An empty path, on the command line or in the file, turns the status file off.
    let status_file = match (
        &flags.status_file,
        file.as_ref().and_then(|f| f.map.get("status_file")),
    ) {
        (Some(p), _) => (!p.is_empty()).then(|| PathBuf::from(p)),
        (None, Some(Value::String(p))) => (!p.is_empty()).then(|| PathBuf::from(p)),
        (None, Some(Value::Null)) | (None, None) => Some(PathBuf::from(DEFAULT_STATUS_FILE)),
        (None, Some(other)) => {
            return Err(ConfigError::Invalid {
                what: "status_file",
                source: file.as_ref().map_or(Source::Default, |f| f.source()),
                why: format!("expected a path or \"\", found {}", json_kind(other)),
            })
        }
    };

    let syslog_on = match pick(vec![
        (
            Source::Flag("--syslog"),
            flags.syslog.then(|| "true".to_owned()),
        ),
        from_file("syslog")?,
    ]) {
        Some(s) => parse_bool("syslog", &s.value, &s.source)?,
        None => false,
    };
    let syslog_socket = pick(vec![
        (Source::Flag("--syslog-socket"), flags.syslog_socket.clone()),
        from_file("syslog_socket")?,
    ])
    .map_or(crate::logging::SYSLOG_SOCKET.to_owned(), |s| s.value);
    let syslog = syslog_on.then(|| PathBuf::from(syslog_socket));

    let allowed_ports = if !flags.allow_ports.is_empty() {
        let source = Source::Flag("--allow-port");
        let ports = flags
            .allow_ports
            .iter()
            .map(|p| parse_port("allowed port", p, &source))
            .collect::<Result<_, _>>()?;
        Sourced {
            value: ports,
            source,
        }
    } else if let Some(f) = file
        .as_ref()
        .filter(|f| f.map.contains_key("allowed_ports"))
    {
        Sourced {
            value: f.ports("allowed_ports")?,
            source: f.source(),
        }
    } else {
        Sourced {
            value: vec![22],
            source: Source::Default,
        }
    };

    Ok(Config {
        device_key: Sourced {
            value: device_key.value.trim().to_owned(),
            source: device_key.source,
        },
        token: Sourced {
            value: Secret::new(token.value.trim()),
            source: token.source,
        },
        host: Sourced {
            value: host.value.trim().to_owned(),
            source: host.source,
        },
        port,
        tls,
        api_url,
        handshake_timeout,
        connect_timeout,
        allowed_ports,
        ca_file,
        tls_server_name,
        max_channels,
        max_frame,
        keepalive,
        status_file,
        syslog,
        file: file.map(|f| f.path),
    })
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
        let flags = Flags {
            host: Some("flag.example".into()),
            ..Flags::default()
        };
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
               "max_channels":8,"max_frame":65536}"#,
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
        let c = load(
            &Flags {
                tls: true,
                ..Flags::default()
            },
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
            &Flags {
                max_channels: Some("0".into()),
                ..flags.clone()
            },
            &env_of(&[]),
            &t.paths(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_channels"), "{e}");
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
        flags.allow_ports = vec!["8080".into()];
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
}
