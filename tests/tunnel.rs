//! End to end: the real agent and proxy carrying data on loopback.

mod support;

use std::io::Read;
use std::net::TcpStream;
use std::thread;
use std::time::Instant;

use support::*;

#[test]
fn thirty_two_concurrent_channels_echo_four_megabytes_each() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let _agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    let public = proxy.tunnels[0];
    let handles: Vec<_> = (0..32u64)
        .map(|i| {
            thread::spawn(move || {
                let data = random_bytes(4 << 20, i + 1);
                // From 4 addresses: the proxy lets one have 16 at most.
                let back = echo_through_from([127, 0, 1, (i % 4 + 1) as u8], public, &data);
                assert_eq!(back.len(), data.len(), "channel {i}: length");
                assert!(back == data, "channel {i}: bytes differ");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn refused_local_port_closes_only_that_channel() {
    let echo = echo_server();
    let closed = closed_port();
    let proxy = Proxy::for_ports(&[echo, closed], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    let (good, bad) = (proxy.tunnels[0], proxy.tunnels[1]);

    // A channel that stays open across the refusal.
    let long = TcpStream::connect(good).unwrap();
    long.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(echo_once(&long, b"before"), b"before");

    let mut refused = TcpStream::connect(bad).unwrap();
    refused.set_read_timeout(Some(SOON)).unwrap();
    let mut buf = [0u8; 16];
    let n = refused.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the public client sees its connection closed");
    agent.wait_for(&format!("cannot connect to 127.0.0.1:{closed}"), SOON);
    agent.wait_for("nothing listens there", SOON);

    assert_eq!(echo_once(&long, b"after"), b"after");
    assert_eq!(echo_through(good, b"new channel"), b"new channel");
}

fn echo_once(s: &TcpStream, msg: &[u8]) -> Vec<u8> {
    use std::io::Write;
    (&*s).write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    (&*s).read_exact(&mut back).unwrap();
    back
}

#[test]
fn data_sent_before_the_local_connection_is_up_is_delivered() {
    // The public client writes immediately; the agent gets D frames while still connecting.
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let _agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    for i in 0..20u64 {
        let data = random_bytes(300_000, 100 + i);
        assert!(echo_through(proxy.tunnels[0], &data) == data, "round {i}");
    }
}

#[test]
fn channel_open_and_close_are_logged_with_port_bytes_and_duration() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    assert_eq!(
        echo_through(proxy.tunnels[0], &[7u8; 1000]),
        vec![7u8; 1000]
    );
    agent.wait_for(&format!("channel 1 open: 127.0.0.1:{echo}"), SOON);
    let closed = agent.wait_for("channel 1 closed", SOON);
    assert!(closed.contains(&format!("127.0.0.1:{echo}")), "{closed}");
    assert!(
        closed.contains("1000 bytes up, 1000 bytes down"),
        "{closed}"
    );
    assert!(closed.contains(" s ("), "{closed}");
}

#[test]
fn agent_reconnects_after_proxy_restart_and_tunnel_works_again() {
    let echo = echo_server();
    let mut proxy = Proxy::for_ports(&[echo], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    assert_eq!(echo_through(proxy.tunnels[0], b"first"), b"first");

    let control = proxy.control.to_string();
    proxy.proc.kill();
    agent.wait_for("connection lost", SOON);
    let device = format!("{KEY}={TOKEN}");
    let tunnel = format!("127.0.0.1:0={KEY}:{echo}");
    let proxy2 = Proxy::start(&[
        "--listen", &control, "--device", &device, "--tunnel", &tunnel,
    ]);
    proxy2.wait_agent(1);
    assert_eq!(echo_through(proxy2.tunnels[0], b"second"), b"second");
    agent.wait_for_nth("tunnel ready", 2, SOON);
}

#[test]
fn sigterm_closes_channels_and_exits_zero_promptly() {
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let mut agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    let open = TcpStream::connect(proxy.tunnels[0]).unwrap();
    open.set_read_timeout(Some(SOON)).unwrap();
    assert_eq!(echo_once(&open, b"ping"), b"ping");

    let t0 = Instant::now();
    agent.signal("TERM");
    let status = agent
        .wait_exit(SOON)
        .expect("agent still running after SIGTERM");
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{}", agent.output());
    // The agent sent C for the open stream: the public client sees the close.
    let mut buf = [0u8; 8];
    assert_eq!((&open).read(&mut buf).unwrap_or(0), 0);
    proxy.proc.wait_for("the device closed stream 1", SOON);
    assert!(agent.output().contains("received SIGTERM"));
    // Not a performance figure: the orderly stop must not have fallen back to the watchdog.
    assert!(
        !agent.output().contains("took too long"),
        "{}",
        agent.output()
    );
    eprintln!("agent exited {took:?} after SIGTERM");
}

#[test]
fn sigint_while_backing_off_exits_zero() {
    let mut agent = agent("127.0.0.1:9".parse().unwrap(), &[]);
    agent.wait_for("reconnecting in", SOON);
    agent.signal("INT");
    let status = agent
        .wait_exit(SOON)
        .expect("agent still running after SIGINT");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn proxy_closes_public_connection_when_device_is_offline() {
    let proxy = Proxy::for_ports(&[22], &[]);
    let mut c = TcpStream::connect(proxy.tunnels[0]).unwrap();
    c.set_read_timeout(Some(SOON)).unwrap();
    let mut buf = [0u8; 4];
    assert_eq!(c.read(&mut buf).unwrap_or(0), 0);
    proxy.proc.wait_for("has no agent online", SOON);
}

#[test]
fn a_new_device_connection_replaces_the_old_one() {
    use std::io::{BufRead, BufReader, Write};
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    // A second connection for the same device, made by hand.
    let mut other = TcpStream::connect(proxy.control).unwrap();
    other
        .write_all(format!("{{\"token\":\"{TOKEN}\",\"name\":\"{KEY}\"}}\n").as_bytes())
        .unwrap();
    let mut reply = String::new();
    BufReader::new(other.try_clone().unwrap())
        .read_line(&mut reply)
        .unwrap();
    assert!(reply.contains("authenticated"), "{reply}");
    proxy.proc.wait_for("replaces the one from", SOON);
    // The replaced session is logged as replaced, not as closed by the device.
    proxy.proc.wait_for(
        "disconnected: replaced by a new connection from 127.0.0.1:",
        SOON,
    );
    // The agent was told, and by whom.
    let told = agent.wait_for("replaced this connection with a new one", SOON);
    let by = other.local_addr().unwrap().to_string();
    assert!(told.ends_with(&format!("from {by}")), "{told}");
    // The hand-made connection goes away; the agent comes back and carries data again.
    drop(other);
    proxy.wait_agent(3);
    assert_eq!(echo_through(proxy.tunnels[0], b"routed"), b"routed");
}
