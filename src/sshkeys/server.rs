//! The SSH server that answers on `ssh_port`, told from its banner, and what it accepts in an
//! `authorized_keys` line: OpenSSH knows `from=`; Dropbear (Buildroot's default, Debian's
//! `dropbear-bin`) refuses a line with any option it does not know, `from=` among them, and
//! logs `Bad public key options`. Pure but for [`banner`], which reads the server's first line.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An SSH server, by its banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshServer {
    /// OpenSSH's sshd, with its version (`9.2p1`).
    OpenSsh(String),
    /// Dropbear, with its version (`2022.83`).
    Dropbear(String),
    /// Another server; its banner's software part.
    Other(String),
}

/// Options OpenSSH's sshd knows in `authorized_keys` (sshd(8), "AUTHORIZED_KEYS FILE FORMAT").
const OPENSSH_OPTIONS: &[&str] = &[
    "agent-forwarding",
    "cert-authority",
    "command",
    "environment",
    "expiry-time",
    "from",
    "no-agent-forwarding",
    "no-port-forwarding",
    "no-pty",
    "no-user-rc",
    "no-x11-forwarding",
    "permitlisten",
    "permitopen",
    "port-forwarding",
    "principals",
    "pty",
    "no-touch-required",
    "verify-required",
    "restrict",
    "tunnel",
    "user-rc",
    "x11-forwarding",
];

/// Options Dropbear knows (svr-authpubkeyoptions.c); any other makes it refuse the line.
const DROPBEAR_OPTIONS: &[&str] = &[
    "no-port-forwarding",
    "no-agent-forwarding",
    "no-x11-forwarding",
    "no-pty",
    "restrict",
    "command",
    "permitopen",
    "permitlisten",
    "no-touch-required",
    "verify-required",
];

impl SshServer {
    /// The server a banner line (`SSH-2.0-dropbear_2022.83`) names; `None` when it is not an
    /// SSH banner.
    pub fn from_banner(line: &str) -> Option<SshServer> {
        let rest = line.trim().strip_prefix("SSH-")?;
        let software = rest.split_once('-').map_or("", |(_, s)| s);
        let software = software.split_whitespace().next().unwrap_or("");
        Some(if let Some(v) = software.strip_prefix("OpenSSH_") {
            SshServer::OpenSsh(v.to_owned())
        } else if let Some(v) = software.strip_prefix("dropbear_") {
            SshServer::Dropbear(v.to_owned())
        } else if software == "dropbear" {
            SshServer::Dropbear(String::new())
        } else {
            SshServer::Other(software.to_owned())
        })
    }

    /// `OpenSSH 9.2p1`, `Dropbear 2022.83`, or the banner's software.
    pub fn name(&self) -> String {
        match self {
            SshServer::OpenSsh(v) => format!("OpenSSH {v}"),
            SshServer::Dropbear(v) => format!("Dropbear {v}").trim_end().to_owned(),
            SshServer::Other(s) => format!("an SSH server ({s})"),
        }
    }

    /// Why this server refuses an `authorized_keys` line with `options` (the text before
    /// the key), or `None` when it accepts them. Another server is assumed to be as strict
    /// as Dropbear.
    pub fn refuses(&self, options: &str) -> Option<String> {
        let known = match self {
            SshServer::OpenSsh(_) => OPENSSH_OPTIONS,
            SshServer::Dropbear(_) | SshServer::Other(_) => DROPBEAR_OPTIONS,
        };
        let unknown: Vec<String> = option_names(options)
            .into_iter()
            .filter(|n| !known.contains(&n.to_ascii_lowercase().as_str()))
            .collect();
        (!unknown.is_empty()).then(|| {
            format!(
                "{} does not know the option{} {} and refuses the whole line",
                self.name(),
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", ")
            )
        })
    }
}

/// The options of an `authorized_keys` options field, as (name, value without its quotes):
/// `from="a,b",no-pty` gives (`from`, `a,b`), (`no-pty`, none). Commas inside quotes do not
/// separate, and `\"` inside quotes is a quote.
pub fn options(field: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let (mut name, mut value): (String, Option<String>) = (String::new(), None);
    let (mut quoted, mut escaped) = (false, false);
    for c in field.trim().chars() {
        match (c, value.as_mut()) {
            (_, Some(v)) if escaped => {
                v.push(c);
                escaped = false;
            }
            ('\\', Some(_)) if quoted => escaped = true,
            ('"', _) => quoted = !quoted,
            (',', _) if !quoted => {
                if !name.is_empty() {
                    out.push((std::mem::take(&mut name), value.take()));
                }
                value = None;
            }
            ('=', None) if !quoted => value = Some(String::new()),
            (_, Some(v)) => v.push(c),
            (_, None) => name.push(c),
        }
    }
    if !name.is_empty() {
        out.push((name, value));
    }
    out
}

/// The names of the options in an `authorized_keys` options field.
pub fn option_names(field: &str) -> Vec<String> {
    options(field).into_iter().map(|(n, _)| n).collect()
}

/// The program a `command="…"` option forces, if the field has one.
pub fn forced_program(field: &str) -> Option<String> {
    let (_, command) = options(field)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("command"))?;
    command?.split_whitespace().next().map(str::to_owned)
}

/// The first line the SSH server on 127.0.0.1:`port` sends, or what was seen instead.
pub fn banner(port: u16, timeout: Duration) -> Result<String, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sock = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("nothing accepts on {addr}: {e}"))?;
    let _ = sock.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 256];
    let mut got = 0;
    while got < buf.len() {
        match (&sock).read(&mut buf[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                if buf[..got].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    let first = buf[..got].split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(first).trim_end().to_owned();
    match line.starts_with("SSH-") {
        true => Ok(line),
        false if got == 0 => Err(format!(
            "{addr} accepts connections but sent no SSH banner within {} s",
            timeout.as_secs()
        )),
        false => Err(format!(
            "{addr} answers \"{}\", not an SSH banner",
            crate::bytes::printable::printable(first, 60)
        )),
    }
}

/// Whether a client at `ip` (from `SSH_CLIENT`) matches a `from=` pattern list as OpenSSH
/// reads it: addresses, CIDR blocks, `*` and `?` wildcards, `!` negating (a negated match
/// refuses whatever else matches).
pub fn client_allowed(ip: &str, patterns: &str) -> bool {
    let ip = ip.trim();
    // An IPv4 client on a dual-stack socket shows as ::ffff:a.b.c.d.
    let ip = ip.strip_prefix("::ffff:").unwrap_or(ip);
    let mut allowed = false;
    for pattern in patterns.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (negated, pattern) = match pattern.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pattern),
        };
        if matches(ip, pattern) {
            if negated {
                return false;
            }
            allowed = true;
        }
    }
    allowed
}

fn matches(ip: &str, pattern: &str) -> bool {
    if let Some((net, bits)) = pattern.split_once('/') {
        return in_block(ip, net, bits);
    }
    glob(ip.as_bytes(), pattern.as_bytes())
}

/// `ip` is in the block `net`/`bits`.
fn in_block(ip: &str, net: &str, bits: &str) -> bool {
    use std::net::IpAddr;
    let (Ok(ip), Ok(net), Ok(bits)) = (
        ip.parse::<IpAddr>(),
        net.parse::<IpAddr>(),
        bits.parse::<u32>(),
    ) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

/// `*` any run, `?` any one character.
fn glob(text: &[u8], pattern: &[u8]) -> bool {
    match (pattern.first(), text.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(text, &pattern[1..]) || (!text.is_empty() && glob(&text[1..], pattern))
        }
        (Some(b'?'), Some(_)) => glob(&text[1..], &pattern[1..]),
        (Some(p), Some(t)) if p.eq_ignore_ascii_case(t) => glob(&text[1..], &pattern[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners_name_the_server_and_its_version() {
        assert_eq!(
            SshServer::from_banner("SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r"),
            Some(SshServer::OpenSsh("9.2p1".into()))
        );
        let d = SshServer::from_banner("SSH-2.0-dropbear_2022.83").unwrap();
        assert_eq!(d, SshServer::Dropbear("2022.83".into()));
        assert_eq!(d.name(), "Dropbear 2022.83");
        assert_eq!(SshServer::from_banner("HTTP/1.1 400"), None);
    }

    #[test]
    fn dropbear_refuses_from_and_openssh_accepts_it() {
        let d = SshServer::Dropbear("2022.83".into());
        let o = SshServer::OpenSsh("9.2p1".into());
        let why = d.refuses("from=\"127.0.0.1,::1\"").unwrap();
        assert!(
            why.contains("Dropbear 2022.83") && why.contains("from"),
            "{why}"
        );
        assert_eq!(o.refuses("from=\"127.0.0.1,::1\",no-pty"), None);
        assert_eq!(
            d.refuses("command=\"/usr/bin/tunnel-agent ssh-gate 127.0.0.1,::1\""),
            None
        );
        assert_eq!(d.refuses("NO-PTY,restrict"), None);
        assert_eq!(d.refuses(""), None);
        assert!(o.refuses("bogus").is_some());
    }

    #[test]
    fn option_names_ignore_commas_in_quotes() {
        assert_eq!(
            option_names("from=\"a,b\",no-pty,command=\"x, y\""),
            vec!["from", "no-pty", "command"]
        );
        assert_eq!(
            options("from=\"a,b\",no-pty")[0],
            ("from".to_owned(), Some("a,b".to_owned()))
        );
        assert_eq!(
            forced_program("no-pty,command=\"/usr/bin/tunnel-agent ssh-gate 127.0.0.1,::1\""),
            Some("/usr/bin/tunnel-agent".to_owned())
        );
        assert_eq!(forced_program("from=\"command=x\""), None);
    }

    #[test]
    fn client_patterns_as_openssh_reads_them() {
        let p = "127.0.0.1,::1";
        assert!(client_allowed("127.0.0.1", p));
        assert!(client_allowed("::1", p));
        assert!(client_allowed("::ffff:127.0.0.1", p));
        assert!(!client_allowed("192.0.2.10", p));
        assert!(!client_allowed("127.0.0.2", p));
        assert!(client_allowed("127.0.0.2", "127.0.0.0/8"));
        assert!(client_allowed("10.1.2.3", "10.*"));
        assert!(!client_allowed("10.1.2.3", "10.*,!10.1.2.3"));
        assert!(!client_allowed("2001:db8::1", "::1/128"));
        assert!(client_allowed("2001:db8::1", "2001:db8::/32"));
        assert!(!client_allowed("", p));
    }
}
