//! Files outside the agent's own state (`authorized_keys`, `known_hosts`, the device key),
//! read and replaced safely: every operation is relative to a directory opened without
//! following a symbolic link, a file that is a symbolic link, a hard link or owned by someone
//! unexpected is refused, and a write is a new file (fsync) renamed over the old one, keeping
//! its owner and mode, so a reader sees the old content or the new, never half of it.
//!
//! Holds the `*at` system calls std does not have, hence its `unsafe` (one wrapper each).
#![allow(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Largest file read (an `authorized_keys` of a megabyte is not one we should rewrite).
const MAX_SIZE: u64 = 1 << 20;

/// Why a file was not read or written.
#[derive(Debug)]
pub enum FsError {
    /// The path is not one the agent may write: a symbolic link, a hard link, not a regular
    /// file or directory, or owned by someone else.
    Unsafe {
        /// The path.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The system refused an operation.
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done ("read", "create", ...).
        doing: &'static str,
        /// The error.
        err: std::io::Error,
    },
}

impl FsError {
    /// The operation was refused for lack of rights (or on a read-only file system).
    pub fn is_permission(&self) -> bool {
        matches!(self, FsError::Io { err, .. } if matches!(
            err.raw_os_error(),
            Some(libc::EACCES | libc::EPERM | libc::EROFS)
        ))
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::Unsafe { path, why } => write!(
                f,
                "refusing to write {}: {why}; nothing was changed",
                path.display()
            ),
            FsError::Io { path, doing, err } => {
                write!(f, "cannot {doing} {}: {err}", path.display())
            }
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FsError::Io { err, .. } => Some(err),
            FsError::Unsafe { .. } => None,
        }
    }
}

/// The process's effective user and group ids.
pub fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Owner and mode of a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Permission bits.
    pub mode: u32,
}

/// A file's content and owner.
#[derive(Debug)]
pub struct Existing {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Owner and mode.
    pub owner: Owner,
}

/// An open directory all file operations are relative to.
pub struct SafeDir {
    dir: File,
    path: PathBuf,
    /// Its owner and mode.
    pub owner: Owner,
}

fn owner_of(m: &std::fs::Metadata) -> Owner {
    Owner {
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
    }
}

fn c_name(name: &OsStr) -> CString {
    // File names come from the configuration or are our own; a NUL cannot be in either.
    CString::new(name.as_bytes()).unwrap_or_default()
}

fn not_ours(uid: u32, owners: &[u32]) -> Option<String> {
    (!owners.contains(&uid)).then(|| {
        format!(
            "it is owned by uid {uid}, neither the login user nor root (a local user could point \
             the agent at another file this way)"
        )
    })
}

impl SafeDir {
    /// Opens `path`, refusing a symbolic link and an owner not in `owners`. When it is missing
    /// and `create` names an owner, creates it with mode 0700 for that owner (its parent must
    /// exist).
    pub fn open(
        path: &Path,
        owners: &[u32],
        create: Option<(u32, u32)>,
    ) -> Result<SafeDir, FsError> {
        let unsafe_path = |why: String| FsError::Unsafe {
            path: path.to_owned(),
            why,
        };
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path)
        };
        let mut created = false;
        let dir = match open() {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create.is_some() => {
                match std::fs::DirBuilder::new().mode(0o700).create(path) {
                    Ok(()) => created = true,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(err) => {
                        return Err(FsError::Io {
                            path: path.to_owned(),
                            doing: "create the directory",
                            err,
                        })
                    }
                }
                open().map_err(|err| FsError::Io {
                    path: path.to_owned(),
                    doing: "open the directory",
                    err,
                })?
            }
            // O_NOFOLLOW with O_DIRECTORY says ENOTDIR for a symbolic link, ELOOP elsewhere.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                let link =
                    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(unsafe_path(
                    if link {
                        "it is a symbolic link"
                    } else {
                        "it is not a directory"
                    }
                    .into(),
                ));
            }
            Err(err) => {
                return Err(FsError::Io {
                    path: path.to_owned(),
                    doing: "open the directory",
                    err,
                })
            }
        };
        if let (true, Some((uid, gid))) = (created, create) {
            std::os::unix::fs::fchown(&dir, Some(uid), Some(gid)).map_err(|err| FsError::Io {
                path: path.to_owned(),
                doing: "give the new directory to its user",
                err,
            })?;
        }
        let meta = dir.metadata().map_err(|err| FsError::Io {
            path: path.to_owned(),
            doing: "inspect",
            err,
        })?;
        if let Some(why) = not_ours(meta.uid(), owners) {
            return Err(unsafe_path(why));
        }
        Ok(SafeDir {
            owner: owner_of(&meta),
            dir,
            path: path.to_owned(),
        })
    }

    /// The path of `name` inside, for messages.
    pub fn path_of(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `None` when there is no such entry.
    fn lstat(&self, name: &OsStr) -> std::io::Result<Option<libc::stat>> {
        let c = c_name(name);
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `c` is a NUL-terminated string and `st` a buffer of the right type, both
        // alive for the call; the directory fd is open.
        let rc = unsafe {
            libc::fstatat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc == 0 {
            // SAFETY: fstatat returned 0, so it filled `st`.
            return Ok(Some(unsafe { st.assume_init() }));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::NotFound => Ok(None),
            _ => Err(e),
        }
    }

    /// `openat(dir, name, flags, mode)` as a `File`.
    fn openat(&self, name: &OsStr, flags: i32, mode: u32) -> std::io::Result<File> {
        let c = c_name(name);
        // SAFETY: `c` is NUL-terminated and outlives the call; the fd returned, when valid, is
        // owned by nobody else and handed to File at once.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly opened descriptor nobody else owns.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    fn unlinkat(&self, name: &OsStr) -> std::io::Result<()> {
        let c = c_name(name);
        // SAFETY: `c` is NUL-terminated and outlives the call.
        let rc = unsafe { libc::unlinkat(self.dir.as_raw_fd(), c.as_ptr(), 0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    fn renameat(&self, from: &OsStr, to: &OsStr) -> std::io::Result<()> {
        let (a, b) = (c_name(from), c_name(to));
        let fd = self.dir.as_raw_fd();
        // SAFETY: both names are NUL-terminated and outlive the call.
        let rc = unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Reads `name`: `None` when it does not exist; refused when it is a symbolic link, not a
    /// regular file, has other hard links, or is owned by a uid not in `owners`.
    pub fn read(&self, name: &OsStr, owners: &[u32]) -> Result<Option<Existing>, FsError> {
        let path = self.path_of(name);
        let io = |doing, err| FsError::Io {
            path: path.clone(),
            doing,
            err,
        };
        let unsafe_file = |why: String| FsError::Unsafe {
            path: path.clone(),
            why,
        };
        let Some(st) = self.lstat(name).map_err(|e| io("inspect", e))? else {
            return Ok(None);
        };
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => {}
            libc::S_IFLNK => return Err(unsafe_file("it is a symbolic link".into())),
            _ => return Err(unsafe_file("it is not a regular file".into())),
        }
        if st.st_nlink > 1 {
            return Err(unsafe_file(format!(
                "it has {} hard links (it may be another file under this name)",
                st.st_nlink
            )));
        }
        if let Some(why) = not_ours(st.st_uid, owners) {
            return Err(unsafe_file(why));
        }
        let file = self
            .openat(name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
            .map_err(|e| io("open", e))?;
        let meta = file.metadata().map_err(|e| io("inspect", e))?;
        #[allow(clippy::unnecessary_cast)] // ino_t is not u64 on every target
        let same = meta.ino() == st.st_ino as u64;
        if !same || !meta.is_file() {
            return Err(unsafe_file("it changed while being opened".into()));
        }
        if meta.len() > MAX_SIZE {
            return Err(unsafe_file(format!(
                "it is larger than {} KiB",
                MAX_SIZE / 1024
            )));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_SIZE)
            .read_to_end(&mut bytes)
            .map_err(|e| io("read", e))?;
        Ok(Some(Existing {
            bytes,
            owner: owner_of(&meta),
        }))
    }

    /// Replaces `name` with `bytes`, owned by `owner` with its mode: a temporary file in the
    /// same directory, written and synced, then renamed over `name`; the directory is synced.
    pub fn replace(&self, name: &OsStr, bytes: &[u8], owner: Owner) -> Result<(), FsError> {
        let path = self.path_of(name);
        let io = |doing, err| FsError::Io {
            path: path.clone(),
            doing,
            err,
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tunnel-agent.{}", std::process::id()));
        let create = || {
            self.openat(
                &tmp_name,
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                0o600,
            )
        };
        let mut file = match create() {
            // Left by a crash, or planted: removed (unlink does not follow links), then again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let _ = self.unlinkat(&tmp_name);
                create()
            }
            other => other,
        }
        .map_err(|e| io("create a temporary file next to", e))?;
        let written = (|| {
            let meta = file.metadata()?;
            if meta.uid() != owner.uid || meta.gid() != owner.gid {
                std::os::unix::fs::fchown(&file, Some(owner.uid), Some(owner.gid))?;
            }
            file.set_permissions(std::fs::Permissions::from_mode(owner.mode))?;
            file.write_all(bytes)?;
            file.sync_all()
        })();
        let renamed = written.and_then(|()| self.renameat(&tmp_name, name));
        if let Err(e) = renamed {
            let _ = self.unlinkat(&tmp_name);
            return Err(io("write", e));
        }
        // The rename is durable once the directory is synced.
        let _ = self.dir.sync_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tunnel-agent-fs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn me() -> u32 {
        effective_ids().0
    }

    #[test]
    fn replace_keeps_the_mode_and_refuses_links() {
        let d = scratch("replace");
        let dir = SafeDir::open(&d, &[me()], Some((me(), me()))).unwrap();
        let name = OsStr::new("authorized_keys");
        assert!(dir.read(name, &[me()]).unwrap().is_none());
        let owner = Owner {
            uid: me(),
            gid: dir.owner.gid,
            mode: 0o640,
        };
        dir.replace(name, b"one\n", owner).unwrap();
        let got = dir.read(name, &[me()]).unwrap().unwrap();
        assert_eq!(
            (got.bytes.as_slice(), got.owner.mode),
            (&b"one\n"[..], 0o640)
        );
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);

        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        let e = dir.read(OsStr::new("link"), &[me()]).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::fs::hard_link(d.join("authorized_keys"), d.join("hard")).unwrap();
        let e = dir.read(name, &[me()]).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");

        std::os::unix::fs::symlink(&d, d.with_extension("link")).unwrap();
        let e = SafeDir::open(&d.with_extension("link"), &[me()], None)
            .err()
            .unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let _ = std::fs::remove_file(d.with_extension("link"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
