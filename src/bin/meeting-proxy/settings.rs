//! `meeting-proxy` settings: repeatable flags, or the same from a JSON file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

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

/// One setting, as the usage, the JSON file's reader and the README's table know it.
#[derive(Debug)]
pub struct Row {
    /// The key in the JSON file.
    pub key: &'static str,
    /// The flag.
    pub flag: &'static str,
    /// What the flag's value is called (`""`: a switch).
    pub arg: &'static str,
    /// The default, as shown.
    pub default: &'static str,
    /// What it does.
    pub help: &'static str,
    /// The part of the usage it is in.
    pub group: &'static str,
}

/// A value for a setting: a flag's (`None` for a switch; `first`: the first time the flag is
/// given) or the JSON file's.
#[derive(Clone, Copy)]
enum Input<'a> {
    Flag(Option<&'a str>, bool),
    Json(&'a Value),
}

/// Declares every setting once: its field and type, JSON key, flag, default (the value and
/// how it is shown), how it is read, and its help. The struct, its `Default`, the flags, the
/// JSON file's reader, the usage and the README's table all come from these rows.
macro_rules! settings {
    ($(
        $(#[$doc:meta])*
        $group:literal $field:ident: $ty:ty = $key:literal, $flag:literal, $arg:literal,
            default $default:expr, $shown:literal, read $read:expr, $help:literal;
    )*) => {
        /// Everything the proxy runs with (see [`ROWS`]).
        #[derive(Debug, Clone)]
        pub struct Settings {
            $( $(#[$doc])* pub $field: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $field: $default, )* }
            }
        }

        /// Every setting, in the usage's order.
        pub static ROWS: &[Row] = &[$(
            Row { key: $key, flag: $flag, arg: $arg, default: $shown, help: $help, group: $group },
        )*];

        impl Settings {
            /// Sets the setting whose JSON key is `key` from `input`.
            fn set(&mut self, key: &str, input: Input<'_>) -> Result<(), String> {
                match key {
                    $( $key => {
                        let read: fn(&mut $ty, Input<'_>) -> Result<(), String> = $read;
                        read(&mut self.$field, input)
                    } )*
                    other => Err(format!("unknown setting \"{other}\"")),
                }
            }
        }
    };
}

settings! {
    /// Where agents connect.
    "Agents" listen: Vec<String> = "listen", "--listen", "ADDR",
        default vec!["127.0.0.1:9001".to_owned()], "127.0.0.1:9001", read |v, i| addresses(v, i, true),
        "where agents connect (port 0: any free one); repeatable; with --tls-cert and no --listen-tls these serve TLS";
    /// Where agents connect over TLS, beside `listen` (which is then plain TCP).
    "Agents" listen_tls: Vec<String> = "listen_tls", "--listen-tls", "ADDR",
        default Vec::new(), "none", read |v, i| addresses(v, i, false),
        "where agents connect over TLS (repeatable); the --listen addresses are then plain TCP";
    /// PEM certificate chain: serve TLS.
    "Agents" tls_cert: Option<PathBuf> = "tls_cert", "--tls-cert", "FILE",
        default None, "none", read path, "PEM certificate chain for the TLS listeners";
    /// PEM private key for `tls_cert`.
    "Agents" tls_key: Option<PathBuf> = "tls_key", "--tls-key", "FILE",
        default None, "none", read path, "its PEM private key";
    /// Accepted devices.
    "Agents" devices: Vec<Device> = "devices", "--device", "KEY=TOKEN",
        default Vec::new(), "none", read devices,
        "accept this device (repeatable); KEY=TOKEN:unauthorized refuses it as not authorized; JSON: [{\"key\", \"token\", \"authorized\"}]";
    /// Public tunnels.
    "Agents" tunnels: Vec<Tunnel> = "tunnels", "--tunnel", "ADDR=KEY:PORT",
        default Vec::new(), "none", read tunnels,
        "public ADDR reaches PORT on device KEY (repeatable); JSON: [{\"listen\", \"device\", \"port\"}]";
    /// Reply mode.
    "Agents" reply: ReplyMode = "reply", "--reply", "MODE",
        default ReplyMode::Normal, "normal", read reply,
        "normal | none (no reply line, older proxies) | silent-close (close after the handshake, the field bug)";
    /// Refusal form.
    "Agents" error_form: ErrorForm = "error_form", "--error-form", "FORM",
        default ErrorForm::Status, "status", read error_form,
        "status: {\"status\":\"error\",\"message\":..}; error: {\"error\":\"auth_failed\",\"reason\":..}";
    /// Keepalive interval announced to agents (`None`: not announced).
    "Agents" keepalive: Option<Duration> = "keepalive", "--keepalive", "SECS",
        default Some(Duration::from_secs(25)), "25", read keepalive,
        "announced in the acceptance: agents ping when nothing arrived for SECS, and a device that pings is dropped after 3 x SECS of silence (0: not announced)";
    /// Per-stream window announced to agents (0: not announced).
    "Agents" window: u32 = "window", "--window", "BYTES",
        default 262_144, "262144", read window,
        "announced in the acceptance: each way, a stream has at most BYTES on their way before its reader takes them, so one slow reader slows only its stream (0: not announced; else 16384 to 16777216)";
    /// The Meeting API that decides handshakes and lists tunnels.
    "Meeting API (a drop-in for the production proxy)" api_url: Option<String> = "api_url", "--api-url", "URL",
        default None, "none", read text,
        "decide each handshake with GET URL/devices/KEY (X-Token-Code) and open the tunnels of GET URL/tunnels; --device entries are decided first";
    /// PEM CA bundle for the API's certificate.
    "Meeting API (a drop-in for the production proxy)" api_ca_file: Option<PathBuf> = "api_ca_file", "--api-ca-file", "FILE",
        default None, "public roots", read path, "PEM CA for the API's certificate";
    /// Bound of one API request.
    "Meeting API (a drop-in for the production proxy)" api_timeout: Duration = "api_timeout", "--api-timeout", "SECS",
        default Duration::from_secs(3), "3", read |v, i| seconds(v, i, 0.1, 86_400.0),
        "bound of one API request (agents wait 15 for a reply)";
    /// Time between two `GET {api}/tunnels`.
    "Meeting API (a drop-in for the production proxy)" tunnels_interval: Duration = "tunnels_interval", "--tunnels-interval", "SECS",
        default Duration::from_secs(5), "5", read |v, i| seconds(v, i, 0.1, 86_400.0),
        "how often the tunnel list is fetched";
    /// Address the API's tunnels listen on.
    "Meeting API (a drop-in for the production proxy)" public_bind: String = "public_bind", "--public-bind", "ADDR",
        default "0.0.0.0".to_owned(), "0.0.0.0", read string, "address the API's tunnels listen on";
    /// Public ports the API may open.
    "Meeting API (a drop-in for the production proxy)" public_ports: Option<(u16, u16)> = "public_ports", "--public-ports", "LOW-HIGH",
        default None, "any", read port_range, "ports the API may open, e.g. 9050-9130; JSON: [LOW, HIGH]";
    /// Cut the open connections of a tunnel when it expires or is removed.
    "Meeting API (a drop-in for the production proxy)" close_expired: bool = "close_expired", "--close-expired", "",
        default false, "false", read switch,
        "cut open connections when their tunnel expires or is removed (else they go on until they end)";
    /// How long an accepted handshake's answer is reused.
    "Meeting API (a drop-in for the production proxy)" cache_accept: Duration = "cache_accept", "--cache-accept", "SECS",
        default Duration::from_secs(60), "60", read |v, i| seconds(v, i, 0.0, 86_400.0),
        "how long an API answer accepting a device is reused";
    /// How long a refusal's answer is reused.
    "Meeting API (a drop-in for the production proxy)" cache_refuse: Duration = "cache_refuse", "--cache-refuse", "SECS",
        default Duration::from_secs(5), "5", read |v, i| seconds(v, i, 0.0, 86_400.0),
        "how long an API answer refusing a device is reused";
    /// The whole handshake must arrive within this of the accept.
    "Facing the internet" handshake_timeout: Duration = "handshake_timeout", "--handshake-timeout", "SECS",
        default Duration::from_secs(10), "10", read |v, i| seconds(v, i, 0.1, 30.0),
        "the whole handshake, TLS included, must arrive within SECS of the accept, or it gets an error line and a close (at most 30)";
    /// Handshakes in progress from one address.
    "Facing the internet" max_pending_per_address: usize = "max_pending_per_address", "--max-pending-per-address", "N",
        default 32, "32", read |v, i| count(v, i, 1, 100),
        "handshakes in progress from one address; more get \"busy\" at once, with no thread (at most 100)";
    /// Handshakes in progress in all.
    "Facing the internet" max_pending: usize = "max_pending", "--max-pending", "N",
        default 1024, "1024", read |v, i| count(v, i, 1, 65_536),
        "handshakes in progress in all; more get \"busy\" at once";
    /// A device (or a public client) that takes nothing this long is dropped.
    "Facing the internet" send_timeout: Duration = "send_timeout", "--send-timeout", "SECS",
        default Duration::from_secs(60), "60", read |v, i| seconds(v, i, 0.1, 86_400.0),
        "a device whose connection takes no data for SECS is dropped with its public connections; a public client likewise";
    /// Failed handshakes from one address before it is slowed.
    "Facing the internet" address_penalty_burst: usize = "address_penalty_burst", "--address-penalty-burst", "N",
        default 5, "5", read |v, i| count(v, i, 1, 1000),
        "failed handshakes from one address that pass at once";
    /// Handshakes a second a slowed address may try.
    "Facing the internet" address_penalty_per_second: f64 = "address_penalty_per_second", "--address-penalty-per-second", "R",
        default 10.0, "10", read |v, i| number(v, i, 0.1, 1000.0),
        "then this many a second; more get \"too many failed handshakes\" with the time to wait";
    /// Failed handshakes for one key before it is slowed.
    "Facing the internet" key_penalty_burst: usize = "key_penalty_burst", "--key-penalty-burst", "N",
        default 3, "3", read |v, i| count(v, i, 1, 1000),
        "failed handshakes for one device key, from any address, that pass at once";
    /// Handshakes a minute a slowed key may have judged.
    "Facing the internet" key_penalty_per_minute: f64 = "key_penalty_per_minute", "--key-penalty-per-minute", "R",
        default 3.0, "3", read |v, i| number(v, i, 0.1, 600.0),
        "then this many a minute, before the token is compared or the API asked";
    /// How long a device's accepted token still lets it in while its key is slowed.
    "Facing the internet" remember_accepted: Duration = "remember_accepted", "--remember-accepted", "SECS",
        default Duration::from_secs(3600), "3600", read |v, i| seconds(v, i, 0.0, 86_400.0),
        "while a key is slowed, the token accepted for it within SECS still gets in";
    /// Public connections from one address to one device.
    "Facing the internet" max_public_per_address: usize = "max_public_per_address", "--max-public-per-address", "N",
        default 16, "16", read |v, i| count(v, i, 1, 100),
        "public connections to one device from one address; more are closed at once (at most 100)";
    /// Public connections to one device in all.
    "Facing the internet" max_public_per_device: usize = "max_public_per_device", "--max-public-per-device", "N",
        default 256, "256", read |v, i| count(v, i, 1, 65_536),
        "public connections to one device in all";
    /// Where Prometheus metrics and `GET /devices` are served.
    "Operating it" metrics_listen: Option<String> = "metrics_listen", "--metrics-listen", "ADDR",
        default None, "off", read text,
        "serve Prometheus metrics (GET /metrics) and the devices online (GET /devices) on ADDR, e.g. 127.0.0.1:9464; never an agents' address";
}

impl Settings {
    /// Checks what goes together.
    pub fn validate(&self) -> Result<(), String> {
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

/// What a setting's value should have been, for its error.
fn expected(input: Input<'_>, what: &str) -> String {
    match input {
        Input::Flag(Some(v), _) => format!("'{v}': expected {what}"),
        Input::Flag(None, _) => format!("expected {what}"),
        Input::Json(v) => format!("{v}: expected {what}"),
    }
}

/// A number from a flag's text or the file's JSON.
fn read_f64(input: Input<'_>) -> Option<f64> {
    match input {
        Input::Flag(Some(v), _) => v.trim().parse().ok(),
        Input::Json(v) => v.as_f64(),
        Input::Flag(None, _) => None,
    }
}

/// Seconds from `min` to `max`, fractions allowed.
fn seconds(v: &mut Duration, input: Input<'_>, min: f64, max: f64) -> Result<(), String> {
    match read_f64(input) {
        Some(s) if s.is_finite() && (min..=max).contains(&s) => {
            *v = Duration::from_secs_f64(s);
            Ok(())
        }
        _ => Err(expected(
            input,
            &format!("seconds between {min} and {max}, e.g. 5 or 0.5"),
        )),
    }
}

/// A number from `min` to `max`.
fn number(v: &mut f64, input: Input<'_>, min: f64, max: f64) -> Result<(), String> {
    match read_f64(input) {
        Some(x) if x.is_finite() && (min..=max).contains(&x) => {
            *v = x;
            Ok(())
        }
        _ => Err(expected(input, &format!("a number from {min} to {max}"))),
    }
}

/// A whole number from `min` to `max`.
fn count(v: &mut usize, input: Input<'_>, min: usize, max: usize) -> Result<(), String> {
    let n = match input {
        Input::Flag(Some(s), _) => s.trim().parse::<usize>().ok(),
        Input::Json(j) => j.as_u64().and_then(|n| usize::try_from(n).ok()),
        Input::Flag(None, _) => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => {
            *v = n;
            Ok(())
        }
        _ => Err(expected(
            input,
            &format!("a whole number from {min} to {max}"),
        )),
    }
}

/// The keepalive interval: 0 for none, else 1 to 3600 seconds.
fn keepalive(v: &mut Option<Duration>, input: Input<'_>) -> Result<(), String> {
    match read_f64(input) {
        Some(0.0) => {
            *v = None;
            Ok(())
        }
        Some(s) if s.is_finite() && (1.0..=3600.0).contains(&s) => {
            *v = Some(Duration::from_secs_f64(s));
            Ok(())
        }
        _ => Err(expected(input, "0 (off) or seconds between 1 and 3600")),
    }
}

/// The per-stream window: 0 for none, else 16 KiB to 16 MiB.
fn window(v: &mut u32, input: Input<'_>) -> Result<(), String> {
    let mut n = 0usize;
    count(&mut n, input, 0, 16 << 20)
        .ok()
        .filter(|()| n == 0 || n >= 16 << 10)
        .ok_or_else(|| expected(input, "0 (off) or bytes from 16384 to 16777216"))?;
    *v = n as u32;
    Ok(())
}

/// Text, given.
fn text(v: &mut Option<String>, input: Input<'_>) -> Result<(), String> {
    let mut s = String::new();
    string(&mut s, input)?;
    *v = Some(s);
    Ok(())
}

/// Text.
fn string(v: &mut String, input: Input<'_>) -> Result<(), String> {
    match input {
        Input::Flag(Some(s), _) => *v = s.to_owned(),
        Input::Json(Value::String(s)) => *v = s.clone(),
        _ => return Err(expected(input, "text")),
    }
    Ok(())
}

/// A path.
fn path(v: &mut Option<PathBuf>, input: Input<'_>) -> Result<(), String> {
    let mut s = String::new();
    string(&mut s, input).map_err(|_| expected(input, "a file's path"))?;
    *v = Some(PathBuf::from(s));
    Ok(())
}

/// A switch: given, or true/false in the file.
fn switch(v: &mut bool, input: Input<'_>) -> Result<(), String> {
    match input {
        Input::Flag(None, _) => *v = true,
        Input::Json(Value::Bool(b)) => *v = *b,
        _ => return Err(expected(input, "true or false")),
    }
    Ok(())
}

/// Addresses: a flag adds one (the first flag of a `replacing` list clears what the default
/// or the file gave); the file gives one or a list.
fn addresses(v: &mut Vec<String>, input: Input<'_>, replacing: bool) -> Result<(), String> {
    match input {
        Input::Flag(Some(a), first) => {
            if replacing && first {
                v.clear();
            }
            v.push(a.to_owned());
        }
        Input::Json(Value::String(a)) => *v = vec![a.clone()],
        Input::Json(Value::Array(list)) if list.iter().all(Value::is_string) => {
            *v = list
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
        }
        _ => return Err(expected(input, "an address or a list of them")),
    }
    Ok(())
}

/// Devices: a flag adds `KEY=TOKEN`; the file lists objects.
fn devices(v: &mut Vec<Device>, input: Input<'_>) -> Result<(), String> {
    match input {
        Input::Flag(Some(s), _) => v.push(parse_device(s)?),
        Input::Json(j) => {
            *v = serde_json::from_value(j.clone())
                .map_err(|e| expected(input, &format!("[{{\"key\", \"token\"}}] ({e})")))?
        }
        Input::Flag(None, _) => return Err(expected(input, "KEY=TOKEN")),
    }
    Ok(())
}

/// Tunnels: a flag adds `ADDR=KEY:PORT`; the file lists objects.
fn tunnels(v: &mut Vec<Tunnel>, input: Input<'_>) -> Result<(), String> {
    match input {
        Input::Flag(Some(s), _) => v.push(parse_tunnel(s)?),
        Input::Json(j) => {
            *v = serde_json::from_value(j.clone()).map_err(|e| {
                expected(
                    input,
                    &format!("[{{\"listen\", \"device\", \"port\"}}] ({e})"),
                )
            })?
        }
        Input::Flag(None, _) => return Err(expected(input, "ADDR=KEY:PORT")),
    }
    Ok(())
}

fn word<'a>(input: Input<'a>) -> Option<&'a str> {
    match input {
        Input::Flag(Some(s), _) => Some(s),
        Input::Json(Value::String(s)) => Some(s),
        _ => None,
    }
}

fn reply(v: &mut ReplyMode, input: Input<'_>) -> Result<(), String> {
    *v = match word(input) {
        Some("normal") => ReplyMode::Normal,
        Some("none") => ReplyMode::None,
        Some("silent-close") => ReplyMode::SilentClose,
        _ => return Err(expected(input, "normal, none or silent-close")),
    };
    Ok(())
}

fn error_form(v: &mut ErrorForm, input: Input<'_>) -> Result<(), String> {
    *v = match word(input) {
        Some("status") => ErrorForm::Status,
        Some("error") => ErrorForm::Error,
        _ => return Err(expected(input, "status or error")),
    };
    Ok(())
}

/// `LOW-HIGH` from a flag, `[LOW, HIGH]` from the file, with 1 <= LOW <= HIGH.
fn port_range(v: &mut Option<(u16, u16)>, input: Input<'_>) -> Result<(), String> {
    let pair = match input {
        Input::Flag(Some(s), _) => s
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse().ok()?, b.trim().parse().ok()?))),
        Input::Json(Value::Array(a)) if a.len() == 2 => a[0]
            .as_u64()
            .zip(a[1].as_u64())
            .and_then(|(lo, hi)| Some((u16::try_from(lo).ok()?, u16::try_from(hi).ok()?))),
        _ => None,
    };
    match pair {
        Some((lo, hi)) if lo >= 1 && lo <= hi => {
            *v = Some((lo, hi));
            Ok(())
        }
        _ => Err(expected(
            input,
            "LOW-HIGH with 1 <= LOW <= HIGH, e.g. 9050-9130 (JSON: [9050, 9130])",
        )),
    }
}

/// The usage text, from [`ROWS`].
pub fn usage() -> String {
    let mut out = String::from(
        "Usage: meeting-proxy [OPTIONS]\n\nReference Meeting proxy: accepts tunnel-agent \
         connections and maps public ports to them.\n",
    );
    let mut group = "";
    for row in ROWS {
        if row.group != group {
            group = row.group;
            out.push_str(&format!("\n{group}:\n"));
        }
        let left = if row.arg.is_empty() {
            row.flag.to_owned()
        } else {
            format!("{} {}", row.flag, row.arg)
        };
        let help = format!(
            "{} (default {}; JSON \"{}\")",
            row.help, row.default, row.key
        );
        out.push_str(&format!("  {left:<27}"));
        let mut col = 29;
        if left.len() > 25 {
            out.push_str("\n                             ");
        }
        for (i, w) in help.split(' ').enumerate() {
            if i > 0 && col + 1 + w.len() > 95 {
                out.push_str("\n                             ");
                col = 29;
            } else if i > 0 {
                out.push(' ');
                col += 1;
            }
            out.push_str(w);
            col += w.len();
        }
        out.push('\n');
    }
    out.push_str(
        "\n  --config FILE              the same settings as JSON, by their keys; flags add to it\n  \
         -v, -q                     more / less logging\n  -h, --help, -V, --version",
    );
    out
}

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
    let mut seen: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-v" => verbosity += 1,
            "-vv" => verbosity += 2,
            "-q" => verbosity -= 1,
            "--config" => {
                it.next();
            }
            flag => {
                let row = ROWS
                    .iter()
                    .find(|r| r.flag == flag)
                    .ok_or_else(|| format!("unknown argument '{flag}'"))?;
                let value = if row.arg.is_empty() {
                    None
                } else {
                    Some(it.next().ok_or(format!("{flag} needs a value"))?.as_str())
                };
                let first = !seen.contains(&row.flag);
                seen.push(row.flag);
                settings
                    .set(row.key, Input::Flag(value, first))
                    .map_err(|e| format!("{flag} {e}"))?;
            }
        }
    }
    settings.validate()?;
    Ok(Command::Serve(Box::new(settings), verbosity))
}

fn load_file(path: &Path) -> Result<Settings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}:{}:{}: {e}", path.display(), e.line(), e.column()))?;
    let Value::Object(map) = value else {
        return Err(format!("{}: expected a JSON object", path.display()));
    };
    let mut settings = Settings::default();
    for (key, v) in &map {
        settings
            .set(key, Input::Json(v))
            .map_err(|e| format!("{}: {key} {e}", path.display()))?;
    }
    Ok(settings)
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
            (
                Duration::from_millis(500),
                Duration::from_secs(30),
                Duration::from_secs(2)
            )
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
        assert_eq!(
            (s.tunnels_interval, s.cache_accept),
            (Duration::from_secs(2), Duration::from_secs(60))
        );
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
    fn window_is_off_or_a_sane_size() {
        assert_eq!(serve(&[]).unwrap().window, 262_144);
        assert_eq!(serve(&["--window", "0"]).unwrap().window, 0);
        assert_eq!(serve(&["--window", "16384"]).unwrap().window, 16_384);
        for bad in ["1", "16383", "16777217", "-1", "x", "1e9"] {
            let e = serve(&["--window", bad]).unwrap_err();
            assert!(e.contains("window") && e.contains("16384"), "{bad}: {e}");
        }
    }

    #[test]
    fn keepalive_is_off_or_a_sane_interval() {
        let secs = |n| Some(Duration::from_secs(n));
        assert_eq!(serve(&[]).unwrap().keepalive, secs(25));
        assert_eq!(serve(&["--keepalive", "0"]).unwrap().keepalive, None);
        assert_eq!(serve(&["--keepalive", "2"]).unwrap().keepalive, secs(2));
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
            (
                &["--tunnels-interval", "soon"][..],
                "--tunnels-interval 'soon': expected seconds between 0.1 and 86400",
            ),
            (
                &["--cache-refuse", "NaN"][..],
                "--cache-refuse 'NaN': expected seconds",
            ),
            (
                &["--max-pending", "0"][..],
                "expected a whole number from 1 to 65536",
            ),
            (
                &["--reply", "loud"][..],
                "expected normal, none or silent-close",
            ),
            (
                &["--close-expired", "--nope"][..],
                "unknown argument '--nope'",
            ),
            (&["--api-ca-file", "/ca.pem"][..], "api_url is not"),
        ] {
            let e = serve(a).unwrap_err();
            assert!(e.contains(said), "{a:?}: {e}");
        }
    }

    #[test]
    fn the_file_names_the_setting_that_is_wrong_and_knows_no_other() {
        let dir = std::env::temp_dir().join(format!("mp-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("proxy.json");
        for (json, said) in [
            (
                r#"{"send_timeout": "soon"}"#,
                "send_timeout \"soon\": expected seconds",
            ),
            (
                r#"{"max_pending": -1}"#,
                "max_pending -1: expected a whole number",
            ),
            (r#"{"sendtimeout": 5}"#, "unknown setting \"sendtimeout\""),
            (r#"{"devices": [{"key": "K"}]}"#, "devices"),
            (r#"[]"#, "expected a JSON object"),
        ] {
            std::fs::write(&file, json).unwrap();
            let e = serve(&["--config", file.to_str().unwrap()]).unwrap_err();
            assert!(e.contains(said), "{json}: {e}");
        }
        std::fs::write(
            &file,
            r#"{"keepalive": 0, "close_expired": true, "send_timeout": 2.5}"#,
        )
        .unwrap();
        let s = serve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(
            (s.keepalive, s.close_expired, s.send_timeout),
            (None, true, Duration::from_millis(2500))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every row's default is read by its own reader, and its flag is unique.
    #[test]
    fn each_default_shown_is_the_default_read() {
        let d = Settings::default();
        assert_eq!(d.keepalive, Some(Duration::from_secs(25)));
        for row in ROWS {
            assert_eq!(
                ROWS.iter()
                    .filter(|r| r.flag == row.flag || r.key == row.key)
                    .count(),
                1,
                "{}",
                row.key
            );
            // Numbers shown as defaults read back as the default itself.
            if row.default.parse::<f64>().is_ok() {
                let mut s = Settings::default();
                s.set(row.key, Input::Flag(Some(row.default), true))
                    .unwrap();
                assert_eq!(format!("{s:?}"), format!("{d:?}"), "{}", row.key);
            }
        }
    }

    /// The README's table of meeting-proxy's settings is these rows: flag, key, default.
    #[test]
    fn the_readme_table_matches_the_declarations() {
        let readme = include_str!("../../../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| meeting-proxy flag |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        assert_eq!(table.len(), ROWS.len(), "{table:#?}");
        for (line, row) in table.iter().zip(ROWS) {
            let flag = if row.arg.is_empty() {
                format!("`{}`", row.flag)
            } else {
                format!("`{} {}`", row.flag, row.arg)
            };
            let want = format!("| {flag} | `{}` | {} |", row.key, row.default);
            assert!(
                line.starts_with(&want),
                "README: {line}\nwanted: {want} ..."
            );
        }
    }
}
