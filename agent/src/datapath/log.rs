//! Forwards aya-log records from the programs into the agent's `tracing` log.
use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Starts a task that drains the programs' log ring. The logger owns the AYA_LOGS map: it
/// must live as long as the programs (toolchain.md), which the task guarantees.
pub fn spawn(ebpf: &mut Ebpf) {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    // SAFETY: the logger owns the ring buffer's fd and keeps it open for as long as the
    // AsyncFd (which owns the logger) lives.
    let registered =
        unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "eBPF logs unavailable");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else { return };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
