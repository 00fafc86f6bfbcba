//! Which of Meeting's services this device is granted: the `services` of
//! `GET {api}/devices/{key}`, read over verified HTTPS only (never from the proxy, whose port
//! may be plain TCP), at start and every `services_interval`. The channels open only those
//! services' local ports (`Config::open_ports`) unless `allowed_ports` overrides them; until
//! Meeting has answered, ssh's port alone.

use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};

use crate::agent::beacon::Wake;
use crate::agent::status::Status;
use crate::agent::Live;
use crate::config::RELAY;
use crate::meeting::DeviceRecord;

/// Bound of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the thread that keeps the granted services up to date.
pub fn spawn(live: Arc<Live>, status: Arc<Status>) -> std::io::Result<()> {
    status.set_ports(&live.open_ports());
    thread::Builder::new()
        .name("services".into())
        .spawn(move || run(&live, &status))
        .map(drop)
}

/// What one reading found.
enum Reading {
    /// Meeting grants these services (lower-case).
    Granted(Vec<String>),
    /// Nothing to read: why (allowed_ports, no HTTPS API, switched off).
    Idle(String),
    /// The API did not answer usefully: why; the last grant stays.
    Failed(String),
}

/// The API client of the readings, kept from one to the next (its HTTP agent, TLS set-up and
/// connection with it) while the API settings stay the same.
type Kept = Option<(crate::config::Api, crate::meeting::Client)>;

fn read(live: &Live, kept: &mut Kept) -> Reading {
    let cfg = live.get();
    if let Some(given) = &cfg.allowed_ports {
        return Reading::Idle(format!(
            "allowed_ports {:?} ({}) overrides the services Meeting grants",
            given.value, given.source
        ));
    }
    if !cfg.enabled.value {
        return Reading::Idle("enabled false".into());
    }
    let Some(url) = cfg.api.url.as_ref() else {
        return Reading::Idle(
            "no api_url: Meeting's services cannot be read; ssh's port only (allowed_ports opens \
             others)"
                .into(),
        );
    };
    if !url.value.starts_with("https://") {
        return Reading::Idle(format!(
            "the Meeting API {} is not HTTPS: the services it grants are read over verified \
             HTTPS only; ssh's port only (allowed_ports opens others)",
            url.value
        ));
    }
    if kept.as_ref().is_none_or(|(api, _)| *api != cfg.api) {
        *kept = cfg
            .api
            .client(REQUEST_TIMEOUT)
            .map(|c| (cfg.api.clone(), c));
    }
    let Some((_, client)) = kept.as_ref() else {
        return Reading::Idle("no api_url".into());
    };
    match client.device_record(&cfg.device_key.value, cfg.token.value.expose()) {
        Ok(DeviceRecord::Found { services, .. }) => Reading::Granted(
            services
                .iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
        ),
        Ok(DeviceRecord::NotFound) => Reading::Granted(Vec::new()),
        Err(e) => Reading::Failed(e.to_string()),
    }
}

fn run(live: &Live, status: &Status) {
    let mut said: Option<String> = None;
    let mut kept: Kept = None;
    loop {
        let reading = read(live, &mut kept);
        let line = match &reading {
            Reading::Granted(services) => {
                live.set_granted(Some(services.clone()));
                let cfg = live.get();
                let unmapped: Vec<&String> = services
                    .iter()
                    .filter(|s| *s != RELAY && !cfg.services.ports.iter().any(|(n, _)| n == *s))
                    .collect();
                let ports = live.open_ports();
                let relay_any =
                    services.iter().any(|s| s == RELAY) && cfg.services.relay_ports.is_none();
                format!(
                    "Meeting grants this device {}: local ports open to the tunnel: {}{}{}",
                    if services.is_empty() {
                        "no service".to_owned()
                    } else {
                        services.join(", ")
                    },
                    shown(&ports),
                    if relay_any {
                        ", and any other port the operator of a relay tunnel chooses (relay; \
                         relay_ports narrows it)"
                    } else {
                        ""
                    },
                    if unmapped.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} without a local port: service_ports maps them)",
                            unmapped
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                )
            }
            Reading::Idle(why) => format!("services: {why}"),
            Reading::Failed(why) => format!(
                "cannot read the services Meeting grants ({why}); the ports stay as they were: {}",
                shown(&live.open_ports())
            ),
        };
        status.set_ports(&live.open_ports());
        // Said when it changes, not at every reading.
        if said.as_deref() != Some(line.as_str()) {
            match reading {
                Reading::Failed(_) => warn!("{line}"),
                _ => info!("{line}"),
            }
            said = Some(line);
        }
        let interval = live.get().services.interval;
        if let Wake::Stop = live.services_beacon().wait(interval) {
            break;
        }
    }
}

/// `22 (ssh, scp), 5000 (http)`.
pub fn shown(ports: &[(u16, crate::config::Opened)]) -> String {
    if ports.is_empty() {
        return "none".into();
    }
    ports
        .iter()
        .map(|(p, why)| format!("{p} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}
