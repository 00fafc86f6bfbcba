//! The randomized integrity suite: streams through the real `meeting-proxy` and
//! `tunnel-agent`, each with random choices of size, direction, how the public client and the
//! local service read, who closes and when, and how many streams share the device at once.
//! Every byte is checked: each side hashes what it sent and what it received (SHA-256), and a
//! receiver compares every byte with the sender's generator, so a loss says where it starts.
//!
//! A stream whose reader stops for good is cut by a documented bound (meeting-proxy's queue
//! bound, `local_write_timeout`): the suite waits for the cut in the log, checks that it names
//! how many bytes were not delivered, and that what arrived is an exact prefix. Every other
//! stream must arrive whole, or, when one end closes mid-stream, as an exact prefix with both
//! ends done. No bound may cut a stream that is not meant to be cut.
//!
//! Seeded: `INTEGRITY_SEED=<n>` replays a run; the seed is printed on failure.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ring::digest::{Context, SHA256};

use super::process::{Proc, Watcher};

/// Bytes a stream carries at most each way.
pub const MAX_SIZE: u64 = 16 << 20;
/// Concurrent streams (slots) at most: each slot has its own local service port and tunnel.
pub const SLOTS: usize = 12;
/// meeting-proxy's bound for a public client that takes nothing (its `send_timeout` here).
pub const SEND_TIMEOUT: &str = "8";
/// The agent's bound for a local service that takes nothing (`local_write_timeout` here).
pub const LOCAL_WRITE_TIMEOUT: &str = "3";
/// A stream's whole life may not exceed this: past it, the suite reports a hang.
const STREAM_LIMIT: Duration = Duration::from_secs(90);
/// How long a stopped reader waits for its cut to be logged.
const CUT_WAIT: Duration = Duration::from_secs(30);

/// splitmix64: the suite's choices and its data.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    /// True with probability `percent` / 100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// The bytes of one direction of one stream, made and checked in order.
pub struct Data {
    rng: Rng,
    word: [u8; 8],
    used: usize,
    /// Bytes made or checked so far.
    pub at: u64,
    hash: Context,
}

impl Data {
    /// The byte stream of `seed`.
    pub fn new(seed: u64) -> Data {
        Data {
            rng: Rng::new(seed),
            word: [0; 8],
            used: 8,
            at: 0,
            hash: Context::new(&SHA256),
        }
    }

    fn byte(&mut self) -> u8 {
        if self.used == 8 {
            self.word = self.rng.next().to_le_bytes();
            self.used = 0;
        }
        self.used += 1;
        self.word[self.used - 1]
    }

    /// Fills `buf` with the next bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = self.byte();
        }
        self.hash.update(buf);
        self.at += buf.len() as u64;
    }

    /// Checks that `got` are the next bytes; the offset of the first one that is not.
    pub fn check(&mut self, got: &[u8]) -> Result<(), u64> {
        for (i, b) in got.iter().enumerate() {
            if *b != self.byte() {
                return Err(self.at + i as u64);
            }
        }
        self.hash.update(got);
        self.at += got.len() as u64;
        Ok(())
    }

    /// SHA-256 of what was made or checked, hex.
    pub fn digest(self) -> String {
        self.hash
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// How one end reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// As fast as it can.
    Fast,
    /// Starts 1 s late, with a 4 KiB receive buffer.
    Late,
    /// At about this many bytes a second.
    Paced(u64),
    /// Bursts of this many bytes, each followed by a pause of this many ms (under the bounds).
    Bursty(u64, u64),
    /// Reads this many bytes, then nothing more (a 4 KiB receive buffer): a bound must cut it.
    Stops(u64),
}

/// Who closes the stream, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closer {
    /// The local service, right after its last byte (sent and received).
    Service,
    /// The public client, right after its last byte (sent and received).
    Client,
    /// The local service, once this many bytes went through it either way.
    ServiceMid(u64),
    /// The public client, likewise.
    ClientMid(u64),
}

/// One stream's choices.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Its number in the run.
    pub n: usize,
    /// Bytes from the local service to the public client.
    pub down: u64,
    /// Bytes from the public client to the local service.
    pub up: u64,
    /// How the public client reads.
    pub client: Reading,
    /// How the local service reads.
    pub service: Reading,
    /// Who closes.
    pub closer: Closer,
    /// The seed of its bytes.
    pub seed: u64,
}

fn size(rng: &mut Rng) -> u64 {
    match rng.range(0, 99) {
        0..=4 => 0,
        5..=16 => rng.range(4 << 20, MAX_SIZE),
        _ => {
            // Log-uniform from 1 byte to 16 MiB: most streams small, some large.
            let bits = rng.range(0, 24);
            rng.range(1 << bits.saturating_sub(1), (1u64 << bits).min(MAX_SIZE))
        }
    }
}

fn reading(rng: &mut Rng) -> Reading {
    match rng.range(0, 99) {
        0..=34 => Reading::Fast,
        35..=54 => Reading::Late,
        55..=74 => Reading::Paced(rng.range(2 << 20, 16 << 20)),
        _ => Reading::Bursty(rng.range(256 << 10, 4 << 20), rng.range(50, 700)),
    }
}

impl Plan {
    /// Draws stream `n`'s choices.
    pub fn draw(n: usize, rng: &mut Rng) -> Plan {
        let (mut down, mut up) = (size(rng), size(rng));
        match rng.range(0, 2) {
            0 => up = 0,
            1 => down = 0,
            _ => {}
        }
        // The mid-stream close comes once this many bytes went through its end, so at most
        // what goes through it (0: at once).
        let most = down.max(up);
        let closer = match rng.range(0, 9) {
            0..=3 => Closer::Service,
            4..=7 => Closer::Client,
            8 => Closer::ServiceMid(rng.range(0, most)),
            _ => Closer::ClientMid(rng.range(0, most)),
        };
        let mut client = reading(rng);
        let mut service = reading(rng);
        // One stream in 25 has a reader that stops for good, with enough left to fill every
        // buffer on the way, so that a bound must cut it; a mid-stream close would come first.
        let mid = matches!(closer, Closer::ServiceMid(_) | Closer::ClientMid(_));
        if !mid && rng.percent(4) {
            let big = rng.range(14 << 20, MAX_SIZE);
            let after = Reading::Stops(rng.range(0, 256 << 10));
            if rng.percent(50) {
                (down, client) = (big, after);
            } else {
                (up, service) = (big, after);
            }
        }
        Plan {
            n,
            down,
            up,
            client,
            service,
            closer,
            seed: rng.next(),
        }
    }

    /// Whether a reader of it stops for good (a bound must cut it).
    pub fn stops(&self) -> bool {
        matches!(self.client, Reading::Stops(_)) || matches!(self.service, Reading::Stops(_))
    }

    fn mid(&self) -> bool {
        matches!(self.closer, Closer::ServiceMid(_) | Closer::ClientMid(_))
    }
}

/// What one end saw.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    sent_hash: String,
    received: u64,
    received_hash: String,
    /// The first byte that differed from the sender's, if any.
    corrupt_at: Option<u64>,
    /// The read ended with an error rather than end of file (a reset).
    reset: bool,
    /// Something that must not happen (a read timed out: a hang).
    trouble: Option<String>,
}

/// One end's part: its role in the stream.
struct End {
    sock: TcpStream,
    send: u64,
    send_seed: u64,
    expect: u64,
    expect_seed: u64,
    reading: Reading,
    /// Closes once everything went both ways.
    closes: bool,
    /// Closes once this many bytes went through either way.
    closes_mid: Option<u64>,
    /// Called when a stopped reader has read its share: returns once the bound cut it.
    cut_seen: Option<Box<dyn FnOnce() + Send>>,
}

impl End {
    /// Runs the end: a writer thread and the reader (this thread).
    fn run(self) -> Seen {
        let _ = self.sock.set_read_timeout(Some(STREAM_LIMIT));
        let _ = self.sock.set_write_timeout(Some(STREAM_LIMIT));
        let writer = {
            let sock = self.sock.try_clone().expect("clone a socket");
            let (total, seed, mid) = (self.send, self.send_seed, self.closes_mid);
            thread::spawn(move || write_side(sock, total, seed, mid))
        };
        let mut seen = Seen::default();
        let mut data = Data::new(self.expect_seed);
        let mut buf = vec![0u8; 64 * 1024];
        let started = Instant::now();
        let mut burst_left = 0u64;
        if matches!(self.reading, Reading::Late) {
            thread::sleep(Duration::from_secs(1));
        }
        let mut cut_seen = self.cut_seen;
        loop {
            if self.closes && data.at >= self.expect {
                break;
            }
            if self.closes_mid.is_some_and(|at| data.at >= at) {
                break;
            }
            if let Reading::Stops(after) = self.reading {
                if data.at >= after {
                    if let Some(wait) = cut_seen.take() {
                        wait();
                    }
                }
            }
            let want = match self.reading {
                Reading::Paced(_) => 16 * 1024,
                Reading::Stops(after) if data.at < after => {
                    ((after - data.at) as usize).min(buf.len())
                }
                _ => buf.len(),
            };
            let want = if self.closes {
                want.min((self.expect - data.at) as usize).max(1)
            } else {
                want
            };
            match (&self.sock).read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    if seen.corrupt_at.is_none() {
                        if let Err(at) = data.check(&buf[..n]) {
                            seen.corrupt_at = Some(at);
                        }
                    }
                    if seen.corrupt_at.is_some() {
                        data.at += n as u64;
                    }
                    match self.reading {
                        Reading::Paced(rate) => {
                            let due = Duration::from_secs_f64(data.at as f64 / rate as f64);
                            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                                thread::sleep(ahead);
                            }
                        }
                        Reading::Bursty(burst, pause) => {
                            burst_left += n as u64;
                            if burst_left >= burst {
                                burst_left = 0;
                                thread::sleep(Duration::from_millis(pause));
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    seen.trouble = Some(format!(
                        "no byte to read for {STREAM_LIMIT:?} at {}",
                        data.at
                    ));
                    break;
                }
                Err(_) => {
                    seen.reset = true;
                    break;
                }
            }
        }
        // The close, once this end's last byte is sent (mid-stream: at once, which also stops
        // the writer): the other end sees end of file, or a reset with bytes unread here.
        if self.closes_mid.is_some() {
            let _ = self.sock.shutdown(Shutdown::Both);
        }
        let (sent, sent_hash, trouble) = writer.join().expect("the writer thread");
        if self.closes {
            let _ = self.sock.shutdown(Shutdown::Both);
        }
        if seen.trouble.is_none() {
            seen.trouble = trouble;
        }
        seen.sent = sent;
        seen.sent_hash = sent_hash;
        seen.received = data.at;
        seen.received_hash = data.digest();
        let _ = self.sock.shutdown(Shutdown::Both);
        seen
    }
}

/// Writes `total` bytes of `seed` in random pieces: what was sent, its hash, and any hang.
fn write_side(
    mut sock: TcpStream,
    total: u64,
    seed: u64,
    mid: Option<u64>,
) -> (u64, String, Option<String>) {
    let mut data = Data::new(seed);
    let mut pieces = Rng::new(seed ^ 0x5EED);
    let mut buf = vec![0u8; 64 * 1024];
    let mut trouble = None;
    while data.at < total {
        let n = (pieces.range(1, buf.len() as u64)).min(total - data.at) as usize;
        let n = match mid {
            // The mid-stream closer sends no byte past its close.
            Some(at) if data.at + n as u64 > at => (at.saturating_sub(data.at)) as usize,
            _ => n,
        };
        if n == 0 {
            break;
        }
        data.fill(&mut buf[..n]);
        if let Err(e) = sock.write_all(&buf[..n]) {
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                trouble = Some(format!(
                    "no room to write for {STREAM_LIMIT:?} at {}",
                    data.at
                ));
            }
            // Bytes of the failed write may or may not have left: count none of them.
            data.at -= n as u64;
            break;
        }
    }
    if mid.is_some_and(|at| data.at >= at) {
        // The mid-stream close, once this many bytes are sent: the reader stops too.
        let _ = sock.shutdown(Shutdown::Both);
    }
    let at = data.at;
    (at, data.digest(), trouble)
}

/// The device's side of the tunnel in the suite: per slot, one local service port whose
/// connections have the system's receive buffer, and one whose connections have 4 KiB (set on
/// the listening socket, as a buffer set after the handshake keeps the window it announced).
pub struct Services {
    /// The ports: every slot's ordinary one, then every slot's small-buffered one.
    pub ports: Vec<u16>,
    accepted: Vec<Mutex<mpsc::Receiver<TcpStream>>>,
}

impl Services {
    /// The local services of `slots` slots.
    pub fn start(slots: usize) -> Services {
        let mut ports = Vec::new();
        let mut accepted = Vec::new();
        for i in 0..2 * slots {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("a socket");
            if i >= slots {
                sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            }
            let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
            sock.bind(&any.into()).expect("a local service port");
            sock.listen(64).expect("listen");
            let l: TcpListener = sock.into();
            ports.push(l.local_addr().unwrap().port());
            let (tx, rx) = mpsc::channel();
            thread::spawn(move || {
                for c in l.incoming().flatten() {
                    if tx.send(c).is_err() {
                        break;
                    }
                }
            });
            accepted.push(Mutex::new(rx));
        }
        Services { ports, accepted }
    }

    fn slots(&self) -> usize {
        self.ports.len() / 2
    }
}

/// A tunnel under test: the public address of each slot, and the two processes' logs.
pub struct Tunnel<'a> {
    /// Public address of each slot's tunnel, as meeting-proxy bound it.
    pub public: Vec<SocketAddr>,
    /// The local services behind them.
    pub services: &'a Services,
    /// meeting-proxy.
    pub proxy: &'a Proc,
    /// tunnel-agent.
    pub agent: &'a Proc,
    /// What the run is called in reports.
    pub name: &'a str,
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Streams run.
    pub streams: usize,
    /// Bytes received, both ways.
    pub bytes: u64,
    /// Streams a bound cut, as they were meant to be.
    pub cut: usize,
    /// Streams closed mid-stream by one end.
    pub mid: usize,
}

/// The stream id meeting-proxy gave the connection from `client` (the newest one logged).
fn stream_id(proxy: &Watcher, client: SocketAddr) -> Option<u32> {
    let line = proxy.wait_last(&["stream ", &format!(": {client} -> device")], CUT_WAIT)?;
    line.split("stream ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// The bytes a cut line says were not delivered.
fn undelivered(line: &str) -> Option<u64> {
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(3).find_map(|w| {
        (w[1] == "bytes" && (w[2].starts_with("not") || w[2].starts_with("undelivered")))
            .then(|| w[0].trim_start_matches(',').parse().ok())
            .flatten()
    })
}

/// Runs `plan` on `slot` of `t`; `Err` says what went wrong, with the plan.
fn run_stream(t: &Tunnel, slot: usize, plan: &Plan) -> Result<Totals, String> {
    let fail = |what: String| Err(format!("{} stream {} {plan:?}: {what}", t.name, plan.n));
    let from = IpAddr::V4(Ipv4Addr::new(127, 0, 1, slot as u8 + 1));
    let small = matches!(plan.client, Reading::Late | Reading::Stops(_));
    // The service's receive buffer is its port's.
    let port = match plan.service {
        Reading::Late | Reading::Stops(_) => t.services.slots() + slot,
        _ => slot,
    };
    let client = match super::connect_from(from, t.public[port], small.then_some(4096)) {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot connect to the public port: {e}")),
    };
    let client_addr = client.local_addr().unwrap();
    let service = {
        let rx = t.services.accepted[port].lock().unwrap();
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(s) => s,
            Err(_) => return fail("the agent never connected to the local service".into()),
        }
    };
    let (down_seed, up_seed) = (plan.seed, plan.seed ^ 0xD0D0);
    // A stopped reader waits for its cut in the log; the id is the proxy's (the agent's
    // channel has the same).
    let waiter = |proc: &Proc, what: &'static str, other: &TcpStream| -> Box<dyn FnOnce() + Send> {
        let (proxy_log, log) = (t.proxy.watcher(), proc.watcher());
        let other = other.try_clone().expect("clone a socket");
        Box::new(move || {
            if let Some(id) = stream_id(&proxy_log, client_addr) {
                log.wait_last(&[&format!("{what} {id} closed: ")], CUT_WAIT);
            }
            // The other end goes on as it was: still sending into the cut stream, it must learn
            // at once (a reset), not when the kernel gives up on the closed socket.
            drop(other);
        })
    };
    let client_cut =
        matches!(plan.client, Reading::Stops(_)).then(|| waiter(t.proxy, "stream", &service));
    let service_cut =
        matches!(plan.service, Reading::Stops(_)).then(|| waiter(t.agent, "channel", &client));
    let client_end = End {
        sock: client,
        send: plan.up,
        send_seed: up_seed,
        expect: plan.down,
        expect_seed: down_seed,
        reading: plan.client,
        closes: plan.closer == Closer::Client,
        closes_mid: match plan.closer {
            Closer::ClientMid(at) => Some(at),
            _ => None,
        },
        cut_seen: client_cut,
    };
    let service_end = End {
        sock: service,
        send: plan.down,
        send_seed: down_seed,
        expect: plan.up,
        expect_seed: up_seed,
        reading: plan.service,
        closes: plan.closer == Closer::Service,
        closes_mid: match plan.closer {
            Closer::ServiceMid(at) => Some(at),
            _ => None,
        },
        cut_seen: service_cut,
    };
    let started = Instant::now();
    let service_side = thread::spawn(move || service_end.run());
    let at_client = client_end.run();
    let at_service = service_side.join().expect("the service's thread");
    for (who, seen) in [
        ("public client", &at_client),
        ("local service", &at_service),
    ] {
        if let Some(trouble) = &seen.trouble {
            return fail(format!("the {who}: {trouble}"));
        }
        if let Some(at) = seen.corrupt_at {
            return fail(format!(
                "the {who} received a wrong byte at offset {at} (of {} received)",
                seen.received
            ));
        }
    }
    if started.elapsed() > STREAM_LIMIT {
        return fail(format!("took {:?}", started.elapsed()));
    }
    let mut totals = Totals {
        streams: 1,
        bytes: at_client.received + at_service.received,
        ..Totals::default()
    };
    let whole = |what: &str, sent: &Seen, got: &Seen, planned: u64| -> Result<(), String> {
        if sent.sent != planned || got.received != planned || got.received_hash != sent.sent_hash {
            return Err(format!(
                "{} stream {} {plan:?}: {what}: {} bytes planned, {} sent (sha256 {}), {} \
                 received (sha256 {})",
                t.name, plan.n, planned, sent.sent, sent.sent_hash, got.received, got.received_hash
            ));
        }
        Ok(())
    };
    if plan.stops() {
        // Cut by a bound: logged with its count, what arrived a prefix, nothing more.
        let (log, line_of, got, sent) = if let Reading::Stops(_) = plan.client {
            (t.proxy, "stream", at_client.received, at_service.sent)
        } else {
            (t.agent, "channel", at_service.received, at_client.sent)
        };
        let Some(id) = stream_id(&t.proxy.watcher(), client_addr) else {
            return fail("meeting-proxy logged no stream for the client".into());
        };
        let Some(line) = log.wait_last(&[&format!("{line_of} {id} closed: ")], CUT_WAIT) else {
            return fail(format!("no cut was logged for {line_of} {id}"));
        };
        let Some(lost) = undelivered(&line) else {
            return fail(format!("the cut does not say what was lost: {line}"));
        };
        if got + lost > sent {
            return fail(format!(
                "{got} bytes arrived and {lost} were logged as lost, of {sent} sent: {line}"
            ));
        }
        totals.cut = 1;
    } else if plan.mid() {
        // Both ends are done (no hang) and what arrived was an exact prefix: checked above.
        totals.mid = 1;
    } else {
        whole("down", &at_service, &at_client, plan.down)?;
        whole("up", &at_client, &at_service, plan.up)?;
    }
    Ok(totals)
}

/// Runs streams drawn from `seed` through `t` until `streams` have run (or, with `until`,
/// until then): phases of a random number of slots at once, each slot running a few streams
/// one after the other. Returns what ran, or the first failure with the seed to replay it.
pub fn run(
    t: &Tunnel,
    seed: u64,
    streams: usize,
    until: Option<Instant>,
) -> Result<Totals, String> {
    let mut rng = Rng::new(seed);
    let mut totals = Totals::default();
    let mut n = 0;
    let more = |n: usize| match until {
        Some(t) => Instant::now() < t,
        None => n < streams,
    };
    while more(n) {
        let slots = rng.range(1, t.services.slots() as u64) as usize;
        let per_slot = rng.range(1, 4) as usize;
        let mut work: Vec<Vec<Plan>> = Vec::new();
        for _ in 0..slots {
            let plans = (0..per_slot)
                .map(|_| {
                    n += 1;
                    Plan::draw(n, &mut rng)
                })
                .collect();
            work.push(plans);
        }
        let results: Vec<Result<Totals, String>> = thread::scope(|s| {
            let handles: Vec<_> = work
                .iter()
                .enumerate()
                .map(|(slot, plans)| {
                    s.spawn(move || {
                        let mut sum = Totals::default();
                        for plan in plans {
                            let one = run_stream(t, slot, plan)?;
                            sum.streams += one.streams;
                            sum.bytes += one.bytes;
                            sum.cut += one.cut;
                            sum.mid += one.mid;
                        }
                        Ok(sum)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("a slot"))
                .collect()
        });
        for r in results {
            let one = r.map_err(|e| format!("INTEGRITY_SEED={seed}: {e}"))?;
            totals.streams += one.streams;
            totals.bytes += one.bytes;
            totals.cut += one.cut;
            totals.mid += one.mid;
        }
    }
    // No bound cut anything it was not meant to: each cut line is a planned one.
    // What one end leaves behind when it closes mid-stream (a full window it no longer reads)
    // may be cut by a bound too.
    let proxy_cuts =
        t.proxy.count("closed: the public client made no room") + t.proxy.count("(send_timeout); ");
    let agent_cuts = t.agent.count("(local_write_timeout); closed the channel");
    if proxy_cuts + agent_cuts > totals.cut + totals.mid {
        return Err(format!(
            "INTEGRITY_SEED={seed}: {} ({} meeting-proxy, {} tunnel-agent) cuts by a bound were \
             logged, {} were planned and {} streams were closed mid-stream",
            proxy_cuts + agent_cuts,
            proxy_cuts,
            agent_cuts,
            totals.cut,
            totals.mid
        ));
    }
    Ok(totals)
}

/// The seed: `INTEGRITY_SEED`, else one from the clock (printed by the caller).
pub fn seed() -> u64 {
    std::env::var("INTEGRITY_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
