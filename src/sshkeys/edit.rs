//! The new content of `authorized_keys` and `known_hosts`, from their old content: our lines
//! in, every other line byte for byte as it was. Pure: bytes in, bytes out.

use std::fmt;

use super::key::{KeyError, PublicKey};
use crate::bytes::printable::printable;

/// First line of the block the agent manages in `authorized_keys`.
pub const BEGIN: &str =
    "# BEGIN tunnel-agent: Meeting's key (managed by tunnel-agent; edits inside are replaced)";
/// Its last line.
pub const END: &str = "# END tunnel-agent: Meeting's key";

/// Why a file's content cannot be edited safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// A BEGIN marker without its END: which lines are ours is unknown.
    UnclosedBlock {
        /// 1-based line of the BEGIN marker.
        line: usize,
    },
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EditError::UnclosedBlock { line } => write!(
                f,
                "line {line} opens tunnel-agent's block but no \"{END}\" line closes it, so \
                 which lines are ours is unknown; remove or close the block by hand"
            ),
        }
    }
}

impl std::error::Error for EditError {}

/// Lines with their terminators, so that joining them gives the input back.
fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split_inclusive(|&b| b == b'\n').collect()
}

/// `line` without surrounding ASCII blanks (`<[u8]>::trim_ascii` is newer than our MSRV).
fn trim(line: &[u8]) -> &[u8] {
    let start = line.iter().position(|b| !b.is_ascii_whitespace());
    let end = line.iter().rposition(|b| !b.is_ascii_whitespace());
    match (start, end) {
        (Some(s), Some(e)) => &line[s..=e],
        _ => &[],
    }
}

fn is(line: &[u8], marker: &str) -> bool {
    trim(line) == marker.as_bytes()
}

/// `existing` with the managed block holding `keys` (one line each): the first block is
/// replaced where it stands, further blocks are dropped, and without a block one is appended.
pub fn with_block(existing: &[u8], keys: &[String]) -> Result<Vec<u8>, EditError> {
    let mut block = format!("{BEGIN}\n");
    for k in keys {
        block.push_str(k);
        block.push('\n');
    }
    block.push_str(END);
    block.push('\n');

    let mut out = Vec::with_capacity(existing.len() + block.len());
    let mut placed = false;
    let mut inside: Option<usize> = None;
    for (i, line) in lines(existing).into_iter().enumerate() {
        match inside {
            Some(_) if is(line, END) => inside = None,
            Some(_) => {}
            None if is(line, BEGIN) => {
                inside = Some(i + 1);
                if !placed {
                    out.extend_from_slice(block.as_bytes());
                    placed = true;
                }
            }
            None => out.extend_from_slice(line),
        }
    }
    if let Some(line) = inside {
        return Err(EditError::UnclosedBlock { line });
    }
    if !placed {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(block.as_bytes());
    }
    Ok(out)
}

/// The key lines inside the managed block (empty when there is none).
pub fn block_keys(existing: &[u8]) -> Vec<String> {
    let mut inside = false;
    let mut keys = Vec::new();
    for line in lines(existing) {
        if is(line, BEGIN) {
            inside = true;
        } else if is(line, END) {
            inside = false;
        } else if inside {
            keys.push(String::from_utf8_lossy(trim(line)).into_owned());
        }
    }
    keys
}

/// Every key of an `authorized_keys` file (options skipped), for `check`.
pub fn authorized_keys(existing: &[u8]) -> Vec<PublicKey> {
    authorized_lines(existing)
        .into_iter()
        .map(|(_, k)| k)
        .collect()
}

/// Every key of an `authorized_keys` file with the options written before it (`""`: none).
pub fn authorized_lines(existing: &[u8]) -> Vec<(String, PublicKey)> {
    lines(existing).into_iter().filter_map(key_line).collect()
}

/// The options and the key of one `authorized_keys` line, when it holds a key.
fn key_line(line: &[u8]) -> Option<(String, PublicKey)> {
    let l = std::str::from_utf8(line).ok()?.trim();
    // The key is the first word that is an algorithm; what stands before it is options.
    let start = l
        .match_indices(|c: char| c.is_ascii_whitespace())
        .map(|(i, _)| i + 1)
        .chain([0])
        .filter(|&i| super::key::ALGORITHMS.iter().any(|a| l[i..].starts_with(a)))
        .min()?;
    let key = PublicKey::parse(&l[start..]).ok()?;
    Some((l[..start].trim().to_owned(), key))
}

/// The lines (1-based), outside tunnel-agent's block, that hold the key of fingerprint `fp`
/// with none of the options that keep it from logging in from anywhere (`from=`, `command=`,
/// `restrict`): the copy the web manager's "install key" button appends, which undoes the
/// restriction of ours. Found to be said, never rewritten.
pub fn unrestricted_copies(existing: &[u8], fp: &str) -> Vec<usize> {
    let mut inside = false;
    let mut found = Vec::new();
    for (i, line) in lines(existing).into_iter().enumerate() {
        if is(line, BEGIN) {
            inside = true;
        } else if is(line, END) {
            inside = false;
        } else if let Some((options, key)) = key_line(line).filter(|_| !inside) {
            let restricted = super::server::option_names(&options).iter().any(|n| {
                ["from", "command", "restrict"]
                    .iter()
                    .any(|r| n.eq_ignore_ascii_case(r))
            });
            if !restricted && key.fingerprint() == fp {
                found.push(i + 1);
            }
        }
    }
    found
}

/// One line of Meeting's `ssh-hostkey` answer: `host algorithm base64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The host field, as `known_hosts` has it (`name`, `[name]:port`, or a comma list).
    pub host: String,
    /// The key.
    pub key: PublicKey,
}

impl HostKey {
    /// The `known_hosts` line (no newline).
    pub fn line(&self) -> String {
        format!("{} {}", self.host, self.key.key_part())
    }
}

/// Parses an `ssh-keyscan`-style answer; blank lines and `#` comments are skipped. Any bad
/// line refuses the whole answer.
pub fn parse_host_keys(text: &str) -> Result<Vec<HostKey>, (usize, KeyError)> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (host, key) = line
            .split_once(char::is_whitespace)
            .ok_or((i + 1, KeyError::Empty))?;
        let host_ok = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[],*?".contains(&b));
        if !host_ok {
            return Err((
                i + 1,
                KeyError::UnknownAlgorithm(format!(
                    "host \"{}\" (not a host name)",
                    printable(host.as_bytes(), 40)
                )),
            ));
        }
        let key = PublicKey::parse(key).map_err(|e| (i + 1, e))?;
        keys.push(HostKey {
            host: host.to_owned(),
            key: PublicKey {
                comment: String::new(),
                ..key
            },
        });
    }
    if keys.is_empty() {
        return Err((0, KeyError::Empty));
    }
    Ok(keys)
}

/// `existing` known_hosts with every line whose host field equals a host of `keys` replaced by
/// `keys` (placed where the first such line was, else appended). Comments, markers (`@...`),
/// hashed hosts and other hosts stay as they were.
pub fn with_host_keys(existing: &[u8], keys: &[HostKey]) -> Vec<u8> {
    let ours = |line: &[u8]| {
        let field = trim(line)
            .split(|b| b.is_ascii_whitespace())
            .next()
            .unwrap_or_default();
        keys.iter().any(|k| k.host.as_bytes() == field)
    };
    let mut block = String::new();
    for k in keys {
        block.push_str(&k.line());
        block.push('\n');
    }
    let mut out = Vec::with_capacity(existing.len() + block.len());
    let mut placed = false;
    for line in lines(existing) {
        if ours(line) {
            if !placed {
                out.extend_from_slice(block.as_bytes());
                placed = true;
            }
        } else {
            out.extend_from_slice(line);
        }
    }
    if !placed {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(block.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    #[test]
    fn the_block_is_appended_then_replaced_in_place_and_nothing_else_moves() {
        let mine = b"# mine\r\nssh-rsa AAAA user@laptop\n\nno-newline-at-end";
        let once = with_block(mine, &[format!("from=\"127.0.0.1\" {K1} a")]).unwrap();
        assert!(once.starts_with(b"# mine\r\nssh-rsa AAAA user@laptop\n\nno-newline-at-end\n"));
        assert_eq!(
            block_keys(&once),
            vec![format!("from=\"127.0.0.1\" {K1} a")]
        );
        // Again: byte for byte the same.
        assert_eq!(
            with_block(&once, &[format!("from=\"127.0.0.1\" {K1} a")]).unwrap(),
            once
        );
        // Rotated, with lines after the block: replaced where it stands.
        let mut more = once.clone();
        more.extend_from_slice(b"after\n");
        let rotated = with_block(&more, &[format!("{K1} b")]).unwrap();
        let text = String::from_utf8(rotated).unwrap();
        assert!(
            text.ends_with(&format!("{BEGIN}\n{K1} b\n{END}\nafter\n")),
            "{text}"
        );
        assert_eq!(text.matches(BEGIN).count(), 1);
    }

    /// Meeting's key in the web manager's form (the key alone, or with options that do not
    /// restrict) is found by line; ours, inside the block or restricted, is not.
    #[test]
    fn unrestricted_copies_of_a_key_are_found_by_line() {
        let fp = PublicKey::parse(K1).unwrap().fingerprint();
        let file = format!(
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 other\n{BEGIN}\n{K1} ours-without-from\n{END}\n\
             {K1} meeting@web-manager\nfrom=\"127.0.0.1\" {K1} restricted\n\
             no-pty,no-agent-forwarding {K1} still-open\nrestrict {K1} r\n\
             command=\"/bin/true\" {K1} c\n"
        );
        assert_eq!(unrestricted_copies(file.as_bytes(), &fp), vec![5, 7]);
        assert_eq!(unrestricted_copies(b"", &fp), Vec::<usize>::new());
        assert_eq!(
            unrestricted_copies(file.as_bytes(), "SHA256:another-key"),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn an_unclosed_block_is_refused() {
        let broken = format!("a\n{BEGIN}\n{K1}\n");
        assert_eq!(
            with_block(broken.as_bytes(), &[]),
            Err(EditError::UnclosedBlock { line: 2 })
        );
    }

    #[test]
    fn authorized_keys_are_found_behind_options() {
        let text = format!("# c\nfrom=\"127.0.0.1,::1\",no-pty {K1} x\n{K1}\ngarbage\n");
        let keys = authorized_keys(text.as_bytes());
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].comment, "x");
    }

    #[test]
    fn known_hosts_lines_of_the_named_hosts_are_replaced_others_kept() {
        let answer = format!("# meeting\nmeeting.example {K1}\n[meeting.example]:2222 {K1}\n");
        let keys = parse_host_keys(&answer).unwrap();
        assert_eq!(keys.len(), 2);
        let old = format!(
            "other {K1}\n|1|hash= {K1}\nmeeting.example ssh-rsa OLD\n@revoked * {K1}\nmeeting.example ecdsa OLD2\n"
        );
        let new = String::from_utf8(with_host_keys(old.as_bytes(), &keys)).unwrap();
        assert_eq!(
            new,
            format!(
                "other {K1}\n|1|hash= {K1}\nmeeting.example {K1}\n[meeting.example]:2222 {K1}\n@revoked * {K1}\n"
            )
        );
        assert_eq!(with_host_keys(new.as_bytes(), &keys), new.as_bytes());
        assert_eq!(parse_host_keys(&format!("bad/host {K1}")).unwrap_err().0, 1);
        assert_eq!(parse_host_keys("\n# nothing\n").unwrap_err().0, 0);
        assert!(parse_host_keys(&format!("h ssh-ed25519 AAAA\nh {K1}")).is_err());
    }
}
