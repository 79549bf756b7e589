//! The API server. Routes, bearer-token check, and forwarding of writes to the leader.
use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
    Json, Router,
};
use serde::Serialize;

use super::{DeployRequest, JobFile, JobRun, LeaderInfo};
use crate::{
    cluster::leader,
    deploy::JobRecord,
    stack::Stack,
    store::{Store, StoreHealth},
};

/// Set on a request a follower forwarded, so it is never forwarded twice.
const FORWARDED: &str = "x-viking-forwarded";
const MAX_BODY: usize = 8 << 20;

use super::state::Shared;
pub use super::state::{ApiError, ApiState};

/// The agent's API: the cluster's routes, then `local` (routes that answer for this node
/// itself, never forwarded to the leader: the host's VPC filter) behind the same token, every
/// error as JSON.
pub fn router<S: Store>(state: Shared<S>, local: Router) -> Router {
    let local = local.layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    let authed = Router::new()
        .route("/v1/deploy", post(deploy::<S>))
        .route("/v1/stacks", get(stacks::<S>))
        .route("/v1/stacks/{name}", delete(remove::<S>))
        .route("/v1/env/{stack}/{job}", get(env::<S>))
        .route("/v1/jobs/{stack}/{job}", get(job::<S>))
        .route("/v1/ps", get(ps::<S>))
        .route("/v1/config", get(config::<S>).post(apply::<S>))
        .route("/v1/status", get(super::status::status::<S>))
        .route("/v1/rollout/{stack}", get(super::rollout::rollout::<S>))
        .layer(middleware::from_fn_with_state(state.clone(), to_leader::<S>))
        .layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    // NB: a run writes nothing: any node places it, and it streams, so it is not forwarded
    // to the leader as a write is.
    let runs = Router::new()
        .route("/v1/run/{stack}/{job}", post(super::run::run::<S>))
        .layer(middleware::from_fn_with_state(state.clone(), auth::<S>));
    Router::new()
        .route("/v1/health", get(health::<S>))
        .route("/v1/ready", get(super::health::ready::<S>))
        .route("/metrics", get(super::health::metrics))
        .merge(authed)
        .merge(runs)
        .with_state(state)
        .merge(local)
        .layer(middleware::map_response(json_errors))
}

/// Every error answer is `{error}` JSON, also those axum makes itself (a body that does not
/// parse, an unknown route, a wrong method, a body too large), which are plain text.
async fn json_errors(res: Response) -> Response {
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return res;
    }
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    let mut out = ApiError(status, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().append(name, value.clone());
        }
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials of an `Authorization` header of the Bearer scheme (any case, RFC 7235),
/// trimmed; `None` for another scheme.
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let v = value.as_bytes().trim_ascii();
    let (scheme, rest) = match v.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&v[..i], &v[i..]),
        None => (v, &v[v.len()..]),
    };
    scheme.eq_ignore_ascii_case(b"bearer").then(|| rest.trim_ascii())
}

fn unauthorized(message: &str) -> Response {
    let mut res = ApiError(StatusCode::UNAUTHORIZED, message.into()).into_response();
    res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Only the exact token passes: one `Authorization` header, scheme Bearer, credentials equal
/// to the cluster's token (never empty: `token::ensure`).
async fn auth<S: Store>(State(st): State<Shared<S>>, req: Request, next: Next) -> Response {
    let mut headers = req.headers().get_all(header::AUTHORIZATION).iter();
    let (first, more) = (headers.next(), headers.next().is_some());
    match first.and_then(bearer) {
        _ if more => unauthorized("more than one Authorization header"),
        Some([]) => unauthorized("empty bearer token (Authorization: Bearer ...)"),
        Some(t) if !st.token.is_empty() && constant_time_eq(t, st.token.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => unauthorized("wrong bearer token"),
        None => unauthorized("missing bearer token (Authorization: Bearer ...)"),
    }
}

/// How long a write waits for a leader to be elected (an agent just started, a leader just
/// died) before the answer is 503.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Writes go to the leader: a follower forwards them once and relays the answer.
async fn to_leader<S: Store>(State(st): State<Shared<S>>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET {
        return next.run(req).await;
    }
    let forwarded = req.headers().contains_key(FORWARDED);
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    loop {
        if *st.leading.borrow() {
            return next.run(req).await;
        }
        if forwarded {
            return ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "forwarded to a node that no longer leads; try again".into(),
            )
            .into_response();
        }
        match leader_info(&st).await {
            Ok(Some(info)) if info.node != st.node => {
                return match forward(&st, &info, req).await {
                    Ok(r) => r,
                    Err(e) => e.into_response(),
                };
            }
            Ok(_) if tokio::time::Instant::now() < deadline => {}
            Ok(_) => {
                return ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no leader elected yet; try again".into(),
                )
                .into_response()
            }
            Err(e) => return e.into_response(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn leader_info<S: Store>(st: &ApiState<S>) -> Result<Option<LeaderInfo>, ApiError> {
    let value = leader::leader(&st.store)
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(value.as_deref().and_then(|v| serde_json::from_str(v).ok()))
}

async fn forward<S: Store>(
    st: &ApiState<S>,
    info: &LeaderInfo,
    req: Request,
) -> Result<Response, ApiError> {
    let unavailable = |m: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, m);
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let url = format!("{}{path}", info.url());
    tracing::debug!(leader = %info.node, %url, "forwarding a write to the leader");
    let mut out = st
        .http
        .request(parts.method.clone(), &url)
        .header(FORWARDED, &st.node)
        .body(bytes.to_vec());
    for name in ["authorization", "content-type"] {
        if let Some(v) = parts.headers.get(name) {
            out = out.header(name, v.clone());
        }
    }
    let answer = out
        .send()
        .await
        .map_err(|e| unavailable(format!("leader {} at {}: {e}", info.node, info.api)))?;
    let status = answer.status();
    let mut headers = HeaderMap::new();
    if let Some(ct) = answer.headers().get("content-type") {
        headers.insert("content-type", ct.clone());
    }
    let body = answer.bytes().await.map_err(|e| unavailable(e.to_string()))?;
    Ok((status, headers, Body::from(body)).into_response())
}

#[derive(Serialize)]
struct Health {
    node: String,
    leader: bool,
    store: StoreHealth,
}

/// 200 while the store works, 503 while it fails (the body says why either way).
async fn health<S: Store>(State(st): State<Shared<S>>) -> Response {
    let store = st.store_health.get();
    let status = if store.healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(Health { node: st.node.clone(), leader: *st.leading.borrow(), store }))
        .into_response()
}

async fn deploy<S: Store>(
    State(st): State<Shared<S>>,
    Json(req): Json<DeployRequest>,
) -> Result<Response, ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let mut stack = Stack::from_text(std::path::Path::new(&req.file), &req.text, &req.name)
        .map_err(|e| bad(e.to_string()))?;
    // Each `build:` context: decoded, named by its hash, the hash kept in the job's record.
    let mut contexts = crate::deploy::planner::Contexts::new();
    for pj in stack.jobs.iter_mut().filter(|pj| pj.job.build.is_some()) {
        let Some(b64) = req.contexts.get(&pj.job.name) else { continue };
        use base64::Engine as _;
        let tar = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| {
            bad(format!("{}: {}.build: the context is not base64: {e}", req.file, pj.job.name))
        })?;
        let hash = crate::deploy::context::hash(&tar);
        pj.job.build_hash = Some(hash.clone());
        contexts.insert(hash, tar);
    }
    let plan = st.deployer.deploy(&stack, &contexts, req.dry_run).await?;
    Ok(Json(plan).into_response())
}

async fn stacks<S: Store>(State(st): State<Shared<S>>) -> Result<Response, ApiError> {
    Ok(Json(st.deployer.stacks().await?).into_response())
}

#[derive(serde::Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    force: bool,
}

async fn remove<S: Store>(
    State(st): State<Shared<S>>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RemoveQuery>,
) -> Result<Response, ApiError> {
    st.deployer.remove(&name, q.force).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn env<S: Store>(
    State(st): State<Shared<S>>,
    Path((stack, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    Ok(Json(st.deployer.env(&stack, &job).await?).into_response())
}

async fn job<S: Store>(
    State(st): State<Shared<S>>,
    Path((stack, job)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (j, mut env) = st.deployer.job(&stack, &job).await?;
    env.extend(j.env.clone());
    Ok(Json(JobRun { stack, job: j, env }).into_response())
}

#[derive(serde::Deserialize)]
struct PsQuery {
    stack: Option<String>,
}

async fn ps<S: Store>(
    State(st): State<Shared<S>>,
    axum::extract::Query(q): axum::extract::Query<PsQuery>,
) -> Result<Response, ApiError> {
    let rows = crate::control::instances::ps(&st.store, q.stack.as_deref())
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(rows).into_response())
}

async fn config<S: Store>(State(st): State<Shared<S>>) -> Result<Response, ApiError> {
    let records = st.deployer.records().await?;
    let files: Vec<JobFile> =
        records.jobs.into_iter().map(|((stack, _), job)| JobFile { stack, job }).collect();
    Ok(Json(files).into_response())
}

async fn apply<S: Store>(
    State(st): State<Shared<S>>,
    Json(files): Json<Vec<JobFile>>,
) -> Result<Response, ApiError> {
    let records: Vec<JobRecord> = files
        .into_iter()
        .map(|f| JobRecord {
            key: crate::deploy::folder::job_key(&f.stack, &f.job.name),
            stack: f.stack,
            job: f.job,
        })
        .collect();
    Ok(Json(st.deployer.apply(&records).await?).into_response())
}
