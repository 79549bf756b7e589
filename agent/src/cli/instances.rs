//! `viking ps` (where every instance runs and what it is doing) and `viking run` (a
//! non-daemonized job with stdin and stdout attached).
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use viking::{
    api::{client::ApiClient, JobRun},
    control::instances::PsRow,
    runtime::{exec::ExecRuntime, InstanceSpec, Runtime as _, RuntimeConfig},
};

use super::{
    out::{out, outln},
    table::render,
};

pub async fn ps(api: &ApiClient, stack: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match stack {
        Some(s) => format!("/v1/ps?stack={s}"),
        None => "/v1/ps".to_owned(),
    };
    let rows: Vec<PsRow> = api.get(&path).await?.unwrap_or_default();
    if json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    out!("{}", format_ps(&rows));
    Ok(())
}

pub fn format_ps(rows: &[PsRow]) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|(p, h)| if p.port == *h { p.to_string() } else { format!("{h}->{p}") })
                .collect();
            let state = if r.detail.is_empty() {
                r.state.clone()
            } else {
                format!("{} ({})", r.state, r.detail)
            };
            vec![
                format!("{}/{}", r.stack, r.job),
                r.index.to_string(),
                if r.host.is_empty() { "-".into() } else { r.host.clone() },
                state,
                r.address.map_or_else(|| "-".into(), |a| a.to_string()),
                ports.join(","),
                r.restarts.to_string(),
            ]
        })
        .collect();
    render(&["JOB", "#", "HOST", "STATE", "ADDRESS", "PORTS", "RESTARTS"], &table)
}

/// Runs `STACK/JOB` here, attached, with the env it gets when scheduled; exits with its code.
pub async fn run(api: &ApiClient, target: &str, cgroup: PathBuf) -> anyhow::Result<i32> {
    let Some((stack, job)) = target.split_once('/') else {
        bail!("{target:?}: expected STACK/JOB");
    };
    let r: JobRun = api
        .get(&format!("/v1/jobs/{stack}/{job}"))
        .await?
        .with_context(|| format!("stack {stack} has no job {job}"))?;
    if r.job.daemonize {
        bail!(
            "{stack}/{job} is a daemon (it has ports or `daemonize: true`): it runs when \
             deployed; `viking run` is for jobs that run to completion"
        );
    }
    let dir = std::env::temp_dir().join(format!("viking-run-{}", std::process::id()));
    let runtime = ExecRuntime::new(
        RuntimeConfig {
            node: "run".into(),
            data_dir: dir.clone(),
            cgroup,
            host_address: std::net::IpAddr::from([127, 0, 0, 1]),
            host_netns: None,
        },
        &dir,
    )?;
    let spec = InstanceSpec {
        stack: r.stack,
        job: r.job.name.clone(),
        index: 0,
        image: r.job.image.clone(),
        command: r.job.command.clone(),
        env: r.env,
        ports: Vec::new(),
        volumes: r.job.volumes.clone(),
        daemonize: false,
        address: None,
    };
    let code = runtime.run_attached(&spec).await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(code?)
}
