//! Operations endpoints: `/health` (the process answers), `/ready` (the database answers) and
//! `/metrics` (Prometheus text); `/openapi.json` is served by `openapi.rs`.

use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

/// `GET /health` (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `tollgate-backend`.
    pub service: &'static str,
    /// `ok`.
    pub status: &'static str,
    pub version: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process runs", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health {
        service: "tollgate-backend",
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// `GET /ready` when the database answers.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: &'static str,
    /// `sqlite` or `postgres`.
    pub storage: &'static str,
}

/// `GET /ready` when it does not: the fields of every error body (`detail` and `error` with
/// `code` and `message`) plus `status`.
#[derive(Serialize, ToSchema)]
pub struct NotReady {
    pub detail: &'static str,
    pub error: crate::error::ErrorDetailDoc,
    /// `unavailable`.
    pub status: &'static str,
}

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "`store_unavailable`", body = NotReady),
    )
)]
async fn ready(State(state): State<AppState>) -> axum::response::Response {
    match state.store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(Ready {
                status: "ready",
                storage: state.store().kind(),
            }),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            let message = "storage is unavailable";
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(NotReady {
                    detail: message,
                    error: crate::error::ErrorDetailDoc {
                        code: "store_unavailable".into(),
                        message: message.into(),
                    },
                    status: "unavailable",
                }),
            )
                .into_response()
        }
    }
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "The metrics", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state
        .metrics()
        .render_standalone(state.store().as_ref(), state.now())
        .await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(health, ready, metrics))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .merge(crate::stats::router())
}
