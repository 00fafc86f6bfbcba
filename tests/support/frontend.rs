//! Debian's HAProxy in front of services on loopback, as a site puts it on port 443: TCP mode,
//! routing each TLS connection by the name in its ClientHello (SNI) without decrypting it, so
//! that meeting-proxy shares 443 with Meeting's web site.

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Launch, Proc, SOON};

/// A running HAProxy.
pub struct SniRouter {
    /// The process.
    pub proc: Proc,
    dir: PathBuf,
}

impl SniRouter {
    /// Listens on `listen`; a ClientHello for one of `routes`' names goes to its address, any
    /// other to `default`. Idle connections are closed after 30 s each way (`timeout client`
    /// and `timeout server`), HAProxy's usual figure.
    pub fn start(listen: &str, routes: &[(&str, SocketAddr)], default: SocketAddr) -> SniRouter {
        let dir = std::env::temp_dir().join(format!(
            "tunnel-agent-haproxy-{}-{}",
            std::process::id(),
            super::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut conf = format!(
            "global\n  maxconn 200\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  \
             timeout client 30s\n  timeout server 30s\n\nfrontend tls\n  bind {listen}\n  \
             tcp-request inspect-delay 5s\n  \
             tcp-request content accept if {{ req_ssl_hello_type 1 }}\n"
        );
        for (i, (name, _)) in routes.iter().enumerate() {
            conf.push_str(&format!(
                "  use_backend route{i} if {{ req_ssl_sni -i {name} }}\n"
            ));
        }
        conf.push_str(&format!(
            "  default_backend other\n\nbackend other\n  server other {default}\n"
        ));
        for (i, (_, to)) in routes.iter().enumerate() {
            conf.push_str(&format!("\nbackend route{i}\n  server route{i} {to}\n"));
        }
        let file = dir.join("haproxy.cfg");
        std::fs::write(&file, conf).unwrap();
        // -db: in the foreground; -V: says when it polls, after every listener is bound.
        let proc = Launch::new("haproxy")
            .args(&["-db", "-V", "-f", file.to_str().unwrap()])
            .with_stdout()
            .start();
        proc.wait_for("as the polling mechanism", SOON);
        // And the port answers (HAProxy says nothing more when it is ready).
        let addr: SocketAddr = listen.parse().unwrap();
        let until = std::time::Instant::now() + SOON;
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "HAProxy does not answer on {listen}:\n{}",
                proc.output()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        SniRouter { proc, dir }
    }
}

impl Drop for SniRouter {
    fn drop(&mut self) {
        self.proc.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
