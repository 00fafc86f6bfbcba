//! The tunnel clients users pick instead of the agent (rathole, bore), started on loopback in
//! front of one local service so the benchmark can measure their clients like the agent.
//! `make bench-peers` installs them; a peer that is not installed is skipped.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;

use crate::support::{wait_for, Running};

/// A peer's server and client, running; the public port reaches the local service.
pub struct Peer {
    /// Where a client of the tunnel connects.
    pub public: u16,
    /// The peer's client process: the counterpart of the agent, whose CPU and memory count.
    pub client: Running,
    _server: Running,
}

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
fn start_logged(program: &str, args: &[&str]) -> (Running, Receiver<String>) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(program)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
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
    (Running(child), rx)
}

/// Keeps reading a log so the process never blocks on a full pipe.
fn drain(rx: Receiver<String>) {
    std::thread::spawn(move || for _ in rx.iter() {});
}

/// rathole server and client carrying `service`; `control` and `public` are free ports.
pub fn rathole(service: u16, control: u16, public: u16, dir: &Path) -> Option<Peer> {
    if !installed("rathole") {
        return None;
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
    .ok()?;
    std::fs::write(
        &client,
        format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\n\
             [client.services.bench]\ntoken = \"bench\"\nlocal_addr = \"127.0.0.1:{service}\"\n"
        ),
    )
    .ok()?;
    let (srv, slog) = start_logged("rathole", &["--server", &server.display().to_string()]);
    wait_for(&slog, &format!("Listening at 127.0.0.1:{control}"));
    let (cli, clog) = start_logged("rathole", &["--client", &client.display().to_string()]);
    // The server opens the public port once the client's control channel is up.
    wait_for(&slog, &format!("Listening at 127.0.0.1:{public}"));
    drain(slog);
    drain(clog);
    Some(Peer {
        public,
        client: cli,
        _server: srv,
    })
}

/// bore server and client carrying `service` on `public` (bore's control port is its fixed
/// 7835, on loopback).
pub fn bore(service: u16, public: u16) -> Option<Peer> {
    if !installed("bore") {
        return None;
    }
    if std::net::TcpListener::bind(("127.0.0.1", 7835)).is_err() {
        println!("bore skipped: its fixed control port 127.0.0.1:7835 is taken");
        return None;
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
    );
    wait_for(&slog, "server listening");
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
    );
    wait_for(&clog, "listening at");
    drain(slog);
    drain(clog);
    Some(Peer {
        public,
        client: cli,
        _server: srv,
    })
}
