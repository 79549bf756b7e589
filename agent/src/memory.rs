//! The process's own memory. A first sync reads a whole prefix of the store at once (tens of
//! MiB at 10,000 services) and keeps a small part of it; the allocator keeps what was freed
//! for later use, so the agent's RSS would stay at that peak for its lifetime. After such a
//! burst the loops give the freed pages back to the system, and the allocator is set up at
//! start so that there is little to give back (`tune`).

/// glibc's allocator as the agent wants it, called first thing in `main` (before any thread):
///
/// - one arena: glibc gives each thread that allocates its own (up to 8 per core), and what
///   one frees the others cannot reuse; the agent's loops are not allocation-bound, and with
///   one arena an idle agent peaks 11 MiB lower and a loaded one keeps less (docs/benchmarks.md);
/// - blocks of 128 KiB and more always mapped apart (glibc otherwise raises this threshold to
///   the largest block freed, up to 32 MiB): a listing's vectors or a scrape's text go back
///   to the system when freed instead of staying in the heap, under what is still used.
///
/// Other C libraries: no-op.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and only sets the allocator's parameters.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap memory to the system (glibc's `malloc_trim`; other C libraries: no-op).
pub fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks the allocator's own free lists,
    // under the allocator's locks, and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
