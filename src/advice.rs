//! What the operator should do about a failure: worded once per situation, by the one place
//! that knows the peer (the Meeting proxy, the Meeting API) and the setting that applies.
//!
//! Errors only state what happened (`Display` of each layer's error type); the agent's log,
//! `check`'s hints and its verdicts all take the advice from here, so a situation reads the
//! same everywhere. Owns wording only: no sockets, no state.

use std::fmt;

use crate::bytes::printable::printable;
use crate::config::ConfigError;
use crate::config::OUTBOUND_PROXY;
use crate::config::{
    API_CA_FILE, API_URL, DEVICE_KEY, MEETING_SSH_USER, SSH_PORT, TUNNEL_HOST, TUNNEL_PORT,
    TUNNEL_SSL,
};
use crate::meeting::{ApiError, Unreached};
use crate::protocol::handshake::{ReplyError, MAX_REPLY_LINE, QUOTE, UNVERIFIED};
use crate::transport::outbound::OutboundCause;
use crate::transport::tcp::TcpError;
use crate::transport::TransportError;

/// Who the device was talking to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The Meeting proxy (`tunnel_host`, `tunnel_port`, `tunnel_ssl`, `ca_file`).
    Proxy,
    /// The Meeting REST API (`api_url`, `api_ca_file`).
    Api,
}

impl Peer {
    /// The setting that names the peer's host.
    fn host_setting(self) -> &'static str {
        match self {
            Peer::Proxy => TUNNEL_HOST.spec.key,
            Peer::Api => API_URL.spec.key,
        }
    }
}

/// `fact; advice`, or the fact alone when there is nothing to add.
pub fn explained(fact: impl fmt::Display, advice: Option<String>) -> String {
    match advice {
        Some(a) => format!("{fact}; {a}"),
        None => fact.to_string(),
    }
}

/// The host name did not resolve.
pub fn dns(peer: Peer) -> String {
    format!(
        "check the device's DNS (/etc/resolv.conf) and {}",
        peer.host_setting()
    )
}

/// Nothing listens at the address: the TCP connection was refused.
pub fn refused(peer: Peer) -> String {
    match peer {
        Peer::Proxy => format!("the proxy is down or {} is wrong", TUNNEL_PORT.spec.key),
        Peer::Api => format!("the Meeting API is down or {} is wrong", API_URL.spec.key),
    }
}

/// No answer at all to the TCP connection.
pub fn no_answer(port: u16) -> String {
    format!("a firewall drops outgoing traffic to port {port}, or the device's network is down")
}

/// Another failure to connect.
fn cannot_connect(peer: Peer) -> String {
    format!("check the network (ip route) and {}", peer.host_setting())
}

/// A TCP failure on the way to the proxy.
pub fn tcp(e: &TcpError) -> String {
    match e {
        TcpError::Resolve { .. } => dns(Peer::Proxy),
        _ if e.is_refused() => refused(Peer::Proxy),
        TcpError::Connect { addr, .. } if e.is_timeout() => no_answer(addr.port()),
        TcpError::Connect { .. } => cannot_connect(Peer::Proxy),
    }
}

/// A failed TLS session with `peer`.
#[cfg(feature = "tls")]
pub fn tls(peer: Peer, e: &crate::transport::tls::TlsError) -> Option<String> {
    use crate::config::{CA_FILE, TLS_SERVER_NAME};
    use crate::transport::tls::TlsError as T;
    let (ca, proxy) = (CA_FILE.spec.key, peer == Peer::Proxy);
    Some(match e {
        T::CaFile { .. } if proxy => format!("fix {ca}"),
        T::CaFile { .. } => format!("fix {}", API_CA_FILE.spec.key),
        T::BadServerName(_) if proxy => format!(
            "set {} to the name in the proxy's certificate",
            TLS_SERVER_NAME.spec.key
        ),
        T::BadServerName(_) => format!(
            "{} must name the API by a valid host name",
            API_URL.spec.key
        ),
        T::Untrusted { .. } if proxy => {
            format!("for a self-hosted proxy set {ca} to its CA certificate")
        }
        T::Untrusted { .. } => format!(
            "for a self-hosted Meeting API set {} to its CA certificate",
            API_CA_FILE.spec.key
        ),
        T::NameMismatch { .. } if proxy => format!(
            "fix {}, or set {} to a name the certificate carries",
            TUNNEL_HOST.spec.key, TLS_SERVER_NAME.spec.key
        ),
        T::NameMismatch { .. } => format!(
            "fix the host in {} (it must be a name the certificate carries), or {} if the API \
             has a CA of its own",
            API_URL.spec.key, API_CA_FILE.spec.key
        ),
        T::Expired { now, .. } | T::NotYetValid { now, .. } if crate::clock::unset(*now) => {
            clock_unset()
        }
        T::Expired { .. } if proxy => {
            "the proxy must renew it, unless the device's clock is ahead (date -u; NTP)".to_owned()
        }
        T::Expired { .. } => {
            "the Meeting API's operator must renew it, unless the device's clock is ahead (date \
             -u; NTP)"
                .to_owned()
        }
        T::NotYetValid { .. } => "check the device's clock (date -u; NTP)".to_owned(),
        T::NotTls { .. } | T::ClosedAfterHello if proxy => format!(
            "disable TLS ({} false) or use the proxy's TLS port",
            TUNNEL_SSL.spec.key
        ),
        T::NotTls { .. } | T::ClosedAfterHello => {
            format!("{} must be the API's https:// address", API_URL.spec.key)
        }
        T::ServerKeys { .. } => {
            "both must be PEM files, the key matching the certificate".to_owned()
        }
        T::Certificate(_) | T::Alert(_) | T::Timeout | T::ClosedDuringHandshake | T::Other(_) => {
            return None
        }
    })
}

/// TLS is asked of a build without it.
fn no_tls_build() -> String {
    format!(
        "install a build with TLS, or set {} to false if the proxy port is plain TCP",
        TUNNEL_SSL.spec.key
    )
}

/// A configuration that cannot be used: the error names the setting and what it expects; a
/// missing TLS needs a word more.
pub fn config(e: &ConfigError) -> String {
    match e {
        ConfigError::TlsUnavailable { .. } => explained(e, Some(no_tls_build())),
        _ => e.to_string(),
    }
}

/// What to do about a configuration `check` cannot use: for a file this user may not read
/// (it holds the token, so it is root's alone), run check as root; else fix the setting.
pub fn config_fix(e: &ConfigError) -> String {
    if config_not_permitted(e) {
        config_root_only()
    } else {
        "fix the configuration (tunnel-agent --help lists every setting)".to_owned()
    }
}

/// What to do when the configuration is root's alone and check runs as another user.
pub fn config_root_only() -> String {
    "the file holds the token and is readable by root only: run check as root (`su -c \
     'tunnel-agent check'` on a BusyBox image, `sudo tunnel-agent check` elsewhere); \
     `tunnel-agent status` shows the running agent's state to any user"
        .to_owned()
}

/// The configuration exists but this user may not read it.
pub fn config_not_permitted(e: &ConfigError) -> bool {
    matches!(e, ConfigError::Unreadable { err, .. }
        if err.kind() == std::io::ErrorKind::PermissionDenied)
}

/// A certificate refused by a device clock that reads a time before this binary was built:
/// the clock was never set.
#[cfg(feature = "tls")]
fn clock_unset() -> String {
    format!(
        "the device's clock is probably not set: it reads a time before this tunnel-agent was \
         built ({}), as a board without a real-time clock does until NTP has synchronised; \
         nothing needs changing if NTP runs: the agent tries again and connects once the clock \
         is right",
        crate::clock::utc(crate::clock::built())
    )
}

/// A connection to the proxy that could not be set up.
pub fn transport(e: &TransportError) -> Option<String> {
    match e {
        TransportError::Tcp(e) => Some(tcp(e)),
        #[cfg(feature = "tls")]
        TransportError::Tls(e) => tls(Peer::Proxy, e),
        TransportError::TlsUnavailable => Some(no_tls_build()),
        TransportError::Split(_) => Some(
            "the process is probably out of file descriptors (check ulimit -n and max_channels)"
                .to_owned(),
        ),
        TransportError::Outbound(e) => Some(outbound(Peer::Proxy, &e.cause)),
    }
}

/// What to do when the outbound proxy did not open the way to `peer`.
pub fn outbound(peer: Peer, cause: &OutboundCause) -> String {
    let key = OUTBOUND_PROXY.spec.key;
    let host = peer.host_setting();
    let admin = "ask the network's administrator";
    match cause {
        OutboundCause::Unreachable(_) => {
            format!("check the host and port in {key}, and that the outbound proxy runs there")
        }
        OutboundCause::Timeout | OutboundCause::Closed | OutboundCause::Malformed(_) => format!(
            "check that {key} names an outbound proxy of that kind (http:// for HTTP CONNECT, \
             socks5:// or socks5h:// for SOCKS5) at that port"
        ),
        OutboundCause::AuthRequired { sent: false }
        | OutboundCause::SocksNoMethod {
            offered_password: false,
        } => format!("put the user and password in {key} (scheme://user:password@host:port)"),
        OutboundCause::AuthRequired { sent: true } | OutboundCause::SocksAuthRejected => {
            format!("check the user and password in {key}")
        }
        OutboundCause::SocksNoMethod {
            offered_password: true,
        } => format!(
            "the SOCKS5 proxy wants a method tunnel-agent does not speak (GSSAPI?): {admin}"
        ),
        OutboundCause::Forbidden { port } => format!(
            "{admin} to allow connections to port {port}, or reach Meeting on a port it \
             allows ({})",
            match peer {
                Peer::Proxy => TUNNEL_PORT.spec.key,
                Peer::Api => API_URL.spec.key,
            }
        ),
        OutboundCause::ProxyTimeout { .. } | OutboundCause::SocksReply(6) => format!(
            "the outbound proxy cannot reach {host} in time: check {host}, and the network beyond \
             the outbound proxy"
        ),
        OutboundCause::SocksReply(2) => {
            format!("its rules forbid this destination: {admin} to allow it")
        }
        OutboundCause::SocksReply(3 | 4) => format!(
            "the SOCKS5 proxy cannot reach that host: check {host} (with socks5h:// the proxy \
             resolves the name)"
        ),
        OutboundCause::SocksReply(5) => format!(
            "nothing listens at that port, seen from the SOCKS5 proxy: check {host} and its port"
        ),
        OutboundCause::SocksReply(_) | OutboundCause::Status { .. } => {
            format!("{admin} what the outbound proxy refuses, and why")
        }
        OutboundCause::Resolve(_) => format!(
            "use socks5h:// in {key} so that the proxy resolves the name, or check the device's DNS"
        ),
        OutboundCause::Io(_) => format!("check the network between the device and {key}"),
    }
}

/// A Meeting API call that failed.
pub fn api(e: &ApiError) -> Option<String> {
    match e {
        #[cfg(not(feature = "tls"))]
        ApiError::NoClient => Some("install a build with TLS".to_owned()),
        ApiError::CaFile { .. } => Some(format!("fix {}", API_CA_FILE.spec.key)),
        ApiError::Unreachable { cause, .. } => unreached(cause),
        ApiError::Status { .. } => None,
        ApiError::BadAnswer { .. } => {
            Some(format!("is {} really the Meeting API?", API_URL.spec.key))
        }
    }
}

/// The Meeting API does not know the device.
pub fn device_unknown() -> String {
    format!(
        "register the device in Meeting, or correct {} in the agent's configuration",
        DEVICE_KEY.spec.key
    )
}

/// The device exists in Meeting but may not open tunnels.
pub fn not_authorized() -> String {
    "ask a Meeting administrator to authorize the device for tunnels".to_owned()
}

/// Meeting refused the device's token or rights (HTTP 401 or 403).
pub fn api_refused() -> String {
    format!(
        "check {} and the device's registration in Meeting",
        API_URL.spec.key
    )
}

/// The login user of Meeting's terminal does not exist on the device.
pub fn no_user(user: &str) -> String {
    format!(
        "create the user (adduser {user}), or set {} to the user Meeting logs in as",
        MEETING_SSH_USER.spec.key
    )
}

/// No SSH server answers on `ssh_port`.
pub fn ssh_not_answering() -> String {
    format!(
        "start sshd, or set {} to the port it listens on",
        SSH_PORT.spec.key
    )
}

/// Meeting's current key is not in the login user's `authorized_keys`.
pub fn key_missing() -> String {
    "run `tunnel-agent keys` as root (the service does at each start) and read what it says"
        .to_owned()
}

/// Meeting's key is also installed without a restriction (the web manager's "install key").
pub fn unrestricted_copy() -> String {
    "delete the line named (sed -i 'Nd' FILE, N its number), after checking it is Meeting's key \
     without options: tunnel-agent's own line, restricted, stays in its block and lets Meeting \
     in through the tunnel; do not press the web manager's \"install key\" again (README: \
     \"Meeting's key in two forms\")"
        .to_owned()
}

/// The SSH server would refuse Meeting's key line as written.
pub fn line_refused() -> String {
    "run `tunnel-agent keys` as root: it writes the line this server accepts".to_owned()
}

/// sshd's StrictModes would refuse the login user's `authorized_keys`.
pub fn login_modes() -> String {
    "chmod go-w the path named, and chown it to the user or root".to_owned()
}

/// Another agent keeps taking this device's connection at the proxy (same device key).
pub fn another_agent(wait_s: u64) -> String {
    format!(
        "find and stop the other agent: a device cloned from this one's SD card (give it its own \
         device key in Meeting and in its {}), or the old tunnel_agent.py or meeting-tunnel-agent \
         still running on this device (stop and disable it). This agent waits {wait_s} s before \
         it connects again, instead of taking the connection back",
        DEVICE_KEY.spec.key
    )
}

/// A thread could not be started.
pub fn no_thread() -> String {
    "the system is out of threads or memory (check ulimit -u and free memory)".to_owned()
}

/// The SSH key work failed.
#[cfg(feature = "tls")]
pub fn keys(e: &crate::sshkeys::KeysError) -> Option<String> {
    use crate::config::{GENERATE_DEVICE_KEY, MEETING_KEY_FINGERPRINT};
    use crate::sshkeys::KeysError as K;
    match e {
        K::PlainHttp(_) => Some(format!("set {} to the https API URL", API_URL.spec.key)),
        K::Api(e) => api(e),
        K::Pin { .. } => Some(format!(
            "if Meeting rotated its key on purpose, update {}",
            MEETING_KEY_FINGERPRINT.spec.key
        )),
        K::NoUser(u) => Some(no_user(u)),
        K::Fs(e) if e.is_permission() => Some(
            "the agent lacks the rights: run `tunnel-agent keys` as root, as the init script does \
             before starting the agent and tunnel-agent-keys.service does under systemd"
                .to_owned(),
        ),
        K::NoDeviceKey { path, .. } => Some(format!(
            "create it (ssh-keygen -t ed25519 -f {}) or set {} to true",
            path.display(),
            GENERATE_DEVICE_KEY.spec.key
        )),
        _ => None,
    }
}

/// What stopped a request to the Meeting API.
fn unreached(cause: &Unreached) -> Option<String> {
    match cause {
        #[cfg(feature = "tls")]
        Unreached::Tls(e) => tls(Peer::Api, e),
        Unreached::Dns => Some(dns(Peer::Api)),
        Unreached::Refused => Some(refused(Peer::Api)),
        Unreached::Body { cause, .. } => unreached(cause),
        Unreached::Outbound(e) => Some(outbound(Peer::Api, &e.cause)),
        Unreached::Timeout(_) | Unreached::Connect | Unreached::Other(_) => Some(format!(
            "check {}, the network and the device's clock (TLS)",
            API_URL.spec.key
        )),
    }
}

/// One paragraph for the operator about the proxy's answer to the handshake: what happened,
/// the likely cause, what to check. Names the device key, never the token.
pub fn reply(e: &ReplyError, device_key: &str, proxy: &str) -> String {
    match e {
        ReplyError::Refused { reason, .. } if reason.starts_with(UNVERIFIED) => format!(
            "the proxy {proxy} could not verify device {device_key}: \"{}\". The proxy could not \
             ask the Meeting API; nothing needs changing on the device, which retries soon. If \
             it lasts, the proxy's operator should check its link to the Meeting API",
            printable(reason.as_bytes(), 512)
        ),
        ReplyError::Refused { reason, code } => {
            let code = code
                .as_deref()
                .map(|c| format!(" [{}]", printable(c.as_bytes(), QUOTE)))
                .unwrap_or_default();
            format!(
                "the proxy {proxy} refused device {device_key}: \"{}\"{code}. Check that the \
                 device key and token in the configuration match what the Meeting server has \
                 for this device, and that the device is authorized for tunnels",
                printable(reason.as_bytes(), 512)
            )
        }
        ReplyError::ClosedWithoutReply => format!(
            "the proxy {proxy} closed the connection without answering the handshake (0 bytes \
             received): it refused device {device_key} without giving a reason. Check: (1) the \
             device key and the token in the configuration are the ones the Meeting server has \
             for this device; (2) the device exists and is registered in the Meeting API the \
             proxy consults; (3) the device is authorized for tunnels (`authorized: true`); (4) \
             if all of that holds, ask the Meeting team what their proxy logged for device \
             {device_key} at this time"
        ),
        ReplyError::TlsOnPlainAgent { raw } => format!(
            "the proxy port {proxy} answered with TLS bytes ({}) but the agent connected without \
             TLS: {}",
            printable(raw, 16),
            tls_on_plain()
        ),
        ReplyError::NotMeetingProxy { raw, http: true } => format!(
            "{proxy} answered like a web server, not a Meeting proxy (reply begins \"{}\"): \
             wrong port or wrong host; the Meeting tunnel port is usually 9001",
            printable(raw, QUOTE)
        ),
        ReplyError::NotMeetingProxy { raw, http: false } => format!(
            "{proxy} is not speaking the Meeting protocol (reply begins \"{}\"): {}",
            printable(raw, QUOTE),
            not_meeting()
        ),
        ReplyError::LineTooLong { raw } => format!(
            "protocol error: {proxy} sent a reply line longer than {MAX_REPLY_LINE} bytes \
             (begins \"{}\"); this is not a Meeting proxy or it is broken",
            printable(raw, QUOTE)
        ),
        ReplyError::NotAnObject { raw } => format!(
            "protocol error: {proxy} replied with JSON that is not an object (\"{}\"); a \
             Meeting proxy answers {{\"status\": ...}}",
            printable(raw, QUOTE)
        ),
        ReplyError::UnexpectedObject { raw } => format!(
            "protocol error: {proxy} replied with a JSON object that is neither an acceptance \
             nor a refusal (\"{}\")",
            printable(raw, QUOTE)
        ),
        ReplyError::Io(e) => format!(
            "reading the handshake reply from {proxy} failed: {e}; the network dropped the \
             connection"
        ),
    }
}

/// The proxy port speaks TLS and the agent does not.
pub fn tls_on_plain() -> String {
    format!(
        "enable TLS (`\"{0}\": true` in the configuration or MEETING_TUNNEL_TLS=1)",
        TUNNEL_SSL.spec.key
    )
}

/// The proxy's address answers, but not with the Meeting protocol.
pub fn not_meeting() -> String {
    format!(
        "check {} and {} in the configuration",
        TUNNEL_HOST.spec.key, TUNNEL_PORT.spec.key
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::read_reply;
    use std::io::BufReader;

    const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";

    fn classify(bytes: &[u8]) -> ReplyError {
        read_reply(&mut BufReader::new(bytes)).unwrap_err()
    }

    #[test]
    fn refusals_quote_the_reason_and_name_the_key() {
        let e = classify(b"{\"status\":\"error\",\"message\":\"Invalid token\"}\n");
        assert!(reply(&e, KEY, "p:1").contains("\"Invalid token\""));
        let e = classify(b"");
        let d = reply(&e, KEY, "meeting.example:9001");
        assert!(d.contains("closed the connection without answering the handshake"));
        assert!(d.contains(KEY));
    }

    #[test]
    fn a_proxy_that_cannot_verify_says_nothing_is_wrong_with_the_device() {
        let e = classify(b"{\"error\":\"auth_failed\",\"reason\":\"cannot verify the device: Meeting API unreachable (HTTP 503)\"}\n");
        let d = reply(&e, KEY, "p:1");
        assert!(
            d.contains("could not verify device") && d.contains("HTTP 503"),
            "{d}"
        );
        assert!(!d.contains("token"), "{d}");
    }

    #[test]
    fn wrong_services_are_quoted_and_tls_bytes_say_enable_tls() {
        for b in [0x15u8, 0x16] {
            let d = reply(&classify(&[b, 3, 1, 0, 2]), KEY, "p");
            assert!(
                d.contains("enable TLS") && d.contains("\"tunnel_ssl\": true"),
                "{d}"
            );
        }
        let e = classify(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        assert!(reply(&e, KEY, "p").contains("HTTP/1.1 400 Bad Request\\r"));
        let e = classify(b"SSH-2.0-OpenSSH_9.2\r\n");
        let d = reply(&e, KEY, "p");
        assert!(
            d.contains("SSH-2.0-OpenSSH_9.2") && d.contains("tunnel_host"),
            "{d}"
        );
        assert!(reply(&classify(b"\x01\x02garbage"), KEY, "p").contains("\\x01\\x02garbage"));
    }

    /// The same certificate problem names the proxy's settings for the proxy and the API's
    /// for the API: never the other peer's.
    #[cfg(feature = "tls")]
    #[test]
    fn tls_advice_names_the_peers_own_settings() {
        use crate::transport::tls::TlsError;
        let mismatch = TlsError::NameMismatch {
            expected: "m.example".into(),
            presented: vec!["other.example".into()],
        };
        let proxy = tls(Peer::Proxy, &mismatch).unwrap();
        assert!(
            proxy.contains("tunnel_host") && proxy.contains("tls_server_name"),
            "{proxy}"
        );
        let api = tls(Peer::Api, &mismatch).unwrap();
        assert!(
            api.contains("api_url") && api.contains("api_ca_file"),
            "{api}"
        );
        assert!(
            !api.contains("tunnel_host") && !api.contains("tls_server_name"),
            "{api}"
        );
        let untrusted = TlsError::Untrusted {
            trusted: "x".into(),
        };
        assert!(tls(Peer::Api, &untrusted)
            .unwrap()
            .contains("set api_ca_file"));
        assert!(tls(Peer::Proxy, &untrusted)
            .unwrap()
            .contains("set ca_file"));
        let fact = mismatch.to_string();
        assert!(
            !fact.contains("proxy") && !fact.contains("tunnel_host"),
            "{fact}"
        );
    }

    /// A certificate refused by a clock set before this binary was built says the clock is not
    /// set; by a clock that looks right, it says to check the clock. Both show the device's
    /// time next to the certificate's validity.
    #[cfg(feature = "tls")]
    #[test]
    fn certificate_dates_show_the_device_clock_and_a_clock_never_set_is_named() {
        use crate::transport::tls::TlsError;
        let built = crate::clock::built();
        assert!(built > 1_700_000_000, "build time {built}");
        let boot = TlsError::NotYetValid {
            now: 131,
            not_before: Some(built - 86_400),
        };
        let fact = boot.to_string();
        assert!(
            fact.contains("the device's clock reads 1970-01-01 00:02:11 UTC")
                && fact.contains(&format!("valid from {}", crate::clock::utc(built - 86_400))),
            "{fact}"
        );
        for peer in [Peer::Proxy, Peer::Api] {
            let a = tls(peer, &boot).unwrap();
            assert!(
                a.contains("clock is probably not set") && a.contains("NTP"),
                "{a}"
            );
        }
        let late = TlsError::NotYetValid {
            now: built + 3_600,
            not_before: Some(built + 86_400 * 30),
        };
        let a = tls(Peer::Proxy, &late).unwrap();
        assert!(
            !a.contains("probably not set") && a.contains("date -u"),
            "{a}"
        );
        let expired = TlsError::Expired {
            now: built + 3_600,
            not_after: Some(built - 86_400),
        };
        assert!(expired.to_string().contains("valid until"), "{expired}");
        assert!(tls(Peer::Api, &expired)
            .unwrap()
            .contains("Meeting API's operator"));
    }

    #[test]
    fn tcp_advice_by_situation() {
        assert!(refused(Peer::Proxy).contains("tunnel_port"));
        assert!(refused(Peer::Api).contains("api_url"));
        assert!(dns(Peer::Proxy).contains("tunnel_host"));
        assert!(no_answer(9001).contains("9001"));
    }
}
