//! Stripe's endpoints (`/api/v1/billing/*`) and what the backend does through the account
//! configured in [`crate::providers::stripe`].
//!
//! # Layout
//! - this file: the management endpoints (customers, payment intents, subscriptions,
//!   products, Checkout) and the router.
//! - [`webhook`]: `POST /api/v1/billing/webhook` — the signature verified on the raw body, event
//!   claimed once by id, then applied through `billing::save` / `billing::settle` with the event
//!   id as the ledger cause.
//! - [`meter`]: metered usage as Billing Meter events (exactly once per identifier) and the
//!   drift report; `store::stripe`: Stripe's tables.
//! - [`sync`]: `tollgate-backend stripe sync`, the catalogue's products and prices on Stripe
//!   (found by lookup key or created) recorded for [`price_for`].
//!
//! Access is granted only by verified events: creating a subscription records it `incomplete`,
//! and the signed `customer.subscription.*` / `invoice.paid` event makes it `active`. That keeps
//! one path to entitlement (the webhook) and lets a redirect or a client never grant a plan.

pub mod meter;
pub mod sync;
pub mod webhook;

use crate::auth::ServiceAuth;
use crate::error::ErrorDoc;
use crate::error::{json_error, ApiError};
use crate::extract::IdempotencyKey;
use crate::keys::{rfc3339, valid_user_id};
use crate::providers::stripe::client::StripeError;
use crate::providers::stripe::wire;
use crate::providers::stripe::{PaymentBehavior, Stripe};
use crate::state::AppState;
use crate::store::{Cause, PayStatus, Payment, StoreError, SubStatus, Subscription};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tollgate_protocol::money::Currency;
use tollgate_protocol::plans::{Cycle, Plan};
use utoipa::ToSchema;

/// What a Stripe endpoint answers on failure: one of ours, or a mapped Stripe error.
#[derive(Debug)]
pub enum Failure {
    Api(ApiError),
    Stripe(StripeError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::Api(e)
    }
}
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        Failure::Api(e.into())
    }
}
impl From<StripeError> for Failure {
    fn from(e: StripeError) -> Failure {
        Failure::Stripe(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Api(e) => write!(f, "{e}"),
            Failure::Stripe(e) => write!(f, "{e}"),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Api(e) => e.into_response(),
            Failure::Stripe(e) => {
                let (status, code, message) = e.public();
                json_error(status, code, message)
            }
        }
    }
}

type Reply<T> = Result<Json<T>, Failure>;

/// Whether `id` has the shape of a Stripe object id with this prefix (`sub_`, `price_`, `cs_`):
/// ASCII letters, digits and `_`, at most 255 bytes. Ids from a webhook or a request are checked
/// so before they become part of a Stripe API path.
pub(crate) fn is_stripe_id(id: &str, prefix: &str) -> bool {
    id.starts_with(prefix)
        && id.len() <= 255
        && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The configured provider, or 503 `provider_not_configured`.
pub fn configured(state: &AppState) -> Result<Arc<Stripe>, Failure> {
    state.providers().stripe.clone().ok_or_else(|| {
        Failure::Api(crate::providers::not_configured(
            "Stripe",
            "STRIPE_SECRET_KEY",
        ))
    })
}

/// A stable idempotency key from parts we own (ids, or the client's own Idempotency-Key).
pub fn idem_key(scope: &str, parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    format!("tollgate-{scope}-{}", &hex::encode(h.finalize())[..40])
}

/// The Stripe price (or legacy plan) id configured for a plan and cycle: the plan's
/// `provider_prices.stripe_<cycle>`, else what `stripe sync` recorded.
pub async fn price_for(state: &AppState, plan: &Plan, cycle: Cycle) -> Result<String, Failure> {
    if let Some(p) = plan
        .provider_prices
        .get(&format!("stripe_{}", cycle.as_str()))
    {
        return Ok(p.clone());
    }
    let recorded = state.store().stripe_prices().await?;
    recorded
        .into_iter()
        .find(|(p, c, _)| p == &plan.id && c == cycle.as_str())
        .map(|(_, _, id)| id)
        .ok_or_else(|| {
            Failure::Api(ApiError::bad(
                "price_not_configured",
                format!(
                    "plan {:?} has no Stripe price for the {} cycle: set provider_prices.stripe_{} in [[plans]] or run `tollgate-backend stripe sync`",
                    plan.id,
                    cycle.as_str(),
                    cycle.as_str()
                ),
            ))
        })
}

/// The catalogue plan and cycle a Stripe price (or plan) id stands for.
pub async fn plan_for_price(
    state: &AppState,
    price_id: &str,
) -> Result<Option<(String, Cycle)>, StoreError> {
    for plan in state.catalogue().all() {
        for cycle in [Cycle::Monthly, Cycle::Yearly] {
            if plan
                .provider_prices
                .get(&format!("stripe_{}", cycle.as_str()))
                .is_some_and(|p| p == price_id)
            {
                return Ok(Some((plan.id.clone(), cycle)));
            }
        }
    }
    let recorded = state.store().stripe_prices().await?;
    Ok(recorded
        .into_iter()
        .find(|(_, _, id)| id == price_id)
        .and_then(|(p, c, _)| Cycle::parse(&c).map(|c| (p, c))))
}

/// `items[0][price]` for a Price, `items[0][plan]` for a legacy Plan id (localstripe has no
/// Prices API; real Stripe accepts both).
fn item_for(price_id: &str) -> Value {
    if price_id.starts_with("price_") {
        json!({"price": price_id})
    } else {
        json!({"plan": price_id})
    }
}

fn paid_plan(state: &AppState, plan: &str, cycle: Option<&str>) -> Result<(Plan, Cycle), Failure> {
    Ok(crate::plans::paid(state, plan, cycle)?)
}

fn valid_stripe_id(field: &str, id: &str, prefixes: &[&str]) -> Result<(), Failure> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && prefixes.iter().any(|p| id.starts_with(p))
        && id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_body",
            format!(
                "{field}: {:?} is not a Stripe id{}",
                id.chars().take(64).collect::<String>(),
                match prefixes {
                    [""] => String::new(),
                    p => format!(" starting with {}", p.join(" or ")),
                }
            ),
        )
        .into())
    }
}

fn valid_url(field: &str, url: &str) -> Result<(), Failure> {
    if (url.starts_with("https://") || url.starts_with("http://"))
        && url.len() <= 2048
        && !url.chars().any(|c| c.is_control() || c == ' ')
    {
        Ok(())
    } else {
        Err(ApiError::bad("invalid_body", format!("{field} must be an http(s) URL")).into())
    }
}

fn valid_email(email: &str) -> Result<(), Failure> {
    let ok = email.len() <= 512
        && email
            .split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && b.contains('.'))
        && !email.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(
            "invalid_email",
            "email must be an address like name@example.com",
        )
        .into())
    }
}

/// Stripe's metadata limits: 50 keys, keys ≤ 40 chars, values ≤ 500 chars, strings only.
fn valid_metadata(m: &Map<String, Value>) -> Result<(), Failure> {
    if m.len() > 50 {
        return Err(ApiError::bad("invalid_body", "metadata: at most 50 keys").into());
    }
    for (k, v) in m {
        let ok = !k.is_empty()
            && k.len() <= 40
            && !k.contains(['[', ']'])
            && v.as_str().is_some_and(|s| s.len() <= 500);
        if !ok {
            return Err(ApiError::bad(
                "invalid_body",
                format!("metadata.{}: keys are 1-40 characters without brackets, values strings of at most 500 characters", k.chars().take(40).collect::<String>()),
            )
            .into());
        }
    }
    Ok(())
}

/// The user's Stripe customer, created (once per user) when missing.
pub async fn ensure_customer(
    state: &AppState,
    stripe: &Stripe,
    user_id: &str,
    email: Option<&str>,
    name: Option<&str>,
    cause: &Cause,
) -> Result<(String, bool), Failure> {
    if let Some(c) = state.store().stripe_customer_of(user_id).await? {
        return Ok((c, false));
    }
    let params = json!({
        "email": email,
        "name": name,
        "metadata": {"user_id": user_id},
    });
    let created: wire::Customer = stripe
        .client
        .post("/v1/customers", &params, &idem_key("customer", &[user_id]))
        .await?;
    let recorded = state
        .store()
        .stripe_record_customer(user_id, &created.id, cause, state.now())
        .await?;
    if recorded != created.id {
        tracing::warn!(user_id, kept = %recorded, extra = %created.id, "a concurrent request created a second Stripe customer; keeping the first");
    }
    let created_now = recorded == created.id;
    Ok((recorded, created_now))
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/billing/create-customer

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CustomerRequest {
    user_id: String,
    /// An address like name@example.com.
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Answers of the Stripe endpoints list their fields in alphabetical order: the `json!` maps
/// they replaced wrote them so, and the bytes on the wire stayed the same.
#[derive(Serialize, ToSchema)]
struct CustomerAnswer {
    /// Whether this call created it (false: the user had one).
    created: bool,
    /// `cus_...`.
    customer_id: String,
    /// The same id, as the original module named it.
    id: String,
    success: bool,
    user_id: String,
}

/// The user's Stripe customer: one per user, created once.
#[utoipa::path(
    post,
    path = "/api/v1/billing/create-customer",
    tag = "stripe",
    security(("serviceToken" = [])),
    request_body = CustomerRequest,
    responses(
        (status = 200, description = "The customer", body = CustomerAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_user_id`, `invalid_email`, `stripe_invalid_request`", body = ErrorDoc),
    )
)]
async fn create_customer(
    _: ServiceAuth,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Reply<CustomerAnswer> {
    let stripe = configured(&state)?;
    let req: CustomerRequest = crate::extract::parse_json(&body)?;
    valid_user_id(&req.user_id)?;
    if let Some(e) = &req.email {
        valid_email(e)?;
    }
    if req.name.as_ref().is_some_and(|n| n.len() > 256) {
        return Err(ApiError::bad("invalid_body", "name: at most 256 characters").into());
    }
    let cause = Cause::new("api", "POST /api/v1/billing/create-customer");
    let (customer_id, created) = ensure_customer(
        &state,
        &stripe,
        &req.user_id,
        req.email.as_deref(),
        req.name.as_deref(),
        &cause,
    )
    .await?;
    Ok(Json(CustomerAnswer {
        created,
        id: customer_id.clone(),
        customer_id,
        success: true,
        user_id: req.user_id,
    }))
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/billing/payment-intent

/// `{user_id, plan, cycle}` (priced by the server; success buys one period) or the original
/// `{amount, currency, description, payment_method_types, metadata}` (grants nothing).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PaymentIntentRequest {
    /// Minor units (Stripe's convention), only without `plan`.
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    payment_method_types: Option<Vec<String>>,
    /// At most 50 string values (Stripe's limits).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Map<String, Value>>,
    #[serde(default)]
    user_id: Option<String>,
    /// With `plan` (+ `cycle`), the server prices the intent and its success buys one period.
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    cycle: Option<String>,
    #[serde(default)]
    payment_method: Option<String>,
    #[serde(default)]
    confirm: Option<bool>,
}

#[derive(Serialize, ToSchema)]
struct IntentAnswer {
    /// Minor units.
    amount: i64,
    client_secret: Option<String>,
    /// Lower case, as Stripe writes it.
    currency: String,
    cycle: Option<&'static str>,
    payment_id: Option<String>,
    payment_intent_id: String,
    plan: Option<String>,
    status: &'static str,
}

/// A Stripe PaymentIntent.
///
/// `{user_id, plan, cycle}` is priced by the server and its success buys one period; the
/// original `{amount (minor units), currency, description, payment_method_types, metadata}`
/// grants nothing.
#[utoipa::path(
    post,
    path = "/api/v1/billing/payment-intent",
    tag = "stripe",
    security(("serviceToken" = [])),
    request_body = PaymentIntentRequest,
    responses(
        (status = 200, description = "The PaymentIntent", body = IntentAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_amount`, `unknown_plan`, `unknown_cycle`, `invalid_plan`, `stripe_invalid_request`", body = ErrorDoc),
    )
)]
async fn payment_intent(
    _: ServiceAuth,
    State(state): State<AppState>,
    idem: Option<IdempotencyKey>,
    body: axum::body::Bytes,
) -> Reply<IntentAnswer> {
    let stripe = configured(&state)?;
    let req: PaymentIntentRequest = crate::extract::parse_json(&body)?;
    let metadata = req.metadata.clone().unwrap_or_default();
    valid_metadata(&metadata)?;
    let user_id = req.user_id.clone().or_else(|| {
        metadata
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    if let Some(u) = &user_id {
        valid_user_id(u)?;
    }
    if req.description.as_ref().is_some_and(|d| d.len() > 1000) {
        return Err(ApiError::bad("invalid_body", "description: at most 1000 characters").into());
    }
    if let Some(pm) = &req.payment_method {
        valid_stripe_id("payment_method", pm, &["pm_"])?;
    }
    let types = req.payment_method_types.clone().unwrap_or_default();
    if types.len() > 20
        || types.iter().any(|t| {
            t.is_empty() || t.len() > 64 || !t.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
        })
    {
        return Err(ApiError::bad(
            "invalid_body",
            "payment_method_types: up to 20 names like \"card\"",
        )
        .into());
    }
    // The amount: the plan's price, or the client's amount for a payment that buys nothing.
    let (money, plan) = match &req.plan {
        Some(plan) => {
            let user = user_id
                .as_deref()
                .ok_or_else(|| ApiError::bad("invalid_body", "user_id is required with plan"))?;
            let _ = user;
            let (p, c) = paid_plan(&state, plan, req.cycle.as_deref())?;
            let price = p.price(c);
            if let Some(a) = req.amount {
                if a != price.minor {
                    return Err(ApiError::bad(
                        "amount_mismatch",
                        format!(
                            "plan {:?} ({}) costs {} minor units; the server sets the amount",
                            p.id,
                            c.as_str(),
                            price.minor
                        ),
                    )
                    .into());
                }
            }
            if let Some(cur) = &req.currency {
                if Currency::parse(cur).ok() != Some(price.currency) {
                    return Err(ApiError::bad(
                        "currency_mismatch",
                        format!("plan {:?} is priced in {}", p.id, price.currency),
                    )
                    .into());
                }
            }
            (price, Some((p.id.clone(), c)))
        }
        None => {
            if req.cycle.is_some() {
                return Err(ApiError::bad("invalid_body", "cycle needs plan").into());
            }
            let amount = req.amount.ok_or_else(|| {
                ApiError::bad(
                    "invalid_body",
                    "amount (integer minor units) is required without plan",
                )
            })?;
            if !(1..=99_999_999).contains(&amount) {
                return Err(ApiError::bad(
                    "invalid_amount",
                    "amount must be between 1 and 99999999 minor units",
                )
                .into());
            }
            let cur = req
                .currency
                .as_deref()
                .ok_or_else(|| ApiError::bad("invalid_body", "currency is required"))?;
            let currency = Currency::parse(cur)
                .map_err(|e| ApiError::bad("invalid_currency", e.to_string()))?;
            (tollgate_protocol::money::Money::new(amount, currency), None)
        }
    };
    let now = state.now();
    // With the client's key, our payment id and Stripe's key both derive from it and the body:
    // a retry after a failure reuses the payment the first attempt recorded and sends Stripe
    // the same parameters under the same key, so Stripe answers with the same intent.
    let (payment_id, stripe_key) = match &idem {
        Some(k) => {
            let body_text = String::from_utf8_lossy(&body);
            let mut h = Sha256::new();
            for part in ["stripe-payment-intent", k.as_str(), &body_text] {
                h.update(part.as_bytes());
                h.update([0u8]);
            }
            let id = format!("pay_{}", &hex::encode(h.finalize())[..24]);
            (id, idem_key("pi", &[k.as_str(), &body_text]))
        }
        None => {
            let id = crate::ids::prefixed("pay");
            let key = idem_key("pi", &[&id]);
            (id, key)
        }
    };
    let customer = match &user_id {
        Some(u) => state.store().stripe_customer_of(u).await?,
        None => None,
    };
    let mut md = metadata.clone();
    md.insert("tollgate_payment".into(), json!(payment_id));
    if let Some(u) = &user_id {
        md.insert("user_id".into(), json!(u));
    }
    let mut params = json!({
        "amount": money.minor,
        "currency": money.currency.as_str().to_ascii_lowercase(),
        "description": req.description,
        "metadata": md,
        "customer": customer,
        "payment_method": req.payment_method,
        "confirm": req.confirm,
    });
    if types.is_empty() {
        params["automatic_payment_methods"] = json!({"enabled": true});
    } else {
        params["payment_method_types"] = json!(types);
    }
    // Record the payment first (when it belongs to a user) so the webhook always finds it.
    if let Some(u) = &user_id {
        let p = Payment {
            id: payment_id.clone(),
            user_id: u.clone(),
            amount_minor: money.minor,
            currency: money.currency.as_str().to_string(),
            method: "stripe".into(),
            status: PayStatus::Pending,
            provider_ref: None,
            reference: None,
            fee_minor: None,
            plan: plan.as_ref().map(|(p, _)| p.clone()),
            cycle: plan.as_ref().map(|(_, c)| c.as_str().to_string()),
            subscription_id: None,
            description: req.description.clone().unwrap_or_default(),
            created_at: now,
            updated_at: now,
            expires_at: None,
            period_start: None,
            period_end: None,
        };
        match state
            .store()
            .create_payment(
                &p,
                &Cause::new("api", "POST /api/v1/billing/payment-intent"),
            )
            .await
        {
            Ok(()) => {}
            // An earlier attempt with this key and body recorded it, then failed.
            Err(StoreError::Conflict(_)) if idem.is_some() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let pi: wire::PaymentIntent = stripe
        .client
        .post("/v1/payment_intents", &params, &stripe_key)
        .await?;
    if user_id.is_some() {
        if let Err(e) = state
            .store()
            .set_payment_provider_ref(&payment_id, &pi.id, state.now())
            .await
        {
            // A retried request (same Idempotency-Key) gets the same intent, already linked.
            tracing::info!(payment = %payment_id, intent = %pi.id, error = %e, "payment intent already linked to another payment");
        }
    }
    Ok(Json(IntentAnswer {
        amount: pi.amount,
        client_secret: pi.client_secret,
        currency: pi.currency,
        cycle: plan.as_ref().map(|(_, c)| c.as_str()),
        payment_id: user_id.as_ref().map(|_| payment_id),
        payment_intent_id: pi.id,
        plan: plan.as_ref().map(|(p, _)| p.clone()),
        status: pi.status.as_str(),
    }))
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/billing/create-subscription

/// `{user_id, plan, cycle, payment_method?}` (the server picks the price) or
/// `{customer_id, price_id}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct SubscriptionRequest {
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    cycle: Option<String>,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    price_id: Option<String>,
    /// A payment method to attach and make the customer's default (e.g. `pm_card_visa`).
    #[serde(default)]
    payment_method: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct SubscriptionAnswer {
    client_secret: Option<String>,
    current_period_end: Option<String>,
    customer_id: String,
    cycle: &'static str,
    plan: String,
    price_id: String,
    status: &'static str,
    stripe_subscription_id: String,
    /// Ours, `incomplete` until the signed webhook activates it.
    subscription: crate::billing::SubView,
    /// Stripe's id (`sub_...`), as the original module answered.
    subscription_id: String,
    success: bool,
    tollgate_subscription_id: String,
}

/// A Stripe subscription, recorded `incomplete` until the signed webhook activates it.
#[utoipa::path(
    post,
    path = "/api/v1/billing/create-subscription",
    tag = "stripe",
    security(("serviceToken" = [])),
    request_body = SubscriptionRequest,
    responses(
        (status = 200, description = "The subscription, with `client_secret` when a payment is needed", body = SubscriptionAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_email`, `unknown_plan`, `unknown_cycle`, `invalid_plan`, `unknown_price`, `stripe_invalid_request`", body = ErrorDoc),
    )
)]
async fn create_subscription(
    _: ServiceAuth,
    State(state): State<AppState>,
    idem: Option<IdempotencyKey>,
    body: axum::body::Bytes,
) -> Reply<SubscriptionAnswer> {
    let stripe = configured(&state)?;
    let req: SubscriptionRequest = crate::extract::parse_json(&body)?;
    if let Some(e) = &req.email {
        valid_email(e)?;
    }
    if let Some(pm) = &req.payment_method {
        valid_stripe_id("payment_method", pm, &["pm_"])?;
    }
    let cause = Cause::new("api", "POST /api/v1/billing/create-subscription");
    // Which user, plan, cycle and Stripe price: the server decides the price.
    let (user_id, plan_id, cycle, price_id, customer) = match (
        &req.user_id,
        &req.plan,
        &req.customer_id,
        &req.price_id,
    ) {
        (Some(user), Some(plan), None, None) => {
            valid_user_id(user)?;
            let (p, c) = paid_plan(&state, plan, req.cycle.as_deref())?;
            let price = price_for(&state, &p, c).await?;
            (user.clone(), p.id.clone(), c, price, None)
        }
        (user, None, Some(customer), Some(price)) => {
            valid_stripe_id("customer_id", customer, &["cus_"])?;
            // A Price (`price_...`) or a legacy Plan id, which operators choose freely.
            valid_stripe_id("price_id", price, &[""])?;
            if req.cycle.is_some() {
                return Err(ApiError::bad(
                    "invalid_body",
                    "cycle goes with plan, not with price_id",
                )
                .into());
            }
            let (plan, cycle) = plan_for_price(&state, price).await?.ok_or_else(|| {
                ApiError::bad(
                    "unknown_price",
                    format!("price {price:?} is not the Stripe price of any plan in the catalogue"),
                )
            })?;
            let owner = state.store().stripe_user_of(customer).await?.ok_or_else(|| {
                ApiError::not_found("customer_not_found", format!("customer {customer:?} was not created through this server (POST /api/v1/billing/create-customer)"))
            })?;
            if user.as_ref().is_some_and(|u| u != &owner) {
                return Err(ApiError::bad(
                    "customer_mismatch",
                    "customer_id belongs to another user_id",
                )
                .into());
            }
            (owner, plan, cycle, price.clone(), Some(customer.clone()))
        }
        _ => {
            return Err(ApiError::bad(
                "invalid_body",
                "send {user_id, plan, cycle} or {customer_id, price_id}",
            )
            .into())
        }
    };
    // One live Stripe subscription per user and plan.
    let now = state.now();
    let subs = state.store().subscriptions_of(&user_id).await?;
    if let Some(s) = subs.iter().find(|s| {
        s.provider == "stripe"
            && s.plan == plan_id
            && s.provider_ref
                .as_deref()
                .is_some_and(|r| r.starts_with("sub_"))
            && crate::billing::counts(s, now)
    }) {
        return Err(ApiError::conflict(
            "already_subscribed",
            format!(
                "user already has an active Stripe subscription {} to {plan_id:?}",
                s.id
            ),
        )
        .into());
    }
    let customer = match customer {
        Some(c) => c,
        None => {
            ensure_customer(
                &state,
                &stripe,
                &user_id,
                req.email.as_deref(),
                None,
                &cause,
            )
            .await?
            .0
        }
    };
    if let Some(pm) = &req.payment_method {
        let scope = idem.as_ref().map(IdempotencyKey::as_str).unwrap_or("");
        let _: Value = stripe
            .client
            .post(
                &format!("/v1/payment_methods/{pm}/attach"),
                &json!({"customer": customer}),
                &idem_key("attach", &[pm, &customer, scope]),
            )
            .await?;
        let _: Value = stripe
            .client
            .post(
                &format!("/v1/customers/{customer}"),
                &json!({"invoice_settings": {"default_payment_method": pm}}),
                &idem_key("default-pm", &[pm, &customer, scope]),
            )
            .await?;
    }
    let our_id = crate::ids::prefixed("sub");
    let stripe_key = match &idem {
        Some(k) => idem_key("sub", &[&user_id, k.as_str()]),
        None => idem_key("sub", &[&our_id]),
    };
    let mut params = json!({
        "customer": customer,
        "items": [item_for(&price_id)],
        "payment_behavior": stripe.payment_behavior.as_str(),
        "metadata": {"user_id": user_id, "tollgate_subscription": our_id, "plan": plan_id, "cycle": cycle.as_str()},
    });
    if stripe.payment_behavior == PaymentBehavior::DefaultIncomplete {
        params["payment_settings"] = json!({"save_default_payment_method": "on_subscription"});
        params["expand"] = json!(["latest_invoice.confirmation_secret"]);
    } else {
        params["expand"] = json!(["latest_invoice"]);
    }
    let created: wire::Subscription = stripe
        .client
        .post("/v1/subscriptions", &params, &stripe_key)
        .await?;
    let link = state
        .store()
        .stripe_link_sub(
            &crate::store::stripe::SubLink {
                stripe_sub_id: created.id.clone(),
                sub_id: our_id.clone(),
                customer_id: customer.clone(),
                last_event_at: 0,
            },
            now,
        )
        .await?;
    let (start, end) = created.period().unwrap_or((now, now));
    let sub = if link.sub_id == our_id {
        // Recorded as incomplete: the signed event grants access (see the module doc).
        let sub = Subscription {
            id: our_id.clone(),
            user_id: user_id.clone(),
            plan: plan_id.clone(),
            cycle: cycle.as_str().to_string(),
            status: SubStatus::Incomplete,
            period_start: start,
            period_end: end,
            provider: "stripe".into(),
            provider_ref: Some(created.id.clone()),
            cancel_at_period_end: created.cancel_at_period_end.unwrap_or(false),
            grace_until: None,
            created_at: now,
            updated_at: now,
        };
        crate::billing::save(&state, &sub, &cause).await?;
        sub
    } else {
        state.store().get_subscription(&link.sub_id).await?
    };
    Ok(Json(SubscriptionAnswer {
        client_secret: created.client_secret(),
        current_period_end: created.period().map(|(_, e)| rfc3339(e)),
        customer_id: customer,
        cycle: cycle.as_str(),
        plan: plan_id,
        price_id,
        status: created.status.as_str(),
        stripe_subscription_id: created.id.clone(),
        subscription: crate::billing::sub_view(&sub, state.now()),
        subscription_id: created.id,
        success: true,
        tollgate_subscription_id: sub.id,
    }))
}

// ---------------------------------------------------------------------------------------------
// GET /api/v1/billing/products

#[derive(Serialize, ToSchema)]
struct PlanPrice {
    amount_minor: i64,
    currency: String,
    cycle: &'static str,
    plan: String,
    /// Null when no Stripe price is configured or synced for it.
    stripe_price_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Products {
    /// Each plan and cycle with its price.
    plans: Vec<PlanPrice>,
    /// Stripe's active prices: `id, product, unit_amount, currency, recurring, lookup_key, active`.
    #[schema(value_type = Vec<Object>)]
    prices: Vec<Value>,
    /// Stripe's active products: `id, name, description, active, metadata`.
    #[schema(value_type = Vec<Object>)]
    products: Vec<Value>,
}

/// Stripe products and prices, and the price of each plan and cycle.
#[utoipa::path(
    get,
    path = "/api/v1/billing/products",
    tag = "stripe",
    security(("serviceToken" = [])),
    responses((status = 200, description = "Products and prices", body = Products))
)]
async fn products(_: ServiceAuth, State(state): State<AppState>) -> Reply<Products> {
    let stripe = configured(&state)?;
    let products: wire::List<Value> = stripe
        .client
        .get("/v1/products", &json!({"active": true, "limit": 100}))
        .await?;
    let prices: wire::List<Value> = stripe
        .client
        .get("/v1/prices", &json!({"active": true, "limit": 100}))
        .await?;
    let pick = |v: &Value, fields: &[&str]| -> Value {
        let mut m = Map::new();
        for f in fields {
            if let Some(x) = v.get(*f) {
                m.insert((*f).to_string(), x.clone());
            }
        }
        Value::Object(m)
    };
    let mut plans = Vec::new();
    for p in state.catalogue().all().iter().filter(|p| p.is_paid()) {
        for c in [Cycle::Monthly, Cycle::Yearly] {
            let price = price_for(&state, p, c).await.ok();
            let m = p.price(c);
            plans.push(PlanPrice {
                amount_minor: m.minor,
                currency: m.currency.as_str().to_string(),
                cycle: c.as_str(),
                plan: p.id.clone(),
                stripe_price_id: price,
            });
        }
    }
    Ok(Json(Products {
        plans,
        prices: prices
            .data
            .iter()
            .map(|p| {
                pick(
                    p,
                    &[
                        "id",
                        "product",
                        "unit_amount",
                        "currency",
                        "recurring",
                        "lookup_key",
                        "active",
                    ],
                )
            })
            .collect(),
        products: products
            .data
            .iter()
            .map(|p| pick(p, &["id", "name", "description", "active", "metadata"]))
            .collect(),
    }))
}

// ---------------------------------------------------------------------------------------------
// POST /api/v1/billing/checkout, GET /api/v1/billing/checkout/{session_id}

/// `{user_id, plan + cycle or price_id, customer_email?, success_url, cancel_url}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CheckoutRequest {
    user_id: String,
    #[serde(default)]
    price_id: Option<String>,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    cycle: Option<String>,
    #[serde(default)]
    customer_email: Option<String>,
    success_url: String,
    cancel_url: String,
}

#[derive(Serialize, ToSchema)]
struct CheckoutAnswer {
    cycle: &'static str,
    expires_at: Option<String>,
    plan: String,
    price_id: String,
    session_id: String,
    /// `success`.
    status: &'static str,
    /// Where to send the buyer.
    url: Option<String>,
}

/// A Stripe Checkout Session in subscription mode.
#[utoipa::path(
    post,
    path = "/api/v1/billing/checkout",
    tag = "stripe",
    security(("serviceToken" = [])),
    request_body = CheckoutRequest,
    responses(
        (status = 200, description = "The session", body = CheckoutAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_user_id`, `invalid_email`, `unknown_plan`, `unknown_cycle`, `invalid_plan`, `unknown_price`, `stripe_invalid_request`", body = ErrorDoc),
    )
)]
async fn checkout(
    _: ServiceAuth,
    State(state): State<AppState>,
    idem: Option<IdempotencyKey>,
    body: axum::body::Bytes,
) -> Reply<CheckoutAnswer> {
    let stripe = configured(&state)?;
    let req: CheckoutRequest = crate::extract::parse_json(&body)?;
    valid_user_id(&req.user_id)?;
    if req.user_id.len() > 200 {
        return Err(ApiError::bad(
            "invalid_user_id",
            "user_id must be at most 200 characters for Checkout's client_reference_id",
        )
        .into());
    }
    valid_url("success_url", &req.success_url)?;
    valid_url("cancel_url", &req.cancel_url)?;
    if let Some(e) = &req.customer_email {
        valid_email(e)?;
    }
    let (plan, cycle, price) = match (&req.plan, &req.price_id) {
        (Some(plan), None) => {
            let (p, c) = paid_plan(&state, plan, req.cycle.as_deref())?;
            let price = price_for(&state, &p, c).await?;
            (p.id.clone(), c, price)
        }
        (None, Some(price)) => {
            if req.cycle.is_some() {
                return Err(ApiError::bad(
                    "invalid_body",
                    "cycle goes with plan, not with price_id",
                )
                .into());
            }
            let (p, c) = plan_for_price(&state, price).await?.ok_or_else(|| {
                ApiError::bad(
                    "unknown_price",
                    format!("price {price:?} is not the Stripe price of any plan in the catalogue"),
                )
            })?;
            (p, c, price.clone())
        }
        _ => return Err(ApiError::bad("invalid_body", "send plan (+ cycle) or price_id").into()),
    };
    let customer = state.store().stripe_customer_of(&req.user_id).await?;
    let metadata = json!({"user_id": req.user_id, "plan": plan, "cycle": cycle.as_str()});
    let params = json!({
        "mode": "subscription",
        "line_items": [{"price": price, "quantity": 1}],
        "success_url": req.success_url,
        "cancel_url": req.cancel_url,
        "client_reference_id": req.user_id,
        "customer": customer,
        "customer_email": if customer.is_none() { req.customer_email.clone() } else { None },
        "metadata": metadata,
        "subscription_data": {"metadata": metadata},
    });
    let key = match &idem {
        Some(k) => idem_key("checkout", &[&req.user_id, k.as_str()]),
        None => idem_key("checkout", &[&req.user_id, &crate::ids::random_hex(12)]),
    };
    let session: wire::CheckoutSession = stripe
        .client
        .post("/v1/checkout/sessions", &params, &key)
        .await?;
    Ok(Json(CheckoutAnswer {
        cycle: cycle.as_str(),
        expires_at: session.expires_at.map(rfc3339),
        plan,
        price_id: price,
        session_id: session.id,
        status: "success",
        url: session.url,
    }))
}

#[derive(Serialize, ToSchema)]
struct CheckoutStatus {
    customer_id: Option<String>,
    expires_at: Option<String>,
    mode: Option<String>,
    payment_status: Option<String>,
    session_id: String,
    status: Option<String>,
    /// Ours, once the subscription is linked.
    subscription: Option<crate::billing::SubView>,
    /// Stripe's subscription id.
    subscription_id: Option<String>,
    user_id: Option<String>,
}

/// A Checkout Session: status, payment status, Stripe's subscription and ours.
#[utoipa::path(
    get,
    path = "/api/v1/billing/checkout/{session_id}",
    tag = "stripe",
    security(("serviceToken" = [])),
    params(("session_id" = String, Path, description = "`cs_...`")),
    responses(
        (status = 200, description = "The session", body = CheckoutStatus),
        (status = 400, description = "`invalid_body`: not a Checkout Session id", body = ErrorDoc),
    )
)]
async fn checkout_status(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(session_id): Path<String>,
) -> Reply<CheckoutStatus> {
    let stripe = configured(&state)?;
    if !is_stripe_id(&session_id, "cs_") {
        return Err(ApiError::not_found(
            "checkout_session_not_found",
            format!(
                "{:?} is not a Checkout Session id",
                session_id.chars().take(64).collect::<String>()
            ),
        )
        .into());
    }
    let s: wire::CheckoutSession = stripe
        .client
        .get(&format!("/v1/checkout/sessions/{session_id}"), &json!({}))
        .await?;
    let stripe_sub = s
        .subscription
        .as_ref()
        .and_then(|x| x.id())
        .map(str::to_string);
    let ours = match &stripe_sub {
        Some(id) => match state.store().stripe_sub_link(id).await? {
            Some(l) => Some(crate::billing::sub_view(
                &state.store().get_subscription(&l.sub_id).await?,
                state.now(),
            )),
            None => None,
        },
        None => None,
    };
    Ok(Json(CheckoutStatus {
        customer_id: s.customer.as_ref().and_then(|c| c.id()).map(str::to_string),
        expires_at: s.expires_at.map(rfc3339),
        mode: s.mode.clone(),
        payment_status: s.payment_status.clone(),
        session_id: s.id.clone(),
        status: s.status.clone(),
        subscription: ours,
        subscription_id: stripe_sub,
        user_id: s.user_id().map(str::to_string),
    }))
}

/// The Stripe endpoints. Every one needs Stripe configured (else 503 `provider_not_configured`)
/// and may pass on a mapped Stripe failure; the OpenAPI document (`openapi.rs`) adds those answers to every
/// operation tagged `stripe` (see `PROVIDER_ANSWERS` there).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_customer,
    payment_intent,
    create_subscription,
    products,
    checkout,
    checkout_status,
    webhook::handle
))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/billing/create-customer", post(create_customer))
        .route("/api/v1/billing/payment-intent", post(payment_intent))
        .route(
            "/api/v1/billing/create-subscription",
            post(create_subscription),
        )
        .route("/api/v1/billing/products", get(products))
        .route("/api/v1/billing/checkout", post(checkout))
        .route(
            "/api/v1/billing/checkout/{session_id}",
            get(checkout_status),
        )
        .route(
            "/api/v1/billing/webhook",
            post(webhook::handle).layer(axum::extract::DefaultBodyLimit::max(
                super::WEBHOOK_BODY_LIMIT,
            )),
        )
        .route("/api/v1/billing/report-usage", post(meter::report_usage))
        .route("/api/v1/billing/usage-drift", get(meter::drift_report))
}

/// Background work: the periodic meter export.
pub fn spawn_background(state: &AppState, stop: tokio::sync::watch::Receiver<bool>) {
    if let Some(stripe) = state.providers().stripe.clone() {
        if let (Some(_), Some(every)) = (&stripe.meter_event_name, stripe.export_interval) {
            tokio::spawn(meter::periodic(state.clone(), stripe, every, stop));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_stripe_id;

    #[test]
    fn a_stripe_id_is_its_prefix_then_letters_digits_and_underscores() {
        assert!(is_stripe_id("sub_1AbC", "sub_"));
        assert!(is_stripe_id("price_x_y", "price_"));
        assert!(!is_stripe_id("price_1", "sub_"), "wrong prefix");
        for hostile in [
            "sub_../v1/customers",
            "sub_1?expand[]=x",
            "sub_1%2F",
            "sub_1 x",
            "sub_é",
        ] {
            assert!(
                !is_stripe_id(hostile, "sub_"),
                "{hostile:?} reaches a Stripe path"
            );
        }
        let long = format!("sub_{}", "a".repeat(251));
        assert!(is_stripe_id(&long, "sub_"));
        assert!(!is_stripe_id(&format!("{long}a"), "sub_"), "over 255 bytes");
    }
}
