//! `viking hosts`: cluster membership as the store has it, and who leads.
use serde::Serialize;
use viking::cluster::{leader, membership, membership::Host};

use super::{
    out::{out, outln},
    store_args::StoreArgs,
    table::render,
};

#[derive(Serialize)]
struct HostRow<'a> {
    #[serde(flatten)]
    host: &'a Host,
    leader: bool,
}

/// The node name in the leader's value: the agent writes `{"node": ..}`; anything else is
/// taken whole.
fn leader_node(value: &str) -> String {
    serde_json::from_str::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v.get("node").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_else(|| value.to_string())
}

pub async fn list(args: &StoreArgs, json: bool) -> anyhow::Result<()> {
    let store = args.open_for_reading().await?;
    let hosts = membership::hosts(&store).await?;
    let leader = leader::leader(&store).await?.map(|v| leader_node(&v));
    let rows: Vec<HostRow> = hosts
        .iter()
        .map(|h| HostRow { host: h, leader: leader.as_deref() == Some(h.info.name.as_str()) })
        .collect();
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        out!("{}", format_table(&rows));
    }
    Ok(())
}

fn or_dash(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

fn format_table(rows: &[HostRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let i = &r.host.info;
            vec![
                i.name.clone(),
                i.address.to_string(),
                if i.tags.is_empty() { "-".into() } else { i.tags.join(",") },
                or_dash(i.capacity.cpus.into()),
                or_dash(i.capacity.memory_mb),
                or_dash(i.capacity.instances.into()),
                i.overlay_subnet.map_or("-".into(), |n| n.to_string()),
                r.host.lease.map_or("-".into(), |l| l.to_string()),
                if r.leader { "*".into() } else { String::new() },
            ]
        })
        .collect();
    render(
        &[
            "HOST",
            "ADDRESS",
            "TAGS",
            "CPUS",
            "MEMORY_MB",
            "INSTANCES",
            "OVERLAY",
            "LEASE",
            "LEADER",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_values() {
        assert_eq!(leader_node(r#"{"node":"one","api":"127.0.0.1:7070"}"#), "one");
        assert_eq!(leader_node("plain"), "plain");
    }
}
