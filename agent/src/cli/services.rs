//! `viking services` and `viking service add|rm`: the service table in the kernel.
use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use viking::datapath::{
    maps_dir, Algo, Ejection, EndedSockets, Frontend, Health, Proto, ServiceSpec, ServiceStatus,
    ServiceTable,
};

/// Passive health and stale-socket settings of `viking service add`.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Eject a backend after this many failed connects in a row (0: never).
    #[arg(long, default_value_t = Ejection::default().after)]
    pub eject_after: u32,
    /// How long the first ejection lasts; it doubles while the backend keeps failing.
    #[arg(long, default_value_t = Ejection::default().backoff_ms)]
    pub eject_backoff_ms: u32,
    /// The longest an ejection lasts.
    #[arg(long, default_value_t = Ejection::default().max_backoff_ms)]
    pub eject_max_ms: u32,
    /// When a backend leaves, end the TCP connections to it too (connected UDP always is).
    #[arg(long)]
    pub end_tcp: bool,
}

use super::{
    out::{out, outln},
    table::render,
};

fn open(bpffs: &Path) -> anyhow::Result<ServiceTable> {
    ServiceTable::open(&maps_dir(bpffs)).with_context(|| {
        format!(
            "no datapath pinned at {} (is `viking agent` running with this --bpffs?)",
            bpffs.display()
        )
    })
}

pub fn list(bpffs: &Path, json: bool) -> anyhow::Result<()> {
    let table = open(bpffs)?;
    let services = table.list()?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&services)?);
    } else {
        out!("{}", format_table(&services));
        outln!("{}", ended_line(&table.ended()?));
    }
    Ok(())
}

/// The footer: what happened to sockets pinned to backends that left.
pub fn ended_line(e: &EndedSockets) -> String {
    if !e.available {
        return "stale sockets: not ended (this kernel lacks bpf_sock_destroy, Linux 6.5+)".into();
    }
    let mut line = format!("stale sockets ended: {} udp, {} tcp", e.udp, e.tcp);
    if e.failed_sweeps > 0 {
        line.push_str(&format!("; {} sweeps failed (see the agent's log)", e.failed_sweeps));
    }
    line
}

fn health_cell(b: &viking::datapath::BackendStatus) -> String {
    match b.health {
        Health::Ejected => format!("ejected {:.1}s", b.ejected_ms as f64 / 1000.0),
        Health::Probing => "probing".into(),
        Health::Ok if b.failing > 0 => format!("ok ({} failed)", b.failing),
        Health::Ok => "ok".into(),
    }
}

pub fn format_table(services: &[ServiceStatus]) -> String {
    let mut rows = Vec::new();
    for s in services {
        let name = if s.name.is_empty() { format!("#{}", s.id) } else { s.name.clone() };
        let frontend = s.frontend.to_string();
        // NB: at the per-service limit, how many registered backends are left out.
        let backends = if s.unprogrammed > 0 {
            format!("{} (+{} over the limit)", s.backends.len(), s.unprogrammed)
        } else {
            s.backends.len().to_string()
        };
        let in_rotation = s.backends.iter().filter(|b| b.health != Health::Ejected).count();
        let health = if s.ejection.is_off() {
            "no ejection".to_owned()
        } else {
            format!("{in_rotation}/{} in rotation", s.backends.len())
        };
        let summary = vec![
            name,
            frontend,
            s.algo.to_string(),
            backends,
            s.backends.iter().map(|b| b.active).sum::<u64>().to_string(),
            s.conns.to_string(),
            s.rejects.to_string(),
            s.failed_connects.to_string(),
            s.ejections.to_string(),
            health,
        ];
        rows.push(summary);
        for b in &s.backends {
            rows.push(vec![
                String::new(),
                format!("  -> {}", b.addr),
                String::new(),
                String::new(),
                b.active.to_string(),
                b.total.to_string(),
                String::new(),
                b.failed_connects.to_string(),
                b.ejections.to_string(),
                health_cell(b),
            ]);
        }
    }
    render(
        &[
            "SERVICE",
            "AMBASSADOR",
            "ALGO",
            "BACKENDS",
            "ACTIVE",
            "TOTAL",
            "REFUSED",
            "FAILED",
            "EJECTIONS",
            "HEALTH",
        ],
        &rows,
    )
}

pub fn add(
    bpffs: &Path,
    name: String,
    frontend: SocketAddr,
    proto: Proto,
    algo: Algo,
    backends: Vec<SocketAddr>,
    health: HealthArgs,
) -> anyhow::Result<()> {
    let mut table = open(bpffs)?;
    let spec = ServiceSpec {
        ejection: Ejection {
            after: health.eject_after,
            backoff_ms: health.eject_backoff_ms,
            max_backoff_ms: health.eject_max_ms,
        },
        end_tcp: health.end_tcp,
        name,
        frontend: Frontend { addr: frontend, proto, netns: 0 },
        algo,
        backends,
    };
    table.upsert(&spec).with_context(|| format!("programming service {}", spec.name))?;
    table.flush()?;
    Ok(())
}

pub fn remove(bpffs: &Path, frontend: SocketAddr, proto: Proto) -> anyhow::Result<()> {
    let mut table = open(bpffs)?;
    let f = Frontend { addr: frontend, proto, netns: 0 };
    if !table.remove(&f)? {
        anyhow::bail!("no service at {f}");
    }
    table.flush()?;
    Ok(())
}
