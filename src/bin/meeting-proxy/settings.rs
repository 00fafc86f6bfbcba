//! `meeting-proxy` settings: repeatable flags, or the same from a JSON file.

use std::path::Path;

use serde::Deserialize;

/// A device the proxy accepts.
#[derive(Debug, Clone, Deserialize)]
pub struct Device {
    /// Device key.
    pub key: String,
    /// Token code.
    pub token: String,
    /// Whether the device may open tunnels.
    #[serde(default = "authorized_by_default")]
    pub authorized: bool,
}

/// A listed device is authorized unless it says otherwise.
fn authorized_by_default() -> bool {
    true
}

/// A public port mapped to a device's local port.
#[derive(Debug, Clone, Deserialize)]
pub struct Tunnel {
    /// Public listen address, e.g. `127.0.0.1:9100` (port 0: any free port).
    pub listen: String,
    /// Device key.
    pub device: String,
    /// Local port on the device.
    pub port: u16,
}

/// How the proxy answers a handshake: the behaviours seen in the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyMode {
    /// One JSON line: accepted or refused with a reason.
    Normal,
    /// No reply line at all; frames start when a tunnel opens (older proxies).
    None,
    /// Close right after reading the handshake, without a byte (the field report's bug).
    SilentClose,
}

/// Which refusal form the proxy sends in `normal` mode (docs/protocol.md, section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorForm {
    /// Form A: `{"status":"error","message":...}`.
    Status,
    /// Form B: `{"error":"auth_failed","reason":...}`.
    Error,
}

/// Everything the proxy runs with. A member missing from the JSON file takes its value from
/// [`Settings::default`], where each default is written once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where agents connect (in JSON, one address or a list).
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<String>,
    /// Where agents connect over TLS, beside `listen` (which is then plain TCP).
    #[serde(deserialize_with = "one_or_many")]
    pub listen_tls: Vec<String>,
    /// Accepted devices.
    pub devices: Vec<Device>,
    /// Public tunnels.
    pub tunnels: Vec<Tunnel>,
    /// Reply mode.
    pub reply: ReplyMode,
    /// Refusal form.
    pub error_form: ErrorForm,
    /// PEM certificate chain: serve TLS on the agent port.
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The Meeting API that decides handshakes and lists tunnels (with or without `/api`).
    pub api_url: Option<String>,
    /// PEM CA bundle for the API's certificate (else the public roots).
    pub api_ca_file: Option<std::path::PathBuf>,
    /// Bound of one API request, in seconds. Under the agents' handshake wait (15 s), so a
    /// slow API still gets every handshake an answer within it.
    pub api_timeout: f64,
    /// Seconds between two `GET {api}/tunnels`.
    pub tunnels_interval: f64,
    /// Address the API's tunnels listen on (their port comes from the API).
    pub public_bind: String,
    /// Public ports the API may open, `[low, high]`; others are left out with a warning.
    pub public_ports: Option<(u16, u16)>,
    /// Cut the open connections of a tunnel when it expires or is removed.
    pub close_expired: bool,
    /// Seconds an accepted handshake's answer is reused.
    pub cache_accept: f64,
    /// Seconds a refusal's answer is reused.
    pub cache_refuse: f64,
    /// Seconds from accept within which the whole handshake (TLS included) must arrive.
    pub handshake_timeout: f64,
    /// Handshakes in progress from one address; more are refused at once.
    pub max_pending_per_address: usize,
    /// Handshakes in progress in all; more are refused at once.
    pub max_pending: usize,
    /// Seconds a device (or a public client) may take nothing before it is dropped.
    pub send_timeout: f64,
    /// Keepalive interval announced to agents, in seconds (0: none): they ping when nothing
    /// arrived for it, and a device that pings is dropped after 3 intervals of silence.
    pub keepalive: f64,
    /// Failed handshakes from one address before it is slowed.
    pub address_penalty_burst: usize,
    /// Handshakes a second one slowed address may try.
    pub address_penalty_per_second: f64,
    /// Failed handshakes for one device key before it is slowed.
    pub key_penalty_burst: usize,
    /// Handshakes a minute a slowed key may have judged (each may be one API call).
    pub key_penalty_per_minute: f64,
    /// Seconds a device's accepted token still lets it in while its key is slowed.
    pub remember_accepted: f64,
    /// Public connections from one address to one device.
    pub max_public_per_address: usize,
    /// Public connections to one device in all.
    pub max_public_per_device: usize,
    /// Where Prometheus metrics and `GET /devices` are served (off when `None`).
    pub metrics_listen: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec!["127.0.0.1:9001".to_owned()],
            listen_tls: Vec::new(),
            devices: Vec::new(),
            tunnels: Vec::new(),
            reply: ReplyMode::Normal,
            error_form: ErrorForm::Status,
            tls_cert: None,
            tls_key: None,
            api_url: None,
            api_ca_file: None,
            api_timeout: 3.0,
            tunnels_interval: 5.0,
            public_bind: "0.0.0.0".to_owned(),
            public_ports: None,
            close_expired: false,
            cache_accept: 60.0,
            cache_refuse: 5.0,
            handshake_timeout: 10.0,
            max_pending_per_address: 32,
            max_pending: 1024,
            send_timeout: 60.0,
            keepalive: 25.0,
            address_penalty_burst: 5,
            address_penalty_per_second: 10.0,
            key_penalty_burst: 3,
            key_penalty_per_minute: 3.0,
            remember_accepted: 3600.0,
            max_public_per_address: 16,
            max_public_per_device: 256,
            metrics_listen: None,
        }
    }
}

impl Settings {
    /// Checks what serde cannot: durations, the port range, what goes together.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v, min) in [
            ("api_timeout", self.api_timeout, 0.1),
            ("tunnels_interval", self.tunnels_interval, 0.1),
            ("cache_accept", self.cache_accept, 0.0),
            ("cache_refuse", self.cache_refuse, 0.0),
            ("send_timeout", self.send_timeout, 0.1),
            ("remember_accepted", self.remember_accepted, 0.0),
        ] {
            if !(v.is_finite() && (min..=86_400.0).contains(&v)) {
                return Err(format!(
                    "{name} {v}: expected seconds between {min} and 86400"
                ));
            }
        }
        if !(self.keepalive == 0.0
            || (self.keepalive.is_finite() && (1.0..=3600.0).contains(&self.keepalive)))
        {
            return Err(format!(
                "keepalive {}: expected 0 (off) or seconds between 1 and 3600",
                self.keepalive
            ));
        }
        if !(self.handshake_timeout.is_finite() && (0.1..=30.0).contains(&self.handshake_timeout)) {
            return Err(format!(
                "handshake_timeout {}: expected seconds between 0.1 and 30",
                self.handshake_timeout
            ));
        }
        if !(1..=100).contains(&self.max_pending_per_address) {
            return Err(format!(
                "max_pending_per_address {}: expected 1 to 100",
                self.max_pending_per_address
            ));
        }
        if !(1..=65_536).contains(&self.max_pending) {
            return Err(format!(
                "max_pending {}: expected 1 to 65536",
                self.max_pending
            ));
        }
        for (name, v, range) in [
            (
                "address_penalty_per_second",
                self.address_penalty_per_second,
                0.1..=1000.0,
            ),
            (
                "key_penalty_per_minute",
                self.key_penalty_per_minute,
                0.1..=600.0,
            ),
        ] {
            if !(v.is_finite() && range.contains(&v)) {
                return Err(format!(
                    "{name} {v}: expected {} to {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        for (name, v, range) in [
            (
                "address_penalty_burst",
                self.address_penalty_burst,
                1..=1000,
            ),
            ("key_penalty_burst", self.key_penalty_burst, 1..=1000),
            (
                "max_public_per_address",
                self.max_public_per_address,
                1..=100,
            ),
            (
                "max_public_per_device",
                self.max_public_per_device,
                1..=65_536,
            ),
        ] {
            if !range.contains(&v) {
                return Err(format!(
                    "{name} {v}: expected {} to {}",
                    range.start(),
                    range.end()
                ));
            }
        }
        if let Some((lo, hi)) = self.public_ports {
            if lo == 0 || lo > hi {
                return Err(format!(
                    "public_ports {lo}-{hi}: expected LOW-HIGH with 1 <= LOW <= HIGH"
                ));
            }
        }
        if self.listen.is_empty() && self.listen_tls.is_empty() {
            return Err("listen is empty: give at least one address for agents".into());
        }
        if !self.listen_tls.is_empty() && self.tls_cert.is_none() {
            return Err("listen_tls needs tls_cert and tls_key".into());
        }
        if let Some(m) = &self.metrics_listen {
            // Port 0 is any free port: never the same as another.
            if !m.ends_with(":0") && (self.listen.contains(m) || self.listen_tls.contains(m)) {
                return Err(format!(
                    "metrics_listen {m} is an agents' address: give the metrics an address of \
                     their own"
                ));
            }
        }
        if self.api_url.is_none() && self.api_ca_file.is_some() {
            return Err("api_ca_file is set but api_url is not".into());
        }
        Ok(())
    }
}

/// Seconds as given on the command line (`5`, `0.5`).
fn seconds(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .map_err(|_| format!("{flag} '{v}': expected a number of seconds, e.g. 5 or 0.5"))
}

/// A rate as given on the command line.
fn number(flag: &str, v: &str) -> Result<f64, String> {
    v.parse::<f64>()
        .map_err(|_| format!("{flag} '{v}': expected a number, e.g. 10 or 0.5"))
}

/// A count as given on the command line.
fn count(flag: &str, v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .map_err(|_| format!("{flag} '{v}': expected a whole number"))
}

fn parse_range(v: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--public-ports '{v}': expected LOW-HIGH, e.g. 9050-9130");
    let (lo, hi) = v.split_once('-').ok_or_else(bad)?;
    Ok((
        lo.trim().parse().map_err(|_| bad())?,
        hi.trim().parse().map_err(|_| bad())?,
    ))
}

/// Usage text.
pub const USAGE: &str = "\
Usage: meeting-proxy [OPTIONS]

Reference Meeting proxy: accepts tunnel-agent connections and maps public ports to them.

Options:
  --listen ADDR              where agents connect (default 127.0.0.1:9001; port 0 = any);
                             repeatable. With --tls-cert and no --listen-tls, these serve TLS
  --listen-tls ADDR          where agents connect over TLS (repeatable); --listen addresses
                             are then plain TCP: e.g. --listen 0.0.0.0:9001 for older agents
                             and --listen-tls 127.0.0.1:9443 behind an SNI router on 443
  --device KEY=TOKEN         accept this device (repeatable); KEY=TOKEN:unauthorized refuses
                             it as not authorized for tunnels
  --tunnel ADDR=KEY:PORT     public ADDR reaches PORT on device KEY (repeatable)
  --reply MODE               normal | none (no reply line, older proxies) |
                             silent-close (close after the handshake, the field bug)
  --tls-cert FILE, --tls-key FILE
                             serve TLS on the agent port (PEM certificate chain and key)
  --error-form FORM          status: {\"status\":\"error\",\"message\":..} (default)
                             error:  {\"error\":\"auth_failed\",\"reason\":..}

Meeting API (a drop-in for the production proxy):
  --api-url URL              decide each handshake with GET URL/devices/KEY (X-Token-Code)
                             and open the tunnels of GET URL/tunnels; --device entries are
                             decided locally first
  --api-ca-file FILE         PEM CA for the API's certificate (default: public roots)
  --api-timeout SECS         bound of one API request (default 3; agents wait 15 for a reply)
  --tunnels-interval SECS    how often the tunnel list is fetched (default 5)
  --public-bind ADDR         address the API's tunnels listen on (default 0.0.0.0)
  --public-ports LOW-HIGH    ports the API may open (default: any), e.g. 9050-9130
  --close-expired            cut open connections when their tunnel expires or is removed
                             (default: they go on until they end)
  --cache-accept SECS, --cache-refuse SECS
                             how long an API answer is reused (default 60 and 5)

Facing the internet:
  --handshake-timeout SECS   the whole handshake must arrive within SECS of the accept, or
                             the connection gets an error line and is closed (default 10,
                             at most 30)
  --max-pending-per-address N, --max-pending N
                             handshakes in progress from one address, and in all; a
                             connection over either gets a \"busy\" refusal at once, with no
                             thread started (default 32 and 1024)
  --send-timeout SECS        a device whose connection takes no data for SECS is dropped,
                             with its public connections (default 60); agents' connections
                             also get TCP keepalive and TCP_USER_TIMEOUT, as the agent's do
  --keepalive SECS           announced to agents in the acceptance: they ping when nothing
                             arrived for SECS, and a device that pings is dropped once
                             nothing came from it for 3 x SECS (default 25; 0: not announced,
                             devices stay until TCP gives up)
  --address-penalty-burst N, --address-penalty-per-second R
                             failed handshakes from one address pass N at once, then R a
                             second; more get \"too many failed handshakes\" with the time to
                             wait, before any thread (default 5 and 10)
  --key-penalty-burst N, --key-penalty-per-minute R
                             the same per device key, before the token is checked or the API
                             asked (default 3 and 3); while a key is slowed, the token
                             accepted for it within --remember-accepted SECS still gets in
                             (default 3600)
  --max-public-per-address N, --max-public-per-device N
                             public connections to one device from one address (at most
                             100), and in all; more are closed at once (default 16 and 256)

Operating it:
  --metrics-listen ADDR      serve Prometheus metrics (GET /metrics) and the devices online
                             (GET /devices, JSON) on ADDR, e.g. 127.0.0.1:9464 (default: off;
                             never an agents' address)

  --config FILE              the same settings as JSON: {\"listen\" (an address or a list),
                             \"listen_tls\": [..], \"devices\": [{\"key\",
                             \"token\", \"authorized\"}], \"tunnels\": [{\"listen\", \"device\",
                             \"port\"}], \"reply\", \"error_form\", \"tls_cert\", \"tls_key\",
                             \"api_url\", \"api_ca_file\", \"api_timeout\", \"tunnels_interval\",
                             \"public_bind\", \"public_ports\": [LOW, HIGH], \"close_expired\",
                             \"cache_accept\", \"cache_refuse\", \"handshake_timeout\",
                             \"max_pending_per_address\", \"max_pending\",
                             \"send_timeout\", \"keepalive\", \"address_penalty_burst\",
                             \"address_penalty_per_second\", \"key_penalty_burst\",
                             \"key_penalty_per_minute\", \"remember_accepted\",
                             \"max_public_per_address\", \"max_public_per_device\",
                             \"metrics_listen\"};
                             flags add to it
  -v, -q                     more / less logging
  -h, --help, -V, --version";

/// What the command line asks for.
pub enum Command {
    /// Serve with these settings and verbosity.
    Serve(Box<Settings>, i32),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// Parses the command line (after the program name).
pub fn parse(args: &[String]) -> Result<Command, String> {
    // A --config file is the base; flags add to it wherever they stand.
    let mut settings = match args.iter().position(|a| a == "--config") {
        Some(i) => {
            let path = args.get(i + 1).ok_or("--config needs a file")?;
            load_file(Path::new(path))?
        }
        None => Settings::default(),
    };
    let mut verbosity = 0;
    // The first --listen replaces the default (or the file's); the next ones add to it.
    let mut listen_given = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().cloned().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-v" => verbosity += 1,
            "-vv" => verbosity += 2,
            "-q" => verbosity -= 1,
            "--config" => {
                value("--config")?;
            }
            "--listen" => {
                if !std::mem::replace(&mut listen_given, true) {
                    settings.listen.clear();
                }
                settings.listen.push(value(arg)?)
            }
            "--listen-tls" => settings.listen_tls.push(value(arg)?),
            "--metrics-listen" => settings.metrics_listen = Some(value(arg)?),
            "--tls-cert" => settings.tls_cert = Some(value("--tls-cert")?.into()),
            "--tls-key" => settings.tls_key = Some(value("--tls-key")?.into()),
            "--device" => settings.devices.push(parse_device(&value("--device")?)?),
            "--tunnel" => settings.tunnels.push(parse_tunnel(&value("--tunnel")?)?),
            "--api-url" => settings.api_url = Some(value("--api-url")?),
            "--api-ca-file" => settings.api_ca_file = Some(value("--api-ca-file")?.into()),
            "--api-timeout" => settings.api_timeout = seconds(arg, &value(arg)?)?,
            "--tunnels-interval" => settings.tunnels_interval = seconds(arg, &value(arg)?)?,
            "--cache-accept" => settings.cache_accept = seconds(arg, &value(arg)?)?,
            "--cache-refuse" => settings.cache_refuse = seconds(arg, &value(arg)?)?,
            "--handshake-timeout" => settings.handshake_timeout = seconds(arg, &value(arg)?)?,
            "--max-pending-per-address" => {
                settings.max_pending_per_address = count(arg, &value(arg)?)?
            }
            "--max-pending" => settings.max_pending = count(arg, &value(arg)?)?,
            "--send-timeout" => settings.send_timeout = seconds(arg, &value(arg)?)?,
            "--keepalive" => settings.keepalive = seconds(arg, &value(arg)?)?,
            "--address-penalty-burst" => settings.address_penalty_burst = count(arg, &value(arg)?)?,
            "--address-penalty-per-second" => {
                settings.address_penalty_per_second = number(arg, &value(arg)?)?
            }
            "--key-penalty-burst" => settings.key_penalty_burst = count(arg, &value(arg)?)?,
            "--key-penalty-per-minute" => {
                settings.key_penalty_per_minute = number(arg, &value(arg)?)?
            }
            "--remember-accepted" => settings.remember_accepted = seconds(arg, &value(arg)?)?,
            "--max-public-per-address" => {
                settings.max_public_per_address = count(arg, &value(arg)?)?
            }
            "--max-public-per-device" => settings.max_public_per_device = count(arg, &value(arg)?)?,
            "--public-bind" => settings.public_bind = value("--public-bind")?,
            "--public-ports" => settings.public_ports = Some(parse_range(&value(arg)?)?),
            "--close-expired" => settings.close_expired = true,
            "--reply" => {
                settings.reply = match value("--reply")?.as_str() {
                    "normal" => ReplyMode::Normal,
                    "none" => ReplyMode::None,
                    "silent-close" => ReplyMode::SilentClose,
                    other => {
                        return Err(format!(
                            "--reply: unknown mode '{other}' (normal, none, silent-close)"
                        ))
                    }
                }
            }
            "--error-form" => {
                settings.error_form = match value("--error-form")?.as_str() {
                    "status" => ErrorForm::Status,
                    "error" => ErrorForm::Error,
                    other => {
                        return Err(format!(
                            "--error-form: unknown form '{other}' (status, error)"
                        ))
                    }
                }
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    settings.validate()?;
    Ok(Command::Serve(Box::new(settings), verbosity))
}

/// A JSON member that holds one string or a list of them.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn load_file(path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))
}

fn parse_device(s: &str) -> Result<Device, String> {
    let (key, rest) = s
        .split_once('=')
        .ok_or(format!("--device '{s}': expected KEY=TOKEN"))?;
    let (token, authorized) = match rest.strip_suffix(":unauthorized") {
        Some(t) => (t, false),
        None => (rest, true),
    };
    if key.is_empty() || token.is_empty() {
        return Err(format!("--device '{s}': expected KEY=TOKEN"));
    }
    Ok(Device {
        key: key.to_owned(),
        token: token.to_owned(),
        authorized,
    })
}

fn parse_tunnel(s: &str) -> Result<Tunnel, String> {
    let bad =
        || format!("--tunnel '{s}': expected ADDR=KEY:PORT, e.g. 127.0.0.1:9100=3316A52E...:22");
    let (listen, target) = s.split_once('=').ok_or_else(bad)?;
    let (device, port) = target.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok(Tunnel {
        listen: listen.to_owned(),
        device: device.to_owned(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    fn serve(a: &[&str]) -> Result<Settings, String> {
        match parse(&args(a))? {
            Command::Serve(s, _) => Ok(*s),
            _ => Err("not serve".into()),
        }
    }

    #[test]
    fn api_flags_and_their_json_twins() {
        let s = serve(&[
            "--api-url",
            "https://meeting.example/api",
            "--api-ca-file",
            "/etc/ca.pem",
            "--tunnels-interval",
            "0.5",
            "--public-bind",
            "127.0.0.1",
            "--public-ports",
            "9050-9130",
            "--close-expired",
            "--cache-accept",
            "30",
            "--cache-refuse",
            "2",
            "--api-timeout",
            "2",
        ])
        .unwrap();
        assert_eq!(s.api_url.as_deref(), Some("https://meeting.example/api"));
        assert_eq!(s.public_ports, Some((9050, 9130)));
        assert!(s.close_expired);
        assert_eq!(
            (s.tunnels_interval, s.cache_accept, s.cache_refuse),
            (0.5, 30.0, 2.0)
        );
        let dir = std::env::temp_dir().join(format!("mp-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.json");
        std::fs::write(
            &file,
            r#"{"api_url": "https://m/api", "api_ca_file": "/ca.pem", "tunnels_interval": 2,
                "public_bind": "::", "public_ports": [9050, 9130], "close_expired": true}"#,
        )
        .unwrap();
        let s = serve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(s.api_url.as_deref(), Some("https://m/api"));
        assert_eq!(
            (s.public_bind.as_str(), s.public_ports),
            ("::", Some((9050, 9130)))
        );
        assert_eq!((s.tunnels_interval, s.cache_accept), (2.0, 60.0));
        std::fs::write(
            &file,
            r#"{"api_url": "https://m/api", "tunnels_interval": -1}"#,
        )
        .unwrap();
        let e = serve(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("tunnels_interval -1"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn agents_listen_on_several_addresses_plain_and_tls() {
        assert_eq!(serve(&[]).unwrap().listen, ["127.0.0.1:9001"]);
        let s = serve(&[
            "--listen",
            "0.0.0.0:9001",
            "--listen",
            "[::]:9001",
            "--listen-tls",
            "127.0.0.1:9443",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ])
        .unwrap();
        assert_eq!(s.listen, ["0.0.0.0:9001", "[::]:9001"]);
        assert_eq!(s.listen_tls, ["127.0.0.1:9443"]);
        let e = serve(&["--listen-tls", "127.0.0.1:9443"]).unwrap_err();
        assert!(e.contains("listen_tls needs tls_cert"), "{e}");
        let dir = std::env::temp_dir().join(format!("mp-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.json");
        for (json, plain, tls) in [
            (r#"{"listen": "127.0.0.1:1"}"#, vec!["127.0.0.1:1"], vec![]),
            (
                r#"{"listen": ["127.0.0.1:1", "127.0.0.2:1"], "listen_tls": ["127.0.0.1:2"],
                    "tls_cert": "c", "tls_key": "k"}"#,
                vec!["127.0.0.1:1", "127.0.0.2:1"],
                vec!["127.0.0.1:2"],
            ),
            (
                r#"{"listen": [], "listen_tls": "127.0.0.1:2", "tls_cert": "c", "tls_key": "k"}"#,
                vec![],
                vec!["127.0.0.1:2"],
            ),
        ] {
            std::fs::write(&file, json).unwrap();
            let s = serve(&["--config", file.to_str().unwrap()]).unwrap();
            assert_eq!(s.listen, plain, "{json}");
            assert_eq!(s.listen_tls, tls, "{json}");
        }
        std::fs::write(&file, r#"{"listen": 9001}"#).unwrap();
        assert!(serve(&["--config", file.to_str().unwrap()]).is_err());
        std::fs::write(&file, r#"{"listen": []}"#).unwrap();
        let e = serve(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("listen is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keepalive_is_off_or_a_sane_interval() {
        assert_eq!(serve(&[]).unwrap().keepalive, 25.0);
        assert_eq!(serve(&["--keepalive", "0"]).unwrap().keepalive, 0.0);
        assert_eq!(serve(&["--keepalive", "2"]).unwrap().keepalive, 2.0);
        for bad in ["0.5", "7200", "-1", "NaN"] {
            let e = serve(&["--keepalive", bad]).unwrap_err();
            assert!(e.contains("keepalive"), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_api_flags_say_what_is_expected() {
        for (a, said) in [
            (&["--public-ports", "9130-9050"][..], "LOW <= HIGH"),
            (&["--public-ports", "9050"][..], "expected LOW-HIGH"),
            (&["--tunnels-interval", "soon"][..], "number of seconds"),
            (&["--cache-refuse", "NaN"][..], "cache_refuse NaN"),
            (&["--api-ca-file", "/ca.pem"][..], "api_url is not"),
        ] {
            let e = serve(a).unwrap_err();
            assert!(e.contains(said), "{a:?}: {e}");
        }
    }
}
