//! Command-line parsing for `tunnel-agent` (no parser crate: a handful of flags).

use tunnel_agent::config::Flags;

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
    /// Print help.
    Help,
    /// Print the version.
    Version,
}

/// Usage text.
pub const USAGE: &str = "\
Usage: tunnel-agent [run] [OPTIONS]

Dials out to the Meeting proxy and carries its tunnels to local services (sshd, ...).

Options:
  --config FILE              JSON configuration (default: first of /etc/tunnel-agent/config.json,
                             /etc/rpi-cam/meeting.json)
  --device-key KEY           device key (else MEETING_DEVICE_KEY, the file, /etc/meeting/device_info.json)
  --host HOST                proxy host (else MEETING_TUNNEL_HOST, tunnel_host, meeting.ygsoft.fr)
  --port PORT                proxy control port (else MEETING_TUNNEL_PORT, tunnel_port, 9001)
  --handshake-timeout SECS   wait for the handshake reply before assuming an older proxy (5)
  --connect-timeout SECS     local connect timeout per channel (5)
  -v, --verbose              more log detail (repeat for trace); overrides RUST_LOG
  -q, --quiet                warnings and errors only (repeat: errors only)
  -h, --help                 this text
  -V, --version              version

The token is never taken from the command line (every local user can read it): set
MEETING_TOKEN or token_code in the configuration file (mode 0600).

Exit status: 0 stopped by SIGINT/SIGTERM; 2 bad command line or configuration.";

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Command, String> {
    let mut flags = Flags::default();
    let mut verbosity = 0;
    let mut it = args.iter().peekable();
    if it.peek().map(|a| a.as_str()) == Some("run") {
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
            "--device-key" => flags.device_key = Some(value(name)?),
            "--host" => flags.host = Some(value(name)?),
            "--port" => flags.port = Some(value(name)?),
            "--handshake-timeout" => flags.handshake_timeout = Some(value(name)?),
            "--connect-timeout" => flags.connect_timeout = Some(value(name)?),
            "--token" | "--token-code" => {
                return Err(
                    "there is no token flag: a command line is visible to every local \
                            user. Put the token in the configuration file (token_code, mode \
                            0600) or in the MEETING_TOKEN environment variable"
                        .to_owned(),
                )
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
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
        assert_eq!(flags.host.as_deref(), Some("h"));
        assert_eq!(flags.port.as_deref(), Some("9100"));
        assert_eq!(flags.device_key.as_deref(), Some("K"));
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
    }
}
