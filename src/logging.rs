//! Log set-up shared by both binaries: `env_logger` to stderr, or RFC 3164 lines to the local
//! syslog socket (`/dev/log`, BusyBox syslogd); info by default, `RUST_LOG` or `-v`/`-q`.

pub mod repeats;

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The default local syslog socket.
pub const SYSLOG_SOCKET: &str = "/dev/log";

/// The level for syslog: `-v`/`-q` if given, else `RUST_LOG` when it names a plain level
/// (`debug`, `warn`, ...), else info. (Per-module `RUST_LOG` filters apply to stderr only.)
fn syslog_level(verbosity: i32) -> LevelFilter {
    if verbosity != 0 {
        return level(verbosity);
    }
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(LevelFilter::Info)
}

fn level(verbosity: i32) -> LevelFilter {
    match verbosity {
        i32::MIN..=-2 => LevelFilter::Error,
        -1 => LevelFilter::Warn,
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// The syslog priority of a level (sd-daemon(3)'s `<N>` prefixes, RFC 5424 severities).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// Whether stderr is the systemd journal's stream: `JOURNAL_STREAM` (`DEVICE:INODE`, set by
/// systemd for a service whose output goes to the journal) names stderr's own file.
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    stream.trim() == format!("{}:{}", meta.dev(), meta.ino())
}

/// Starts logging to stderr. `verbosity` counts `-v` minus `-q`; when it is zero `RUST_LOG`
/// decides, and without `RUST_LOG` the level is info.
pub fn init(verbosity: i32) {
    let mut b = env_logger::Builder::new();
    b.filter_level(LevelFilter::Info);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if verbosity != 0 {
        b.filter_level(level(verbosity));
    }
    let journal = stderr_is_journal();
    b.format(move |buf, record| {
        if journal {
            // journald reads the priority from the prefix and stamps the time itself.
            return writeln!(
                buf,
                "<{}>{:<5} {}",
                priority(record.level()),
                record.level(),
                record.args()
            );
        }
        writeln!(
            buf,
            "{} {:<5} {}",
            crate::clock::rfc3339_millis_now(),
            record.level(),
            record.args()
        )
    });
    let _ = b.try_init();
}

/// Starts logging to the syslog socket at `socket` as `program[pid]`, facility daemon. Falls
/// back to stderr (and says why there) if the socket cannot be used.
pub fn init_syslog(program: &str, socket: &Path, verbosity: i32) {
    let sock = UnixDatagram::unbound().and_then(|s| s.connect(socket).map(|()| s));
    match sock {
        Ok(sock) => {
            let max = syslog_level(verbosity);
            let logger = Syslog {
                sock: Mutex::new(sock),
                tag: format!("{program}[{}]", std::process::id()),
                max,
            };
            if log::set_boxed_logger(Box::new(logger)).is_err() {
                eprintln!("{program}: logging was already set up; --syslog ignored");
            }
            log::set_max_level(max);
        }
        Err(e) => {
            init(verbosity);
            log::warn!(
                "cannot log to syslog at {}: {e}; logging to stderr instead (is syslogd running?)",
                socket.display()
            );
        }
    }
}

struct Syslog {
    sock: Mutex<UnixDatagram>,
    tag: String,
    max: LevelFilter,
}

/// One RFC 3164 line as local syslog() sends it: `<PRI>Mmm dd hh:mm:ss tag[pid]: message`
/// (facility daemon; the time in UTC, which syslogd may replace with its own).
pub fn rfc3164(level: Level, tag: &str, message: &str, secs: u64) -> String {
    const DAEMON: u8 = 3;
    let severity = priority(level);
    let utc = crate::clock::utc(secs); // YYYY-MM-DD HH:MM:SS UTC
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][utc[5..7].parse::<usize>().unwrap_or(1).clamp(1, 12) - 1];
    let day: u32 = utc[8..10].parse().unwrap_or(1);
    format!(
        "<{}>{month} {day:>2} {} {tag}: {message}",
        DAEMON * 8 + severity,
        &utc[11..19]
    )
}

impl Log for Syslog {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.max
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = rfc3164(
            record.level(),
            &self.tag,
            &record.args().to_string(),
            crate::clock::now(),
        );
        let sock = self.sock.lock().unwrap_or_else(|p| p.into_inner());
        // A full or restarting syslogd must never stall the agent: drop the line instead.
        let _ = sock.set_nonblocking(true);
        let _ = sock.send(line.as_bytes());
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3164_line() {
        assert_eq!(
            rfc3164(Level::Error, "tunnel-agent[42]", "boom", 1_769_997_420),
            "<27>Feb  2 01:57:00 tunnel-agent[42]: boom"
        );
        assert!(rfc3164(Level::Info, "t[1]", "x", 0).starts_with("<30>Jan  1 00:00:00 t[1]: x"));
    }
}
