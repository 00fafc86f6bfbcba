//! The loader's tests: where values come from, defaults, errors.

use super::*;
use std::collections::HashMap;

struct Tmp(PathBuf);
impl Tmp {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tunnel-agent-config-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Tmp(dir)
    }
    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
    fn paths(&self) -> SearchPaths {
        SearchPaths {
            config_files: vec![self.0.join("config.json"), self.0.join("meeting.json")],
            device_info: self.0.join("device_info.json"),
        }
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Flags that name `file` with `--config`.
fn config_flag(file: PathBuf) -> Flags {
    Flags {
        config: Some(file),
        ..Flags::default()
    }
}

/// The configuration from `file` alone.
fn load_file(t: &Tmp, file: PathBuf) -> Result<Config, ConfigError> {
    load(&config_flag(file), &env_of(&[]), &t.paths())
}

const MEETING_JSON: &str = r#"{
  "device_key": "3316A52EB08837267BF6BD3E2B2E8DC7",
  "token_code": "41e291",
  "tunnel_host": "proxy.example",
  "tunnel_port": 9001,
  "tunnel_ssl": false,
  "api_url": "https://meeting.ygsoft.fr/api",
  "something_else": [1, 2, 3]
}"#;

#[test]
fn deployed_meeting_json_works_unchanged() {
    let t = Tmp::new("deployed");
    t.file("meeting.json", MEETING_JSON);
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.device_key.value, "3316A52EB08837267BF6BD3E2B2E8DC7");
    assert_eq!(c.token.value.expose(), "41e291");
    assert_eq!(c.host.value, "proxy.example");
    assert_eq!(c.port.value, 9001);
    assert!(!c.tls.value);
    assert_eq!(c.files, vec![t.0.join("meeting.json")]);
    assert_eq!(c.token.source, Source::File(t.0.join("meeting.json")));
    assert!(c.device_key_well_formed());
}

#[test]
fn the_packages_file_overrides_the_fleets_key_by_key() {
    // The Debian package's /etc/tunnel-agent/config.json ({} as shipped, or a few keys) over
    // the web manager's /etc/rpi-cam/meeting.json: each key from the first file that has it.
    let t = Tmp::new("layered");
    t.file("meeting.json", MEETING_JSON);
    t.file("config.json", "{}");
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.token.source, Source::File(t.0.join("meeting.json")));
    assert_eq!(c.host.value, "proxy.example");
    assert_eq!(
        c.files,
        vec![t.0.join("config.json"), t.0.join("meeting.json")]
    );
    t.file(
        "config.json",
        r#"{"tunnel_host": "override.example", "enabled": null}"#,
    );
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.host.value, "override.example");
    assert_eq!(c.host.source, Source::File(t.0.join("config.json")));
    assert_eq!(c.token.value.expose(), "41e291");
    assert_eq!(c.port.source, Source::File(t.0.join("meeting.json")));
    // A key absent from both looks in both; a bad earlier file stops the load.
    t.file("meeting.json", r#"{"device_key": "K"}"#);
    let msg = load(&Flags::default(), &env_of(&[]), &t.paths())
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("config.json (key \"token_code\")")
            && msg.contains("meeting.json (key \"token_code\")"),
        "{msg}"
    );
    t.file("config.json", "{");
    let e = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap_err();
    assert!(matches!(e, ConfigError::Malformed { .. }), "{e}");
    // --config names the one file read.
    t.file("config.json", r#"{"device_key": "K2", "token_code": "t"}"#);
    let c = load_file(&t, t.0.join("config.json")).unwrap();
    assert_eq!(c.files, vec![t.0.join("config.json")]);
    assert_eq!(c.host.source, Source::Default);
}

#[test]
fn flags_beat_environment_beat_file_beat_defaults() {
    let t = Tmp::new("priority");
    t.file("config.json", MEETING_JSON);
    let flags = Flags::default().with(&TUNNEL_HOST, "flag.example");
    let env = env_of(&[
        ("MEETING_TUNNEL_HOST", "env.example"),
        ("MEETING_TUNNEL_PORT", "9443"),
        ("MEETING_TOKEN", "abcdef"),
        ("MEETING_TUNNEL_TLS", "1"),
    ]);
    let c = load(&flags, &env, &t.paths()).unwrap();
    assert_eq!(c.host.value, "flag.example");
    assert_eq!(c.host.source, Source::Flag("--host"));
    assert_eq!(c.port.value, 9443);
    assert_eq!(c.port.source, Source::Env("MEETING_TUNNEL_PORT"));
    assert_eq!(c.token.value.expose(), "abcdef");
    assert!(c.tls.value);
    assert_eq!(c.device_key.source, Source::File(t.0.join("config.json")));
}

#[test]
fn defaults_apply_and_device_info_is_the_last_resort() {
    let t = Tmp::new("defaults");
    t.file(
        "device_info.json",
        r#"{"device_key": "AAAABBBBCCCCDDDDEEEEFFFF00001111"}"#,
    );
    let c = load(
        &Flags::default(),
        &env_of(&[("MEETING_TOKEN", "41e291")]),
        &t.paths(),
    )
    .unwrap();
    assert_eq!(c.host.value, DEFAULT_HOST);
    assert_eq!(c.port.value, 9001);
    assert_eq!(c.port.source, Source::Default);
    assert_eq!(c.device_key.value, "AAAABBBBCCCCDDDDEEEEFFFF00001111");
    assert_eq!(
        c.device_key.source,
        Source::File(t.0.join("device_info.json"))
    );
    assert_eq!(c.handshake_timeout, Duration::from_secs(15));
    assert_eq!(c.local_write_timeout, Duration::from_secs(15));
    assert_eq!(c.allowed_ports, None, "Meeting's services decide");
    assert_eq!(
        c.open_ports(None),
        vec![(UNTIL_KNOWN_PORT, Opened::UntilKnown)],
        "ssh's port until Meeting has said"
    );
    assert_eq!(c.max_channels, 64);
    assert_eq!(c.max_frame, 1024 * 1024);
    assert_eq!(c.tls_server_name.value, DEFAULT_HOST);
    assert!(c.ca_file.is_none());
}

#[test]
fn tls_settings_and_limits() {
    let t = Tmp::new("tls");
    let p = t.file(
        "c.json",
        r#"{"device_key":"K","token_code":"t","tunnel_host":"10.0.0.1","tunnel_ssl":true,
           "ca_file":"/etc/tunnel-agent/ca.pem","tls_server_name":"proxy.example",
           "max_channels":8,"max_frame":65536,"local_write_timeout":2.5}"#,
    );
    let flags = config_flag(p);
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    assert!(c.tls.value);
    assert_eq!(
        c.ca_file.unwrap().value,
        PathBuf::from("/etc/tunnel-agent/ca.pem")
    );
    assert_eq!(c.tls_server_name.value, "proxy.example");
    assert_eq!((c.max_channels, c.max_frame), (8, 65536));
    assert_eq!(c.local_write_timeout, Duration::from_millis(2500));
    let c = load(
        &Flags::default().with(&TUNNEL_SSL, "true"),
        &env_of(&[
            ("MEETING_DEVICE_KEY", "K"),
            ("MEETING_TOKEN", "t"),
            ("MEETING_TUNNEL_TLS", "0"),
        ]),
        &t.paths(),
    )
    .unwrap();
    assert!(c.tls.value, "--tls beats the environment");
    let e = load(
        &flags.clone().with(&MAX_CHANNELS, "0"),
        &env_of(&[]),
        &t.paths(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("max_channels"), "{e}");
    let e = load(
        &flags.clone().with(&LOCAL_WRITE_TIMEOUT, "0"),
        &env_of(&[]),
        &t.paths(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("local_write_timeout"), "{e}");
}

#[test]
fn allowed_ports_from_file_or_flags() {
    let t = Tmp::new("ports");
    let p = t.file(
        "c.json",
        r#"{"device_key":"K","token_code":"t","allowed_ports":[22,"5900"]}"#,
    );
    let mut flags = config_flag(p);
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.allowed_ports.as_ref().unwrap().value, vec![22, 5900]);
    flags.set(&ALLOWED_PORTS, "8080");
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    let given = c.allowed_ports.as_ref().unwrap();
    assert_eq!(given.value, vec![8080]);
    assert_eq!(given.source, Source::Flag("--allow-port"));
    let p = t.file(
        "d.json",
        r#"{"device_key":"K","token_code":"t","allowed_ports":22}"#,
    );
    let e = load_file(&t, p).unwrap_err();
    assert!(
        e.to_string().contains("expected a list like [22, 5900]"),
        "{e}"
    );
}

#[test]
fn missing_values_list_every_place_looked() {
    let t = Tmp::new("missing");
    let e = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("no device key configured"), "{msg}");
    for place in [
        "--device-key",
        "MEETING_DEVICE_KEY",
        "config.json",
        "meeting.json",
        "device_info.json",
    ] {
        assert!(msg.contains(place), "{place} missing from: {msg}");
    }
    let e = load(
        &Flags::default(),
        &env_of(&[("MEETING_DEVICE_KEY", "K")]),
        &t.paths(),
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("no token configured"), "{msg}");
    assert!(
        msg.contains("MEETING_TOKEN") && msg.contains("meeting.json"),
        "{msg}"
    );
}

#[test]
fn malformed_file_names_line_and_column() {
    let t = Tmp::new("malformed");
    let p = t.file(
        "meeting.json",
        "{\n  \"device_key\": \"K\",\n  \"token_code\" \"x\"\n}",
    );
    let e = load_file(&t, p.clone()).unwrap_err();
    match &e {
        ConfigError::Malformed {
            path, line, column, ..
        } => {
            assert_eq!(path, &p);
            assert_eq!((*line, *column), (3, 16));
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("meeting.json:3:16"), "{e}");
}

#[test]
fn wrong_types_and_values_are_named() {
    let t = Tmp::new("types");
    let p = t.file(
        "c.json",
        r#"{"device_key":"K","token_code":"t","tunnel_port":"http"}"#,
    );
    let flags = config_flag(p);
    let e = load(&flags, &env_of(&[]), &t.paths()).unwrap_err();
    assert!(e.to_string().contains("\"http\" is not a TCP port"), "{e}");
    let e = load(
        &flags,
        &env_of(&[("MEETING_TUNNEL_PORT", "70000")]),
        &t.paths(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("MEETING_TUNNEL_PORT"), "{e}");
    let p = t.file("d.json", r#"{"device_key":["K"],"token_code":"t"}"#);
    let e = load_file(&t, p).unwrap_err();
    assert!(
        e.to_string().contains("expected a string, found an array"),
        "{e}"
    );
    let p = t.file("e.json", "[1]");
    let e = load_file(&t, p).unwrap_err();
    assert!(e.to_string().contains("expected a JSON object"), "{e}");
}

#[test]
fn explicit_config_that_does_not_exist_is_an_error() {
    let t = Tmp::new("absent");
    let flags = config_flag(t.0.join("nope.json"));
    let e = load(&flags, &env_of(&[]), &t.paths()).unwrap_err();
    assert!(matches!(e, ConfigError::Unreadable { .. }));
    assert!(e.to_string().contains("nope.json"));
}

#[test]
fn secret_is_masked_in_debug() {
    let s = Secret::new("41e291");
    assert_eq!(s.masked(), "41****");
    assert!(!format!("{s:?}").contains("e291"));
}

#[test]
fn heartbeat_api_defaults_to_production_only_for_the_production_proxy() {
    let t = Tmp::new("heartbeat-default");
    let env = env_of(&[("MEETING_DEVICE_KEY", "K"), ("MEETING_TOKEN", "t")]);
    let c = load(&Flags::default(), &env, &t.paths()).unwrap();
    assert_eq!(c.host.value, DEFAULT_HOST);
    let api = c.api.url.as_ref().unwrap();
    assert_eq!(
        (api.value.as_str(), &api.source),
        (DEFAULT_API_URL, &Source::Default)
    );
    assert_eq!(c.heartbeat.off, None);
    assert_eq!(c.heartbeat.interval, Duration::from_secs(30));
    assert!(
        c.heartbeat.note.starts_with("tunnel-agent "),
        "{}",
        c.heartbeat.note
    );

    let own = Flags::default().with(&TUNNEL_HOST, "proxy.example");
    let c = load(&own, &env, &t.paths()).unwrap();
    assert_eq!(c.api.url, None);
    assert!(c.heartbeat.off.as_deref().unwrap().contains("no api_url"));
}

#[test]
fn heartbeat_settings_from_environment_file_and_flags() {
    let t = Tmp::new("heartbeat-settings");
    t.file(
        "config.json",
        r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example",
            "heartbeat_interval": 2, "heartbeat_note": "cam 3", "ca_file": "/ca.pem"}"#,
    );
    let env = env_of(&[("MEETING_API_URL", "https://m.example")]);
    let c = load(&Flags::default(), &env, &t.paths()).unwrap();
    let hb = &c.heartbeat;
    assert_eq!(
        c.api.url.as_ref().unwrap().source,
        Source::Env("MEETING_API_URL")
    );
    assert_eq!(
        hb.interval, MIN_HEARTBEAT_INTERVAL,
        "2 s is raised to the minimum"
    );
    assert_eq!(hb.note, "cam 3");
    assert_eq!(
        c.api.ca_file.as_ref().map(|c| c.value.as_path()),
        Some(Path::new("/ca.pem")),
        "ca_file serves the API too"
    );
    let flags = Flags::default()
        .with(&API_CA_FILE, "/api-ca.pem")
        .with(&HEARTBEAT, "false");
    let c = load(&flags, &env, &t.paths()).unwrap();
    assert_eq!(
        c.api.ca_file.as_ref().map(|c| c.value.as_path()),
        Some(Path::new("/api-ca.pem"))
    );
    assert!(c
        .heartbeat
        .off
        .as_deref()
        .unwrap()
        .contains("heartbeat false (flag --heartbeat)"));
}

#[test]
fn the_fleets_file_is_switched_off_and_its_interval_capped() {
    let t = Tmp::new("fleet");
    t.file(
        "config.json",
        r#"{"enabled": false, "api_url": "https://m.example/api", "device_key": "K",
            "token_code": "t", "heartbeat_interval": 60, "auto_connect": true,
            "provisioned": true, "tunnel_host": "p.example", "tunnel_port": 9001,
            "tunnel_ssl": false}"#,
    );
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert!(!c.enabled.value);
    assert!(matches!(c.enabled.source, Source::File(_)));
    let off = c.heartbeat.off.as_deref().unwrap();
    assert!(off.starts_with("enabled false (file "), "{off}");
    assert_eq!(c.heartbeat.interval, SAFE_HEARTBEAT_INTERVAL);
    let capped = c.heartbeat.capped.as_ref().unwrap();
    assert_eq!(capped.value, Duration::from_secs(60));
    // Under the window, the value is kept.
    let flags = Flags::default()
        .with(&HEARTBEAT_INTERVAL, "45")
        .with(&ENABLED, "true");
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    assert!(c.enabled.value && c.heartbeat.off.is_none());
    assert_eq!(
        (c.heartbeat.interval, &c.heartbeat.capped),
        (Duration::from_secs(45), &None)
    );
}

#[test]
fn services_open_their_ports_and_allowed_ports_overrides_them() {
    let t = Tmp::new("services");
    let rpi = t.0.join("rpi-cam");
    std::fs::create_dir_all(&rpi).unwrap();
    std::fs::write(
        rpi.join("meeting.json"),
        r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example"}"#,
    )
    .unwrap();
    let flags = Flags {
        config: Some(rpi.join("meeting.json")),
        ..Flags::default()
    };
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    let granted: Vec<String> = ["ssh", "scp", "http", "vnc", "debug"]
        .map(String::from)
        .to_vec();
    let names = |v: &[&str]| Opened::Granted(v.iter().map(|s| s.to_string()).collect());
    // The fleet's device: http is the web manager on 5000; debug has no port.
    assert_eq!(
        c.open_ports(Some(&granted)),
        vec![
            (22, names(&["ssh", "scp"])),
            (5000, names(&["http"])),
            (5900, names(&["vnc"]))
        ]
    );
    // Elsewhere http is 80, and service_ports sets any.
    let flags = Flags::default().with(&SERVICE_PORTS, "vnc=5901,debug=2222");
    t.file(
        "config.json",
        r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example"}"#,
    );
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    let ports: Vec<u16> = c
        .open_ports(Some(&granted))
        .iter()
        .map(|(p, _)| *p)
        .collect();
    assert_eq!(ports, vec![22, 80, 2222, 5901]);
    assert_eq!(
        c.open_ports(Some(&[])),
        vec![],
        "nothing granted, nothing open"
    );
    // allowed_ports overrides: Meeting cannot widen it.
    let flags = Flags::default().with(&ALLOWED_PORTS, "22");
    let c = load(&flags, &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(
        c.open_ports(Some(&granted)),
        vec![(22, Opened::Configured(Source::Flag("--allow-port")))]
    );
    for bad in ["http", "h/x=1", "http=0"] {
        let flags = Flags::default().with(&SERVICE_PORTS, bad);
        assert!(load(&flags, &env_of(&[]), &t.paths()).is_err(), "{bad}");
    }
    // relay: any port its operator chooses, while granted; relay_ports narrows it, [] to none;
    // allowed_ports still overrides.
    let relay: Vec<String> = ["ssh", "relay"].map(String::from).to_vec();
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.may_open(Some(&relay), 8554), Some(Opened::Relay));
    assert_eq!(c.may_open(Some(&relay), 22), Some(names(&["ssh"])));
    assert_eq!(c.may_open(Some(&granted), 8554), None, "relay not granted");
    assert_eq!(c.may_open(None, 8554), None, "nothing known yet");
    t.file(
        "config.json",
        r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example",
            "relay_ports": [8554, 8080]}"#,
    );
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.may_open(Some(&relay), 8554), Some(names(&["relay"])));
    assert_eq!(c.may_open(Some(&relay), 9999), None);
    assert_eq!(
        c.open_ports(Some(&relay)),
        vec![
            (22, names(&["ssh"])),
            (8080, names(&["relay"])),
            (8554, names(&["relay"]))
        ]
    );
    t.file(
        "config.json",
        r#"{"device_key": "K", "token_code": "t", "tunnel_host": "p.example", "relay_ports": []}"#,
    );
    let c = load(&Flags::default(), &env_of(&[]), &t.paths()).unwrap();
    assert_eq!(c.may_open(Some(&relay), 8554), None);
    let c = load(
        &Flags::default().with(&ALLOWED_PORTS, "22"),
        &env_of(&[]),
        &t.paths(),
    )
    .unwrap();
    assert_eq!(c.may_open(Some(&relay), 8554), None);
}

#[test]
fn tunnel_hosts_list_the_proxies_in_order_each_with_its_tls() {
    let t = Tmp::new("hosts");
    let flags = Flags::default().with(
        &TUNNEL_HOSTS,
        "a.example:9001, tls://b.example:443,tcp://[::1]:9002",
    );
    let env = env_of(&[
        ("MEETING_TOKEN", "t"),
        ("MEETING_DEVICE_KEY", "K"),
        ("MEETING_TUNNEL_TLS", "1"),
    ]);
    let c = load(&flags, &env, &t.paths()).unwrap();
    let shown: Vec<(String, u16, bool)> = (0..c.hosts.len())
        .map(|i| c.at(i))
        .map(|e| (e.host.value, e.port.value, e.tls.value))
        .collect();
    assert_eq!(
        shown,
        vec![
            ("a.example".into(), 9001, true),
            ("b.example".into(), 443, true),
            ("::1".into(), 9002, false)
        ]
    );
    // The first entry is the proxy; each entry's certificate name is its own host.
    assert_eq!((c.host.value.as_str(), c.port.value), ("a.example", 9001));
    assert_eq!(c.at(1).tls_server_name.value, "b.example");
    assert_eq!(c.hosts_return, Duration::from_secs(600));
    // Without the list: tunnel_host and tunnel_port alone.
    let c = load(&Flags::default(), &env, &t.paths()).unwrap();
    assert_eq!(c.hosts.len(), 1);
    assert_eq!(c.at(0).proxy_addr(), c.proxy_addr());
    for bad in ["a.example", "ftp://a:1", "a:0", ":9001", ","] {
        let flags = Flags::default().with(&TUNNEL_HOSTS, bad);
        let e = load(&flags, &env, &t.paths()).unwrap_err();
        assert!(e.to_string().contains("tunnel_hosts"), "{bad}: {e}");
    }
}
