//! `viking services` and `viking service add|rm`: the service table in the kernel.
use std::{net::SocketAddr, path::Path};

use anyhow::Context as _;
use viking::datapath::{maps_dir, Algo, Frontend, Proto, ServiceSpec, ServiceStatus, ServiceTable};

use super::table::render;

fn open(bpffs: &Path) -> anyhow::Result<ServiceTable> {
    ServiceTable::open(&maps_dir(bpffs)).with_context(|| {
        format!(
            "no datapath pinned at {} (is `viking agent` running with this --bpffs?)",
            bpffs.display()
        )
    })
}

pub fn list(bpffs: &Path, json: bool) -> anyhow::Result<()> {
    let services = open(bpffs)?.list()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&services)?);
    } else {
        print!("{}", format_table(&services));
    }
    Ok(())
}

pub fn format_table(services: &[ServiceStatus]) -> String {
    let mut rows = Vec::new();
    for s in services {
        let name = if s.name.is_empty() { format!("#{}", s.id) } else { s.name.clone() };
        let frontend = s.frontend.to_string();
        let summary = vec![
            name,
            frontend,
            s.algo.to_string(),
            s.backends.len().to_string(),
            s.backends.iter().map(|b| b.active).sum::<u64>().to_string(),
            s.conns.to_string(),
            s.rejects.to_string(),
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
            ]);
        }
    }
    render(&["SERVICE", "AMBASSADOR", "ALGO", "BACKENDS", "ACTIVE", "TOTAL", "REFUSED"], &rows)
}

pub fn add(
    bpffs: &Path,
    name: String,
    frontend: SocketAddr,
    proto: Proto,
    algo: Algo,
    backends: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    let mut table = open(bpffs)?;
    let spec = ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
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
