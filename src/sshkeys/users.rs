//! The password database (`/etc/passwd`), read directly: a static musl binary has no NSS, and
//! embedded images keep their users there.

use std::path::PathBuf;

/// The password database.
pub const PASSWD: &str = "/etc/passwd";

/// A user: what the key work needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: PathBuf,
}

/// Every well-formed entry of a passwd text.
pub fn parse(text: &str) -> Vec<User> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            Some(User {
                name: f[0].to_owned(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: PathBuf::from(f[5]),
            })
        })
        .collect()
}

/// The users of the system (empty when the file cannot be read).
pub fn all() -> Vec<User> {
    std::fs::read_to_string(PASSWD)
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The user called `name`.
pub fn by_name(name: &str) -> Option<User> {
    all().into_iter().find(|u| u.name == name)
}

/// The user with id `uid`.
pub fn by_uid(uid: u32) -> Option<User> {
    all().into_iter().find(|u| u.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_broken_lines_are_skipped() {
        let users = parse(
            "root:x:0:0:root:/root:/bin/sh\n# comment\nbroken:x:zz:0::/:/bin/sh\n\
             device:x:1000:1000:Meeting,,,:/home/device:/bin/bash\nshort:x:1\n",
        );
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[1],
            User {
                name: "device".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/device".into()
            }
        );
    }
}
