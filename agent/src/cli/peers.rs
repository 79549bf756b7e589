//! `viking peers`: this host's overlay peers, as its kernel holds them (FDB and neighbour
//! entries, routes to their instances) next to what membership says (a peer left out says
//! why).
use std::path::PathBuf;

use anyhow::Context as _;
use viking::{
    cluster::membership,
    netlink::in_netns_or_here,
    overlay::{kernel, peers},
    store::{keys, Store as _},
};

use super::{store_args::StoreArgs, table::render};

pub async fn list(
    args: &StoreArgs,
    node: &str,
    host_netns: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    let store = args.open_for_reading().await?;
    let listing = store.list(keys::HOSTS).await?;
    let mut members = Vec::new();
    let mut bad = Vec::new();
    for kv in &listing.kvs {
        match membership::parse(kv) {
            Ok(h) => members.push(h),
            Err(e) => bad.push(e.to_string()),
        }
    }
    let (state, _) =
        in_netns_or_here(host_netns.as_deref(), |nl| async move { kernel::dump(&nl).await })
            .await
            .context(
                "reading the overlay's kernel state (root, and --host-netns for a test host)",
            )?;
    let rows = peers::report(node, &members, &state);
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    match &state.device {
        Some(d) => println!(
            "{node}: {} vni {} port {} local {} mtu {} mac {}",
            d.name, d.vni, d.port, d.local, d.mtu, d.mac
        ),
        None => println!("{node}: no VXLAN device (host-gw, or no overlay)"),
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.address.to_string(),
                r.vtep.clone().unwrap_or_else(|| "-".into()),
                r.port.map_or("-".into(), |p| p.to_string()),
                r.routes.to_string(),
                r.state.clone(),
            ]
        })
        .collect();
    print!("{}", render(&["PEER", "ADDRESS", "VTEP", "PORT", "ROUTES", "STATE"], &cells));
    for b in bad {
        println!("unreadable host record: {b}");
    }
    Ok(())
}
