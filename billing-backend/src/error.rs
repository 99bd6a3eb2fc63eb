//! The backend's one client-facing error type. Every variant maps explicitly to a status, a
//! stable snake_case code and a message, and every error body is the same JSON:
//! `{"detail": message, "error": {"code": code, "message": message}}` (`detail` keeps the
//! original module's clients working). Internal errors are logged with context and shown
//! generically; a database or provider error text never reaches a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tollgate_protocol::error::ErrorBody;
use utoipa::ToSchema;

#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed JSON, wrong types, bad values; the message says which field and why.
    BadRequest { code: &'static str, message: String },
    /// 401: no credentials.
    Unauthorized(String),
    /// 403: wrong credentials.
    Forbidden(String),
    /// 402 `subscription_required`.
    PaymentRequired(String),
    /// 404: unknown id or route.
    NotFound { code: &'static str, message: String },
    /// 405.
    MethodNotAllowed,
    /// 409: `key_limit_reached`, idempotency conflicts, state conflicts.
    Conflict { code: &'static str, message: String },
    /// 413.
    PayloadTooLarge(usize),
    /// 503: a provider not configured, or the store unavailable.
    Unavailable { code: &'static str, message: String },
    /// 500: logged with context, shown generically.
    Internal(String),
}

impl ApiError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::NotFound {
            code,
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    pub fn internal(context: impl Into<String>) -> ApiError {
        ApiError::Internal(context.into())
    }

    pub fn parts(&self) -> (StatusCode, &str, String) {
        match self {
            ApiError::BadRequest { code, message } => {
                (StatusCode::BAD_REQUEST, code, message.clone())
            }
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, "unauthorized", m.clone()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone()),
            ApiError::PaymentRequired(m) => (
                StatusCode::PAYMENT_REQUIRED,
                "subscription_required",
                m.clone(),
            ),
            ApiError::NotFound { code, message } => (StatusCode::NOT_FOUND, code, message.clone()),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this path".into(),
            ),
            ApiError::Conflict { code, message } => (StatusCode::CONFLICT, code, message.clone()),
            ApiError::PayloadTooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body is larger than {limit} bytes"),
            ),
            ApiError::Unavailable { code, message } => {
                (StatusCode::SERVICE_UNAVAILABLE, code, message.clone())
            }
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; it has been logged".into(),
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (status, code, message) = self.parts();
        write!(f, "{status} {code}: {message}")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(context) = &self {
            tracing::error!(%context, "internal error");
        }
        let (status, code, message) = self.parts();
        json_error(status, code, message)
    }
}

/// The JSON error body (`detail`, `error.code`, `error.message`) with the given status.
pub fn json_error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorBody::new(code, message).to_json();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        use crate::store::StoreError;
        match e {
            StoreError::NotFound(what) => {
                ApiError::not_found("not_found", format!("{what} not found"))
            }
            StoreError::Conflict(what) => ApiError::conflict("conflict", what),
            StoreError::KeyLimit { max } => ApiError::conflict(
                "key_limit_reached",
                format!("this user already has {max} active keys, the most their plan allows"),
            ),
            StoreError::Unavailable(ctx) => {
                tracing::error!(context = %ctx, "store unavailable");
                ApiError::Unavailable {
                    code: "store_unavailable",
                    message: "storage is unavailable; retry later".into(),
                }
            }
            StoreError::Internal(ctx) => ApiError::Internal(ctx),
        }
    }
}

/// The JSON error body, as [`tollgate_protocol::error::ErrorBody`] puts it on the wire (the
/// protocol crate stays free of documentation dependencies; a test in `openapi.rs` checks
/// the two agree). The schema of every error answer in `/openapi.json`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub struct ErrorDoc {
    /// The human message again, for the original module's clients.
    pub detail: String,
    pub error: ErrorDetailDoc,
}

#[derive(Serialize, ToSchema)]
#[schema(as = ErrorDetail)]
pub struct ErrorDetailDoc {
    /// Stable snake_case code, e.g. `key_not_found`.
    pub code: String,
    pub message: String,
}
