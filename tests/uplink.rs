//! The uplink (src/uplink) through the real agent and proxy: small and bulk bytes, written by
//! the channel's own thread or queued for the frame writer, arrive in order; a keystroke on
//! one channel is not held behind another channel's bulk transfer; and a channel blocked on a
//! proxy that stopped reading ends with the control connection that died.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

/// A local service that writes `phases` in order, each once the test says go (after it has
/// read the previous phase completely, so the agent's first read of a phase sees only it).
fn phased_service(phases: Vec<Vec<u8>>) -> (u16, mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (go, ready) = mpsc::channel::<()>();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        for p in phases {
            if ready.recv().is_err() {
                return;
            }
            c.write_all(&p).unwrap();
        }
        // Stay open until the test is done: the tunnel has no half-close.
        let _ = ready.recv();
    });
    (port, go)
}

/// Small and bulk phases alternating, read back through the tunnel and compared.
fn phases_survive(env: &[(&str, &str)]) -> Proc {
    let phases: Vec<Vec<u8>> = vec![
        b"SSH-2.0-banner\r\n".to_vec(),
        random_bytes(3 << 20, 11),
        b"k".to_vec(),
        random_bytes(200, 12),
        random_bytes(2 << 20, 13),
        b"bye".to_vec(),
    ];
    let (port, go) = phased_service(phases.clone());
    let proxy = Proxy::for_ports(&[port], &[]);
    let agent = agent_with_env(
        proxy.control,
        &["--allow-port", &port.to_string(), "-v"],
        env,
    );
    proxy.wait_agent(1);
    let mut c = TcpStream::connect(proxy.tunnels[0]).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    for (i, p) in phases.iter().enumerate() {
        go.send(()).unwrap();
        let mut got = vec![0u8; p.len()];
        c.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("phase {i}: {e}"));
        assert!(&got == p, "phase {i} ({} bytes) differs", p.len());
    }
    drop(c);
    let _ = go.send(());
    agent.wait_for("closed: 127.0.0.1:", SOON);
    agent
}

#[test]
fn small_and_bulk_bytes_arrive_in_order() {
    phases_survive(&[]);
}

/// The system call each thread of `pid` whose name starts with `prefix` is in (-1: none).
fn syscalls(pid: u32, prefix: &str) -> Vec<i64> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?.path();
            let comm = std::fs::read_to_string(t.join("comm")).ok()?;
            let call = std::fs::read_to_string(t.join("syscall")).ok()?;
            let first = call.split_whitespace().next()?;
            comm.starts_with(prefix)
                .then(|| first.parse().unwrap_or(-1))
        })
        .collect()
}

#[test]
fn a_channel_waiting_on_a_stuck_proxy_ends_when_the_connection_dies() {
    // A service that pushes forever; a public client that never reads. The proxy stops
    // reading the agent and the agent's writes to it block.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let chunk = random_bytes(1 << 20, 5);
        while c.write_all(&chunk).is_ok() {}
    });
    // Without windows (the production proxy's protocol): with them the proxy never stops
    // reading, and the channel waits on its own window instead, which the session's end
    // closes as well (tests/windows.rs).
    let mut proxy = Proxy::for_ports(&[port], &["--window", "0"]);
    let control = proxy.control.to_string();
    let agent = proxy.agent(&["-v"]);
    proxy.wait_agent(1);
    let client = TcpStream::connect(proxy.tunnels[0]).unwrap();
    agent.wait_for("channel 1 open", SOON);
    // Stuck: the channel thread waits for room on the control socket (writing it itself, or
    // for the frame writer that does), never for local data, which never runs out. Polling
    // /proc: no event marks this state.
    let deadline = Instant::now() + SOON;
    loop {
        let channel = syscalls(agent.pid(), "channel-");
        let writer = syscalls(agent.pid(), "frame-writer");
        let writing = |n: &i64| [libc::SYS_write, libc::SYS_sendto].contains(n);
        let waits_for_room = |n: &i64| *n == libc::SYS_futex || writing(n);
        if !channel.is_empty()
            && channel.iter().all(waits_for_room)
            && channel.iter().chain(&writer).any(writing)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never stuck: channel {channel:?}, writer {writer:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    proxy.proc.kill();
    drop(client);
    agent.wait_for("(control connection", SOON);
    agent.wait_for("reconnecting in ", SOON);
    let device = format!("{KEY}={TOKEN}");
    let tunnel = format!("127.0.0.1:0={KEY}:{port}");
    let proxy = Proxy::start(&[
        "--listen", &control, "--device", &device, "--tunnel", &tunnel,
    ]);
    proxy.wait_agent(1);
    // The stuck channel's thread is gone. (Counted by name: the agent's other threads come
    // and go with its sessions, a moment after the proxy logs the connection.)
    let deadline = Instant::now() + SOON;
    while !wchans(agent.pid(), "channel-").is_empty() {
        assert!(
            Instant::now() < deadline,
            "a channel thread outlived its connection"
        );
        thread::sleep(Duration::from_millis(20)); // polling /proc
    }
}
