//! A Debian root filesystem booted by systemd-nspawn, for the tests of the systemd units and
//! of the Debian package: made once per architecture by debootstrap from the Debian archive
//! (bookworm, with systemd) and kept outside the clone, where a warm CI machine finds it again
//! (`TEST_ROOTS`, else `/var/cache/tunnel-agent-tests/roots`), copied for each test, booted,
//! and driven from outside with nsenter. The container shares the machine's network (loopback
//! included). A foreign root (armhf, arm64) runs under qemu-user: its binaries go to
//! `qemu-*-static` through binfmt_misc, which `make test-deb` registers.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{ok_stdout, Launch, Proc, SOON};

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    ok_stdout(out, &format!("{cmd:?}"))
}

/// Where the roots are kept.
fn roots() -> PathBuf {
    std::env::var_os("TEST_ROOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/tunnel-agent-tests/roots"))
}

/// The machine's own Debian architecture.
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "armhf",
        other => panic!("no Debian root for {other}"),
    }
}

/// A Debian root with systemd for the machine's architecture.
pub fn base_root() -> PathBuf {
    base_root_for(native_arch())
}

/// A Debian root with systemd for `arch` (`amd64`, `armhf`, `arm64`), made once (about two
/// minutes, three under emulation) and kept.
pub fn base_root_for(arch: &str) -> PathBuf {
    // The tests run at once: one makes an architecture's root, the others wait for it.
    static MAKING: [std::sync::Mutex<()>; 3] = [const { std::sync::Mutex::new(()) }; 3];
    let slot = ["amd64", "armhf", "arm64"]
        .iter()
        .position(|a| *a == arch)
        .unwrap_or_else(|| panic!("no Debian root for {arch}"));
    let _one = MAKING[slot].lock().unwrap_or_else(|p| p.into_inner());
    let roots = roots();
    let base = roots.join(format!("bookworm-systemd-{arch}"));
    if base.join(".complete").exists() {
        return base;
    }
    let making = roots.join(format!("bookworm-systemd-{arch}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&making);
    std::fs::create_dir_all(&roots).unwrap();
    run(Command::new("debootstrap")
        .arg(format!("--arch={arch}"))
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,passwd",
            "bookworm",
        ])
        .arg(&making)
        .arg("http://deb.debian.org/debian"));
    std::fs::write(making.join(".complete"), "").unwrap();
    let _ = std::fs::remove_dir_all(&base);
    std::fs::rename(&making, &base).unwrap();
    base
}

/// A copy of the base root for one test, removed with it.
pub struct Root(pub PathBuf);

impl Root {
    pub fn new(name: &str) -> Root {
        Root::for_arch(name, native_arch())
    }

    /// A copy of the root of `arch`.
    pub fn for_arch(name: &str, arch: &str) -> Root {
        let base = base_root_for(arch);
        let dir = base.with_file_name(format!("{name}-{arch}.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run(Command::new("cp").arg("-a").arg(&base).arg(&dir));
        Root(dir)
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.0.join(p.trim_start_matches('/'))
    }

    pub fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Runs `args` inside the root, not booted.
    pub fn inside(&self, args: &[&str]) -> String {
        run(Command::new("systemd-nspawn")
            .args(["-q", "--register=no", "--keep-unit", "--pipe", "-D"])
            .arg(&self.0)
            .args(args))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The container's init (PID 1 inside), the child of systemd-nspawn, once it has one.
pub fn try_leader(nspawn: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{nspawn}/task/{nspawn}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
}

/// The container's init (PID 1 inside), the child of systemd-nspawn.
pub fn leader(nspawn: u32) -> u32 {
    try_leader(nspawn).unwrap_or_else(|| panic!("systemd-nspawn {nspawn} has no child"))
}

/// `PROGRAM ARGS` in the booted container, which may fail: whether it succeeded, and its
/// stdout and stderr together.
pub fn try_in_container(nspawn: u32, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("nsenter")
        .args([
            "-t",
            &leader(nspawn).to_string(),
            "-m",
            "-u",
            "-i",
            "-p",
            "--",
        ])
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("nsenter {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `PROGRAM ARGS` in the booted container: its output (stdout, then stderr), or a panic that
/// says what failed.
pub fn in_container(nspawn: u32, program: &str, args: &[&str]) -> String {
    let (ok, text) = try_in_container(nspawn, program, args);
    assert!(ok, "{program} {args:?} failed in the container:\n{text}");
    text
}

/// `systemctl ARGS` in the booted container.
pub fn systemctl(nspawn: u32, args: &[&str]) -> String {
    in_container(nspawn, "systemctl", args)
}

/// Boots `root`; its console on the returned process's stdout.
pub fn boot(root: &Root) -> Proc {
    Launch::new("systemd-nspawn")
        .args(&["-q", "--register=no", "--keep-unit", "--boot", "-D"])
        .args(&[root.0.to_str().unwrap()])
        .with_stdout()
        .start()
}

/// One property of a unit, as `systemctl show -p NAME --value` gives it.
pub fn property(nspawn: u32, unit: &str, name: &str) -> String {
    systemctl(nspawn, &["show", unit, "-p", name, "--value"])
        .trim()
        .to_owned()
}

/// Waits until `unit` is active in the booted container (a notify unit is "activating" until
/// READY=1).
pub fn wait_active(container: &Proc, unit: &str) {
    wait_property(container, unit, "ActiveState", "active");
}

/// Waits until the property `name` of `unit` is `want` in the booted container, polling
/// systemctl, which answers once the container's systemd is up: the container has no event a
/// test can wait on.
pub fn wait_property(container: &Proc, unit: &str, name: &str, want: &str) {
    let deadline = std::time::Instant::now() + SOON * 4;
    let n = container.pid();
    loop {
        let value = match try_leader(n) {
            Some(_) => try_in_container(n, "systemctl", &["show", unit, "-p", name, "--value"]).1,
            None => String::new(),
        };
        if value.trim() == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unit}'s {name} is {:?}, not {want:?}: {}",
            value.trim(),
            container.output()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `unit`'s journal in the booted container holds `text` `nth` times (what a
/// service logs is its only signal that it took a step), polling journalctl.
pub fn wait_journal(container: &Proc, unit: &str, text: &str, nth: usize) {
    let deadline = std::time::Instant::now() + SOON * 2;
    let n = container.pid();
    loop {
        let journal = try_in_container(n, "journalctl", &["-q", "-o", "cat", "-u", unit]).1;
        if journal.matches(text).count() >= nth {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{unit}'s journal has not said {text:?} {nth} time(s):\n{journal}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the booted container and waits for it: `systemctl poweroff` inside (under qemu-user
/// systemd does not get the signal systemd-nspawn stops a container with), else SIGTERM.
pub fn halt(container: &mut Proc) {
    let n = container.pid();
    let _ = try_in_container(n, "systemctl", &["poweroff", "--no-block"]);
    if container.wait_exit(SOON * 3).is_some() {
        return;
    }
    container.signal("TERM");
    assert!(
        container.wait_exit(SOON * 3).is_some(),
        "the container did not stop"
    );
}
