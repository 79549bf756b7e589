//! `viking status` (this host at a glance) and `viking deploy --wait` (a rollout followed
//! until done), through the API.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use viking::api::{
    client::{ApiClient, ClientError},
    rollout::{JobRollout, Rollout},
    status::AgentStatus,
};
use viking::metrics::NamesState;

use super::{progress::Live, table::render};

fn ago(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.1} s")
    } else if secs < 3600.0 {
        format!("{}m{:02}s", secs as u64 / 60, secs as u64 % 60)
    } else {
        format!("{}h{:02}m", secs as u64 / 3600, secs as u64 % 3600 / 60)
    }
}

pub fn format_status(s: &AgentStatus) -> String {
    let mut out = String::new();
    let scheme = if s.tls { "https" } else { "http" };
    out.push_str(&format!(
        "node       {} ({}, API {scheme}://{}), viking {}, up {}\n",
        s.node,
        s.address,
        s.api,
        s.version,
        ago(s.uptime_s as f64)
    ));
    let checks: Vec<String> = s
        .checks
        .iter()
        .map(|c| format!("{} {}: {}", if c.ok { "ok" } else { "NOT" }, c.name, c.detail))
        .collect();
    out.push_str(&format!("ready      {}\n", if s.ready { "yes" } else { "NO" }));
    for c in checks {
        out.push_str(&format!("             {c}\n"));
    }
    let leader = match &s.leader {
        Some(l) if s.leading => format!("{} (this host)", l.node),
        Some(l) => format!("{} ({})", l.node, l.url()),
        None => "none elected".into(),
    };
    out.push_str(&format!("leader     {leader}\n"));
    let st = &s.store;
    out.push_str(&format!(
        "store      {}: {}, {:.1} ms{}\n",
        st.store,
        if st.ok { "ok" } else { "UNREACHABLE" },
        st.latency_ms,
        match (&st.revision, &st.error) {
            (_, Some(e)) => format!(" ({e})"),
            (Some(r), None) => format!(", revision {r}"),
            _ => String::new(),
        }
    ));
    let d = &s.datapath;
    out.push_str(&format!(
        "datapath   {}/{} programs attached, {} services, {} backends, {} connections, {} refused{}\n",
        d.programs_attached,
        d.programs,
        d.services,
        d.backends,
        d.connections,
        d.refused,
        d.error.as_ref().map_or(String::new(), |e| format!(" (error: {e})"))
    ));
    if !d.maps.is_empty() {
        let maps: Vec<String> = d
            .maps
            .iter()
            .map(|m| {
                let pct = if m.capacity == 0 {
                    0.0
                } else {
                    m.entries as f64 * 100.0 / m.capacity as f64
                };
                format!("{} {}/{} ({pct:.1}%)", m.map, m.entries, m.capacity)
            })
            .collect();
        out.push_str(&format!("maps       {}\n", maps.join(", ")));
    }
    let y = &s.sync;
    out.push_str(&format!(
        "sync       {}\n",
        match (y.synced, y.last_sync_ago_s, y.last_lag_ms) {
            (false, _, _) => "first sync not done".to_owned(),
            (true, Some(a), Some(l)) =>
                format!("in step {} ago, last change took {l:.1} ms", ago(a)),
            (true, Some(a), None) => format!("in step {} ago", ago(a)),
            (true, None, _) => "in step".to_owned(),
        }
    ));
    let inst: Vec<String> = s.instances.iter().map(|(k, v)| format!("{k} {v}")).collect();
    out.push_str(&format!("instances  {}\n", inst.join(", ")));
    out.push_str(&format!(
        "names      {}\n",
        match &s.names {
            NamesState::Off => "off".to_owned(),
            NamesState::Serving(on) => format!("answering on {on}"),
            NamesState::Failed(why) => format!("FAILED: {why}"),
        }
    ));
    if !s.members.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    m.address.to_string(),
                    m.load.to_string(),
                    if m.tags.is_empty() { "-".into() } else { m.tags.join(",") },
                    if m.leader { "*".into() } else { String::new() },
                ]
            })
            .collect();
        out.push_str(&render(&["MEMBER", "ADDRESS", "LOAD", "TAGS", "LEADER"], &rows));
    }
    out
}

/// `viking status`: exit 1 when the agent is not ready.
pub async fn show(api: &ApiClient, json: bool) -> anyhow::Result<()> {
    let s: AgentStatus = api.get("/v1/status").await?.context("empty answer to status")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", format_status(&s));
    }
    if !s.ready {
        std::process::exit(1);
    }
    Ok(())
}

fn step(n: u32, of: u32) -> String {
    format!("{n}/{of}")
}

/// One line of the live view.
pub fn job_line(j: &JobRollout, width: usize) -> String {
    let opt = |v: Option<u32>| v.map_or("-".to_owned(), |n| step(n, j.desired));
    let state = if !j.failed.is_empty() {
        format!("FAILED {}", j.failed.join("; "))
    } else if j.done {
        "done".into()
    } else {
        "rolling out".into()
    };
    format!(
        "  {:<width$}  placed {:<7} started {:<7} registered {:<7} in datapath {:<7} {state}",
        j.job,
        step(j.placed, j.desired),
        step(j.started, j.desired),
        opt(j.registered),
        opt(j.in_datapath),
    )
}

fn lines(r: &Rollout) -> Vec<String> {
    let width = r.jobs.iter().map(|j| j.job.len()).max().unwrap_or(0);
    r.jobs.iter().map(|j| job_line(j, width)).collect()
}

/// `viking deploy --wait`: follows the rollout; the exit code: 0 every instance runs, 1 one
/// failed, 2 the timeout passed first.
pub async fn wait(api: &ApiClient, stack: &str, timeout_s: u64, json: bool) -> anyhow::Result<i32> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(timeout_s);
    let mut live = Live::new();
    eprintln!("waiting for stack {stack} to roll out (--timeout {timeout_s} s)");
    let mut last: Option<Rollout> = None;
    loop {
        match api.get::<Rollout>(&format!("/v1/rollout/{stack}")).await {
            Ok(Some(r)) => {
                live.show(&lines(&r));
                let (done, failed) = (r.done, r.failed);
                last = Some(r);
                if done || failed {
                    break;
                }
            }
            Ok(None) => anyhow::bail!("empty answer to /v1/rollout/{stack}"),
            // A leader change or an agent restart: try again until the deadline.
            Err(ClientError::Unreachable { detail, .. }) => live.show(&[format!("  ({detail})")]),
            Err(ClientError::Refused { status: 503, message }) => {
                live.show(&[format!("  ({message})")])
            }
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed().as_secs_f64();
    // NB: with --json stdout is for the rollout object alone.
    let say = |line: String| {
        if json {
            eprintln!("{line}")
        } else {
            println!("{line}")
        }
    };
    let code = match &last {
        Some(r) if r.done => {
            say(format!("stack {stack} rolled out in {took:.1} s: every instance runs"));
            0
        }
        Some(r) if r.failed => {
            say(format!("stack {stack} failed to roll out:"));
            for j in r.jobs.iter().filter(|j| !j.failed.is_empty()) {
                for f in &j.failed {
                    say(format!("  {}/{} {f}", stack, j.job));
                }
            }
            1
        }
        _ => {
            say(format!("stack {stack} not rolled out after {timeout_s} s"));
            2
        }
    };
    if json {
        if let Some(r) = &last {
            println!("{}", serde_json::to_string_pretty(r)?);
        }
    }
    Ok(code)
}
