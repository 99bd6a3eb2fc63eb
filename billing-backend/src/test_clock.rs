//! The end-to-end tests' clock hook, `POST /internal/test/clock`: moves the backend's clock
//! forward so tests reach grace periods, expiry and new UTC days without waiting. Compiled only
//! with the `test-clock` cargo feature (the workspace's test crates enable it), so release builds
//! do not route it; even then it answers 404 unless the process runs with
//! `TOLLGATE_TEST_CLOCK=1`.

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::extract::ValidatedJson;
use crate::keys::rfc3339;
use crate::state::AppState;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance_seconds: i64,
}

/// Moves the backend's clock forward; answers 404 unless `TOLLGATE_TEST_CLOCK=1`.
async fn advance_clock(
    _: ServiceAuth,
    State(state): State<AppState>,
    ValidatedJson(req): ValidatedJson<ClockRequest>,
) -> Result<Json<Value>, ApiError> {
    let Some(clock) = &state.test_clock() else {
        return Err(ApiError::not_found(
            "not_found",
            "no endpoint POST /internal/test/clock",
        ));
    };
    if !(0..=400 * 86_400).contains(&req.advance_seconds) {
        return Err(ApiError::bad(
            "invalid_body",
            "advance_seconds must be between 0 and 34560000",
        ));
    }
    clock.advance(req.advance_seconds);
    Ok(Json(json!({"now": rfc3339(state.now())})))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/internal/test/clock", post(advance_clock))
}
