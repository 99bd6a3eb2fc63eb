//! Subscriptions, payments and entitlement. A user's effective plan is the plan of their best
//! subscription that counts now (active within its period, or past due within its grace), else
//! `free`. Every change goes through [`crate::store::BillingStore::write_subscription`], which
//! moves the user's keys and writes the ledger in one transaction.
//!
//! # Layout
//! - this file: the `manual` provider (an operator grants or ends a plan with the service
//!   token), [`save`] and [`settle`], the one path every provider writes subscriptions and
//!   payments through, so every effect is idempotent and ledgered with its cause; the expiry
//!   sweep.
//! - [`stripe`], [`paypal`], [`sepa`]: each provider's endpoints and webhook, over the settings
//!   and HTTP clients of [`crate::providers`].
//! - [`events`]: provider webhooks claim each event with a lease, so an event is applied once
//!   across concurrent deliveries and crashes.

pub mod events;
pub mod paypal;
pub mod sepa;
pub mod stripe;

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::error::ErrorDoc;
use crate::extract::ValidatedJson;
use crate::keys::{rfc3339, valid_user_id};
use crate::state::AppState;
use crate::store::{Cause, PayStatus, PlanChange, Settled, StoreError, SubStatus, Subscription};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::day::add_months;
use tollgate_protocol::plans::{Catalogue, FREE};
use utoipa::{IntoParams, ToSchema};

/// Whether a subscription grants its plan at `now`.
pub fn counts(s: &Subscription, now: i64) -> bool {
    match s.status {
        SubStatus::Active => s.period_end > now,
        SubStatus::PastDue => s.grace_until.is_some_and(|g| g > now),
        SubStatus::Incomplete | SubStatus::Canceled | SubStatus::Expired => false,
    }
}

/// The effective plan: the highest-ranked plan among subscriptions that count, else `free`.
/// Plans rank by monthly price, then daily limit.
pub fn effective_plan(subs: &[Subscription], now: i64, catalogue: &Catalogue) -> String {
    subs.iter()
        .filter(|s| counts(s, now))
        .filter_map(|s| catalogue.get(&s.plan))
        .max_by_key(|p| (p.price_monthly_minor, p.daily_limit))
        .map(|p| p.id.clone())
        .unwrap_or_else(|| FREE.to_string())
}

/// The entitlement rule at `now`, as the closure the store applies inside its transactions.
pub fn entitle_at(state: &AppState, now: i64) -> impl Fn(&[Subscription]) -> String + Send + Sync {
    let catalogue = state.catalogue().clone();
    move |subs: &[Subscription]| effective_plan(subs, now, &catalogue)
}

/// Logs a plan change and wakes gateways waiting on the feed.
async fn announce(state: &AppState, change: Option<&PlanChange>, cause: &Cause) {
    if let Some(c) = change {
        tracing::info!(user_id = %c.user_id, from = %c.from, to = %c.to, keys = c.keys_touched, cause = %cause.kind, "plan changed");
        if let Ok(head) = state.store().feed_head().await {
            state.hub().notify(head);
        }
    }
}

/// Writes a subscription and applies the entitlement rule; wakes the feed when keys moved.
pub async fn save(state: &AppState, sub: &Subscription, cause: &Cause) -> Result<(), ApiError> {
    let now = state.now();
    let change = state
        .store()
        .write_subscription(sub, cause, &entitle_at(state, now), now)
        .await?;
    announce(state, change.as_ref(), cause).await;
    Ok(())
}

/// Moves a payment between statuses; a success with a plan buys a period, a refund takes it
/// back (see `store::payments`). Idempotent: a payment not in `from` is returned unchanged.
pub async fn settle(
    state: &AppState,
    payment_id: &str,
    from: &[PayStatus],
    to: PayStatus,
    fee_minor: Option<i64>,
    cause: &Cause,
) -> Result<Settled, ApiError> {
    let now = state.now();
    let settled = state
        .store()
        .settle_payment(
            payment_id,
            from,
            to,
            fee_minor,
            cause,
            &entitle_at(state, now),
            now,
        )
        .await?;
    if let Settled::Applied { change, .. } = &settled {
        announce(state, change.as_ref(), cause).await;
    }
    Ok(settled)
}

/// A subscription as the API shows it.
///
/// Response structs in this module list their fields in alphabetical order: the `json!` maps
/// they replaced wrote them so, and the bytes on the wire stayed the same.
#[derive(Serialize, ToSchema)]
pub struct SubView {
    pub cancel_at_period_end: bool,
    pub created_at: String,
    pub current_period_end: String,
    pub current_period_start: String,
    /// `monthly` or `yearly`.
    pub cycle: String,
    /// Until when a past-due subscription still grants its plan.
    pub grace_until: Option<String>,
    /// Whether it grants its plan now.
    pub grants_access: bool,
    /// `sub_...`.
    pub id: String,
    pub plan: String,
    /// `stripe`, `paypal`, `sepa` or `manual`.
    pub provider: String,
    pub provider_reference: Option<String>,
    #[schema(value_type = SubStatusDoc)]
    pub status: SubStatus,
    pub updated_at: String,
    pub user_id: String,
}

pub fn sub_view(s: &Subscription, now: i64) -> SubView {
    SubView {
        cancel_at_period_end: s.cancel_at_period_end,
        created_at: rfc3339(s.created_at),
        current_period_end: rfc3339(s.period_end),
        current_period_start: rfc3339(s.period_start),
        cycle: s.cycle.clone(),
        grace_until: s.grace_until.map(rfc3339),
        grants_access: counts(s, now),
        id: s.id.clone(),
        plan: s.plan.clone(),
        provider: s.provider.clone(),
        provider_reference: s.provider_ref.clone(),
        status: s.status,
        updated_at: rfc3339(s.updated_at),
        user_id: s.user_id.clone(),
    }
}

/// The subscription as a JSON value (for answers that embed one).
pub fn sub_json(s: &Subscription, now: i64) -> Value {
    serde_json::to_value(sub_view(s, now)).unwrap_or_default()
}

/// Background: ends subscriptions whose paid-up time or grace ran out, once per second.
pub async fn expiry_sweep(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = state.now();
        let due = match state.store().due_subscriptions(now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "expiry sweep could not read subscriptions");
                continue;
            }
        };
        match state.store().due_payments(now).await {
            Ok(payments) => {
                for p in payments {
                    let cause = Cause::new("system", format!("instructions for {} expired", p.id));
                    if let Err(e) = settle(
                        &state,
                        &p.id,
                        &[PayStatus::Pending],
                        PayStatus::Expired,
                        None,
                        &cause,
                    )
                    .await
                    {
                        tracing::warn!(payment = %p.id, error = %e, "expiry sweep could not expire a payment");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiry sweep could not read payments"),
        }
        for mut sub in due {
            let what = match sub.status {
                SubStatus::PastDue => format!("grace period of {} ended", sub.id),
                _ => format!("period of {} ended at {}", sub.id, rfc3339(sub.period_end)),
            };
            sub.status = SubStatus::Expired;
            sub.updated_at = now;
            let cause = Cause::new("system", what);
            if let Err(e) = save(&state, &sub, &cause).await {
                tracing::warn!(subscription = %sub.id, error = %e, "expiry sweep could not end a subscription");
            }
        }
    }
}

/// `POST /api/v1/billing/subscriptions/manual`.
#[derive(Deserialize, Clone, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub user_id: String,
    /// A paid plan of the catalogue.
    pub plan: String,
    /// `monthly` (default) or `yearly`.
    #[serde(default)]
    #[schema(pattern = "^(monthly|yearly)$")]
    pub cycle: Option<String>,
    /// Number of cycles granted (1-120).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 120)]
    pub periods: Option<u32>,
    /// At most 500 characters; kept as the provider reference.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: Option<String>,
}

/// Grants a plan with the `manual` provider (HTTP handler and CLI).
pub async fn grant(
    state: &AppState,
    req: GrantRequest,
    cause: &Cause,
) -> Result<Subscription, ApiError> {
    valid_user_id(&req.user_id)?;
    let plan = crate::plans::find(state, &req.plan)?;
    if !plan.is_paid() {
        return Err(ApiError::bad(
            "invalid_plan",
            format!(
                "{:?} is the free plan; end the user's subscriptions instead",
                plan.id
            ),
        ));
    }
    let cycle = crate::plans::cycle(req.cycle.as_deref())?;
    let periods = req.periods.unwrap_or(1);
    if !(1..=120).contains(&periods) {
        return Err(ApiError::bad(
            "invalid_body",
            "periods must be between 1 and 120",
        ));
    }
    if req.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::bad(
            "invalid_body",
            "reason must be at most 500 characters",
        ));
    }
    let now = state.now();
    let sub = Subscription {
        id: crate::ids::prefixed("sub"),
        user_id: req.user_id,
        plan: plan.id.clone(),
        cycle: cycle.as_str().to_string(),
        status: SubStatus::Active,
        period_start: now,
        period_end: add_months(now, cycle.months() * i64::from(periods)),
        provider: "manual".to_string(),
        provider_ref: req.reason,
        cancel_at_period_end: false,
        grace_until: None,
        created_at: now,
        updated_at: now,
    };
    save(state, &sub, cause).await?;
    Ok(sub)
}

/// Ends a subscription now (HTTP handler and CLI).
pub async fn end(state: &AppState, sub_id: &str, cause: &Cause) -> Result<Subscription, ApiError> {
    let mut sub = state
        .store()
        .get_subscription(sub_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found(
                "subscription_not_found",
                format!("subscription {sub_id:?} not found"),
            ),
            other => other.into(),
        })?;
    if matches!(sub.status, SubStatus::Canceled | SubStatus::Expired) {
        return Ok(sub);
    }
    let now = state.now();
    sub.status = SubStatus::Canceled;
    sub.period_end = sub.period_end.min(now);
    sub.updated_at = now;
    save(state, &sub, cause).await?;
    Ok(sub)
}

/// `POST /api/v1/billing/subscriptions/manual`. A retry with the same `Idempotency-Key` is
/// answered by [`crate::idempotency`] without granting again.
/// A subscription that was written.
#[derive(Serialize, ToSchema)]
pub struct SubAnswer {
    pub subscription: SubView,
    pub success: bool,
}

/// Grant a paid plan with the `manual` provider for `periods` cycles from now.
#[utoipa::path(
    post,
    path = "/api/v1/billing/subscriptions/manual",
    tag = "billing",
    security(("serviceToken" = [])),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "Granted; the user's keys have the plan's limits at once", body = SubAnswer),
        (status = 400, description = "`invalid_body`, `invalid_user_id`, `unknown_plan`, `invalid_plan` (the free plan), `unknown_cycle`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn grant_handler(
    _: ServiceAuth,
    State(state): State<AppState>,
    ValidatedJson(req): ValidatedJson<GrantRequest>,
) -> Result<(StatusCode, Json<SubAnswer>), ApiError> {
    let cause = Cause::new("api", "POST /api/v1/billing/subscriptions/manual");
    let sub = grant(&state, req, &cause).await?;
    Ok((
        StatusCode::CREATED,
        Json(SubAnswer {
            subscription: sub_view(&sub, state.now()),
            success: true,
        }),
    ))
}

/// `POST /api/v1/billing/subscriptions/{sub_id}/end`; the body may be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct EndRequest {
    /// Recorded in the ledger.
    #[serde(default)]
    reason: Option<String>,
}

/// End a subscription now (ending an ended one changes nothing).
#[utoipa::path(
    post,
    path = "/api/v1/billing/subscriptions/{sub_id}/end",
    tag = "billing",
    security(("serviceToken" = [])),
    params(("sub_id" = String, Path, description = "`sub_...`")),
    request_body(content = Option<EndRequest>, description = "Optional"),
    responses(
        (status = 200, description = "Ended", body = SubAnswer),
        (status = 404, description = "`subscription_not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn end_handler(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(sub_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<SubAnswer>, ApiError> {
    let req: EndRequest = if body.iter().all(u8::is_ascii_whitespace) {
        EndRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let reason = req.reason.unwrap_or_default();
    let cause = Cause::new(
        "api",
        format!("POST /api/v1/billing/subscriptions/{sub_id}/end {reason}")
            .trim()
            .to_string(),
    );
    let sub = end(&state, &sub_id, &cause).await?;
    Ok(Json(SubAnswer {
        subscription: sub_view(&sub, state.now()),
        success: true,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    /// The operator's id for the user.
    user_id: String,
}

/// `GET /api/v1/billing/subscriptions`.
#[derive(Serialize, ToSchema)]
pub struct UserSubs {
    /// The effective plan now.
    pub plan: String,
    pub subscriptions: Vec<SubView>,
    pub user_id: String,
}

/// A user's subscriptions and effective plan.
#[utoipa::path(
    get,
    path = "/api/v1/billing/subscriptions",
    tag = "billing",
    security(("serviceToken" = [])),
    params(UserQuery),
    responses(
        (status = 200, description = "The user's subscriptions", body = UserSubs),
        (status = 400, description = "`invalid_user_id`, or `bad_request`: `user_id` missing or an unknown query parameter", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn list_subs(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<UserQuery>,
) -> Result<Json<UserSubs>, ApiError> {
    valid_user_id(&q.user_id)?;
    let subs = state.store().subscriptions_of(&q.user_id).await?;
    let now = state.now();
    let plan = state.store().user_plan(&q.user_id).await?;
    Ok(Json(UserSubs {
        plan,
        subscriptions: subs.iter().map(|s| sub_view(s, now)).collect(),
        user_id: q.user_id,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct LedgerQuery {
    /// Only this user's entries.
    user_id: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// [`SubStatus`] as the document shows it (the store's types stay free of documentation
/// derives).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = SubStatus)]
#[allow(dead_code)]
pub enum SubStatusDoc {
    Incomplete,
    Active,
    PastDue,
    Canceled,
    Expired,
}

/// [`Cause`] as the document shows it.
#[derive(ToSchema)]
#[schema(as = Cause)]
#[allow(dead_code)]
pub struct CauseDoc {
    /// `api`, `cli`, `webhook`, `statement`, `system`.
    kind: String,
    /// A request, an event id, a statement entry reference...
    reference: String,
}

/// One ledger entry: a change of money or entitlement and its cause.
#[derive(Serialize, ToSchema)]
pub struct LedgerView {
    pub at: String,
    #[schema(value_type = CauseDoc)]
    pub cause: Cause,
    #[schema(value_type = Object)]
    pub detail: Value,
    pub id: i64,
    pub kind: String,
    pub subject: String,
    pub user_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ledger {
    /// Newest first.
    pub entries: Vec<LedgerView>,
}

/// The append-only audit ledger, newest first.
#[utoipa::path(
    get,
    path = "/api/v1/billing/ledger",
    tag = "billing",
    security(("serviceToken" = [])),
    params(LedgerQuery),
    responses(
        (status = 200, description = "Ledger entries", body = Ledger),
        (status = 400, description = "`invalid_user_id`, `invalid_query` (limit), or `bad_request` (a query that does not parse)", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn ledger(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<LedgerQuery>,
) -> Result<Json<Ledger>, ApiError> {
    if let Some(u) = &q.user_id {
        valid_user_id(u)?;
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let entries = state.store().ledger(q.user_id.as_deref(), limit).await?;
    let entries = entries
        .into_iter()
        .map(|e| LedgerView {
            at: rfc3339(e.at),
            cause: e.cause,
            detail: e.detail,
            id: e.id,
            kind: e.kind,
            subject: e.subject,
            user_id: e.user_id,
        })
        .collect();
    Ok(Json(Ledger { entries }))
}

#[derive(Serialize, ToSchema)]
pub struct StripeStatus {
    pub configured: bool,
    /// `test` or `live` (from the secret key's prefix); null when not configured.
    pub mode: Option<&'static str>,
    pub webhook_secret_configured: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PayPalStatus {
    pub configured: bool,
    /// `sandbox` or `live`; null when not configured.
    pub mode: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct Configured {
    pub configured: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderStatus {
    pub manual: Configured,
    pub paypal: PayPalStatus,
    pub sepa: Configured,
    pub stripe: StripeStatus,
}

/// `GET /api/v1/billing/status`.
#[derive(Serialize, ToSchema)]
pub struct BillingStatus {
    #[schema(value_type = String, example = "EUR")]
    pub currency: tollgate_protocol::money::Currency,
    pub providers: ProviderStatus,
    /// `ok`.
    pub status: &'static str,
}

/// Which payment providers are configured and in which mode (never a secret).
#[utoipa::path(
    get,
    path = "/api/v1/billing/status",
    tag = "billing",
    responses((status = 200, description = "Provider status", body = BillingStatus))
)]
async fn status(State(state): State<AppState>) -> Json<BillingStatus> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let stripe_key = env("STRIPE_SECRET_KEY").or_else(|| env("STRIPE_API_KEY"));
    let stripe_mode = stripe_key.as_deref().map(|k| {
        if k.starts_with("sk_live_") || k.starts_with("rk_live_") {
            "live"
        } else {
            "test"
        }
    });
    let paypal = env("PAYPAL_CLIENT_ID").is_some() && env("PAYPAL_SECRET").is_some();
    let paypal_base =
        env("PAYPAL_BASE").unwrap_or_else(|| "https://api-m.sandbox.paypal.com".to_string());
    let paypal_mode = if paypal_base.contains("sandbox") {
        "sandbox"
    } else {
        "live"
    };
    let sepa = env("SEPA_IBAN").is_some() && env("SEPA_HOLDER").is_some();
    Json(BillingStatus {
        currency: state.catalogue().currency(),
        providers: ProviderStatus {
            manual: Configured { configured: true },
            paypal: PayPalStatus {
                configured: paypal,
                mode: paypal.then_some(paypal_mode),
            },
            sepa: Configured { configured: sepa },
            stripe: StripeStatus {
                configured: stripe_key.is_some(),
                mode: stripe_mode,
                webhook_secret_configured: env("STRIPE_WEBHOOK_SECRET").is_some(),
            },
        },
        status: "ok",
    })
}

/// The test clock hook (`/internal/test/clock`, `test_clock.rs`) is left out on purpose:
/// it exists only in builds with the `test-clock` feature, and answers 404 there unless
/// `TOLLGATE_TEST_CLOCK=1`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(status, list_subs, grant_handler, end_handler, ledger))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/billing/status", get(status))
        .route("/api/v1/billing/subscriptions", get(list_subs))
        .route("/api/v1/billing/subscriptions/manual", post(grant_handler))
        .route(
            "/api/v1/billing/subscriptions/{sub_id}/end",
            post(end_handler),
        )
        .route("/api/v1/billing/ledger", get(ledger))
        .merge(provider_router())
}

/// The payment providers' endpoints and webhooks (also called in process by the portal).
pub fn provider_router() -> Router<AppState> {
    Router::new()
        .merge(sepa::router())
        .merge(paypal::router())
        .merge(stripe::router())
}

/// Starts the providers' background work (the Stripe meter export).
pub fn spawn_background(state: &AppState, stop: tokio::sync::watch::Receiver<bool>) {
    stripe::spawn_background(state, stop);
}

/// Body limit of the provider webhook routes, instead of `[backend] max_body_bytes` (64 KiB by
/// default, sized for management requests). Providers send whole objects: a Stripe invoice
/// event with many lines, or with its metadata, is well over 64 KiB, and a 413 there means the
/// provider retries for days and the payment is never applied. 1 MiB is far above any real
/// event and still bounds what an unauthenticated caller can make us buffer before the
/// signature check.
pub const WEBHOOK_BODY_LIMIT: usize = 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(plan: &str, status: SubStatus, end: i64, grace: Option<i64>) -> Subscription {
        Subscription {
            id: "sub_x".into(),
            user_id: "u".into(),
            plan: plan.into(),
            cycle: "monthly".into(),
            status,
            period_start: 0,
            period_end: end,
            provider: "manual".into(),
            provider_ref: None,
            cancel_at_period_end: false,
            grace_until: grace,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn entitlement_rule() {
        let c = Catalogue::defaults();
        assert_eq!(effective_plan(&[], 10, &c), "free");
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::Active, 100, None)], 10, &c),
            "pro"
        );
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::Active, 100, None)], 100, &c),
            "free"
        );
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::PastDue, 5, Some(50))], 10, &c),
            "pro"
        );
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::PastDue, 5, Some(50))], 50, &c),
            "free"
        );
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::Canceled, 100, None)], 10, &c),
            "free"
        );
        assert_eq!(
            effective_plan(&[sub("pro", SubStatus::Incomplete, 100, None)], 10, &c),
            "free"
        );
        let both = [
            sub("pro", SubStatus::Active, 100, None),
            sub("enterprise", SubStatus::Active, 100, None),
        ];
        assert_eq!(effective_plan(&both, 10, &c), "enterprise");
        assert_eq!(
            effective_plan(&[sub("gone", SubStatus::Active, 100, None)], 10, &c),
            "free"
        );
    }

    /// The provider webhooks' body limit, and a Stripe event redelivered after a crash.
    mod webhooks {
        use crate::app::testing::TestBackend;
        use crate::billing::WEBHOOK_BODY_LIMIT;
        use crate::config::Secret;
        use crate::providers::{stripe, Providers};
        use axum::body::Body;
        use axum::http::{Request, StatusCode};
        use axum::Router;
        use serde_json::{json, Value};
        use std::sync::Arc;
        use tower::ServiceExt;

        const WHSEC: &str = "whsec_test_limit";

        /// The test backend's router with Stripe configured (webhook secret set, API unreachable:
        /// the events sent here are ones the backend records without calling Stripe).
        fn with_stripe(tb: &TestBackend) -> Router {
            let client = stripe::client::StripeClient::new(
                "http://127.0.0.1:9",
                Secret::new("sk_test_limit".to_string()),
            )
            .unwrap_or_else(|e| panic!("client: {e}"));
            let state = tb.state().clone().with_providers(Providers {
                stripe: Some(Arc::new(stripe::Stripe {
                    client,
                    webhook_secret: Some(Secret::new(WHSEC.to_string())),
                    payment_behavior: stripe::PaymentBehavior::DefaultIncomplete,
                    meter_event_name: None,
                    export_interval: None,
                    webhook_lock: tokio::sync::Mutex::new(()),
                    export_lock: tokio::sync::Mutex::new(()),
                })),
                ..Providers::default()
            });
            crate::app::router(state)
        }

        /// An `invoice.created` event (recorded, not acted on) of at least `size` bytes: an
        /// invoice with many lines, as Stripe sends for metered or multi-item subscriptions.
        fn big_invoice_event(id: &str, size: usize) -> Vec<u8> {
            let line = |i: usize| {
                json!({
                    "id": format!("il_{i:06}"),
                    "object": "line_item",
                    "amount": 1200,
                    "currency": "eur",
                    "description": format!("API usage, line {i}: {}", "metered requests ".repeat(20)),
                    "metadata": {"user_id": "alice", "route": "/v1/chat"},
                })
            };
            let mut lines = Vec::new();
            let mut approx = 0;
            while approx < size {
                let l = line(lines.len());
                approx += l.to_string().len() + 1;
                lines.push(l);
            }
            let event = json!({
                "id": id,
                "object": "event",
                "type": "invoice.created",
                "created": 1_700_000_000,
                "data": {"object": {
                    "id": "in_limit",
                    "object": "invoice",
                    "lines": {"object": "list", "data": lines, "has_more": false},
                }},
            });
            let body = serde_json::to_vec(&event).unwrap_or_default();
            assert!(body.len() >= size, "{} < {size}", body.len());
            body
        }

        async fn post(
            router: Router,
            path: &str,
            body: Vec<u8>,
            headers: &[(&str, String)],
        ) -> (StatusCode, Option<String>, Value) {
            let mut req = Request::builder()
                .method("POST")
                .uri(path)
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let req = req
                .body(Body::from(body))
                .unwrap_or_else(|e| panic!("request: {e}"));
            let resp = router
                .oneshot(req)
                .await
                .unwrap_or_else(|e| panic!("call: {e}"));
            let status = resp.status();
            let content_type = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            (
                status,
                content_type,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        }

        fn stripe_signature(now: i64, body: &[u8]) -> (&'static str, String) {
            let v1 = stripe::signature::sign(WHSEC.as_bytes(), now, body);
            ("stripe-signature", format!("t={now},v1={v1}"))
        }

        fn assert_too_large(st: StatusCode, content_type: Option<String>, v: &Value) {
            assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
            assert!(
                content_type.is_some_and(|c| c.starts_with("application/json")),
                "{v}"
            );
            assert_eq!(v["error"]["code"], json!("body_too_large"), "{v}");
            assert!(v["error"]["message"].is_string(), "{v}");
            assert!(v["detail"].is_string(), "{v}");
        }

        #[tokio::test]
        async fn stripe_webhooks_over_64_kib_are_accepted_up_to_1_mib() {
            let tb = TestBackend::start(|_| {}).await;
            let now = tb.state().now();
            let body = big_invoice_event("evt_limit_big", 200 * 1024);
            let sig = stripe_signature(now, &body);
            let (st, _, v) = post(
                with_stripe(&tb),
                "/api/v1/billing/webhook",
                body,
                &[(sig.0, sig.1)],
            )
            .await;
            assert_eq!(st, StatusCode::OK, "{v}");
            assert_eq!(v["received"], json!(true), "{v}");

            let body = big_invoice_event("evt_limit_huge", 2 * 1024 * 1024);
            let sig = stripe_signature(now, &body);
            let (st, ct, v) = post(
                with_stripe(&tb),
                "/api/v1/billing/webhook",
                body,
                &[(sig.0, sig.1)],
            )
            .await;
            assert_too_large(st, ct, &v);
        }

        #[tokio::test]
        async fn paypal_webhook_has_the_webhook_limit_and_management_keeps_64_kib() {
            let tb = TestBackend::start(|_| {}).await;
            // PayPal is not configured here: a body under the webhook limit reaches the handler
            // (503), one over it is refused before.
            let (st, _, v) = post(
                tb.backend.router(),
                "/billing/paypal/webhook",
                vec![b' '; 200 * 1024],
                &[],
            )
            .await;
            assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{v}");
            assert_eq!(v["error"]["code"], json!("provider_not_configured"), "{v}");
            let (st, ct, v) = post(
                tb.backend.router(),
                "/billing/paypal/webhook",
                vec![b' '; WEBHOOK_BODY_LIMIT + 1],
                &[],
            )
            .await;
            assert_too_large(st, ct, &v);
            // The management APIs keep `[backend] max_body_bytes`.
            let (st, ct, v) = post(
                tb.backend.router(),
                "/portal/api/operator-handoff",
                vec![b' '; 100 * 1024],
                &[(
                    "authorization",
                    "Bearer test-service-token-0123456789".to_string(),
                )],
            )
            .await;
            assert_too_large(st, ct, &v);
        }

        /// A process that died after an event's effect committed but before its outcome was
        /// recorded leaves a claim that lapses; the redelivery applies the event again and that
        /// changes nothing (every effect is conditional on the state it moves from), so the event
        /// is applied once whichever point the crash hit.
        #[tokio::test]
        async fn a_stripe_event_applied_but_not_recorded_changes_nothing_when_redelivered() {
            let tb = TestBackend::start(|_| {}).await;
            let store = tb.state().store().clone();
            let now = tb.state().now();
            store
                .stripe_record_price("pro", "monthly", "price_pro_monthly", now)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let event = json!({
                "id": "evt_unrecorded", "object": "event", "type": "customer.subscription.created",
                "created": now - 10,
                "data": {"object": {"id": "sub_S1", "object": "subscription", "customer": "cus_C1",
                    "status": "active", "metadata": {"user_id": "ida"},
                    "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": "price_pro_monthly"},
                        "current_period_start": now - 10, "current_period_end": now + 86_400}]}}},
            });
            let body = serde_json::to_vec(&event).unwrap_or_default();
            let deliver = || async {
                let signature = [stripe_signature(tb.state().now(), &body)];
                post(
                    with_stripe(&tb),
                    "/api/v1/billing/webhook",
                    body.clone(),
                    &signature,
                )
                .await
            };
            let (st, _, v) = deliver().await;
            assert_eq!(
                (st, v["applied"].clone()),
                (StatusCode::OK, json!(true)),
                "{v}"
            );
            let ledger = store.ledger(Some("ida"), 100).await.unwrap_or_default();
            assert_eq!(store.user_plan("ida").await.ok().as_deref(), Some("pro"));

            // The crash: the effect is in, the outcome is not, and the claim's lease has run out.
            let db = crate::store::sql::SqlStore::connect(&tb.state().cfg().database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            db.raw_execute(
                "UPDATE provider_events SET outcome = NULL, claim_token = 'dead', lease_until = 0 \
                 WHERE event_id = 'evt_unrecorded'",
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            crate::store::Store::close(&db).await;

            let (st, _, v) = deliver().await;
            assert_eq!(
                (st, v["applied"].clone()),
                (StatusCode::OK, json!(false)),
                "{v}"
            );
            assert_eq!(
                store.ledger(Some("ida"), 100).await.unwrap_or_default(),
                ledger,
                "nothing applied twice"
            );
            assert_eq!(
                store.subscriptions_of("ida").await.map(|s| s.len()).ok(),
                Some(1)
            );
            let (st, _, v) = deliver().await;
            assert_eq!(
                (st, v["duplicate"].clone()),
                (StatusCode::OK, json!(true)),
                "{v}"
            );
        }
    }
}
