//! `viking vpc check|status|reload`: the VPC host filter (docs/vpc-rules.md).
use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use viking::{
    api::client::ApiClient,
    vpc::{
        compile::{compile, HostView},
        policy::parse_policy,
        status::{ReloadAnswer, ReloadRequest},
        VpcStatus,
    },
};

use super::table::render;

/// Checks the files; prints every error (one per line, to stderr) or the rules. Returns
/// whether all were good.
pub fn check(files: &[PathBuf], tags: &[String]) -> anyhow::Result<bool> {
    let mut parsed = Vec::new();
    let mut ok = true;
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{}: cannot read: {e}", path.display());
                ok = false;
                continue;
            }
        };
        match parse_policy(path, &text) {
            Ok(p) => parsed.push(p),
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if !ok {
        return Ok(false);
    }
    // Interfaces are checked on the host itself; here every name exists, and a file that
    // names none filters the host's cluster interface.
    const CLUSTER: &str = "(cluster interface)";
    let mut ifaces: BTreeMap<String, u32> = BTreeMap::from([(CLUSTER.to_owned(), 1)]);
    for p in &parsed {
        for name in p.interfaces.iter().flatten() {
            let n = ifaces.len() as u32 + 1;
            ifaces.entry(name.clone()).or_insert(n);
        }
    }
    let view = HostView { tags: tags.to_vec(), cluster_iface: Some(CLUSTER.into()), ifaces };
    let compiled = match compile(&parsed, &view, &BTreeMap::new()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return Ok(false);
        }
    };
    let rows: Vec<Vec<String>> = compiled
        .rules
        .iter()
        .map(|r| {
            vec![
                format!("{}:{}", r.file, r.line),
                r.interfaces.join(","),
                r.name.clone().unwrap_or_default(),
                r.description.clone(),
            ]
        })
        .collect();
    print!("{}", render(&["WHERE", "INTERFACE", "NAME", "RULE"], &rows));
    let defaults: Vec<String> =
        compiled.slots.iter().map(|s| format!("{}: default {}", s.iface, s.default)).collect();
    println!(
        "ok: {} files, {} rules here ({} for hosts with other tags); {}",
        parsed.len(),
        compiled.rules.len(),
        compiled.elsewhere,
        defaults.join(", ")
    );
    Ok(true)
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn ago(at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{} s ago", now.saturating_sub(at))
}

pub fn format_status(st: &VpcStatus) -> String {
    let mut out = String::new();
    if !st.enabled {
        out.push_str("no VPC filter: the agent runs without --vpc-rules\n");
        return out;
    }
    let dir = st.rules_dir.clone().unwrap_or_default();
    match &st.policy {
        Some(p) => {
            out.push_str(&format!(
                "policy from {dir}: {} (applied {}{}, {})\n",
                p.files.join(", "),
                ago(p.applied_at),
                if p.forced { ", FORCED over the lockout guard" } else { "" },
                p.fingerprint
            ));
            if p.elsewhere > 0 {
                out.push_str(&format!("({} rules apply to hosts with other tags)\n", p.elsewhere));
            }
        }
        None => out.push_str(&format!("no policy in force (folder {dir})\n")),
    }
    if let Some(e) = &st.error {
        out.push_str(&format!(
            "NOT APPLIED ({}, {}): {}\n",
            serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            ago(e.at),
            e.message
        ));
    }
    out.push('\n');
    let ifaces: Vec<Vec<String>> = st
        .interfaces
        .iter()
        .map(|i| {
            vec![i.name.clone(), i.ifindex.to_string(), i.attach.to_string(), i.default.to_string()]
        })
        .collect();
    out.push_str(&render(&["INTERFACE", "INDEX", "ATTACH", "DEFAULT"], &ifaces));
    out.push('\n');
    let rules: Vec<Vec<String>> = st
        .rules
        .iter()
        .map(|r| {
            let place = match &r.file {
                Some(f) => format!("{f}:{}", r.line),
                None => "built-in".into(),
            };
            let mut desc = r.description.clone();
            if let Some(n) = &r.name {
                desc = format!("{n}: {desc}");
            }
            vec![
                r.id.to_string(),
                place,
                r.pass_packets.to_string(),
                bytes(r.pass_bytes),
                r.drop_packets.to_string(),
                bytes(r.drop_bytes),
                desc,
            ]
        })
        .collect();
    out.push_str(&render(&["ID", "WHERE", "PASSED", "BYTES", "DROPPED", "BYTES", "RULE"], &rules));
    out.push('\n');
    let members: Vec<String> = st.members.iter().map(ToString::to_string).collect();
    out.push_str(&format!("members ({}): {}\n", members.len(), members.join(", ")));
    out.push_str(&format!("tracked connections: {}\n", st.connections));
    out
}

pub async fn status(client: &ApiClient, json: bool) -> anyhow::Result<()> {
    let st: VpcStatus = client.get("/v1/vpc").await?.context("the agent sent no VPC status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print!("{}", format_status(&st));
    }
    Ok(())
}

pub async fn reload(client: &ApiClient, force: bool) -> anyhow::Result<()> {
    let answer: ReloadAnswer = client
        .post("/v1/vpc/reload", &ReloadRequest { force })
        .await?
        .context("the agent sent no answer")?;
    println!("{}", answer.message);
    for o in &answer.offenders {
        println!("  forced over: {o}");
    }
    Ok(())
}
