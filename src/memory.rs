//! How the binaries ask the C allocator to keep their resident size small and give memory
//! back, and how meeting-proxy gets the open-file limit it needs for thousands of sockets.
#![allow(unsafe_code)]

/// Called once at start-up, before any thread: one malloc arena for the whole process.
///
/// glibc gives threads their own arenas (up to eight per CPU), each keeping its own free
/// memory; with one thread per channel that is hundreds of KiB per arena for nothing, since
/// channel threads allocate little (their buffers come from the frame writer's pool). musl's
/// allocator (the static builds) has no arenas, so there this does nothing.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Asks the allocator to return every whole free page to the system; called when the last
/// channel of a burst has ended.
///
/// glibc trims only the top of its heap by itself, so after a burst of channels the resident
/// size would stay at the burst's peak for good. musl returns memory by itself: there this
/// does nothing.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit on open files to the hard limit (the default soft limit, often 1024,
/// caps a proxy at a few hundred devices); returns the limit now in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other precondition.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    // rlim_t is 32 bits on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(lim.rlim_cur))
}
