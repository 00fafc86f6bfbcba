//! Every setting of the agent, declared once: its JSON key (also its name in messages), flag,
//! environment variable, default, parser and help text. The usage, the command-line parser,
//! the configuration loader and `check`'s "found" list all read these declarations; code
//! reads a setting's value through its typed static (`TUNNEL_PORT` gives a `u16`), so there is
//! no name to misspell.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A setting's default, as the usage shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This text, read by the setting's own parser: shown and used are the same words.
    Value(&'static str),
    /// Worked out from other settings when the configuration is loaded; the text says how.
    Derived(&'static str),
    /// None: the setting is off or required when not given.
    None,
}

/// What a setting is, without its type: what the usage, the parser and `check` need.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    /// Key in the JSON configuration file, and the setting's name in messages.
    pub key: &'static str,
    /// Command-line flag, if it has one (the token never does: a command line is public).
    pub flag: Option<&'static str>,
    /// Environment variable, if it has one.
    pub env: Option<&'static str>,
    /// What the flag's value is called in the usage (`""`: a switch without a value).
    pub arg: &'static str,
    /// The default.
    pub default: Fallback,
    /// What it does, for the usage.
    pub help: &'static str,
    /// A list: the flag is repeatable and the file holds a JSON array.
    pub list: bool,
    /// Given empty, it is turned off (the parser is handed `""`); otherwise empty counts as
    /// not given and the default applies.
    pub empty_is_off: bool,
    /// Never shown: only masked.
    pub secret: bool,
    /// A URL whose password is never shown (`user:****@`).
    pub url_secret: bool,
}

impl Spec {
    const PLAIN: Spec = Spec {
        key: "",
        flag: None,
        env: None,
        arg: "",
        default: Fallback::None,
        help: "",
        list: false,
        empty_is_off: false,
        secret: false,
        url_secret: false,
    };

    /// The default as the usage shows it (`""`: none).
    pub fn default_text(&self) -> &'static str {
        match self.default {
            Fallback::Value(t) | Fallback::Derived(t) => t,
            Fallback::None => "",
        }
    }
}

/// A setting whose value is a `T`.
pub struct Setting<T: 'static> {
    /// What it is.
    pub spec: Spec,
    /// Reads a value from its text (already trimmed); the error says what is wrong and what
    /// is expected.
    pub parse: fn(&str) -> Result<T, String>,
}

impl<T> fmt::Debug for Setting<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Setting").field(&self.spec.key).finish()
    }
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

/// Proxy host used when nothing else is configured.
pub const DEFAULT_HOST: &str = "meeting.ygsoft.fr";
/// Meeting API of the production proxy host, used when `tunnel_host` is [`DEFAULT_HOST`].
pub const DEFAULT_API_URL: &str = "https://meeting.ygsoft.fr/api";
/// The device's own SSH key, unless `device_ssh_key` says otherwise.
pub const DEFAULT_DEVICE_SSH_KEY: &str = "/root/.ssh/id_ed25519";
/// The agent's own state, unless `state_dir` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tunnel-agent";
/// Default status file.
pub const DEFAULT_STATUS_FILE: &str = "/run/tunnel-agent/status.json";

/// Declares each setting as a typed static, and [`SETTINGS`], all of them in usage order.
macro_rules! settings {
    ($(
        $(#[$doc:meta])*
        $name:ident: $ty:ty = $key:literal, flag $flag:expr, env $env:expr, arg $arg:literal,
            default $default:expr, parse $parse:expr, $help:literal $(, $field:ident: $value:expr)*;
    )*) => {
        $(
            $(#[$doc])*
            pub static $name: Setting<$ty> = Setting {
                spec: Spec {
                    key: $key,
                    flag: $flag,
                    env: $env,
                    arg: $arg,
                    default: $default,
                    help: $help,
                    $($field: $value,)*
                    ..Spec::PLAIN
                },
                parse: $parse,
            };
        )*
        /// Every setting of the agent, in the usage's order. `--config` and the verbosity
        /// flags are not settings: they say where to look and how much to log.
        pub static SETTINGS: &[&Spec] = &[$(&$name.spec),*];

        /// Each default value read by its setting's own parser: what it says when it does not.
        #[cfg(test)]
        fn defaults_read() -> Vec<(&'static str, Result<(), String>)> {
            vec![$((
                $name.spec.key,
                match $name.spec.default {
                    Fallback::Value(text) => ($name.parse)(text).map(drop),
                    _ => Ok(()),
                },
            )),*]
        }
    };
}

use Fallback::{Derived, Value};

settings! {
    /// The device key (32 hex characters in the field); may be logged.
    DEVICE_KEY: String = "device_key", flag Some("--device-key"), env Some("MEETING_DEVICE_KEY"), arg "KEY",
        default Fallback::None, parse text, "device key (last resort: /etc/meeting/device_info.json)";
    /// The token: never logged, never a flag.
    TOKEN_CODE: String = "token_code", flag None, env Some("MEETING_TOKEN"), arg "",
        default Fallback::None, parse text, "token (never a flag)", secret: true;
    /// Meeting on this device at all (the web manager's switch).
    ENABLED: bool = "enabled", flag Some("--enabled"), env Some("MEETING_ENABLED"), arg "true|false",
        default Value("true"), parse yes_no,
        "Meeting on this device: false holds no tunnel and sends no heartbeat (the web manager's switch)";
    /// The proxy host.
    TUNNEL_HOST: String = "tunnel_host", flag Some("--host"), env Some("MEETING_TUNNEL_HOST"), arg "HOST",
        default Value(DEFAULT_HOST), parse text, "proxy host";
    /// The proxy's control port.
    TUNNEL_PORT: u16 = "tunnel_port", flag Some("--port"), env Some("MEETING_TUNNEL_PORT"), arg "PORT",
        default Value("9001"), parse port, "proxy control port";
    /// TLS to the proxy.
    TUNNEL_SSL: bool = "tunnel_ssl", flag Some("--tls"), env Some("MEETING_TUNNEL_TLS"), arg "",
        default Value("false"), parse yes_no, "TLS to the proxy";
    /// Several Meeting proxy addresses, tried in order.
    TUNNEL_HOSTS: Vec<Endpoint> = "tunnel_hosts", flag Some("--tunnel-hosts"), env Some("MEETING_TUNNEL_HOSTS"),
        arg "HOST:PORT", default Derived("tunnel_host:tunnel_port alone"), parse endpoints,
        "Meeting proxy addresses tried in order on failure, each HOST:PORT (TLS as tunnel_ssl), tls://HOST:PORT or tcp://HOST:PORT (flag repeatable; file: [\"a:9001\", \"tls://b:443\"])",
        list: true;
    /// Time away from the first of `tunnel_hosts` after which a new connection tries it again.
    TUNNEL_HOSTS_RETURN: Duration = "tunnel_hosts_return", flag None, env None, arg "",
        default Value("600"), parse seconds,
        "seconds on another of tunnel_hosts after which a new connection tries the first again";
    /// The outbound HTTP or SOCKS5 proxy the tunnel and the Meeting API go through.
    OUTBOUND_PROXY: crate::transport::outbound::OutboundProxy = "outbound_proxy", flag Some("--outbound-proxy"),
        env Some("MEETING_OUTBOUND_PROXY"), arg "URL", default Fallback::None, parse outbound_proxy,
        "reach the proxy and the Meeting API through this HTTP (CONNECT) or SOCKS5 proxy: http://[user:pass@]host:port, socks5://…, socks5h://… (HTTPS_PROXY and ALL_PROXY are not read)",
        url_secret: true;
    /// PEM CA bundle trusted for the proxy instead of the public roots.
    CA_FILE: PathBuf = "ca_file", flag Some("--ca-file"), env None, arg "FILE",
        default Fallback::None, parse path, "trust this PEM CA bundle instead of the public roots";
    /// Name checked in the proxy's certificate.
    TLS_SERVER_NAME: String = "tls_server_name", flag Some("--tls-server-name"), env None, arg "NAME",
        default Derived("the host"), parse text, "name checked in the proxy certificate";
    /// The Meeting API's base URL.
    API_URL: String = "api_url", flag Some("--api-url"), env Some("MEETING_API_URL"), arg "URL",
        default Derived("https://meeting.ygsoft.fr/api with the default host, else none"), parse text,
        "Meeting API base URL, with or without /api";
    /// PEM CA bundle for the Meeting API.
    API_CA_FILE: PathBuf = "api_ca_file", flag Some("--api-ca-file"), env None, arg "FILE",
        default Derived("ca_file"), parse path, "PEM CA bundle for the Meeting API, when it differs from the proxy's";
    /// Keep the device online in Meeting.
    HEARTBEAT: bool = "heartbeat", flag Some("--heartbeat"), env Some("MEETING_HEARTBEAT"), arg "true|false",
        default Derived("true when an API URL is known"), parse yes_no, "keep the device online in Meeting";
    /// Time between heartbeats.
    HEARTBEAT_INTERVAL: Duration = "heartbeat_interval", flag Some("--heartbeat-interval"), env None, arg "SECS",
        default Value("30"), parse seconds,
        "time between heartbeats (at least 5; 60 or more, which Meeting's 60 s window cannot tolerate, is capped at 30)";
    /// The heartbeat's `note`.
    HEARTBEAT_NOTE: String = "heartbeat_note", flag None, env None, arg "",
        default Derived("tunnel-agent VERSION on MODEL"), parse text, "the note the heartbeat sends";
    /// Whether the heartbeat describes the device (note, addresses, MAC) or only says it is there.
    HEARTBEAT_DETAILS: bool = "heartbeat_details", flag None, env None, arg "",
        default Derived("true; false with /etc/rpi-cam/meeting.json, where the web manager beats with its own"),
        parse yes_no,
        "whether the heartbeat carries note, ip_address, ip_lan, ip_public and mac (false: presence only)";
    /// Time between heartbeats while Meeting answers 404/401/403.
    HEARTBEAT_RETRY_UNREGISTERED: Duration = "heartbeat_retry_unregistered", flag None, env None, arg "",
        default Value("600"), parse seconds, "seconds between heartbeats while Meeting answers 404/401/403";
    /// URL answering the device's public address.
    PUBLIC_IP_URL: String = "public_ip_url", flag None, env None, arg "",
        default Fallback::None, parse text, "URL answering the device's public address as text (none: not sent)";
    /// The SSH key work.
    SSH_KEYS: bool = "ssh_keys", flag Some("--ssh-keys"), env Some("MEETING_SSH_KEYS"), arg "true|false",
        default Value("true"), parse yes_no,
        "install Meeting's SSH key, publish the device key, keep known_hosts (verified HTTPS only)";
    /// Login user of Meeting's terminal.
    MEETING_SSH_USER: Choice<String> = "meeting_ssh_user", flag Some("--meeting-ssh-user"), env None, arg "USER",
        default Derived("device, when that user exists"), parse choice_text,
        "login user of Meeting's terminal, who gets Meeting's key ('' turns this off)", empty_is_off: true;
    /// Where Meeting's key is installed.
    AUTHORIZED_KEYS_FILE: PathBuf = "authorized_keys_file", flag Some("--authorized-keys-file"), env None, arg "PATH",
        default Derived("HOME/.ssh/authorized_keys"), parse path, "where Meeting's key is installed";
    /// Pin: Meeting's key's SHA256 fingerprint.
    MEETING_KEY_FINGERPRINT: String = "meeting_key_fingerprint", flag None, env None, arg "",
        default Fallback::None, parse text, "pin: Meeting's key must have this SHA256 fingerprint";
    /// `from=` option put on Meeting's key (`None`: none).
    MEETING_KEY_FROM: Option<String> = "meeting_key_from", flag None, env None, arg "",
        default Value("127.0.0.1,::1"), parse from_patterns,
        "addresses Meeting's key is accepted from: from= under OpenSSH, tunnel-agent ssh-gate under Dropbear ('' puts none)",
        empty_is_off: true;
    /// Time between two rounds of key work.
    SSH_KEYS_INTERVAL: Duration = "ssh_keys_interval", flag None, env None, arg "",
        default Value("3600"), parse seconds, "seconds between two rounds of key work";
    /// The device's own SSH key (`None`: off).
    DEVICE_SSH_KEY: Option<PathBuf> = "device_ssh_key", flag Some("--device-ssh-key"), env None, arg "PATH",
        default Value(DEFAULT_DEVICE_SSH_KEY), parse path_or_off,
        "the device's own SSH key, whose .pub is published to Meeting ('' turns this off)", empty_is_off: true;
    /// Create `device_ssh_key` when it is missing.
    GENERATE_DEVICE_KEY: bool = "generate_device_key", flag None, env None, arg "",
        default Value("true"), parse yes_no, "create device_ssh_key (Ed25519) when it is missing";
    /// Where Meeting's SSH host keys go.
    KNOWN_HOSTS_FILE: Choice<PathBuf> = "known_hosts_file", flag Some("--known-hosts-file"), env None, arg "PATH",
        default Derived("HOME/.ssh/known_hosts of the device key's owner"), parse choice_path,
        "where Meeting's SSH host keys go ('' turns this off)", empty_is_off: true;
    /// The agent's own state.
    STATE_DIR: PathBuf = "state_dir", flag Some("--state-dir"), env None, arg "DIR",
        default Value(DEFAULT_STATE_DIR), parse path, "the agent's own state (which device key was published)";
    /// Port of the local SSH server.
    SSH_PORT: u16 = "ssh_port", flag None, env None, arg "",
        default Value("22"), parse port, "port of the local sshd (check)";
    /// Wait for the handshake reply before assuming an older proxy (a later reply is still
    /// read as the reply).
    HANDSHAKE_TIMEOUT: Duration = "handshake_timeout", flag Some("--handshake-timeout"), env None, arg "SECS",
        default Value("15"), parse seconds, "wait for the handshake reply before assuming an older proxy";
    /// Local connect timeout per channel.
    CONNECT_TIMEOUT: Duration = "connect_timeout", flag Some("--connect-timeout"), env None, arg "SECS",
        default Value("5"), parse seconds, "local connect timeout per channel";
    /// A local service that takes no data this long is closed.
    LOCAL_WRITE_TIMEOUT: Duration = "local_write_timeout", flag Some("--local-write-timeout"), env None, arg "SECS",
        default Value("15"), parse seconds, "a local service that takes no data this long is closed";
    /// Local ports the proxy may open, when given: they override the services Meeting grants.
    ALLOWED_PORTS: Vec<u16> = "allowed_ports", flag Some("--allow-port"), env None, arg "PORT",
        default Derived("the ports of the services Meeting grants (22 until it has answered)"), parse ports,
        "local ports the proxy may open, overriding the services Meeting grants (flag repeatable; file: [22, 5900])",
        list: true;
    /// The local ports a `relay` tunnel may reach, when Meeting grants relay.
    RELAY_PORTS: Vec<u16> = "relay_ports", flag Some("--relay-port"), env None, arg "PORT",
        default Derived("any port Meeting's operator chooses, while Meeting grants relay"), parse ports_or_none,
        "the local ports a relay tunnel may reach, while Meeting grants relay (flag repeatable; file: [8080], [] for none)",
        list: true, empty_is_off: true;
    /// The local port of each Meeting service.
    SERVICE_PORTS: Vec<(String, u16)> = "service_ports", flag Some("--service-port"), env None, arg "NAME=PORT",
        default Derived("ssh=22, scp=22, vnc=5900, http=80 (http=5000 with /etc/rpi-cam/meeting.json)"),
        parse service_ports,
        "the local port of a Meeting service, over the defaults (flag repeatable; file: [\"http=5000\"])",
        list: true;
    /// Time between two readings of the services Meeting grants.
    SERVICES_INTERVAL: Duration = "services_interval", flag None, env None, arg "",
        default Value("60"), parse seconds, "seconds between two readings of the services Meeting grants";
    /// Channels open at once.
    MAX_CHANNELS: u64 = "max_channels", flag Some("--max-channels"), env None, arg "N",
        default Value("64"), parse count::<100_000>, "channels open at once";
    /// Largest frame accepted from the proxy.
    MAX_FRAME: u64 = "max_frame", flag Some("--max-frame"), env None, arg "BYTES",
        default Value("1048576"), parse count::<{ 64 * 1024 * 1024 }>, "largest frame accepted from the proxy";
    /// With a proxy that announces keepalive pings: ping after this long with nothing
    /// received (at most the proxy's interval); `None`: never ping.
    PING_INTERVAL: Option<Duration> = "ping_interval", flag Some("--ping-interval"), env None, arg "SECS",
        default Value("25"), parse seconds_or_off,
        "with a proxy that announces keepalive pings: ping after this long with nothing received, and take the connection for dead after 3 times as long (0 or off: never ping)";
    /// Idle time before TCP keepalive probes.
    KEEPALIVE_IDLE: Duration = "keepalive_idle", flag Some("--keepalive-idle"), env None, arg "SECS",
        default Value("30"), parse seconds, "dead-link detection: idle time before TCP keepalive probes";
    /// Time between keepalive probes.
    KEEPALIVE_INTERVAL: Duration = "keepalive_interval", flag Some("--keepalive-interval"), env None, arg "SECS",
        default Value("10"), parse seconds, "time between probes";
    /// Unanswered probes before the link is declared dead.
    KEEPALIVE_COUNT: u64 = "keepalive_count", flag Some("--keepalive-count"), env None, arg "N",
        default Value("3"), parse count::<100>, "unanswered probes before the link is declared dead";
    /// Sent data unacknowledged this long: the link is dead.
    USER_TIMEOUT: Duration = "user_timeout", flag Some("--user-timeout"), env None, arg "SECS",
        default Value("60"), parse seconds, "sent data unacknowledged this long: the link is dead";
    /// The status file (`None`: not written).
    STATUS_FILE: Option<PathBuf> = "status_file", flag Some("--status-file"), env None, arg "PATH",
        default Value(DEFAULT_STATUS_FILE), parse path_or_empty, "status file ('' turns it off)",
        empty_is_off: true;
    /// Log to the syslog socket instead of stderr.
    SYSLOG: bool = "syslog", flag Some("--syslog"), env None, arg "",
        default Value("false"), parse yes_no, "log to the local syslog socket instead of stderr";
    /// The syslog socket.
    SYSLOG_SOCKET: PathBuf = "syslog_socket", flag Some("--syslog-socket"), env None, arg "PATH",
        default Value(crate::logging::SYSLOG_SOCKET), parse path, "that socket";
}

/// The setting a command-line flag sets.
pub fn setting_of_flag(flag: &str) -> Option<&'static Spec> {
    SETTINGS.iter().copied().find(|s| s.flag == Some(flag))
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
        let mut also = Vec::new();
        if let Some(env) = s.env {
            also.push(env.to_owned());
        }
        also.push(s.key.to_owned());
        let mut right = format!("{} [{}", s.help, also.join(", "));
        if !s.default_text().is_empty() {
            right.push_str(&format!("; default {}", s.default_text()));
        }
        right.push(']');
        if left.len() >= 27 {
            out.push_str(&format!("  {left}\n  {:27}{right}\n", ""));
        } else {
            out.push_str(&format!("  {left:<27}{right}\n"));
        }
    }
    out
}

// ---- Parsers: text in, a value or what is wrong with it out -------------------------------

fn text(s: &str) -> Result<String, String> {
    Ok(s.to_owned())
}

/// A Meeting proxy address of `tunnel_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Control port.
    pub port: u16,
    /// TLS: `Some` when the entry says (`tls://`, `tcp://`), `None` for `tunnel_ssl`'s.
    pub tls: Option<bool>,
}

impl fmt::Display for Endpoint {
    /// `host:port`, as the log and `status` show the proxy in use.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn endpoints(s: &str) -> Result<Vec<Endpoint>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (tls, rest) = match e.split_once("://") {
                Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
                    "tls" => (Some(true), rest),
                    "tcp" => (Some(false), rest),
                    other => {
                        return Err(format!(
                            "\"{e}\": unknown scheme {other:?} (tls:// or tcp://, or none for tunnel_ssl)"
                        ))
                    }
                },
                None => (None, e),
            };
            let (host, port) = crate::transport::tcp::split_host_port(rest)
                .map_err(|why| format!("\"{e}\": {why}"))?;
            Ok(Endpoint { host, port, tls })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| match v.is_empty() {
            true => Err("no HOST:PORT in the list".to_owned()),
            false => Ok(v),
        })
}

fn outbound_proxy(s: &str) -> Result<crate::transport::outbound::OutboundProxy, String> {
    crate::transport::outbound::OutboundProxy::parse(s)
}

fn path(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

/// A TCP port, 1 to 65535.
pub fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("\"{s}\" is not a TCP port (1 to 65535)")),
    }
}

/// Ports, comma-separated (the file's array and repeated flags are joined so).
fn ports(s: &str) -> Result<Vec<u16>, String> {
    s.split(',').map(|p| port(p.trim())).collect()
}

/// Ports, comma-separated; nothing at all is no port (`[]` in the file).
fn ports_or_none(s: &str) -> Result<Vec<u16>, String> {
    if s.trim().is_empty() {
        return Ok(Vec::new());
    }
    ports(s)
}

/// Services and their ports, `NAME=PORT`, comma-separated.
fn service_ports(s: &str) -> Result<Vec<(String, u16)>, String> {
    s.split(',')
        .map(|item| {
            let (name, p) = item
                .trim()
                .split_once('=')
                .ok_or_else(|| format!("\"{item}\" is not NAME=PORT (e.g. http=5000)"))?;
            let name = name.trim().to_ascii_lowercase();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!(
                    "\"{item}\": the service name must be letters, digits, - or _"
                ));
            }
            Ok((name, port(p.trim())?))
        })
        .collect()
}

/// A yes/no value: true/false, 1/0, yes/no, on/off.
fn yes_no(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(format!(
            "\"{s}\" is not a yes/no value (use true or false, 1 or 0)"
        )),
    }
}

/// A duration in seconds, fractions allowed, more than 0 and at most a day.
pub fn seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "\"{s}\" is not a number of seconds between 0 and 86400"
        )),
    }
}

/// Seconds as [`seconds`] reads them, or off: `0`, `off` or empty.
fn seconds_or_off(s: &str) -> Result<Option<Duration>, String> {
    match s.trim() {
        "0" | "off" | "" => Ok(None),
        v => seconds(v).map(Some),
    }
}

/// A whole number from 1 to `MAX`.
fn count<const MAX: u64>(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if (1..=MAX).contains(&n) => Ok(n),
        _ => Err(format!("\"{s}\" is not a whole number from 1 to {MAX}")),
    }
}

/// Empty, `none` or `off`: off; anything else: given.
fn choice_text(s: &str) -> Result<Choice<String>, String> {
    Ok(match s {
        "" | "none" | "off" => Choice::Off,
        v => Choice::Given(v.to_owned()),
    })
}

fn choice_path(s: &str) -> Result<Choice<PathBuf>, String> {
    Ok(match choice_text(s)? {
        Choice::Given(v) => Choice::Given(PathBuf::from(v)),
        Choice::Off => Choice::Off,
        Choice::Default => Choice::Default,
    })
}

/// A path, or off when empty, `none` or `off`.
fn path_or_off(s: &str) -> Result<Option<PathBuf>, String> {
    Ok(match choice_path(s)? {
        Choice::Given(p) => Some(p),
        _ => None,
    })
}

/// A path, or off when empty.
fn path_or_empty(s: &str) -> Result<Option<PathBuf>, String> {
    Ok((!s.is_empty()).then(|| PathBuf::from(s)))
}

/// An `authorized_keys` `from=` pattern list, or none when empty.
fn from_patterns(s: &str) -> Result<Option<String>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".:,/*?!-_[]".contains(&b))
    {
        return Err(format!(
            "\"{s}\" is not a from= pattern list (addresses, host names, CIDR, comma-separated)"
        ));
    }
    Ok(Some(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A default the parser cannot read would be an error at every start: every one reads.
    #[test]
    fn every_default_value_reads_and_every_key_and_flag_is_unique() {
        let read = defaults_read();
        assert_eq!(read.len(), SETTINGS.len());
        for (key, result) in read {
            if let Err(e) = result {
                panic!("{key}: its default does not read: {e}");
            }
        }
        for (i, a) in SETTINGS.iter().enumerate() {
            for b in &SETTINGS[i + 1..] {
                assert_ne!(a.key, b.key);
                assert!(a.flag.is_none() || a.flag != b.flag, "{}", a.key);
                assert!(a.env.is_none() || a.env != b.env, "{}", a.key);
            }
        }
        // The agent's default frame limit is the protocol's.
        assert_eq!(
            MAX_FRAME.spec.default_text(),
            crate::protocol::frame::DEFAULT_MAX_FRAME.to_string()
        );
    }

    /// The README's settings table is documentation of these declarations: each row names
    /// the key, its flag, its environment variable and its default as declared here.
    #[test]
    fn the_readme_table_matches_the_declarations() {
        let readme = include_str!("../../README.md");
        for s in SETTINGS {
            let row = readme
                .lines()
                .find(|l| l.starts_with('|') && l.contains(&format!("| `{}` ", s.key)))
                .unwrap_or_else(|| panic!("no README row for {}", s.key));
            for part in [s.flag, s.env].into_iter().flatten() {
                assert!(
                    row.contains(&format!("`{part}")),
                    "{}: {part} missing: {row}",
                    s.key
                );
            }
            if let Fallback::Value(text) = s.default {
                assert!(
                    row.contains(text),
                    "{}: default {text} missing: {row}",
                    s.key
                );
            }
        }
    }
}
