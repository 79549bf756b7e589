//! The filter's routes on the agent's API. They answer for this host only (a follower never
//! forwards them to the leader): `GET /v1/vpc` (status), `POST /v1/vpc/reload`.
use axum::{
    extract::State,
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};

use super::{
    run::VpcHandle,
    status::{ErrorKind, ReloadAnswer, ReloadRequest, VpcStatus},
};
use crate::api::ApiErrorBody;

type Shared = Option<VpcHandle>;

/// The routes; `None`: the agent runs without `--vpc-rules`.
pub fn router(vpc: Option<VpcHandle>) -> Router {
    Router::new()
        .route("/v1/vpc", get(status))
        .route("/v1/vpc/reload", post(reload))
        .with_state(vpc)
}

async fn status(State(vpc): State<Shared>) -> Json<VpcStatus> {
    Json(vpc.map(|v| v.status()).unwrap_or_default())
}

type Answer = Result<Json<ReloadAnswer>, (StatusCode, Json<ApiErrorBody>)>;

async fn reload(State(vpc): State<Shared>, Json(req): Json<ReloadRequest>) -> Answer {
    let Some(vpc) = vpc else {
        let error = "this agent runs without --vpc-rules: there is no VPC filter".to_owned();
        return Err((StatusCode::NOT_FOUND, Json(ApiErrorBody { error })));
    };
    let answer = vpc.reload(req.force).await;
    if answer.applied {
        return Ok(Json(answer));
    }
    let status = match answer.kind {
        Some(ErrorKind::Invalid) => StatusCode::BAD_REQUEST,
        Some(ErrorKind::Refused) => StatusCode::CONFLICT,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    Err((status, Json(ApiErrorBody { error: answer.message })))
}
