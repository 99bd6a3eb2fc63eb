//! PayPal (REST): Orders v2 checkout that buys one plan period, and verified webhooks.
//!
//! # Flow
//! 1. `POST /billing/paypal/order` `{user_id, plan, cycle}` (service token): the server prices
//!    the plan from the catalogue (pro monthly → `"29.00"` EUR), records a pending `pay_…`
//!    payment with the plan and cycle, and creates a PayPal order whose `custom_id` and
//!    `invoice_id` are that payment id, with `PayPal-Request-Id: tollgate-order-<payment id>`
//!    (a retry, ours or the client's with the same `Idempotency-Key`, reuses it, so PayPal
//!    answers with the same order). PayPal's order id becomes the payment's provider reference.
//!    The answer carries the approve (`approve`, or `payer-action`) link.
//! 2. The buyer approves at PayPal and returns to `PAYPAL_RETURN_URL` (default
//!    `<public_url>/billing/paypal/return`, which captures too).
//! 3. `POST /billing/paypal/capture/{order_id}` (service token) captures with
//!    `PayPal-Request-Id: tollgate-capture-<payment id>`, checks the captured amount and
//!    currency against the payment exactly, then `billing::settle` moves the payment to
//!    `succeeded`, which buys one period (extending the current one when paid early). A second
//!    call meets `ORDER_ALREADY_CAPTURED` (or PayPal's replay), reads the order, finds the
//!    payment already settled and grants nothing. A `PENDING` capture leaves the payment
//!    pending until `PAYMENT.CAPTURE.COMPLETED`. A captured amount that differs from ours never
//!    grants: the payment is marked `failed` with the difference in the ledger and the call
//!    answers 409 `amount_mismatch` (the operator refunds it in PayPal).
//! 4. `POST /billing/paypal/webhook` is verified before it is trusted (see [`webhook`]),
//!    deduplicated by event id, and handles `PAYMENT.CAPTURE.COMPLETED` (amount checked),
//!    `.DENIED` (→ failed), `.PENDING` (nothing), `.REFUNDED` and `.REVERSED` (a full refund
//!    → refunded, which takes back the period the payment bought; a partial one is recorded
//!    on the event and keeps the period). Other event types are acknowledged and ignored.
//!
//! # Client-chosen amounts (the original `{intent, purchase_units}` form)
//! The original body is accepted for compatibility and creates a **plain payment without a
//! plan**: it is recorded and captured like any other, but a successful capture grants
//! nothing. A body that names a `plan` (or `cycle`) *and* carries an amount (either form) is
//! **refused** with 400 `client_amount_not_allowed`: plans are priced by the server only. The
//! user of an original-form order is `user_id`, else `purchase_units[0].custom_id`; PayPal's
//! `custom_id`/`invoice_id` are always our payment id.
//!

use crate::auth::ServiceAuth;
use crate::billing;
use crate::billing::events::Begin;
use crate::error::ErrorDoc;
use crate::error::{json_error, ApiError};
use crate::extract::IdempotencyKey;
use crate::keys::{rfc3339, valid_user_id};
use crate::providers::paypal::wire::{self, Amount, Capture, CaptureOutcome, Order};
use crate::providers::paypal::{webhook, PayPal, PayPalError};
use crate::state::AppState;
use crate::store::{Cause, PayStatus, Payment, Settled, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tollgate_protocol::money::{Currency, Money};
use tollgate_protocol::plans::Cycle;
use utoipa::{IntoParams, ToSchema};

const SETTINGS: &str = "PAYPAL_CLIENT_ID and PAYPAL_SECRET";
/// PayPal keeps an unpaid order for three days; our pending payment expires with it.
const ORDER_LIFETIME_SECS: i64 = 3 * 86_400;

fn paypal(state: &AppState) -> Result<&PayPal, ApiError> {
    state
        .providers()
        .paypal
        .as_deref()
        .ok_or_else(|| crate::providers::not_configured("PayPal", SETTINGS))
}

// ---------------------------------------------------------------------------------------------
// Orders

/// Both body forms of `POST /billing/paypal/order`, told apart by `purchase_units`:
/// `{user_id, plan, cycle}` (priced by the server), or the original `{intent: "CAPTURE",
/// purchase_units: [{amount: {currency_code, value}, custom_id (the user), description?}]}`, a
/// plain payment that grants no plan.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrderRequest {
    user_id: Option<String>,
    plan: Option<String>,
    cycle: Option<String>,
    /// Refused next to a plan; present only so the refusal can say why.
    #[schema(value_type = Option<Object>)]
    amount: Option<Value>,
    currency: Option<String>,
    /// Only `CAPTURE`.
    intent: Option<String>,
    /// Exactly one.
    purchase_units: Option<Vec<LegacyUnit>>,
    description: Option<String>,
}

/// A purchase unit of the original form. Other PayPal fields (items, shipping...) are accepted
/// and not forwarded.
#[derive(Deserialize, ToSchema)]
struct LegacyUnit {
    amount: LegacyAmount,
    custom_id: Option<String>,
    description: Option<String>,
}

#[derive(Deserialize, ToSchema)]
struct LegacyAmount {
    currency_code: String,
    /// A decimal string such as `"29.00"`.
    #[schema(value_type = String)]
    value: Value,
}

/// What an order is for, decided before anything is written.
struct OrderPlan {
    user_id: String,
    money: Money,
    plan: Option<(String, Cycle)>,
    description: String,
}

fn refuse_client_amount() -> ApiError {
    ApiError::bad(
        "client_amount_not_allowed",
        "an order for a plan is priced by the server: send {user_id, plan, cycle} without an amount \
         (an original-form order with purchase_units and no plan is recorded as a plain payment that grants nothing)",
    )
}

fn decide(state: &AppState, req: OrderRequest) -> Result<OrderPlan, ApiError> {
    let names_plan = req.plan.is_some() || req.cycle.is_some();
    let Some(units) = req.purchase_units else {
        if req.intent.is_some() {
            return Err(ApiError::bad(
                "invalid_body",
                "purchase_units: required with intent (or send {user_id, plan, cycle})",
            ));
        }
        if req.amount.is_some() || req.currency.is_some() {
            return Err(refuse_client_amount());
        }
        let user_id = req
            .user_id
            .ok_or_else(|| ApiError::bad("invalid_body", "user_id: missing field"))?;
        valid_user_id(&user_id)?;
        let plan_id = req
            .plan
            .ok_or_else(|| ApiError::bad("invalid_body", "plan: missing field"))?;
        let (plan, cycle) = crate::plans::paid(state, &plan_id, req.cycle.as_deref())?;
        let money = plan.price(cycle);
        if money.minor <= 0 {
            return Err(ApiError::bad(
                "invalid_plan",
                format!("{:?} has no {} price to pay", plan.id, cycle.as_str()),
            ));
        }
        let description = format!("{} plan, {}", plan.name, cycle.as_str());
        return Ok(OrderPlan {
            user_id,
            money,
            plan: Some((plan.id.clone(), cycle)),
            description,
        });
    };
    // The original form: a client-chosen amount, so never a plan.
    if names_plan || req.amount.is_some() || req.currency.is_some() {
        return Err(refuse_client_amount());
    }
    let intent = req.intent.unwrap_or_else(|| "CAPTURE".to_string());
    if intent != "CAPTURE" {
        return Err(ApiError::bad(
            "invalid_body",
            format!("intent: {intent:?} is not supported; only \"CAPTURE\""),
        ));
    }
    let [unit] = <[LegacyUnit; 1]>::try_from(units).map_err(|_| {
        ApiError::bad(
            "invalid_body",
            "purchase_units: exactly one purchase unit is supported",
        )
    })?;
    let currency = Currency::parse(&unit.amount.currency_code).map_err(|e| {
        ApiError::bad(
            "invalid_amount",
            format!("purchase_units[0].amount.currency_code: {e}"),
        )
    })?;
    let parsed = match &unit.amount.value {
        Value::String(s) => Money::parse_decimal(s, currency),
        Value::Number(n) => Money::from_json_number(n, currency),
        _ => {
            return Err(ApiError::bad(
                "invalid_amount",
                "purchase_units[0].amount.value: expected a decimal string such as \"29.00\"",
            ))
        }
    };
    let money = parsed.map_err(|e| {
        ApiError::bad(
            "invalid_amount",
            format!("purchase_units[0].amount.value: {e}"),
        )
    })?;
    if money.minor <= 0 {
        return Err(ApiError::bad(
            "invalid_amount",
            "purchase_units[0].amount.value: must be more than zero",
        ));
    }
    let user_id = req.user_id.or(unit.custom_id).ok_or_else(|| {
        ApiError::bad(
            "invalid_body",
            "user_id: missing (or purchase_units[0].custom_id)",
        )
    })?;
    valid_user_id(&user_id)?;
    let description = unit
        .description
        .or(req.description)
        .unwrap_or_else(|| "Payment".to_string());
    if description.chars().count() > 100 || description.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_body",
            "description: at most 100 characters without control characters",
        ));
    }
    Ok(OrderPlan {
        user_id,
        money,
        plan: None,
        description,
    })
}

/// Our payment id for a request: random, or derived from the client's `Idempotency-Key` so
/// a retried POST finds the payment (and PayPal the `PayPal-Request-Id`) it made before. A
/// retry whose first answer was stored never gets here (see [`crate::idempotency`]); this
/// covers the retry of an attempt that failed after recording the payment.
fn payment_id_for(key: Option<&IdempotencyKey>) -> (String, bool) {
    let Some(key) = key else {
        return (crate::ids::prefixed("pay"), false);
    };
    let digest = Sha256::digest(format!("paypal-order\n{}", key.as_str()).as_bytes());
    (format!("pay_{}", &hex::encode(digest)[..24]), true)
}

/// A link of a PayPal order (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, ToSchema)]
struct OrderLink {
    href: String,
    method: Option<String>,
    rel: String,
}

/// A PayPal order we created (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, ToSchema)]
struct OrderAnswer {
    amount: Amount,
    amount_minor: i64,
    /// Where to send the buyer.
    approve_url: Option<String>,
    currency: String,
    cycle: Option<String>,
    /// The PayPal order id.
    id: String,
    /// PayPal's links, with a `rel: "approve"` one.
    links: Vec<OrderLink>,
    /// Our payment, `pending` until the capture.
    payment_id: String,
    plan: Option<String>,
    /// `CREATED`, ...
    status: &'static str,
    user_id: String,
}

fn order_json(order: &Order, payment: &Payment) -> OrderAnswer {
    let mut links: Vec<OrderLink> = order
        .links
        .iter()
        .map(|l| OrderLink {
            href: l.href.clone(),
            method: l.method.clone(),
            rel: l.rel.clone(),
        })
        .collect();
    let approve = order.approve_link().map(str::to_string);
    // Clients of the original module look for rel "approve"; PayPal says "payer-action" when a
    // payment source is given. Same page.
    if !order.links.iter().any(|l| l.rel == "approve") {
        if let Some(href) = &approve {
            links.push(OrderLink {
                href: href.clone(),
                method: Some("GET".into()),
                rel: "approve".into(),
            });
        }
    }
    let money = Money::new(
        payment.amount_minor,
        Currency::parse(&payment.currency).unwrap_or(Currency::EUR),
    );
    OrderAnswer {
        amount: Amount::from_money(money),
        amount_minor: payment.amount_minor,
        approve_url: approve,
        currency: payment.currency.clone(),
        cycle: payment.cycle.clone(),
        id: order.id.clone(),
        links,
        payment_id: payment.id.clone(),
        plan: payment.plan.clone(),
        status: order.status.as_str(),
        user_id: payment.user_id.clone(),
    }
}

/// A PayPal order, priced by the server for `{user_id, plan, cycle}`; the original
/// `{intent, purchase_units}` form is a plain payment that grants no plan.
#[utoipa::path(
    post,
    path = "/billing/paypal/order",
    tag = "paypal",
    security(("serviceToken" = [])),
    request_body = OrderRequest,
    responses(
        (status = 200, description = "The order, to be approved by the buyer", body = OrderAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_amount`, `client_amount_not_allowed`, `invalid_user_id`, `unknown_plan`, `unknown_cycle`, `invalid_plan`", body = ErrorDoc),
    )
)]
async fn create_order(
    _: ServiceAuth,
    State(state): State<AppState>,
    idem: Option<IdempotencyKey>,
    body: Bytes,
) -> Result<Json<OrderAnswer>, ApiError> {
    let pp = paypal(&state)?;
    let req: OrderRequest = crate::extract::parse_json(&body)?;
    let decided = decide(&state, req)?;
    let (payment_id, keyed) = payment_id_for(idem.as_ref());
    let now = state.now();
    let new = Payment {
        id: payment_id.clone(),
        user_id: decided.user_id.clone(),
        amount_minor: decided.money.minor,
        currency: decided.money.currency.as_str().to_string(),
        method: "paypal".into(),
        status: PayStatus::Pending,
        provider_ref: None,
        reference: None,
        fee_minor: None,
        plan: decided.plan.as_ref().map(|(p, _)| p.clone()),
        cycle: decided.plan.as_ref().map(|(_, c)| c.as_str().to_string()),
        subscription_id: None,
        description: decided.description.clone(),
        created_at: now,
        updated_at: now,
        expires_at: Some(now + ORDER_LIFETIME_SECS),
        period_start: None,
        period_end: None,
    };
    let cause = Cause::new("api", "POST /billing/paypal/order");
    let payment = match state.store().create_payment(&new, &cause).await {
        Ok(()) => new,
        Err(StoreError::Conflict(_)) if keyed => {
            let old = state.store().get_payment(&payment_id).await?;
            let same = old.user_id == new.user_id
                && old.amount_minor == new.amount_minor
                && old.currency == new.currency
                && old.plan == new.plan
                && old.cycle == new.cycle
                && old.method == new.method;
            if !same {
                return Err(ApiError::conflict(
                    "idempotency_mismatch",
                    "this Idempotency-Key was used for a different order",
                ));
            }
            if let Some(order_id) = &old.provider_ref {
                let order = pp
                    .get_order(order_id)
                    .await
                    .map_err(|e| e.into_api("reading a replayed PayPal order"))?;
                return Ok(Json(order_json(&order, &old)));
            }
            old
        }
        Err(e) => return Err(e.into()),
    };
    let (return_url, cancel_url) = pp.urls(&state.origin());
    let request = wire::CreateOrder {
        intent: "CAPTURE",
        purchase_units: vec![wire::PurchaseUnitRequest {
            reference_id: "default".into(),
            custom_id: payment.id.clone(),
            invoice_id: payment.id.clone(),
            description: decided.description.chars().take(127).collect(),
            amount: Amount::from_money(decided.money),
        }],
        payment_source: wire::PaymentSource {
            paypal: wire::PayPalSource {
                experience_context: wire::ExperienceContext {
                    return_url,
                    cancel_url,
                    user_action: "PAY_NOW",
                    shipping_preference: "NO_SHIPPING",
                },
            },
        },
    };
    let request_id = format!("tollgate-order-{}", payment.id);
    let order = match pp.create_order(&request, &request_id).await {
        Ok(o) => o,
        Err(e) => {
            // The payment stays pending without an order; a retry with the same
            // Idempotency-Key resumes it, otherwise it expires with the order lifetime.
            return Err(e.into_api("creating a PayPal order"));
        }
    };
    if !wire::valid_resource_id(&order.id) {
        return Err(PayPalError::Decode(format!("order id {:?}", order.id))
            .into_api("creating a PayPal order"));
    }
    state
        .store()
        .set_payment_provider_ref(&payment.id, &order.id, state.now())
        .await?;
    tracing::info!(payment = %payment.id, order = %order.id, amount = %decided.money, plan = ?payment.plan, "PayPal order created");
    let mut payment = payment;
    payment.provider_ref = Some(order.id.clone());
    Ok(Json(order_json(&order, &payment)))
}

// ---------------------------------------------------------------------------------------------
// Captures

/// What a capture means for one payment.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Paid {
        fee: Option<i64>,
    },
    Waiting,
    Failed,
    Refunded,
    /// Not the money we asked for: never grants.
    Mismatch(String),
}

fn judge(payment: &Payment, capture: &Capture) -> Verdict {
    let outcome = wire::capture_outcome(capture.status);
    let expected = Currency::parse(&payment.currency)
        .map(|c| Money::new(payment.amount_minor, c))
        .ok();
    let check = || -> Result<(), String> {
        if let Some(c) = &capture.custom_id {
            if c != &payment.id {
                return Err(format!(
                    "capture {} belongs to {c:?}, not {}",
                    capture.id, payment.id
                ));
            }
        }
        let Some(expected) = expected else {
            return Err(format!("payment currency {:?} unknown", payment.currency));
        };
        match capture.amount.to_money() {
            Ok(got) if got == expected => Ok(()),
            Ok(got) => Err(format!(
                "PayPal captured {got} (capture {}), the order was for {expected}",
                capture.id
            )),
            Err(e) => Err(format!(
                "PayPal captured an unreadable amount {:?} {:?} ({e})",
                capture.amount.value, capture.amount.currency_code
            )),
        }
    };
    match outcome {
        CaptureOutcome::Paid => match check() {
            Ok(()) => Verdict::Paid {
                fee: expected.and_then(|m| capture.fee(m.currency)),
            },
            Err(why) => Verdict::Mismatch(why),
        },
        CaptureOutcome::Waiting => Verdict::Waiting,
        CaptureOutcome::Failed => Verdict::Failed,
        CaptureOutcome::Refunded => Verdict::Refunded,
    }
}

const OPEN: &[PayStatus] = &[PayStatus::Pending, PayStatus::Expired];

/// Applies a verdict through `billing::settle` (idempotent: a settled payment is unchanged).
async fn apply(
    state: &AppState,
    payment: &Payment,
    verdict: &Verdict,
    cause: &Cause,
) -> Result<(Payment, bool), ApiError> {
    let settled = match verdict {
        Verdict::Paid { fee } => {
            billing::settle(state, &payment.id, OPEN, PayStatus::Succeeded, *fee, cause).await?
        }
        Verdict::Failed => {
            billing::settle(state, &payment.id, OPEN, PayStatus::Failed, None, cause).await?
        }
        Verdict::Mismatch(why) => {
            let cause = Cause::new(
                &cause.kind,
                format!("{} amount_mismatch: {why}", cause.reference),
            );
            tracing::warn!(payment = %payment.id, %why, "PayPal amount mismatch: payment failed, nothing granted");
            billing::settle(state, &payment.id, OPEN, PayStatus::Failed, None, &cause).await?
        }
        Verdict::Refunded => {
            billing::settle(
                state,
                &payment.id,
                &[
                    PayStatus::Pending,
                    PayStatus::Expired,
                    PayStatus::Succeeded,
                    PayStatus::Failed,
                ],
                PayStatus::Refunded,
                None,
                cause,
            )
            .await?
        }
        Verdict::Waiting => return Ok((state.store().get_payment(&payment.id).await?, false)),
    };
    Ok(match settled {
        Settled::Applied { payment, .. } => (payment, true),
        Settled::Unchanged(p) => (p, false),
    })
}

/// A captured (or still waiting) order (fields in alphabetical order, as the `json!` map this
/// replaced).
#[derive(Serialize, ToSchema)]
struct CaptureAnswer {
    amount_minor: i64,
    capture_id: Option<String>,
    capture_status: Option<&'static str>,
    /// Whether this call changed the payment.
    changed: bool,
    currency: String,
    cycle: Option<String>,
    fee_minor: Option<i64>,
    /// The PayPal order id.
    id: String,
    payment_id: String,
    payment_status: &'static str,
    period_end: Option<String>,
    period_start: Option<String>,
    plan: Option<String>,
    /// `COMPLETED`, ...
    status: &'static str,
    subscription_id: Option<String>,
    user_id: String,
}

fn capture_json(
    order: &Order,
    capture: Option<&Capture>,
    p: &Payment,
    changed: bool,
) -> CaptureAnswer {
    CaptureAnswer {
        amount_minor: p.amount_minor,
        capture_id: capture.map(|c| c.id.clone()),
        capture_status: capture.map(|c| c.status.as_str()),
        changed,
        currency: p.currency.clone(),
        cycle: p.cycle.clone(),
        fee_minor: p.fee_minor,
        id: order.id.clone(),
        payment_id: p.id.clone(),
        payment_status: p.status.as_str(),
        period_end: p.period_end.map(rfc3339),
        period_start: p.period_start.map(rfc3339),
        plan: p.plan.clone(),
        status: order.status.as_str(),
        subscription_id: p.subscription_id.clone(),
        user_id: p.user_id.clone(),
    }
}

/// Captures an order and settles its payment; shared by the API and the buyer's return.
async fn capture(state: &AppState, order_id: &str, via: &str) -> Result<Response, ApiError> {
    let pp = paypal(state)?;
    let unknown = || {
        ApiError::not_found(
            "order_not_found",
            format!("no PayPal order {order_id:?} was created by this server"),
        )
    };
    if !wire::valid_resource_id(order_id) {
        return Err(unknown());
    }
    let payment = state
        .store()
        .payment_by_provider_ref("paypal", order_id)
        .await?
        .ok_or_else(unknown)?;
    let request_id = format!("tollgate-capture-{}", payment.id);
    let order = match pp.capture_order(order_id, &request_id).await {
        Ok(o) => o,
        Err(e) if e.has_issue("ORDER_ALREADY_CAPTURED") => pp
            .get_order(order_id)
            .await
            .map_err(|e| e.into_api("reading a captured PayPal order"))?,
        Err(e) if e.has_issue("ORDER_NOT_APPROVED") || e.has_issue("PAYER_ACTION_REQUIRED") => {
            return Err(ApiError::conflict(
                "order_not_approved",
                format!("the buyer has not approved PayPal order {order_id} yet; send them to its approve link"),
            ))
        }
        Err(e) if e.status() == Some(404) => return Err(unknown()),
        Err(e) if e.status() == Some(422) => {
            let issue = e.issue();
            tracing::info!(order = %order_id, %issue, "PayPal refused a capture");
            return Err(ApiError::conflict(
                "capture_refused",
                format!("PayPal refused to capture order {order_id} ({issue}); the payment stays pending and the buyer may approve again"),
            ));
        }
        Err(e) => return Err(e.into_api("capturing a PayPal order")),
    };
    let Some(capture) = order.captures().next().cloned() else {
        let p = state.store().get_payment(&payment.id).await?;
        return Ok(Json(capture_json(&order, None, &p, false)).into_response());
    };
    let verdict = judge(&payment, &capture);
    let cause = Cause::new(
        "api",
        format!("{via} order={order_id} capture={}", capture.id),
    );
    let (p, changed) = apply(state, &payment, &verdict, &cause).await?;
    match verdict {
        Verdict::Mismatch(why) => Ok(json_error(
            StatusCode::CONFLICT,
            "amount_mismatch",
            format!(
                "{why}; payment {} is marked failed and nothing was granted (refund it in PayPal)",
                p.id
            ),
        )),
        Verdict::Failed => Ok(json_error(
            StatusCode::CONFLICT,
            "capture_declined",
            format!(
                "PayPal declined capture {} of order {order_id}; payment {} failed",
                capture.id, p.id
            ),
        )),
        Verdict::Paid { .. } | Verdict::Waiting | Verdict::Refunded => {
            if changed {
                tracing::info!(payment = %p.id, order = %order_id, status = %p.status.as_str(), "PayPal capture settled");
            }
            Ok(Json(capture_json(&order, Some(&capture), &p, changed)).into_response())
        }
    }
}

/// Capture an approved PayPal order: the amount is checked, and one plan period is bought once.
#[utoipa::path(
    post,
    path = "/billing/paypal/capture/{order_id}",
    tag = "paypal",
    security(("serviceToken" = [])),
    params(("order_id" = String, Path, description = "The PayPal order id")),
    responses(
        (status = 200, description = "Captured (or waiting, refunded)", body = CaptureAnswer),
        (status = 404, description = "`order_not_found`: no such order was created by this server", body = ErrorDoc),
        (status = 409, description = "`order_not_approved`, `capture_refused`, `capture_declined`, `amount_mismatch`", body = ErrorDoc),
    )
)]
async fn capture_handler(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(order_id): Path<String>,
) -> Result<Response, ApiError> {
    capture(
        &state,
        &order_id,
        &format!("POST /billing/paypal/capture/{order_id}"),
    )
    .await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ReturnQuery {
    /// The PayPal order id.
    token: Option<String>,
}

/// The buyer's return from PayPal (`?token=<order id>`): captures, like the API call. Public,
/// because the buyer's browser carries no service token; capturing an approved order is what
/// its buyer asked for, and every effect is idempotent.
#[utoipa::path(
    get,
    path = "/billing/paypal/return",
    tag = "paypal",
    params(ReturnQuery),
    responses(
        (status = 200, description = "Captured (or waiting, refunded)", body = CaptureAnswer),
        (status = 404, description = "`order_not_found`", body = ErrorDoc),
        (status = 409, description = "`order_not_approved`, `capture_refused`, `capture_declined`, `amount_mismatch`", body = ErrorDoc),
    )
)]
async fn return_handler(
    State(state): State<AppState>,
    Query(q): Query<ReturnQuery>,
) -> Result<Response, ApiError> {
    let order_id = q.token.unwrap_or_default();
    capture(&state, &order_id, "GET /billing/paypal/return").await
}

#[derive(Serialize, ToSchema)]
struct Cancelled {
    message: &'static str,
    order_id: Option<String>,
    /// `cancelled`.
    status: &'static str,
}

/// The buyer cancelled at PayPal: nothing to do (the pending payment expires with the order).
#[utoipa::path(
    get,
    path = "/billing/paypal/cancel",
    tag = "paypal",
    params(ReturnQuery),
    responses((status = 200, description = "Nothing was charged", body = Cancelled))
)]
async fn cancel_handler(
    State(state): State<AppState>,
    Query(q): Query<ReturnQuery>,
) -> Result<Json<Cancelled>, ApiError> {
    paypal(&state)?;
    Ok(Json(Cancelled {
        message: "the PayPal payment was cancelled; nothing was charged",
        order_id: q.token,
        status: "cancelled",
    }))
}

// ---------------------------------------------------------------------------------------------
// Webhooks

/// A PayPal webhook delivery (fields in alphabetical order, as the `json!` maps this replaced).
#[derive(Serialize, ToSchema)]
struct PayPalAck {
    /// Present (true) when the event had been received before.
    #[serde(skip_serializing_if = "Option::is_none")]
    duplicate: Option<bool>,
    event_id: String,
    /// What was done (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<String>,
    received: bool,
}

/// PayPal webhook, verified offline (RSA-SHA256 with PayPal's certificate) before it is
/// trusted; events deduplicated.
#[utoipa::path(
    post,
    path = "/billing/paypal/webhook",
    tag = "webhooks",
    request_body(content = Object, description = "A PayPal event, exactly as PayPal sent it (with its PAYPAL-TRANSMISSION-* headers)"),
    responses(
        (status = 200, description = "Received", body = PayPalAck),
        (status = 400, description = "`invalid_signature`, `invalid_json`, `invalid_event`", body = ErrorDoc),
        (status = 413, description = "`body_too_large`", body = ErrorDoc),
        (status = 503, description = "`provider_not_configured` (PayPal or PAYPAL_WEBHOOK_ID), `event_in_progress`, `retry_later`, `provider_unavailable` or `store_unavailable`: PayPal delivers it again", body = ErrorDoc),
    )
)]
async fn webhook_handler(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<PayPalAck>, ApiError> {
    let pp = paypal(&state)?;
    let Some(webhook_id) = pp.webhook_id() else {
        return Err(crate::providers::not_configured(
            "PayPal webhooks",
            "PAYPAL_WEBHOOK_ID",
        ));
    };
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let t = webhook::Transmission {
        id: h("paypal-transmission-id"),
        time: h("paypal-transmission-time"),
        sig: h("paypal-transmission-sig"),
        cert_url: h("paypal-cert-url"),
        auth_algo: h("paypal-auth-algo"),
    };
    let now_real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    match pp.certs().verify(&t, webhook_id, &body, now_real).await {
        Ok(()) => {}
        Err(webhook::VerifyError::Rejected(why)) => {
            tracing::warn!(%why, transmission = %t.id.chars().take(64).collect::<String>(), "PayPal webhook rejected");
            return Err(ApiError::bad(
                "invalid_signature",
                format!("PayPal webhook not verified: {why}"),
            ));
        }
        Err(webhook::VerifyError::Unavailable(why)) => {
            tracing::warn!(%why, "PayPal webhook could not be verified now");
            return Err(ApiError::Unavailable {
                code: "provider_unavailable",
                message: "the PayPal signing certificate could not be fetched; retry later".into(),
            });
        }
    }
    let event: wire::Event = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("invalid_event", format!("PayPal event: {e}")))?;
    if event.id.is_empty() || event.id.len() > 128 {
        return Err(ApiError::bad(
            "invalid_event",
            "PayPal event id: 1-128 characters",
        ));
    }
    let payload = String::from_utf8_lossy(&body);
    let lease =
        match billing::events::begin(&state, "paypal", &event.id, &event.event_type, &payload)
            .await?
        {
            Begin::Apply(lease) => lease,
            Begin::Done(_) => {
                return Ok(Json(PayPalAck {
                    duplicate: Some(true),
                    event_id: event.id,
                    outcome: None,
                    received: true,
                }))
            }
            Begin::Busy => return Err(billing::events::busy()),
        };
    // Bounded so that this delivery never works past its lease (see `billing::events`).
    let handled = tokio::time::timeout(
        billing::events::APPLY_BUDGET,
        handle_event(&state, pp, &event),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::Unavailable {
            code: "retry_later",
            message: "the event could not be applied now; deliver it again".into(),
        })
    });
    match handled {
        Ok(outcome) => {
            lease.finish(&state, &outcome).await;
            tracing::info!(event = %event.id, kind = %event.event_type, %outcome, "PayPal event handled");
            Ok(Json(PayPalAck {
                duplicate: None,
                event_id: event.id,
                outcome: Some(outcome),
                received: true,
            }))
        }
        Err(e) => {
            // Let PayPal's retry be processed.
            lease.release(&state).await;
            Err(e)
        }
    }
}

/// Our payment for a capture or refund: by PayPal's order id, else by our id in custom_id.
async fn payment_for(
    state: &AppState,
    order_id: Option<&str>,
    ours: &[Option<&str>],
) -> Result<Option<Payment>, ApiError> {
    if let Some(order_id) = order_id.filter(|o| wire::valid_resource_id(o)) {
        if let Some(p) = state
            .store()
            .payment_by_provider_ref("paypal", order_id)
            .await?
        {
            return Ok(Some(p));
        }
    }
    for id in ours.iter().flatten() {
        if !id.starts_with("pay_") || id.len() > 64 {
            continue;
        }
        match state.store().get_payment(id).await {
            Ok(p) if p.method == "paypal" => return Ok(Some(p)),
            Ok(_) | Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

async fn handle_event(
    state: &AppState,
    pp: &PayPal,
    event: &wire::Event,
) -> Result<String, ApiError> {
    let cause = Cause::new(
        "webhook",
        format!("paypal {} {}", event.event_type, event.id),
    );
    match event.event_type.as_str() {
        "PAYMENT.CAPTURE.COMPLETED"
        | "PAYMENT.CAPTURE.DENIED"
        | "PAYMENT.CAPTURE.DECLINED"
        | "PAYMENT.CAPTURE.PENDING" => {
            let capture: Capture = serde_json::from_value(event.resource.clone())
                .map_err(|e| ApiError::bad("invalid_event", format!("resource: {e}")))?;
            let Some(payment) = payment_for(
                state,
                capture.order_id(),
                &[capture.custom_id.as_deref(), capture.invoice_id.as_deref()],
            )
            .await?
            else {
                return Ok(format!(
                    "ignored: capture {} is not for a payment of ours",
                    capture.id
                ));
            };
            let verdict = judge(&payment, &capture);
            let (p, changed) = apply(state, &payment, &verdict, &cause).await?;
            Ok(match verdict {
                Verdict::Mismatch(why) => format!("amount_mismatch: {why}; {} failed", p.id),
                _ => format!(
                    "{} {} ({})",
                    p.id,
                    p.status.as_str(),
                    if changed { "changed" } else { "unchanged" }
                ),
            })
        }
        "PAYMENT.CAPTURE.REFUNDED" | "PAYMENT.CAPTURE.REVERSED" => {
            let refund: wire::Refund = serde_json::from_value(event.resource.clone())
                .map_err(|e| ApiError::bad("invalid_event", format!("resource: {e}")))?;
            if !wire::refund_done(refund.status) {
                return Ok(format!(
                    "refund {} not completed: nothing changes",
                    refund.id
                ));
            }
            // The refund names our payment in custom_id/invoice_id; else ask PayPal about the
            // refunded capture.
            let mut capture = None;
            let mut payment = payment_for(
                state,
                None,
                &[refund.custom_id.as_deref(), refund.invoice_id.as_deref()],
            )
            .await?;
            if payment.is_none() {
                if let Some(cid) = refund.capture_id() {
                    let c = pp
                        .get_capture(cid)
                        .await
                        .map_err(|e| e.into_api("reading a refunded PayPal capture"))?;
                    payment = payment_for(state, c.order_id(), &[c.custom_id.as_deref()]).await?;
                    capture = Some(c);
                }
            }
            let Some(payment) = payment else {
                return Ok(format!(
                    "ignored: refund {} is not for a payment of ours",
                    refund.id
                ));
            };
            let full = match refund.amount.as_ref().map(Amount::to_money) {
                Some(Ok(m)) => {
                    m.currency.as_str() == payment.currency && m.minor >= payment.amount_minor
                }
                _ => false,
            };
            let full = if full {
                true
            } else {
                // Several partial refunds can add up: PayPal's capture status says.
                let c = match capture {
                    Some(c) => Some(c),
                    None => match refund.capture_id() {
                        Some(cid) => Some(
                            pp.get_capture(cid)
                                .await
                                .map_err(|e| e.into_api("reading a refunded PayPal capture"))?,
                        ),
                        None => None,
                    },
                };
                c.is_some_and(|c| c.status == wire::CaptureStatus::Refunded)
            };
            if !full {
                return Ok(format!(
                    "partial refund {} of {}: the period it bought is kept",
                    refund.id, payment.id
                ));
            }
            let (p, changed) = apply(state, &payment, &Verdict::Refunded, &cause).await?;
            Ok(format!(
                "{} {} ({})",
                p.id,
                p.status.as_str(),
                if changed { "changed" } else { "unchanged" }
            ))
        }
        other => Ok(format!("ignored: {other}")),
    }
}

/// The PayPal endpoints; the OpenAPI document (`openapi.rs`) adds 503 (`provider_not_configured`,
/// `provider_unavailable`, `provider_error`, `store_unavailable`) to those tagged `paypal`.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create_order,
    capture_handler,
    webhook_handler,
    return_handler,
    cancel_handler
))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/billing/paypal/order", post(create_order))
        .route("/billing/paypal/capture/{order_id}", post(capture_handler))
        .route(
            "/billing/paypal/webhook",
            post(webhook_handler).layer(axum::extract::DefaultBodyLimit::max(
                billing::WEBHOOK_BODY_LIMIT,
            )),
        )
        .route("/billing/paypal/return", get(return_handler))
        .route("/billing/paypal/cancel", get(cancel_handler))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payment(amount_minor: i64) -> Payment {
        Payment {
            id: "pay_0123456789abcdef01234567".into(),
            user_id: "alice".into(),
            amount_minor,
            currency: "EUR".into(),
            method: "paypal".into(),
            status: PayStatus::Pending,
            provider_ref: Some("5O190127TN364715T".into()),
            reference: None,
            fee_minor: None,
            plan: Some("pro".into()),
            cycle: Some("monthly".into()),
            subscription_id: None,
            description: "Pro plan, monthly".into(),
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            period_start: None,
            period_end: None,
        }
    }

    fn capture(status: &str, value: &str, custom_id: Option<&str>) -> Capture {
        serde_json::from_value(json!({
            "id": "3C679366HH908993F", "status": status,
            "amount": {"currency_code": "EUR", "value": value},
            "custom_id": custom_id,
            "seller_receivable_breakdown": {"paypal_fee": {"currency_code": "EUR", "value": "1.16"}}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn captures_are_judged_on_the_exact_amount() {
        let p = payment(2900);
        let ours = Some(p.id.as_str());
        assert_eq!(
            judge(&p, &capture("COMPLETED", "29.00", ours)),
            Verdict::Paid { fee: Some(116) }
        );
        assert!(matches!(
            judge(&p, &capture("COMPLETED", "28.99", ours)),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&p, &capture("COMPLETED", "290.00", ours)),
            Verdict::Mismatch(_)
        ));
        assert!(matches!(
            judge(&p, &capture("COMPLETED", "29.00", Some("pay_other"))),
            Verdict::Mismatch(_)
        ));
        assert_eq!(
            judge(&p, &capture("PENDING", "29.00", ours)),
            Verdict::Waiting
        );
        assert_eq!(
            judge(&p, &capture("DECLINED", "29.00", ours)),
            Verdict::Failed
        );
        assert_eq!(
            judge(&p, &capture("REFUNDED", "29.00", ours)),
            Verdict::Refunded
        );
        let mut usd = capture("COMPLETED", "29.00", ours);
        usd.amount.currency_code = "USD".into();
        assert!(matches!(judge(&p, &usd), Verdict::Mismatch(_)));
    }

    #[test]
    fn idempotency_keys_give_stable_payment_ids() {
        let (a, keyed) = payment_id_for(None);
        assert!(!keyed && a.starts_with("pay_") && a.len() == 28);
        let k = |s: &str| IdempotencyKey::parse(s).unwrap_or_else(|e| panic!("{e}"));
        let (b, keyed) = payment_id_for(Some(&k("order-1")));
        let (c, _) = payment_id_for(Some(&k("order-1")));
        assert!(keyed && b == c && b.len() == 28);
        assert_ne!(payment_id_for(Some(&k("order-2"))).0, b);
    }
}
