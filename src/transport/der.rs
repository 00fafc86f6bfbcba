//! Just enough X.509 DER reading to show a certificate's subject, issuer and expiry in
//! diagnoses (the agent verifies certificates with rustls; this only describes them).

/// One DER element: tag, content, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The common name of an X.509 Name, or `None`.
fn common_name(name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    let mut sets = name;
    while let Some((_, set, rest)) = element(sets) {
        sets = rest;
        let (_, attr, _) = element(set)?;
        let (_, oid, value) = element(attr)?;
        if oid == CN {
            let (_, text, _) = element(value)?;
            return Some(String::from_utf8_lossy(text).into_owned());
        }
    }
    None
}

/// `YYMMDDHHMMSSZ` (UTCTime) or `YYYYMMDDHHMMSSZ` (GeneralizedTime) to a readable date.
fn time(tag: u8, t: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(t).ok()?;
    let full = match tag {
        0x17 if t.len() >= 12 => {
            let yy: u32 = t[..2].parse().ok()?;
            format!("{}{}", if yy < 50 { "20" } else { "19" }, t)
        }
        0x18 if t.len() >= 14 => t.to_owned(),
        _ => return None,
    };
    Some(format!(
        "{}-{}-{} {}:{}:{} UTC",
        &full[..4],
        &full[4..6],
        &full[6..8],
        &full[8..10],
        &full[10..12],
        &full[12..14]
    ))
}

/// Subject CN, issuer CN and notAfter of a DER certificate; `None` if it cannot be read.
pub fn describe(cert: &[u8]) -> Option<(String, String, String)> {
    let (_, cert, _) = element(cert)?;
    let (_, tbs, _) = element(cert)?;
    let mut fields = tbs;
    let (tag, _, rest) = element(fields)?;
    if tag == 0xA0 {
        fields = rest; // explicit version
    }
    let (_, _, rest) = element(fields)?; // serial
    let (_, _, rest) = element(rest)?; // signature algorithm
    let (_, issuer, rest) = element(rest)?;
    let (_, validity, rest) = element(rest)?;
    let (_, subject, _) = element(rest)?;
    let (_, _, after) = element(validity)?;
    let (tag, not_after, _) = element(after)?;
    Some((
        common_name(subject).unwrap_or_else(|| "(no common name)".into()),
        common_name(issuer).unwrap_or_else(|| "(no common name)".into()),
        time(tag, not_after)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(
            time(0x17, b"260202025700Z").unwrap(),
            "2026-02-02 02:57:00 UTC"
        );
        assert_eq!(
            time(0x18, b"20991231235959Z").unwrap(),
            "2099-12-31 23:59:59 UTC"
        );
        assert_eq!(time(0x17, b"9901010000Z"), None);
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            assert_eq!(describe(bytes), None);
        }
    }
}
