//! Certificates made at run time for one test (rcgen): a CA, server certificates signed by
//! it (valid, expired, not yet valid), and a TLS meeting-proxy serving one of them.

use std::path::PathBuf;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
};

use super::harness::{Proxy, KEY, TOKEN};

/// When a server certificate is valid.
#[derive(Clone, Copy)]
pub enum Validity {
    /// From now on (rcgen's default).
    Now,
    /// 2020 to 2021.
    Expired,
    /// From 2099: not valid yet.
    Future,
}

/// Certificates for one test, as PEM files in a temporary folder.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("tunnel-agent-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A CA; its certificate is written to `<name>.pem`.
    pub fn ca(&self, name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), ca.pem()).unwrap();
        ca
    }

    /// A server certificate for `names` signed by `ca`, written to `<file>.pem` / `<file>.key`.
    pub fn server(
        &self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        file: &str,
        names: &[&str],
        validity: Validity,
    ) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        match validity {
            Validity::Now => {}
            Validity::Expired => {
                p.not_before = date_time_ymd(2020, 1, 1);
                p.not_after = date_time_ymd(2021, 1, 1);
            }
            Validity::Future => {
                p.not_before = date_time_ymd(2099, 1, 1);
                p.not_after = date_time_ymd(2100, 1, 1);
            }
        }
        let cert = p.signed_by(&key, ca).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// A TLS meeting-proxy using `<file>.pem`/`<file>.key`, one tunnel to `port`.
    pub fn proxy(&self, file: &str, port: u16) -> Proxy {
        self.proxy_on(file, port, "127.0.0.1:0")
    }

    /// The same, agents connecting on `listen`.
    pub fn proxy_on(&self, file: &str, port: u16, listen: &str) -> Proxy {
        let (cert, key) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        let device = format!("{KEY}={TOKEN}");
        let tunnel = format!("127.0.0.1:0={KEY}:{port}");
        Proxy::start(&[
            "--listen",
            listen,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--device",
            &device,
            "--tunnel",
            &tunnel,
        ])
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
