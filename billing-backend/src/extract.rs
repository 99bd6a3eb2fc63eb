//! Request extractors and the JSON-error backstop.
//!
//! [`ValidatedJson`] parses a body of at most `max_body_bytes` with field-precise messages
//! ("plan: invalid type: integer `5`, expected a string"). [`IdempotencyKey`] is the one parser
//! of the `Idempotency-Key` header (the idempotency layer and the handlers that
//! derive provider-side keys from it both use it). [`json_errors`] turns any error response
//! that is not already JSON (a path or query rejection, an unknown route, a 405 from the
//! router) into the JSON error body, so no client ever sees a plain-text error.

use crate::error::{json_error, ApiError};
use axum::body::Body;
use axum::extract::{FromRequest, OptionalFromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// What [`ValidatedJson`] needs from the application state: `[backend] max_body_bytes`.
pub trait BodyLimit {
    fn max_body_bytes(&self) -> usize;
}

pub struct ValidatedJson<T>(pub T);

impl<T: DeserializeOwned + Send, S: BodyLimit + Sync> FromRequest<S> for ValidatedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = state.max_body_bytes();
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| ApiError::PayloadTooLarge(limit))?;
        parse_json(&body).map(ValidatedJson)
    }
}

/// A client's `Idempotency-Key`: 1-255 visible ASCII characters, parsed once at the edge.
///
/// Handlers take it as `Option<IdempotencyKey>` (absent header: `None`; a malformed one: 400
/// `invalid_idempotency_key`). Its `Debug` hides the value: the key is what unseals a stored
/// answer (see the idempotency layer), so it stays out of logs.
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(text: &str) -> Result<IdempotencyKey, ApiError> {
        if (1..=Self::MAX_LEN).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(IdempotencyKey(text.to_string()))
        } else {
            Err(Self::invalid())
        }
    }

    /// The key a request carries, if any. Several `Idempotency-Key` headers are refused:
    /// which one the client meant is a guess.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut values = headers.get_all("idempotency-key").iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::bad(
                "invalid_idempotency_key",
                "send one Idempotency-Key header, not several",
            ));
        }
        let text = first.to_str().map_err(|_| Self::invalid())?;
        Self::parse(text).map(Some)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn invalid() -> ApiError {
        ApiError::bad(
            "invalid_idempotency_key",
            "Idempotency-Key must be 1-255 visible ASCII characters",
        )
    }
}

impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdempotencyKey(..)")
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        // The idempotency layer has parsed it already on the endpoints it guards.
        if let Some(k) = parts.extensions.get::<IdempotencyKey>() {
            return Ok(Some(k.clone()));
        }
        Self::from_headers(&parts.headers)
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

/// Middleware: rewrites non-JSON error responses into the JSON error body (`detail`,
/// `error.code`, `error.message`) with the same status.
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
