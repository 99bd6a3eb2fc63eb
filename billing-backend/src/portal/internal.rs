//! In-process calls to the payment providers' own endpoints (`/billing/create`,
//! `/api/v1/billing/checkout`, `/billing/paypal/order`, `/billing/sepa/{id}/confirm|reject`).
//! The portal acts for the signed-in party with the service token, exactly as the operator's
//! backend would over HTTP, so the providers' validation, pricing and idempotency rules apply
//! unchanged and the portal needs no knowledge of their internals.

use crate::config::Secret;
use crate::state::AppState;
use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

/// A provider endpoint's refusal: its status and the code and message of its JSON error body.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

/// POSTs `body` to a provider endpoint and returns its JSON answer.
pub async fn post(
    state: &AppState,
    token: &Secret,
    path: &str,
    body: &Value,
) -> Result<Value, Refused> {
    let router = crate::billing::provider_router().with_state(state.clone());
    let req = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {}", token.expose()))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .map_err(|e| Refused {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal".into(),
            message: format!("building an internal request: {e}"),
        })?;
    let resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_success() {
        Ok(json)
    } else {
        Err(Refused {
            status,
            code: json["error"]["code"]
                .as_str()
                .unwrap_or("refused")
                .to_string(),
            message: json["error"]["message"]
                .as_str()
                .or_else(|| json["detail"].as_str())
                .unwrap_or("the payment provider refused the request")
                .to_string(),
        })
    }
}
