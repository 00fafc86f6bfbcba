//! How the agent asks the C allocator to keep its resident size small and give memory back.
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
