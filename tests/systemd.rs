//! The systemd units under a real systemd: a Debian bookworm root (`support::debian`), the
//! package laid in by `make install`, booted by systemd-nspawn. The
//! container shares the machine's loopback, where the suite's fake Meeting API sits behind a
//! relay that refuses connections at first, as a network that is late at boot does.
//!
//! Shown: the agent starts and its tunnel comes up while the key work is still failing (it
//! never delays the tunnel); `tunnel-agent-keys.service` tries again 5 s later, then 10 s, …;
//! once the API answers, Meeting's key is in the login user's `authorized_keys` on the next
//! round; the service then ends and the timer holds the next round an hour later.

mod support;

use std::process::Command;
use std::time::Duration;

use support::debian::*;
use support::relay::Relay;
use support::*;

const USER: &str = "device";

fn needs(test: &str) -> bool {
    may_run(
        test,
        &[
            Need::Root,
            tool("systemd-nspawn", "systemd-container"),
            tool("debootstrap", "debootstrap"),
            tool("nsenter", "util-linux"),
            tool("make", "make"),
            tool("ssh-keygen", "openssh-client"),
        ],
    )
}

/// A root with the package laid in by `make install` and the journal on the console.
fn installed_root(name: &str) -> Root {
    let root = Root::new(name);
    let make = Command::new("make")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-s", "install", "PREFIX=/usr"])
        .arg(format!("DESTDIR={}", root.0.display()))
        .arg(format!("INSTALL_BIN={}", bin("tunnel-agent")))
        .output()
        .unwrap();
    ok_stdout(make, "make install");
    root.inside(&["systemctl", "enable", "tunnel-agent.service"]);
    // The journal on the console, so the test reads what the units say as they say it.
    root.write(
        "/etc/systemd/journald.conf.d/console.conf",
        "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/console\nMaxLevelConsole=info\n",
    );
    root
}

#[test]
fn under_systemd_the_agent_notifies_ready_feeds_the_watchdog_and_logs_priorities() {
    if !needs("under_systemd_the_agent_notifies_ready_feeds_the_watchdog_and_logs_priorities") {
        return;
    }
    let root = installed_root("notify");
    // A short watchdog for the test (the unit says 60 s), and a quick restart.
    root.write(
        "/etc/systemd/system/tunnel-agent.service.d/test.conf",
        "[Service]\nWatchdogSec=6\nRestartSec=1\n",
    );
    let proxy = Proxy::for_ports(&[], &[]);
    // The Python agent's 60 s heartbeat interval: a WARN, for the journal's priorities.
    let config = serde_json::json!({
        "device_key": KEY, "token_code": TOKEN, "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(), "api_url": "https://127.0.0.1:9/api",
        "heartbeat_interval": 60, "ssh_keys": false,
    });
    root.write("/etc/tunnel-agent/config.json", &config.to_string());
    let mut container = boot(&root);
    proxy.wait_agent(1);
    let unit = "tunnel-agent.service";
    let n = container.pid();
    // READY=1 came: the unit is active (a notify unit is "activating" until then), with the
    // agent's state as its status text.
    wait_active(&container, unit);
    assert_eq!(property(n, unit, "Type"), "notify");
    assert_eq!(property(n, unit, "WatchdogUSec"), "6s");
    assert_eq!(
        property(n, unit, "StatusText"),
        format!("connected (proxy 127.0.0.1:{})", proxy.control.port())
    );
    // The journal has each line's priority: the WARN is in -p warning, the INFO lines not.
    let warnings = in_container(
        n,
        "journalctl",
        &["-u", unit, "-p", "warning", "--no-pager", "-o", "cat"],
    );
    assert!(warnings.contains("heartbeat_interval 60 s"), "{warnings}");
    assert!(!warnings.contains("connecting to proxy"), "{warnings}");
    let all = in_container(n, "journalctl", &["-u", unit, "--no-pager", "-o", "cat"]);
    assert!(all.contains("connecting to proxy"), "{all}");

    // A wedged agent (stopped): the watchdog goes unfed, systemd restarts the service, and
    // the new agent connects again.
    let first = property(n, unit, "MainPID");
    systemctl(n, &["kill", "--kill-whom=main", "--signal=SIGSTOP", unit]);
    container.wait_for(
        "tunnel-agent.service: Watchdog timeout",
        Duration::from_secs(30),
    );
    proxy.wait_agent(2);
    let second = property(n, unit, "MainPID");
    assert_ne!(first, second);
    container.signal("TERM");
    assert!(
        container.wait_exit(SOON * 6).is_some(),
        "the container did not stop"
    );
}

#[test]
fn under_systemd_the_key_work_retries_until_meetings_key_is_in_then_runs_hourly() {
    if !needs("under_systemd_the_key_work_retries_until_meetings_key_is_in_then_runs_hourly") {
        return;
    }
    let root = installed_root("keys");
    root.inside(&["useradd", "-m", "-s", "/bin/sh", USER]);

    let api = FakeApi::start(&[KEY]);
    let dir = std::env::temp_dir().join(format!("tunnel-agent-systemd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("meeting")).unwrap();
    let meeting = ssh_keygen_ed25519(&dir.join("meeting/id_ed25519"), "meeting@meeting.example");
    api.serve_meeting_key(&meeting, None);
    api.serve_host_key(&dir.join("meeting/host_ed25519"));
    let api_addr: std::net::SocketAddr = api
        .url
        .trim_start_matches("https://")
        .trim_end_matches("/api")
        .parse()
        .unwrap();
    let relay = Relay::closed(api_addr);
    let proxy = Proxy::for_ports(&[], &[]);
    std::fs::copy(&api.ca_file, root.path("/etc/tunnel-agent/meeting-ca.pem")).unwrap();
    let config = serde_json::json!({
        "device_key": KEY,
        "token_code": TOKEN,
        "tunnel_host": "127.0.0.1",
        "tunnel_port": proxy.control.port(),
        "api_url": format!("https://127.0.0.1:{}/api", relay.port),
        "api_ca_file": "/etc/tunnel-agent/meeting-ca.pem",
        "meeting_ssh_user": USER,
        "heartbeat_interval": 30,
    });
    root.write("/etc/tunnel-agent/config.json", &config.to_string());

    let mut container = boot(&root);
    let boot = Duration::from_secs(120);
    // The tunnel does not wait for the key work: the agent is connected while the API is
    // still unreachable and the key work is failing.
    const RETRY: &str = "tunnel-agent keys: trying the failed work again in ";
    let first = container.wait_for(RETRY, boot);
    proxy.wait_agent(1);
    let second = container.wait_for_nth(RETRY, 2, SOON * 3);
    // 5 s, then 10 s, each within the ±20 % jitter.
    assert!((4.0..=6.0).contains(&secs_after(&first, RETRY)), "{first}");
    assert!(
        (8.0..=12.0).contains(&secs_after(&second, RETRY)),
        "{second}"
    );
    assert!(!root
        .path(&format!("/home/{USER}/.ssh/authorized_keys"))
        .exists());

    relay.open();
    container.wait_for(
        "meeting key: installed Meeting's key",
        Duration::from_secs(90),
    );
    let ak =
        std::fs::read_to_string(root.path(&format!("/home/{USER}/.ssh/authorized_keys"))).unwrap();
    assert!(ak.contains(meeting.trim()), "{ak}");
    container.wait_for(
        "tunnel-agent-keys.service: Deactivated successfully",
        SOON * 3,
    );
    let timer = systemctl(
        container.pid(),
        &[
            "show",
            "tunnel-agent-keys.timer",
            "-p",
            "ActiveState,NextElapseUSecMonotonic",
        ],
    );
    assert!(timer.contains("ActiveState=active"), "{timer}");
    assert!(systemctl(container.pid(), &["is-active", "tunnel-agent.service"]).trim() == "active");
    let next = systemctl(
        container.pid(),
        &[
            "list-timers",
            "--all",
            "--no-pager",
            "tunnel-agent-keys.timer",
        ],
    );
    assert!(next.contains("tunnel-agent-keys.timer"), "{next}");
    assert!(
        next.contains("59min") || next.contains("1h"),
        "the next round is an hour after this one: {next}"
    );
    container.signal("TERM");
    assert!(
        container.wait_exit(SOON * 6).is_some(),
        "the container did not stop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The number of seconds after `marker` in `line`.
fn secs_after(line: &str, marker: &str) -> f64 {
    line.split(marker)
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {marker:?}: {line}"))
}

/// meeting-proxy's unit as shipped (`mk/proxy/`): its own user, port 443 through
/// `CAP_NET_BIND_SERVICE` alone, `READY=1` once it listens, its figures as the status, its
/// limits sized for the README's capacity, a watchdog that restarts a wedged proxy, and
/// `systemd-analyze security` at OK or better.
#[test]
fn meeting_proxy_under_systemd_binds_443_as_its_own_user_and_its_watchdog_restarts_it() {
    if !needs("meeting_proxy_under_systemd_binds_443_as_its_own_user_and_its_watchdog_restarts_it")
    {
        return;
    }
    let root = Root::new("proxy-unit");
    let shipped = |f: &str| {
        std::fs::read_to_string(format!("{}/mk/proxy/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    };
    std::fs::create_dir_all(root.path("/usr/bin")).unwrap();
    std::fs::copy(bin("meeting-proxy"), root.path("/usr/bin/meeting-proxy")).unwrap();
    root.write(
        "/lib/systemd/system/meeting-proxy.service",
        &shipped("meeting-proxy.service"),
    );
    root.write(
        "/usr/lib/sysusers.d/meeting-proxy.conf",
        &shipped("sysusers.conf"),
    );
    // A short watchdog for the test (the unit says 30 s), and a quick restart.
    root.write(
        "/etc/systemd/system/meeting-proxy.service.d/test.conf",
        "[Service]\nWatchdogSec=4\nRestartSec=1\n",
    );
    let echo = echo_server();
    let (public, metrics) = (free_port(), free_port());
    let config = serde_json::json!({
        "listen": ["127.0.0.1:443"],
        "devices": [{"key": KEY, "token": TOKEN}],
        "tunnels": [{"listen": format!("127.0.0.1:{public}"), "device": KEY, "port": echo}],
        "metrics_listen": format!("127.0.0.1:{metrics}"),
    });
    root.write("/etc/meeting-proxy/config.json", &config.to_string());
    root.write(
        "/etc/systemd/journald.conf.d/console.conf",
        "[Journal]\nForwardToConsole=yes\nTTYPath=/dev/console\nMaxLevelConsole=info\n",
    );
    let mut container = boot(&root);
    let n = container.pid();
    let unit = "meeting-proxy.service";
    wait_property(
        &container,
        "systemd-sysusers.service",
        "ActiveState",
        "active",
    );
    // The configuration holds tokens: root's and the proxy's group's alone.
    in_container(
        n,
        "sh",
        &[
            "-c",
            "chown root:meeting-proxy /etc/meeting-proxy/config.json && \
             chmod 0640 /etc/meeting-proxy/config.json",
        ],
    );
    systemctl(n, &["start", unit]);
    wait_active(&container, unit);
    assert_eq!(property(n, unit, "Type"), "notify");
    assert_eq!(property(n, unit, "LimitNOFILE"), "65536");
    assert_eq!(property(n, unit, "TasksMax"), "32768");
    // Not root, and bound to 443.
    let pid = property(n, unit, "MainPID");
    let uid = in_container(n, "stat", &["-c", "%U", &format!("/proc/{pid}")]);
    assert_eq!(uid.trim(), "meeting-proxy");
    let agent = agent(
        "127.0.0.1:443".parse().unwrap(),
        &["--allow-port", &echo.to_string()],
    );
    agent.wait_for("tunnel ready", SOON);
    // The proxy answers the device before it registers it: its journal says when a public
    // connection can reach the device.
    wait_journal(&container, unit, &format!("device {KEY} connected from"), 1);
    let data = random_bytes(50_000, 40);
    let through: std::net::SocketAddr = format!("127.0.0.1:{public}").parse().unwrap();
    assert!(echo_through(through, &data) == data);
    // Its figures as the unit's status (the watchdog thread says them each round).
    wait_property(
        &container,
        unit,
        "StatusText",
        "1 device(s) connected, 0 public connection(s)",
    );

    // systemd's own assessment of the sandbox.
    let (_, report) = try_in_container(n, "systemd-analyze", &["security", unit, "--no-pager"]);
    let overall = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("{report}"))
        .to_owned();
    eprintln!("{overall}");
    assert!(
        overall.contains(" OK") || overall.contains(" SAFE"),
        "{overall}\n{report}"
    );

    // A wedged proxy (stopped): the watchdog goes unfed, systemd restarts it, and the agent
    // connects again.
    systemctl(n, &["kill", "--kill-whom=main", "--signal=SIGSTOP", unit]);
    container.wait_for(
        "meeting-proxy.service: Watchdog timeout",
        Duration::from_secs(30),
    );
    agent.wait_for_nth("tunnel ready", 2, SOON * 2);
    assert_ne!(property(n, unit, "MainPID"), pid);
    halt(&mut container);
}
