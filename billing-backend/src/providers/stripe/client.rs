//! A thin Stripe REST client: form-encoded bodies with bracket notation, `Stripe-Version`
//! pinned, an `Idempotency-Key` on every POST (derived by the caller from our own ids, so a
//! retry reuses it), and Stripe's error objects mapped to ours. The secret key is sent as a
//! sensitive header and never logged; Stripe's `Request-Id` is logged with every failure.

use super::wire::{self, ErrorBody, API_VERSION};
use crate::config::Secret;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::time::Duration;

/// Why a Stripe call failed, already sorted into what a client of ours should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeError {
    /// The card or payment was refused (402): `code` / `decline_code` from Stripe.
    Card {
        code: Option<String>,
        decline_code: Option<String>,
    },
    /// Stripe refused the request as invalid (400) or the object does not exist (404).
    Invalid {
        status: u16,
        code: Option<String>,
        param: Option<String>,
    },
    /// Same Idempotency-Key with other parameters, or a concurrent duplicate (409).
    Idempotency,
    /// Stripe rate limited us (429).
    RateLimited,
    /// Our key was refused (401/403): an operator problem, not the client's.
    Auth { status: u16 },
    /// Stripe failed (5xx), could not be reached, or answered something unreadable.
    Unavailable { detail: String },
}

impl StripeError {
    /// Whether retrying the same request later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StripeError::RateLimited | StripeError::Unavailable { .. }
        )
    }

    /// Status, stable code and a message safe to show a client (never Stripe's raw text,
    /// which may echo request data).
    pub fn public(&self) -> (StatusCode, &'static str, String) {
        match self {
            StripeError::Card { code, decline_code } => (
                StatusCode::PAYMENT_REQUIRED,
                "payment_failed",
                format!(
                    "the payment was declined{}{}",
                    code.as_deref()
                        .map(|c| format!(" ({c})"))
                        .unwrap_or_default(),
                    decline_code
                        .as_deref()
                        .map(|c| format!(", decline code {c}"))
                        .unwrap_or_default()
                ),
            ),
            StripeError::Invalid {
                status: 404,
                code,
                param,
            } => (
                StatusCode::NOT_FOUND,
                "stripe_resource_missing",
                format!(
                    "Stripe has no such object{}{}",
                    param
                        .as_deref()
                        .map(|p| format!(" (parameter {p})"))
                        .unwrap_or_default(),
                    code.as_deref()
                        .map(|c| format!(" [{c}]"))
                        .unwrap_or_default()
                ),
            ),
            StripeError::Invalid { code, param, .. } => (
                StatusCode::BAD_REQUEST,
                "stripe_invalid_request",
                format!(
                    "Stripe refused the request{}{}",
                    param
                        .as_deref()
                        .map(|p| format!(": parameter {p}"))
                        .unwrap_or_default(),
                    code.as_deref()
                        .map(|c| format!(" [{c}]"))
                        .unwrap_or_default()
                ),
            ),
            StripeError::Idempotency => (
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "Stripe saw this request's idempotency key with other parameters, or is still processing it".into(),
            ),
            StripeError::RateLimited => (
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_unavailable",
                "Stripe is rate limiting requests; retry later".into(),
            ),
            StripeError::Auth { .. } => (
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                "Stripe refused this server's credentials; the operator has been told in the logs".into(),
            ),
            StripeError::Unavailable { .. } => (
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                "Stripe could not be reached or failed; retry later".into(),
            ),
        }
    }
}

impl std::fmt::Display for StripeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StripeError::Unavailable { detail } => write!(f, "stripe unavailable: {detail}"),
            other => {
                let (s, c, m) = other.public();
                write!(f, "{s} {c}: {m}")
            }
        }
    }
}

/// Sorts an error response into a [`StripeError`] (pure, unit-tested).
pub fn classify(status: u16, body: &[u8]) -> StripeError {
    let e = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let kind = e.kind.as_deref().unwrap_or("");
    match (status, kind) {
        // localstripe reports declines as invalid_request_error with status 402.
        (402, _) | (_, "card_error") => StripeError::Card {
            code: e.code,
            decline_code: e.decline_code,
        },
        (_, "idempotency_error") | (409, _) => StripeError::Idempotency,
        (429, _) => StripeError::RateLimited,
        (401 | 403, _) => StripeError::Auth { status },
        (400 | 404, _) | (_, "invalid_request_error") if status < 500 => StripeError::Invalid {
            status: if status == 404 { 404 } else { 400 },
            code: e.code,
            param: e.param,
        },
        _ => StripeError::Unavailable {
            detail: format!("HTTP {status} ({kind})"),
        },
    }
}

#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: String,
    secret: Secret,
}

impl StripeClient {
    pub fn new(base: &str, secret: Secret) -> Result<StripeClient, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("STRIPE_API_BASE: cannot build an HTTP client: {e}"))?;
        Ok(StripeClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            secret,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let mut value = match reqwest::header::HeaderValue::from_str(&format!(
            "Bearer {}",
            self.secret.expose()
        )) {
            Ok(v) => v,
            Err(_) => reqwest::header::HeaderValue::from_static(""),
        };
        value.set_sensitive(true);
        req.header(reqwest::header::AUTHORIZATION, value)
            .header("Stripe-Version", API_VERSION)
    }

    /// `POST path` with `params` form-encoded and the given idempotency key.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        params: &Value,
        idempotency_key: &str,
    ) -> Result<T, StripeError> {
        let empty = Map::new();
        let pairs = wire::form_pairs(params.as_object().unwrap_or(&empty));
        let req = self
            .auth(self.http.post(format!("{}{path}", self.base)))
            .header("Idempotency-Key", idempotency_key)
            .form(&pairs);
        self.send("POST", path, req).await
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Value,
    ) -> Result<T, StripeError> {
        let empty = Map::new();
        let pairs = wire::form_pairs(query.as_object().unwrap_or(&empty));
        let req = self
            .auth(self.http.get(format!("{}{path}", self.base)))
            .query(&pairs);
        self.send("GET", path, req).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, StripeError> {
        let req = self.auth(self.http.delete(format!("{}{path}", self.base)));
        self.send("DELETE", path, req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, StripeError> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                // reqwest's error text names the URL but never headers, so no secret.
                tracing::warn!(method, path, error = %e, "stripe request failed");
                return Err(StripeError::Unavailable {
                    detail: if e.is_timeout() {
                        "timeout".into()
                    } else {
                        "connection failed".into()
                    },
                });
            }
        };
        let status = resp.status().as_u16();
        let request_id = resp
            .headers()
            .get("request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(method, path, status, request_id, error = %e, "stripe response body lost");
                return Err(StripeError::Unavailable {
                    detail: "response body lost".into(),
                });
            }
        };
        if (200..300).contains(&status) {
            return serde_json::from_slice::<T>(&body).map_err(|e| {
                tracing::warn!(method, path, status, request_id, error = %e, "unreadable stripe response");
                StripeError::Unavailable {
                    detail: "unreadable response".into(),
                }
            });
        }
        let err = classify(status, &body);
        match &err {
            StripeError::Auth { .. } => {
                tracing::error!(
                    method,
                    path,
                    status,
                    request_id,
                    "stripe refused our API key: check STRIPE_SECRET_KEY"
                )
            }
            e if e.is_transient() => {
                tracing::warn!(method, path, status, request_id, error = %e, "stripe unavailable")
            }
            e => {
                tracing::info!(method, path, status, request_id, error = %e, "stripe refused a request")
            }
        }
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let card = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds","message":"Your card has insufficient funds."}}"#;
        assert_eq!(
            classify(402, card),
            StripeError::Card {
                code: Some("card_declined".into()),
                decline_code: Some("insufficient_funds".into())
            }
        );
        // localstripe: a decline is invalid_request_error with status 402.
        let ls = br#"{"error":{"type":"invalid_request_error","code":"card_declined","message":"The card was declined"}}"#;
        assert!(matches!(classify(402, ls), StripeError::Card { .. }));
        let missing = br#"{"error":{"type":"invalid_request_error","code":"resource_missing","param":"customer","message":"No such customer: 'cus_x'"}}"#;
        assert_eq!(
            classify(404, missing),
            StripeError::Invalid {
                status: 404,
                code: Some("resource_missing".into()),
                param: Some("customer".into())
            }
        );
        assert!(matches!(
            classify(400, br#"{"error":{"type":"invalid_request_error"}}"#),
            StripeError::Invalid { status: 400, .. }
        ));
        assert_eq!(
            classify(400, br#"{"error":{"type":"idempotency_error"}}"#),
            StripeError::Idempotency
        );
        assert_eq!(classify(429, b"{}"), StripeError::RateLimited);
        assert_eq!(classify(401, b"{}"), StripeError::Auth { status: 401 });
        assert!(matches!(
            classify(500, br#"{"error":{"type":"api_error"}}"#),
            StripeError::Unavailable { .. }
        ));
        assert!(matches!(
            classify(502, b"<html>bad gateway</html>"),
            StripeError::Unavailable { .. }
        ));
    }

    #[test]
    fn public_messages_never_echo_stripe_text() {
        let e = classify(
            402,
            br#"{"error":{"type":"card_error","code":"card_declined","message":"secret sk_live_123 echoed"}}"#,
        );
        let (status, code, msg) = e.public();
        assert_eq!((status.as_u16(), code), (402, "payment_failed"));
        assert!(!msg.contains("sk_live"), "{msg}");
        let (status, code, _) = StripeError::RateLimited.public();
        assert_eq!((status.as_u16(), code), (503, "provider_unavailable"));
        let (status, code, _) = StripeError::Unavailable { detail: "x".into() }.public();
        assert_eq!((status.as_u16(), code), (502, "provider_unavailable"));
    }
}
