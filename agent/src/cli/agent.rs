//! `viking agent`: the per-host daemon. For now it owns the datapath; the store, reconciler
//! and API join it as they land.
use std::path::Path;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};
use viking::datapath::{Datapath, DatapathConfig};

pub async fn run(node: &str, config: DatapathConfig) -> anyhow::Result<()> {
    let mut datapath = Datapath::start(&config)
        .with_context(|| format!("starting the datapath of node {node}"))?;
    datapath.spawn_log();
    tracing::info!(node, "agent running; stop with SIGTERM (the datapath stays in the kernel)");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(viking::datapath::GRACE);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => datapath.table.collect_retired(viking::datapath::GRACE)?,
        }
    }
    datapath.table.flush()?;
    tracing::info!(node, "agent stopped; programs and services stay pinned");
    Ok(())
}

pub fn cleanup(bpffs: &Path) -> anyhow::Result<()> {
    Datapath::remove(bpffs)?;
    tracing::info!(bpffs = %bpffs.display(), "datapath removed");
    Ok(())
}
