//! `tunnel-agent`: the program devices run.
//!
//! Owns the command line, the exit statuses, signals and what is printed; the work is the
//! library's (`agent`, `check`). Must not hold protocol or network logic of its own.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use tunnel_agent::advice;
use tunnel_agent::agent::status::Status;
use tunnel_agent::agent::status::Totals;
use tunnel_agent::agent::{self, shutdown::Shutdown, Live, VERSION};
use tunnel_agent::config::{self, SearchPaths};
use tunnel_agent::logging;

/// Writes to stdout. A reader that went away (`| head -1`, `| grep -q` in a watchdog) ends the
/// output quietly: `println!` would panic on the EPIPE (SIGPIPE is ignored, as the agent's
/// sockets need), and a panic is exit 134. The command's own exit status is kept.
fn out(args: std::fmt::Arguments) {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    static GONE: AtomicBool = AtomicBool::new(false);
    if GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            let _ = writeln!(
                std::io::stderr(),
                "tunnel-agent: cannot write the output: {e}"
            );
        }
    }
}

/// `println!` through [`out`].
macro_rules! outln {
    ($($arg:tt)*) => {
        out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Exit status for a bad command line or configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    tunnel_agent::memory::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flags, verbosity) = match cli::parse(&args) {
        Ok(cli::Command::Run { flags, verbosity }) => (flags, verbosity),
        Ok(cli::Command::Check {
            flags,
            format,
            timeout,
            handshake,
        }) => return check(&flags, format, timeout, handshake),
        Ok(cli::Command::Status { path, config, json }) => return status(path, config, json),
        Ok(cli::Command::Keys {
            flags,
            verbosity,
            retry,
        }) => return keys(&flags, verbosity, retry),
        Ok(cli::Command::Gate { patterns }) => return ssh_gate(&patterns),
        Ok(cli::Command::Help(topic)) => {
            outln!("{}", cli::help(topic));
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Version) => {
            outln!("tunnel-agent {VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tunnel-agent: {e}\nRun 'tunnel-agent --help' for the options.");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(&flags, &env, &SearchPaths::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tunnel-agent: configuration error: {}", advice::config(&e));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match &cfg.syslog {
        Some(socket) => logging::init_syslog("tunnel-agent", socket, verbosity),
        None => logging::init(verbosity),
    }
    let shutdown = Arc::new(Shutdown::new());
    let status = Arc::new(Status::new(
        cfg.status_file.clone(),
        cfg.proxy_addr(),
        Arc::new(Totals::default()),
    ));
    let live = Arc::new(Live::new(cfg));
    let reload = move || {
        let env = |k: &str| std::env::var(k).ok();
        config::load(&flags, &env, &SearchPaths::default())
    };
    if let Err(e) = watch_signals(shutdown.clone(), live.clone(), Box::new(reload)) {
        warn!("cannot install signal handlers ({e}); SIGTERM will kill the agent abruptly");
    }
    refresh_status(status.clone(), shutdown.clone());
    agent::run(&live, &shutdown, &status);
    shutdown.mark_finished();
    ExitCode::SUCCESS
}

/// Rewrites the status file every 10 s until the agent stops.
fn refresh_status(status: Arc<Status>, shutdown: Arc<Shutdown>) {
    let spawned = std::thread::Builder::new()
        .name("status".into())
        .spawn(move || {
            while !shutdown.wait_finished(agent::status::REFRESH) {
                status.write();
            }
        });
    if let Err(e) = spawned {
        warn!("cannot start the status thread ({e}); the status file is written on state changes only");
    }
}

/// `tunnel-agent status`: exit 0 when the agent is connected, 1 otherwise.
fn status(path: Option<String>, config: Option<std::path::PathBuf>, json: bool) -> ExitCode {
    let path = match path {
        Some(p) => std::path::PathBuf::from(p),
        None => match status_file_of(config) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tunnel-agent status: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let snap = match agent::status::read(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tunnel-agent status: {e}\nIs tunnel-agent running (and writing its status file there)?");
            return ExitCode::from(1);
        }
    };
    let (age, alive, fresh) = (snap.age(), snap.writer_alive(), snap.is_fresh());
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&snap).unwrap_or_default()
        );
    } else {
        let now = tunnel_agent::clock::now();
        if !fresh {
            outln!(
                "STALE: this file was last written {age} s ago{}: the agent is not running, and \
                 what follows is what it last said",
                if alive {
                    ""
                } else {
                    " and its process is gone"
                }
            );
        }
        let down = snap
            .down_since
            .filter(|_| snap.state != "disabled")
            .map(|t| {
                format!(
                    "; tunnel down since {} ({} s)",
                    tunnel_agent::clock::utc(t),
                    now.saturating_sub(t)
                )
            })
            .unwrap_or_default();
        outln!(
            "tunnel-agent {} (pid {}): {} since {} ({} s){down}",
            snap.version,
            snap.pid,
            snap.state,
            snap.since_utc,
            now.saturating_sub(snap.since)
        );
        outln!(
            "device: {}; proxy: {}",
            snap.device_key.as_deref().unwrap_or("?"),
            snap.proxy
        );
        outln!(
            "channels: {} open, {} since start; bytes up {}, down {}",
            snap.open_channels,
            snap.channels_total,
            snap.bytes_up,
            snap.bytes_down
        );
        if snap.state == "disabled" {
            outln!(
                "Meeting is switched off on this device (enabled false): no tunnel and no \
                 heartbeat, on purpose"
            );
        }
        if !snap.ports.is_empty() {
            outln!(
                "local ports open to the tunnel: {}",
                snap.ports
                    .iter()
                    .map(|(p, why)| format!("{p} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        outln!("reconnects: {}", snap.reconnects);
        outln!("Meeting presence: {}", presence_line(&snap.presence));
        if let Some(e) = &snap.last_error {
            outln!("last error ({}): {}", e.class, e.message);
        }
    }
    // Connected, or switched off on purpose: nothing for a watchdog to mend.
    ExitCode::from(
        if fresh && (snap.state == "connected" || snap.state == "disabled") {
            0
        } else {
            1
        },
    )
}

/// The status file named by the configuration (`--config FILE`, else the first configuration
/// file found), else the default. Reads nothing else of the configuration, so it works for a
/// user who may not read the token.
fn status_file_of(config: Option<std::path::PathBuf>) -> Result<std::path::PathBuf, String> {
    let explicit = config.is_some();
    let mut flags = config::Flags::default();
    flags.config = config;
    let none = |_: &str| None;
    let found = match config::found(&flags, &none, &SearchPaths::default()) {
        Ok(f) => f,
        // The default file may be readable by root only: then the default path is the guess.
        Err(e) if explicit => return Err(e.to_string()),
        Err(_) => Vec::new(),
    };
    Ok(found
        .into_iter()
        .find(|f| f.key == "status_file")
        .map_or_else(|| config::DEFAULT_STATUS_FILE.into(), |f| f.value.into()))
}

/// `tunnel-agent keys`: one round of the SSH key work (with `retry`, rounds until none fails
/// for a passing reason); a line per job on stdout (failures on stderr), exit 0 when
/// everything is in place, 1 on a failure, 3 on a refusal.
fn keys(flags: &config::Flags, verbosity: i32, retry: bool) -> ExitCode {
    logging::init(verbosity);
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(flags, &env, &SearchPaths::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "tunnel-agent keys: configuration error: {}",
                advice::config(&e)
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    keys_rounds(&cfg, retry)
}

#[cfg(feature = "tls")]
fn keys_rounds(cfg: &config::Config, retry: bool) -> ExitCode {
    use tunnel_agent::sshkeys::{self, Memory, Retry};
    let client = sshkeys::client(cfg);
    let mut memory = Memory::default();
    let mut again = Retry::new();
    loop {
        let (worst, passing) = keys_round(cfg, client.as_ref(), &mut memory);
        if !(retry && passing) {
            return ExitCode::from(worst);
        }
        let delay = again.next_delay();
        eprintln!(
            "tunnel-agent keys: trying the failed work again in {:.0} s",
            delay.as_secs_f64()
        );
        std::thread::sleep(delay);
    }
}

/// One round, said on stdout and stderr: the exit status, and whether a job failed for a
/// reason that passes.
#[cfg(feature = "tls")]
fn keys_round(
    cfg: &config::Config,
    client: Option<&tunnel_agent::meeting::Client>,
    memory: &mut tunnel_agent::sshkeys::Memory,
) -> (u8, bool) {
    use tunnel_agent::sshkeys::{self, Done};
    let mut worst = 0;
    let mut passing = false;
    for o in sshkeys::round(cfg, client, memory) {
        match &o.result {
            Ok(Done::Changed(m)) => outln!("{}: {m}", o.job),
            Ok(Done::Unchanged(m)) => outln!("{}: ok: {m}", o.job),
            Ok(Done::Off(why)) => outln!("{}: off: {why}", o.job),
            Err(e) => {
                eprintln!(
                    "{}: FAILED: {}",
                    o.job,
                    advice::explained(e, advice::keys(e))
                );
                worst = worst.max(if e.is_refusal() { 3 } else { 1 });
                passing |= e.passes();
            }
        }
    }
    (worst, passing)
}

#[cfg(not(feature = "tls"))]
fn keys_rounds(_cfg: &config::Config, _retry: bool) -> ExitCode {
    eprintln!(
        "tunnel-agent keys: this tunnel-agent was built without TLS, and SSH keys are only \
         taken over verified HTTPS; install a build with TLS"
    );
    ExitCode::from(1)
}

/// `tunnel-agent check`: prints the report and exits with the verdict's status.
fn check(
    flags: &config::Flags,
    format: cli::Format,
    timeout: Duration,
    handshake: bool,
) -> ExitCode {
    use std::io::IsTerminal;
    use tunnel_agent::check::{self, render};
    if handshake {
        eprintln!(
            "tunnel-agent check --handshake: if an agent is connected for this device, the proxy \
             now drops its connection and every tunnel through it (an ssh session through the \
             tunnel ends); the agent reconnects within seconds."
        );
    }
    let env = |k: &str| std::env::var(k).ok();
    let report = check::run(
        flags,
        &env,
        &SearchPaths::default(),
        &check::Options { timeout, handshake },
    );
    let text = match format {
        cli::Format::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            render::text(&report, color)
        }
        cli::Format::Json => render::json(&report) + "\n",
        cli::Format::Report => render::markdown(&report),
    };
    out(format_args!("{text}"));
    ExitCode::from(report.verdict.exit_code())
}

/// One line of what the status file says of the heartbeat: a watchdog can tell "tunnel up
/// but Meeting shows the device offline" from it.
fn presence_line(p: &agent::status::Presence) -> String {
    let since = tunnel_agent::clock::utc(p.since);
    let last = p
        .last_ok_utc
        .as_deref()
        .map(|t| format!("; last accepted beat {t}"))
        .unwrap_or_default();
    let detail = p.detail.as_deref().unwrap_or("");
    match p.state.as_str() {
        "" => "unknown (an older agent wrote this file)".to_owned(),
        "online" => format!(
            "online (last accepted beat {}, server last_seen {} UTC)",
            p.last_ok_utc.as_deref().unwrap_or("-"),
            p.server_last_seen.as_deref().unwrap_or("-")
        ),
        "off" => format!("off: {detail}"),
        "starting" => format!("starting: no heartbeat answered yet (since {since})"),
        state => format!(
            "{state} since {since}, {} failed beats in a row{last}: {detail}",
            p.failures
        ),
    }
}

/// Re-reads the configuration on SIGHUP.
type Reload = Box<dyn Fn() -> Result<config::Config, config::ConfigError> + Send>;

/// On SIGHUP: reload. On SIGINT/SIGTERM: stop in order, and exit within a second whatever
/// happens.
fn watch_signals(shutdown: Arc<Shutdown>, live: Arc<Live>, reload: Reload) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    info!("received SIGHUP: re-reading the configuration");
                    agent::reload(&live, &shutdown, reload());
                    continue;
                }
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                info!("received {name}: closing channels and exiting");
                shutdown.trigger();
                if !shutdown.wait_finished(Duration::from_millis(900)) {
                    warn!("orderly stop took too long; exiting now");
                    std::process::exit(0);
                }
                break;
            }
        })?;
    Ok(())
}

/// `tunnel-agent ssh-gate PATTERNS`, the forced command of Meeting's key where the SSH server
/// (Dropbear) has no `from=`: the client's address (`SSH_CLIENT`, set by the server) must
/// match PATTERNS as `from=` would; then it runs what the client asked
/// (`SSH_ORIGINAL_COMMAND`) with the user's shell, or that shell as a login shell. Otherwise it
/// says why on stderr and exits 1, having run nothing.
#[cfg(feature = "tls")]
fn ssh_gate(patterns: &str) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let client = std::env::var("SSH_CLIENT").unwrap_or_default();
    let ip = client.split_whitespace().next().unwrap_or("");
    if !tunnel_agent::sshkeys::server::client_allowed(ip, patterns) {
        eprintln!(
            "tunnel-agent ssh-gate: Meeting's key is for the tunnel only (connections from {patterns}); \
             this one comes from {}",
            if ip.is_empty() { "an unknown address (no SSH_CLIENT)" } else { ip }
        );
        return ExitCode::from(1);
    }
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    let mut cmd = std::process::Command::new(&shell);
    match std::env::var("SSH_ORIGINAL_COMMAND") {
        Ok(asked) if !asked.is_empty() => {
            cmd.arg("-c").arg(asked);
        }
        // An interactive login: the shell as a login shell, as the server would start it.
        _ => {
            let base = shell.rsplit('/').next().unwrap_or("sh");
            cmd.arg0(format!("-{base}"));
        }
    }
    cmd.env_remove("SSH_ORIGINAL_COMMAND");
    let e = cmd.exec();
    eprintln!("tunnel-agent ssh-gate: cannot run {shell}: {e}");
    ExitCode::from(1)
}

/// A build without TLS does no key work, so it never writes the gate.
#[cfg(not(feature = "tls"))]
fn ssh_gate(_patterns: &str) -> ExitCode {
    eprintln!("tunnel-agent ssh-gate: this build has no SSH key work (it was built without TLS)");
    ExitCode::from(1)
}
