//! The one support module of the tests, the examples and the benchmark: running the real
//! binaries and reading their logs (`process`), the tunnel on loopback (`harness`), the fake
//! Meeting API (`fake_api`), the peers the benchmark compares with (`peers`), what a test needs
//! of the machine (`need`), a peer unreachable until opened and a path that can be cut
//! (`relay`), a real sshd (`sshd`), a booted Debian root
//! (`debian`), test data, loopback services and readers of `/proc`. Tests say
//! `mod support;`; examples include it with `#[path]`.
#![allow(dead_code, unused_imports)]

pub mod debian;
pub mod fake_api;
pub mod frontend;
pub mod harness;
pub mod integrity;
pub mod need;
pub mod outbound;
pub mod peers;
pub mod pki;
pub mod process;
pub mod relay;
pub mod sshd;

pub use fake_api::FakeApi;
pub use harness::*;
pub use need::{may_run, tool, Need};
pub use process::{bin, Launch, Proc, SOON};

use std::net::{Shutdown, TcpListener};
use std::thread;

/// Deterministic pseudo-random bytes (xorshift), so a corrupted byte is found by comparing.
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

/// A loopback port that was free a moment ago (nothing listens on it now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A TCP connection to `to` from the local address `from` (any of 127.0.0.0/8 on loopback:
/// another source, as another machine would be), with a receive buffer of `rcvbuf` bytes when
/// given (no autotuning: a client that stops reading fills it at once).
pub fn connect_from(
    from: std::net::IpAddr,
    to: std::net::SocketAddr,
    rcvbuf: Option<usize>,
) -> std::io::Result<std::net::TcpStream> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(n) = rcvbuf {
        sock.set_recv_buffer_size(n)?;
    }
    sock.bind(&std::net::SocketAddr::new(from, 0).into())?;
    sock.connect(&to.into())?;
    Ok(sock.into())
}

/// Moves this thread, and so every process and thread it starts from now on, into a new
/// network namespace with only loopback up.
pub fn own_network() {
    #[allow(unsafe_code)]
    // SAFETY: unshare(2) with CLONE_NEWNET only changes this thread's network namespace; no
    // memory is shared with the call.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let st = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .unwrap();
    assert!(st.success());
    let links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()
        .unwrap();
    let links = String::from_utf8_lossy(&links.stdout).into_owned();
    assert_eq!(links.lines().count(), 1, "only loopback: {links}");
}

/// A loopback echo service (`TCP_NODELAY`, so it answers a byte at once); returns its port.
/// Runs until the process ends.
pub fn echo_server() -> u16 {
    try_echo_server().expect("a loopback echo service")
}

/// [`echo_server`], saying why it could not start.
pub fn try_echo_server() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let _ = c.set_nodelay(true);
            thread::spawn(move || {
                let Ok(mut r) = c.try_clone() else { return };
                let _ = std::io::copy(&mut r, &mut c);
                let _ = c.shutdown(Shutdown::Both);
            });
        }
    });
    Ok(port)
}

/// An Ed25519 key pair made by OpenSSH's ssh-keygen at `path` (replacing one there), with
/// `comment`: the public key line, trimmed.
pub fn ssh_keygen_ed25519(path: &std::path::Path, comment: &str) -> String {
    let _ = std::fs::remove_file(path);
    let mut public = path.as_os_str().to_owned();
    public.push(".pub");
    let _ = std::fs::remove_file(&public);
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen");
    ok_stdout(out, "ssh-keygen");
    std::fs::read_to_string(public).unwrap().trim().to_owned()
}

/// The standard output of a command that must have succeeded (its stderr in the panic).
pub fn ok_stdout(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A field of /proc/PID/status such as `VmRSS:` or `Threads:` (its first number; 0 when the
/// process is gone).
pub fn status_field(pid: u32, name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Open file descriptors, threads and resident memory (KiB) of a process.
pub fn usage(pid: u32) -> (usize, u64, u64) {
    (
        open_fds(pid),
        status_field(pid, "Threads:"),
        status_field(pid, "VmRSS:"),
    )
}

/// User + system CPU seconds of a process, from /proc (USER_HZ is 100 on Linux).
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_fields(pid, &[11, 12])
}

/// The same, plus what its finished children handed back (cutime, cstime).
pub fn cpu_seconds_with_children(pid: u32) -> f64 {
    stat_fields(pid, &[11, 12, 13, 14])
}

fn stat_fields(pid: u32, which: &[usize]) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    which
        .iter()
        .map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0))
        .sum::<f64>()
        / 100.0
}

/// Kernel wait channel of each thread of `pid` whose name starts with `prefix` (the agent
/// names its channel threads `channel-<stream>`).
pub fn wchans(pid: u32, prefix: &str) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(|t| {
                let t = t.ok()?.path();
                let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                comm.starts_with(prefix)
                    .then(|| std::fs::read_to_string(t.join("wchan")).unwrap_or_default())
            })
            .collect()
        })
        .unwrap_or_default()
}
