//! `meeting-proxy`: the reference server side of the Meeting tunnel, for tests, demos and
//! self-hosting.
//!
//! Owns the proxy's listeners, its device registry and public ports. Shares the wire code
//! (`protocol`), TLS (`transport`) and the frame writer (`uplink`) with the agent; must not
//! use the agent's roles or configuration. `main` only parses, builds the server
//! (`server.rs`) and calls its `listen()`.

mod auth;
mod control;
mod listen;
mod metrics;
mod noise;
mod penalty;
mod pending;
mod public;
mod registry;
mod server;
mod settings;
mod tunnels;

use std::io::Write;
use std::process::ExitCode;

use settings::Command;

fn main() -> ExitCode {
    // One malloc arena (glibc): thousands of threads would otherwise spread free memory over
    // many arenas, none of it given back.
    tunnel_agent::memory::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (settings, verbosity) = match settings::parse(&args) {
        Ok(Command::Serve(s, v)) => (*s, v),
        // Not println!: a closed pipe (`| head`) must not panic.
        Ok(Command::Help) => return say(&settings::usage()),
        Ok(Command::Version) => {
            return say(&format!("meeting-proxy {}", env!("CARGO_PKG_VERSION")))
        }
        Err(e) => {
            eprintln!("meeting-proxy: {e}\nRun 'meeting-proxy --help' for the options.");
            return ExitCode::from(2);
        }
    };
    tunnel_agent::logging::init(verbosity);
    match server::Server::build(settings) {
        Ok(server) => server.listen(),
        Err(e) => {
            eprintln!("meeting-proxy: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Prints `text` on standard output and exits successfully.
fn say(text: &str) -> ExitCode {
    let _ = writeln!(std::io::stdout(), "{text}");
    ExitCode::SUCCESS
}
