//! The tunnel clients users pick instead of the agent (rathole, bore), started on loopback in
//! front of one local service so the benchmark can measure their clients like the agent.
//! `make bench-peers` installs them; a peer that is not installed or does not start is
//! reported as such, never a panic.

use std::path::Path;
use std::process::{Command, Stdio};

use super::process::{Launch, Proc};

/// A peer's server and client, running; the public port reaches the local service.
pub struct Peer {
    /// Where a client of the tunnel connects.
    pub public: u16,
    /// The peer's client process: the counterpart of the agent, whose CPU and memory count.
    pub client: Proc,
    _server: Proc,
}

/// Why a peer is missing from the table.
pub const NOT_INSTALLED: &str = "not installed (make bench-peers)";

/// Whether `program` is on PATH.
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Starts `program` with its log (stdout and stderr, both) read.
pub fn start_logged(program: &str, args: &[&str]) -> Result<Proc, String> {
    Launch::new(program)
        .args(args)
        .envs(&[("NO_COLOR", "1"), ("RUST_LOG", "info")])
        .with_stdout()
        .try_start()
}

/// rathole server and client carrying `service`; `control` and `public` are free ports.
pub fn rathole(service: u16, control: u16, public: u16, dir: &Path) -> Result<Peer, String> {
    if !installed("rathole") {
        return Err(NOT_INSTALLED.into());
    }
    let server = dir.join("rathole-server.toml");
    let client = dir.join("rathole-client.toml");
    std::fs::write(
        &server,
        format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\n\
             [server.services.bench]\ntoken = \"bench\"\nbind_addr = \"127.0.0.1:{public}\"\n"
        ),
    )
    .map_err(|e| format!("writing {}: {e}", server.display()))?;
    std::fs::write(
        &client,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\
             [client.services.bench]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{service}\"\n"
        ),
    )
    .map_err(|e| format!("writing {}: {e}", client.display()))?;
    let srv = start_logged("rathole", &["--server", &server.display().to_string()])?;
    srv.try_next_after(&format!("Listening at 127.0.0.1:{control}"))?;
    let cli = start_logged("rathole", &["--client", &client.display().to_string()])?;
    // The server opens the public port once the client's control channel is up.
    srv.try_next_after(&format!("Listening at 127.0.0.1:{public}"))?;
    Ok(Peer {
        public,
        client: cli,
        _server: srv,
    })
}

/// bore server and client carrying `service` on `public` (bore's control port is its fixed
/// 7835, on loopback).
pub fn bore(service: u16, public: u16) -> Result<Peer, String> {
    if !installed("bore") {
        return Err(NOT_INSTALLED.into());
    }
    if std::net::TcpListener::bind(("127.0.0.1", 7835)).is_err() {
        return Err("its fixed control port 127.0.0.1:7835 is taken".into());
    }
    let p = public.to_string();
    let srv = start_logged(
        "bore",
        &[
            "server",
            "--bind-addr",
            "127.0.0.1",
            "--min-port",
            &p,
            "--max-port",
            &p,
        ],
    )?;
    srv.try_next_after("server listening")?;
    let cli = start_logged(
        "bore",
        &[
            "local",
            &service.to_string(),
            "--local-host",
            "127.0.0.1",
            "--to",
            "127.0.0.1",
            "--port",
            &p,
        ],
    )?;
    cli.try_next_after("listening at")?;
    Ok(Peer {
        public,
        client: cli,
        _server: srv,
    })
}
