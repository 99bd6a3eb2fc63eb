//! End-to-end (issue 19, item 6): a `tollgate-backend serve` SIGKILLed after it claimed a
//! signed Stripe event and before it applied it. Restarted on the same database, the event's
//! redelivery is applied exactly once: refused with 503 while the dead process's lease lasts
//! (Stripe delivers again later), applied once the lease ran out, a duplicate after that.
//!
//! The crash point is the backend's test failpoint `TOLLGATE_TEST_HANG_AFTER_CLAIM=1` (honoured
//! only with the test clock on): the delivery stops right after its claim committed, the test
//! sees the log line and kills the process.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::stripe::{backend_config, event, plans_toml, Api, StripeBackend, WEBHOOK_SECRET};
use tollgate_e2e::stripe_fake::{sign, StripeFake};
use tollgate_e2e::{client, eventually, TempDir};

/// An active Stripe subscription on the pro monthly price for `user`.
fn subscription(id: &str, customer: &str, user: &str, start: i64) -> Value {
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": "active",
        "metadata": {"user_id": user},
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": "price_pro_monthly"},
            "current_period_start": start, "current_period_end": start + 30 * 86_400}]},
    })
}

/// Ledger entries caused by the event `event_id`.
async fn caused_by(api: &Api, user: &str, event_id: &str) -> Vec<Value> {
    api.ledger(user)
        .await
        .into_iter()
        .filter(|e| e["cause"]["reference"] == event_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_between_claim_and_effect_applies_the_redelivered_event_once() {
    let fake = StripeFake::start("api_requests").await;
    let dir = TempDir::new("webhook-crash");
    let config = backend_config(&dir, &plans_toml("price_pro_monthly", "price_pro_yearly"));
    let be = StripeBackend::start_with(
        dir,
        &config,
        Some(&fake.url),
        &[("TOLLGATE_TEST_HANG_AFTER_CLAIM", "1")],
    );
    let api = Api {
        base: be.url.clone(),
    };
    let user = "lena";
    let (key_id, _) = api.mint(user).await;
    assert_eq!(api.per_minute(&key_id).await, 10);

    // The delivery that crashes: claimed, then the process stops before any effect.
    let now = api.advance(0).await;
    let id = "evt_e2e_crash_created";
    let ev = event(
        id,
        "customer.subscription.created",
        now - 30,
        subscription("sub_e2eCrash", "cus_e2eCrash", user, now - 30),
    );
    let body = serde_json::to_vec(&ev).expect("json");
    let url = format!("{}/api/v1/billing/webhook", api.base);
    let (b, sig) = (body.clone(), sign(WEBHOOK_SECRET, now, &body));
    let pending = tokio::spawn(async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .header("Stripe-Signature", sig)
            .body(b)
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    eventually(
        Duration::from_secs(10),
        "the backend stops right after claiming the event",
        || async {
            be.proc
                .output()
                .contains("test failpoint: event claimed")
                .then_some(())
        },
    )
    .await;
    let StripeBackend { dir, mut proc, .. } = be;
    proc.kill();
    assert!(
        pending.await.expect("join").is_err(),
        "the crashed delivery got no answer"
    );

    // Same database, no failpoint.
    let be = StripeBackend::start_with(dir, &config, Some(&fake.url), &[]);
    let api = Api {
        base: be.url.clone(),
    };
    assert_eq!(api.per_minute(&key_id).await, 10, "nothing was applied");
    // While the dead process's claim lasts, a redelivery is told to come back (Stripe retries
    // any non-2xx), not acknowledged as a duplicate.
    let now = api.advance(0).await;
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (503, json!("event_in_progress")),
        "{v}"
    );
    assert_eq!(api.per_minute(&key_id).await, 10);

    // The lease (60 s) ran out: the redelivery applies the event.
    let now = api.advance(61).await;
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.per_minute(&key_id).await, 100);
    let subs = api.subscriptions(user).await;
    assert_eq!(subs["plan"], json!("pro"), "{subs}");
    assert_eq!(
        subs["subscriptions"].as_array().map(Vec::len),
        Some(1),
        "{subs}"
    );
    assert_eq!(
        subs["subscriptions"][0]["status"],
        json!("active"),
        "{subs}"
    );
    let entries = caused_by(&api, user, id).await;
    let plan_changes: Vec<&Value> = entries
        .iter()
        .filter(|e| e["kind"] == "plan_changed")
        .collect();
    assert_eq!(plan_changes.len(), 1, "{entries:?}");
    assert_eq!(
        (
            plan_changes[0]["detail"]["from"].clone(),
            plan_changes[0]["detail"]["to"].clone()
        ),
        (json!("free"), json!("pro")),
        "{entries:?}"
    );

    // A third delivery is a duplicate and changes nothing.
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(true)), "{v}");
    assert_eq!(caused_by(&api, user, id).await, entries);
    assert_eq!(api.per_minute(&key_id).await, 100);
}
