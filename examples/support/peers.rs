//! The tunnel clients users pick instead of the agent (rathole, bore), started on loopback in
//! front of one local service so the benchmark can measure their clients like the agent.
//! `make bench-peers` installs them; a peer that is not installed or does not start is
//! reported as such, never a panic.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;

use crate::support::{try_wait_for, Running};

/// A peer's server and client, running; the public port reaches the local service.
pub struct Peer {
    /// Where a client of the tunnel connects.
    pub public: u16,
    /// The peer's client process: the counterpart of the agent, whose CPU and memory count.
    pub client: Running,
    _server: Running,
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

/// Starts `program` with its log (stdout and stderr, both) on a channel.
pub fn start_logged(program: &str, args: &[&str]) -> Result<(Running, Receiver<String>), String> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(program)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(format!("{program}: no output pipes"));
    };
    for pipe in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    Ok((Running(child), rx))
}

/// Keeps reading a log so the process never blocks on a full pipe.
pub fn drain(rx: Receiver<String>) {
    std::thread::spawn(move || for _ in rx.iter() {});
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
    let (srv, slog) = start_logged("rathole", &["--server", &server.display().to_string()])?;
    try_wait_for(&slog, &format!("Listening at 127.0.0.1:{control}"))?;
    let (cli, clog) = start_logged("rathole", &["--client", &client.display().to_string()])?;
    // The server opens the public port once the client's control channel is up.
    try_wait_for(&slog, &format!("Listening at 127.0.0.1:{public}"))?;
    drain(slog);
    drain(clog);
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
    let (srv, slog) = start_logged(
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
    try_wait_for(&slog, "server listening")?;
    let (cli, clog) = start_logged(
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
    try_wait_for(&clog, "listening at")?;
    drain(slog);
    drain(clog);
    Ok(Peer {
        public,
        client: cli,
        _server: srv,
    })
}
