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
    #[serde(default = "yes")]
    pub authorized: bool,
}

fn yes() -> bool {
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

/// Everything the proxy runs with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where agents connect.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Accepted devices.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Public tunnels.
    #[serde(default)]
    pub tunnels: Vec<Tunnel>,
    /// Reply mode.
    #[serde(default = "normal")]
    pub reply: ReplyMode,
    /// Refusal form.
    #[serde(default = "status")]
    pub error_form: ErrorForm,
    /// PEM certificate chain: serve TLS on the agent port.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
}

fn default_listen() -> String {
    "127.0.0.1:9001".to_owned()
}
fn normal() -> ReplyMode {
    ReplyMode::Normal
}
fn status() -> ErrorForm {
    ErrorForm::Status
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: default_listen(),
            devices: Vec::new(),
            tunnels: Vec::new(),
            reply: ReplyMode::Normal,
            error_form: ErrorForm::Status,
            tls_cert: None,
            tls_key: None,
        }
    }
}

impl Settings {
    /// The device with this key (ASCII case ignored).
    pub fn device(&self, key: &str) -> Option<&Device> {
        self.devices
            .iter()
            .find(|d| d.key.eq_ignore_ascii_case(key))
    }
}

/// Usage text.
pub const USAGE: &str = "\
Usage: meeting-proxy [OPTIONS]

Reference Meeting proxy: accepts tunnel-agent connections and maps public ports to them.

Options:
  --listen ADDR              where agents connect (default 127.0.0.1:9001; port 0 = any)
  --device KEY=TOKEN         accept this device (repeatable); KEY=TOKEN:unauthorized refuses
                             it as not authorized for tunnels
  --tunnel ADDR=KEY:PORT     public ADDR reaches PORT on device KEY (repeatable)
  --reply MODE               normal | none (no reply line, older proxies) |
                             silent-close (close after the handshake, the field bug)
  --tls-cert FILE, --tls-key FILE
                             serve TLS on the agent port (PEM certificate chain and key)
  --error-form FORM          status: {\"status\":\"error\",\"message\":..} (default)
                             error:  {\"error\":\"auth_failed\",\"reason\":..}
  --config FILE              the same settings as JSON: {\"listen\", \"devices\": [{\"key\",
                             \"token\", \"authorized\"}], \"tunnels\": [{\"listen\", \"device\",
                             \"port\"}], \"reply\", \"error_form\"}; flags add to it
  -v, -q                     more / less logging
  -h, --help, -V, --version";

/// What the command line asks for.
pub enum Command {
    /// Serve with these settings and verbosity.
    Serve(Settings, i32),
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
            "--listen" => settings.listen = value("--listen")?,
            "--tls-cert" => settings.tls_cert = Some(value("--tls-cert")?.into()),
            "--tls-key" => settings.tls_key = Some(value("--tls-key")?.into()),
            "--device" => settings.devices.push(parse_device(&value("--device")?)?),
            "--tunnel" => settings.tunnels.push(parse_tunnel(&value("--tunnel")?)?),
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
    Ok(Command::Serve(settings, verbosity))
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
