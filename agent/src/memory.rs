//! The process's own memory. A first sync reads a whole prefix of the store at once (tens of
//! MiB at 10,000 services) and keeps a small part of it; the allocator keeps what was freed
//! for later use, so the agent's RSS would stay at that peak for its lifetime. After such a
//! burst the loops give the freed pages back to the system.

/// Returns freed heap memory to the system (glibc's `malloc_trim`; other C libraries: no-op).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists,
    // under the allocator's locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
