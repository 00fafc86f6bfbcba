//! The Meeting REST API as `check` uses it: `GET /api/devices/{key}` with `X-Token-Code`.

use std::time::Duration;

use serde_json::Value;

/// `api_url` as found on devices, with or without the trailing `/api`, to the device URL.
pub fn device_url(api_url: &str, device_key: &str) -> String {
    let base = api_url.trim().trim_end_matches('/');
    let base = base.strip_suffix("/api").unwrap_or(base);
    format!("{base}/api/devices/{device_key}")
}

/// What the API answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceRecord {
    /// HTTP 200 with a device record.
    Found {
        /// `authorized`.
        authorized: bool,
        /// `services`.
        services: Vec<String>,
    },
    /// HTTP 404.
    NotFound,
    /// Another HTTP status; the first bytes of the body.
    Status(u16, String),
    /// Not an HTTP answer we can use (network, TLS, not JSON).
    Failed(String),
}

/// Fetches the device record (a build without TLS has no HTTP client: the API is HTTPS).
#[cfg(not(feature = "tls"))]
pub fn fetch(_api_url: &str, _device_key: &str, _token: &str, _timeout: Duration) -> DeviceRecord {
    DeviceRecord::Failed(
        "this tunnel-agent was built without TLS, so it cannot ask the Meeting API (HTTPS)".into(),
    )
}

/// Fetches the device record.
#[cfg(feature = "tls")]
pub fn fetch(api_url: &str, device_key: &str, token: &str, timeout: Duration) -> DeviceRecord {
    let url = device_url(api_url, device_key);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .user_agent(concat!("tunnel-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut resp = match agent.get(&url).header("X-Token-Code", token).call() {
        Ok(r) => r,
        // ureq's errors never contain header values, so the token cannot leak through them.
        Err(e) => return DeviceRecord::Failed(e.to_string()),
    };
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(256 * 1024)
        .read_to_string()
        .unwrap_or_default();
    match status {
        200 => parse_record(&body),
        404 => DeviceRecord::NotFound,
        s => DeviceRecord::Status(s, crate::printable::printable(body.as_bytes(), 120)),
    }
}

#[cfg_attr(not(feature = "tls"), allow(dead_code))]
fn parse_record(body: &str) -> DeviceRecord {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return DeviceRecord::Failed(format!(
            "HTTP 200 but the body is not JSON: \"{}\"",
            crate::printable::printable(body.as_bytes(), 80)
        ));
    };
    DeviceRecord::Found {
        authorized: v
            .get("authorized")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        services: v
            .get("services")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_url_with_or_without_api_suffix() {
        let k = "K";
        for u in [
            "https://meeting.ygsoft.fr/api",
            "https://meeting.ygsoft.fr/api/",
            "https://meeting.ygsoft.fr",
            "https://meeting.ygsoft.fr/",
        ] {
            assert_eq!(
                device_url(u, k),
                "https://meeting.ygsoft.fr/api/devices/K",
                "{u}"
            );
        }
    }

    #[test]
    fn record_fields() {
        assert_eq!(
            parse_record(
                r#"{"device_key":"K","authorized":true,"services":["ssh","scp","debug"]}"#
            ),
            DeviceRecord::Found {
                authorized: true,
                services: vec!["ssh".into(), "scp".into(), "debug".into()]
            }
        );
        assert!(matches!(parse_record("<html>"), DeviceRecord::Failed(_)));
    }
}
