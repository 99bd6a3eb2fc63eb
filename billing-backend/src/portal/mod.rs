//! The customer portal and pricing page: server-rendered HTML under `/portal/`, served by the
//! gateway like the other management paths.
//!
//! # Layout
//! - [`pricing`]: the public pricing page from the plan catalogue.
//! - [`crate::session`]: hand-off tokens (signed, expiring, single use) and server-side
//!   sessions; [`csrf`]: form parsing and the CSRF check every form passes.
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
//!
//! Absolute links (the hand-off `url`, payment return pages) are built on
//! [`AppState::origin`]: `[backend] public_url`, else the listen address that serves the portal,
//! never the request's `Host`.

pub mod chart;
pub mod csrf;
pub mod dashboard;
pub mod html;
pub mod internal;
pub mod operator;
pub mod pricing;

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::session::{self, HandoffError, Role, SessionView};
use crate::state::AppState;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use html::PortalError;
use serde::Deserialize;
use std::collections::HashMap;

pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

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
    state.portal().sessions.get(&v, state.now())
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct HandoffRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    user_id: String,
    /// 1-3600 seconds, default 300.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    ttl_seconds: Option<i64>,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OperatorHandoffRequest {
    /// 1-3600 seconds, default 300.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    ttl_seconds: Option<i64>,
}

/// The form fields of the portal's forms, for the document (the forms are parsed by
/// [`csrf::checked_form`]): every form carries the session's CSRF token.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct CsrfForm {
    csrf: String,
}

/// Creating or rotating a key.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct KeyForm {
    csrf: String,
    /// Single use: a resubmitted form creates nothing again.
    nonce: String,
    /// The new key's name (create only).
    name: Option<String>,
}

/// Starting an upgrade.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct UpgradeForm {
    csrf: String,
    /// A paid plan.
    plan: String,
    /// `monthly` (default) or `yearly`.
    cycle: Option<String>,
    /// `stripe`, `paypal` or `sepa`.
    provider: String,
}

/// A single-use sign-in link (fields in alphabetical order, as the `json!` map this replaced).
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Handoff {
    /// RFC 3339.
    expires_at: String,
    /// `/portal/login?token=...`.
    path: String,
    single_use: bool,
    /// The path on `[backend] public_url` (else the listen address).
    url: String,
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

fn handoff_answer(state: &AppState, role: &Role, ttl: i64) -> Json<Handoff> {
    let (token, exp) = state.portal().sessions.mint_handoff(role, state.now(), ttl);
    let path = format!("/portal/login?token={token}");
    let url = format!("{}{path}", state.origin());
    Json(Handoff {
        expires_at: crate::keys::rfc3339(exp),
        path,
        single_use: true,
        url,
    })
}

/// `POST /portal/api/handoff` (service token): a sign-in link for one customer.
#[utoipa::path(
    post,
    path = "/portal/api/handoff",
    tag = "portal-links",
    security(("serviceToken" = [])),
    request_body = HandoffRequest,
    responses(
        (status = 200, description = "The link", body = Handoff),
        (status = 400, description = "`invalid_json`, `invalid_body` (ttl_seconds out of range), `invalid_user_id`", body = crate::error::ErrorDoc),
    )
)]
async fn handoff(
    _: ServiceAuth,
    State(state): State<AppState>,
    crate::extract::ValidatedJson(req): crate::extract::ValidatedJson<HandoffRequest>,
) -> Result<Json<Handoff>, ApiError> {
    crate::keys::valid_user_id(&req.user_id)?;
    let ttl = ttl(req.ttl_seconds)?;
    Ok(handoff_answer(&state, &Role::Customer(req.user_id), ttl))
}

/// `POST /portal/api/operator-handoff` (service token): a sign-in link for the operator view.
#[utoipa::path(
    post,
    path = "/portal/api/operator-handoff",
    tag = "portal-links",
    security(("serviceToken" = [])),
    request_body(content = Option<OperatorHandoffRequest>, description = "Optional"),
    responses(
        (status = 200, description = "The link", body = Handoff),
        (status = 400, description = "`invalid_json`, `invalid_body` (ttl_seconds out of range)", body = crate::error::ErrorDoc),
    )
)]
async fn operator_handoff(
    _: ServiceAuth,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Handoff>, ApiError> {
    let req: OperatorHandoffRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OperatorHandoffRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let ttl = ttl(req.ttl_seconds)?;
    Ok(handoff_answer(&state, &Role::Operator, ttl))
}

/// `GET /portal/login?token=...`: redeems a hand-off token, opens a session and redirects, so
/// the token is gone from the address bar.
#[utoipa::path(
    get,
    path = "/portal/login",
    tag = "portal",
    params(("token" = Option<String>, Query, description = "The single-use hand-off token")),
    responses((status = 303, description = "Signed in: the session cookie is set, on to the dashboard (or the operator view)"))
)]
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
    let role = state.portal().sessions.redeem(token, now).map_err(|e| {
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
        state.portal().sessions.close(&old.digest);
    }
    let target = match role {
        Role::Customer(_) => "/portal/dashboard",
        Role::Operator => "/portal/operator",
    };
    let (id, view) = state.portal().sessions.open(role, now);
    let secure = state
        .portal()
        .secure_cookie(state.cfg().public_url.as_deref(), &headers);
    let mut resp = see_other(target);
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(&id, view.expires_at - now, secure)) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(resp)
}

/// `POST /portal/logout`: ends the session (CSRF-checked) and clears the cookie.
#[utoipa::path(
    post,
    path = "/portal/logout",
    tag = "portal",
    security(("portalSession" = [])),
    request_body(content = CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Signed out: the cookie is cleared, on to the pricing page"))
)]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    let s = current(&headers, &state).ok_or_else(|| signed_out(&headers))?;
    csrf::checked_form(&s, &body)?;
    state.portal().sessions.close(&s.digest);
    let mut resp = see_other("/portal/pricing?notice=signed_out");
    let secure = state
        .portal()
        .secure_cookie(state.cfg().public_url.as_deref(), &headers);
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

/// The portal's documented operations. Its pages answer errors as HTML pages for people (or
/// the JSON body when the router refuses a request first); the OpenAPI document (`openapi.rs`) adds those
/// answers to every operation tagged `portal`. Left out: `/portal` and `/portal/` (redirects to
/// the pricing page) and the static assets under `/portal/assets/`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    pricing::page,
    login,
    logout,
    dashboard::page,
    dashboard::create_key,
    dashboard::rotate_key,
    dashboard::revoke_key,
    dashboard::upgrade,
    dashboard::payment_page,
    operator::page,
    operator::confirm,
    operator::reject,
    handoff,
    operator_handoff
))]
pub struct Api;

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
    use crate::app::testing::TestBackend;
    use axum::body::Body;
    use serde_json::{json, Value};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    /// Mints a hand-off link through the router with a request that names an attacker's host
    /// in every header a proxy or client could set.
    async fn poisoned_handoff(tb: &TestBackend, path: &str, body: Value) -> String {
        let req = Request::builder()
            .method("POST")
            .uri(path)
            .header(header::HOST, "evil.example")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header(
                header::AUTHORIZATION,
                "Bearer test-service-token-0123456789",
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let resp = tb
            .backend
            .router()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("call: {e}"));
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, StatusCode::OK, "{v}");
        let url = v["url"].as_str().unwrap_or_default().to_string();
        assert!(!url.contains("evil.example"), "{url}");
        assert!(url.ends_with(v["path"].as_str().unwrap_or("?")), "{v}");
        url
    }

    #[tokio::test]
    async fn handoff_links_use_the_listen_address_not_the_request_host() {
        let tb = TestBackend::start(|c| c.listen = SocketAddr::from(([0, 0, 0, 0], 8099))).await;
        let customer =
            poisoned_handoff(&tb, "/portal/api/handoff", json!({"user_id": "alice"})).await;
        assert!(
            customer.starts_with("http://127.0.0.1:8099/portal/login?token="),
            "{customer}"
        );
        let operator = poisoned_handoff(&tb, "/portal/api/operator-handoff", json!({})).await;
        assert!(
            operator.starts_with("http://127.0.0.1:8099/portal/login?token="),
            "{operator}"
        );
        // The listener the process really serves on (a gateway embedding the backend, or a
        // port picked at bind) replaces the configured address.
        tb.backend.advertise(SocketAddr::from(([0u16; 8], 9123)));
        let advertised =
            poisoned_handoff(&tb, "/portal/api/handoff", json!({"user_id": "alice"})).await;
        assert!(
            advertised.starts_with("http://[::1]:9123/portal/login?token="),
            "{advertised}"
        );
    }

    #[tokio::test]
    async fn handoff_links_use_public_url_when_set() {
        let tb =
            TestBackend::start(|c| c.public_url = Some("https://billing.example.com/".to_string()))
                .await;
        tb.backend
            .advertise(SocketAddr::from(([10, 0, 0, 5], 8080)));
        let url = poisoned_handoff(&tb, "/portal/api/handoff", json!({"user_id": "bob"})).await;
        assert!(
            url.starts_with("https://billing.example.com/portal/login?token="),
            "{url}"
        );
    }

    #[test]
    fn notices_are_fixed_texts() {
        assert!(notice_text(Some("revoked")).is_some());
        assert_eq!(notice_text(Some("<script>")), None);
        assert_eq!(notice_text(None), None);
    }
}
