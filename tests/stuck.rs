//! What one stuck local service costs the rest of the device: a service that accepts and
//! never reads is closed after `local_write_timeout` while the other channels go on; a slow
//! one is never killed; a stop or the proxy leaving is noticed at once even while the control
//! loop waits on it. The proxy here is the test, speaking frames on a real socket.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use support::*;
use tunnel_agent::protocol::frame::{encode_header, open_frame, Frame, TYPE_DATA};

/// Payload of the `D` frames pushed at the agent.
const CHUNK: usize = 64 * 1024;

/// A local service that accepts connections and never reads from them.
fn deaf_server() -> (u16, mpsc::Receiver<TcpStream>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for c in l.incoming().flatten() {
            // Held by the receiver, unread, for as long as the test runs.
            if tx.send(c).is_err() {
                break;
            }
        }
    });
    (port, rx)
}

fn data_frame(stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = encode_header(TYPE_DATA, stream, payload.len() as u32).to_vec();
    f.extend_from_slice(payload);
    f
}

/// Pushes `total` bytes of `D` frames for `stream` on a thread of its own (the agent may stop
/// reading), then `after` if given; the thread ends when done or when the socket fails.
fn push(
    s: &TcpStream,
    stream: u32,
    total: usize,
    after: Option<Vec<u8>>,
) -> thread::JoinHandle<()> {
    let mut w = s.try_clone().unwrap();
    thread::spawn(move || {
        let frame = data_frame(stream, &[b'x'; CHUNK]);
        for _ in 0..total / CHUNK {
            if w.write_all(&frame).is_err() {
                return;
            }
        }
        if let Some(tail) = after {
            let _ = w.write_all(&tail);
        }
    })
}

/// Opens `stream` to `port` and waits until the local service accepted it.
fn open_to(
    s: &mut TcpStream,
    stream: u32,
    port: u16,
    accepted: &mpsc::Receiver<TcpStream>,
) -> TcpStream {
    s.write_all(&open_frame(stream, port)).unwrap();
    accepted
        .recv_timeout(SOON)
        .expect("the agent did not connect to the local service")
}

fn peak_rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmHWM:")
}

/// A bound far below what the tests push through, far above what the agent needs.
const RSS_BOUND_KIB: u64 = 16 * 1024;

#[test]
fn a_service_that_never_reads_is_closed_after_the_timeout_and_the_others_go_on() {
    let (deaf, accepted) = deaf_server();
    let echo = echo_server();
    let fake = FakeProxy::start();
    let (deaf_s, echo_s) = (deaf.to_string(), echo.to_string());
    let agent = agent(
        fake.addr,
        &[
            "--allow-port",
            &deaf_s,
            "--allow-port",
            &echo_s,
            "--local-write-timeout",
            "2",
        ],
    );
    let (mut s, mut r) = fake.session();
    let _held = open_to(&mut s, 1, deaf, &accepted);
    s.write_all(&open_frame(2, echo)).unwrap();
    s.write_all(&data_frame(2, b"before")).unwrap();
    assert_eq!(
        r.next_frame().unwrap(),
        Some(Frame::Data {
            stream: 2,
            payload: &b"before"[..]
        })
    );

    // 32 MiB for the deaf service, far more than the sockets on the way hold, then a message
    // for the echo service behind them.
    let pusher = push(&s, 1, 32 << 20, Some(data_frame(2, b"after the stall")));
    let notice = agent.wait_for("has taken no data for", SOON);
    let stalled = Instant::now();
    assert!(
        notice.contains("channel 1") && notice.contains(&format!("127.0.0.1:{deaf}")),
        "{notice}"
    );
    let mut closed = false;
    loop {
        match r
            .next_frame()
            .unwrap()
            .expect("the agent closed the control connection")
        {
            Frame::Close { stream: 1 } => closed = true,
            Frame::Data { stream: 2, payload } => {
                assert_eq!(payload, b"after the stall");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let waited = stalled.elapsed();
    assert!(
        closed,
        "the stuck channel was not closed with C before the others moved again"
    );
    // The notice comes after 1 s without progress, the close 2 s after the last progress.
    assert!(
        waited < Duration::from_secs(2 + 5),
        "the echo channel waited {waited:?}"
    );
    let warn = agent.wait_for("took no data for", SOON);
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains("channel 1") && warn.contains(&format!("127.0.0.1:{deaf}")),
        "{warn}"
    );
    assert!(
        warn.contains("bytes from the proxy were not delivered"),
        "{warn}"
    );
    let secs: f64 = warn
        .split("took no data for ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        secs >= 2.0,
        "closed after {secs} s, before local_write_timeout:\n{warn}"
    );
    assert_eq!(
        agent.count("bytes from the proxy were not delivered"),
        1,
        "{}",
        agent.output()
    );
    pusher.join().unwrap();
    // The echo channel still answers, on the same control connection.
    s.write_all(&data_frame(2, b"still")).unwrap();
    assert_eq!(
        r.next_frame().unwrap(),
        Some(Frame::Data {
            stream: 2,
            payload: &b"still"[..]
        })
    );
    assert_eq!(agent.count("connection lost"), 0);
    let rss = peak_rss_kib(agent.pid());
    assert!(
        rss < RSS_BOUND_KIB,
        "peak RSS {rss} KiB with 32 MiB pushed at a stuck service"
    );
}

/// A local service that reads at about `rate` bytes per second and reports what it got.
fn slow_server(rate: f64) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let start = Instant::now();
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            // Pacing, not waiting for an event: keep to `rate` on average.
            let due = Duration::from_secs_f64(got.len() as f64 / rate);
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                thread::sleep(ahead);
            }
        }
        let _ = tx.send(got);
    });
    (port, rx)
}

#[test]
fn a_slow_service_gets_every_byte_at_its_own_pace_and_is_never_closed() {
    const TOTAL: usize = 6 << 20;
    let (slow, got) = slow_server(1e6);
    let fake = FakeProxy::start();
    let slow_s = slow.to_string();
    // A timeout far shorter than the transfer: only a service that takes nothing is closed.
    let agent = agent(
        fake.addr,
        &["--allow-port", &slow_s, "--local-write-timeout", "1", "-v"],
    );
    let (mut s, mut r) = fake.session();
    s.write_all(&open_frame(1, slow)).unwrap();
    let data = random_bytes(TOTAL, 7);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let started = Instant::now();
    let pusher = thread::spawn(move || {
        for piece in sent.chunks(CHUNK) {
            w.write_all(&data_frame(1, piece)).unwrap();
        }
        // The proxy's close: the service gets everything, then end of file.
        w.write_all(&tunnel_agent::protocol::frame::close_frame(1))
            .unwrap();
    });
    let got = got
        .recv_timeout(SOON * 2)
        .expect("the slow service never saw end of file");
    let took = started.elapsed();
    pusher.join().unwrap();
    assert!(
        got.len() == TOTAL && got == data,
        "{} of {TOTAL} bytes arrived intact",
        got.len()
    );
    // It went through the channel's queue, at the service's pace, past the 1 s timeout.
    agent.wait_for("takes data slower than it comes", SOON);
    assert!(
        took > Duration::from_secs(2),
        "{took:?}: the service was not slow"
    );
    assert_eq!(agent.count("took no data for"), 0, "{}", agent.output());
    let line = agent.wait_for("channel 1 closed", SOON);
    assert!(
        line.contains(&format!("{TOTAL} bytes down")) && line.contains("closed by the proxy"),
        "{line}"
    );
    // Nothing came back on the stream: no C from the agent, which had nothing to say.
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    assert!(r.next_frame().is_err(), "unexpected frame from the agent");
    let rss = peak_rss_kib(agent.pid());
    assert!(rss < RSS_BOUND_KIB, "peak RSS {rss} KiB");
}

/// An agent whose control loop is waiting on a deaf service: the session, the agent and the
/// held local connection.
struct Stuck {
    agent: Proc,
    s: TcpStream,
    pusher: thread::JoinHandle<()>,
    fake: FakeProxy,
    _held: TcpStream,
    _deaf: mpsc::Receiver<TcpStream>,
}

fn stuck_agent() -> Stuck {
    let (deaf, accepted) = deaf_server();
    let fake = FakeProxy::start();
    let deaf_s = deaf.to_string();
    // The default local_write_timeout (15 s): the agent stays stuck for the whole test.
    let agent = agent(fake.addr, &["--allow-port", &deaf_s]);
    let (mut s, _r) = fake.session();
    let held = open_to(&mut s, 1, deaf, &accepted);
    let pusher = push(&s, 1, 64 << 20, None);
    agent.wait_for("has taken no data for", SOON);
    Stuck {
        agent,
        s,
        pusher,
        fake,
        _held: held,
        _deaf: accepted,
    }
}

#[test]
fn the_proxy_resetting_while_a_local_write_is_stuck_is_noticed_and_the_agent_reconnects() {
    let Stuck {
        agent,
        s,
        pusher,
        fake,
        _held: held,
        _deaf: deaf,
    } = stuck_agent();
    // The proxy's own send buffer is full (the agent stopped reading), so a FIN would wait
    // behind the data for ever; what reaches the agent is a reset.
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    s.shutdown(std::net::Shutdown::Both).unwrap();
    pusher.join().unwrap();
    let closed = Instant::now();
    drop(s);
    let warn = agent.wait_for("reset the control connection while", SOON);
    let lost = agent.wait_for("connection lost after", SOON);
    let noticed = closed.elapsed();
    assert!(
        warn.contains("WARN") && warn.contains("bytes for 127.0.0.1:"),
        "{warn}"
    );
    // The reset is reported by whichever of the reader and the writer meets it first; the
    // other sees the end of the connection.
    assert!(lost.contains("WARN"), "{lost}");
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}"
    );
    let (_again, line) = fake.next();
    assert!(line.contains(KEY), "{line}");
    drop((held, deaf));
}

#[test]
fn sigterm_while_a_local_write_is_stuck_exits_zero_in_an_orderly_way() {
    let mut st = stuck_agent();
    let asked = Instant::now();
    st.agent.signal("TERM");
    let status = st.agent.wait_exit(SOON).expect("the agent did not exit");
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    // The forced exit after 0.9 s would also say 0; the orderly one writes no such line.
    assert_eq!(
        st.agent.count("orderly stop took too long"),
        0,
        "{}",
        st.agent.output()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}
