//! `POST /api/v1/billing/webhook`: Stripe events.
//!
//! 1. The `Stripe-Signature` is verified on the raw body, before anything parses it (400 when
//!    missing, forged or outside the 300 s tolerance of our clock).
//! 2. The event is claimed by id with a lease (`billing::events`): a redelivery of an event
//!    already applied answers 200 and changes nothing; one that meets the event being applied
//!    by another delivery answers 503 `event_in_progress`; one that comes after the process
//!    applying it died (its lease ran out) applies it.
//! 3. Its effect goes through `billing::save` / `billing::settle` with `webhook:<event id>` as
//!    the ledger cause. Transient failures (database, Stripe unreachable) release the claim and
//!    answer 503 so Stripe delivers again; anything else is recorded as the event's outcome
//!    and acknowledged, since a redelivery would not fare better. Every effect is conditional
//!    on the state it moves from, so applying an event again after a crash mid-way completes
//!    it without doing any part twice.
//!
//! Ordering: Stripe delivers at least once and in any order. Each linked Stripe subscription
//! keeps a watermark (the `created` time of the last event applied); an older event is
//! acknowledged and ignored, so a subscription never moves backwards. `canceled` is terminal.

use super::{configured, plan_for_price};
use crate::billing::events::{self, Begin};
use crate::error::{json_error, ApiError};
use crate::providers::stripe::client::StripeError;
use crate::providers::stripe::wire::{self, Mapped};
use crate::providers::stripe::{signature, Stripe};
use crate::state::AppState;
use crate::store::stripe::SubLink;
use crate::store::{Cause, PayStatus, Settled, StoreError, SubStatus, Subscription};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::json;

/// What happened to an event; stored as its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(String),
    Ignored(String),
}

impl Outcome {
    fn text(&self) -> String {
        match self {
            Outcome::Applied(s) => format!("applied: {s}"),
            Outcome::Ignored(s) => format!("ignored: {s}"),
        }
    }
}

#[derive(Debug)]
pub enum ApplyError {
    /// Retrying later may succeed: release the claim, answer 503.
    Transient(String),
    /// Retrying will not help: record and acknowledge.
    Permanent(String),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> ApplyError {
        match e {
            StoreError::Unavailable(c) | StoreError::Internal(c) => ApplyError::Transient(c),
            other => ApplyError::Permanent(other.to_string()),
        }
    }
}

impl From<ApiError> for ApplyError {
    fn from(e: ApiError) -> ApplyError {
        match e {
            ApiError::Unavailable { message, .. } => ApplyError::Transient(message),
            ApiError::Internal(c) => ApplyError::Transient(c),
            other => ApplyError::Permanent(other.to_string()),
        }
    }
}

impl From<StripeError> for ApplyError {
    fn from(e: StripeError) -> ApplyError {
        if e.is_transient() {
            ApplyError::Transient(e.to_string())
        } else {
            ApplyError::Permanent(e.to_string())
        }
    }
}

type Applied = Result<Outcome, ApplyError>;

fn reject(status: StatusCode, code: &str, message: String) -> Response {
    json_error(status, code, message)
}

/// What a webhook delivery is answered (Stripe and PayPal): fields in alphabetical order, as
/// the `json!` maps this replaced wrote them.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct WebhookAck {
    /// Whether the event changed anything (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<bool>,
    /// Present (true) when the event had been received before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// What was done (absent for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    pub received: bool,
}

/// Stripe webhook: `Stripe-Signature` (HMAC-SHA256, 300 s tolerance) checked on the raw body;
/// events applied once, in order per subscription.
#[utoipa::path(
    post,
    path = "/api/v1/billing/webhook",
    tag = "webhooks",
    params(("Stripe-Signature" = Option<String>, Header, description = "`t=<unix>,v1=<hex HMAC-SHA256 of t.payload>`")),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it"),
    responses(
        (status = 200, description = "Received (applied, not applicable, or a duplicate)", body = WebhookAck),
        (status = 400, description = "`invalid_signature`, `invalid_json`, `invalid_event`", body = crate::error::ErrorDoc),
        (status = 413, description = "`body_too_large`", body = crate::error::ErrorDoc),
        (status = 503, description = "`provider_not_configured` (Stripe or its webhook secret), `event_in_progress`, `retry_later` or `store_unavailable`: Stripe delivers it again", body = crate::error::ErrorDoc),
    )
)]
pub async fn handle(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let stripe = match configured(&state) {
        Ok(s) => s,
        Err(f) => return f.into_response(),
    };
    let Some(secret) = &stripe.webhook_secret else {
        return crate::providers::not_configured("Stripe webhooks", "STRIPE_WEBHOOK_SECRET")
            .into_response();
    };
    let now = state.now();
    let header = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    if let Err(e) = signature::verify(
        header,
        &body,
        secret.expose().as_bytes(),
        now,
        signature::TOLERANCE_SECS,
    ) {
        tracing::warn!(reason = %e.message(), "stripe webhook refused");
        return reject(StatusCode::BAD_REQUEST, "invalid_signature", e.message());
    }
    let event: wire::Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            let code = if e.is_syntax() || e.is_eof() {
                "invalid_json"
            } else {
                "invalid_event"
            };
            return reject(
                StatusCode::BAD_REQUEST,
                code,
                format!("not a Stripe event: {e}"),
            );
        }
    };
    if !(event.id.starts_with("evt_")
        && event.id.len() <= 255
        && event.id.bytes().all(|c| c.is_ascii_graphic()))
    {
        return reject(
            StatusCode::BAD_REQUEST,
            "invalid_event",
            "event id must look like evt_...".into(),
        );
    }
    let payload = String::from_utf8_lossy(&body);
    let lease = match events::begin(&state, "stripe", &event.id, &event.kind, &payload).await {
        Ok(Begin::Apply(lease)) => lease,
        Ok(Begin::Done(_)) => {
            tracing::info!(event = %event.id, kind = %event.kind, "stripe event already received");
            return Json(WebhookAck {
                applied: None,
                duplicate: Some(true),
                outcome: None,
                received: true,
            })
            .into_response();
        }
        Ok(Begin::Busy) => return events::busy().into_response(),
        Err(e) => return e.into_response(),
    };
    // Bounded so that this delivery never works past its lease (see `billing::events`).
    let result = tokio::time::timeout(events::APPLY_BUDGET, async {
        let _one_at_a_time = stripe.webhook_lock.lock().await;
        apply(&state, &stripe, &event).await
    })
    .await
    .unwrap_or_else(|_| {
        Err(ApplyError::Transient(format!(
            "not applied within {} s",
            events::APPLY_BUDGET.as_secs()
        )))
    });
    match result {
        Ok(outcome) => {
            tracing::info!(event = %event.id, kind = %event.kind, outcome = %outcome.text(), "stripe event handled");
            lease.finish(&state, &outcome.text()).await;
            let applied = matches!(outcome, Outcome::Applied(_));
            Json(WebhookAck {
                applied: Some(applied),
                duplicate: None,
                outcome: Some(outcome.text()),
                received: true,
            })
            .into_response()
        }
        Err(ApplyError::Permanent(why)) => {
            tracing::warn!(event = %event.id, kind = %event.kind, reason = %why, "stripe event not applicable");
            lease.finish(&state, &format!("rejected: {why}")).await;
            Json(WebhookAck {
                applied: Some(false),
                duplicate: None,
                outcome: Some("rejected".into()),
                received: true,
            })
            .into_response()
        }
        Err(ApplyError::Transient(why)) => {
            tracing::warn!(event = %event.id, kind = %event.kind, reason = %why, "stripe event failed; Stripe will deliver it again");
            lease.release(&state).await;
            ApiError::Unavailable {
                code: "retry_later",
                message: "the event could not be applied now; deliver it again".into(),
            }
            .into_response()
        }
    }
}

fn object<T: DeserializeOwned>(event: &wire::Event) -> Result<T, ApplyError> {
    serde_json::from_value(event.data.object.clone())
        .map_err(|e| ApplyError::Permanent(format!("{} object unreadable: {e}", event.kind)))
}

/// Applies one verified, first-seen event.
pub async fn apply(state: &AppState, stripe: &Stripe, event: &wire::Event) -> Applied {
    match event.kind.as_str() {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.paused"
        | "customer.subscription.resumed" => {
            let sub: wire::Subscription = object(event)?;
            on_subscription(state, &sub, event).await
        }
        "invoice.paid" | "invoice.payment_succeeded" => {
            let inv: wire::Invoice = object(event)?;
            on_invoice(state, stripe, &inv, event, true).await
        }
        "invoice.payment_failed" => {
            let inv: wire::Invoice = object(event)?;
            on_invoice(state, stripe, &inv, event, false).await
        }
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            let s: wire::CheckoutSession = object(event)?;
            on_checkout(state, stripe, &s, event).await
        }
        "payment_intent.succeeded" => {
            let pi: wire::PaymentIntent = object(event)?;
            on_intent(state, &pi, event, true).await
        }
        "payment_intent.payment_failed" => {
            let pi: wire::PaymentIntent = object(event)?;
            on_intent(state, &pi, event, false).await
        }
        other => Ok(Outcome::Ignored(format!(
            "event type {other} is not handled"
        ))),
    }
}

/// The plan and cycle a followed subscription's price stands for: a price in force, else one
/// `stripe sync` made and later replaced (subscriptions on it still renew and must not be
/// dropped). A Stripe failure while asking is transient: the event is delivered again.
async fn plan_of_followed(
    state: &AppState,
    price: &str,
) -> Result<Option<(String, tollgate_protocol::plans::Cycle)>, ApplyError> {
    if let Some(found) = plan_for_price(state, price).await? {
        return Ok(Some(found));
    }
    let Some(stripe) = state.providers().stripe.clone() else {
        return Ok(None);
    };
    match super::sync::synced_plan_of(state, &stripe, price).await {
        Ok(found) => Ok(found),
        Err(
            e @ (StripeError::Auth { .. }
            | StripeError::RateLimited
            | StripeError::Unavailable { .. }),
        ) => Err(ApplyError::Transient(format!(
            "looking up price {price}: {e}"
        ))),
        Err(_) => Ok(None),
    }
}

fn cause(event: &wire::Event) -> Cause {
    Cause::new("webhook", event.id.clone())
}

/// Our subscription for a Stripe one: linked already, or created (incomplete) from the
/// customer's user and the price's plan. `Err(reason)` when it is not ours to follow.
async fn linked(
    state: &AppState,
    sub: &wire::Subscription,
    event: &wire::Event,
) -> Result<Result<(SubLink, Subscription), String>, ApplyError> {
    if let Some(link) = state.store().stripe_sub_link(&sub.id).await? {
        let ours = state.store().get_subscription(&link.sub_id).await?;
        return Ok(Ok((link, ours)));
    }
    let Some(customer) = sub.customer.id() else {
        return Ok(Err("subscription without a customer".into()));
    };
    let user = match state.store().stripe_user_of(customer).await? {
        Some(u) => u,
        None => match sub.metadata_str("user_id") {
            Some(u) if crate::keys::valid_user_id(u).is_ok() => {
                state
                    .store()
                    .stripe_record_customer(u, customer, &cause(event), state.now())
                    .await?;
                u.to_string()
            }
            _ => {
                return Ok(Err(format!(
                    "customer {customer} belongs to no user of ours"
                )))
            }
        },
    };
    let Some(price) = sub.price_ids().into_iter().next() else {
        return Ok(Err("subscription without items".into()));
    };
    let Some((plan, cycle)) = plan_of_followed(state, &price).await? else {
        return Ok(Err(format!("price {price} is not in the catalogue")));
    };
    let now = state.now();
    let (start, end) = sub.period().unwrap_or((now, now));
    let ours = Subscription {
        id: crate::ids::prefixed("sub"),
        user_id: user,
        plan,
        cycle: cycle.as_str().to_string(),
        status: SubStatus::Incomplete,
        period_start: start,
        period_end: end,
        provider: "stripe".into(),
        provider_ref: Some(sub.id.clone()),
        cancel_at_period_end: false,
        grace_until: None,
        created_at: now,
        updated_at: now,
    };
    let link = state
        .store()
        .stripe_link_sub(
            &SubLink {
                stripe_sub_id: sub.id.clone(),
                sub_id: ours.id.clone(),
                customer_id: customer.to_string(),
                last_event_at: 0,
            },
            now,
        )
        .await?;
    if link.sub_id != ours.id {
        let existing = state.store().get_subscription(&link.sub_id).await?;
        return Ok(Ok((link, existing)));
    }
    crate::billing::save(state, &ours, &cause(event)).await?;
    Ok(Ok((link, ours)))
}

/// The subscription after Stripe says it is `mapped` (pure; unit-tested).
pub fn transition(
    current: &Subscription,
    mapped: Mapped,
    period: Option<(i64, i64)>,
    ended_at: Option<i64>,
    now: i64,
    grace_secs: i64,
) -> Subscription {
    let mut next = current.clone();
    if current.status == SubStatus::Canceled {
        return next; // terminal
    }
    if let Some((s, e)) = period {
        next.period_start = s;
        next.period_end = e;
    }
    match (current.status, mapped) {
        (_, Mapped::Unknown) => return current.clone(),
        (_, Mapped::Active) => {
            next.status = SubStatus::Active;
            next.grace_until = None;
        }
        (SubStatus::PastDue, Mapped::PastDue) => {
            next.grace_until = current.grace_until.or(Some(now + grace_secs));
        }
        // The grace period ran out already; only a payment brings access back.
        (SubStatus::Expired, Mapped::PastDue) => {}
        (SubStatus::Active | SubStatus::Incomplete, Mapped::PastDue) => {
            next.status = SubStatus::PastDue;
            next.grace_until = Some(now + grace_secs);
        }
        (SubStatus::Canceled, Mapped::PastDue) => {}
        (_, Mapped::Expired) => next.status = SubStatus::Expired,
        (_, Mapped::Canceled) => {
            next.status = SubStatus::Canceled;
            next.grace_until = None;
            next.period_end = next
                .period_end
                .min(ended_at.unwrap_or(now))
                .max(next.period_start.min(now));
        }
        // Stripe never takes a paid subscription back to incomplete.
        (SubStatus::Incomplete, Mapped::Incomplete) => {}
        (_, Mapped::Incomplete) => return current.clone(),
    }
    next
}

async fn write(
    state: &AppState,
    before: &Subscription,
    mut next: Subscription,
    event: &wire::Event,
) -> Applied {
    if &next == before {
        return Ok(Outcome::Ignored(format!(
            "subscription {} unchanged ({})",
            before.id,
            before.status.as_str()
        )));
    }
    next.updated_at = state.now();
    crate::billing::save(state, &next, &cause(event)).await?;
    Ok(Outcome::Applied(format!(
        "subscription {} {} -> {} ({}, until {})",
        next.id,
        before.status.as_str(),
        next.status.as_str(),
        next.plan,
        crate::keys::rfc3339(next.period_end)
    )))
}

fn grace_secs(state: &AppState) -> i64 {
    i64::from(state.cfg().grace_days) * 86_400
}

async fn on_subscription(
    state: &AppState,
    sub: &wire::Subscription,
    event: &wire::Event,
) -> Applied {
    let (link, ours) = match linked(state, sub, event).await? {
        Ok(x) => x,
        Err(why) => return Ok(Outcome::Ignored(why)),
    };
    if !state
        .store()
        .stripe_advance(&link.stripe_sub_id, event.created, &event.id)
        .await?
    {
        return Ok(Outcome::Ignored(format!(
            "older than the last event applied to {}",
            link.stripe_sub_id
        )));
    }
    let mut next = transition(
        &ours,
        sub.status.mapped(),
        sub.period(),
        sub.ended_at,
        state.now(),
        grace_secs(state),
    );
    if ours.status != SubStatus::Canceled {
        // A plan change made in Stripe (new price on the item) moves our plan with it.
        if let Some(price) = sub.price_ids().into_iter().next() {
            if let Some((plan, cycle)) = plan_of_followed(state, &price).await? {
                next.plan = plan;
                next.cycle = cycle.as_str().to_string();
            }
        }
        if let Some(c) = sub.cancel_at_period_end {
            next.cancel_at_period_end = c;
        }
    }
    write(state, &ours, next, event).await
}

/// An event that names a subscription we do not follow yet (`what` names the event's object):
/// read the subscription from Stripe and apply it as a subscription event would.
async fn follow_subscription(
    state: &AppState,
    stripe: &Stripe,
    stripe_sub: &str,
    event: &wire::Event,
    what: &str,
) -> Applied {
    if !super::is_stripe_id(stripe_sub, "sub_") {
        return Ok(Outcome::Ignored(format!(
            "{what} names no valid subscription id"
        )));
    }
    let sub: wire::Subscription = stripe
        .client
        .get(&format!("/v1/subscriptions/{stripe_sub}"), &json!({}))
        .await?;
    on_subscription(state, &sub, event).await
}

async fn on_invoice(
    state: &AppState,
    stripe: &Stripe,
    inv: &wire::Invoice,
    event: &wire::Event,
    paid: bool,
) -> Applied {
    let Some(stripe_sub) = inv.subscription_id() else {
        return Ok(Outcome::Ignored(format!(
            "invoice {} is not for a subscription",
            inv.id
        )));
    };
    let Some(link) = state.store().stripe_sub_link(&stripe_sub).await? else {
        // Not followed yet (the invoice event came first): read the subscription itself.
        return follow_subscription(state, stripe, &stripe_sub, event, "invoice").await;
    };
    if !state
        .store()
        .stripe_advance(&link.stripe_sub_id, event.created, &event.id)
        .await?
    {
        return Ok(Outcome::Ignored(format!(
            "older than the last event applied to {}",
            link.stripe_sub_id
        )));
    }
    let ours = state.store().get_subscription(&link.sub_id).await?;
    let now = state.now();
    let next = if paid {
        let period = inv
            .paid_period()
            .filter(|(_, e)| *e > ours.period_end)
            .or(Some((ours.period_start, ours.period_end)));
        transition(&ours, Mapped::Active, period, None, now, grace_secs(state))
    } else {
        match ours.status {
            // A failed first payment leaves it incomplete (no access was granted).
            SubStatus::Incomplete => ours.clone(),
            _ => transition(&ours, Mapped::PastDue, None, None, now, grace_secs(state)),
        }
    };
    write(state, &ours, next, event).await
}

async fn on_checkout(
    state: &AppState,
    stripe: &Stripe,
    session: &wire::CheckoutSession,
    event: &wire::Event,
) -> Applied {
    if session.mode.as_deref() != Some("subscription") {
        return Ok(Outcome::Ignored(format!(
            "checkout session {} is not in subscription mode",
            session.id
        )));
    }
    let Some(user) = session.user_id() else {
        return Ok(Outcome::Ignored(format!(
            "checkout session {} carries no user_id",
            session.id
        )));
    };
    if crate::keys::valid_user_id(user).is_err() {
        return Ok(Outcome::Ignored(
            "checkout session user_id is not valid".into(),
        ));
    }
    if let Some(customer) = session.customer.as_ref().and_then(|c| c.id()) {
        let recorded = state
            .store()
            .stripe_record_customer(user, customer, &cause(event), state.now())
            .await?;
        if recorded != customer {
            tracing::warn!(user, recorded = %recorded, session_customer = %customer, "checkout created a second Stripe customer for a user");
        }
    }
    let Some(stripe_sub) = session.subscription.as_ref().and_then(|s| s.id()) else {
        return Ok(Outcome::Ignored(format!(
            "checkout session {} has no subscription",
            session.id
        )));
    };
    // The session says little about the subscription; read it (this also orders correctly:
    // we apply Stripe's current state, stamped with this event's time).
    follow_subscription(state, stripe, stripe_sub, event, "checkout session").await
}

async fn on_intent(
    state: &AppState,
    pi: &wire::PaymentIntent,
    event: &wire::Event,
    succeeded: bool,
) -> Applied {
    let mut payment = state
        .store()
        .payment_by_provider_ref("stripe", &pi.id)
        .await?;
    if payment.is_none() {
        // The event may beat the write of the provider reference: use our id in the metadata.
        if let Some(id) = pi.metadata.get("tollgate_payment").and_then(|v| v.as_str()) {
            match state.store().get_payment(id).await {
                Ok(p)
                    if p.method == "stripe"
                        && p.provider_ref.as_deref().is_none_or(|r| r == pi.id) =>
                {
                    payment = Some(p)
                }
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let Some(p) = payment else {
        return Ok(Outcome::Ignored(format!(
            "payment intent {} is not one of ours",
            pi.id
        )));
    };
    let c = cause(event);
    let settled = if succeeded {
        let received = pi.amount_received.unwrap_or(pi.amount);
        if pi.amount != p.amount_minor
            || received < p.amount_minor
            || !pi.currency.eq_ignore_ascii_case(&p.currency)
        {
            return Err(ApplyError::Permanent(format!(
                "payment intent {} is for {} {} but payment {} expects {} {}: not granting",
                pi.id, received, pi.currency, p.id, p.amount_minor, p.currency
            )));
        }
        crate::billing::settle(
            state,
            &p.id,
            &[PayStatus::Pending, PayStatus::Failed],
            PayStatus::Succeeded,
            None,
            &c,
        )
        .await?
    } else {
        crate::billing::settle(
            state,
            &p.id,
            &[PayStatus::Pending],
            PayStatus::Failed,
            None,
            &c,
        )
        .await?
    };
    Ok(match settled {
        Settled::Applied { payment, .. } => Outcome::Applied(format!(
            "payment {} {}",
            payment.id,
            payment.status.as_str()
        )),
        Settled::Unchanged(p) => {
            Outcome::Ignored(format!("payment {} already {}", p.id, p.status.as_str()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(status: SubStatus, end: i64, grace: Option<i64>) -> Subscription {
        Subscription {
            id: "sub_1".into(),
            user_id: "u".into(),
            plan: "pro".into(),
            cycle: "monthly".into(),
            status,
            period_start: 0,
            period_end: end,
            provider: "stripe".into(),
            provider_ref: Some("sub_S".into()),
            cancel_at_period_end: false,
            grace_until: grace,
            created_at: 0,
            updated_at: 0,
        }
    }

    const G: i64 = 3 * 86_400;

    #[test]
    fn activation_and_renewal() {
        let s = sub(SubStatus::Incomplete, 100, None);
        let n = transition(&s, Mapped::Active, Some((100, 200)), None, 50, G);
        assert_eq!((n.status, n.period_end), (SubStatus::Active, 200));
        // Expired after grace: a payment brings it back.
        let s = sub(SubStatus::Expired, 100, Some(90));
        let n = transition(&s, Mapped::Active, Some((100, 300)), None, 150, G);
        assert_eq!((n.status, n.grace_until), (SubStatus::Active, None));
    }

    #[test]
    fn past_due_grace_is_set_once() {
        let s = sub(SubStatus::Active, 1000, None);
        let n = transition(&s, Mapped::PastDue, None, None, 10, G);
        assert_eq!(
            (n.status, n.grace_until),
            (SubStatus::PastDue, Some(10 + G))
        );
        // A second failure does not extend the grace.
        let again = transition(&n, Mapped::PastDue, None, None, 500, G);
        assert_eq!(again.grace_until, Some(10 + G));
        // Once the grace ran out (expired by the sweep), past_due does not reopen it.
        let expired = sub(SubStatus::Expired, 1000, Some(10 + G));
        assert_eq!(
            transition(&expired, Mapped::PastDue, None, None, 20 + G, G).status,
            SubStatus::Expired
        );
    }

    #[test]
    fn canceled_is_terminal_and_unknown_changes_nothing() {
        let s = sub(SubStatus::Active, 1000, None);
        let c = transition(&s, Mapped::Canceled, None, Some(500), 600, G);
        assert_eq!((c.status, c.period_end), (SubStatus::Canceled, 500));
        for m in [
            Mapped::Active,
            Mapped::PastDue,
            Mapped::Expired,
            Mapped::Incomplete,
        ] {
            assert_eq!(transition(&c, m, Some((0, 9999)), None, 700, G), c, "{m:?}");
        }
        assert_eq!(transition(&s, Mapped::Unknown, Some((0, 5)), None, 1, G), s);
        // A paid subscription never goes back to incomplete.
        assert_eq!(transition(&s, Mapped::Incomplete, None, None, 1, G), s);
        let unpaid = transition(&s, Mapped::Expired, None, None, 1, G);
        assert_eq!(unpaid.status, SubStatus::Expired);
    }
}
