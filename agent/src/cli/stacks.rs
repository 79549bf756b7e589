//! `viking deploy`, `rm`, `stacks`, `env`, `config export|apply`: through the API.
use std::path::Path;

use anyhow::{bail, Context as _};
use viking::{
    api::{client::ApiClient, DeployRequest, JobFile},
    deploy::{folder, StackSummary},
    stack::{plan::Plan, Stack, STACK_FILES},
};

use super::{
    out::{out, outln},
    table::render,
};

pub async fn deploy(
    api: &ApiClient,
    path: &Path,
    name: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<String> {
    // Parsed here first, so a bad file is reported before anything is sent.
    let stack = Stack::load(path, name)?;
    let file = if path.is_dir() {
        STACK_FILES
            .iter()
            .map(|f| path.join(f))
            .find(|f| f.is_file())
            .unwrap_or_else(|| path.to_owned())
    } else {
        path.to_owned()
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    // Each `build:` context folder (beside the stack file) is packed and sent with it.
    let base = file.parent().unwrap_or(Path::new("."));
    let mut contexts = std::collections::BTreeMap::new();
    for pj in stack.jobs.iter() {
        if let Some(dir) = &pj.job.build {
            use base64::Engine as _;
            let tar = viking::deploy::context::pack(&base.join(dir), &pj.job.name)?;
            contexts
                .insert(pj.job.name.clone(), base64::engine::general_purpose::STANDARD.encode(tar));
        }
    }
    let req = DeployRequest {
        name: stack.name.clone(),
        file: file.display().to_string(),
        text,
        dry_run,
        contexts,
    };
    let plan: Plan = api.post("/v1/deploy", &req).await?.context("empty answer to deploy")?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        out!("{}", format_plan(&plan, dry_run));
    }
    Ok(stack.name)
}

pub fn format_plan(plan: &Plan, dry_run: bool) -> String {
    let mut out = String::new();
    let verb = if dry_run { "would deploy" } else { "deployed" };
    out.push_str(&format!(
        "stack {} {verb}: {} jobs, in this order\n\n",
        plan.stack,
        plan.jobs.len()
    ));
    let rows: Vec<Vec<String>> = plan
        .jobs
        .iter()
        .enumerate()
        .map(|(i, pj)| {
            let ports: Vec<String> = pj.job.ports.iter().map(ToString::to_string).collect();
            let links: Vec<String> = pj.job.links.iter().map(ToString::to_string).collect();
            vec![
                (i + 1).to_string(),
                pj.job.name.clone(),
                pj.job.scale.to_string(),
                ports.join(","),
                links.join(","),
            ]
        })
        .collect();
    out.push_str(&render(&["#", "JOB", "SCALE", "PORTS", "LINKS"], &rows));
    if !plan.ports.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = plan
            .ports
            .iter()
            .map(|p| vec![p.service.clone(), p.port.to_string(), p.ambassador_port.to_string()])
            .collect();
        out.push_str(&render(&["SERVICE", "PORT", "AMBASSADOR PORT"], &rows));
    }
    for pj in &plan.jobs {
        if pj.link_env.is_empty() {
            continue;
        }
        out.push_str(&format!("\n{} gets:\n", pj.job.name));
        for (k, v) in &pj.link_env {
            out.push_str(&format!("  {k}={v}\n"));
        }
    }
    if dry_run && !plan.ports.is_empty() {
        out.push_str(
            "\ndry run: nothing was stored; ports not yet allocated are the ones a deploy would \
             take now\n",
        );
    }
    for w in &plan.warnings {
        out.push_str(&format!("\nwarning: {w}\n"));
    }
    out
}

pub async fn remove(api: &ApiClient, stack: &str, force: bool) -> anyhow::Result<()> {
    let query = if force { "?force=true" } else { "" };
    api.delete(&format!("/v1/stacks/{stack}{query}")).await?;
    outln!("stack {stack} removed");
    Ok(())
}

pub async fn list(api: &ApiClient, json: bool) -> anyhow::Result<()> {
    let stacks: Vec<StackSummary> = api.get("/v1/stacks").await?.unwrap_or_default();
    if json {
        outln!("{}", serde_json::to_string_pretty(&stacks)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = stacks
        .iter()
        .map(|s| {
            let state = if s.problems.is_empty() {
                "ok".into()
            } else {
                format!("{} problem(s)", s.problems.len())
            };
            vec![s.name.clone(), s.jobs.join(","), s.instances.to_string(), state]
        })
        .collect();
    out!("{}", render(&["STACK", "JOBS", "INSTANCES", "STATE"], &rows));
    for s in stacks.iter().filter(|s| !s.problems.is_empty()) {
        outln!("\n{}:", s.name);
        for p in &s.problems {
            outln!("  {p}");
        }
    }
    Ok(())
}

pub async fn env(api: &ApiClient, target: &str, json: bool) -> anyhow::Result<()> {
    let Some((stack, job)) = target.split_once('/') else {
        bail!("{target:?}: expected STACK/JOB");
    };
    let env: std::collections::BTreeMap<String, String> =
        api.get(&format!("/v1/env/{stack}/{job}")).await?.unwrap_or_default();
    if json {
        outln!("{}", serde_json::to_string_pretty(&env)?);
    } else {
        for (k, v) in env {
            outln!("{k}={v}");
        }
    }
    Ok(())
}

pub async fn export(api: &ApiClient, dir: &Path) -> anyhow::Result<()> {
    let files: Vec<JobFile> = api.get("/v1/config").await?.unwrap_or_default();
    let mut jobs = folder::DeployedJobs::default();
    for f in files {
        jobs.jobs.insert((f.stack, f.job.name.clone()), f.job);
    }
    let written =
        folder::export(&jobs, dir).with_context(|| format!("writing to {}", dir.display()))?;
    outln!("{} job files written under {}", written.len(), dir.display());
    Ok(())
}

pub async fn apply(api: &ApiClient, dir: &Path) -> anyhow::Result<()> {
    let records = folder::import(dir)?;
    let files: Vec<JobFile> =
        records.into_iter().map(|r| JobFile { stack: r.stack, job: r.job }).collect();
    let n: usize = api.post("/v1/config", &files).await?.unwrap_or_default();
    outln!("{n} job files applied");
    Ok(())
}
