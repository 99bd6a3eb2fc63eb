//! Payment providers, each a pair of files: `mod.rs` (HTTP calls, handlers, base URL from
//! config) and `wire.rs` (wire structs, exhaustive status mapping). They change entitlements
//! only through `billing::save` (subscriptions) and `billing::settle` (payments), so every
//! effect is idempotent and ledgered with its cause. Their webhooks claim each event with a
//! lease ([`events`]), so an event is applied once across concurrent deliveries and crashes.
//!
//! Provider settings come from the environment variables of the original module (SPEC §2).
//! An unconfigured provider is not an error: its endpoints answer 503 `provider_not_configured`.

pub mod events;
pub mod paypal;
pub mod sepa;
pub mod stripe;

use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;

/// The configured providers, built once at start.
#[derive(Clone, Default)]
pub struct Providers {
    pub sepa: Option<sepa::api::SepaConfig>,
    pub paypal: Option<std::sync::Arc<paypal::PayPal>>,
    /// Present when `STRIPE_SECRET_KEY` (or `STRIPE_API_KEY`) is set.
    pub stripe: Option<std::sync::Arc<stripe::Stripe>>,
}

/// An environment variable, `None` when unset or empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Providers {
    /// Reads provider settings from the environment; one message per bad setting.
    pub fn from_env() -> Result<Providers, Vec<String>> {
        let mut errors = Vec::new();
        let sepa = sepa::api::SepaConfig::from_env(env).unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        let paypal = paypal::PayPal::from_env().unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        let stripe = stripe::Stripe::from_env().unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        if errors.is_empty() {
            Ok(Providers {
                sepa,
                paypal: paypal.map(std::sync::Arc::new),
                stripe: stripe.map(std::sync::Arc::new),
            })
        } else {
            Err(errors)
        }
    }
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

/// The error every endpoint of an unconfigured provider answers with.
pub fn not_configured(provider: &str, settings: &str) -> ApiError {
    ApiError::Unavailable {
        code: "provider_not_configured",
        message: format!("{provider} is not configured on this server (set {settings})"),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(sepa::api::router())
        .merge(paypal::router())
        .merge(stripe::router())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::TestBackend;
    use crate::config::Secret;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
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
        let mut state = tb.state().clone();
        state.providers = Arc::new(Providers {
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
        let store = tb.state().store.clone();
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
        let db = crate::store::sql::SqlStore::connect(&tb.state().cfg.database_url)
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
