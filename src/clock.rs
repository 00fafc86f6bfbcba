//! Wall-clock time for people: seconds since the epoch and a UTC rendering (no date crate).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since 1970-01-01 UTC.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When this binary was built, seconds since the epoch (`SOURCE_DATE_EPOCH` where the build
/// system set it; see `build.rs`). A clock that reads earlier than this was never set.
pub fn built() -> u64 {
    env!("TUNNEL_AGENT_BUILD_EPOCH").parse().unwrap_or(0)
}

/// Whether a device clock reading `now` is certainly wrong: before this binary was built, as a
/// board without a real-time clock reads until NTP has synchronised.
pub fn unset(now: u64) -> bool {
    now < built()
}

/// Now as RFC 3339 with milliseconds, `YYYY-MM-DDTHH:MM:SS.mmmZ`, for log lines.
pub fn rfc3339_millis_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339_millis(d.as_secs(), d.subsec_millis())
}

fn rfc3339_millis(secs: u64, millis: u32) -> String {
    let (y, m, d, hh, mm, ss) = parts(secs);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let (y, m, d, hh, mm, ss) = parts(secs);
    format!("{y:04}-{m:02}-{d:02} {hh:02}:{mm:02}:{ss:02} UTC")
}

/// Seconds since the epoch of a UTC time as Meeting writes it, `YYYY-MM-DD HH:MM:SS`
/// (also with a `T` between date and time, and a trailing `Z` or ` UTC`); `None` when the
/// text is not such a time.
pub fn parse_utc(text: &str) -> Option<u64> {
    let t = text.trim();
    let t = t
        .strip_suffix(" UTC")
        .or_else(|| t.strip_suffix('Z'))
        .unwrap_or(t);
    let b = t.as_bytes();
    if b.len() != 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let s = t.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y as i64, m as u32, d as u32)?;
    Some(days as u64 * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Days since 1970-01-01 of a calendar date (Howard Hinnant's algorithm); `None` for a day
/// the month does not have.
fn days_from_civil(y: i64, m: u32, d: u32) -> Option<i64> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d == 0 || d > month_days[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Year, month, day, hour, minute, second of `secs` since the epoch, in UTC.
fn parts(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_486), (2026, 2, 2));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(utc(1_769_997_420), "2026-02-02 01:57:00 UTC");
        assert_eq!(rfc3339_millis(1_769_997_420, 7), "2026-02-02T01:57:00.007Z");
    }

    #[test]
    fn meeting_times_read_back() {
        for secs in [0, 951_782_400, 1_769_997_420, 4_102_444_799] {
            let text = utc(secs);
            assert_eq!(parse_utc(&text), Some(secs), "{text}");
            assert_eq!(parse_utc(text.trim_end_matches(" UTC")), Some(secs));
        }
        assert_eq!(parse_utc("2026-02-02T01:57:00Z"), Some(1_769_997_420));
        for bad in [
            "",
            "2026-02-30 00:00:00",
            "2026-13-01 00:00:00",
            "2026-02-02 24:00:00",
            "2026-02-02",
            "2026-02-02 01:57",
            "20x6-02-02 01:57:00",
            "2026-02-02 +1:57:00",
            "1969-12-31 23:59:59",
            "2026-02-02 01:57:00 CET",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }
}
