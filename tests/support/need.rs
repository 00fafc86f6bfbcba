//! What a test needs of the machine (root, a tool), and the one policy when it is missing:
//! under CI (`CI` set, as `.ci/run` runs) the test fails, because `.ci/run` installs every
//! tool and runs as root; elsewhere the test says `skipped: …` on the terminal, past the test
//! harness's capture, and returns without asserting anything. Never a silent pass.

use std::io::Write;
use std::process::{Command, Stdio};

/// Something a test needs from the machine.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// To run as root (network namespaces, chown, setpriv).
    Root,
    /// A local user (`.ci/run` creates the ones the tests log in as).
    User(&'static str),
    /// A program on PATH (or at that path), from that Debian package.
    Tool {
        /// The command.
        program: &'static str,
        /// The Debian package that installs it.
        package: &'static str,
    },
}

impl Need {
    fn met(&self) -> bool {
        match self {
            Need::Root => Command::new("id")
                .arg("-u")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
                .unwrap_or(false),
            Need::User(name) => Command::new("id")
                .arg(name)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            Need::Tool { program, .. } => Command::new("sh")
                .args(["-c", &format!("command -v {program}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
        }
    }

    fn says(&self) -> String {
        match self {
            Need::Root => "needs root".to_owned(),
            Need::User(name) => format!("needs the user {name} (useradd -m {name})"),
            Need::Tool { program, package } => {
                format!("needs {program} (Debian package {package})")
            }
        }
    }
}

/// A tool and the Debian package that installs it.
pub const fn tool(program: &'static str, package: &'static str) -> Need {
    Need::Tool { program, package }
}

/// Whether `test` may run: true when every need is met. Otherwise, under CI, it panics (CI
/// must have them all); elsewhere it prints `skipped: TEST: needs …` to the terminal and
/// returns false.
#[must_use]
pub fn may_run(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<String> = needs.iter().filter(|n| !n.met()).map(Need::says).collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var_os("CI").is_some() {
        panic!("CI is set but {test} {what}: .ci/run runs as root and installs every tool");
    }
    // Straight to the terminal: libtest captures print!/eprint!, not the stream itself.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {what}");
    false
}
