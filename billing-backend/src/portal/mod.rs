//! The customer portal and pricing page: server-rendered HTML under `/portal/`, served by the
//! gateway like the other management paths.
//!
//! # Layout
//! - [`pricing`]: the public pricing page from the plan catalogue.
//! - [`session`]: hand-off tokens (signed, expiring, single use) and server-side sessions;
//!   [`csrf`]: form parsing and the CSRF check every form passes.
//! - [`dashboard`]: a customer's keys (create, rotate, revoke), usage charts ([`chart`]),
//!   quotas, subscription state and upgrades (Stripe Checkout, PayPal, SEPA with the EPC QR).
//! - [`operator`]: stats, keys by plan, payments, pending SEPA transfers (confirm / reject)
//!   and the last statement import, behind an operator hand-off.
//! - [`internal`]: in-process calls to the payment providers' endpoints.
//! - [`html`]: escaping, layout and [`html::PortalError`] (friendly HTML error pages).
//!
//! A customer arrives through a link the operator's backend minted with the service token
//! (`POST /portal/api/handoff`) → `GET /portal/login` checks it, opens a session, sets the cookie
//! and redirects to `/portal/dashboard` → every form posts back with the session's CSRF token.
//! Every portal response carries a strict Content-Security-Policy (scripts and styles only from
//! `/portal/assets/`, no inline code), `nosniff`, `frame-ancestors 'none'` and no referrer.
//!
//! Cookies get `Secure` when the portal is reached over HTTPS: `TOLLGATE_PORTAL_SECURE_COOKIE`
//! = `auto` (default: when `[backend] public_url` starts with `https://` or the request carries
//! `X-Forwarded-Proto: https` from the TLS-terminating proxy), `always` or `never`.

pub mod chart;
pub mod csrf;
pub mod dashboard;
pub mod html;
pub mod internal;
pub mod operator;
pub mod pricing;
pub mod session;

use crate::app::AppState;
use crate::auth::ServiceAuth;
use crate::config::Secret;
use crate::error::ApiError;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use html::PortalError;
use serde::Deserialize;
use serde_json::{json, Value};
use session::{HandoffError, Role, SessionView, Sessions};
use std::collections::HashMap;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// When the session cookie is marked `Secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSecure {
    Auto,
    Always,
    Never,
}

/// Portal state held in [`AppState`]: sessions and the service token the portal uses for its
/// in-process calls to the payment providers.
pub struct Portal {
    pub sessions: Sessions,
    token: Secret,
    secure: CookieSecure,
}

impl Portal {
    pub fn new(service_token: &Secret) -> Result<Portal, String> {
        let secure = match std::env::var("TOLLGATE_PORTAL_SECURE_COOKIE")
            .ok()
            .as_deref()
        {
            None | Some("") | Some("auto") => CookieSecure::Auto,
            Some("always") => CookieSecure::Always,
            Some("never") => CookieSecure::Never,
            Some(other) => {
                return Err(format!(
                    "TOLLGATE_PORTAL_SECURE_COOKIE: {other:?} must be auto, always or never"
                ))
            }
        };
        Ok(Portal {
            sessions: Sessions::new(service_token.expose()),
            token: service_token.clone(),
            secure,
        })
    }

    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Whether cookies set in answer to this request get `Secure`.
    pub fn secure_cookie(&self, state: &AppState, headers: &HeaderMap) -> bool {
        match self.secure {
            CookieSecure::Always => true,
            CookieSecure::Never => false,
            CookieSecure::Auto => {
                state
                    .cfg
                    .public_url
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
                    || forwarded_proto(headers).as_deref() == Some("https")
            }
        }
    }
}

fn forwarded_proto(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

/// The portal's public origin: `[backend] public_url`, else the request's (forwarded) host.
pub fn origin(state: &AppState, headers: &HeaderMap) -> Option<String> {
    if let Some(u) = &state.cfg.public_url {
        return Some(u.trim_end_matches('/').to_string());
    }
    let host = headers
        .get("x-forwarded-host")
        .or_else(|| headers.get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })?;
    let proto = match forwarded_proto(headers).as_deref() {
        Some("https") => "https",
        _ => "http",
    };
    Some(format!("{proto}://{host}"))
}

/// 303 See Other.
pub fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, location.to_string()),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// The live session of a request, if any.
fn current(parts_headers: &HeaderMap, state: &AppState) -> Option<SessionView> {
    let v = session::cookie_value(parts_headers)?;
    state.portal.sessions.get(&v, state.now())
}

fn signed_out(headers: &HeaderMap) -> PortalError {
    if session::cookie_value(headers).is_some() {
        PortalError::not_signed_in(
            "Your portal session has ended (it expired, or you signed out). Open the portal again \
             from the service you use to get a new sign-in link.",
        )
    } else {
        PortalError::not_signed_in(
            "You are not signed in. The portal is opened through a sign-in link from the service \
             you use; it keeps no passwords.",
        )
    }
}

/// Extractor: a signed-in customer.
pub struct Customer {
    pub session: SessionView,
    pub user_id: String,
}

impl FromRequestParts<AppState> for Customer {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let s = current(&parts.headers, state).ok_or_else(|| signed_out(&parts.headers))?;
        match &s.role {
            Role::Customer(u) => Ok(Customer {
                user_id: u.clone(),
                session: s,
            }),
            Role::Operator => Err(PortalError::new(
                StatusCode::FORBIDDEN,
                "Operator session",
                "You are signed in as the operator; customer pages need a customer's sign-in link.",
            )),
        }
    }
}

/// Extractor: a signed-in operator.
pub struct Operator {
    pub session: SessionView,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = PortalError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let s = current(&parts.headers, state).ok_or_else(|| signed_out(&parts.headers))?;
        match s.role {
            Role::Operator => Ok(Operator { session: s }),
            Role::Customer(_) => Err(PortalError::new(
                StatusCode::FORBIDDEN,
                "Operator only",
                "This page is for the operator. Operators sign in with a link minted by \
                 POST /portal/api/operator-handoff.",
            )),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffRequest {
    user_id: String,
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OperatorHandoffRequest {
    #[serde(default)]
    ttl_seconds: Option<i64>,
}

fn ttl(v: Option<i64>) -> Result<i64, ApiError> {
    let t = v.unwrap_or(session::HANDOFF_DEFAULT_TTL);
    if (1..=session::HANDOFF_MAX_TTL).contains(&t) {
        Ok(t)
    } else {
        Err(ApiError::bad(
            "invalid_body",
            format!(
                "ttl_seconds must be between 1 and {}",
                session::HANDOFF_MAX_TTL
            ),
        ))
    }
}

fn handoff_answer(state: &AppState, headers: &HeaderMap, role: &Role, ttl: i64) -> Json<Value> {
    let (token, exp) = state.portal.sessions.mint_handoff(role, state.now(), ttl);
    let path = format!("/portal/login?token={token}");
    let url = match origin(state, headers) {
        Some(o) => format!("{o}{path}"),
        None => path.clone(),
    };
    Json(json!({
        "url": url,
        "path": path,
        "expires_at": crate::keys::rfc3339(exp),
        "single_use": true,
    }))
}

/// `POST /portal/api/handoff` (service token): a sign-in link for one customer.
async fn handoff(
    _: ServiceAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    crate::extract::ValidatedJson(req): crate::extract::ValidatedJson<HandoffRequest>,
) -> Result<Json<Value>, ApiError> {
    crate::keys::valid_user_id(&req.user_id)?;
    let ttl = ttl(req.ttl_seconds)?;
    Ok(handoff_answer(
        &state,
        &headers,
        &Role::Customer(req.user_id),
        ttl,
    ))
}

/// `POST /portal/api/operator-handoff` (service token): a sign-in link for the operator view.
async fn operator_handoff(
    _: ServiceAuth,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: OperatorHandoffRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OperatorHandoffRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let ttl = ttl(req.ttl_seconds)?;
    Ok(handoff_answer(&state, &headers, &Role::Operator, ttl))
}

/// `GET /portal/login?token=...`: redeems a hand-off token, opens a session and redirects, so
/// the token is gone from the address bar.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PortalError> {
    let token = q.get("token").map(String::as_str).unwrap_or("");
    if token.is_empty() {
        return Err(PortalError::bad(
            "This sign-in link is incomplete: it has no token. Open the portal again from the \
             service you use.",
        ));
    }
    let now = state.now();
    let role = state.portal.sessions.redeem(token, now).map_err(|e| {
        let message = match e {
            HandoffError::Expired => {
                "This sign-in link has expired. Sign-in links work for a few minutes only; open \
                 the portal again from the service you use to get a new one."
            }
            HandoffError::Used => {
                "This sign-in link has already been used. Each link works once; open the portal \
                 again from the service you use to get a new one."
            }
            HandoffError::Invalid => {
                "This sign-in link is not valid (it is damaged or was not issued by this \
                 service). Open the portal again from the service you use."
            }
        };
        PortalError::new(
            StatusCode::UNAUTHORIZED,
            "Sign-in link not accepted",
            message,
        )
    })?;
    // A previous session in this browser ends here: one browser, one party.
    if let Some(old) = current(&headers, &state) {
        state.portal.sessions.close(&old.digest);
    }
    let target = match role {
        Role::Customer(_) => "/portal/dashboard",
        Role::Operator => "/portal/operator",
    };
    let (id, view) = state.portal.sessions.open(role, now);
    let secure = state.portal.secure_cookie(&state, &headers);
    let mut resp = see_other(target);
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, view.expires_at - now, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `POST /portal/logout`: ends the session (CSRF-checked) and clears the cookie.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    let s = current(&headers, &state).ok_or_else(|| signed_out(&headers))?;
    csrf::checked_form(&s, &body)?;
    state.portal.sessions.close(&s.digest);
    let mut resp = see_other("/portal/pricing?notice=signed_out");
    let secure = state.portal.secure_cookie(&state, &headers);
    if let Ok(v) = HeaderValue::from_str(&session::clear_cookie(secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

const CSS: &str = include_str!("assets/portal.css");
const JS: &str = include_str!("assets/portal.js");
const FAVICON: &str = include_str!("assets/favicon.svg");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every portal response.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { see_other("/portal/pricing") }))
        .route("/portal/", get(|| async { see_other("/portal/pricing") }))
        .route("/portal/pricing", get(pricing::page))
        .route("/portal/login", get(login))
        .route("/portal/logout", post(logout))
        .route("/portal/dashboard", get(dashboard::page))
        .route("/portal/keys", post(dashboard::create_key))
        .route("/portal/keys/{key_id}/rotate", post(dashboard::rotate_key))
        .route("/portal/keys/{key_id}/revoke", post(dashboard::revoke_key))
        .route("/portal/upgrade", post(dashboard::upgrade))
        .route(
            "/portal/payments/{payment_id}",
            get(dashboard::payment_page),
        )
        .route("/portal/operator", get(operator::page))
        .route(
            "/portal/operator/payments/{payment_id}/confirm",
            post(operator::confirm),
        )
        .route(
            "/portal/operator/payments/{payment_id}/reject",
            post(operator::reject),
        )
        .route("/portal/api/handoff", post(handoff))
        .route("/portal/api/operator-handoff", post(operator_handoff))
        .route(
            "/portal/assets/portal.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/portal/assets/portal.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/portal/assets/favicon.svg",
            get(|| async { asset("image/svg+xml", FAVICON) }),
        )
        .layer(axum::middleware::from_fn(security_headers))
}

/// Fixed messages for `?notice=` (the query names one; its text never reaches the page).
pub fn notice_text(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "revoked" => "The key was revoked. Gateways refuse it within a second.",
        "resubmitted" => {
            "That form was already submitted, so nothing was created again. A key's secret is \
             shown only once; rotate the key if you did not copy it."
        }
        "signed_out" => "You signed out.",
        "checkout_done" => {
            "Thank you. Your card payment is being confirmed; your plan changes as soon as it is."
        }
        "checkout_cancelled" => "The card payment was cancelled; nothing was charged.",
        "confirmed" => "The transfer was confirmed and the plan activated.",
        "rejected" => "The transfer was rejected.",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_fixed_texts() {
        assert!(notice_text(Some("revoked")).is_some());
        assert_eq!(notice_text(Some("<script>")), None);
        assert_eq!(notice_text(None), None);
    }
}
