//! Command-line parsing for `tunnel-agent` (no parser crate: a handful of flags).

use std::time::Duration;

use tunnel_agent::config::{self, Flags};

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
        /// `--handshake`: send one even when an agent for this device is connected.
        handshake: bool,
    },
    /// The SSH key work once, then exit.
    Keys {
        /// Configuration flags.
        flags: Flags,
        /// `-v` count minus `-q` count.
        verbosity: i32,
        /// `--retry`: after a failure that passes, again with backoff until the work is done.
        retry: bool,
    },
    /// Print the running agent's status file.
    Status {
        /// `--status-file PATH`.
        path: Option<String>,
        /// `--config FILE`: where to read `status_file` from.
        config: Option<std::path::PathBuf>,
        /// `--json`: the file as is.
        json: bool,
    },
    /// `ssh-gate PATTERNS`: the forced command of Meeting's key under Dropbear.
    Gate {
        /// The `from=` patterns a client must match.
        patterns: String,
    },
    /// Print the help of a command.
    Help(Topic),
    /// Print the version.
    Version,
}

/// Which command's help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// `tunnel-agent --help` and `run --help`: the commands, run's options and exit status.
    Run,
    /// `check --help`.
    Check,
    /// `status --help`.
    Status,
    /// `keys --help`.
    Keys,
}

/// The help text of `topic`.
pub fn help(topic: Topic) -> String {
    match topic {
        Topic::Run => usage(),
        Topic::Check => CHECK_HELP.to_owned(),
        Topic::Status => STATUS_HELP.to_owned(),
        Topic::Keys => KEYS_HELP.to_owned(),
    }
}

const CHECK_HELP: &str = "\
Usage: tunnel-agent check [--json | --report] [--timeout SECS] [--handshake] [OPTIONS]

Diagnoses the device end to end: configuration, DNS, TCP, TLS, the handshake, the Meeting API,
Meeting presence, the local services and Meeting's terminal login; then names the most likely
cause of a failure. It changes nothing on the device.

When an agent for this device is running and connected (its status file is fresh and its
process alive), check sends no handshake: the proxy would give the device's connection to
check and drop the running agent's, with every tunnel through it (an operator's ssh session
ends). The handshake step then reports that agent's state instead. Every other step runs.

check options:
  --json                     one JSON object: {\"verdict\", \"summary\", \"exit_code\", \"steps\": [...]}
  --report                   a Markdown bug report to paste into a ticket
  --timeout SECS             bound for each network wait (10)
  --handshake                send a handshake even when an agent is connected (its tunnels
                             drop for a few seconds, then it reconnects)
  -h, --help                 this text
OPTIONS: every configuration option of run (tunnel-agent --help), e.g. --config FILE.

Exit status: 0 ok (or no_reply: an older proxy that never answers); 1 configuration;
2 network (DNS, TCP, TLS, not a Meeting proxy); 3 refused by the proxy (with a reason or
silently); 4 the Meeting API says the device is unknown or not authorized; 5 local service down;
6 the proxy accepts the device but Meeting shows it Disconnected (no heartbeat); 7 the tunnel
works but Meeting's terminal cannot log in (sshd, login user, Meeting's key, file modes).";

const STATUS_HELP: &str = "\
Usage: tunnel-agent status [--json] [--status-file PATH | --config FILE]

Prints the running agent's status file: its state and since when, how long the tunnel has been
down, the proxy, channels and bytes, Meeting presence, the last error. A file no longer written
by a live agent says STALE on its first line.

status options:
  --json                     the file as is (JSON)
  --status-file PATH         the status file (default: status_file of the configuration, else
                             /run/tunnel-agent/status.json)
  --config FILE              the configuration whose status_file to read (default: the files
                             /etc/tunnel-agent/config.json over /etc/rpi-cam/meeting.json)
  -h, --help                 this text

Exit status: 0 the agent is running and connected; 1 otherwise (not connected, stale, no file);
2 bad command line.";

const KEYS_HELP: &str = "\
Usage: tunnel-agent keys [--retry] [-v | -q] [OPTIONS]

Does the SSH key work once, then exits: installs Meeting's SSH key for the login user of
Meeting's terminal, publishes the device's own key to Meeting and updates known_hosts with
Meeting's host keys, over verified HTTPS only. Run it as root: the init script does before
starting the agent, the systemd unit tunnel-agent-keys.service at boot and hourly, and an agent
running as root also does it every ssh_keys_interval.

keys options:
  --retry                    after a failure that passes (no answer from the API: network, DNS,
                             the clock not set yet; or an API down, 5xx), try again 5 s later,
                             doubling to a minute, until the work is done; any other failure
                             (a refusal, lacking rights, a 4xx answer) still ends it at once
  -v, --verbose / -q, --quiet  log detail
  -h, --help                 this text
OPTIONS: every configuration option of run (tunnel-agent --help); those of SSH keys are
--ssh-keys, --meeting-ssh-user, --authorized-keys-file, --device-ssh-key, --known-hosts-file,
--state-dir.

Exit status: 0 everything in place (or turned off); 1 failed (API, files, rights); 2 bad
command line or configuration; 3 refused for safety (http API, invalid key, fingerprint
mismatch, symbolic link or foreign owner): nothing was written.";

/// Usage text of run (and the overview): the commands, the settings from the configuration
/// table, run's exit status.
pub fn usage() -> String {
    format!(
        "\
Usage: tunnel-agent [run] [OPTIONS]
       tunnel-agent check [--json | --report] [--timeout SECS] [--handshake] [OPTIONS]
       tunnel-agent status [--json] [--status-file PATH | --config FILE]
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
  --config FILE              JSON configuration, the one file read (default: each that exists of
                             /etc/tunnel-agent/config.json, /etc/rpi-cam/meeting.json, a key
                             in the first winning)
{}  -v, --verbose              more log detail (repeat for trace); overrides RUST_LOG
  -q, --quiet                warnings and errors only (repeat: errors only)
  -h, --help                 this text
  -V, --version              version

The token is never taken from the command line (every local user can read it): set
MEETING_TOKEN or token_code in the configuration file (mode 0600).

Each command has its own help: tunnel-agent check --help, status --help, keys --help.

Exit status of run: 0 stopped by SIGINT/SIGTERM; 2 bad command line or configuration.",
        config::usage()
    )
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut flags = Flags::default();
    let mut verbosity = 0;
    if args.first().map(String::as_str) == Some("ssh-gate") {
        return match &args[1..] {
            [patterns] => Ok(Command::Gate {
                patterns: patterns.clone(),
            }),
            _ => Err("ssh-gate takes one argument: the from= patterns (127.0.0.1,::1)".into()),
        };
    }
    if args.first().map(String::as_str) == Some("status") {
        let mut path = None;
        let mut config = None;
        let mut json = false;
        let mut it = args[1..].iter();
        while let Some(a) = it.next() {
            let (name, inline) = match a.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
                _ => (a.as_str(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| format!("{name} needs a value"))
            };
            match name {
                "--json" => json = true,
                "--status-file" => path = Some(value()?),
                "--config" => config = Some(value()?.into()),
                "-h" | "--help" => return Ok(Command::Help(Topic::Status)),
                other => return Err(format!("unknown argument '{other}' for status")),
            }
        }
        if path.is_some() && config.is_some() {
            return Err("status takes --status-file or --config, not both".into());
        }
        return Ok(Command::Status { path, config, json });
    }
    let mut format = Format::Text;
    let mut timeout = Duration::from_secs(10);
    let mut handshake = false;
    let mut retry = false;
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
            "-h" | "--help" => {
                return Ok(Command::Help(if check {
                    Topic::Check
                } else if keys {
                    Topic::Keys
                } else {
                    Topic::Run
                }))
            }
            "-V" | "--version" => return Ok(Command::Version),
            "-v" | "--verbose" => verbosity += 1,
            "-vv" => verbosity += 2,
            "-q" | "--quiet" => verbosity -= 1,
            "--config" => flags.config = Some(value(name)?.into()),
            "--json" if check => format = Format::Json,
            "--report" if check => format = Format::Report,
            "--handshake" if check => handshake = true,
            "--retry" if keys => retry = true,
            "--timeout" if check => {
                timeout = config::seconds(value(name)?.trim())
                    .map_err(|why| format!("invalid --timeout: {why}"))?
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
                Some(s) if s.arg.is_empty() => flags.set_spec(s, "true"),
                Some(s) => flags.set_spec(s, value(name)?),
                None => return Err(format!("unknown argument '{other}'")),
            },
        }
    }
    if check {
        return Ok(Command::Check {
            flags,
            format,
            timeout,
            handshake,
        });
    }
    if keys {
        return Ok(Command::Keys {
            flags,
            verbosity,
            retry,
        });
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
        assert_eq!(
            flags.given(&config::TUNNEL_HOST.spec).last().copied(),
            Some("h")
        );
        assert_eq!(
            flags.given(&config::TUNNEL_PORT.spec).last().copied(),
            Some("9100")
        );
        assert_eq!(
            flags.given(&config::DEVICE_KEY.spec).last().copied(),
            Some("K")
        );
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
        assert_eq!(parse(&args("--help")).unwrap(), Command::Help(Topic::Run));
        assert_eq!(
            parse(&args("keys --meeting-ssh-user device -v")).unwrap(),
            Command::Keys {
                flags: Flags::default().with(&config::MEETING_SSH_USER, "device"),
                verbosity: 1,
                retry: false,
            }
        );
    }

    #[test]
    fn check_takes_its_own_options() {
        let Ok(Command::Check {
            flags,
            format,
            timeout,
            handshake,
        }) = parse(&args(
            "check --json --timeout 2.5 --allow-port 2222 --host h --handshake",
        ))
        else {
            panic!()
        };
        assert!(handshake);
        assert_eq!(format, Format::Json);
        assert_eq!(timeout, Duration::from_millis(2500));
        assert_eq!(flags.given(&config::ALLOWED_PORTS.spec), vec!["2222"]);
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
    fn each_command_has_its_own_help() {
        let run = parse(&args_of("run --help")).unwrap();
        let check = parse(&args_of("check --help")).unwrap();
        let status = parse(&args_of("status --help")).unwrap();
        let keys = parse(&args_of("keys -h")).unwrap();
        let texts: Vec<String> = [run, check, status, keys]
            .into_iter()
            .map(|c| match c {
                Command::Help(t) => help(t),
                other => panic!("{other:?}"),
            })
            .collect();
        for (i, a) in texts.iter().enumerate() {
            for b in &texts[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert!(
            texts[1].starts_with("Usage: tunnel-agent check") && texts[1].contains("--handshake")
        );
        assert!(
            !texts[1].contains("--heartbeat-interval"),
            "check's help is its own"
        );
        assert!(
            texts[2].starts_with("Usage: tunnel-agent status")
                && texts[2].contains("--config FILE")
        );
        assert!(texts[2].lines().count() < 25, "{}", texts[2]);
        assert!(texts[3].starts_with("Usage: tunnel-agent keys"));
        assert!(
            !texts[0].contains("Markdown bug report"),
            "run's help has no check options"
        );
        assert_eq!(
            parse(&args_of("status --config /c.json")).unwrap(),
            Command::Status {
                path: None,
                config: Some("/c.json".into()),
                json: false
            }
        );
        assert!(parse(&args_of("status --config /c --status-file /s")).is_err());
    }

    fn args_of(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

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
            assert!(!flags.given(s).is_empty(), "{flag} sets nothing");
        }
    }
}
