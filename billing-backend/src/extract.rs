//! Request extractors and the JSON-error backstop.
//!
//! [`ValidatedJson`] parses a body of at most `max_body_bytes` with field-precise messages
//! ("plan: invalid type: integer `5`, expected a string"). [`json_errors`] turns any error
//! response that is not already JSON (a path or query rejection, an unknown route, a 405 from
//! the router) into the SPEC §9 body, so no client ever sees a plain-text error.

use crate::app::AppState;
use crate::error::{json_error, ApiError};
use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Deserialize;

pub struct ValidatedJson<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for ValidatedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.cfg.max_body_bytes;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        parse_json(&body).map(ValidatedJson)
    }
}

/// Parses JSON with a message naming the field that is wrong. Bodies are parsed directly; only
/// a body that fails is parsed again with path tracking, to name the field in the message.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad(
            "invalid_json",
            "request body is empty; expected a JSON object",
        ));
    }
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(de) {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let code = if inner.is_syntax() || inner.is_eof() {
                "invalid_json"
            } else {
                "invalid_body"
            };
            let msg = if path == "." || path.is_empty() {
                format!("{inner}")
            } else {
                format!("{path}: {inner}")
            };
            Err(ApiError::bad(code, msg))
        }
    }
}

/// Middleware: rewrites non-JSON error responses into the SPEC §9 JSON body.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    // The portal's HTML error pages are meant for people and stay as they are.
    let is_html = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_json || is_html {
        return resp;
    }
    let text = match axum::body::to_bytes(resp.into_body(), 16 * 1024).await {
        Ok(b) => String::from_utf8_lossy(&b).trim().to_string(),
        Err(_) => String::new(),
    };
    let (code, default_msg) = match status {
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed on this path"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "request body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid_body", "request body is not valid"),
        StatusCode::BAD_REQUEST => ("bad_request", "bad request"),
        s if s.is_server_error() => ("internal", "internal error; it has been logged"),
        _ => ("bad_request", "request refused"),
    };
    let message = if status.is_server_error() || text.is_empty() {
        default_msg.to_string()
    } else {
        text
    };
    json_error(status, code, message)
}

/// Fallback for unknown routes.
pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::not_found(
        "not_found",
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}
