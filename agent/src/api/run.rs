//! `viking run`: a job that runs to completion, placed by the scheduler like any instance
//! (with `--viking-host` and `--viking-filter`), with the CLI's stdin and stdout attached
//! across hosts, and its exit code as the CLI's.
//!
//! `POST /v1/run/{stack}/{job}?host=H&filter=T1,T2` with `Connection: upgrade, Upgrade:
//! viking-run`. The node that takes it picks the host (the scheduler, pure, over the live
//! hosts; nothing is written) and answers `101 Switching Protocols`; it runs the job itself
//! or relays the connection to the chosen host's API, which does. On the connection:
//!
//! - client -> server: the job's stdin, raw; the client shuts its side down at stdin's end;
//! - server -> client: frames `[kind u8][length u32 BE][payload]`: 1 stdout, 2 stderr,
//!   3 exit (payload: the code, i32 BE), 4 error (payload: a message; nothing ran or the run
//!   broke).
use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, Query, Request, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::state::{ApiError, ApiState, Runner};
use crate::{
    cluster::membership,
    control::scheduler::{schedule, Placement, SchedulerInput},
    runtime::{InstanceSpec, RunIo},
    store::{keys, Store},
};

/// The `Upgrade:` protocol of a run.
pub const PROTOCOL: &str = "viking-run";
/// Set on a run relayed to the host that runs it: the host it was placed on.
const PLACED_ON: &str = "x-viking-run-on";

pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const EXIT: u8 = 3;
pub const ERROR: u8 = 4;

/// Where the CLI wants it run.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RunQuery {
    /// `--viking-host`: this host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `--viking-filter`: host tags required, comma-separated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub filter: String,
}

/// One frame to the client.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// One frame from the server; `None` at the end of the stream.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > 16 << 20 {
        return Err(std::io::Error::other(format!("a frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

/// The answer that switches the connection to the run's stream.
fn switching() -> Response {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The host a run goes to: the scheduler's choice for one instance of `job` with the CLI's
/// host and tags, over the live hosts (fixed jobs return to where they ran).
async fn place<S: Store>(
    st: &ApiState<S>,
    stack: &str,
    job: &crate::stack::Job,
    q: &RunQuery,
) -> Result<(String, Option<String>), ApiError> {
    let unavailable = |e: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, e);
    let hosts: Vec<_> = membership::hosts(&st.store)
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .into_iter()
        .map(|h| h.info)
        .collect();
    let mut job = job.clone();
    job.scale = 1;
    if let Some(h) = &q.host {
        job.host = Some(h.clone());
    }
    job.filter
        .extend(q.filter.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned));
    let history = match st.store.get(&keys::history(stack, &job.name)).await {
        Ok(Some(kv)) => kv.text().map(|t| t.trim().to_owned()).ok(),
        Ok(None) => None,
        Err(e) => return Err(unavailable(e.to_string())),
    };
    let input = SchedulerInput {
        jobs: vec![(stack.to_owned(), job.clone())],
        load: hosts.iter().map(|h| (h.name.clone(), h.load)).collect(),
        history: history.into_iter().map(|h| ((stack.to_owned(), job.name.clone()), h)).collect(),
        hosts: hosts.clone(),
        current: BTreeMap::new(),
    };
    match schedule(&input).into_values().next() {
        Some(Placement::Host(h)) => {
            let api = hosts.iter().find(|x| x.name == h).and_then(|x| x.api.clone());
            Ok((h, api))
        }
        Some(Placement::Waiting(why)) => Err(ApiError(
            StatusCode::CONFLICT,
            format!("{stack}/{} cannot run now: {why}", job.name),
        )),
        None => Err(ApiError(StatusCode::CONFLICT, "no host".into())),
    }
}

/// `POST /v1/run/{stack}/{job}`.
pub async fn run<S: Store>(
    State(st): State<Arc<ApiState<S>>>,
    Path((stack, job_name)): Path<(String, String)>,
    Query(q): Query<RunQuery>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let (job, mut env) = st.deployer.job(&stack, &job_name).await?;
    if job.daemonize {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!(
                "{stack}/{job_name} is a daemon (it has ports or `daemonize: true`): it runs \
                 when deployed; `viking run` is for jobs that run to completion"
            ),
        ));
    }
    let placed = req.headers().get(PLACED_ON).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (host, api) = match placed {
        Some(h) if h == st.node => (h, None),
        Some(h) => {
            return Err(ApiError(
                StatusCode::MISDIRECTED_REQUEST,
                format!("a run placed on {h} reached {}", st.node),
            ))
        }
        None => place(&st, &stack, &job, &q).await?,
    };
    let upgrade = hyper::upgrade::on(&mut req);
    if host != st.node {
        let Some(api) = api else {
            return Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("host {host} does not say where its API is (an older agent?)"),
            ));
        };
        let upstream = relay(
            &st,
            &api,
            &host,
            req.uri().path_and_query().map_or("/", |p| p.as_str()),
            req.headers(),
        )
        .await?;
        tokio::spawn(async move {
            match upgrade.await {
                Ok(conn) => {
                    let mut down = TokioIo::new(conn);
                    let mut up = upstream;
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
                Err(e) => tracing::warn!(error = %e, "viking run: the client's upgrade failed"),
            }
        });
        return Ok(switching());
    }
    let Some(runner) = st.runner.clone() else {
        return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "this agent runs no jobs".into()));
    };
    env.extend(job.env.clone());
    env.insert("VIKING_HOST".into(), st.node.clone());
    let spec = InstanceSpec {
        stack: stack.clone(),
        job: job.name.clone(),
        index: 0,
        image: job.image.clone().or_else(|| {
            job.build_hash
                .as_deref()
                .map(|h| crate::deploy::context::image_tag(&stack, &job.name, h))
        }),
        command: job.command.clone(),
        env,
        ports: Vec::new(),
        volumes: job.volumes.clone(),
        daemonize: false,
        address: None,
        build: job.build_hash.clone(),
    };
    tokio::spawn(async move {
        match upgrade.await {
            Ok(conn) => serve(runner.as_ref(), spec, TokioIo::new(conn)).await,
            Err(e) => tracing::warn!(error = %e, "viking run: the client's upgrade failed"),
        }
    });
    Ok(switching())
}

/// Opens the run on the host it was placed on; the upgraded connection to it.
async fn relay<S: Store>(
    st: &ApiState<S>,
    api: &str,
    host: &str,
    path: &str,
    headers: &axum::http::HeaderMap,
) -> Result<reqwest::Upgraded, ApiError> {
    let unavailable = |m: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, m);
    // NB: agents of one cluster all serve TLS or none do.
    let scheme = if st.local.tls { "https" } else { "http" };
    let mut out = st
        .http
        .post(format!("{scheme}://{api}{path}"))
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, PROTOCOL)
        .header(PLACED_ON, host);
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        out = out.header(header::AUTHORIZATION, auth.clone());
    }
    let answer = out.send().await.map_err(|e| unavailable(format!("host {host} at {api}: {e}")))?;
    if answer.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = answer.status();
        let body = answer.json::<super::ApiErrorBody>().await.map(|b| b.error).unwrap_or_default();
        return Err(ApiError(status, format!("host {host}: {body}")));
    }
    answer.upgrade().await.map_err(|e| unavailable(format!("host {host}: {e}")))
}

/// Runs `spec` here with the connection as its streams.
async fn serve<C>(runner: &dyn Runner, spec: InstanceSpec, conn: C)
where
    C: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(conn);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let (out_w, out_r) = tokio::io::duplex(64 << 10);
    let (err_w, err_r) = tokio::io::duplex(64 << 10);
    let pump = |mut from: tokio::io::DuplexStream, kind: u8| {
        let wr = wr.clone();
        async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if write_frame(&mut *wr.lock().await, kind, &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let pumps = tokio::spawn(futures::future::join(pump(out_r, STDOUT), pump(err_r, STDERR)));
    let io = RunIo { stdin: Box::new(rd), stdout: Box::new(out_w), stderr: Box::new(err_w) };
    let name = spec.name();
    let result = runner.run(spec, io).await;
    let _ = pumps.await;
    let mut w = wr.lock().await;
    let sent = match result {
        Ok(code) => {
            tracing::info!(job = %name, code, "viking run ended");
            write_frame(&mut *w, EXIT, &code.to_be_bytes()).await
        }
        Err(e) => write_frame(&mut *w, ERROR, e.to_string().as_bytes()).await,
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "viking run: the client went away");
    }
    let _ = w.shutdown().await;
}
