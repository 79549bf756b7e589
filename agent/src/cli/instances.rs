//! `viking ps` (where every instance runs and what it is doing) and `viking run` (a
//! non-daemonized job with stdin and stdout attached).
use anyhow::{bail, Context as _};
use viking::{api::client::ApiClient, control::instances::PsRow};

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

/// Runs `STACK/JOB` where the scheduler places it (`host`, `filter` as seed 003's
/// `--viking-host` and `--viking-filter`), attached to this process's stdin, stdout and
/// stderr; returns the job's exit code.
pub async fn run(
    api: &ApiClient,
    target: &str,
    host: Option<&str>,
    filter: &[String],
) -> anyhow::Result<i32> {
    use tokio::io::AsyncWriteExt as _;
    use viking::api::run::{read_frame, RunQuery, ERROR, EXIT, PROTOCOL, STDERR, STDOUT};
    let Some((stack, job)) = target.split_once('/') else {
        bail!("{target:?}: expected STACK/JOB");
    };
    let q = RunQuery { host: host.map(str::to_owned), filter: filter.join(",") };
    let conn = api.upgrade(&format!("/v1/run/{stack}/{job}"), &q, PROTOCOL).await?;
    let (mut rd, mut wr) = tokio::io::split(conn);
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await;
        let _ = wr.shutdown().await;
    });
    let (mut out, mut err) = (tokio::io::stdout(), tokio::io::stderr());
    while let Some((kind, payload)) = read_frame(&mut rd).await.context("the run's stream")? {
        match kind {
            STDOUT => out.write_all(&payload).await?,
            STDERR => err.write_all(&payload).await?,
            EXIT => {
                out.flush().await?;
                let code: [u8; 4] = payload.as_slice().try_into().context("an exit frame")?;
                return Ok(i32::from_be_bytes(code));
            }
            ERROR => bail!("{target}: {}", String::from_utf8_lossy(&payload)),
            _ => {}
        }
    }
    bail!("{target}: the run's stream ended without an exit code")
}
