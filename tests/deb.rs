//! The Debian packages (`make deb`, mk/deb/) with the real tools: dpkg-deb and lintian on each
//! architecture's package, then the amd64, armhf and arm64 ones installed, upgraded, removed
//! and purged with dpkg in booted Debian roots of their architecture (`support::debian`; the
//! ARM ones under qemu-user) that run a stand-in for the Python agent's
//! `meeting-tunnel-agent.service`, driven as the web manager drives it, and have the fleet's
//! `/etc/rpi-cam/meeting.json`.
//!
//! Run by `make test-deb` (ignored by `make test`: it needs the packages, which need the
//! cross builds); `DEB_DIR` and `DEB_VERSION` say where they are.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::debian::*;
use support::*;

const ARCHES: [&str; 3] = ["amd64", "arm64", "armhf"];
const OLD: &str = "meeting-tunnel-agent.service";
const UNIT: &str = "tunnel-agent.service";

fn deb_dir() -> PathBuf {
    PathBuf::from(std::env::var("DEB_DIR").expect("DEB_DIR: run through make test-deb"))
}

fn version() -> String {
    std::env::var("DEB_VERSION").expect("DEB_VERSION: run through make test-deb")
}

fn package(arch: &str) -> PathBuf {
    deb_dir().join(format!("tunnel-agent_{}_{arch}.deb", version()))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tunnel-agent-deb-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// lintian on `deb`: no error (its warnings are printed for the reader).
fn lintian_finds_no_error(deb: &Path) {
    let lint = Command::new("lintian")
        .args(["--fail-on", "error"])
        .arg(deb)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&lint.stdout).into_owned();
    println!("lintian {}:\n{said}", deb.display());
    assert!(
        lint.status.success() && !said.lines().any(|l| l.starts_with("E:")),
        "lintian {}: {said}{}",
        deb.display(),
        String::from_utf8_lossy(&lint.stderr)
    );
}

/// The ELF machine of `file` (e_machine, little-endian).
fn elf_machine(file: &Path) -> u16 {
    let bytes = std::fs::read(file).unwrap();
    assert_eq!(&bytes[..4], b"\x7fELF", "{} is not ELF", file.display());
    u16::from_le_bytes([bytes[18], bytes[19]])
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn each_package_carries_its_architectures_build_and_lintian_finds_no_error() {
    if !may_run(
        "each_package_carries_its_architectures_build_and_lintian_finds_no_error",
        &[
            tool("dpkg-deb", "dpkg"),
            tool("lintian", "lintian"),
            tool("qemu-arm", "qemu-user"),
            tool("qemu-aarch64", "qemu-user"),
        ],
    ) {
        return;
    }
    let tmp = scratch("sound");
    for arch in ARCHES {
        let deb = package(arch);
        let field = |name: &str| {
            run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
                .trim()
                .to_owned()
        };
        assert_eq!(field("Package"), "tunnel-agent");
        assert_eq!(field("Version"), version());
        assert_eq!(field("Architecture"), arch);
        // The configuration is a conffile, readable by root only (it will hold the token).
        let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        let line = |path: &str| {
            contents
                .lines()
                .find(|l| l.ends_with(&format!(" ./{path}")))
                .unwrap_or_else(|| panic!("{arch}: no {path} in\n{contents}"))
                .to_owned()
        };
        assert!(line("etc/tunnel-agent/config.json").starts_with("-rw------- root/root"));
        assert!(line("usr/bin/tunnel-agent").starts_with("-rwxr-xr-x root/root"));
        for unit in [
            UNIT,
            "tunnel-agent-keys.service",
            "tunnel-agent-keys.timer",
            "tunnel-agent-config.path",
            "tunnel-agent-config.service",
            OLD,
            "meeting-tunnel-agent.service.d/tunnel-agent.conf",
            "tunnel-agent.service.d/meeting-tunnel-agent.conf",
        ] {
            line(&format!("lib/systemd/system/{unit}"));
        }
        let control = tmp.join(format!("control-{arch}"));
        run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        assert_eq!(
            std::fs::read_to_string(control.join("conffiles")).unwrap(),
            "/etc/tunnel-agent/config.json\n"
        );
        // The build for the architecture: armhf carries the ARMv6 one, which an ARM1176 (Pi
        // Zero, Pi 1) runs.
        let files = tmp.join(format!("files-{arch}"));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&files));
        let bin = files.join("usr/bin/tunnel-agent");
        let (machine, runner): (u16, &[&str]) = match arch {
            "amd64" => (62, &[]),
            "arm64" => (183, &["qemu-aarch64"]),
            _ => (40, &["qemu-arm", "-cpu", "arm1176"]),
        };
        assert_eq!(elf_machine(&bin), machine, "{arch}");
        let mut cmd = match runner.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let out = run(cmd.arg("--version"));
        assert_eq!(
            out.trim(),
            format!("tunnel-agent {}", env!("CARGO_PKG_VERSION"))
        );

        // lintian: no error (its warnings are printed for the reader; the package's two
        // overrides, a static binary and the 0600 conffile, say their reasons in
        // /usr/share/lintian/overrides/tunnel-agent).
        lintian_finds_no_error(&deb);
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The Python agent's unit as the web manager writes it, with a stand-in program that notes
/// each start in /var/lib/python-agent-ran (a second agent would show there).
const STAND_IN: &str = "[Unit]\nDescription=stand-in for the Python tunnel_agent.py\n\
    After=network.target\n\n[Service]\nType=simple\nWorkingDirectory=/opt/rpi-cam-webmanager\n\
    ExecStart=/bin/sh -c 'echo ran >> /var/lib/python-agent-ran; exec sleep infinity'\n\
    Restart=always\nRestartSec=10\n\n[Install]\nWantedBy=multi-user.target\n";

/// How many times the stand-in Python agent started.
fn python_runs(root: &Root) -> usize {
    std::fs::read_to_string(root.path("/var/lib/python-agent-ran"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits until the stand-in has noted its `n`-th start: its unit is active once the shell is
/// started, and the shell writes the note a moment later (longer under emulation). Polled:
/// the file is the only sign.
fn wait_python_runs(root: &Root, n: usize) {
    let deadline = std::time::Instant::now() + SOON;
    while python_runs(root) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in noted {} starts, not {n}",
            python_runs(root)
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(python_runs(root), n);
}

/// A booted root of `arch` with the Python agent's stand-in unit (enabled and running when
/// `enabled`), the fleet's meeting.json for `proxy`, and this arch's package as v1.deb and a
/// later version as v2.deb in /root.
fn fleet_device(arch: &str, name: &str, enabled: bool, meeting: &str, tmp: &Path) -> (Root, Proc) {
    let root = Root::for_arch(name, arch);
    root.write(&format!("/etc/systemd/system/{OLD}"), STAND_IN);
    root.write(
        "/opt/rpi-cam-webmanager/tunnel_agent.py",
        "# the Python agent\n",
    );
    if enabled {
        root.inside(&["systemctl", "enable", OLD]);
    }
    root.write("/etc/rpi-cam/meeting.json", meeting);
    std::fs::copy(package(arch), root.path("/root/v1.deb")).unwrap();
    let v2 = format!("{}+test2", version());
    let v2_deb = tmp.join(format!("tunnel-agent_{v2}_{arch}.deb"));
    if !v2_deb.exists() {
        run(Command::new("dpkg-deb")
            .arg("-x")
            .arg(package(arch))
            .arg(tmp.join(format!("v1-{arch}"))));
        let built = run(
            Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mk/deb/build"))
                .arg(arch)
                .arg(tmp.join(format!("v1-{arch}/usr/bin/tunnel-agent")))
                .arg(&v2)
                .arg(tmp),
        );
        assert!(built
            .trim()
            .ends_with(&format!("tunnel-agent_{v2}_{arch}.deb")));
    }
    std::fs::copy(&v2_deb, root.path("/root/v2.deb")).unwrap();
    let container = boot(&root);
    if enabled {
        wait_active(&container, OLD);
    } else {
        wait_property(&container, "multi-user.target", "ActiveState", "active");
    }
    (root, container)
}

/// The fleet's meeting.json, with the keys it has there (heartbeat_interval 60 included).
fn fleet(proxy: &Proxy, enabled: bool) -> String {
    serde_json::json!({
        "enabled": enabled, "api_url": "https://127.0.0.1:9/api", "device_key": KEY,
        "token_code": TOKEN, "heartbeat_interval": 60, "auto_connect": true,
        "provisioned": true, "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(), "tunnel_ssl": false,
    })
    .to_string()
}

fn can_boot_roots(name: &str) -> bool {
    may_run(
        name,
        &[
            Need::Root,
            tool("systemd-nspawn", "systemd-container"),
            tool("debootstrap", "debootstrap"),
            tool("nsenter", "util-linux"),
            tool("dpkg-deb", "dpkg"),
        ],
    )
}

/// What the web manager's Meeting page reads: `systemctl is-active` and `is-enabled
/// meeting-tunnel-agent`, as it runs them (their output, whatever the exit status).
fn web_manager_sees(n: u32) -> (String, String) {
    let ask = |what: &str| try_in_container(n, "systemctl", &[what, "meeting-tunnel-agent"]).1;
    (
        ask("is-active").trim().to_owned(),
        ask("is-enabled").trim().to_owned(),
    )
}

/// One of the web manager's buttons: `systemctl ACTION meeting-tunnel-agent`, which must work.
fn press(n: u32, action: &str) {
    in_container(n, "systemctl", &[action, "meeting-tunnel-agent"]);
}

/// The fleet's device: the Python agent enabled and running, the web manager driving its unit.
/// Install, the web manager's buttons (also after it writes its template over the unit), the
/// "disable Meeting" switch, upgrade, remove and purge.
fn lifecycle(arch: &str) {
    let tmp = scratch(&format!("lifecycle-{arch}"));
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    let meeting = fleet(&proxy, true);
    let (root, mut container) = fleet_device(arch, "deb", true, &meeting, &tmp);
    let n = container.pid();
    wait_python_runs(&root, 1);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));

    // Install: the Python agent stopped, the old name standing for tunnel-agent, both choices
    // carried over; the new agent connected from /etc/rpi-cam/meeting.json as it is.
    let said = in_container(n, "dpkg", &["-i", "/root/v1.deb"]);
    println!("dpkg -i ({arch}):\n{said}");
    assert!(
        said.contains(&format!(
            "the Python agent's {OLD} was enabled and running. Its name now stands for \
             tunnel-agent.service, enabled at boot, and started."
        )),
        "{said}"
    );
    assert!(
        said.contains("using /etc/rpi-cam/meeting.json as it is"),
        "{said}"
    );
    assert!(!said.contains("\"enabled\": false"), "{said}");
    proxy.wait_agent(1);
    wait_active(&container, UNIT);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
    // The old name is the one switch: tunnel-agent.service is not enabled on its own.
    assert_eq!(property(n, UNIT, "UnitFileState"), "disabled");
    assert_eq!(
        property(n, UNIT, "StatusText"),
        format!("connected (proxy 127.0.0.1:{})", proxy.control.port())
    );
    assert_eq!(python_runs(&root), 1, "the Python agent started again");
    let journal = in_container(n, "journalctl", &["-u", UNIT, "--no-pager", "-o", "cat"]);
    assert!(
        journal.contains("config /etc/tunnel-agent/config.json over /etc/rpi-cam/meeting.json"),
        "{journal}"
    );
    let warnings = in_container(
        n,
        "journalctl",
        &["-u", UNIT, "-p", "warning", "--no-pager", "-o", "cat"],
    );
    assert!(
        warnings.contains("/etc/rpi-cam/meeting.json") && warnings.contains("60 s"),
        "{warnings}"
    );

    // The web manager's buttons, as it runs them, act on tunnel-agent.
    let buttons = |round: usize| {
        let first = property(n, UNIT, "MainPID");
        press(n, "stop");
        // The agent's stop is a job of its own, propagated (PartOf): it may still be running.
        wait_property(&container, UNIT, "ActiveState", "inactive");
        assert_eq!(web_manager_sees(n).0, "inactive");
        press(n, "start");
        wait_active(&container, UNIT);
        proxy.wait_agent(round);
        assert_ne!(property(n, UNIT, "MainPID"), first);
        assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
        press(n, "disable");
        assert_eq!(web_manager_sees(n), ("active".into(), "disabled".into()));
        assert_eq!(property(n, UNIT, "UnitFileState"), "disabled");
        let wants = property(n, "multi-user.target", "Wants");
        assert!(!wants.contains(OLD) && !wants.contains(UNIT), "{wants}");
        press(n, "enable");
        assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
        assert_eq!(python_runs(&root), 1, "the Python agent started again");
    };
    buttons(2);
    // The web manager writes its template over the unit (as its installer does) and reloads:
    // the package's drop-in still makes the name stand for tunnel-agent.
    std::fs::write(root.path("/root/template"), STAND_IN).unwrap();
    in_container(
        n,
        "sh",
        &[
            "-c",
            &format!("cat /root/template > /etc/systemd/system/{OLD} && systemctl daemon-reload"),
        ],
    );
    buttons(3);

    // The web manager's "disable Meeting" switch writes meeting.json: the package's path unit
    // reloads the agent, which holds no tunnel; switched on again, it connects.
    wait_active(&container, "tunnel-agent-config.path");
    let shown = |state: &str| format!("{state} (proxy 127.0.0.1:{})", proxy.control.port());
    let first = property(n, UNIT, "MainPID");
    root.write("/etc/rpi-cam/meeting.json", &fleet(&proxy, false));
    wait_property(&container, UNIT, "StatusText", &shown("disabled"));
    root.write("/etc/rpi-cam/meeting.json", &meeting);
    proxy.wait_agent(4);
    wait_property(&container, UNIT, "StatusText", &shown("connected"));
    assert_eq!(
        property(n, UNIT, "MainPID"),
        first,
        "reloaded, not restarted"
    );

    // Upgrade: the operator's edit of the conffile kept (no prompt: the shipped one did not
    // change) and used by the restarted agent: its key opens the echo server's port.
    let mine = format!("{{\"allowed_ports\": [{echo}]}}\n");
    root.write("/etc/tunnel-agent/config.json", &mine);
    let said = in_container(n, "dpkg", &["-i", "/root/v2.deb"]);
    println!("dpkg -i ({arch}, upgrade):\n{said}");
    assert!(said.contains("tunnel-agent.service restarted"), "{said}");
    assert!(
        !said.contains("the Python agent's"),
        "nothing taken over twice: {said}"
    );
    proxy.wait_agent(5);
    wait_active(&container, UNIT);
    assert_ne!(property(n, UNIT, "MainPID"), first);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/tunnel-agent/config.json")).unwrap(),
        mine
    );
    assert!(!root
        .path("/etc/tunnel-agent/config.json.dpkg-dist")
        .exists());
    let status = in_container(n, "dpkg-query", &["-W", "-f", "${Version}", "tunnel-agent"]);
    assert_eq!(status, format!("{}+test2", version()));
    // The tunnel through the upgraded agent, to the port the conffile opens.
    let data = random_bytes(100_000, 29);
    assert!(echo_through(proxy.tunnels[0], &data) == data);
    assert_eq!(python_runs(&root), 1, "the Python agent started again");

    // Remove: the agent stopped, its configuration kept, the Python agent back as it was.
    let said = in_container(n, "dpkg", &["-r", "tunnel-agent"]);
    println!("dpkg -r ({arch}):\n{said}");
    assert!(
        said.contains(&format!(
            "the Python agent's {OLD} is back (enabled, started)"
        )),
        "{said}"
    );
    assert_eq!(property(n, UNIT, "ActiveState"), "inactive");
    assert!(!root.path("/usr/bin/tunnel-agent").exists());
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/tunnel-agent/config.json")).unwrap(),
        mine
    );
    let state = in_container(
        n,
        "dpkg-query",
        &["-W", "-f", "${db:Status-Abbrev}", "tunnel-agent"],
    );
    assert_eq!(state.trim(), "rc");
    wait_active(&container, OLD);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
    wait_python_runs(&root, 2);
    assert_eq!(
        std::fs::read_to_string(root.path(&format!("/etc/systemd/system/{OLD}"))).unwrap(),
        STAND_IN
    );
    assert!(!root.path(&format!("/lib/systemd/system/{OLD}.d")).exists());

    // Purge: the configuration and the agent's state gone; the web manager's file untouched.
    let said = in_container(n, "dpkg", &["-P", "tunnel-agent"]);
    println!("dpkg -P ({arch}):\n{said}");
    assert!(!root.path("/etc/tunnel-agent").exists());
    assert!(!root.path("/var/lib/tunnel-agent").exists());
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/rpi-cam/meeting.json")).unwrap(),
        meeting
    );
    let (known, _) = try_in_container(n, "dpkg-query", &["-W", "tunnel-agent"]);
    assert!(!known, "dpkg still knows tunnel-agent after a purge");
    assert_eq!(property(n, OLD, "ActiveState"), "active");
    assert_eq!(python_runs(&root), 2);

    halt(&mut container);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A device whose operator had disabled and stopped the Python agent, and switched Meeting off
/// in meeting.json: the install says both and starts nothing; the web manager's Start and
/// Enable turn the agent on; removed, the Python agent comes back as the switch was left.
fn disabled_python_agent(arch: &str) {
    let tmp = scratch(&format!("disabled-{arch}"));
    let proxy = Proxy::for_ports(&[echo_server()], &[]);
    let (root, mut container) = fleet_device(arch, "deb-off", false, &fleet(&proxy, false), &tmp);
    let n = container.pid();
    assert_eq!(web_manager_sees(n), ("inactive".into(), "disabled".into()));
    let said = in_container(n, "dpkg", &["-i", "/root/v1.deb"]);
    println!("dpkg -i ({arch}, disabled):\n{said}");
    assert!(
        said.contains(&format!(
            "the Python agent's {OLD} was disabled and stopped. Its name now stands for \
             tunnel-agent.service, NOT enabled at boot: the Python agent was disabled, and that \
             choice is kept"
        )) && said.contains("and not started."),
        "{said}"
    );
    assert!(
        said.contains(
            "/etc/rpi-cam/meeting.json says \"enabled\": false (the web manager's \"disable \
             Meeting\" switch): the agent holds no tunnel and sends no heartbeat until it is true"
        ),
        "{said}"
    );
    assert_eq!(web_manager_sees(n), ("inactive".into(), "disabled".into()));
    assert_eq!(property(n, UNIT, "ActiveState"), "inactive");
    assert_eq!(property(n, UNIT, "UnitFileState"), "disabled");
    assert_eq!(python_runs(&root), 0);
    // The web manager turns Meeting back on, then the agent: it connects.
    root.write("/etc/rpi-cam/meeting.json", &fleet(&proxy, true));
    press(n, "enable");
    press(n, "start");
    wait_active(&container, UNIT);
    proxy.wait_agent(1);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
    // Removed: the Python agent comes back as the web manager's switch was left.
    remove_and_see_the_python_agent_back(&container, &root, 1);
    halt(&mut container);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The package as the previous release shipped it (0.1.0 before the web manager's name stood
/// for the agent: it masked `meeting-tunnel-agent.service`): this release's files with that
/// release's maintainer scripts (`tests/deb-previous/`, copied from it) and without the unit
/// and drop-ins it did not have, as version `0.0.9`.
fn previous_release(arch: &str, tmp: &Path) -> PathBuf {
    let dir = tmp.join(format!("previous-{arch}"));
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(package(arch))
        .arg(&dir));
    for script in ["postinst", "prerm", "postrm"] {
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/deb-previous")
                .join(script),
            dir.join("DEBIAN").join(script),
        )
        .unwrap();
    }
    let new_files = [
        format!("lib/systemd/system/{OLD}"),
        "lib/systemd/system/meeting-tunnel-agent.service.d/tunnel-agent.conf".to_owned(),
        "lib/systemd/system/tunnel-agent.service.d/meeting-tunnel-agent.conf".to_owned(),
    ];
    for f in &new_files {
        std::fs::remove_file(dir.join(f)).unwrap();
        let _ = std::fs::remove_dir(dir.join(f).parent().unwrap());
    }
    let md5sums = dir.join("DEBIAN/md5sums");
    let kept: String = std::fs::read_to_string(&md5sums)
        .unwrap()
        .lines()
        .filter(|l| !new_files.iter().any(|f| l.ends_with(f.as_str())))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&md5sums, kept).unwrap();
    let control = dir.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    std::fs::write(
        &control,
        text.replace(&format!("Version: {}", version()), "Version: 0.0.9"),
    )
    .unwrap();
    let deb = tmp.join(format!("tunnel-agent_0.0.9_{arch}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&dir)
        .arg(&deb));
    deb
}

/// `dpkg -r tunnel-agent` in the booted `container`: the Python agent's stand-in is back,
/// enabled and running, and has noted its `runs`-th start.
fn remove_and_see_the_python_agent_back(container: &Proc, root: &Root, runs: usize) {
    let said = in_container(container.pid(), "dpkg", &["-r", "tunnel-agent"]);
    assert!(
        said.contains(&format!(
            "the Python agent's {OLD} is back (enabled, started)"
        )),
        "{said}"
    );
    wait_active(container, OLD);
    wait_python_runs(root, runs);
}

/// A device migrated by the previous release, which masked the Python agent's unit, upgraded
/// to this one: the mask gives way to the name standing for tunnel-agent, the agent's state
/// kept; removed, the Python agent comes back with its own unit file.
fn upgrade_from_the_masking_release(arch: &str) {
    let tmp = scratch(&format!("previous-{arch}"));
    let proxy = Proxy::for_ports(&[echo_server()], &[]);
    let (root, mut container) = fleet_device(arch, "deb-prev", true, &fleet(&proxy, true), &tmp);
    let n = container.pid();
    wait_python_runs(&root, 1);
    std::fs::copy(previous_release(arch, &tmp), root.path("/root/v0.deb")).unwrap();
    let said = in_container(n, "dpkg", &["-i", "/root/v0.deb"]);
    assert!(said.contains("is stopped, disabled and masked"), "{said}");
    proxy.wait_agent(1);
    assert_eq!(property(n, OLD, "UnitFileState"), "masked");
    let said = in_container(n, "dpkg", &["-i", "/root/v1.deb"]);
    println!("dpkg -i ({arch}, over the masking release):\n{said}");
    assert!(
        said.contains(&format!(
            "{OLD}, masked by an earlier version of this package, now stands for \
             tunnel-agent.service, which stays as it was: enabled at boot, and running."
        )),
        "{said}"
    );
    proxy.wait_agent(2);
    wait_active(&container, UNIT);
    assert_eq!(web_manager_sees(n), ("active".into(), "enabled".into()));
    assert_eq!(property(n, UNIT, "UnitFileState"), "disabled");
    press(n, "stop");
    wait_property(&container, UNIT, "ActiveState", "inactive");
    press(n, "start");
    proxy.wait_agent(3);
    assert_eq!(python_runs(&root), 1, "the Python agent started again");
    remove_and_see_the_python_agent_back(&container, &root, 2);
    assert_eq!(
        std::fs::read_to_string(root.path(&format!("/etc/systemd/system/{OLD}"))).unwrap(),
        STAND_IN
    );
    halt(&mut container);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn a_device_migrated_by_the_masking_release_upgrades_to_the_name_standing_for_the_agent() {
    if can_boot_roots("a_device_migrated_by_the_masking_release_upgrades") {
        upgrade_from_the_masking_release("amd64");
    }
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges() {
    if can_boot_roots(
        "the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges",
    ) {
        lifecycle("amd64");
    }
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn on_armhf_under_emulation_the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges(
) {
    if can_boot_roots("on_armhf_under_emulation_the_package_replaces_the_python_agent") {
        lifecycle("armhf");
    }
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn on_arm64_under_emulation_the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges(
) {
    if can_boot_roots("on_arm64_under_emulation_the_package_replaces_the_python_agent") {
        lifecycle("arm64");
    }
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn a_disabled_python_agent_leaves_tunnel_agent_disabled_and_the_installer_says_so() {
    if can_boot_roots("a_disabled_python_agent_leaves_tunnel_agent_disabled") {
        disabled_python_agent("amd64");
    }
}

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn on_armhf_a_disabled_python_agent_leaves_tunnel_agent_disabled() {
    if can_boot_roots("on_armhf_a_disabled_python_agent_leaves_tunnel_agent_disabled") {
        disabled_python_agent("armhf");
    }
}

/// meeting-proxy's package for `arch`.
fn proxy_package(arch: &str) -> PathBuf {
    deb_dir().join(format!("meeting-proxy_{}_{arch}.deb", version()))
}

/// meeting-proxy's packages (amd64, arm64): their build, the conffile's mode, lintian; then
/// the amd64 one installed in a booted Debian root (its own user, the configuration given to
/// that user's group, the service running as that user), the operator's configuration used,
/// an upgrade that keeps it and restarts the proxy, remove and purge.
#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn the_proxy_package_runs_as_its_own_user_and_installs_upgrades_removes_and_purges() {
    let name = "the_proxy_package_runs_as_its_own_user_and_installs_upgrades_removes_and_purges";
    if !can_boot_roots(name) || !may_run(name, &[tool("lintian", "lintian")]) {
        return;
    }
    let tmp = scratch("proxy");
    for (arch, machine) in [("amd64", 62u16), ("arm64", 183)] {
        let deb = proxy_package(arch);
        let field = |name: &str| {
            run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
                .trim()
                .to_owned()
        };
        assert_eq!(field("Package"), "meeting-proxy");
        assert_eq!(field("Architecture"), arch);
        let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        for (path, mode) in [
            ("etc/meeting-proxy/config.json", "-rw-r----- root/root"),
            ("usr/bin/meeting-proxy", "-rwxr-xr-x root/root"),
            (
                "lib/systemd/system/meeting-proxy.service",
                "-rw-r--r-- root/root",
            ),
            (
                "usr/lib/sysusers.d/meeting-proxy.conf",
                "-rw-r--r-- root/root",
            ),
        ] {
            assert!(
                contents
                    .lines()
                    .any(|l| l.starts_with(mode) && l.ends_with(&format!(" ./{path}"))),
                "{arch}: {path} {mode}\n{contents}"
            );
        }
        let files = tmp.join(format!("proxy-files-{arch}"));
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&files));
        assert_eq!(elf_machine(&files.join("usr/bin/meeting-proxy")), machine);
        lintian_finds_no_error(&deb);
    }

    // A second version of the amd64 package, for the upgrade.
    let v2 = format!("{}+test2", version());
    let built = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mk/proxy/build"))
            .arg("amd64")
            .arg(tmp.join("proxy-files-amd64/usr/bin/meeting-proxy"))
            .arg(&v2)
            .arg(&tmp),
    );
    let root = Root::for_arch("proxy-deb", "amd64");
    std::fs::copy(proxy_package("amd64"), root.path("/root/v1.deb")).unwrap();
    std::fs::copy(built.trim(), root.path("/root/v2.deb")).unwrap();
    let mut container = boot(&root);
    let n = container.pid();
    let unit = "meeting-proxy.service";
    wait_property(&container, "multi-user.target", "ActiveState", "active");

    // Install: the user, the configuration readable by its group only, the proxy running as
    // that user and enabled at boot.
    let said = in_container(n, "dpkg", &["-i", "/root/v1.deb"]);
    println!("dpkg -i meeting-proxy:\n{said}");
    assert!(said.contains("meeting-proxy.service started"), "{said}");
    wait_active(&container, unit);
    assert_eq!(property(n, unit, "UnitFileState"), "enabled");
    let conf = "/etc/meeting-proxy/config.json";
    assert_eq!(
        in_container(n, "stat", &["-c", "%a %U %G", conf]).trim(),
        "640 root meeting-proxy"
    );
    let pid = property(n, unit, "MainPID");
    assert_eq!(
        in_container(n, "stat", &["-c", "%U", &format!("/proc/{pid}")]).trim(),
        "meeting-proxy"
    );

    // The operator's configuration: a device and its tunnel; the proxy restarted uses it.
    let echo = echo_server();
    let (agents, public) = (free_port(), free_port());
    let mine = serde_json::json!({
        "listen": [format!("127.0.0.1:{agents}")],
        "devices": [{"key": KEY, "token": TOKEN}],
        "tunnels": [{"listen": format!("127.0.0.1:{public}"), "device": KEY, "port": echo}],
    })
    .to_string();
    root.write(conf, &mine);
    systemctl(n, &["restart", unit]);
    wait_active(&container, unit);
    let _agent = agent(
        format!("127.0.0.1:{agents}").parse().unwrap(),
        &["--allow-port", &echo.to_string()],
    );
    // The proxy answers the device before it registers it: its journal says when a public
    // connection can reach the device.
    let connected = format!("device {KEY} connected from");
    wait_journal(&container, unit, &connected, 1);
    let through: std::net::SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    let data = random_bytes(100_000, 41);
    assert!(echo_through(through, &data) == data);

    // Upgrade: the operator's configuration kept (no prompt: the shipped one did not change),
    // its mode and group too, and the proxy restarted on it.
    let first = property(n, unit, "MainPID");
    let said = in_container(n, "dpkg", &["-i", "/root/v2.deb"]);
    println!("dpkg -i meeting-proxy (upgrade):\n{said}");
    assert!(said.contains("meeting-proxy.service restarted"), "{said}");
    wait_active(&container, unit);
    assert_ne!(property(n, unit, "MainPID"), first);
    assert_eq!(std::fs::read_to_string(root.path(conf)).unwrap(), mine);
    assert_eq!(
        in_container(n, "stat", &["-c", "%a %U %G", conf]).trim(),
        "640 root meeting-proxy"
    );
    assert!(!root
        .path("/etc/meeting-proxy/config.json.dpkg-dist")
        .exists());
    wait_journal(&container, unit, &connected, 2);
    assert!(echo_through(through, &data) == data);

    // Remove: stopped, the configuration kept; purge: gone.
    in_container(n, "dpkg", &["-r", "meeting-proxy"]);
    assert_eq!(property(n, unit, "ActiveState"), "inactive");
    assert!(root.path(conf).exists());
    in_container(n, "dpkg", &["-P", "meeting-proxy"]);
    assert!(!root.path("/etc/meeting-proxy").exists());
    halt(&mut container);
    let _ = std::fs::remove_dir_all(&tmp);
}
