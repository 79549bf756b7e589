//! One log for everything: `tracing` events, `log` records from dependencies, and aya-log
//! records from the eBPF programs (which arrive through `log`).
use std::io::IsTerminal as _;

use tracing_subscriber::{fmt, layer::SubscriberExt as _, EnvFilter};

/// Installs the global subscriber; `RUST_LOG` filters (default `info`). `json` switches to
/// one JSON object per line. Colours only when stderr is a terminal (a log file, journald or
/// `docker logs` get plain text).
pub fn init(json: bool) -> anyhow::Result<()> {
    tracing_log::LogTracer::init()?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if json {
        tracing::subscriber::set_global_default(
            registry.with(fmt::layer().json().with_writer(std::io::stderr)),
        )?;
    } else {
        tracing::subscriber::set_global_default(registry.with(
            fmt::layer().with_ansi(std::io::stderr().is_terminal()).with_writer(std::io::stderr),
        ))?;
    }
    Ok(())
}
