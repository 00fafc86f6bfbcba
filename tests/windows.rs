//! One slow reader costs only its own stream (issue 40), through the real binaries: a
//! terminal (1-byte round trips every 50 ms) on one stream of a device while other streams of
//! the same device upload to a local service and download to a public client that both read
//! about 40 KB/s; readers that take nothing at all; 64 slow streams at once, and what they
//! cost in memory on each side. Every byte of every transfer is checked.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::relay::{frame_types, Tap};
use support::*;
use tunnel_agent::protocol::frame::{
    close_frame, open_frame, window_frame, write_frame, Frame, FrameError, FrameReader, TYPE_DATA,
};

/// The pace of a slow reader, in bytes a second (0: as fast as it can), changeable while it
/// reads; and how many bytes it took so far.
#[derive(Default)]
struct Pace {
    rate: AtomicU64,
    taken: AtomicU64,
}

impl Pace {
    fn new(rate: u64) -> Arc<Pace> {
        let p = Pace::default();
        p.rate.store(rate, Ordering::SeqCst);
        Arc::new(p)
    }

    fn taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }
}

/// Reads `from` at `pace` (4 KiB sips, on a small receive buffer), checking each byte against
/// `want`; returns how many bytes matched before the end, and the first that did not.
fn read_paced(mut from: TcpStream, pace: &Pace, want: &[u8]) -> (usize, Option<usize>) {
    let mut buf = vec![0u8; 4096];
    let mut got = 0usize;
    // The pace is kept from when it was last set.
    let (mut since, mut at, mut rate) = (Instant::now(), 0usize, pace.rate.load(Ordering::SeqCst));
    loop {
        let now_rate = pace.rate.load(Ordering::SeqCst);
        if now_rate != rate {
            (since, at, rate) = (Instant::now(), got, now_rate);
        }
        if rate > 0 {
            let due = since + Duration::from_secs_f64((got - at) as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait.min(Duration::from_millis(100)));
                continue;
            }
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return (got, None),
            Ok(n) => n,
        };
        if got + n > want.len() || buf[..n] != want[got..got + n] {
            let first = (0..n)
                .find(|i| want.get(got + i) != Some(&buf[*i]))
                .unwrap_or(0);
            return (got, Some(got + first));
        }
        got += n;
        pace.taken.store(got as u64, Ordering::SeqCst);
    }
}

/// A local service that reads its one connection at `pace`, checking it against `want`.
fn slow_service(pace: Arc<Pace>, want: Arc<Vec<u8>>) -> (u16, JoinHandle<(usize, Option<usize>)>) {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(16 * 1024).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    sock.listen(4).unwrap();
    let l: TcpListener = sock.into();
    let port = l.local_addr().unwrap().port();
    let h = thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        read_paced(c, &pace, &want)
    });
    (port, h)
}

/// A local service that sends `data` to its one connection as fast as it is taken, then
/// closes it; counts what it wrote in `sent`.
fn source_service(data: Arc<Vec<u8>>, sent: Arc<AtomicU64>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        for piece in data.chunks(16 * 1024) {
            if c.write_all(piece).is_err() {
                return;
            }
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        let _ = c.shutdown(Shutdown::Write);
    });
    port
}

/// Round trips of one byte every 50 ms through `public` (an echo behind it) for `span`: the
/// 99th percentile and the slowest.
fn terminal(public: SocketAddr, span: Duration) -> (Duration, Duration) {
    let mut c = TcpStream::connect(public).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut rtts = Vec::new();
    let until = Instant::now() + span;
    let mut b = [0u8; 1];
    while Instant::now() < until {
        let t = Instant::now();
        c.write_all(b"x").unwrap();
        c.read_exact(&mut b).unwrap();
        rtts.push(t.elapsed());
        thread::sleep(Duration::from_millis(50));
    }
    rtts.sort();
    let p99 = rtts[(rtts.len() * 99 / 100).min(rtts.len() - 1)];
    (p99, *rtts.last().unwrap())
}

/// Waits until `f` holds, looking every 50 ms, at most `limit`.
fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < end, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The tests that measure round trips, and the one that loads the machine with 64 streams,
/// take turns: each measures its own tunnel, not its neighbour's load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

const SLOW: u64 = 40_000;
const BIG: usize = 64 << 20;

#[test]
fn a_slow_local_service_and_a_slow_public_client_cost_only_their_own_streams() {
    let _turn = one_at_a_time();
    let seed = 40 + std::process::id() as u64 % 1000;
    eprintln!("seed {seed}");
    let up_data = Arc::new(random_bytes(BIG, seed));
    let down_data = Arc::new(random_bytes(BIG, seed + 1));
    let echo = echo_server();
    let service_pace = Pace::new(SLOW);
    let (slow, service) = slow_service(service_pace.clone(), up_data.clone());
    let source = source_service(down_data.clone(), Arc::new(AtomicU64::new(0)));
    let proxy = Proxy::for_ports(&[echo, slow, source], &[]);
    let agent = proxy.agent(&[]);
    proxy.wait_agent(1);
    agent.wait_for("windows: at most 256 KiB of a stream", SOON);
    let (idle_p99, idle_max) = terminal(proxy.tunnels[0], Duration::from_secs(3));

    // The upload: the public client sends 64 MiB, then closes its side (the stream's close
    // races the tail it sent).
    let (to, data) = (proxy.tunnels[1], up_data.clone());
    let upload = thread::spawn(move || {
        let mut c = TcpStream::connect(to).unwrap();
        c.write_all(&data).unwrap();
        c.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = c.read_to_end(&mut rest);
    });
    // The download, to a public client reading 40 KB/s on a small receive buffer.
    let client_pace = Pace::new(SLOW);
    let client = connect_from(
        "127.0.0.1".parse().unwrap(),
        proxy.tunnels[2],
        Some(16 * 1024),
    )
    .unwrap();
    let (pace, want) = (client_pace.clone(), down_data.clone());
    let download = thread::spawn(move || read_paced(client, &pace, &want));

    // Both slow readers behind full windows, then the terminal.
    until("both slow readers reading", SOON, || {
        service_pace.taken() > 100_000 && client_pace.taken() > 100_000
    });
    let before = (service_pace.taken(), client_pace.taken());
    let (p99, max) = terminal(proxy.tunnels[0], Duration::from_secs(15));
    let during = (
        service_pace.taken() - before.0,
        client_pace.taken() - before.1,
    );
    eprintln!(
        "terminal idle: p99 {idle_p99:?}, max {idle_max:?}; beside a 40 KB/s upload and a 40 KB/s \
         download: p99 {p99:?}, max {max:?}; meanwhile the local service took {} bytes and the \
         public client {} bytes",
        during.0, during.1
    );
    assert!(
        p99 <= idle_p99 + Duration::from_millis(10),
        "the terminal's p99 went from {idle_p99:?} to {p99:?}"
    );
    assert!(max < Duration::from_millis(500), "a stall of {max:?}");
    // Both went on at their pace meanwhile (15 s at 40 KB/s: 600 kB).
    for (who, n) in [("local service", during.0), ("public client", during.1)] {
        assert!(n > 300_000, "the slow {who} took only {n} bytes in 15 s");
    }

    // Given the time (readers at full speed now), both finish intact.
    service_pace.rate.store(0, Ordering::SeqCst);
    client_pace.rate.store(0, Ordering::SeqCst);
    let (got, bad) = download.join().unwrap();
    assert_eq!(bad, None, "download: byte {bad:?} differs (seed {seed})");
    assert_eq!(got, BIG, "download: {got} of {BIG} bytes (seed {seed})");
    upload.join().unwrap();
    let (got, bad) = service.join().unwrap();
    assert_eq!(bad, None, "upload: byte {bad:?} differs (seed {seed})");
    assert_eq!(got, BIG, "upload: {got} of {BIG} bytes (seed {seed})");
    // Nothing was cut, and nobody waited on anybody.
    let (a, p) = (agent.output(), proxy.proc.output());
    for said in ["took no data", "every channel waits", "undelivered"] {
        assert!(!a.contains(said), "agent: {said}\n{a}");
    }
    for said in ["no room", "cut:", "not delivered"] {
        assert!(!p.contains(said), "proxy: {said}\n{p}");
    }
}

#[test]
fn a_reader_that_takes_nothing_is_still_cut_by_its_bound_and_the_others_go_on() {
    let _turn = one_at_a_time();
    let echo = echo_server();
    // A local service that never reads, and a source for a public client that never reads.
    let stuck = TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_port = stuck.local_addr().unwrap().port();
    let held = thread::spawn(move || stuck.accept().map(|(c, _)| c));
    let sent = Arc::new(AtomicU64::new(0));
    let source = source_service(Arc::new(random_bytes(BIG, 3)), sent.clone());
    let proxy = Proxy::for_ports(&[echo, stuck_port, source], &["--send-timeout", "3"]);
    let agent = proxy.agent(&["--local-write-timeout", "3"]);
    proxy.wait_agent(1);
    agent.wait_for("windows: at most", SOON);

    let mut up = TcpStream::connect(proxy.tunnels[1]).unwrap();
    up.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let upload = thread::spawn(move || {
        let data = random_bytes(8 << 20, 4);
        let _ = up.write_all(&data);
    });
    let down = connect_from(
        "127.0.0.1".parse().unwrap(),
        proxy.tunnels[2],
        Some(16 * 1024),
    )
    .unwrap();
    // While both stall, the terminal answers.
    let (p99, max) = terminal(proxy.tunnels[0], Duration::from_secs(2));
    eprintln!("terminal beside two readers taking nothing: p99 {p99:?}, max {max:?}");
    assert!(max < Duration::from_millis(500), "a stall of {max:?}");
    let cut = agent.wait_for("took no data for", SOON);
    assert!(cut.contains("local_write_timeout"), "{cut}");
    let cut = proxy.proc.wait_for("cut: ", SOON);
    assert!(
        cut.contains("took no data") || cut.contains("took nothing"),
        "{cut}"
    );
    // The source was held to what the windows and the buffers took: far from its 64 MiB.
    assert!(sent.load(Ordering::SeqCst) < 16 << 20);
    assert_eq!(echo_through(proxy.tunnels[0], b"still here"), b"still here");
    drop(down);
    upload.join().unwrap();
    drop(held);
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, "VmRSS:")
}

#[test]
fn sixty_four_stuck_streams_hold_at_most_their_window_each_on_each_side() {
    let _turn = one_at_a_time();
    const EACH: usize = 32;
    const WINDOW: u64 = 256 * 1024;
    // 32 uploads to local services and 32 downloads to public clients, none of which reads
    // (within the bounds, set long): the slowest readers there are.
    let mut services = Vec::new();
    let mut stuck = Vec::new();
    for _ in 0..EACH {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        services.push(l.local_addr().unwrap().port());
        stuck.push(thread::spawn(move || l.accept().map(|(c, _)| c)));
    }
    let sources: Vec<Arc<AtomicU64>> = (0..EACH).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let data = Arc::new(random_bytes(16 << 20, 64));
    let mut ports = services.clone();
    for s in &sources {
        ports.push(source_service(data.clone(), s.clone()));
    }
    let echo = echo_server();
    ports.push(echo);
    let proxy = Proxy::for_ports(
        &ports,
        &["--send-timeout", "120", "--max-public-per-address", "100"],
    );
    let agent = proxy.agent(&["--local-write-timeout", "120", "--max-channels", "80"]);
    proxy.wait_agent(1);
    agent.wait_for("windows: at most", SOON);
    assert_eq!(echo_through(proxy.tunnels[2 * EACH], b"warm"), b"warm");
    let base = (rss_kib(agent.pid()), rss_kib(proxy.proc.pid()));

    let written: Vec<Arc<AtomicU64>> = (0..EACH).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut clients = Vec::new();
    for (i, w) in written.iter().enumerate() {
        let (to, w, data) = (proxy.tunnels[i], w.clone(), data.clone());
        clients.push(thread::spawn(move || {
            let mut c = TcpStream::connect(to).unwrap();
            for piece in data.chunks(16 * 1024) {
                if c.write_all(piece).is_err() {
                    break;
                }
                w.fetch_add(piece.len() as u64, Ordering::SeqCst);
            }
            c
        }));
    }
    let readers: Vec<TcpStream> = (0..EACH)
        .map(|i| {
            connect_from(
                "127.0.0.1".parse().unwrap(),
                proxy.tunnels[EACH + i],
                Some(16 * 1024),
            )
            .unwrap()
        })
        .collect();
    // Full: nothing more moves for a second.
    let total = || {
        written
            .iter()
            .chain(sources.iter())
            .map(|c| c.load(Ordering::SeqCst))
            .sum::<u64>()
    };
    let mut last = (total(), Instant::now());
    until("every window full", Duration::from_secs(60), || {
        let now = total();
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() > Duration::from_secs(1)
    });
    let full = (rss_kib(agent.pid()), rss_kib(proxy.proc.pid()));
    let grew = (full.0.saturating_sub(base.0), full.1.saturating_sub(base.1));
    let per = |kib: u64| kib as f64 / (2 * EACH) as f64;
    eprintln!(
        "64 slow streams: agent RSS {} -> {} KiB (+{:.0} KiB a stream), meeting-proxy {} -> {} \
         KiB (+{:.0} KiB a stream); window {} KiB; {} MiB sent in all",
        base.0,
        full.0,
        per(grew.0),
        base.1,
        full.1,
        per(grew.1),
        WINDOW / 1024,
        total() >> 20
    );
    // Each side holds at most a window for each stream it receives (grown to 4 windows for
    // a reader that took everything at first: these did, until their kernel buffers were
    // full), in two buffers at most as large (the queue, and the piece its thread is
    // writing), and for every stream a thread and some frames in flight.
    let bound = (EACH as u64 * 2 * 4 * WINDOW + (2 * EACH) as u64 * 160 * 1024) / 1024;
    assert!(grew.0 <= bound, "agent grew {} KiB (bound {bound})", grew.0);
    assert!(grew.1 <= bound, "proxy grew {} KiB (bound {bound})", grew.1);
    // The terminal still answers at once.
    let (p99, max) = terminal(proxy.tunnels[2 * EACH], Duration::from_secs(2));
    assert!(max < Duration::from_millis(500), "p99 {p99:?}, max {max:?}");
    drop(readers);
    drop(stuck);
    drop(clients);
}

/// What one side sent until it fell quiet for half a second (its window used up, or nothing
/// more to send): data bytes per stream, grants per stream, and every frame type in order.
#[derive(Default, Debug)]
struct Heard {
    data: std::collections::HashMap<u32, Vec<u8>>,
    granted: std::collections::HashMap<u32, u64>,
    types: Vec<u8>,
}

fn listen_quiet(r: &mut FrameReader<TcpStream>, sock: &TcpStream, heard: &mut Heard) {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    loop {
        let frame = match r.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => panic!("the other side closed"),
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return
            }
            Err(e) => panic!("{e}"),
        };
        match frame {
            Frame::Data { stream, payload } => {
                heard.types.push(b'D');
                heard
                    .data
                    .entry(stream)
                    .or_default()
                    .extend_from_slice(payload);
            }
            Frame::Window { stream, grant } => {
                heard.types.push(b'W');
                *heard.granted.entry(stream).or_default() += u64::from(grant);
            }
            Frame::Open { .. } => heard.types.push(b'N'),
            Frame::Close { .. } => heard.types.push(b'C'),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn sent_on(heard: &Heard, stream: u32) -> usize {
    heard.data.get(&stream).map_or(0, Vec::len)
}

/// The agent against a scripted proxy that announces 16 KiB windows: it says it keeps to
/// them, sends a stream no more than the window until granted, and grants what its local
/// service took, half a window at a time.
#[test]
fn the_agent_keeps_to_the_window_and_grants_what_its_service_took() {
    const W: u32 = 16 * 1024;
    let data = Arc::new(random_bytes(1 << 20, 51));
    let source = source_service(data.clone(), Arc::new(AtomicU64::new(0)));
    let pace = Pace::new(0);
    let down = Arc::new(random_bytes(200_000, 52));
    let (sink_port, service) = slow_service(pace.clone(), down.clone());
    let fake = FakeProxy::start();
    let allow = [source.to_string(), sink_port.to_string()];
    let agent = agent(
        fake.addr,
        &["--allow-port", &allow[0], "--allow-port", &allow[1]],
    );
    let (mut s, _) = fake.next();
    s.write_all(format!("{{\"status\":\"authenticated\",\"window\":{W}}}\n").as_bytes())
        .unwrap();
    let mut r = FrameReader::new(s.try_clone().unwrap(), 1 << 20);
    s.set_read_timeout(Some(SOON)).unwrap();
    // Its first frame: W on stream 0, the window.
    assert_eq!(
        r.next_frame().unwrap(),
        Some(Frame::Window {
            stream: 0,
            grant: W
        })
    );
    agent.wait_for("windows: at most 16 KiB", SOON);

    // Up: exactly a window, then nothing until a grant; then exactly the grant.
    s.write_all(&open_frame(1, source)).unwrap();
    let mut heard = Heard::default();
    listen_quiet(&mut r, &s, &mut heard);
    assert_eq!(sent_on(&heard, 1), W as usize, "{:?}", heard.types);
    s.write_all(&window_frame(1, 5000)).unwrap();
    listen_quiet(&mut r, &s, &mut heard);
    assert_eq!(sent_on(&heard, 1), W as usize + 5000);
    // A grant for a stream that is not open, and one on a stream it never had: ignored.
    s.write_all(&window_frame(77, 1 << 20)).unwrap();
    s.write_all(&window_frame(1, (1 << 20) - W - 5000)).unwrap();
    while sent_on(&heard, 1) < 1 << 20 {
        listen_quiet(&mut r, &s, &mut heard);
    }
    assert!(heard.data[&1] == *data, "the upload's bytes differ");

    // Down: the proxy keeps to the window (a window at a time, then waits for grants); the
    // agent grants what its service took, W/2 at a time, never more.
    s.write_all(&open_frame(2, sink_port)).unwrap();
    let mut sent = 0usize;
    let mut granted = 0u64;
    while sent < down.len() {
        let room = (W as u64 + granted - sent as u64) as usize;
        let n = room.min(down.len() - sent);
        if n > 0 {
            write_frame(&mut s, TYPE_DATA, 2, &down[sent..sent + n]).unwrap();
            sent += n;
        }
        let mut h = Heard::default();
        listen_quiet(&mut r, &s, &mut h);
        let g = h.granted.get(&2).copied().unwrap_or(0);
        granted += g;
        // What the service took and, as it keeps up, the window grown to 4 windows at most.
        assert!(
            granted <= pace.taken() + 3 * u64::from(W),
            "granted {granted}, taken {}",
            pace.taken()
        );
        assert!(
            n > 0 || g > 0,
            "no grant with {sent} sent and {} taken",
            pace.taken()
        );
    }
    s.write_all(&close_frame(2)).unwrap();
    let (got, bad) = service.join().unwrap();
    assert_eq!((got, bad), (down.len(), None));
    assert!(!agent.output().contains("unknown"), "{}", agent.output());
}

/// meeting-proxy with 16 KiB windows against a scripted agent: nothing kept until the agent
/// says it keeps to windows; from then on a stream opened before is held to its window
/// counted from its first byte; grants as its client reads.
#[test]
fn meeting_proxy_keeps_to_windows_only_once_the_agent_says_it_does() {
    const W: usize = 16 * 1024;
    let port = 4000u16;
    let proxy = Proxy::for_ports(&[port], &["--window", "16384"]);
    let mut s = TcpStream::connect(proxy.control).unwrap();
    s.write_all(format!("{{\"token\": \"{TOKEN}\", \"name\": \"{KEY}\"}}\n").as_bytes())
        .unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let reply: serde_json::Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(reply["window"], 16384, "{reply}");
    proxy.wait_agent(1);
    let mut r = FrameReader::new(s.try_clone().unwrap(), 1 << 20);

    // Before the agent's W on stream 0: today's frames, every byte the client sends.
    let data = random_bytes(200_000, 53);
    let mut client = TcpStream::connect(proxy.tunnels[0]).unwrap();
    client.write_all(&data[..40_000]).unwrap();
    let mut heard = Heard::default();
    while sent_on(&heard, 1) < 40_000 {
        listen_quiet(&mut r, &s, &mut heard);
    }
    assert!(!heard.types.contains(&b'W'), "{:?}", heard.types);

    // Said: the 40 000 bytes already sent count against the window; one read the client's
    // thread had begun before may still go (32 KiB at most), nothing after it.
    s.write_all(&window_frame(0, W as u32)).unwrap();
    proxy
        .proc
        .wait_for(&format!("device {KEY} keeps to per-stream windows"), SOON);
    client.write_all(&data[40_000..]).unwrap();
    listen_quiet(&mut r, &s, &mut heard);
    let held = sent_on(&heard, 1);
    assert!(
        (40_000..=40_000 + 32 * 1024).contains(&held),
        "{held} bytes sent beyond the window"
    );
    s.write_all(&window_frame(1, (held - W + 1000) as u32))
        .unwrap();
    listen_quiet(&mut r, &s, &mut heard);
    assert_eq!(sent_on(&heard, 1), held + 1000, "a grant of 1000");
    s.write_all(&window_frame(1, 1 << 20)).unwrap();
    while sent_on(&heard, 1) < data.len() {
        listen_quiet(&mut r, &s, &mut heard);
    }
    assert!(heard.data[&1] == data);

    // Down: what the agent sends the client is granted as the client takes it.
    let back = random_bytes(W, 54);
    write_frame(&mut s, TYPE_DATA, 1, &back).unwrap();
    let mut got = vec![0u8; W];
    client.read_exact(&mut got).unwrap();
    assert!(got == back);
    let mut h = Heard::default();
    while h.granted.get(&1).copied().unwrap_or(0) < W as u64 {
        listen_quiet(&mut r, &s, &mut h);
    }
    // What the client took and, as it kept up, as much again to grow the window.
    assert!(
        (W as u64..=2 * W as u64).contains(&h.granted[&1]),
        "{} granted: {:?}",
        h.granted[&1],
        h.types
    );
}

/// Without windows, today's bytes: the agent against an independent proxy written from the
/// protocol (which announces nothing), and against meeting-proxy `--window 0`, sends and gets
/// only `N`, `D` and `C` while its tunnel carries data both ways.
#[test]
fn without_windows_each_end_sends_todays_frames() {
    if !may_run(
        "without_windows_each_end_sends_todays_frames",
        &[tool("python3", "python3")],
    ) {
        return;
    }
    let echo = echo_server();
    let independent = Proc::spawn(
        "python3",
        &[
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/python_proxy.py"),
            &echo.to_string(),
        ],
        &[],
    );
    let port_after = |what: &str| -> u16 {
        let line = independent.wait_for(what, SOON);
        line.rsplit(' ').next().unwrap().trim().parse().unwrap()
    };
    let (agents, public) = (port_after("agents on "), port_after("public on "));
    let ours = Proxy::for_ports(&[echo], &["--window", "0"]);
    let mut seen = Vec::new();
    for (name, control, through) in [
        (
            "the independent proxy",
            SocketAddr::from(([127, 0, 0, 1], agents)),
            SocketAddr::from(([127, 0, 0, 1], public)),
        ),
        ("meeting-proxy --window 0", ours.control, ours.tunnels[0]),
    ] {
        let tap = Tap::start(control);
        let a = agent(tap.addr, &["--allow-port", &echo.to_string()]);
        a.wait_for("tunnel ready", SOON);
        if name.starts_with("meeting-proxy") {
            ours.wait_agent(1);
        } else {
            independent.wait_for("agent authenticated", SOON);
        }
        let data = random_bytes(300_000, 55);
        assert!(echo_through(through, &data) == data, "{name}");
        let (up, down) = tap.recorded(0);
        let hello = format!("{{\"token\": \"{TOKEN}\", \"name\": \"{KEY}\"}}\n");
        assert!(up.starts_with(hello.as_bytes()), "{name}");
        let (up, down) = (frame_types(&up), frame_types(&down));
        assert!(up.iter().all(|t| b"DC".contains(t)), "{name}: up {up:?}");
        assert!(
            down.iter().all(|t| b"NDC".contains(t)),
            "{name}: down {down:?}"
        );
        assert!(up.contains(&b'D') && down.contains(&b'N'), "{name}");
        assert!(!a.output().contains("windows"), "{name}: {}", a.output());
        seen.push(format!(
            "{name}: {} frames up, {} down",
            up.len(),
            down.len()
        ));
    }
    assert!(
        !independent.output().contains("skipped"),
        "{}",
        independent.output()
    );
    eprintln!("{}", seen.join("; "));
}

/// Window frames where none were announced: each end ignores them, says so, and goes on.
#[test]
fn window_frames_nobody_announced_are_ignored_with_a_warning() {
    let echo = echo_server();
    let fake = FakeProxy::start();
    let a = agent(fake.addr, &["--allow-port", &echo.to_string()]);
    let (mut s, mut r) = fake.session();
    s.write_all(&window_frame(0, 1 << 20)).unwrap();
    s.write_all(&window_frame(1, 1 << 20)).unwrap();
    a.wait_for(
        "ignoring a window frame from a proxy that did not announce windows",
        SOON,
    );
    s.write_all(&open_frame(1, echo)).unwrap();
    write_frame(&mut s, TYPE_DATA, 1, b"still fine").unwrap();
    match r.next_frame().unwrap() {
        Some(Frame::Data { stream: 1, payload }) => assert_eq!(payload, b"still fine"),
        other => panic!("{other:?}"),
    }

    let proxy = Proxy::for_ports(&[echo], &["--window", "0"]);
    let mut d = TcpStream::connect(proxy.control).unwrap();
    d.write_all(format!("{{\"token\": \"{TOKEN}\", \"name\": \"{KEY}\"}}\n").as_bytes())
        .unwrap();
    proxy.wait_agent(1);
    d.write_all(&window_frame(0, 1 << 20)).unwrap();
    proxy.proc.wait_for(
        "the device sent a window frame though this proxy announced no windows; ignored",
        SOON,
    );
    assert!(!proxy.proc.output().contains("keeps to per-stream windows"));
}
