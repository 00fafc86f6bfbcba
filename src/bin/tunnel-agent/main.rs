//! `tunnel-agent`: the program devices run.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use tunnel_agent::agent::{self, shutdown::Shutdown, VERSION};
use tunnel_agent::config::{self, SearchPaths};
use tunnel_agent::logging;

/// Exit status for a bad command line or configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (flags, verbosity) = match cli::parse(&args) {
        Ok(cli::Command::Run { flags, verbosity }) => (flags, verbosity),
        Ok(cli::Command::Check {
            flags,
            format,
            timeout,
        }) => return check(&flags, format, timeout),
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(cli::Command::Version) => {
            println!("tunnel-agent {VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tunnel-agent: {e}\nRun 'tunnel-agent --help' for the options.");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(verbosity);
    let env = |k: &str| std::env::var(k).ok();
    let cfg = match config::load(&flags, &env, &SearchPaths::default()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tunnel-agent: configuration error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cfg.tls.value && !cfg!(feature = "tls") {
        eprintln!(
            "tunnel-agent: configuration error: TLS is requested ({}) but this tunnel-agent was \
             built without the tls feature; install a build with TLS, or set tunnel_ssl to false \
             if the proxy port is plain TCP",
            cfg.tls.source
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let shutdown = Arc::new(Shutdown::new());
    if let Err(e) = watch_signals(shutdown.clone()) {
        warn!("cannot install signal handlers ({e}); SIGTERM will kill the agent abruptly");
    }
    agent::run(&cfg, &shutdown);
    shutdown.mark_finished();
    ExitCode::SUCCESS
}

/// `tunnel-agent check`: prints the report and exits with the verdict's status.
fn check(flags: &config::Flags, format: cli::Format, timeout: Duration) -> ExitCode {
    use std::io::IsTerminal;
    use tunnel_agent::check::{self, render};
    let env = |k: &str| std::env::var(k).ok();
    let report = check::run(
        flags,
        &env,
        &SearchPaths::default(),
        &check::Options { timeout },
    );
    let out = match format {
        cli::Format::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            render::text(&report, color)
        }
        cli::Format::Json => render::json(&report) + "\n",
        cli::Format::Report => render::markdown(&report),
    };
    print!("{out}");
    ExitCode::from(report.verdict.exit_code())
}

/// On SIGINT/SIGTERM: stop in order, and exit within a second whatever happens.
fn watch_signals(shutdown: Arc<Shutdown>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let name = if sig == SIGINT { "SIGINT" } else { "SIGTERM" };
                info!("received {name}: closing channels and exiting");
                shutdown.trigger();
                if !shutdown.wait_finished(Duration::from_millis(900)) {
                    warn!("orderly stop took too long; exiting now");
                    std::process::exit(0);
                }
            }
        })?;
    Ok(())
}
