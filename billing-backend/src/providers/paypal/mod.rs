//! PayPal (REST): the configured account ([`PayPal`], from `PAYPAL_*`), its Orders v2 calls
//! with a cached access token, the objects we read ([`wire`]) and the offline check of webhook
//! signatures ([`webhook`]). The checkout flow and the webhook handler are `billing::paypal`.
//!
//! # Webhook verification: offline
//! We verify signatures ourselves (RSA-SHA256 over `transmission_id|time|webhook_id|crc32`,
//! key from PayPal's certificate, fetched only from https `*.paypal.com` and cached) rather
//! than calling `verify-webhook-signature`: no OAuth round trip to PayPal per event, so a slow
//! or rate-limited PayPal API does not turn into failed deliveries, and nothing the event
//! claims is sent back out. The certificate is authenticated by TLS to PayPal's own host.
//!
//! # Access token
//! Client-credentials tokens are cached until shortly before `expires_in`; one refresh runs
//! at a time (a tokio mutex around the refresh, readers take the cached value without
//! waiting). A 401 from PayPal mid-flow invalidates that token and retries the call once.
//!
//! Settings: `PAYPAL_CLIENT_ID`, `PAYPAL_SECRET`, `PAYPAL_BASE` (default sandbox),
//! `PAYPAL_WEBHOOK_ID`, `PAYPAL_RETURN_URL`, `PAYPAL_CANCEL_URL`.

pub mod webhook;
pub mod wire;

use crate::config::Secret;
use crate::error::ApiError;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::RwLock;
use std::time::{Duration, Instant};
use wire::{Capture, ErrorBody, Order};

pub const SANDBOX_BASE: &str = "https://api-m.sandbox.paypal.com";

/// The configured PayPal account: settings, HTTP client, token cache, certificate cache.
pub struct PayPal {
    base: String,
    client_id: String,
    secret: Secret,
    webhook_id: Option<String>,
    return_url: Option<String>,
    cancel_url: Option<String>,
    http: reqwest::Client,
    token: TokenCache,
    certs: webhook::CertSource,
}

#[derive(Clone)]
struct CachedToken {
    value: Secret,
    generation: u64,
    refresh_at: Instant,
}

/// The access token: readers take the cached one; one task at a time refreshes it.
#[derive(Default)]
struct TokenCache {
    current: RwLock<Option<CachedToken>>,
    /// Held only while fetching a new token; counts generations.
    refresh: tokio::sync::Mutex<u64>,
}

impl TokenCache {
    fn fresh(&self) -> Option<CachedToken> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|t| t.refresh_at > Instant::now())
            .cloned()
    }

    /// Forgets the token PayPal refused, unless a newer one replaced it already.
    fn invalidate(&self, generation: u64) {
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        if cur.as_ref().is_some_and(|t| t.generation == generation) {
            *cur = None;
        }
    }
}

/// A failed PayPal call. Never shown to clients as is.
#[derive(Debug)]
pub enum PayPalError {
    Unreachable(String),
    /// PayPal refused our client id and secret.
    Credentials(String),
    Api {
        status: u16,
        body: ErrorBody,
    },
    Decode(String),
}

impl PayPalError {
    pub fn status(&self) -> Option<u16> {
        match self {
            PayPalError::Api { status, .. } => Some(*status),
            PayPalError::Unreachable(_) | PayPalError::Credentials(_) | PayPalError::Decode(_) => {
                None
            }
        }
    }

    pub fn has_issue(&self, issue: &str) -> bool {
        match self {
            PayPalError::Api { body, .. } => body.has_issue(issue),
            PayPalError::Unreachable(_) | PayPalError::Credentials(_) | PayPalError::Decode(_) => {
                false
            }
        }
    }

    pub fn issue(&self) -> String {
        match self {
            PayPalError::Api { body, .. } => body.code(),
            PayPalError::Unreachable(_) | PayPalError::Credentials(_) | PayPalError::Decode(_) => {
                "UNKNOWN".into()
            }
        }
    }

    /// Logs the failure with context and turns it into a client error that reveals nothing.
    pub fn into_api(self, context: &str) -> ApiError {
        match self {
            PayPalError::Unreachable(e) => {
                tracing::warn!(%context, error = %e, "PayPal unreachable");
                ApiError::Unavailable {
                    code: "provider_unavailable",
                    message: "PayPal could not be reached; retry later".into(),
                }
            }
            PayPalError::Credentials(e) => {
                tracing::error!(%context, error = %e, "PayPal refused our credentials");
                ApiError::Unavailable {
                    code: "provider_unavailable",
                    message:
                        "PayPal refused this server's credentials (PAYPAL_CLIENT_ID, PAYPAL_SECRET)"
                            .into(),
                }
            }
            PayPalError::Api { status, body } => {
                tracing::warn!(%context, status, issue = %body.code(), debug_id = ?body.debug_id, "PayPal refused a request");
                ApiError::Unavailable {
                    code: "provider_error",
                    message: format!("PayPal refused the request ({})", body.code()),
                }
            }
            PayPalError::Decode(e) => {
                tracing::error!(%context, error = %e, "unexpected PayPal answer");
                ApiError::Unavailable {
                    code: "provider_error",
                    message: "PayPal sent an answer this server does not understand".into(),
                }
            }
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// An absolute http(s) URL; plain http only on loopback (tests, local fakes).
fn check_http_url(name: &str, value: &str, errors: &mut Vec<String>) {
    match reqwest::Url::parse(value) {
        Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
        Ok(u) if u.scheme() == "http" && webhook::is_loopback(&u) => {}
        Ok(_) => errors.push(format!(
            "{name}: {value:?} must be an https URL (http only on localhost)"
        )),
        Err(e) => errors.push(format!("{name}: {value:?} is not a URL ({e})")),
    }
}

impl PayPal {
    /// Reads the PayPal settings; `None` when PayPal is not configured.
    pub fn from_env() -> Result<Option<PayPal>, Vec<String>> {
        let id = env("PAYPAL_CLIENT_ID");
        let secret = env("PAYPAL_SECRET");
        let (client_id, secret) = match (id, secret) {
            (Some(i), Some(s)) => (i, Secret::new(s)),
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(vec![
                    "PAYPAL_SECRET: required when PAYPAL_CLIENT_ID is set".into()
                ])
            }
            (None, Some(_)) => {
                return Err(vec![
                    "PAYPAL_CLIENT_ID: required when PAYPAL_SECRET is set".into()
                ])
            }
        };
        let mut errors = Vec::new();
        let base = env("PAYPAL_BASE").unwrap_or_else(|| SANDBOX_BASE.to_string());
        check_http_url("PAYPAL_BASE", &base, &mut errors);
        let return_url = env("PAYPAL_RETURN_URL");
        if let Some(u) = &return_url {
            check_http_url("PAYPAL_RETURN_URL", u, &mut errors);
        }
        let cancel_url = env("PAYPAL_CANCEL_URL");
        if let Some(u) = &cancel_url {
            check_http_url("PAYPAL_CANCEL_URL", u, &mut errors);
        }
        let webhook_id = env("PAYPAL_WEBHOOK_ID");
        if webhook_id
            .as_ref()
            .is_some_and(|w| w.len() > 64 || w.contains('|') || w.chars().any(char::is_control))
        {
            errors.push(
                "PAYPAL_WEBHOOK_ID: must be PayPal's webhook id (at most 64 characters)".into(),
            );
        }
        let test_prefix = env("TOLLGATE_TEST_PAYPAL_CERT_PREFIX");
        if let Some(p) = &test_prefix {
            match reqwest::Url::parse(p) {
                Ok(u) if webhook::is_loopback(&u) => {
                    tracing::warn!(prefix = %p, "PayPal webhook certificates are also accepted from a loopback test prefix")
                }
                _ => errors.push(format!(
                    "TOLLGATE_TEST_PAYPAL_CERT_PREFIX: {p:?} must be a URL on localhost (tests only)"
                )),
            }
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| vec![format!("PayPal HTTP client: {e}")])?;
        let certs = webhook::CertSource::new(test_prefix).map_err(|e| vec![e])?;
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Some(PayPal {
            base: base.trim_end_matches('/').to_string(),
            client_id,
            secret,
            webhook_id,
            return_url,
            cancel_url,
            http,
            token: TokenCache::default(),
            certs,
        }))
    }

    /// `PAYPAL_WEBHOOK_ID`: webhooks are refused without it.
    pub fn webhook_id(&self) -> Option<&str> {
        self.webhook_id.as_deref()
    }

    /// The certificates webhook signatures are checked against.
    pub fn certs(&self) -> &webhook::CertSource {
        &self.certs
    }

    pub fn is_live(&self) -> bool {
        !self.base.contains("sandbox")
    }

    async fn token(&self) -> Result<CachedToken, PayPalError> {
        if let Some(t) = self.token.fresh() {
            return Ok(t);
        }
        let mut generation = self.token.refresh.lock().await;
        // Another task may have refreshed while this one waited.
        if let Some(t) = self.token.fresh() {
            return Ok(t);
        }
        let (value, expires_in) = self.fetch_token().await?;
        *generation += 1;
        let lifetime = Duration::from_secs(expires_in.min(86_400 * 30));
        // Refresh shortly before expiry: two minutes early, or halfway for short-lived tokens.
        let margin = (lifetime / 2).min(Duration::from_secs(120));
        let t = CachedToken {
            value,
            generation: *generation,
            refresh_at: Instant::now() + lifetime - margin,
        };
        *self
            .token
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(t.clone());
        Ok(t)
    }

    async fn fetch_token(&self) -> Result<(Secret, u64), PayPalError> {
        let resp = self
            .http
            .post(format!("{}/v1/oauth2/token", self.base))
            .basic_auth(&self.client_id, Some(self.secret.expose()))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body("grant_type=client_credentials")
            .send()
            .await
            .map_err(|e| PayPalError::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| PayPalError::Unreachable(e.to_string()))?;
        match status {
            200 => {
                let t: wire::TokenResponse = serde_json::from_slice(&body)
                    .map_err(|e| PayPalError::Decode(format!("token answer: {e}")))?;
                Ok((Secret::new(t.access_token), t.expires_in))
            }
            401 | 403 => Err(PayPalError::Credentials(format!(
                "token endpoint answered {status}"
            ))),
            _ => Err(PayPalError::Api {
                status,
                body: serde_json::from_slice(&body).unwrap_or_default(),
            }),
        }
    }

    /// One authenticated call; a 401 (token expired early) refreshes the token and retries once
    /// with the same `PayPal-Request-Id`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        request_id: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(u16, Bytes), PayPalError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token.value.expose())
                .header("Accept", "application/json")
                .header("Prefer", "return=representation");
            if let Some(id) = request_id {
                req = req.header("PayPal-Request-Id", id);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| PayPalError::Unreachable(e.to_string()))?;
            let status = resp.status().as_u16();
            let bytes = resp
                .bytes()
                .await
                .map_err(|e| PayPalError::Unreachable(e.to_string()))?;
            if status == 401 && attempt == 0 {
                tracing::info!(%path, "PayPal refused the cached access token; refreshing it once");
                self.token.invalidate(token.generation);
                continue;
            }
            if status == 401 {
                return Err(PayPalError::Credentials(
                    "PayPal refused a freshly issued access token".into(),
                ));
            }
            return Ok((status, bytes));
        }
        Err(PayPalError::Credentials("no usable access token".into()))
    }

    async fn call_json<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        request_id: Option<&str>,
        body: Option<&Value>,
    ) -> Result<T, PayPalError> {
        let (status, bytes) = self.call(method, path, request_id, body).await?;
        if (200..300).contains(&status) {
            serde_json::from_slice(&bytes).map_err(|e| PayPalError::Decode(format!("{path}: {e}")))
        } else {
            Err(PayPalError::Api {
                status,
                body: serde_json::from_slice(&bytes).unwrap_or_default(),
            })
        }
    }

    pub async fn create_order(
        &self,
        order: &wire::CreateOrder,
        request_id: &str,
    ) -> Result<Order, PayPalError> {
        let body = serde_json::to_value(order).map_err(|e| PayPalError::Decode(e.to_string()))?;
        self.call_json(
            reqwest::Method::POST,
            "/v2/checkout/orders",
            Some(request_id),
            Some(&body),
        )
        .await
    }

    pub async fn get_order(&self, order_id: &str) -> Result<Order, PayPalError> {
        self.call_json(
            reqwest::Method::GET,
            &format!("/v2/checkout/orders/{order_id}"),
            None,
            None,
        )
        .await
    }

    pub async fn capture_order(
        &self,
        order_id: &str,
        request_id: &str,
    ) -> Result<Order, PayPalError> {
        self.call_json(
            reqwest::Method::POST,
            &format!("/v2/checkout/orders/{order_id}/capture"),
            Some(request_id),
            Some(&json!({})),
        )
        .await
    }

    pub async fn get_capture(&self, capture_id: &str) -> Result<Capture, PayPalError> {
        self.call_json(
            reqwest::Method::GET,
            &format!("/v2/payments/captures/{capture_id}"),
            None,
            None,
        )
        .await
    }

    /// Where PayPal sends the buyer back: `PAYPAL_RETURN_URL` / `PAYPAL_CANCEL_URL`, else the
    /// backend's pages under `origin` (the same origin as every other link the backend
    /// builds, never taken from the request).
    pub fn urls(&self, origin: &str) -> (String, String) {
        let root = origin;
        (
            self.return_url
                .clone()
                .unwrap_or_else(|| format!("{root}/billing/paypal/return")),
            self.cancel_url
                .clone()
                .unwrap_or_else(|| format!("{root}/billing/paypal/cancel")),
        )
    }
}
