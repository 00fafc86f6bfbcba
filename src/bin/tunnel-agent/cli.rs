//! Command-line parsing for `tunnel-agent` (no parser crate: a handful of flags).

use std::time::Duration;

use tunnel_agent::config::{self, parse_secs, Flags, Source};

/// How `check` prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One line per step, for people.
    Text,
    /// One JSON object.
    Json,
    /// A Markdown bug report.
    Report,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the agent.
    Run {
        /// Configuration flags.
        flags: Flags,
        /// `-v` count minus `-q` count.
        verbosity: i32,
    },
    /// Diagnose the device end to end.
    Check {
        /// Configuration flags.
        flags: Flags,
        /// Output form.
        format: Format,
        /// Bound for each network wait.
        timeout: Duration,
    },
    /// The SSH key work once, then exit.
    Keys {
        /// Configuration flags.
        flags: Flags,
        /// `-v` count minus `-q` count.
        verbosity: i32,
    },
    /// Print the running agent's status file.
    Status {
        /// `--status-file PATH`, else the default.
        path: Option<String>,
        /// `--json`: the file as is.
        json: bool,
    },
    /// Print help.
    Help,
    /// Print the version.
    Version,
}

/// Usage text: the commands, the settings from the configuration table, the exit statuses.
pub fn usage() -> String {
    format!(
        "\
Usage: tunnel-agent [run] [OPTIONS]
       tunnel-agent check [--json | --report] [--timeout SECS] [OPTIONS]
       tunnel-agent status [--json] [--status-file PATH]
       tunnel-agent keys [OPTIONS]

run (the default) dials out to the Meeting proxy and carries its tunnels to local services.
check diagnoses the device end to end (configuration, DNS, TCP, TLS, handshake, Meeting API,
local services) and names the most likely cause of a failure.
status prints the running agent's status file; exit 0 when connected, 1 otherwise.
keys installs Meeting's SSH key for the login user, publishes the device key and updates
known_hosts, once, then exits (run it as root: the service does before starting the agent; an
agent running as root also does it every ssh_keys_interval).
SIGHUP makes a running agent re-read its configuration (reconnecting only if a connection
setting changed); SIGINT/SIGTERM stop it.

Options [environment, configuration key; default]:
  --config FILE              JSON configuration (default: first of /etc/tunnel-agent/config.json,
                             /etc/rpi-cam/meeting.json)
{}  -v, --verbose              more log detail (repeat for trace); overrides RUST_LOG
  -q, --quiet                warnings and errors only (repeat: errors only)
  -h, --help                 this text
  -V, --version              version

The token is never taken from the command line (every local user can read it): set
MEETING_TOKEN or token_code in the configuration file (mode 0600).

check options:
  --json                     one JSON object: {{\"verdict\", \"summary\", \"exit_code\", \"steps\": [...]}}
  --report                   a Markdown bug report to paste into a ticket
  --timeout SECS             bound for each network wait (10)

Exit status of run: 0 stopped by SIGINT/SIGTERM; 2 bad command line or configuration.
Exit status of check: 0 ok (or no_reply: an older proxy that never answers); 1 configuration;
2 network (DNS, TCP, TLS, not a Meeting proxy); 3 refused by the proxy (with a reason or
silently); 4 the Meeting API says the device is unknown or not authorized; 5 local service down;
6 the proxy accepts the device but Meeting shows it Disconnected (no heartbeat); 7 the tunnel
works but Meeting's terminal cannot log in (sshd, login user, Meeting's key, file modes).
Exit status of keys: 0 everything in place (or turned off); 1 failed (API, files, rights);
2 bad command line or configuration; 3 refused for safety (http API, invalid key, fingerprint
mismatch, symbolic link or foreign owner): nothing was written.",
        config::usage()
    )
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut flags = Flags::default();
    let mut verbosity = 0;
    if args.first().map(String::as_str) == Some("status") {
        let mut path = None;
        let mut json = false;
        let mut it = args[1..].iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--json" => json = true,
                "--status-file" => {
                    path = Some(it.next().cloned().ok_or("--status-file needs a value")?)
                }
                "-h" | "--help" => return Ok(Command::Help),
                other => return Err(format!("unknown argument '{other}' for status")),
            }
        }
        return Ok(Command::Status { path, json });
    }
    let mut format = Format::Text;
    let mut timeout = Duration::from_secs(10);
    let mut it = args.iter().peekable();
    let sub = it.peek().map(|a| a.as_str());
    let check = sub == Some("check");
    let keys = sub == Some("keys");
    if check || keys || sub == Some("run") {
        it.next();
    }
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = |flag: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match name {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "-v" | "--verbose" => verbosity += 1,
            "-vv" => verbosity += 2,
            "-q" | "--quiet" => verbosity -= 1,
            "--config" => flags.config = Some(value(name)?.into()),
            "--json" if check => format = Format::Json,
            "--report" if check => format = Format::Report,
            "--timeout" if check => {
                timeout = parse_secs("--timeout", &value(name)?, &Source::Flag("--timeout"))
                    .map_err(|e| e.to_string())?
            }
            "--token" | "--token-code" => {
                return Err(
                    "there is no token flag: a command line is visible to every local \
                            user. Put the token in the configuration file (token_code, mode \
                            0600) or in the MEETING_TOKEN environment variable"
                        .to_owned(),
                )
            }
            other => match config::setting_of_flag(other) {
                Some(s) if s.arg.is_empty() => flags.set(s.key, "true"),
                Some(s) => flags.set(s.key, value(name)?),
                None => return Err(format!("unknown argument '{other}'")),
            },
        }
    }
    if check {
        return Ok(Command::Check {
            flags,
            format,
            timeout,
        });
    }
    if keys {
        return Ok(Command::Keys { flags, verbosity });
    }
    Ok(Command::Run { flags, verbosity })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn run_is_the_default_and_flags_parse() {
        let Ok(Command::Run { flags, verbosity }) = parse(&args(
            "--host h --port=9100 -v -v --device-key K --config /c.json",
        )) else {
            panic!()
        };
        assert_eq!(flags.get("tunnel_host"), Some("h"));
        assert_eq!(flags.get("tunnel_port"), Some("9100"));
        assert_eq!(flags.get("device_key"), Some("K"));
        assert_eq!(
            flags.config.as_deref(),
            Some(std::path::Path::new("/c.json"))
        );
        assert_eq!(verbosity, 2);
        assert_eq!(parse(&args("run -q")).unwrap(), parse(&args("-q")).unwrap());
    }

    #[test]
    fn token_flag_is_refused_and_unknown_flags_named() {
        assert!(parse(&args("--token abc"))
            .unwrap_err()
            .contains("MEETING_TOKEN"));
        assert!(parse(&args("--bogus")).unwrap_err().contains("--bogus"));
        assert!(parse(&args("--host"))
            .unwrap_err()
            .contains("needs a value"));
        assert_eq!(parse(&args("--help")).unwrap(), Command::Help);
        assert_eq!(
            parse(&args("keys --meeting-ssh-user device -v")).unwrap(),
            Command::Keys {
                flags: Flags::default().with("meeting_ssh_user", "device"),
                verbosity: 1
            }
        );
    }

    #[test]
    fn check_takes_its_own_options() {
        let Ok(Command::Check {
            flags,
            format,
            timeout,
        }) = parse(&args(
            "check --json --timeout 2.5 --allow-port 2222 --host h",
        ))
        else {
            panic!()
        };
        assert_eq!(format, Format::Json);
        assert_eq!(timeout, Duration::from_millis(2500));
        assert_eq!(flags.all("allowed_ports"), vec!["2222"]);
        assert!(parse(&args("--json")).is_err(), "--json belongs to check");
        assert!(parse(&args("check --timeout x"))
            .unwrap_err()
            .contains("seconds"));
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn every_flag_of_the_table_parses_and_is_in_the_usage() {
        let text = usage();
        for s in config::SETTINGS {
            let Some(flag) = s.flag else { continue };
            assert!(text.contains(flag), "{flag} missing from the usage");
            let args: Vec<String> = if s.arg.is_empty() {
                vec![flag.to_owned()]
            } else {
                vec![flag.to_owned(), "1".to_owned()]
            };
            let Ok(Command::Run { flags, .. }) = parse(&args) else {
                panic!("{flag} does not parse")
            };
            assert!(flags.get(s.key).is_some(), "{flag} sets nothing");
        }
    }
}
