//! `GET /api/marketplace/stats`: every figure is measured (the original faked them).

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::error::ErrorDoc;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

pub fn uptime_text(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

/// `stats` of [`Stats`] (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, ToSchema)]
pub struct Totals {
    pub active_api_keys: u64,
    /// Active keys per effective plan.
    pub plans_distribution: BTreeMap<String, u64>,
    pub total_api_keys: u64,
    /// Units the gateways reported, all time.
    pub total_api_requests: u64,
    pub total_users: u64,
}

/// `GET /api/marketplace/stats`.
#[derive(Serialize, ToSchema)]
pub struct Stats {
    /// `operational`.
    pub api_status: &'static str,
    pub stats: Totals,
    /// `sqlite` or `postgres`.
    pub storage: &'static str,
    /// Since this process started, e.g. `1h 2m 5s`.
    pub uptime: String,
    pub uptime_seconds: u64,
}

/// Measured totals: keys, active keys, requests, plan distribution, users, uptime.
#[utoipa::path(
    get,
    path = "/api/marketplace/stats",
    tag = "keys",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The totals", body = Stats),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn stats(_: ServiceAuth, State(state): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let s = state.store().key_stats(state.now()).await?;
    let uptime = state.started().elapsed().as_secs();
    Ok(Json(Stats {
        api_status: "operational",
        stats: Totals {
            active_api_keys: s.active_keys,
            plans_distribution: s.by_plan,
            total_api_keys: s.total_keys,
            total_api_requests: s.total_requests,
            total_users: s.users,
        },
        storage: state.store().kind(),
        uptime: uptime_text(uptime),
        uptime_seconds: uptime,
    }))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/marketplace/stats", get(stats))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(stats))]
pub struct Api;

#[cfg(test)]
mod tests {
    #[test]
    fn uptime() {
        assert_eq!(super::uptime_text(5), "5s");
        assert_eq!(super::uptime_text(3725), "1h 2m 5s");
        assert_eq!(super::uptime_text(90_061), "1d 1h 1m 1s");
    }
}
