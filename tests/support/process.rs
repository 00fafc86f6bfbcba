//! Running a program and reading its log: the one implementation the tests, the examples and
//! the benchmark use. A program's log lines are its readiness signals ("listening for agents
//! on", "tunnel ready"), never a sleep.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Generous bound for anything that should happen "at once" (never a performance assertion).
pub const SOON: Duration = Duration::from_secs(20);

/// Lines kept per process: a long soak's log stays bounded, the oldest lines go first.
const KEEP_LINES: usize = 200_000;

/// Path of one of the crate's binaries: the one cargo built for this test, else the one next to
/// the `examples` folder this program was built into; `AGENT_BIN` names another tunnel-agent
/// (e.g. the static musl build the devices run).
pub fn bin(name: &str) -> String {
    if let (Some(path), "tunnel-agent") = (std::env::var_os("AGENT_BIN"), name) {
        return path.to_string_lossy().into_owned();
    }
    let built = match name {
        "tunnel-agent" => option_env!("CARGO_BIN_EXE_tunnel-agent"),
        "meeting-proxy" => option_env!("CARGO_BIN_EXE_meeting-proxy"),
        _ => None,
    };
    if let Some(path) = built {
        return path.to_owned();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(|p| p.parent())
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
        .to_string_lossy()
        .into_owned()
}

/// Called with each log line as it arrives (the soak counts reconnections with one).
pub type Tap = Box<dyn Fn(&str) + Send + Sync>;

/// How to start a program.
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdout: bool,
    stdin: bool,
    echo: bool,
    tap: Option<Tap>,
}

impl Launch {
    /// `program` (a path, or a name looked up on PATH). The agent's settings from this
    /// machine's environment are removed, and the agent never touches this machine's SSH keys
    /// unless the launch sets `MEETING_SSH_KEYS` itself.
    pub fn new(program: impl Into<OsString>) -> Launch {
        Launch {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            stdout: false,
            stdin: false,
            echo: std::env::var_os("TEST_ECHO_LOGS").is_some(),
            tap: None,
        }
    }

    /// Adds arguments.
    pub fn args<S: AsRef<str>>(mut self, args: &[S]) -> Launch {
        self.args
            .extend(args.iter().map(|a| OsString::from(a.as_ref())));
        self
    }

    /// Adds environment variables.
    pub fn envs(mut self, env: &[(&str, &str)]) -> Launch {
        self.env.extend(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        self
    }

    /// Reads standard output into the log too (iperf3 and socat write their readiness there).
    pub fn with_stdout(mut self) -> Launch {
        self.stdout = true;
        self
    }

    /// Keeps a pipe to standard input, for [`Proc::send`] (a board's serial console).
    pub fn with_stdin(mut self) -> Launch {
        self.stdin = true;
        self
    }

    /// Prints each log line, tagged with the program's name (the demo shows its logs).
    pub fn echo(mut self, on: bool) -> Launch {
        self.echo = on;
        self
    }

    /// Calls `tap` with every line.
    pub fn tap(mut self, tap: Tap) -> Launch {
        self.tap = Some(tap);
        self
    }

    /// Starts it, saying why it could not.
    pub fn try_start(self) -> Result<Proc, String> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(if self.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if self.stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped());
        for var in [
            "RUST_LOG",
            "MEETING_DEVICE_KEY",
            "MEETING_TOKEN",
            "MEETING_TUNNEL_HOST",
            "MEETING_TUNNEL_PORT",
            "MEETING_TUNNEL_TLS",
            "MEETING_API_URL",
            "MEETING_HEARTBEAT",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("MEETING_SSH_KEYS", "false");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let shown = self.program.to_string_lossy().into_owned();
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let stdin = child.stdin.take();
        let name = shown.rsplit('/').next().unwrap_or(&shown).to_owned();
        let log = Arc::new(Log::default());
        let tap: Option<Arc<Tap>> = self.tap.map(Arc::new);
        let mut pipes: Vec<Box<dyn Read + Send>> = Vec::new();
        if let Some(err) = child.stderr.take() {
            pipes.push(Box::new(err));
        }
        if let Some(out) = child.stdout.take() {
            pipes.push(Box::new(out));
        }
        let readers = Arc::new(Mutex::new(pipes.len()));
        for pipe in pipes {
            let (log, tap, readers) = (log.clone(), tap.clone(), readers.clone());
            let (tag, echo) = (name.clone(), self.echo);
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if echo {
                        println!("    [{tag}] {line}");
                    }
                    if let Some(tap) = &tap {
                        tap(&line);
                    }
                    log.push(line);
                }
                let mut left = readers.lock().unwrap_or_else(|p| p.into_inner());
                *left -= 1;
                if *left == 0 {
                    log.end();
                }
            });
        }
        Ok(Proc {
            name,
            child,
            log,
            cursor: Mutex::new(0),
            stdin: Mutex::new(stdin),
        })
    }

    /// Starts it; panics with why it could not.
    pub fn start(self) -> Proc {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

#[derive(Default)]
struct Lines {
    /// The lines kept, the oldest first.
    kept: VecDeque<String>,
    /// How many lines were dropped before `kept[0]`.
    dropped: usize,
    /// Every reader reached the end of its pipe.
    ended: bool,
}

#[derive(Default)]
struct Log {
    lines: Mutex<Lines>,
    changed: Condvar,
}

impl Log {
    fn lock(&self) -> MutexGuard<'_, Lines> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, line: String) {
        let mut g = self.lock();
        g.kept.push_back(line);
        if g.kept.len() > KEEP_LINES {
            g.kept.pop_front();
            g.dropped += 1;
        }
        self.changed.notify_all();
    }

    fn end(&self) {
        self.lock().ended = true;
        self.changed.notify_all();
    }

    /// Waits until `found` finds something in the lines (or they end, or `timeout` passes).
    fn wait<T>(
        &self,
        timeout: Duration,
        mut found: impl FnMut(&Lines) -> Option<T>,
    ) -> Result<T, (bool, String)> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if let Some(v) = found(&g) {
                return Ok(v);
            }
            let now = Instant::now();
            if now >= deadline || g.ended {
                let tail: Vec<&str> = g
                    .kept
                    .iter()
                    .rev()
                    .take(200)
                    .rev()
                    .map(|s| s.as_str())
                    .collect();
                return Err((g.ended, tail.join("\n")));
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// A process's log, for a thread that waits on it while the test holds the [`Proc`].
#[derive(Clone)]
pub struct Watcher(Arc<Log>);

impl Watcher {
    /// The newest line containing every one of `pats`, waiting up to `timeout` for one.
    pub fn wait_last(&self, pats: &[&str], timeout: Duration) -> Option<String> {
        self.0
            .wait(timeout, |g| {
                g.kept
                    .iter()
                    .rev()
                    .find(|l| pats.iter().all(|p| l.contains(p)))
                    .cloned()
            })
            .ok()
    }
}

/// A running process whose log (stderr, and stdout when asked) is collected line by line.
/// Killed when dropped, also when a test panics.
pub struct Proc {
    /// The program's file name, for messages.
    pub name: String,
    child: Child,
    log: Arc<Log>,
    /// Where [`Proc::next_after`] goes on from.
    cursor: Mutex<usize>,
    /// Standard input, with [`Launch::with_stdin`].
    stdin: Mutex<Option<std::process::ChildStdin>>,
}

impl Proc {
    /// Starts `program` with `args` and extra environment; panics when it cannot.
    pub fn spawn(program: impl Into<OsString>, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Launch::new(program).args(args).envs(env).start()
    }

    /// Writes `text` to its standard input ([`Launch::with_stdin`]).
    pub fn send(&self, text: &str) {
        use std::io::Write;
        let mut g = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let pipe = g.as_mut().expect("started without with_stdin");
        pipe.write_all(text.as_bytes())
            .and_then(|()| pipe.flush())
            .unwrap_or_else(|e| panic!("{}: cannot write to its input: {e}", self.name));
    }

    /// Everything logged so far (up to the last lines kept).
    pub fn output(&self) -> String {
        let g = self.log.lock();
        g.kept
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A handle on its log that another thread can wait on.
    pub fn watcher(&self) -> Watcher {
        Watcher(self.log.clone())
    }

    /// The newest line containing every one of `pats`, waiting up to `timeout` for one.
    pub fn wait_last(&self, pats: &[&str], timeout: Duration) -> Option<String> {
        self.watcher().wait_last(pats, timeout)
    }

    /// Number of lines kept that contain `pat`.
    pub fn count(&self, pat: &str) -> usize {
        self.log
            .lock()
            .kept
            .iter()
            .filter(|l| l.contains(pat))
            .count()
    }

    /// The `n`-th line (1-based) containing `pat`, waiting up to `timeout`; what did not come
    /// otherwise, with the end of the log.
    pub fn try_wait_for_nth(
        &self,
        pat: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<String, String> {
        self.log
            .wait(timeout, |g| {
                g.kept
                    .iter()
                    .filter(|l| l.contains(pat))
                    .nth(n - 1)
                    .cloned()
            })
            .map_err(|(ended, log)| {
                format!(
                    "{}: no line #{n} containing {pat:?} ({}). Log:\n{log}",
                    self.name,
                    if ended { "it ended first" } else { "timed out" }
                )
            })
    }

    /// [`Proc::try_wait_for_nth`], panicking with the log.
    pub fn wait_for_nth(&self, pat: &str, n: usize, timeout: Duration) -> String {
        self.try_wait_for_nth(pat, n, timeout)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The first line containing `pat`.
    pub fn wait_for(&self, pat: &str, timeout: Duration) -> String {
        self.wait_for_nth(pat, 1, timeout)
    }

    /// The first line containing `pat`, saying what did not come.
    pub fn try_wait_for(&self, pat: &str, timeout: Duration) -> Result<String, String> {
        self.try_wait_for_nth(pat, 1, timeout)
    }

    /// Reading the log in order: the next line (after the one the previous call found)
    /// containing `pat`, within [`SOON`]; returns the text after `pat`.
    pub fn try_next_after(&self, pat: &str) -> Result<String, String> {
        let mut cursor = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
        let from = *cursor;
        let (at, rest) = self
            .log
            .wait(SOON, |g| {
                let skip = from.saturating_sub(g.dropped);
                g.kept.iter().enumerate().skip(skip).find_map(|(i, l)| {
                    l.find(pat)
                        .map(|p| (g.dropped + i, l[p + pat.len()..].to_owned()))
                })
            })
            .map_err(|(ended, log)| {
                format!(
                    "{}: no further log line containing {pat:?} ({}). Log:\n{log}",
                    self.name,
                    if ended { "it ended first" } else { "timed out" }
                )
            })?;
        *cursor = at + 1;
        Ok(rest)
    }

    /// [`Proc::try_next_after`], panicking with the log.
    pub fn next_after(&self, pat: &str) -> String {
        self.try_next_after(pat).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (TERM, INT, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, then for its log to be read to the end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                let _ = self
                    .log
                    .wait(Duration::from_secs(5), |g| g.ended.then_some(()));
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10)); // polling a child has no readiness signal
        }
    }

    /// Kills the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
