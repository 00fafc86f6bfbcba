//! The Debian packages (`make deb`, mk/deb/) with the real tools: dpkg-deb and lintian on each
//! architecture's package, then the amd64 one installed, upgraded, removed and purged with dpkg
//! in a booted Debian root (`support::debian`) that runs a stand-in for the Python agent's
//! `meeting-tunnel-agent.service` and has the fleet's `/etc/rpi-cam/meeting.json`.
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
        let lint = Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&deb)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&lint.stdout).into_owned();
        println!("lintian {arch}:\n{said}");
        assert!(
            lint.status.success() && !said.lines().any(|l| l.starts_with("E:")),
            "lintian {arch}: {said}{}",
            String::from_utf8_lossy(&lint.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The Python agent's unit as the web manager writes it, with a stand-in program.
const STAND_IN: &str = "[Unit]\nDescription=stand-in for the Python tunnel_agent.py\n\n\
    [Service]\nExecStart=/bin/sleep infinity\n\n[Install]\nWantedBy=multi-user.target\n";

#[test]
#[ignore = "needs make deb: run by make test-deb"]
fn the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges() {
    if !may_run(
        "the_package_replaces_the_python_agent_and_installs_upgrades_removes_and_purges",
        &[
            Need::Root,
            tool("systemd-nspawn", "systemd-container"),
            tool("debootstrap", "debootstrap"),
            tool("nsenter", "util-linux"),
            tool("dpkg-deb", "dpkg"),
        ],
    ) {
        return;
    }
    let tmp = scratch("lifecycle");
    // The upgrade: the same package with a later version.
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(package("amd64"))
        .arg(tmp.join("v1")));
    let v2 = format!("{}+test2", version());
    let built = run(
        Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/mk/deb/build"))
            .arg("amd64")
            .arg(tmp.join("v1/usr/bin/tunnel-agent"))
            .arg(&v2)
            .arg(&tmp),
    );
    assert!(built
        .trim()
        .ends_with(&format!("tunnel-agent_{v2}_amd64.deb")));

    let root = Root::new("deb");
    root.write(&format!("/etc/systemd/system/{OLD}"), STAND_IN);
    root.inside(&["systemctl", "enable", OLD]);
    let echo = echo_server();
    let proxy = Proxy::for_ports(&[echo], &[]);
    // The fleet's file, with the keys it has there (heartbeat_interval 60 included).
    let fleet = |enabled: bool| {
        serde_json::json!({
            "enabled": enabled, "api_url": "https://127.0.0.1:9/api", "device_key": KEY,
            "token_code": TOKEN, "heartbeat_interval": 60, "auto_connect": true,
            "provisioned": true, "tunnel_host": "127.0.0.1",
            "tunnel_port": proxy.control.port(), "tunnel_ssl": false,
        })
        .to_string()
    };
    let meeting = fleet(true);
    root.write("/etc/rpi-cam/meeting.json", &meeting);
    std::fs::copy(package("amd64"), root.path("/root/v1.deb")).unwrap();
    std::fs::copy(
        tmp.join(format!("tunnel-agent_{v2}_amd64.deb")),
        root.path("/root/v2.deb"),
    )
    .unwrap();

    let mut container = boot(&root);
    let n = container.pid();
    wait_active(&container, OLD);

    // Install: the Python agent stopped, disabled and masked; the new one started from
    // /etc/rpi-cam/meeting.json as it is.
    let said = in_container(n, "dpkg", &["-i", "/root/v1.deb"]);
    println!("dpkg -i:\n{said}");
    assert!(
        said.contains(&format!(
            "{OLD} (was enabled, running) is stopped, disabled and masked"
        )),
        "{said}"
    );
    assert!(
        said.contains("using /etc/rpi-cam/meeting.json as it is"),
        "{said}"
    );
    assert!(said.contains("tunnel-agent.service started"), "{said}");
    proxy.wait_agent(1);
    wait_active(&container, UNIT);
    assert_eq!(property(n, OLD, "UnitFileState"), "masked");
    assert_eq!(property(n, OLD, "ActiveState"), "inactive");
    assert_eq!(property(n, UNIT, "UnitFileState"), "enabled");
    assert_eq!(
        property(n, UNIT, "StatusText"),
        format!("connected (proxy 127.0.0.1:{})", proxy.control.port())
    );
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
    // No alias: the web manager's buttons act on the old name, which stays masked. Its start
    // brings back neither the Python agent nor a second tunnel-agent, and leaves ours running.
    let first = property(n, UNIT, "MainPID");
    let (started, why) = try_in_container(n, "systemctl", &["start", OLD]);
    assert!(!started && why.contains("masked"), "{why}");
    assert_eq!(property(n, UNIT, "MainPID"), first);
    assert_eq!(property(n, OLD, "ActiveState"), "inactive");
    // The web manager re-creating "its" unit file from the template writes through the mask's
    // link, into /dev/null: the mask holds.
    std::fs::write(root.path("/root/template"), STAND_IN).unwrap();
    in_container(
        n,
        "sh",
        &[
            "-c",
            &format!("cat /root/template > /etc/systemd/system/{OLD} && systemctl daemon-reload"),
        ],
    );
    let (started, why) = try_in_container(n, "systemctl", &["start", OLD]);
    assert!(!started && why.contains("masked"), "{why}");

    // The web manager's "disable Meeting" switch writes meeting.json: the package's path unit
    // reloads the agent, which holds no tunnel; switched on again, it connects.
    assert_eq!(
        property(n, "tunnel-agent-config.path", "UnitFileState"),
        "enabled"
    );
    wait_active(&container, "tunnel-agent-config.path");
    let shown = |state: &str| format!("{state} (proxy 127.0.0.1:{})", proxy.control.port());
    root.write("/etc/rpi-cam/meeting.json", &fleet(false));
    wait_property(&container, UNIT, "StatusText", &shown("disabled"));
    root.write("/etc/rpi-cam/meeting.json", &meeting);
    proxy.wait_agent(2);
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
    println!("dpkg -i (upgrade):\n{said}");
    assert!(said.contains("tunnel-agent.service restarted"), "{said}");
    assert!(
        !said.contains("masked"),
        "the old unit is left as it is: {said}"
    );
    proxy.wait_agent(2);
    wait_active(&container, UNIT);
    assert_ne!(property(n, UNIT, "MainPID"), first);
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/tunnel-agent/config.json")).unwrap(),
        mine
    );
    assert!(!root
        .path("/etc/tunnel-agent/config.json.dpkg-dist")
        .exists());
    let status = in_container(n, "dpkg-query", &["-W", "-f", "${Version}", "tunnel-agent"]);
    assert_eq!(status, v2);
    assert_eq!(property(n, OLD, "UnitFileState"), "masked");
    // The tunnel through the upgraded agent, to the port the conffile opens.
    let data = random_bytes(100_000, 29);
    assert!(echo_through(proxy.tunnels[0], &data) == data);

    // Remove: the agent stopped, its configuration kept, the Python agent back as it was.
    let said = in_container(n, "dpkg", &["-r", "tunnel-agent"]);
    println!("dpkg -r:\n{said}");
    assert!(
        said.contains(&format!(
            "{OLD} is back as it was before tunnel-agent (enabled, started)"
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
    assert_eq!(property(n, OLD, "UnitFileState"), "enabled");
    assert_eq!(property(n, OLD, "ActiveState"), "active");
    assert_eq!(
        std::fs::read_to_string(root.path(&format!("/etc/systemd/system/{OLD}"))).unwrap(),
        STAND_IN
    );

    // Purge: the configuration and the agent's state gone; the web manager's file untouched.
    let said = in_container(n, "dpkg", &["-P", "tunnel-agent"]);
    println!("dpkg -P:\n{said}");
    assert!(!root.path("/etc/tunnel-agent").exists());
    assert!(!root.path("/var/lib/tunnel-agent").exists());
    assert_eq!(
        std::fs::read_to_string(root.path("/etc/rpi-cam/meeting.json")).unwrap(),
        meeting
    );
    let (known, _) = try_in_container(n, "dpkg-query", &["-W", "tunnel-agent"]);
    assert!(!known, "dpkg still knows tunnel-agent after a purge");
    assert_eq!(property(n, OLD, "ActiveState"), "active");

    container.signal("TERM");
    assert!(
        container.wait_exit(SOON * 6).is_some(),
        "the container did not stop"
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
