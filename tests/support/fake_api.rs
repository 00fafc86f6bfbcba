//! A fake Meeting REST API over HTTPS on loopback, for the suite and the demo: tiny_http
//! serves the HTTP, the project's own TLS (`transport::tls::accept`) sits in front of it with a
//! certificate made at run time. Every request is recorded; answers can be changed, or made to
//! hang, while it runs.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query, if any.
    pub query: Option<String>,
    /// Every header (name lower case, value).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
    /// When it arrived.
    pub at: Instant,
}

impl Request {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the fake answers one method and path.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This status and JSON body.
    Json(u16, String),
    /// No answer until [`FakeApi::release`] (or 60 s), then the answer set meanwhile, or 503.
    Hang,
    /// This status and JSON body, sent this long after the request came: a slow Meeting.
    Late(Duration, u16, String),
}

#[derive(Default)]
struct State {
    requests: Vec<Request>,
    /// The address of each HTTPS connection, as accepted.
    peers: Vec<std::net::SocketAddr>,
    answers: HashMap<(String, String), Answer>,
    released: bool,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A running fake API; stops with the test process.
pub struct FakeApi {
    /// Base URL, `https://127.0.0.1:PORT/api`.
    pub url: String,
    /// The same API in plain http (the HTTP server behind the TLS front).
    pub http_url: String,
    /// The CA that signed its certificate (PEM file), for `ca_file` / `api_ca_file`.
    pub ca_file: PathBuf,
    shared: Shared,
    dir: PathBuf,
    /// The CA, to sign a renewed certificate with.
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The TLS front's settings, swapped by [`FakeApi::renew_certificate`].
    tls: Arc<Mutex<Arc<rustls::ServerConfig>>>,
}

impl FakeApi {
    /// Starts it. `devices` are the keys it knows (others get 404).
    pub fn start(devices: &[&str]) -> FakeApi {
        FakeApi::with_certificate(devices, &["127.0.0.1", "localhost"], false)
    }

    /// The same, its certificate made out to `names` (still served on 127.0.0.1): with
    /// another name, a client checking 127.0.0.1 finds a name mismatch.
    pub fn with_certificate_for(devices: &[&str], names: &[&str]) -> FakeApi {
        FakeApi::with_certificate(devices, names, false)
    }

    /// The same with a certificate valid only from 2099: not valid yet for any client.
    pub fn with_future_certificate(devices: &[&str]) -> FakeApi {
        FakeApi::with_certificate(devices, &["127.0.0.1", "localhost"], true)
    }

    /// From now on, a certificate for 127.0.0.1 valid from now, by the same CA.
    pub fn renew_certificate(&self) {
        let (cert, key) =
            server_certificate(&self.dir, &self.ca, &["127.0.0.1", "localhost"], false);
        let config = tunnel_agent::transport::tls::server_config(&cert, &key).expect("TLS config");
        *self.tls.lock().unwrap() = config;
    }

    fn with_certificate(devices: &[&str], names: &[&str], future: bool) -> FakeApi {
        let dir = std::env::temp_dir().join(format!(
            "tunnel-agent-fake-api-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir_all(&dir).expect("temporary folder");
        let (ca, ca_file) = authority(&dir);
        let (cert, key) = server_certificate(&dir, &ca, names, future);
        let shared: Shared = Arc::default();
        {
            let mut st = shared.0.lock().unwrap();
            for k in devices {
                let record = serde_json::json!({
                    "device_key": k, "authorized": true, "services": ["ssh", "scp"],
                    "token_code": "", "ip_address": null,
                });
                st.answers.insert(
                    ("GET".into(), format!("/api/devices/{k}")),
                    Answer::Json(200, record.to_string()),
                );
                st.answers.insert(
                    ("POST".into(), format!("/api/devices/{k}/online")),
                    Answer::Json(200, String::new()),
                );
                st.answers.insert(
                    ("GET".into(), format!("/api/devices/{k}/availability")),
                    Answer::Json(200, String::new()),
                );
                st.answers.insert(
                    ("PUT".into(), format!("/api/devices/{k}/ssh-key")),
                    Answer::Json(200, r#"{"ok":true}"#.into()),
                );
            }
        }
        let http = tiny_http::Server::http("127.0.0.1:0").expect("tiny_http on loopback");
        let backend = http.server_addr().to_ip().expect("an IP address");
        {
            let shared = shared.clone();
            thread::spawn(move || {
                for req in http.incoming_requests() {
                    let shared = shared.clone();
                    thread::spawn(move || serve(req, &shared));
                }
            });
        }
        let config = tunnel_agent::transport::tls::server_config(&cert, &key).expect("TLS config");
        let tls = Arc::new(Mutex::new(config));
        let front = TcpListener::bind("127.0.0.1:0").expect("bind the HTTPS port");
        let port = front.local_addr().unwrap().port();
        {
            let tls = tls.clone();
            let shared = shared.clone();
            thread::spawn(move || {
                for sock in front.incoming().map_while(Result::ok) {
                    if let Ok(peer) = sock.peer_addr() {
                        let mut st = shared.0.lock().unwrap_or_else(|p| p.into_inner());
                        st.peers.push(peer);
                    }
                    let config = tls.lock().unwrap().clone();
                    thread::spawn(move || terminate(sock, config, backend));
                }
            });
        }
        FakeApi {
            url: format!("https://127.0.0.1:{port}/api"),
            http_url: format!("http://{backend}/api"),
            ca_file,
            shared,
            dir,
            ca,
            tls,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers `method path` with `status` and `body` from now on.
    pub fn answer(&self, method: &str, path: &str, status: u16, body: &str) {
        self.lock().answers.insert(
            (method.into(), path.into()),
            Answer::Json(status, body.into()),
        );
    }

    /// Serves `pubkey` (a key line) as Meeting's SSH key, with `fingerprint` beside it, as
    /// `GET /api/ssh/pubkey` answers.
    pub fn serve_meeting_key(&self, pubkey: &str, fingerprint: Option<&str>) {
        let body = serde_json::json!({
            "pubkey": pubkey, "fingerprint": fingerprint, "host": "meeting.example",
            "generated_at": "2026-11-25 10:00:00",
        });
        self.answer("GET", "/api/ssh/pubkey", 200, &body.to_string());
    }

    /// Serves a new Ed25519 host key, made at `path` by ssh-keygen, as Meeting's SSH host key
    /// for `meeting.example` (`GET /api/ssh-hostkey`); returns its `type base64` part.
    pub fn serve_host_key(&self, path: &std::path::Path) -> String {
        let host = super::ssh_keygen_ed25519(path, "host");
        let key = host.trim().rsplit_once(' ').unwrap().0.to_owned();
        self.answer(
            "GET",
            "/api/ssh-hostkey",
            200,
            &format!("meeting.example {key}\n"),
        );
        key
    }

    /// Answers `method path` with `status` and `body`, `after` the request came, from now on.
    pub fn answer_late(&self, method: &str, path: &str, after: Duration, status: u16, body: &str) {
        self.lock().answers.insert(
            (method.into(), path.into()),
            Answer::Late(after, status, body.into()),
        );
    }

    /// Makes `method path` hang until [`Self::release`].
    pub fn hang(&self, method: &str, path: &str) {
        let mut st = self.lock();
        st.released = false;
        st.answers
            .insert((method.into(), path.into()), Answer::Hang);
    }

    /// Lets hanging requests go: they get the answer set since [`Self::hang`], else a 503.
    pub fn release(&self) {
        self.lock().released = true;
        self.shared.1.notify_all();
    }

    /// The address of each HTTPS connection so far (who connected: the device, or the
    /// outbound proxy it goes through).
    pub fn peers(&self) -> Vec<std::net::SocketAddr> {
        self.lock().peers.clone()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Requests to `method path` so far.
    pub fn requests_to(&self, method: &str, path: &str) -> Vec<Request> {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `n` requests to `method path` have arrived; panics after `timeout`.
    pub fn wait_for(&self, method: &str, path: &str, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            let got: Vec<Request> = st
                .requests
                .iter()
                .filter(|r| r.method == method && r.path == path)
                .cloned()
                .collect();
            if got.len() >= n {
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{n} requests {method} {path} expected within {timeout:?}, got {}: {:?}",
                got.len(),
                st.requests
                    .iter()
                    .map(|r| format!("{} {}", r.method, r.path))
                    .collect::<Vec<_>>()
            );
            st = self.shared.1.wait_timeout(st, left).unwrap().0;
        }
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.release();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The fake's CA, and its certificate written to `ca.pem`.
fn authority(dir: &std::path::Path) -> (CertifiedIssuer<'static, KeyPair>, PathBuf) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "fake Meeting API CA");
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    (ca, path)
}

/// A certificate for `names` signed by `ca` (valid from 2099 when `future`), written as
/// (certificate, key) files.
fn server_certificate(
    dir: &std::path::Path,
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    future: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "fake Meeting API");
    if future {
        params.not_before = rcgen::date_time_ymd(2099, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    }
    let cert = params.signed_by(&key, ca).unwrap();
    let n = next_id();
    let (cert_path, key_path) = (
        dir.join(format!("api-{n}.pem")),
        dir.join(format!("api-{n}.key")),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// TLS in front of the plain HTTP server: decrypts one connection and relays it both ways.
fn terminate(sock: TcpStream, tls: Arc<rustls::ServerConfig>, backend: std::net::SocketAddr) {
    let Ok(control) = tunnel_agent::transport::tls::accept(sock, tls, Duration::from_secs(5))
    else {
        return; // a client that gave up on our certificate: that is its test's business
    };
    let Ok(plain) = TcpStream::connect(backend) else {
        return;
    };
    let tunnel_agent::transport::Control {
        mut reader,
        mut writer,
        sock,
        ..
    } = control;
    let Ok(mut up) = plain.try_clone() else {
        return;
    };
    let down = thread::spawn(move || {
        let mut plain = plain;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match plain.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer
                        .write_all(&buf[..n])
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sock.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut reader, &mut up);
    let _ = up.shutdown(Shutdown::Write);
    let _ = down.join();
}

fn serve(mut req: tiny_http::Request, shared: &Shared) {
    let url = req.url().to_owned();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (url, None),
    };
    let mut body = String::new();
    let _ = req.as_reader().read_to_string(&mut body);
    let method = req.method().as_str().to_owned();
    let record = Request {
        method: method.clone(),
        path: path.clone(),
        query,
        headers: req
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_owned(),
                )
            })
            .collect(),
        body,
        at: Instant::now(),
    };
    let (lock, cv) = &**shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    st.requests.push(record.clone());
    cv.notify_all();
    let answer = st
        .answers
        .get(&(method.clone(), path.clone()))
        .cloned()
        .unwrap_or_else(|| default_answer(&record));
    let (status, text) = match answer {
        Answer::Json(status, text) if text.is_empty() => (status, generated(&record, &st)),
        Answer::Json(status, text) => (status, text),
        Answer::Late(after, status, text) => {
            drop(st);
            thread::sleep(after);
            st = lock.lock().unwrap_or_else(|p| p.into_inner());
            (status, text)
        }
        Answer::Hang => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !st.released && Instant::now() < deadline {
                st = cv
                    .wait_timeout(st, Duration::from_millis(500))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            // Answered as set meanwhile, else 503.
            match st.answers.get(&(method.clone(), path.clone())) {
                Some(Answer::Json(status, text)) => (*status, text.clone()),
                _ => (503, r#"{"error":"released"}"#.to_owned()),
            }
        }
    };
    drop(st);
    let header =
        tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]).unwrap();
    let _ = req.respond(
        tiny_http::Response::from_string(text)
            .with_status_code(status)
            .with_header(header),
    );
}

fn default_answer(r: &Request) -> Answer {
    if r.path.starts_with("/api/devices/") {
        Answer::Json(404, r#"{"error":"Device not found"}"#.into())
    } else {
        Answer::Json(404, r#"{"error":"Not found"}"#.into())
    }
}

/// The body of a 200 whose text was left empty: what Meeting would say.
fn generated(r: &Request, st: &State) -> String {
    let now = tunnel_agent::clock::utc(tunnel_agent::clock::now());
    let seen = now.trim_end_matches(" UTC").to_owned();
    if r.path.ends_with("/online") {
        let ip = r.json()["ip_address"].as_str().unwrap_or("").to_owned();
        return serde_json::json!({"ok": true, "ip_address": ip, "last_seen": seen}).to_string();
    }
    if r.path.ends_with("/availability") {
        let key_path = r.path.trim_end_matches("/availability").to_owned() + "/online";
        let last = st
            .requests
            .iter()
            .rev()
            .find(|q| q.method == "POST" && q.path == key_path);
        let status = match last {
            Some(q) if q.at.elapsed() < Duration::from_secs(60) => "Available",
            _ => "Disconnected",
        };
        return serde_json::json!({"status": status, "last_heartbeat": last.map(|_| seen.clone()), "since": seen, "uptime": 0}).to_string();
    }
    "{}".to_owned()
}
