//! `meeting-proxy`: the reference server side of the Meeting tunnel, for tests, demos and
//! self-hosting.
//!
//! Owns the proxy's listeners, its device registry and public ports. Shares the wire code
//! (`protocol`), TLS (`transport`) and the frame writer (`uplink`) with the agent; must not
//! use the agent's roles or configuration.

mod auth;
mod control;
mod public;
mod registry;
mod settings;
mod tunnels;

use std::io::Write;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};

use auth::Auth;
use registry::Registry;
use settings::Command;
use tunnel_agent::meeting::{ApiUrl, Client};

fn tls_config(settings: &settings::Settings) -> Result<control::Tls, String> {
    match (&settings.tls_cert, &settings.tls_key) {
        (None, None) => Ok(None),
        #[cfg(feature = "tls")]
        (Some(cert), Some(key)) => tunnel_agent::transport::tls::server_config(cert, key)
            .map(Some)
            .map_err(|e| format!("cannot load the TLS certificate/key: {e}")),
        #[cfg(not(feature = "tls"))]
        (Some(_), Some(_)) => Err("this meeting-proxy was built without the tls feature".into()),
        _ => Err("--tls-cert and --tls-key go together".into()),
    }
}

fn main() -> ExitCode {
    // One malloc arena (glibc): thousands of threads would otherwise spread free memory over
    // many arenas, none of it given back.
    tunnel_agent::memory::configure();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (settings, verbosity) = match settings::parse(&args) {
        Ok(Command::Serve(s, v)) => (*s, v),
        Ok(Command::Help) => {
            // Not println!: a closed pipe (`| head`) must not panic.
            let _ = writeln!(std::io::stdout(), "{}", settings::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            let _ = writeln!(
                std::io::stdout(),
                "meeting-proxy {}",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("meeting-proxy: {e}\nRun 'meeting-proxy --help' for the options.");
            return ExitCode::from(2);
        }
    };
    tunnel_agent::logging::init(verbosity);
    let tls = match tls_config(&settings) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meeting-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let api = match &settings.api_url {
        None => None,
        Some(url) => {
            let client = Client::new(
                ApiUrl::new(url),
                settings.api_ca_file.clone(),
                Duration::from_secs_f64(settings.api_timeout),
            );
            if let Err(e) = client.prepare() {
                eprintln!("meeting-proxy: {e}");
                return ExitCode::from(2);
            }
            Some(client)
        }
    };
    match tunnel_agent::memory::raise_open_files() {
        Ok(n) => info!("open-file limit: {n}"),
        Err(e) => warn!("cannot raise the open-file limit: {e}"),
    }
    let registry = Arc::new(Registry::default());
    let control = match TcpListener::bind(&settings.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("meeting-proxy: cannot listen on {}: {e}", settings.listen);
            return ExitCode::from(1);
        }
    };
    for tunnel in &settings.tunnels {
        let listener = match TcpListener::bind(&tunnel.listen) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "meeting-proxy: cannot listen on {} for a tunnel: {e}",
                    tunnel.listen
                );
                return ExitCode::from(1);
            }
        };
        let mut tunnel = tunnel.clone();
        if let Ok(addr) = listener.local_addr() {
            tunnel.listen = addr.to_string();
        }
        info!(
            "tunnel {} -> device {} port {}",
            tunnel.listen, tunnel.device, tunnel.port
        );
        let r = registry.clone();
        let gate = Arc::new(public::Gate::new(&listener));
        thread::spawn(move || public::serve(listener, tunnel, r, gate));
    }
    let auth = Arc::new(Auth::new(
        settings.devices.clone(),
        api.clone(),
        Duration::from_secs_f64(settings.cache_accept),
        Duration::from_secs_f64(settings.cache_refuse),
    ));
    if let Some(client) = api {
        info!(
            "devices decided by the Meeting API at {} (answers reused {} s when accepted, {} s \
             when refused); tunnels from {}/tunnels every {} s on {}",
            client.url,
            settings.cache_accept,
            settings.cache_refuse,
            client.url,
            settings.tunnels_interval,
            settings.public_bind
        );
        let poller = tunnels::Poller::new(client, &settings, registry.clone());
        let every = Duration::from_secs_f64(settings.tunnels_interval);
        if let Err(e) = thread::Builder::new()
            .name("tunnels".into())
            .spawn(move || poller.run(every))
        {
            eprintln!("meeting-proxy: cannot start the tunnel poller: {e}");
            return ExitCode::from(1);
        }
    }
    match control.local_addr() {
        Ok(a) => info!(
            "listening for agents on {a} ({}, reply mode {})",
            if tls.is_some() { "TLS" } else { "plain TCP" },
            match settings.reply {
                settings::ReplyMode::Normal => "normal",
                settings::ReplyMode::None => "none",
                settings::ReplyMode::SilentClose => "silent-close",
            }
        ),
        Err(e) => warn!("listening for agents (address unknown: {e})"),
    }
    let settings = Arc::new(settings);
    let tls = Arc::new(tls);
    for conn in control.incoming() {
        match conn {
            Ok(sock) => {
                let (s, t, r) = (settings.clone(), tls.clone(), registry.clone());
                let a = auth.clone();
                if let Err(e) = thread::Builder::new()
                    .name("agent".into())
                    .stack_size(public::THREAD_STACK)
                    .spawn(move || control::serve(sock, &s, &t, &a, &r))
                {
                    warn!("cannot start a thread for an agent connection: {e}");
                }
            }
            Err(e) => {
                warn!("accept failed: {e}");
                // Out of descriptors or memory: do not spin on it.
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    ExitCode::SUCCESS
}
