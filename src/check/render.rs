//! The three ways `check` prints its report: readable text, JSON, a Markdown bug report.

use std::fmt::Write as _;

use serde_json::json;

use super::verdict::Verdict;
use super::{Report, Status};

/// One line per step and the verdict; ANSI colours when `color`.
pub fn text(r: &Report, color: bool) -> String {
    let paint = |code: &str, s: &str| {
        if color {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    };
    let mut out = String::new();
    let who = r.facts.device_key.as_deref().unwrap_or("(no device key)");
    let proxy = r.facts.proxy.as_deref().unwrap_or("(no proxy)");
    let _ = writeln!(out, "tunnel-agent check: device {who}, proxy {proxy}\n");
    for s in &r.steps {
        let label = match s.status {
            Status::Pass => paint("32", "PASS"),
            Status::Warn => paint("33", "WARN"),
            Status::Fail => paint("31", "FAIL"),
            Status::Skipped => paint("2", "SKIP"),
        };
        let _ = writeln!(out, "{label}  {:<10} {} ({} ms)", s.name, s.detail, s.ms);
        if let Some(h) = &s.hint {
            let _ = writeln!(out, "      {:<10} -> {h}", "");
        }
    }
    let code = r.verdict.code();
    let v = if r.verdict == Verdict::Ok {
        paint("32;1", code)
    } else {
        paint("31;1", code)
    };
    let _ = writeln!(
        out,
        "\nVerdict: {v} (exit {})\n{}",
        r.verdict.exit_code(),
        r.summary
    );
    out
}

/// The stable JSON form: `{"verdict", "summary", "exit_code", "device_key", "steps": [{"name",
/// "status", "detail", "hint", "ms"}]}`.
pub fn json(r: &Report) -> String {
    let steps: Vec<_> = r
        .steps
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "status": s.status.as_str(),
                "detail": s.detail,
                "hint": s.hint,
                "ms": s.ms,
            })
        })
        .collect();
    json!({
        "verdict": r.verdict.code(),
        "summary": r.summary,
        "exit_code": r.verdict.exit_code(),
        "device_key": r.facts.device_key,
        "version": env!("CARGO_PKG_VERSION"),
        "steps": steps,
    })
    .to_string()
}

fn mark(s: Status) -> &'static str {
    match s {
        Status::Pass => "✅",
        Status::Warn => "⚠️",
        Status::Fail => "❌",
        Status::Skipped => "➖",
    }
}

/// The questions for the Meeting team: derived from the verdict and from what the check
/// actually saw, so that each one is true of this report (no "closed without an error line"
/// under a quoted reason, no reference to an API answer that was not asked for, no "looks
/// right" when it does not).
fn questions(r: &Report) -> Vec<String> {
    let key = r.facts.device_key.as_deref().unwrap_or("(unknown)");
    let token = r.facts.token_masked.as_deref().unwrap_or("?");
    let ran = |name: &str| {
        r.steps
            .iter()
            .any(|s| s.name == name && s.status != Status::Skipped)
    };
    let api_asked = ran("api");
    let same_api = "Does the proxy validate the handshake against the same API and database that \
                    answered for this device (the api step under Device-side verifications)?";
    let which_token = format!(
        "Is the handshake's token the device's token_code (`{token}` here), or a separate control \
         token from the official agent's configuration? Meeting's documents disagree, and a \
         device sending the wrong one is refused exactly this way."
    );
    let proxy_log =
        format!("What did the proxy log for device key `{key}` at the time of this report?");
    let on_device = |what: &str| {
        format!("None: the fault found is on the device ({what}); nothing points at the proxy or Meeting.")
    };
    let mut q = match r.verdict {
        Verdict::Rejected => {
            let reason = r.facts.refusal.as_deref().unwrap_or("?");
            let mut q = vec![
                proxy_log,
                format!(
                    "The proxy refused device key `{key}` with token `{token}`, saying \
                     \"{reason}\": what exactly must change on the device or in Meeting for it \
                     to be accepted?"
                ),
            ];
            if api_asked {
                q.push(same_api.into());
            }
            q
        }
        Verdict::SilentlyRejected => {
            let mut q = vec![
                proxy_log,
                format!(
                    "Does the proxy's own validation accept device key `{key}` with token \
                     `{token}`? Which check refused it (unknown key, wrong token, not registered, \
                     not authorized)?"
                ),
                which_token,
                "The proxy closed the connection without a byte: could it answer \
                 `{\"status\":\"error\",\"message\":\"...\"}` so devices can say why?"
                    .into(),
            ];
            if api_asked {
                q.push(same_api.into());
            }
            q
        }
        Verdict::DeviceUnknown => vec![format!("Can device `{key}` be registered in Meeting?")],
        Verdict::DeviceNotAuthorized => {
            vec![format!(
                "Can device `{key}` be authorized for tunnels (ssh)?"
            )]
        }
        Verdict::NotMeetingProxy | Verdict::ConnectRefused | Verdict::ConnectTimeout => {
            vec![format!(
                "Is `{}` the right tunnel endpoint for this device, and is the proxy running?",
                r.facts.proxy.as_deref().unwrap_or("?")
            )]
        }
        Verdict::OutboundProxy => vec![on_device(
            "the network's outbound proxy, which the device's administrator configures",
        )],
        Verdict::TlsMismatch | Verdict::TlsFailed => {
            vec!["Does the proxy port speak TLS, and with which certificate?".into()]
        }
        Verdict::OfflineInMeeting => vec![format!(
            "The proxy accepts device `{key}` but Meeting shows it Disconnected: does Meeting \
             receive and record its heartbeats (POST /api/devices/{key}/online)?"
        )],
        Verdict::ConfigError => vec![
            "None yet: the device's configuration must be completed first (config step); the \
             proxy was not contacted."
                .into(),
        ],
        Verdict::DnsFailed => vec![on_device("the proxy's name does not resolve on it")],
        Verdict::LocalServiceDown => vec![on_device(
            "a local service the tunnel reaches is not running",
        )],
        Verdict::SshNotAnswering
        | Verdict::LoginUserMissing
        | Verdict::MeetingKeyMissing
        | Verdict::MeetingKeyRefused
        | Verdict::LoginFileModes => vec![on_device(
            "Meeting's terminal login, see the ssh-login step",
        )],
        Verdict::Disabled => vec!["None: Meeting is switched off on this device.".into()],
        Verdict::AnotherAgent => vec![on_device(
            "another device, or another agent on this one, uses its device key",
        )],
        Verdict::NoReply => vec![
            "None needed: the proxy keeps the connection without replying, as older proxies do, \
             and the agent works with it. Does this proxy version answer the handshake at all?"
                .into(),
        ],
        Verdict::Ok => vec!["None: every step passed.".into()],
    };
    q.dedup();
    q
}

/// A bug report in the shape of the field report, ready to paste into a ticket.
pub fn markdown(r: &Report) -> String {
    let f = &r.facts;
    let mut out = String::new();
    let _ = writeln!(out, "# Tunnel check report: `{}`\n", r.verdict.code());
    let _ = writeln!(out, "## Summary\n\n{}\n", r.summary);
    let _ = writeln!(out, "## Environment\n");
    let _ = writeln!(
        out,
        "- **Device key:** {}",
        f.device_key.as_deref().unwrap_or("(not configured)")
    );
    let _ = writeln!(
        out,
        "- **Token:** {}",
        f.token_masked.as_deref().unwrap_or("(not configured)")
    );
    let _ = writeln!(
        out,
        "- **Proxy:** {} (TLS {})",
        f.proxy.as_deref().unwrap_or("(not configured)"),
        if f.tls { "on" } else { "off" }
    );
    let _ = writeln!(
        out,
        "- **Agent:** tunnel-agent {} on {}",
        env!("CARGO_PKG_VERSION"),
        hostname()
    );
    let _ = writeln!(
        out,
        "- **Date:** {}\n",
        crate::clock::utc(crate::clock::now())
    );
    let _ = writeln!(out, "## Observed behaviour\n");
    let mut n = 0;
    for s in r
        .steps
        .iter()
        .filter(|s| !s.name.starts_with("local") && s.name != "api")
    {
        n += 1;
        let _ = writeln!(
            out,
            "{n}. **{}** {} {} ({} ms)",
            s.name,
            mark(s.status),
            s.detail,
            s.ms
        );
    }
    if let Some(sent) = &f.handshake_sent {
        let _ = writeln!(out, "\nHandshake sent (token masked):\n```\n{sent}\n```");
    }
    if let Some(raw) = &f.reply_raw {
        let shown = if raw.is_empty() { "(0 bytes)" } else { raw };
        let _ = writeln!(
            out,
            "Reply received after {} ms:\n```\n{shown}\n```",
            f.reply_ms.unwrap_or(0)
        );
    }
    let _ = writeln!(out, "\n## Device-side verifications\n");
    for s in r
        .steps
        .iter()
        .filter(|s| s.name.starts_with("local") || s.name == "api")
    {
        let _ = writeln!(out, "- **{}** {} {}", s.name, mark(s.status), s.detail);
    }
    let _ = writeln!(
        out,
        "\n## Expected behaviour\n\nPer the Meeting protocol, the proxy answers the handshake \
         with one JSON line, `{{\"status\":\"authenticated\",\"device_key\":...}}` or an error \
         with a reason (`{{\"status\":\"error\",\"message\":...}}`), then both sides exchange \
         binary N/D/C frames.\n"
    );
    let _ = writeln!(out, "## Questions for the Meeting team\n");
    for (i, q) in questions(r).iter().enumerate() {
        let _ = writeln!(out, "{}. {q}", i + 1);
    }
    let _ = writeln!(
        out,
        "\n---\n*Generated by `tunnel-agent check --report`; verdict `{}`, exit {}.*",
        r.verdict.code(),
        r.verdict.exit_code()
    );
    out
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "(unknown host)".into())
}
