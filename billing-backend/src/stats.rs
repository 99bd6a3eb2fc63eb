//! `GET /api/marketplace/stats`: every figure is measured (the original faked them).

use crate::app::AppState;
use crate::auth::ServiceAuth;
use crate::error::ApiError;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

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

async fn stats(_: ServiceAuth, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let s = state.store.key_stats(state.now()).await?;
    let uptime = state.started.elapsed().as_secs();
    Ok(Json(json!({
        "stats": {
            "total_api_keys": s.total_keys,
            "active_api_keys": s.active_keys,
            "total_api_requests": s.total_requests,
            "plans_distribution": s.by_plan,
            "total_users": s.users,
        },
        "api_status": "operational",
        "uptime": uptime_text(uptime),
        "uptime_seconds": uptime,
        "storage": state.store.kind(),
    })))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/marketplace/stats", get(stats))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptime() {
        assert_eq!(super::uptime_text(5), "5s");
        assert_eq!(super::uptime_text(3725), "1h 2m 5s");
        assert_eq!(super::uptime_text(90_061), "1d 1h 1m 1s");
    }
}
