//! `tunnel-agent check`: diagnose the device end to end, step by step, and conclude.
//!
//! Uses the agent's own configuration loading, the transport's dialing, the protocol's
//! handshake and reply classification, and the Meeting API client. Owns the steps, the
//! verdict and how they are shown; must not change anything on the device.

pub mod host;
mod login;
pub mod render;
pub mod verdict;

use std::io::{self, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::advice::{self, Peer};
use crate::agent::status::Snapshot;
use crate::bytes::printable::printable;
use crate::bytes::recorded::Recorded;
use crate::config::{self, Config, Flags, SearchPaths};
use crate::meeting::{self, DeviceRecord};
use crate::protocol::handshake::{
    handshake_line, read_reply, PingOffer, Reply, ReplyError, WindowOffer,
};
use crate::transport::tcp::{connect_any, resolve};
use crate::transport::{self, Control, TransportError};
use verdict::{Api, Findings, Handshake, Login, Presence, Reach, Verdict};

/// Outcome of one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but something deserves attention.
    Warn,
    /// Broken.
    Fail,
    /// Not run (not configured, or an earlier step failed).
    Skipped,
}

impl Status {
    /// `pass`, `warn`, `fail` or `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skipped => "skipped",
        }
    }
}

/// One step of the check.
#[derive(Debug, Clone)]
pub struct Step {
    /// Stable name: `config`, `dns`, `tcp`, `tls`, `handshake`, `api`, `local:PORT`.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// One line of what was seen.
    pub detail: String,
    /// What to do, on anything but pass.
    pub hint: Option<String>,
    /// Time taken, milliseconds.
    pub ms: u64,
}

/// Facts gathered on the way, for the Markdown bug report.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Device key, when configured.
    pub device_key: Option<String>,
    /// Token, masked.
    pub token_masked: Option<String>,
    /// `host:port` of the proxy.
    pub proxy: Option<String>,
    /// TLS configured.
    pub tls: bool,
    /// The handshake line as sent, token masked.
    pub handshake_sent: Option<String>,
    /// The reply's first bytes, printable.
    pub reply_raw: Option<String>,
    /// How long the proxy took to reply (or to time out).
    pub reply_ms: Option<u64>,
    /// The reason the proxy gave for refusing the device, when it gave one.
    pub refusal: Option<String>,
}

/// The whole result.
#[derive(Debug, Clone)]
pub struct Report {
    /// The verdict.
    pub verdict: Verdict,
    /// One sentence a non-developer can act on.
    pub summary: String,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Facts for the bug report.
    pub facts: Facts,
}

/// Options of `check`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Bound for each network wait (TCP connect, handshake reply, API request).
    pub timeout: Duration,
    /// Send a handshake even when an agent for this device is connected (`--handshake`): the
    /// proxy then drops that agent's connection and its tunnels until it reconnects.
    pub handshake: bool,
}

fn step(name: &str, status: Status, detail: String, hint: Option<String>, since: Instant) -> Step {
    Step {
        name: name.to_owned(),
        status,
        detail,
        hint,
        ms: since.elapsed().as_millis() as u64,
    }
}

/// Every step's name, in the order they run (`local` stands for each `local:PORT`).
const ORDER: [&str; 9] = [
    "config",
    "dns",
    "tcp",
    "tls",
    "handshake",
    "api",
    "presence",
    "local",
    "ssh-login",
];

/// Step `name` failed and the steps after it, up to and including `through`, cannot run: the
/// failure, then each of those skipped with `why`.
fn fail_and_skip(steps: &mut Vec<Step>, failed: Step, through: &str, why: &str) {
    let after = ORDER
        .iter()
        .position(|n| *n == failed.name)
        .map_or(0, |i| i + 1);
    let last = ORDER
        .iter()
        .position(|n| *n == through)
        .unwrap_or(ORDER.len() - 1);
    steps.push(failed);
    for name in ORDER.iter().take(last + 1).skip(after) {
        steps.push(skipped(name, why));
    }
}

fn skipped(name: &str, why: &str) -> Step {
    Step {
        name: name.to_owned(),
        status: Status::Skipped,
        detail: why.to_owned(),
        hint: None,
        ms: 0,
    }
}

/// Runs every step and concludes.
pub fn run(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<String>,
    paths: &SearchPaths,
    opts: &Options,
) -> Report {
    let mut steps = Vec::new();
    let mut facts = Facts::default();
    let t = Instant::now();
    let cfg = match config::load(flags, env, paths) {
        Ok(c) => c,
        Err(error) => {
            let e = advice::config(&error);
            // What was there, so the operator sees what was fine next to what is missing.
            let found = config::found(flags, env, paths).unwrap_or_default();
            let given = |s: &config::Spec| found.iter().find(|f| f.key == s.key);
            let value = |s: &config::Spec| {
                given(s).map_or(s.default_text().to_owned(), |f| f.value.clone())
            };
            facts.device_key = given(&config::DEVICE_KEY.spec).map(|f| f.value.clone());
            facts.token_masked = given(&config::TOKEN_CODE.spec).map(|f| f.value.clone());
            facts.proxy = Some(format!(
                "{}:{}",
                value(&config::TUNNEL_HOST.spec),
                value(&config::TUNNEL_PORT.spec)
            ));
            let shown = if found.is_empty() {
                "nothing was found in any of those places".to_owned()
            } else {
                found
                    .iter()
                    .map(|f| format!("{} {} ({})", f.key, f.value, f.source))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let failed = step(
                "config",
                Status::Fail,
                format!("{e}\nFound: {shown}"),
                Some(advice::config_fix(&error)),
                t,
            );
            fail_and_skip(&mut steps, failed, "ssh-login", "no usable configuration");
            let reach = match advice::config_not_permitted(&error) {
                true => Reach::ConfigRootOnly(e),
                false => Reach::ConfigError(e),
            };
            let found = (Api::Unknown, Presence::Unknown, Login::Unknown);
            return conclude(steps, facts, &reach, found, &[], &[], "", "", opts);
        }
    };
    facts.device_key = Some(cfg.device_key.value.clone());
    facts.token_masked = Some(cfg.token.value.masked());
    facts.proxy = Some(cfg.proxy_addr());
    facts.tls = cfg.tls.value;
    steps.push(config_step(&cfg, t));
    if !cfg.enabled.value {
        // Switched off on purpose: nothing is contacted, and that is no failure.
        let why = format!(
            "Meeting is switched off on this device (enabled false, {})",
            cfg.enabled.source
        );
        for name in ORDER.iter().skip(1) {
            steps.push(skipped(name, &why));
        }
        let found = (Api::Unknown, Presence::Unknown, Login::Unknown);
        let (key, proxy) = (cfg.device_key.value.clone(), cfg.proxy_addr());
        return conclude(
            steps,
            facts,
            &Reach::Disabled(why),
            found,
            &[],
            &[],
            &key,
            &proxy,
            opts,
        );
    }

    let (reach, in_use) = reach_hosts(&cfg, opts, &mut steps, &mut facts);
    facts.proxy = Some(in_use.clone());
    let (api, granted) = api_step(&cfg, opts, &mut steps);
    let presence = presence_step(&cfg, opts, &mut steps);
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let host = host::detect(std::path::Path::new("/"));
    let ssh_port = cfg.ssh.ssh_port;
    for (port, _) in cfg.open_ports(granted.as_deref()) {
        let advice = host::start_advice(&host, port, ssh_port);
        let s = local_step(port, opts.timeout, &advice);
        if s.status == Status::Fail {
            down.push((port, advice));
        } else {
            up.push(port);
        }
        steps.push(s);
    }
    let (login_step, login) = login::login_step(&cfg, opts);
    steps.push(login_step);
    let key = cfg.device_key.value.clone();
    conclude(
        steps,
        facts,
        &reach,
        (api, presence, login),
        &up,
        &down,
        &key,
        &in_use,
        opts,
    )
}

/// The way to the proxy: with several `tunnel_hosts`, each in order until one answers the
/// handshake (the steps shown are that one's, after a `tunnel_hosts` step that names it, the
/// one the running agent uses, and what the others did); else the one proxy. Returns what the
/// proxy did and its `host:port`.
fn reach_hosts(
    cfg: &Config,
    opts: &Options,
    steps: &mut Vec<Step>,
    facts: &mut Facts,
) -> (Reach, String) {
    if cfg.hosts.len() < 2 {
        return (reach_proxy(cfg, opts, steps, facts), cfg.proxy_addr());
    }
    let t = Instant::now();
    let n = cfg.hosts.len();
    let agent_uses = cfg
        .status_file
        .as_deref()
        .and_then(|f| crate::agent::status::read(f).ok())
        .filter(|s| s.is_fresh())
        .map(|s| s.proxy);
    let mut failed = Vec::new();
    let mut first = None;
    for i in 0..n {
        let c = cfg.at(i);
        let mut tried = Vec::new();
        let mut tried_facts = facts.clone();
        let reach = reach_proxy(&c, opts, &mut tried, &mut tried_facts);
        let answered = matches!(reach, Reach::Replied(_));
        if answered {
            let mut detail = format!("{} ({} of {n})", c.proxy_addr(), i + 1);
            if !failed.is_empty() {
                detail.push_str(&format!("; before it: {}", failed.join("; ")));
            }
            if let Some(used) = &agent_uses {
                detail.push_str(&format!("; the running agent uses {used}"));
            }
            steps.push(step("tunnel_hosts", Status::Pass, detail, None, t));
            steps.extend(tried);
            *facts = tried_facts;
            return (reach, c.proxy_addr());
        }
        let why = tried
            .iter()
            .find(|s| s.status == Status::Fail)
            .map_or_else(|| "failed".to_owned(), |s| s.detail.clone());
        failed.push(format!("{}: {why}", c.proxy_addr()));
        if first.is_none() {
            first = Some((reach, tried, tried_facts, c.proxy_addr()));
        }
    }
    // None answered: the first one's steps, after the list of what each did.
    let (reach, tried, tried_facts, addr) = first.expect("at least two hosts were tried");
    steps.push(step(
        "tunnel_hosts",
        Status::Fail,
        format!("none of the {n} answered: {}", failed.join("; ")),
        None,
        t,
    ));
    steps.extend(tried);
    *facts = tried_facts;
    (reach, addr)
}

#[allow(clippy::too_many_arguments)]
fn conclude(
    steps: Vec<Step>,
    facts: Facts,
    reach: &Reach,
    (api, presence, login): (Api, Presence, Login),
    up: &[u16],
    down: &[(u16, String)],
    key: &str,
    proxy: &str,
    opts: &Options,
) -> Report {
    let (verdict, summary) = verdict::decide(&Findings {
        device_key: key.to_owned(),
        proxy: proxy.to_owned(),
        reach: reach.clone(),
        api,
        presence,
        login,
        local_down: down.iter().map(|(p, _)| *p).collect(),
        local_advice: down.iter().map(|(_, a)| a.clone()).collect(),
        local_up: up.to_vec(),
        reply_timeout_s: opts.timeout.as_secs_f64(),
    });
    Report {
        verdict,
        summary,
        steps,
        facts,
    }
}

fn config_step(cfg: &Config, t: Instant) -> Step {
    let mut warnings = Vec::new();
    if !cfg.device_key_well_formed() {
        warnings.push(format!(
            "device key is {} characters, 32 hexadecimal characters expected",
            cfg.device_key.value.chars().count()
        ));
    }
    let mut hint = None;
    if let Some((path, mode)) = cfg.token_file_exposure() {
        warnings.push(format!(
            "{} holds the token and is readable by group or others (mode {mode:03o})",
            path.display()
        ));
        hint = Some(format!("chmod 600 {}", path.display()));
    }
    let api = cfg
        .api
        .url
        .as_ref()
        .map(|u| format!("{} ({})", u.value, u.source))
        .unwrap_or_else(|| "not set".into());
    let detail = format!(
        "device key {} ({}); token {} ({}); proxy {} (host: {}, port: {}); TLS {} ({}); \
         api_url {api}; local ports: {}{}",
        cfg.device_key.value,
        cfg.device_key.source,
        cfg.token.value.masked(),
        cfg.token.source,
        cfg.proxy_addr(),
        cfg.host.source,
        cfg.port.source,
        if cfg.tls.value { "on" } else { "off" },
        cfg.tls.source,
        match &cfg.allowed_ports {
            Some(given) => format!("{:?} (allowed_ports, {})", given.value, given.source),
            None => "those of the services Meeting grants (api step)".to_owned(),
        },
        if warnings.is_empty() {
            String::new()
        } else {
            format!("; WARNING: {}", warnings.join("; "))
        }
    );
    let status = if warnings.is_empty() {
        Status::Pass
    } else {
        Status::Warn
    };
    if status == Status::Warn && hint.is_none() {
        hint = Some("check device_key against the Meeting record of this device".into());
    }
    step("config", status, detail, hint, t)
}

/// DNS, TCP, TLS and handshake: how far the connection to the proxy gets.
fn reach_proxy(cfg: &Config, opts: &Options, steps: &mut Vec<Step>, facts: &mut Facts) -> Reach {
    if let Some(o) = &cfg.outbound_proxy {
        return reach_through(cfg, &o.value, opts, steps, facts);
    }
    let t = Instant::now();
    let addrs = match resolve(&cfg.host.value, cfg.port.value) {
        Ok(a) => a,
        Err(e) => {
            let why = std::error::Error::source(&e).map_or_else(String::new, |s| s.to_string());
            let failed = step(
                "dns",
                Status::Fail,
                format!("{} does not resolve: {why}", cfg.host.value),
                Some(advice::dns(Peer::Proxy)),
                t,
            );
            fail_and_skip(
                steps,
                failed,
                "handshake",
                "the proxy name does not resolve",
            );
            return Reach::DnsFailed;
        }
    };
    let list: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    steps.push(step(
        "dns",
        Status::Pass,
        format!("{} resolves to {}", cfg.host.value, list.join(", ")),
        None,
        t,
    ));

    let t = Instant::now();
    let (sock, addr) = match connect_any(&cfg.proxy_addr(), &addrs, opts.timeout) {
        Ok(c) => c,
        Err(e) => {
            let transport::tcp::TcpError::Connect { addr, err: e, .. } = e else {
                unreachable!("connect_any fails only to connect")
            };
            let (reach, what, hint) = match e.kind() {
                io::ErrorKind::ConnectionRefused => (
                    Reach::ConnectRefused,
                    "refused",
                    advice::refused(Peer::Proxy),
                ),
                _ => (
                    Reach::ConnectTimeout,
                    "timed out or unreachable",
                    advice::no_answer(addr.port()),
                ),
            };
            let failed = step(
                "tcp",
                Status::Fail,
                format!("connect to {addr} {what}: {e}"),
                Some(hint),
                t,
            );
            fail_and_skip(steps, failed, "handshake", "no TCP connection");
            return reach;
        }
    };
    steps.push(step(
        "tcp",
        Status::Pass,
        format!("connected to {addr}"),
        None,
        t,
    ));
    over(cfg, opts, sock, addr, steps, facts)
}

/// The way to the proxy through the outbound proxy: its own step (which names what it did
/// when it refused), in place of the device's DNS lookup and TCP connection.
fn reach_through(
    cfg: &Config,
    outbound: &transport::outbound::OutboundProxy,
    opts: &Options,
    steps: &mut Vec<Step>,
    facts: &mut Facts,
) -> Reach {
    steps.push(skipped(
        "dns",
        &format!("{} is reached through the outbound proxy", cfg.host.value),
    ));
    let t = Instant::now();
    match outbound.connect(&cfg.host.value, cfg.port.value, opts.timeout, None) {
        Err(e) => {
            let advice = advice::outbound(Peer::Proxy, &e.cause);
            steps.push(step(
                OUTBOUND_STEP,
                Status::Fail,
                e.to_string(),
                Some(advice.clone()),
                t,
            ));
            for name in ["tcp", "tls", "handshake"] {
                steps.push(skipped(name, "no way through the outbound proxy"));
            }
            Reach::Outbound {
                what: e.to_string(),
                advice,
            }
        }
        Ok((sock, addr)) => {
            steps.push(step(
                OUTBOUND_STEP,
                Status::Pass,
                format!(
                    "{outbound} (at {addr}) opened the way to {}",
                    cfg.proxy_addr()
                ),
                None,
                t,
            ));
            steps.push(step(
                "tcp",
                Status::Pass,
                format!(
                    "connected to {} through the outbound proxy",
                    cfg.proxy_addr()
                ),
                None,
                t,
            ));
            over(cfg, opts, sock, addr, steps, facts)
        }
    }
}

/// The step that says what the outbound proxy did, when one is configured.
pub const OUTBOUND_STEP: &str = "outbound proxy";

/// TLS and the handshake over the TCP connection `sock` to the proxy (`addr`: where it went).
fn over(
    cfg: &Config,
    opts: &Options,
    sock: std::net::TcpStream,
    addr: SocketAddr,
    steps: &mut Vec<Step>,
    facts: &mut Facts,
) -> Reach {
    let t = Instant::now();
    let control = match transport::secure(sock, cfg.tls_target(), opts.timeout) {
        Ok(c) => c,
        Err(e) => {
            let (reach, detail) = tls_failure(e);
            let failed = step(
                "tls",
                Status::Fail,
                detail,
                Some("see the verdict below".into()),
                t,
            );
            fail_and_skip(steps, failed, "handshake", "no TLS session");
            return reach;
        }
    };
    match &control.tls {
        Some(i) => steps.push(step(
            "tls",
            Status::Pass,
            format!(
                "{}, {}; certificate \"{}\" issued by \"{}\", valid until {} (trusting {})",
                i.version,
                i.cipher,
                i.subject,
                i.issuer,
                i.not_after,
                cfg.tls_target().map(|t| t.trusted()).unwrap_or_default()
            ),
            None,
            t,
        )),
        None => steps.push(skipped("tls", "TLS off (tunnel_ssl false)")),
    }
    if let Some(step) = displaced_agent(cfg) {
        let logged = step.detail.clone();
        steps.push(step);
        return Reach::Replied(Handshake::AnotherAgent(logged));
    }
    let live = connected_agent(cfg);
    match live {
        Some(agent) if !opts.handshake => {
            // Closed without a handshake: the proxy keeps the running agent's connection.
            drop(control);
            steps.push(live_agent_step(cfg, &agent));
            Reach::Replied(Handshake::Accepted)
        }
        _ => {
            let note = live.map(|a| {
                format!(
                    "forced with --handshake while tunnel-agent (pid {}) was connected for this \
                     device: the proxy drops its connection, which it remakes; ",
                    a.pid
                )
            });
            handshake_step(cfg, opts, control, addr, steps, facts, note)
        }
    }
}

/// The running agent for this device, when its status file is fresh (its process lives) and
/// it is connected: it holds the device's connection, which a second handshake would take.
fn connected_agent(cfg: &Config) -> Option<Snapshot> {
    let snap = crate::agent::status::read(cfg.status_file.as_deref()?).ok()?;
    let same_device = snap
        .device_key
        .as_deref()
        .is_none_or(|k| k.eq_ignore_ascii_case(&cfg.device_key.value));
    (snap.is_fresh() && same_device && snap.state == "connected").then_some(snap)
}

/// The handshake step when the running agent for this device (fresh status file) stopped
/// connecting because another agent keeps taking its connection: a handshake now would only
/// take it once more.
fn displaced_agent(cfg: &Config) -> Option<Step> {
    let snap = crate::agent::status::read(cfg.status_file.as_deref()?).ok()?;
    if !(snap.is_fresh() && snap.state == "displaced") {
        return None;
    }
    let logged = snap.last_error.map(|e| e.message).unwrap_or_default();
    Some(Step {
        name: "handshake".into(),
        status: Status::Fail,
        detail: logged,
        hint: Some(format!(
            "not sent: tunnel-agent (pid {}) waits before it connects again; a handshake now \
             would take the connection from the other agent once more",
            snap.pid
        )),
        ms: 0,
    })
}

/// The handshake step told from the running agent's status instead of a handshake.
fn live_agent_step(cfg: &Config, a: &Snapshot) -> Step {
    let up = crate::clock::now().saturating_sub(a.since);
    let last = a
        .last_error
        .as_ref()
        .map(|e| format!("; its last error before that: {}", e.message))
        .unwrap_or_default();
    Step {
        name: "handshake".into(),
        status: Status::Pass,
        detail: format!(
            "not sent: tunnel-agent {} (pid {}) is running for device {} and is connected to {} \
             since {} ({up} s), {} reconnects{last}. A second handshake would make the proxy \
             drop that connection and every tunnel through it",
            a.version, a.pid, cfg.device_key.value, a.proxy, a.since_utc, a.reconnects
        ),
        hint: Some(
            "check --handshake sends one anyway (the running agent's tunnels drop for a few \
             seconds)"
                .into(),
        ),
        ms: 0,
    }
}

/// What a failed [`transport::secure`] means for the verdict, and its one-line detail: what
/// happened, and what to do about it.
fn tls_failure(e: TransportError) -> (Reach, String) {
    let detail = advice::explained(&e, advice::transport(&e));
    let reach = match &e {
        #[cfg(feature = "tls")]
        TransportError::Tls(e) => {
            use crate::transport::tls::TlsError;
            match e {
                TlsError::CaFile { .. } | TlsError::BadServerName(_) => {
                    Reach::ConfigError(detail.clone())
                }
                e if e.is_mismatch() => Reach::TlsMismatch(detail.clone()),
                _ => Reach::TlsFailed(detail.clone()),
            }
        }
        TransportError::TlsUnavailable => Reach::ConfigError(detail.clone()),
        _ => Reach::TlsFailed(detail.clone()),
    };
    (reach, detail)
}

fn handshake_step(
    cfg: &Config,
    opts: &Options,
    control: Control,
    addr: SocketAddr,
    steps: &mut Vec<Step>,
    facts: &mut Facts,
    note: Option<String>,
) -> Reach {
    let key = &cfg.device_key.value;
    let shown = handshake_line(&cfg.token.value.masked(), key);
    let line = handshake_line(cfg.token.value.expose(), key);
    facts.handshake_sent = Some(printable(shown.as_bytes(), 200));
    let t = Instant::now();
    let sent = format!(
        "{}sent to {addr}: {} ({} bytes)",
        note.unwrap_or_default(),
        printable(shown.as_bytes(), 200),
        line.len()
    );
    let Control {
        reader,
        mut writer,
        sock,
        ..
    } = control;
    if let Err(e) = writer
        .write_all(line.as_bytes())
        .and_then(|()| writer.flush())
    {
        steps.push(step(
            "handshake",
            Status::Fail,
            format!("{sent}; sending failed: {e}"),
            Some("the proxy dropped the connection at once".into()),
            t,
        ));
        return Reach::Replied(Handshake::Silent);
    }
    let _ = sock.set_read_timeout(Some(opts.timeout));
    let mut reader = BufReader::new(Recorded::new(reader, 256));
    let reply = read_reply(&mut reader);
    // What else is already waiting (e.g. the rest of an HTTP answer) belongs in the quote too.
    let _ = sock.set_read_timeout(Some(Duration::from_millis(50)));
    let mut more = [0u8; 256];
    let _ = reader.read(&mut more);
    let ms = t.elapsed().as_millis() as u64;
    let raw = printable(reader.get_ref().seen(), 160);
    facts.reply_ms = Some(ms);
    facts.reply_raw = Some(raw.clone());
    let (status, what, hint, found) = match reply {
        Ok(Reply::Accepted { ping, window, .. }) => (
            Status::Pass,
            format!(
                "accepted{}{}",
                match ping {
                    PingOffer::Every(d) => format!(
                        "; the proxy answers keepalive pings (every {} s at most)",
                        d.as_secs_f64()
                    ),
                    PingOffer::Unreadable(raw) => {
                        format!("; keepalive announced in a form this agent cannot read: {raw}")
                    }
                    PingOffer::Absent => String::new(),
                },
                match window {
                    WindowOffer::Bytes(n) => format!("; per-stream windows of {} KiB", n / 1024),
                    WindowOffer::Unreadable(raw) => {
                        format!("; windows announced in a form this agent cannot read: {raw}")
                    }
                    WindowOffer::Absent => String::new(),
                }
            ),
            None,
            Handshake::Accepted,
        ),
        Ok(Reply::FramesStarted { .. }) => (
            Status::Pass,
            "no reply line; the proxy began with a frame (older proxy)".to_owned(),
            None,
            Handshake::Accepted,
        ),
        Ok(Reply::NoReply) => (
            Status::Warn,
            format!(
                "no reply within {:.0} s and the connection stays open (older proxy that never answers?)",
                opts.timeout.as_secs_f64()
            ),
            Some("nothing to fix if tunnels work; the agent handles such proxies".into()),
            Handshake::NoReply,
        ),
        Err(e) => {
            let found = match &e {
                ReplyError::Refused { reason, .. } => {
                    facts.refusal = Some(reason.clone());
                    Handshake::Refused(reason.clone())
                }
                ReplyError::ClosedWithoutReply => Handshake::Silent,
                ReplyError::TlsOnPlainAgent { .. } => Handshake::TlsOnPlain,
                _ => Handshake::NotMeeting(printable(reader.get_ref().seen(), 40)),
            };
            (Status::Fail, e.short(), None, found)
        }
    };
    let raw_part = if raw.is_empty() {
        "0 bytes received".to_owned()
    } else {
        format!("reply bytes \"{raw}\"")
    };
    let hint =
        hint.or_else(|| (status == Status::Fail).then(|| "see the verdict below".to_owned()));
    steps.push(step(
        "handshake",
        status,
        format!("{sent}; after {ms} ms: {what}; {raw_part}"),
        hint,
        t,
    ));
    Reach::Replied(found)
}

/// The API step: what Meeting says of the device, and the services it grants when it said
/// so over HTTPS (the agent reads them over verified HTTPS only).
fn api_step(cfg: &Config, opts: &Options, steps: &mut Vec<Step>) -> (Api, Option<Vec<String>>) {
    let Some(client) = cfg.api.client(opts.timeout) else {
        steps.push(skipped("api", "api_url not configured"));
        return (Api::Unknown, None);
    };
    let mut granted = None;
    let t = Instant::now();
    let key = &cfg.device_key.value;
    let full = client.url.device(key);
    let record = client.device_record(key, cfg.token.value.expose());
    let (status, detail, hint, api) = match record {
        Ok(DeviceRecord::Found {
            authorized,
            services,
            ..
        }) => {
            let ssh = services.iter().any(|s| s == "ssh");
            let https = client.url.to_string().starts_with("https://");
            let services: Vec<String> = services.iter().map(|s| s.to_ascii_lowercase()).collect();
            let ports = cfg.open_ports(https.then_some(services.as_slice()));
            let facts = format!(
                "GET {full}: HTTP 200, authorized: {authorized}, services: [{}]; local ports open \
                 to the tunnel: {}",
                services.join(", "),
                crate::agent::services_shown(&ports)
            );
            if https {
                granted = Some(services.clone());
            }
            match (authorized, ssh) {
                (false, _) => (
                    Status::Fail,
                    format!("{facts}: the device is not authorized for tunnels"),
                    Some(advice::not_authorized()),
                    Api::NotAuthorized,
                ),
                (true, false) => (
                    Status::Warn,
                    format!("{facts}: ssh is not among the device's services"),
                    Some("ask a Meeting administrator to add the ssh service to the device".into()),
                    Api::Authorized { ssh },
                ),
                (true, true) => (Status::Pass, facts, None, Api::Authorized { ssh }),
            }
        }
        Ok(DeviceRecord::NotFound) => (
            Status::Fail,
            format!("GET {full}: HTTP 404: the Meeting API does not know device {key}"),
            Some(advice::device_unknown()),
            Api::DeviceUnknown,
        ),
        Err(meeting::ApiError::Status { code, body, .. }) => (
            Status::Warn,
            format!("GET {full}: HTTP {code}: \"{body}\""),
            Some(advice::api_refused()),
            Api::Unknown,
        ),
        Err(e) => unanswered(format!("GET {full} failed: {e}"), &e, Api::Unknown),
    };
    steps.push(step("api", status, detail, hint, t));
    (api, granted)
}

/// A step whose Meeting API call got no answer it can use: a warning with `detail`, what to
/// do about `e`, and no finding (`unknown`).
fn unanswered<F>(
    detail: String,
    e: &meeting::ApiError,
    unknown: F,
) -> (Status, String, Option<String>, F) {
    (Status::Warn, detail, advice::api(e), unknown)
}

/// Meeting presence: what Meeting shows (`GET {api}/devices/{key}/availability`), and what the
/// running agent's status file says of its heartbeats.
fn presence_step(cfg: &Config, opts: &Options, steps: &mut Vec<Step>) -> Presence {
    let hb = &cfg.heartbeat;
    let Some(client) = cfg.api.client(opts.timeout) else {
        steps.push(skipped(
            "presence",
            "no Meeting API configured (api_url): presence not checked",
        ));
        return Presence::Unknown;
    };
    let t = Instant::now();
    let key = &cfg.device_key.value;
    let agent = running_agent(cfg);
    let ours = match (&hb.off, &agent) {
        (Some(why), _) => {
            format!("the heartbeat is off ({why}); set heartbeat to true and api_url")
        }
        (None, Some(p)) => match p.state.as_str() {
            "online" => format!(
                "the running agent's last heartbeat was accepted at {}",
                p.last_ok_utc.as_deref().unwrap_or("-")
            ),
            "starting" => "the running agent has not sent a heartbeat yet".to_owned(),
            _ => format!(
                "the running agent's heartbeats are {} ({} in a row): {}",
                p.state,
                p.failures,
                p.detail.as_deref().unwrap_or("-")
            ),
        },
        (None, None) => {
            "no running tunnel-agent was found (no fresh status file), so nothing sends \
             heartbeats: start the agent"
                .to_owned()
        }
    };
    let url = client.url.at(&format!("/devices/{key}/availability"));
    let (status, detail, hint, found) = match client.availability(key) {
        Ok(v) => {
            let shown = v.get("status").and_then(|s| s.as_str()).unwrap_or("-");
            let last = v
                .get("last_heartbeat")
                .and_then(|s| s.as_str())
                .unwrap_or("never");
            let facts = format!("GET {url}: status {shown}, last heartbeat {last}");
            if shown == "Available" {
                let who = match agent {
                    Some(_) => ours,
                    None => "no running tunnel-agent sends them here: another sender (such as \
                             the Python web manager) keeps the device online"
                        .to_owned(),
                };
                (
                    Status::Pass,
                    format!("{facts}; {who}"),
                    None,
                    Presence::Available,
                )
            } else {
                (
                    Status::Fail,
                    format!("{facts}; {ours}"),
                    Some(
                        "Meeting hands out tunnels only to an online device: see the verdict"
                            .into(),
                    ),
                    Presence::Disconnected(ours),
                )
            }
        }
        Err(e) => unanswered(format!("{e}; {ours}"), &e, Presence::Unknown),
    };
    steps.push(step("presence", status, detail, hint, t));
    found
}

/// The presence recorded by a running agent's fresh status file, if there is one.
fn running_agent(cfg: &Config) -> Option<crate::agent::status::Presence> {
    let snap = crate::agent::status::read(cfg.status_file.as_deref()?).ok()?;
    snap.is_fresh().then_some(snap.presence)
}

/// How long a local service may take to show its banner.
const BANNER_WAIT: Duration = Duration::from_secs(2);

fn local_step(port: u16, timeout: Duration, advice: &str) -> Step {
    let name = format!("local:{port}");
    let t = Instant::now();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5))) {
        Ok(s) => s,
        Err(e) => {
            return step(
                &name,
                Status::Fail,
                format!("nothing accepts on {addr}: {e}"),
                Some(advice.to_owned()),
                t,
            );
        }
    };
    let _ = sock.set_read_timeout(Some(BANNER_WAIT));
    let mut buf = [0u8; 256];
    let n = (&sock).read(&mut buf).unwrap_or(0);
    let banner = &buf[..n];
    let first_line = banner.split(|&b| b == b'\n').next().unwrap_or_default();
    let shown = printable(first_line.strip_suffix(b"\r").unwrap_or(first_line), 80);
    let (status, detail, hint) = if banner.starts_with(b"SSH-") {
        (Status::Pass, format!("{addr} is sshd: {shown}"), None)
    } else if port != 22 {
        let says = if n == 0 {
            String::new()
        } else {
            format!("; it says \"{shown}\"")
        };
        (Status::Pass, format!("{addr} is listening{says}"), None)
    } else if n == 0 {
        (
            Status::Warn,
            format!(
                "{addr} accepts connections but sent no SSH banner within {} s",
                BANNER_WAIT.as_secs()
            ),
            Some("check that the service on port 22 is sshd".into()),
        )
    } else {
        (
            Status::Warn,
            format!("{addr} answers something unexpected for sshd: \"{shown}\""),
            Some("check which program listens on port 22 (ss -tlnp)".into()),
        )
    };
    step(&name, status, detail, hint, t)
}
