//! Running the real binaries from the examples (demo, soak): start, read logs, stop.
#![allow(dead_code)]

#[path = "../../tests/support/mod.rs"]
mod shared;
#[allow(unused_imports)]
pub use shared::*;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

/// How long any readiness wait may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// The binaries sit next to the `examples` folder this program was built into; `AGENT_BIN`
/// names another tunnel-agent (e.g. the static musl build the devices run).
pub fn binary(name: &str) -> PathBuf {
    if let (Some(path), "tunnel-agent") = (std::env::var_os("AGENT_BIN"), name) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("own path");
    exe.parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join(name)
}

/// A child process that is killed when dropped, also when the example panics.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a binary and returns its log lines on a channel; with `echo`, also prints them
/// tagged with the binary's name. Panics when it cannot start (see [`try_start`]).
pub fn start(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    echo: bool,
) -> (Running, Receiver<String>) {
    try_start(name, args, env, echo).unwrap_or_else(|e| panic!("{e}"))
}

/// [`start`], saying why it could not.
pub fn try_start(
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    echo: bool,
) -> Result<(Running, Receiver<String>), String> {
    let mut child = Command::new(binary(name))
        .args(args)
        // The agent never touches this machine's SSH keys (/root/.ssh) in a demo or bench.
        .env("MEETING_SSH_KEYS", "false")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {name} (build it first): {e}"))?;
    let (tx, rx) = mpsc::channel();
    let Some(stderr) = child.stderr.take() else {
        return Err(format!("{name}: no stderr pipe"));
    };
    let tag = name.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                println!("    [{tag}] {line}");
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok((Running(child), rx))
}

/// Starts meeting-proxy backed by the fake Meeting API `api`: agents on any free loopback
/// port, the API's tunnels on 127.0.0.1, the tunnel list fetched every second.
pub fn start_api_proxy(api: &shared::fake_api::FakeApi, echo: bool) -> (Running, Receiver<String>) {
    let ca = api.ca_file.display().to_string();
    start(
        "meeting-proxy",
        &[
            "--listen",
            "127.0.0.1:0",
            "--api-url",
            &api.url,
            "--api-ca-file",
            &ca,
            "--public-bind",
            "127.0.0.1",
            "--tunnels-interval",
            "1",
        ],
        &[],
        echo,
    )
}

/// Waits for a log line containing `pat` and returns the text after it.
pub fn wait_for(rx: &Receiver<String>, pat: &str) -> String {
    try_wait_for(rx, pat).unwrap_or_else(|e| panic!("{e}"))
}

/// [`wait_for`], saying what did not come: no such line within [`WAIT`], or the process
/// ended first (its last line is quoted).
pub fn try_wait_for(rx: &Receiver<String>, pat: &str) -> Result<String, String> {
    let mut last = String::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(line) => {
                if let Some(i) = line.find(pat) {
                    return Ok(line[i + pat.len()..].to_owned());
                }
                last = line;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no log line containing {pat:?} within {} s",
                    WAIT.as_secs()
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!(
                    "the process ended before logging {pat:?} (last line: {last:?})"
                ))
            }
        }
    }
}

/// The first word of `s`.
pub fn first_word(s: &str) -> String {
    s.split_whitespace().next().unwrap_or_default().to_owned()
}

/// Starts `tunnel-agent` as device `key` with `token` against the proxy at `control`
/// (`host:port`), allowed to open `ports`, without a status file; `extra` arguments follow.
/// Says why it could not.
pub fn start_agent(
    control: &str,
    key: &str,
    token: &str,
    ports: &[u16],
    extra: &[&str],
    echo: bool,
) -> Result<(Running, Receiver<String>), String> {
    let port = control.rsplit(':').next().unwrap_or_default().to_owned();
    let allow: Vec<String> = ports.iter().map(u16::to_string).collect();
    let mut args = vec![
        "--device-key",
        key,
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--status-file",
        "",
    ];
    for p in &allow {
        args.extend(["--allow-port", p.as_str()]);
    }
    args.extend(extra);
    try_start("tunnel-agent", &args, &[("MEETING_TOKEN", token)], echo)
}
