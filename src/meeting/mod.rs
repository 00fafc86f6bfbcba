//! The Meeting REST API client (blocking, HTTPS): base URL normalisation, the device record in
//! every form Meeting sends it, and HTTPS with the same trust as the proxy connection (the
//! rustls configuration of `transport::tls`, put under ureq by `tls.rs`). Described in
//! `docs/protocol.md`, "Meeting REST API".
//!
//! Owns HTTP requests to Meeting and the parsing of their answers. Must not know the tunnel
//! (sockets to the proxy, frames) or the agent's loop; it never logs the token, which goes
//! only into the one header that needs it.

#[cfg(feature = "tls")]
mod tls;
#[cfg(feature = "tls")]
mod via;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::bytes::printable::printable;

/// Largest body taken from one answer: Meeting's records and keys are a few KiB.
const BODY_LIMIT: u64 = 256 * 1024;
/// Largest tunnel list taken (about 100 bytes per tunnel: tens of thousands of tunnels).
const LIST_LIMIT: u64 = 8 * 1024 * 1024;

/// The Meeting API's base, always ending in `/api`, whatever form `api_url` had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiUrl(String);

impl ApiUrl {
    /// `api_url` as found on devices, with or without the trailing `/api` (and slash).
    pub fn new(api_url: &str) -> ApiUrl {
        let base = api_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/api").unwrap_or(base);
        ApiUrl(format!("{base}/api"))
    }

    /// The URL of `path` below the base (`path` starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }

    /// `GET {api}/devices/{key}`.
    pub fn device(&self, device_key: &str) -> String {
        self.at(&format!("/devices/{device_key}"))
    }
}

impl fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How to reach the API: its URL, the CA to trust (the proxy's `ca_file` unless the API has
/// its own), and the bound of each request. The HTTP agent is built on first use and kept,
/// so the CA file is read once and connections are reused from one request to the next.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub struct Client {
    /// The base URL.
    pub url: ApiUrl,
    /// PEM CA bundle trusted instead of the public roots.
    pub ca_file: Option<PathBuf>,
    /// Bound of a whole request (connect, send, answer).
    pub timeout: Duration,
    /// The outbound proxy every request goes through (`None`: direct).
    pub outbound: Option<crate::transport::outbound::OutboundProxy>,
    #[cfg(feature = "tls")]
    agent: std::sync::OnceLock<ureq::Agent>,
}

/// Why the API could not answer the question.
#[derive(Debug)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub enum ApiError {
    /// This build has no HTTP client (it was built without TLS).
    #[cfg(not(feature = "tls"))]
    NoClient,
    /// `ca_file` could not be used.
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// No HTTP answer: DNS, TCP, TLS or a timeout.
    Unreachable {
        /// The URL asked.
        url: String,
        /// What failed on the way (never contains header values, so never the token).
        cause: Unreached,
    },
    /// An HTTP status this call does not expect, with the first bytes of the body.
    Status {
        /// The URL asked.
        url: String,
        /// The status code.
        code: u16,
        /// The body, printable and cut.
        body: String,
    },
    /// HTTP 200 but not the JSON expected.
    BadAnswer {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        why: String,
    },
}

/// What stopped a request before an HTTP answer came.
#[derive(Debug)]
pub enum Unreached {
    /// The TLS session failed.
    #[cfg(feature = "tls")]
    Tls(crate::transport::tls::TlsError),
    /// The host name does not resolve.
    Dns,
    /// Nothing listens at that address and port.
    Refused,
    /// No answer within the bound.
    Timeout(String),
    /// The TCP connection failed otherwise.
    Connect,
    /// An answer came but its body could not be read.
    Body {
        /// The HTTP status of the answer.
        status: u16,
        /// The most that is taken, KiB.
        limit_kib: u64,
        /// What failed while reading it.
        cause: Box<Unreached>,
    },
    /// The outbound proxy did not open the way.
    Outbound(crate::transport::outbound::OutboundError),
    /// Anything else the HTTP client said.
    Other(String),
}

impl fmt::Display for Unreached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(feature = "tls")]
            Unreached::Tls(e) => e.fmt(f),
            Unreached::Dns => f.write_str("the host name does not resolve"),
            Unreached::Refused => {
                f.write_str("connection refused: nothing listens at that address and port")
            }
            Unreached::Timeout(t) => write!(f, "no answer in time ({t})"),
            Unreached::Connect => f.write_str("the TCP connection failed"),
            Unreached::Body {
                status,
                limit_kib,
                cause,
            } => write!(
                f,
                "HTTP {status}, but its body could not be read (at most {limit_kib} KiB taken): \
                 {cause}"
            ),
            Unreached::Outbound(e) => e.fmt(f),
            Unreached::Other(e) => f.write_str(e),
        }
    }
}

/// What happened, without advice: `advice::api` says what to do.
impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            #[cfg(not(feature = "tls"))]
            ApiError::NoClient => f.write_str(
                "this binary was built without TLS, so it cannot ask the Meeting API (HTTPS)",
            ),
            ApiError::CaFile { path, why } => write!(
                f,
                "cannot use the CA file {} for the Meeting API: {why}",
                path.display()
            ),
            ApiError::Unreachable { url, cause } => {
                write!(f, "the Meeting API at {url} did not answer: {cause}")
            }
            ApiError::Status { url, code, body } => {
                write!(
                    f,
                    "the Meeting API answered HTTP {code} to {url}: \"{body}\""
                )
            }
            ApiError::BadAnswer { url, why } => write!(
                f,
                "the Meeting API's answer to {url} is not what Meeting sends: {why}"
            ),
        }
    }
}

impl std::error::Error for ApiError {}

/// The body of a heartbeat (`POST {api}/devices/{key}/online`): every member optional, never
/// `services` (the server owns them) and never the token (this call needs none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Beat {
    /// The device's IPv4 on the interface of the default route.
    pub ip_address: Option<String>,
    /// The same value (the server keeps both).
    pub ip_lan: Option<String>,
    /// The address the world sees, only when `public_ip_url` is configured.
    pub ip_public: Option<String>,
    /// That interface's MAC, `AA:BB:CC:DD:EE:FF`.
    pub mac: Option<String>,
    /// Short text shown in Meeting.
    pub note: Option<String>,
}

impl Beat {
    /// The JSON body: the members that are set, in this order. (Built by hand rather than by
    /// a serde derive: the armv7 binary is within a 1.5 MB budget.)
    pub fn to_json(&self) -> String {
        let members = [
            ("ip_address", &self.ip_address),
            ("ip_lan", &self.ip_lan),
            ("ip_public", &self.ip_public),
            ("mac", &self.mac),
            ("note", &self.note),
        ];
        let mut map = serde_json::Map::new();
        for (k, v) in members {
            if let Some(v) = v {
                map.insert(k.to_owned(), Value::from(v.as_str()));
            }
        }
        Value::Object(map).to_string()
    }
}

/// What the server answered to an accepted heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BeatAnswer {
    /// `ip_address` as the server recorded it.
    pub ip_address: Option<String>,
    /// `last_seen`, `YYYY-MM-DD HH:MM:SS` UTC.
    pub last_seen: Option<String>,
}

/// Meeting's SSH key as the API gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub struct MeetingKey {
    /// The key line.
    pub pubkey: String,
    /// The fingerprint the server states, if any.
    pub fingerprint: Option<String>,
}

/// What the API says of a device (`GET {api}/devices/{key}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRecord {
    /// HTTP 200 with a device record.
    Found {
        /// `authorized`.
        authorized: bool,
        /// `services`.
        services: Vec<String>,
        /// `token_code`, when the record carries a non-empty one: the token the device must
        /// present. Compare it in constant time; never log it.
        token_code: Option<String>,
    },
    /// HTTP 404: no such device.
    NotFound,
}

impl Client {
    /// A client for `url`, trusting `ca_file` (else the public roots).
    pub fn new(url: ApiUrl, ca_file: Option<PathBuf>, timeout: Duration) -> Client {
        Client {
            url,
            ca_file,
            timeout,
            outbound: None,
            #[cfg(feature = "tls")]
            agent: std::sync::OnceLock::new(),
        }
    }

    /// The same client, its requests going through `outbound` when given.
    pub fn through(
        mut self,
        outbound: Option<crate::transport::outbound::OutboundProxy>,
    ) -> Client {
        self.outbound = outbound;
        #[cfg(feature = "tls")]
        {
            self.agent = std::sync::OnceLock::new();
        }
        self
    }

    /// Builds the HTTP client now (reading `ca_file`), so that a bad CA file is said at start
    /// rather than at the first request.
    pub fn prepare(&self) -> Result<(), ApiError> {
        #[cfg(feature = "tls")]
        return self.agent().map(drop);
        #[cfg(not(feature = "tls"))]
        Err(ApiError::NoClient)
    }

    /// The same client with another bound for each request.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub fn with_timeout(self, timeout: Duration) -> Client {
        Client::new(self.url, self.ca_file, timeout).through(self.outbound)
    }

    /// Fetches the device record, sending the token in `X-Token-Code` (its only use here).
    pub fn device_record(&self, device_key: &str, token: &str) -> Result<DeviceRecord, ApiError> {
        let url = self.url.device(device_key);
        let (status, body) = self.get(&url, &[("X-Token-Code", token)])?;
        match status {
            200 => parse_record(&body).map_err(|why| ApiError::BadAnswer { url, why }),
            404 => Ok(DeviceRecord::NotFound),
            code => Err(ApiError::Status {
                url,
                code,
                body: printable(body.as_bytes(), 120),
            }),
        }
    }

    /// The tunnels Meeting has granted (`GET {api}/tunnels`): what the proxy listens on.
    pub fn tunnels(&self) -> Result<TunnelList, ApiError> {
        let url = self.url.at("/tunnels");
        let body = self.ok_body("GET", &url, None, LIST_LIMIT)?;
        parse_tunnels(&body).ok_or_else(|| ApiError::BadAnswer {
            url,
            why: format!(
                "HTTP 200 but not {{\"tunnels\": [...]}}: \"{}\"",
                printable(body.as_bytes(), 80)
            ),
        })
    }

    /// Sends a heartbeat: `Ok` with the server's answer on 200; `ApiError::Status` for any
    /// other status (404: the key is not registered).
    pub fn beat(&self, device_key: &str, beat: &Beat) -> Result<BeatAnswer, ApiError> {
        let url = self.url.at(&format!("/devices/{device_key}/online"));
        let body = beat.to_json();
        let v = json_object(&url, &self.ok_body("POST", &url, Some(&body), BODY_LIMIT)?)?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(BeatAnswer {
            ip_address: field("ip_address"),
            last_seen: field("last_seen"),
        })
    }

    /// The device's availability as Meeting sees it (`GET {api}/devices/{key}/availability`):
    /// the JSON object as sent.
    pub fn availability(&self, device_key: &str) -> Result<Value, ApiError> {
        let url = self.url.at(&format!("/devices/{device_key}/availability"));
        json_object(&url, &self.text(&url)?).map(Value::Object)
    }

    /// The body of `url` (any URL, e.g. `public_ip_url`) as text, on HTTP 200.
    pub fn text(&self, url: &str) -> Result<String, ApiError> {
        self.ok_body("GET", url, None, BODY_LIMIT)
    }

    /// The body of a request answered HTTP 200; any other status is `ApiError::Status` with
    /// the server's words.
    fn ok_body(
        &self,
        method: &str,
        url: &str,
        json: Option<&str>,
        limit: u64,
    ) -> Result<String, ApiError> {
        match self.request(method, url, &[], json, limit)? {
            (200, body) => Ok(body),
            (code, body) => Err(ApiError::Status {
                url: url.to_owned(),
                code,
                body: server_text(&body),
            }),
        }
    }

    /// Meeting's own SSH public key (`GET {api}/ssh/pubkey`): the key line and the fingerprint
    /// the server gives for it, as sent (validated by the caller).
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub fn meeting_key(&self) -> Result<MeetingKey, ApiError> {
        let url = self.url.at("/ssh/pubkey");
        let v = json_object(&url, &self.text(&url)?)?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(MeetingKey {
            pubkey: field("pubkey").ok_or_else(|| ApiError::BadAnswer {
                url,
                why: "no \"pubkey\" text member in the answer".into(),
            })?,
            fingerprint: field("fingerprint"),
        })
    }

    /// The Meeting SSH server's host keys (`GET {api}/ssh-hostkey`), `ssh-keyscan` text as sent.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub fn host_keys(&self) -> Result<String, ApiError> {
        self.text(&self.url.at("/ssh-hostkey"))
    }

    /// Publishes the device's public key (`PUT {api}/devices/{key}/ssh-key`); 400 (invalid
    /// key) and 404 (unknown device) come back as `ApiError::Status`.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub fn publish_key(&self, device_key: &str, line: &str) -> Result<(), ApiError> {
        let url = self.url.at(&format!("/devices/{device_key}/ssh-key"));
        let body = Value::Object(
            [("pubkey".to_owned(), Value::from(line))]
                .into_iter()
                .collect(),
        )
        .to_string();
        match self.request("PUT", &url, &[], Some(&body), BODY_LIMIT)? {
            (200..=204, _) => Ok(()),
            (code, text) => Err(ApiError::Status {
                url,
                code,
                body: server_text(&text),
            }),
        }
    }

    fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), ApiError> {
        self.request("GET", url, headers, None, BODY_LIMIT)
    }

    /// One request (`GET`, or `POST`/`PUT` of `json`); the status and the body (at most
    /// `limit` bytes), whatever the status.
    #[cfg(feature = "tls")]
    fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        json: Option<&str>,
        limit: u64,
    ) -> Result<(u16, String), ApiError> {
        let agent = self.agent()?;
        let unreachable = |e: ureq::Error| ApiError::Unreachable {
            url: url.to_owned(),
            cause: describe(e, self.ca_file.as_deref()),
        };
        fn with<B>(
            mut req: ureq::RequestBuilder<B>,
            headers: &[(&str, &str)],
        ) -> ureq::RequestBuilder<B> {
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req
        }
        let result = match (method, json) {
            ("PUT", Some(body)) => with(agent.put(url), headers)
                .header("Content-Type", "application/json")
                .send(body),
            (_, Some(body)) => with(agent.post(url), headers)
                .header("Content-Type", "application/json")
                .send(body),
            (_, None) => with(agent.get(url), headers).call(),
        };
        let mut resp = result.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(limit)
            .read_to_string()
            .map_err(|e| ApiError::Unreachable {
                url: url.to_owned(),
                cause: Unreached::Body {
                    status,
                    limit_kib: limit / 1024,
                    cause: Box::new(describe(e, self.ca_file.as_deref())),
                },
            })?;
        Ok((status, body))
    }

    #[cfg(not(feature = "tls"))]
    fn request(
        &self,
        _method: &str,
        _url: &str,
        _headers: &[(&str, &str)],
        _json: Option<&str>,
        _limit: u64,
    ) -> Result<(u16, String), ApiError> {
        Err(ApiError::NoClient)
    }

    #[cfg(feature = "tls")]
    fn agent(&self) -> Result<ureq::Agent, ApiError> {
        if let Some(a) = self.agent.get() {
            return Ok(a.clone());
        }
        let a = self.build_agent()?;
        Ok(self.agent.get_or_init(|| a).clone())
    }

    #[cfg(feature = "tls")]
    fn build_agent(&self) -> Result<ureq::Agent, ApiError> {
        use crate::transport::tls::{client_config, TlsError};
        use ureq::unversioned::resolver::DefaultResolver;
        use ureq::unversioned::transport::{Connector, TcpConnector};
        let tls = tls::Tls {
            config: client_config(self.ca_file.as_deref()).map_err(|e| match e {
                TlsError::CaFile { path, why } => ApiError::CaFile { path, why },
                // Not reached: rustls builds a client with its default versions.
                other => ApiError::CaFile {
                    path: self.ca_file.clone().unwrap_or_default(),
                    why: other.to_string(),
                },
            })?,
        };
        let config = ureq::Agent::config_builder()
            // Meeting's answers are small: 16 KiB buffers instead of ureq's 128 KiB each way
            // keep a burst of requests (a proxy deciding a fleet's handshakes) from leaving
            // megabytes behind in the allocator.
            .input_buffer_size(16 * 1024)
            .output_buffer_size(16 * 1024)
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            // Never HTTPS_PROXY/ALL_PROXY (ureq's default): `outbound` alone says the way, the
            // same for the API as for the tunnel.
            .proxy(None)
            .user_agent(concat!("tunnel-agent/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(match &self.outbound {
            None => ureq::Agent::with_parts(
                config,
                TcpConnector::default().chain(tls),
                DefaultResolver::default(),
            ),
            Some(proxy) => {
                let via = via::Via {
                    proxy: proxy.clone(),
                    timeout: self.timeout,
                };
                ureq::Agent::with_parts(config, via.chain(tls), via::NoLookup)
            }
        })
    }
}

/// What went wrong on the way to the API, as precisely as the proxy connection says it: TLS
/// failures go through the same diagnosis. ureq's errors never contain header values.
#[cfg(feature = "tls")]
fn describe(e: ureq::Error, ca_file: Option<&std::path::Path>) -> Unreached {
    match e {
        ureq::Error::Rustls(e) => {
            let trusted = crate::transport::TlsTarget {
                server_name: "",
                ca_file,
            }
            .trusted();
            Unreached::Tls(crate::transport::tls::diagnose(e, &trusted))
        }
        ureq::Error::Io(e) => match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(tls) => describe(ureq::Error::Rustls(tls.clone()), ca_file),
            None if e
                .get_ref()
                .is_some_and(|i| i.is::<crate::transport::outbound::OutboundError>()) =>
            {
                match e.into_inner().and_then(|i| {
                    i.downcast::<crate::transport::outbound::OutboundError>()
                        .ok()
                }) {
                    Some(o) => Unreached::Outbound(*o),
                    None => Unreached::Other("the outbound proxy failed".to_owned()),
                }
            }
            None if e.kind() == std::io::ErrorKind::ConnectionRefused => Unreached::Refused,
            None => Unreached::Other(e.to_string()),
        },
        ureq::Error::Timeout(t) => Unreached::Timeout(t.to_string()),
        ureq::Error::HostNotFound => Unreached::Dns,
        ureq::Error::ConnectionFailed => Unreached::Connect,
        other => Unreached::Other(other.to_string()),
    }
}

/// An HTTP 200 body that must be a JSON object, or `BadAnswer` quoting its first bytes.
fn json_object(url: &str, text: &str) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ApiError::BadAnswer {
            url: url.to_owned(),
            why: format!(
                "HTTP 200 but the body is not a JSON object: \"{}\"",
                printable(text.as_bytes(), 80)
            ),
        }),
    }
}

/// The server's own words from an error body: its `error` member when JSON, else the text.
fn server_text(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        v.get("error")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    printable(from_json.as_deref().unwrap_or(body).as_bytes(), 120)
}

/// Reads a device record in every form Meeting's answers take; `Err` says which member has a
/// form that cannot be read, and what it was.
fn parse_record(body: &str) -> Result<DeviceRecord, String> {
    let quoted = || format!("\"{}\"", printable(body.as_bytes(), 80));
    let v = serde_json::from_str::<Value>(body)
        .map_err(|_| format!("HTTP 200 but the body is not JSON: {}", quoted()))?;
    let v = v
        .as_object()
        .ok_or_else(|| format!("HTTP 200 but the body is not a JSON object: {}", quoted()))?;
    let authorized = match v.get("authorized") {
        None => false,
        Some(a) => flag(a).ok_or_else(|| unreadable("authorized", a))?,
    };
    Ok(DeviceRecord::Found {
        authorized,
        services: services(v.get("services"))?,
        token_code: v
            .get("token_code")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
    })
}

/// A yes or no as Meeting's records carry it: `true`, `1`, `"1"`, `"true"` and `false`, `0`,
/// `"0"`, `"false"`, `null`; `None` for anything else.
fn flag(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Null => Some(false),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(t) => match t.trim().to_ascii_lowercase().as_str() {
            "1" | "true" => Some(true),
            "0" | "false" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn unreadable(member: &str, v: &Value) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    format!(
        "`{member}` is {kind} this agent cannot read: {}",
        printable(v.to_string().as_bytes(), 120)
    )
}

/// The granted services in each form Meeting (and the web manager) use: a list of names, a
/// list of `{"name": …, "enabled": …}` (no `enabled`: granted), or a map of name to yes or no.
fn services(v: Option<&Value>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let bad = || unreadable(&format!("services[{i}]"), item);
                match item {
                    Value::String(name) => out.push(name.clone()),
                    Value::Object(o) => {
                        let name = o.get("name").and_then(Value::as_str).ok_or_else(bad)?;
                        let on = match o.get("enabled") {
                            None => true,
                            Some(e) => flag(e).ok_or_else(bad)?,
                        };
                        if on {
                            out.push(name.to_owned());
                        }
                    }
                    _ => return Err(bad()),
                }
            }
        }
        Some(Value::Object(map)) => {
            for (name, on) in map {
                if flag(on).ok_or_else(|| unreadable(&format!("services.{name}"), on))? {
                    out.push(name.clone());
                }
            }
        }
        Some(other) => return Err(unreadable("services", other)),
    }
    Ok(out)
}

/// One entry of `GET {api}/tunnels`: a public port the proxy listens on for a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTunnel {
    /// `device_key`.
    pub device_key: String,
    /// `service` (`ssh`, `http`, ...), for the log.
    pub service: String,
    /// `port`: the public port.
    pub port: u16,
    /// `local_port`: the port on the device.
    pub local_port: u16,
    /// `expires_at` in seconds since the epoch (UTC); `None`: no expiry.
    pub expires_at: Option<u64>,
}

/// The answer of `GET {api}/tunnels`: the entries that could be read, and why the others
/// could not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunnelList {
    /// Usable entries.
    pub tunnels: Vec<ApiTunnel>,
    /// One sentence per entry left out (index and what is wrong with it).
    pub skipped: Vec<String>,
}

/// Reads the body of `GET {api}/tunnels`; `None` when it is not `{"tunnels": [...]}`.
pub fn parse_tunnels(body: &str) -> Option<TunnelList> {
    let v: Value = serde_json::from_str(body).ok()?;
    let entries = v.get("tunnels")?.as_array()?;
    let mut list = TunnelList::default();
    for (i, e) in entries.iter().enumerate() {
        match parse_tunnel(e) {
            Ok(t) => list.tunnels.push(t),
            Err(why) => list.skipped.push(format!(
                "entry {i} ({}): {why}",
                printable(e.to_string().as_bytes(), 120)
            )),
        }
    }
    Some(list)
}

fn parse_tunnel(e: &Value) -> Result<ApiTunnel, String> {
    let text = |k: &str| -> Result<String, String> {
        e.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or(format!("no \"{k}\" text"))
    };
    let port = |k: &str| -> Result<u16, String> {
        e.get(k)
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .ok_or(format!("\"{k}\" is not a port number (1-65535)"))
    };
    let expires_at = match e.get("expires_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(crate::clock::parse_utc(s).ok_or(format!(
            "\"expires_at\" \"{}\" is not YYYY-MM-DD HH:MM:SS (UTC)",
            printable(s.as_bytes(), 40)
        ))?),
        Some(_) => return Err("\"expires_at\" is neither text nor null".into()),
    };
    Ok(ApiTunnel {
        device_key: text("device_key")?,
        service: text("service").unwrap_or_else(|_| "?".into()),
        port: port("port")?,
        local_port: port("local_port")?,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_with_or_without_api_suffix() {
        for u in [
            "https://meeting.ygsoft.fr/api",
            "https://meeting.ygsoft.fr/api/",
            "https://meeting.ygsoft.fr",
            "https://meeting.ygsoft.fr/",
            " https://meeting.ygsoft.fr/api ",
        ] {
            let api = ApiUrl::new(u);
            assert_eq!(
                api.device("K"),
                "https://meeting.ygsoft.fr/api/devices/K",
                "{u}"
            );
            assert_eq!(api.to_string(), "https://meeting.ygsoft.fr/api");
        }
    }

    #[test]
    fn tunnel_list_keeps_good_entries_and_says_why_others_are_left_out() {
        let body = r#"{"tunnels":[
            {"device_key":"K1","service":"ssh","port":9055,"local_port":22,"expires_at":null},
            {"device_key":"K2","service":"http","port":9056,"local_port":80,"expires_at":"2026-02-02 01:57:00"},
            {"device_key":"K3","port":9057,"local_port":5900},
            {"device_key":"K4","service":"ssh","port":70000,"local_port":22},
            {"service":"ssh","port":9058,"local_port":22},
            {"device_key":"K5","service":"ssh","port":9059,"local_port":22,"expires_at":"tomorrow"},
            "junk"
        ]}"#;
        let list = parse_tunnels(body).unwrap();
        let t = |k: &str, s: &str, port, local_port, expires_at| ApiTunnel {
            device_key: k.into(),
            service: s.into(),
            port,
            local_port,
            expires_at,
        };
        assert_eq!(
            list.tunnels,
            vec![
                t("K1", "ssh", 9055, 22, None),
                t("K2", "http", 9056, 80, Some(1_769_997_420)),
                t("K3", "?", 9057, 5900, None),
            ]
        );
        assert_eq!(list.skipped.len(), 4, "{:?}", list.skipped);
        assert!(list.skipped[0].starts_with("entry 3 ") && list.skipped[0].contains("\"port\""));
        assert!(list.skipped[1].contains("device_key"));
        assert!(list.skipped[2].contains("tomorrow"));
        assert_eq!(
            parse_tunnels(r#"{"tunnels":[]}"#),
            Some(TunnelList::default())
        );
        for bad in ["", "[]", r#"{"tunnels":{}}"#, r#"{"error":"x"}"#, "<html>"] {
            assert_eq!(parse_tunnels(bad), None, "{bad}");
        }
    }

    #[test]
    fn record_fields() {
        assert_eq!(
            parse_record(
                r#"{"device_key":"K","authorized":true,"services":["ssh","scp","debug"]}"#
            ),
            Ok(DeviceRecord::Found {
                authorized: true,
                services: vec!["ssh".into(), "scp".into(), "debug".into()],
                token_code: None,
            })
        );
        for (member, expected) in [
            (r#""token_code":"41e291""#, Some("41e291")),
            (r#""token_code":"""#, None),
            (r#""token_code":null"#, None),
        ] {
            let body = format!(r#"{{"device_key":"K","authorized":false,{member}}}"#);
            assert_eq!(
                parse_record(&body),
                Ok(DeviceRecord::Found {
                    authorized: false,
                    services: vec![],
                    token_code: expected.map(str::to_owned),
                }),
                "{body}"
            );
        }
        assert!(parse_record("<html>").unwrap_err().contains("not JSON"));
        assert!(parse_record("[1]")
            .unwrap_err()
            .contains("not a JSON object"));
    }

    /// Every form of `authorized` and `services` seen from Meeting and the web manager.
    #[test]
    fn record_forms() {
        let read = |authorized: &str, services: &str| match parse_record(&format!(
            r#"{{"device_key":"K","authorized":{authorized},"services":{services}}}"#
        )) {
            Ok(DeviceRecord::Found {
                authorized,
                services,
                ..
            }) => {
                let mut services = services;
                services.sort();
                Ok((authorized, services.join(",")))
            }
            Ok(other) => panic!("{other:?}"),
            Err(why) => Err(why),
        };
        for yes in ["true", "1", "1.0", r#""1""#, r#""true""#, r#""True""#] {
            assert_eq!(read(yes, "[]"), Ok((true, String::new())), "{yes}");
        }
        for no in ["false", "0", r#""0""#, r#""false""#, "null"] {
            assert_eq!(read(no, "[]"), Ok((false, String::new())), "{no}");
        }
        for services in [
            r#"["ssh","http"]"#,
            r#"[{"name":"ssh","enabled":true},{"name":"vnc","enabled":false},{"name":"http"}]"#,
            r#"[{"name":"ssh","enabled":1},{"name":"http","enabled":"true"}]"#,
            r#"{"ssh":true,"vnc":false,"http":1}"#,
        ] {
            assert_eq!(
                read("1", services),
                Ok((true, "http,ssh".into())),
                "{services}"
            );
        }
        assert_eq!(read("true", "null"), Ok((true, String::new())));
        for (authorized, services, why) in [
            (
                "\"yes\"",
                "[]",
                "`authorized` is a string this agent cannot read: \"yes\"",
            ),
            (
                "2",
                "[]",
                "`authorized` is a number this agent cannot read: 2",
            ),
            (
                "true",
                "\"ssh,http\"",
                "`services` is a string this agent cannot read",
            ),
            (
                "true",
                "[7]",
                "`services[0]` is a number this agent cannot read: 7",
            ),
            (
                "true",
                r#"[{"enabled":true}]"#,
                "`services[0]` is an object",
            ),
            ("true", r#"{"ssh":"maybe"}"#, "`services.ssh` is a string"),
        ] {
            let got = read(authorized, services).unwrap_err();
            assert!(got.starts_with(why), "{got}");
        }
    }

    #[test]
    fn a_beat_has_only_the_members_that_are_set() {
        let b = Beat {
            ip_address: Some("192.0.2.1".into()),
            note: Some("n \"q\"".into()),
            ..Beat::default()
        };
        assert_eq!(
            b.to_json(),
            r#"{"ip_address":"192.0.2.1","note":"n \"q\""}"#
        );
        assert_eq!(Beat::default().to_json(), "{}");
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = ApiError::Status {
            url: "https://x/api/devices/K".into(),
            code: 500,
            body: "oops".into(),
        };
        assert_eq!(
            e.to_string(),
            "the Meeting API answered HTTP 500 to https://x/api/devices/K: \"oops\""
        );
    }
}
