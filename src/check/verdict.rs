//! From what the check steps found to one verdict: the single most likely cause, in one
//! sentence a non-developer can act on. Pure logic; what to do comes from `advice`, so a
//! verdict says it as the log and the steps do.

use crate::advice::{self, Peer};

/// What went wrong first on the way to the proxy, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// The configuration could not be loaded.
    ConfigError(String),
    /// The configuration file is there but this user may not read it (it is root's).
    ConfigRootOnly(String),
    /// The host name did not resolve.
    DnsFailed,
    /// TCP connect refused.
    ConnectRefused,
    /// TCP connect timed out or the network is unreachable.
    ConnectTimeout,
    /// TLS on one side only.
    TlsMismatch(String),
    /// TLS handshake failed otherwise (certificate, name, expiry).
    TlsFailed(String),
    /// The handshake was sent and the reply classified.
    Replied(Handshake),
    /// Meeting is switched off on this device (`enabled` false); where that is set.
    Disabled(String),
    /// The outbound proxy did not open the way: what it did, and what to do.
    Outbound {
        /// What happened (the outbound proxy's password masked).
        what: String,
        /// What to do.
        advice: String,
    },
}

/// What the proxy did with the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Accepted (a reply, or frames from an older proxy).
    Accepted,
    /// Nothing within the timeout, connection still open.
    NoReply,
    /// Refused with a reason.
    Refused(String),
    /// Closed without a byte.
    Silent,
    /// TLS bytes on a plain connection.
    TlsOnPlain,
    /// Something that is not the Meeting protocol; the printable first bytes.
    NotMeeting(String),
    /// Not sent: the running agent stopped connecting because another agent with this device
    /// key keeps taking its connection; what it logged.
    AnotherAgent(String),
}

/// What the Meeting API said about the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Not configured or not usable: no finding.
    Unknown,
    /// 404: the device does not exist.
    DeviceUnknown,
    /// `authorized: false`.
    NotAuthorized,
    /// Authorized; whether `ssh` is among its services.
    Authorized {
        /// `services` contains `ssh`.
        ssh: bool,
    },
}

/// What Meeting says of the device's presence (its heartbeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Not asked, or no answer: no finding.
    Unknown,
    /// Meeting shows it Available.
    Available,
    /// Meeting shows it Disconnected (or Unknown); why, as far as the device can tell.
    Disconnected(String),
}

/// Whether Meeting's terminal can log in through the tunnel (the `ssh-login` step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Login {
    /// Not checked (no login user determined): no finding.
    Unknown,
    /// sshd answers, the user exists, Meeting's key is in place with modes sshd accepts.
    Ready,
    /// No SSH server answers on `ssh_port`; what was seen.
    NoSsh(String),
    /// `meeting_ssh_user` does not exist.
    NoUser(String),
    /// Meeting's current key is not in the user's `authorized_keys`; where and which.
    KeyMissing(String),
    /// Meeting's key is there, but the SSH server that answers would refuse its line as
    /// written (an option it does not know, a gate that is not there); why.
    LineRefused(String),
    /// sshd's StrictModes would refuse the file; which path and why.
    Modes(String),
}

/// Everything the verdict depends on.
#[derive(Debug, Clone)]
pub struct Findings {
    /// Device key, quoted in summaries.
    pub device_key: String,
    /// `host:port` of the proxy.
    pub proxy: String,
    /// How far the connection got.
    pub reach: Reach,
    /// The API's answer.
    pub api: Api,
    /// Meeting presence.
    pub presence: Presence,
    /// Meeting's terminal login.
    pub login: Login,
    /// Local ports that refused a connection.
    pub local_down: Vec<u16>,
    /// What to do about each of them ("nothing listens on 127.0.0.1:22: start …"), fitted to
    /// the device's init system and SSH server.
    pub local_advice: Vec<String>,
    /// Local ports checked and answering.
    pub local_up: Vec<u16>,
    /// The handshake reply timeout, for the no-reply summary.
    pub reply_timeout_s: f64,
}

/// The verdict codes of `tunnel-agent check --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Everything works.
    Ok,
    /// Configuration missing or invalid.
    ConfigError,
    /// DNS failed.
    DnsFailed,
    /// TCP refused.
    ConnectRefused,
    /// TCP timed out.
    ConnectTimeout,
    /// TLS on one side only.
    TlsMismatch,
    /// TLS failed.
    TlsFailed,
    /// Refused with a reason.
    Rejected,
    /// Closed without a reply.
    SilentlyRejected,
    /// Older proxy that answers nothing.
    NoReply,
    /// Not a Meeting proxy.
    NotMeetingProxy,
    /// API: device unknown.
    DeviceUnknown,
    /// API: device not authorized.
    DeviceNotAuthorized,
    /// Local service down.
    LocalServiceDown,
    /// The proxy accepts the device but Meeting shows it Disconnected.
    OfflineInMeeting,
    /// No SSH server answers on the SSH port.
    SshNotAnswering,
    /// The login user of Meeting's terminal does not exist.
    LoginUserMissing,
    /// Meeting's key is not in the login user's authorized_keys.
    MeetingKeyMissing,
    /// The SSH server would refuse Meeting's key line as written.
    MeetingKeyRefused,
    /// sshd's StrictModes would refuse the login user's authorized_keys.
    LoginFileModes,
    /// Another agent connects with this device key and keeps taking the connection.
    AnotherAgent,
    /// Meeting is switched off on this device, on purpose.
    Disabled,
    /// The outbound proxy did not open the way to the Meeting proxy.
    OutboundProxy,
}

impl Verdict {
    /// The stable code used in JSON.
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::ConfigError => "config_error",
            Verdict::DnsFailed => "dns_failed",
            Verdict::ConnectRefused => "connect_refused",
            Verdict::ConnectTimeout => "connect_timeout",
            Verdict::TlsMismatch => "tls_mismatch",
            Verdict::TlsFailed => "tls_failed",
            Verdict::Rejected => "rejected",
            Verdict::SilentlyRejected => "silently_rejected",
            Verdict::NoReply => "no_reply",
            Verdict::NotMeetingProxy => "not_meeting_proxy",
            Verdict::DeviceUnknown => "device_unknown",
            Verdict::DeviceNotAuthorized => "device_not_authorized",
            Verdict::LocalServiceDown => "local_service_down",
            Verdict::OfflineInMeeting => "offline_in_meeting",
            Verdict::SshNotAnswering => "ssh_not_answering",
            Verdict::LoginUserMissing => "login_user_missing",
            Verdict::MeetingKeyMissing => "meeting_key_missing",
            Verdict::MeetingKeyRefused => "meeting_key_refused",
            Verdict::LoginFileModes => "login_file_modes",
            Verdict::AnotherAgent => "another_agent",
            Verdict::Disabled => "disabled",
            Verdict::OutboundProxy => "outbound_proxy",
        }
    }

    /// Exit status: 0 ok (and no_reply: such proxies work; and disabled: switched off on
    /// purpose); 1 configuration; 2 network (DNS,
    /// TCP, TLS, not a Meeting proxy); 3 refused by the proxy (or displaced there by another
    /// agent with the same key); 4 the API says the device is
    /// unknown or not authorized; 5 local service down; 6 Meeting shows the device
    /// Disconnected; 7 Meeting's terminal cannot log in.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok | Verdict::NoReply | Verdict::Disabled => 0,
            Verdict::ConfigError => 1,
            Verdict::DnsFailed
            | Verdict::ConnectRefused
            | Verdict::ConnectTimeout
            | Verdict::OutboundProxy
            | Verdict::TlsMismatch
            | Verdict::TlsFailed
            | Verdict::NotMeetingProxy => 2,
            Verdict::Rejected | Verdict::SilentlyRejected | Verdict::AnotherAgent => 3,
            Verdict::DeviceUnknown | Verdict::DeviceNotAuthorized => 4,
            Verdict::LocalServiceDown => 5,
            Verdict::OfflineInMeeting => 6,
            Verdict::SshNotAnswering
            | Verdict::LoginUserMissing
            | Verdict::MeetingKeyMissing
            | Verdict::MeetingKeyRefused
            | Verdict::LoginFileModes => 7,
        }
    }
}

fn ports(ps: &[u16]) -> String {
    ps.iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The verdict and its one-sentence summary.
pub fn decide(f: &Findings) -> (Verdict, String) {
    let key = &f.device_key;
    let proxy = &f.proxy;
    let host = proxy.rsplit_once(':').map_or(proxy.as_str(), |(h, _)| h);
    let port = proxy.rsplit_once(':').map_or("", |(_, p)| p);
    let api_refusal = || match f.api {
        Api::DeviceUnknown => Some((
            Verdict::DeviceUnknown,
            format!(
                "The Meeting API does not know device {key}: {}.",
                advice::device_unknown()
            ),
        )),
        Api::NotAuthorized => Some((
            Verdict::DeviceNotAuthorized,
            format!(
                "Device {key} exists in Meeting but is not authorized for tunnels: {}.",
                advice::not_authorized()
            ),
        )),
        _ => None,
    };
    let local_down = || {
        (!f.local_down.is_empty()).then(|| {
            (
                Verdict::LocalServiceDown,
                if f.local_advice.is_empty() {
                    format!(
                        "The proxy accepts the device but nothing listens on {} on the device: \
                         start the service that should.",
                        ports(&f.local_down)
                    )
                } else {
                    format!(
                        "The proxy accepts the device, but {}.",
                        f.local_advice.join("; ")
                    )
                },
            )
        })
    };
    let offline = || match &f.presence {
        Presence::Disconnected(why) => Some((
            Verdict::OfflineInMeeting,
            format!(
                "The proxy accepts device {key}, but Meeting shows it Disconnected, so no tunnel \
                 can be requested: {why}"
            ),
        )),
        _ => None,
    };
    let login = || match &f.login {
        Login::Unknown | Login::Ready => None,
        Login::NoSsh(seen) => Some((
            Verdict::SshNotAnswering,
            format!(
                "The tunnel works but no SSH server answers on the device ({seen}), so Meeting's \
                 terminal cannot log in: {}.",
                advice::ssh_not_answering()
            ),
        )),
        Login::NoUser(user) => Some((
            Verdict::LoginUserMissing,
            format!(
                "Meeting's terminal logs in as \"{user}\", which does not exist on the device: \
                 {}.",
                advice::no_user(user)
            ),
        )),
        Login::KeyMissing(what) => Some((
            Verdict::MeetingKeyMissing,
            format!(
                "Meeting's terminal cannot log in: {what}; {}.",
                advice::key_missing()
            ),
        )),
        Login::LineRefused(why) => Some((
            Verdict::MeetingKeyRefused,
            format!(
                "Meeting's key is installed, but {why}, so Meeting's terminal cannot log in: {}.",
                advice::line_refused()
            ),
        )),
        Login::Modes(what) => Some((
            Verdict::LoginFileModes,
            format!(
                "sshd will refuse Meeting's key because of file ownership or modes \
                 (StrictModes): {what}; {}.",
                advice::login_modes()
            ),
        )),
    };
    match &f.reach {
        Reach::ConfigRootOnly(e) => (
            Verdict::ConfigError,
            format!(
                "This user cannot read the agent's configuration ({e}), so nothing was checked: \
                 {}.",
                advice::config_root_only()
            ),
        ),
        Reach::ConfigError(e) => (
            Verdict::ConfigError,
            format!("The agent's configuration is incomplete or invalid: {e}"),
        ),
        Reach::Outbound { what, advice } => (
            Verdict::OutboundProxy,
            format!("The way through the outbound proxy is closed: {what}; {advice}."),
        ),
        Reach::DnsFailed => (
            Verdict::DnsFailed,
            format!(
                "The device cannot resolve the proxy name {host}: {}.",
                advice::dns(Peer::Proxy)
            ),
        ),
        Reach::ConnectRefused => (
            Verdict::ConnectRefused,
            format!(
                "The proxy {proxy} refused the connection: {}.",
                advice::refused(Peer::Proxy)
            ),
        ),
        Reach::ConnectTimeout => (
            Verdict::ConnectTimeout,
            format!(
                "Nothing answers at {proxy}: {}.",
                advice::no_answer(port.parse().unwrap_or(0))
            ),
        ),
        Reach::TlsMismatch(d) => (
            Verdict::TlsMismatch,
            format!("TLS is on at one end only: {d}."),
        ),
        Reach::TlsFailed(d) => (
            Verdict::TlsFailed,
            format!("The TLS connection to {proxy} failed: {d}."),
        ),
        Reach::Replied(Handshake::TlsOnPlain) => (
            Verdict::TlsMismatch,
            format!(
                "The proxy port {proxy} speaks TLS but the agent does not: {}.",
                advice::tls_on_plain()
            ),
        ),
        Reach::Replied(Handshake::NotMeeting(first)) => (
            Verdict::NotMeetingProxy,
            format!(
                "{proxy} is not a Meeting proxy (it answered \"{first}\"): {}.",
                advice::not_meeting()
            ),
        ),
        Reach::Replied(Handshake::Refused(reason)) => api_refusal().unwrap_or_else(|| {
            (
                Verdict::Rejected,
                format!(
                    "The proxy refused device {key} with the reason \"{reason}\": correct the \
                     device's token or registration accordingly."
                ),
            )
        }),
        Reach::Replied(Handshake::Silent) => api_refusal().unwrap_or_else(|| {
            let mut backing = Vec::new();
            if matches!(f.api, Api::Authorized { .. }) {
                backing.push("the Meeting API says the device is authorized".to_owned());
            }
            if !f.local_up.is_empty() {
                backing.push(format!("{} is listening", ports(&f.local_up)));
            }
            let although = if backing.is_empty() {
                String::new()
            } else {
                format!(", although {}", backing.join(" and "))
            };
            (
                Verdict::SilentlyRejected,
                format!(
                    "The Meeting proxy's own validation rejected device key {key} and its token \
                     without giving a reason{although}: ask the Meeting team why their proxy \
                     refuses device {key} (what their proxy logged for it) and which token it \
                     expects. A likely cause: Meeting's documents disagree on whether the \
                     handshake's token is the device's token_code or a separate control token \
                     from the official agent's configuration, and a device sending the wrong one \
                     is refused exactly this way."
                ),
            )
        }),
        Reach::Replied(Handshake::NoReply) => local_down()
            .or_else(offline)
            .or_else(login)
            .unwrap_or_else(|| {
                (
                    Verdict::NoReply,
                    format!(
                    "The proxy {proxy} kept the connection open but sent no reply within {:.0} s: \
                     it is probably an older proxy that never answers, and the tunnel should work.",
                    f.reply_timeout_s
                ),
                )
            }),
        Reach::Disabled(why) => (
            Verdict::Disabled,
            format!(
                "{why}: the agent holds no tunnel and sends no heartbeat, on purpose. To switch \
                 it on, set enabled to true and reload the agent (systemctl reload tunnel-agent, \
                 or SIGHUP)."
            ),
        ),
        Reach::Replied(Handshake::AnotherAgent(logged)) => (
            Verdict::AnotherAgent,
            format!(
                "Another agent is connecting as device {key}: the running agent's connection \
                 was taken again and again, and it stopped taking it back. It logged: {logged}"
            ),
        ),
        Reach::Replied(Handshake::Accepted) => local_down()
            .or_else(offline)
            .or_else(login)
            .unwrap_or_else(|| {
                (
                    Verdict::Ok,
                    format!(
                        "The tunnel works: the proxy accepts device {key} and the local services \
                     answer."
                    ),
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3316A52EB08837267BF6BD3E2B2E8DC7";

    fn findings(reach: Reach, api: Api, down: &[u16]) -> Findings {
        Findings {
            device_key: KEY.into(),
            proxy: "meeting.ygsoft.fr:9001".into(),
            reach,
            api,
            presence: Presence::Unknown,
            login: Login::Unknown,
            local_down: down.to_vec(),
            local_advice: Vec::new(),
            local_up: if down.is_empty() { vec![22] } else { vec![] },
            reply_timeout_s: 10.0,
        }
    }

    #[test]
    fn the_field_report_is_silently_rejected_and_says_whom_to_ask() {
        let (v, s) = decide(&findings(
            Reach::Replied(Handshake::Silent),
            Api::Authorized { ssh: true },
            &[],
        ));
        assert_eq!(v, Verdict::SilentlyRejected);
        assert_eq!(v.exit_code(), 3);
        assert!(
            s.contains("proxy's own validation rejected device key"),
            "{s}"
        );
        assert!(s.contains("API says the device is authorized"), "{s}");
        assert!(s.contains("127.0.0.1:22 is listening"), "{s}");
        assert!(s.contains("ask the Meeting team"), "{s}");
        assert!(s.matches(KEY).count() >= 2, "{s}");
    }

    #[test]
    fn accepted_but_disconnected_in_meeting_says_why() {
        let mut f = findings(
            Reach::Replied(Handshake::Accepted),
            Api::Authorized { ssh: true },
            &[],
        );
        f.presence = Presence::Disconnected("the heartbeat is off (heartbeat false)".into());
        let (v, s) = decide(&f);
        assert_eq!((v, v.exit_code()), (Verdict::OfflineInMeeting, 6));
        assert!(s.contains("Meeting shows it Disconnected"), "{s}");
        assert!(s.contains("heartbeat false"), "{s}");
        f.presence = Presence::Available;
        assert_eq!(decide(&f).0, Verdict::Ok);
    }

    #[test]
    fn a_working_tunnel_that_meetings_terminal_cannot_log_in_through_exits_7() {
        let mut f = findings(
            Reach::Replied(Handshake::Accepted),
            Api::Authorized { ssh: true },
            &[],
        );
        for (login, verdict, says) in [
            (
                Login::NoUser("device".into()),
                Verdict::LoginUserMissing,
                "adduser device",
            ),
            (
                Login::KeyMissing("x".into()),
                Verdict::MeetingKeyMissing,
                "tunnel-agent keys",
            ),
            (
                Login::Modes("y".into()),
                Verdict::LoginFileModes,
                "StrictModes",
            ),
            (
                Login::LineRefused("Dropbear 2022.83 does not know the option from".into()),
                Verdict::MeetingKeyRefused,
                "writes the line this server accepts",
            ),
            (
                Login::NoSsh("z".into()),
                Verdict::SshNotAnswering,
                "start sshd",
            ),
        ] {
            f.login = login;
            let (v, s) = decide(&f);
            assert_eq!((v, v.exit_code()), (verdict, 7));
            assert!(s.contains(says), "{s}");
        }
        // A service down or the device offline in Meeting comes first.
        f.presence = Presence::Disconnected("no heartbeat".into());
        assert_eq!(decide(&f).0, Verdict::OfflineInMeeting);
        f.login = Login::Ready;
        f.presence = Presence::Available;
        assert_eq!(decide(&f).0, Verdict::Ok);
    }

    #[test]
    fn the_api_explains_a_refusal_when_it_can() {
        let silent = Reach::Replied(Handshake::Silent);
        let refused = Reach::Replied(Handshake::Refused("Invalid token".into()));
        assert_eq!(
            decide(&findings(silent.clone(), Api::DeviceUnknown, &[])).0,
            Verdict::DeviceUnknown
        );
        assert_eq!(
            decide(&findings(refused.clone(), Api::NotAuthorized, &[])).0,
            Verdict::DeviceNotAuthorized
        );
        let (v, s) = decide(&findings(refused, Api::Unknown, &[]));
        assert_eq!(v, Verdict::Rejected);
        assert!(s.contains("\"Invalid token\""));
    }

    #[test]
    fn the_first_failure_on_the_path_wins() {
        let f = |r| decide(&findings(r, Api::DeviceUnknown, &[22])).0;
        assert_eq!(f(Reach::DnsFailed), Verdict::DnsFailed);
        assert_eq!(f(Reach::ConnectRefused), Verdict::ConnectRefused);
        assert_eq!(f(Reach::ConnectTimeout), Verdict::ConnectTimeout);
        assert_eq!(
            f(Reach::Replied(Handshake::TlsOnPlain)),
            Verdict::TlsMismatch
        );
        assert_eq!(
            f(Reach::Replied(Handshake::NotMeeting("HTTP/1.1".into()))),
            Verdict::NotMeetingProxy
        );
        assert_eq!(
            f(Reach::Replied(Handshake::Accepted)),
            Verdict::LocalServiceDown
        );
        assert_eq!(
            f(Reach::Replied(Handshake::NoReply)),
            Verdict::LocalServiceDown
        );
    }

    #[test]
    fn ok_and_no_reply_exit_zero_everything_else_does_not() {
        let ok = decide(&findings(
            Reach::Replied(Handshake::Accepted),
            Api::Unknown,
            &[],
        ))
        .0;
        assert_eq!((ok, ok.exit_code()), (Verdict::Ok, 0));
        let nr = decide(&findings(
            Reach::Replied(Handshake::NoReply),
            Api::Unknown,
            &[],
        ))
        .0;
        assert_eq!((nr, nr.exit_code()), (Verdict::NoReply, 0));
        assert_eq!(Verdict::ConfigError.exit_code(), 1);
        assert_eq!(Verdict::TlsFailed.exit_code(), 2);
        assert_eq!(Verdict::DeviceNotAuthorized.exit_code(), 4);
        assert_eq!(Verdict::LocalServiceDown.exit_code(), 5);
    }
}
