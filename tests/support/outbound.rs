//! Real outbound proxies from Debian's packages, on loopback, each with a configuration of the
//! test's own in a folder of its own: tinyproxy (HTTP CONNECT with Basic authentication),
//! squid (HTTP CONNECT; its own connect timeout) and dante (SOCKS5 with user/password, a system
//! user `.ci/run` creates). Each binds its outgoing connections to a loopback address of its
//! own, so the far side sees which way a connection came. And a port that never answers a SYN.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;

use super::{free_port, Launch, Proc, SOON};

/// The SOCKS5 user `.ci/run` creates (dante checks it against the system's passwords).
pub const SOCKS_USER: &str = "tunnel-socks";
/// Its password.
pub const SOCKS_PASSWORD: &str = "S0cks-pw";
/// tinyproxy's Basic credentials.
pub const HTTP_USER: &str = "alice";
/// Its password.
pub const HTTP_PASSWORD: &str = "s3cret-Pw";

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tunnel-agent-outbound-{}-{name}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // The proxies drop to an unprivileged user, who writes its logs here.
    let _ = std::process::Command::new("chmod")
        .arg("777")
        .arg(&dir)
        .status();
    dir
}

/// A running outbound proxy.
pub struct Outbound {
    /// The process.
    pub proc: Proc,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The address its outgoing connections come from.
    pub source: &'static str,
    dir: PathBuf,
}

impl Outbound {
    /// tinyproxy allowing CONNECT to `ports` only, with Basic authentication when `auth`,
    /// connecting out from `source`.
    pub fn tinyproxy(ports: &[u16], auth: bool, source: &'static str) -> Outbound {
        Outbound::tinyproxy_idle(ports, auth, 600, source)
    }

    /// The same, closing a connection idle for `timeout` seconds (its `Timeout`).
    pub fn tinyproxy_idle(
        ports: &[u16],
        auth: bool,
        timeout: u32,
        source: &'static str,
    ) -> Outbound {
        let dir = folder("tinyproxy");
        let port = free_port();
        let mut conf = format!(
            "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nBind {source}\n\
             Timeout {timeout}\nMaxClients 50\nAllow 127.0.0.1\nLogLevel Info\n"
        );
        if auth {
            conf.push_str(&format!("BasicAuth {HTTP_USER} {HTTP_PASSWORD}\n"));
        }
        for p in ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        std::fs::write(dir.join("tinyproxy.conf"), conf).unwrap();
        let proc = Launch::new("tinyproxy")
            .args(&["-d", "-c", dir.join("tinyproxy.conf").to_str().unwrap()])
            .with_stdout()
            .start();
        proc.wait_for("Accepting connections", SOON);
        Outbound {
            proc,
            port,
            source,
            dir,
        }
    }

    /// squid allowing CONNECT to `ports`, no authentication, giving up on a connection after
    /// `connect_timeout` seconds, connecting out from `source`.
    pub fn squid(ports: &[u16], connect_timeout: u32, source: &'static str) -> Outbound {
        Outbound::squid_with(ports, connect_timeout, "", source)
    }

    /// The same with `extra` configuration lines (e.g. `read_timeout 30 seconds`).
    pub fn squid_with(
        ports: &[u16],
        connect_timeout: u32,
        extra: &str,
        source: &'static str,
    ) -> Outbound {
        let dir = folder("squid");
        let port = free_port();
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut conf = format!(
            "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache deny all\n\
             access_log stdio:{d}/access.log\ncache_log /dev/stderr\ncache_effective_user proxy\n\
             connect_timeout {connect_timeout} seconds\ntcp_outgoing_address {source}\n\
             acl allowed_ports port {ports}\nacl CONNECT method CONNECT\n\
             http_access deny CONNECT !allowed_ports\nhttp_access allow localhost\n\
             http_access deny all\nshutdown_lifetime 0 seconds\npinger_enable off\n",
            d = dir.display(),
            ports = list.join(" "),
        );
        conf.push_str(extra);
        Outbound::run_squid(dir, port, &conf, source)
    }

    /// squid with Debian's own configuration (`/etc/squid/squid.conf` as the package ships
    /// it: CONNECT to port 443 only, from localhost), listening on a port of the test's and
    /// resolving names by `hosts` (lines of an `/etc/hosts` file) alone. Only where it runs
    /// (its port, pid, logs, user, outgoing address) is the test's.
    pub fn squid_debian_default(hosts: &str, source: &'static str) -> Outbound {
        let dir = folder("squid-debian");
        let port = free_port();
        let shipped = std::fs::read_to_string("/etc/squid/squid.conf").unwrap();
        assert!(
            shipped.lines().any(|l| l == "http_port 3128")
                && shipped
                    .lines()
                    .any(|l| l == "http_access deny CONNECT !SSL_ports"),
            "Debian's squid.conf changed: the test's premises (http_port 3128, CONNECT to \
             SSL_ports only) no longer hold"
        );
        let mut conf: String = shipped
            .lines()
            .map(|l| match l {
                "http_port 3128" => format!("http_port 127.0.0.1:{port}\n"),
                l => format!("{l}\n"),
            })
            .collect();
        std::fs::write(dir.join("hosts"), hosts).unwrap();
        conf.push_str(&format!(
            "pid_filename {d}/squid.pid\naccess_log stdio:{d}/access.log\ncache_log /dev/stderr\n\
             cache_effective_user proxy\ntcp_outgoing_address {source}\nhosts_file {d}/hosts\n\
             shutdown_lifetime 0 seconds\npinger_enable off\n",
            d = dir.display()
        ));
        Outbound::run_squid(dir, port, &conf, source)
    }

    fn run_squid(dir: PathBuf, port: u16, conf: &str, source: &'static str) -> Outbound {
        std::fs::write(dir.join("squid.conf"), conf).unwrap();
        let proc = Launch::new("squid")
            .args(&["-N", "-f", dir.join("squid.conf").to_str().unwrap()])
            .start();
        proc.wait_for("Accepting HTTP Socket connections", SOON * 2);
        Outbound {
            proc,
            port,
            source,
            dir,
        }
    }

    /// dante (SOCKS5) with user/password, refusing connections to `blocked` by its rules,
    /// giving up on a connection after 5 s, connecting out from `source`.
    pub fn dante(blocked: u16, source: &'static str) -> Outbound {
        let dir = folder("dante");
        let port = free_port();
        let conf = format!(
            "logoutput: stderr\ninternal: 127.0.0.1 port = {port}\nexternal: {source}\n\
             socksmethod: username\nuser.privileged: root\nuser.unprivileged: nobody\n\
             timeout.connect: 5\n\
             client pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n}}\n\
             socks block {{\n  from: 0.0.0.0/0 to: 127.0.0.0/8 port = {blocked}\n  log: error\n}}\n\
             socks pass {{\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect error\n}}\n"
        );
        std::fs::write(dir.join("danted.conf"), conf).unwrap();
        let proc = Launch::new("danted")
            .args(&["-f", dir.join("danted.conf").to_str().unwrap()])
            .start();
        proc.wait_for("running", SOON);
        Outbound {
            proc,
            port,
            source,
            dir,
        }
    }

    /// Its URL with `scheme` and `credentials` (`user:password`, or none).
    pub fn url(&self, scheme: &str, credentials: Option<(&str, &str)>) -> String {
        match credentials {
            Some((u, p)) => format!("{scheme}://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port that accepts no connection and answers no SYN: its listener's accept queue
/// is full (a backlog of none, filled by connections never accepted), so the kernel drops
/// every further SYN, as a host behind a firewall that drops does.
pub struct Silent {
    /// Where.
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _fill: Vec<socket2::Socket>,
}

impl Silent {
    /// Binds it and fills its queue.
    pub fn new() -> Silent {
        use socket2::{Domain, Socket, Type};
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        listener.listen(0).unwrap();
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut fill = Vec::new();
        for _ in 0..3 {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into());
            fill.push(s);
        }
        // Proven silent: a connection attempt now gets no answer.
        let probe = TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500));
        assert!(probe.is_err(), "the silent port answered");
        Silent {
            addr,
            _listener: listener,
            _fill: fill,
        }
    }
}
