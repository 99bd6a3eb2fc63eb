//! Operations endpoints: `/health` (the process answers), `/ready` (the database answers),
//! `/metrics` (Prometheus text) and `/openapi.json` (the whole HTTP contract).

use crate::app::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

async fn health() -> impl IntoResponse {
    Json(
        json!({"status": "ok", "service": "tollgate-backend", "version": env!("CARGO_PKG_VERSION")}),
    )
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "storage": state.store.kind()})),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"status": "unavailable", "detail": "storage is unavailable", "error": {"code": "store_unavailable", "message": "storage is unavailable"}}),
                ),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

async fn openapi() -> impl IntoResponse {
    Json(crate::openapi::document())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .merge(crate::stats::router())
}
