//! End-to-end: the real `tollgate-backend` binary against Stripe stand-ins — localstripe (a
//! separate process) for customers, subscriptions, invoices and its own signed webhooks, and
//! the in-test fake (`tollgate_e2e::stripe_fake`) for Checkout Sessions and Billing Meter
//! events. Every call goes to `Api::base`, so a gateway in front of the backend slots in.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_e2e::eventually;
use tollgate_e2e::stripe::{
    event, plans_toml, Api, Localstripe, StripeBackend, WebhookRelay, WEBHOOK_SECRET,
};
use tollgate_e2e::stripe_fake::{sign, StripeFake};

const PRO_PLAN: &str = "tollgate-pro-monthly";

/// Backend + localstripe + a relay in front of the webhook; `None` when localstripe is missing.
async fn with_localstripe() -> Option<(Localstripe, StripeBackend, Api, WebhookRelay)> {
    let ls = Localstripe::start().await?;
    ls.plan(PRO_PLAN, 2900).await;
    let be = StripeBackend::start(
        Some(&ls.url),
        &[("STRIPE_PAYMENT_BEHAVIOR", "allow_incomplete")],
        &plans_toml(PRO_PLAN, "tollgate-pro-yearly"),
    );
    let api = Api {
        base: be.url.clone(),
    };
    let relay = WebhookRelay::start(&format!("{}/api/v1/billing/webhook", api.base)).await;
    ls.webhook(&relay.url, WEBHOOK_SECRET).await;
    Some((ls, be, api, relay))
}

/// Waits until both the backend's usage view and the gateway feed show `limit` for the key,
/// and returns how long after `since` that was.
async fn limit_becomes(
    api: &Api,
    key_id: &str,
    limit: u64,
    since: Instant,
    within: Duration,
) -> Duration {
    eventually(within, &format!("key {key_id} at {limit}/min"), || async {
        (api.per_minute(key_id).await == limit && api.feed_per_minute(key_id).await == Some(limit))
            .then_some(())
    })
    .await;
    since.elapsed()
}

/// Subscribes `user` to pro with `pm_card_visa`; returns the Stripe subscription id after the
/// signed webhook made the key 100/min (asserted within 1 s of the delivery).
async fn subscribe_pro(api: &Api, relay: &WebhookRelay, user: &str, key_id: &str) -> String {
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": user, "email": format!("{user}@example.com")})),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let customer = c["customer_id"].as_str().unwrap_or_default().to_string();
    assert!(customer.starts_with("cus_"), "{c}");
    // Asking again returns the same customer: one per user.
    let (_, again) = api
        .call(
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": user})),
        )
        .await;
    assert_eq!(
        (again["customer_id"].as_str(), again["created"].as_bool()),
        (Some(customer.as_str()), Some(false))
    );

    let (s, sub) = api
        .call(
            "POST",
            "/api/v1/billing/create-subscription",
            Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly", "payment_method": "pm_card_visa"})),
        )
        .await;
    assert_eq!(s, 200, "{sub}");
    assert_eq!(sub["customer_id"], json!(customer));
    assert_eq!(sub["price_id"], json!(PRO_PLAN));
    // Recorded, but access waits for the signed event.
    assert_eq!(sub["subscription"]["status"], json!("incomplete"), "{sub}");
    let stripe_sub = sub["stripe_subscription_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(stripe_sub.starts_with("sub_"), "{sub}");

    let (applied, _) = eventually(
        Duration::from_secs(20),
        "a signed Stripe event applied",
        || async { relay.applied("") },
    )
    .await;
    let took = limit_becomes(api, key_id, 100, applied.at, Duration::from_secs(1)).await;
    assert!(took <= Duration::from_secs(1), "{took:?}");
    // The plan change is ledgered with the webhook event as its cause.
    let ledger = api.ledger(user).await;
    let change = ledger
        .iter()
        .find(|e| e["kind"] == "plan_changed" && e["detail"]["to"] == "pro")
        .cloned()
        .unwrap_or_default();
    assert_eq!(change["cause"]["kind"], json!("webhook"), "{ledger:?}");
    assert!(
        change["cause"]["reference"]
            .as_str()
            .unwrap_or_default()
            .starts_with("evt_"),
        "{change}"
    );
    stripe_sub
}

#[tokio::test]
async fn localstripe_payment_upgrades_keys_and_cancel_downgrades() {
    let Some((ls, _be, api, relay)) = with_localstripe().await else {
        return;
    };
    let (key_id, _) = api.mint("alice").await;
    assert_eq!(api.per_minute(&key_id).await, 10);
    assert_eq!(api.feed_per_minute(&key_id).await, Some(10));

    let stripe_sub = subscribe_pro(&api, &relay, "alice", &key_id).await;
    let subs = api.subscriptions("alice").await;
    assert_eq!(subs["plan"], json!("pro"));
    assert_eq!(
        subs["subscriptions"][0]["status"],
        json!("active"),
        "{subs}"
    );
    assert_eq!(subs["subscriptions"][0]["provider"], json!("stripe"));
    assert_eq!(
        subs["subscriptions"][0]["provider_reference"],
        json!(stripe_sub)
    );

    // A second subscription to the same plan is refused while the first is live.
    let (s, e) = api
        .call(
            "POST",
            "/api/v1/billing/create-subscription",
            Some(json!({"user_id": "alice", "plan": "pro"})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["code"].clone()),
        (409, json!("already_subscribed"))
    );

    // Cancelled in Stripe → customer.subscription.deleted → back to free.
    let (s, v) = ls
        .call("DELETE", &format!("/v1/subscriptions/{stripe_sub}"), &[])
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let (deleted, _) = eventually(
        Duration::from_secs(20),
        "customer.subscription.deleted applied",
        || async { relay.applied("customer.subscription.deleted") },
    )
    .await;
    let took = limit_becomes(&api, &key_id, 10, deleted.at, Duration::from_secs(1)).await;
    assert!(took <= Duration::from_secs(1), "{took:?}");
    assert_eq!(
        api.subscriptions("alice").await["subscriptions"][0]["status"],
        json!("canceled")
    );
    // Every localstripe delivery carried a valid signature.
    for d in relay.deliveries() {
        assert_eq!(
            d.status, 200,
            "{} answered {} {}",
            d.kind, d.status, d.answer
        );
    }
}

#[tokio::test]
async fn failed_renewal_grace_then_free_then_paid_restores_the_same_keys() {
    let Some((ls, _be, api, relay)) = with_localstripe().await else {
        return;
    };
    let (key_id, _) = api.mint("bob").await;
    let (key2, _) = api.mint("bob").await;
    let stripe_sub = subscribe_pro(&api, &relay, "bob", &key_id).await;
    assert_eq!(api.per_minute(&key2).await, 100);

    // The renewal fails: the default card now fails on charge, and the renewal invoice is paid.
    let (_, c) = ls
        .call("GET", &format!("/v1/subscriptions/{stripe_sub}"), &[])
        .await;
    let cus = c["customer"].as_str().unwrap_or_default().to_string();
    let (s, pm) = ls
        .call(
            "POST",
            "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
            &[("customer", &cus)],
        )
        .await;
    assert_eq!(s, 200, "{pm}");
    let failing = pm["id"].as_str().unwrap_or_default().to_string();
    let (s, v) = ls
        .call(
            "POST",
            &format!("/v1/customers/{cus}"),
            &[("invoice_settings[default_payment_method]", &failing)],
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, inv) = ls
        .call(
            "POST",
            "/v1/invoices",
            &[("customer", &cus), ("subscription", &stripe_sub)],
        )
        .await;
    assert_eq!(s, 200, "{inv}");
    let invoice = inv["id"].as_str().unwrap_or_default().to_string();
    let _ = ls
        .call("POST", &format!("/v1/invoices/{invoice}/pay"), &[])
        .await;
    let (_, open) = ls
        .call("GET", &format!("/v1/invoices/{invoice}"), &[])
        .await;
    assert_eq!(
        open["status"],
        json!("open"),
        "the renewal charge was declined: {open}"
    );
    // localstripe declines the charge but emits no `invoice.payment_failed` for a renewal
    // invoice; Stripe would. Deliver Stripe's event for that (real) invoice, signed.
    let now = api.advance(0).await;
    let failed = event(
        "evt_e2e_renewal_failed",
        "invoice.payment_failed",
        now,
        open.clone(),
    );
    let (s, v) = api.deliver(&failed, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    let subs = api.subscriptions("bob").await;
    assert_eq!(
        subs["subscriptions"][0]["status"],
        json!("past_due"),
        "{subs}"
    );
    assert!(
        subs["subscriptions"][0]["grace_until"].is_string(),
        "{subs}"
    );
    // Still pro during the grace period.
    assert_eq!(api.per_minute(&key_id).await, 100);

    // Past the 3-day grace the expiry sweep drops both keys to free.
    let moved = Instant::now();
    api.advance(3 * 86_400 + 60).await;
    limit_becomes(&api, &key_id, 10, moved, Duration::from_secs(3)).await;
    assert_eq!(api.per_minute(&key2).await, 10);
    assert_eq!(
        api.subscriptions("bob").await["subscriptions"][0]["status"],
        json!("expired")
    );

    // Later the invoice is paid with a working card. localstripe's own delivery is signed with
    // its (real) time, which is now more than 300 s behind the backend's moved clock: refused.
    let (_, pm) = ls
        .call(
            "POST",
            "/v1/payment_methods/pm_card_visa/attach",
            &[("customer", &cus)],
        )
        .await;
    let visa = pm["id"].as_str().unwrap_or_default().to_string();
    let _ = ls
        .call(
            "POST",
            &format!("/v1/customers/{cus}"),
            &[("invoice_settings[default_payment_method]", &visa)],
        )
        .await;
    let (s, paid) = ls
        .call("POST", &format!("/v1/invoices/{invoice}/pay"), &[])
        .await;
    assert_eq!((s, paid["status"].as_str()), (200, Some("paid")), "{paid}");
    let (stale, _) = eventually(
        Duration::from_secs(20),
        "localstripe's payment_succeeded delivered",
        || async {
            relay
                .deliveries()
                .into_iter()
                .find(|d| d.kind == "invoice.payment_succeeded" && d.status != 200)
        },
    )
    .await;
    assert_eq!(
        (stale.status, stale.answer["error"]["code"].clone()),
        (400, json!("invalid_signature"))
    );
    assert_eq!(
        api.per_minute(&key_id).await,
        10,
        "a refused delivery changes nothing"
    );

    // Stripe's `invoice.paid` for that invoice (the real object), signed at the backend's time.
    let now = api.advance(0).await;
    let ev = event("evt_e2e_invoice_paid", "invoice.paid", now, paid.clone());
    let sent = Instant::now();
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    limit_becomes(&api, &key_id, 100, sent, Duration::from_secs(1)).await;
    assert_eq!(
        api.per_minute(&key2).await,
        100,
        "the same keys are pro again"
    );
    assert_eq!(
        api.subscriptions("bob").await["subscriptions"][0]["status"],
        json!("active")
    );
}

/// A backend on the in-test fake (Checkout, meter events), its API and the fake.
async fn with_fake(extra_env: &[(&str, &str)]) -> (StripeFake, StripeBackend, Api) {
    let fake = StripeFake::start("api_requests").await;
    let be = StripeBackend::start(
        Some(&fake.url),
        extra_env,
        &plans_toml("price_pro_monthly", "price_pro_yearly"),
    );
    let api = Api {
        base: be.url.clone(),
    };
    fake.set_webhook(
        &format!("{}/api/v1/billing/webhook", api.base),
        WEBHOOK_SECRET,
    );
    (fake, be, api)
}

fn subscription_object(id: &str, customer: &str, status: &str, user: &str, start: i64) -> Value {
    json!({
        "id": id, "object": "subscription", "customer": customer, "status": status,
        "metadata": {"user_id": user},
        "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": "price_pro_monthly"},
            "current_period_start": start, "current_period_end": start + 30 * 86_400}]},
    })
}

#[tokio::test]
async fn webhook_refuses_forged_stale_and_malformed_and_applies_each_event_once() {
    let (_fake, _be, api) = with_fake(&[]).await;
    let (key_id, _) = api.mint("carol").await;
    let now = api.advance(0).await;
    let created = event(
        "evt_e2e_created",
        "customer.subscription.created",
        now - 50,
        subscription_object("sub_e2eC", "cus_e2eC", "active", "carol", now - 50),
    );
    let (s, v) = api.deliver(&created, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.per_minute(&key_id).await, 100);
    let ledger_len = api.ledger("carol").await.len();

    let deleted = event(
        "evt_e2e_deleted",
        "customer.subscription.deleted",
        now - 10,
        subscription_object("sub_e2eC", "cus_e2eC", "canceled", "carol", now - 50),
    );
    let body = serde_json::to_vec(&deleted).unwrap_or_default();
    let refused = [
        (
            "forged",
            Some(sign("whsec_not_ours", now, &body)),
            body.clone(),
        ),
        (
            "stale",
            Some(sign(WEBHOOK_SECRET, now - 301, &body)),
            body.clone(),
        ),
        (
            "future",
            Some(sign(WEBHOOK_SECRET, now + 400, &body)),
            body.clone(),
        ),
        ("unsigned", None, body.clone()),
        (
            "garbage header",
            Some("t=abc,v1=zz".to_string()),
            body.clone(),
        ),
        (
            "tampered",
            Some(sign(WEBHOOK_SECRET, now, &body)),
            body.iter()
                .map(|b| if *b == b'C' { b'D' } else { *b })
                .collect(),
        ),
    ];
    for (what, sig, b) in refused {
        let (s, v) = api.webhook_raw(&b, sig.as_deref()).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (400, json!("invalid_signature")),
            "{what}: {v}"
        );
    }
    // Signed but not JSON / not an event: 400, never 500.
    for bad in [
        &b"{not json"[..],
        b"[]",
        br#"{"id":"evt_x","type":"x"}"#,
        br#"{"id":"nope","type":"x","created":1,"data":{"object":{}}}"#,
    ] {
        let (s, v) = api
            .webhook_raw(bad, Some(&sign(WEBHOOK_SECRET, now, bad)))
            .await;
        assert_eq!(s, 400, "{}: {v}", String::from_utf8_lossy(bad));
    }
    // A known type with an unreadable object, and an unknown type: acknowledged, ignored.
    let odd = event(
        "evt_e2e_odd",
        "customer.subscription.updated",
        now,
        json!({"id": 5}),
    );
    let (s, v) = api.deliver(&odd, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(false)), "{v}");
    let unknown = event(
        "evt_e2e_unknown",
        "customer.tax_id.created",
        now,
        json!({"id": "txi_1"}),
    );
    let (s, v) = api.deliver(&unknown, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(false)), "{v}");
    assert_eq!(api.per_minute(&key_id).await, 100, "nothing changed");
    assert_eq!(
        api.ledger("carol").await.len(),
        ledger_len,
        "nothing ledgered"
    );

    // The same event twice: the second delivery changes nothing.
    let (s, v) = api.deliver(&created, now).await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.ledger("carol").await.len(), ledger_len);
    let (s, v) = api.deliver(&deleted, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.per_minute(&key_id).await, 10);
    let after = api.ledger("carol").await.len();
    let (s, v) = api.deliver(&deleted, now).await;
    assert_eq!((s, v["duplicate"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.ledger("carol").await.len(), after);
    // canceled is terminal: a replayed older "active" (new id, older time) cannot revive it.
    let late = event(
        "evt_e2e_late_active",
        "customer.subscription.updated",
        now - 40,
        subscription_object("sub_e2eC", "cus_e2eC", "active", "carol", now - 50),
    );
    let (s, v) = api.deliver(&late, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(false)), "{v}");
    assert_eq!(api.per_minute(&key_id).await, 10);
}

#[tokio::test]
async fn out_of_order_events_never_move_a_subscription_backwards() {
    let (_fake, _be, api) = with_fake(&[]).await;
    let (key_id, _) = api.mint("dora").await;
    let now = api.advance(0).await;
    let t0 = now - 100;
    let sub = |status: &str| subscription_object("sub_e2eD", "cus_e2eD", status, "dora", t0);
    let (s, _) = api
        .deliver(
            &event("evt_d1", "customer.subscription.created", t0, sub("active")),
            now,
        )
        .await;
    assert_eq!(s, 200);
    // The renewal fails at t0+20 ...
    let (_, v) = api
        .deliver(
            &event(
                "evt_d3",
                "customer.subscription.updated",
                t0 + 20,
                sub("past_due"),
            ),
            now,
        )
        .await;
    assert_eq!(v["applied"], json!(true), "{v}");
    // ... and an older "active" update arrives late: ignored.
    let (_, v) = api
        .deliver(
            &event(
                "evt_d2",
                "customer.subscription.updated",
                t0 + 10,
                sub("active"),
            ),
            now,
        )
        .await;
    assert_eq!(v["applied"], json!(false), "{v}");
    let subs = api.subscriptions("dora").await;
    assert_eq!(
        subs["subscriptions"][0]["status"],
        json!("past_due"),
        "{subs}"
    );
    assert_eq!(
        api.per_minute(&key_id).await,
        100,
        "past due keeps the plan during grace"
    );
    // A newer paid invoice (current API shape: parent.subscription_details) restores active.
    let invoice = json!({
        "id": "in_e2eD", "object": "invoice", "customer": "cus_e2eD", "status": "paid",
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_e2eD"}},
        "lines": {"data": [{"period": {"start": t0 + 30 * 86_400, "end": t0 + 60 * 86_400}}]},
    });
    let (_, v) = api
        .deliver(&event("evt_d4", "invoice.paid", t0 + 30, invoice), now)
        .await;
    assert_eq!(v["applied"], json!(true), "{v}");
    let subs = api.subscriptions("dora").await;
    assert_eq!(
        subs["subscriptions"][0]["status"],
        json!("active"),
        "{subs}"
    );
    assert_eq!(subs["subscriptions"][0]["grace_until"], Value::Null);
}

#[tokio::test]
async fn checkout_session_flow_against_the_fake() {
    let (fake, _be, api) = with_fake(&[]).await;
    let (key_id, _) = api.mint("erin").await;
    let body = json!({"user_id": "erin", "plan": "pro", "cycle": "monthly", "customer_email": "erin@example.com",
        "success_url": "https://example.com/ok?session={CHECKOUT_SESSION_ID}", "cancel_url": "https://example.com/cancel"});
    let c = tollgate_e2e::client();
    let post = |key: &'static str| {
        c.post(format!("{}/api/v1/billing/checkout", api.base))
            .bearer_auth(tollgate_e2e::gw::TOKEN)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first: Value = post("checkout-erin-1")
        .await
        .expect("checkout")
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(first["status"], json!("success"), "{first}");
    let session_id = first["session_id"].as_str().unwrap_or_default().to_string();
    assert!(session_id.starts_with("cs_"), "{first}");
    assert!(
        first["url"]
            .as_str()
            .unwrap_or_default()
            .starts_with("https://"),
        "{first}"
    );
    assert!(first["expires_at"].is_string(), "{first}");
    // A retry with the same Idempotency-Key reuses Stripe's idempotency: same session.
    let again: Value = post("checkout-erin-1")
        .await
        .expect("checkout")
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(again["session_id"], json!(session_id));
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p == "/v1/checkout/sessions")
        .collect();
    assert_eq!(creates.len(), 2);
    assert!(
        creates[0].2.is_some() && creates[0].2 == creates[1].2,
        "{creates:?}"
    );
    let s = fake.session(&session_id).unwrap_or_default();
    assert_eq!(s["mode"], json!("subscription"));
    assert_eq!(s["client_reference_id"], json!("erin"));
    assert_eq!(s["metadata"]["user_id"], json!("erin"));
    assert_eq!(
        s["line_items"][0]["price"],
        json!("price_pro_monthly"),
        "the server picked the price"
    );

    let (st, v) = api
        .call(
            "GET",
            &format!("/api/v1/billing/checkout/{session_id}"),
            None,
        )
        .await;
    assert_eq!(
        (st, v["status"].clone(), v["payment_status"].clone()),
        (200, json!("open"), json!("unpaid")),
        "{v}"
    );
    assert_eq!(
        api.per_minute(&key_id).await,
        10,
        "a session alone grants nothing"
    );

    // The customer pays; Stripe sends checkout.session.completed.
    let paid = Instant::now();
    assert_eq!(fake.complete_checkout(&session_id).await, 200);
    limit_becomes(&api, &key_id, 100, paid, Duration::from_secs(1)).await;
    let (st, v) = api
        .call(
            "GET",
            &format!("/api/v1/billing/checkout/{session_id}"),
            None,
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["status"].clone(), v["payment_status"].clone()),
        (json!("complete"), json!("paid"))
    );
    assert!(
        v["subscription_id"]
            .as_str()
            .unwrap_or_default()
            .starts_with("sub_"),
        "{v}"
    );
    assert_eq!(v["subscription"]["status"], json!("active"), "{v}");
    assert_eq!(v["user_id"], json!("erin"));

    // Unknown sessions and bad input.
    let (st, v) = api
        .call("GET", "/api/v1/billing/checkout/cs_test_missing", None)
        .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (404, json!("stripe_resource_missing")),
        "{v}"
    );
    let (st, _) = api.call("POST", "/api/v1/billing/checkout", Some(json!({"user_id": "erin", "plan": "gold", "success_url": "https://x.io", "cancel_url": "https://x.io"}))).await;
    assert_eq!(st, 400);
    let (st, _) = api.call("POST", "/api/v1/billing/checkout", Some(json!({"user_id": "erin", "price_id": "price_someone_elses", "success_url": "https://x.io", "cancel_url": "https://x.io"}))).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn meter_export_is_exactly_once_with_a_drift_report() {
    let (fake, _be, api) = with_fake(&[
        ("STRIPE_METER_EVENT_NAME", "api_requests"),
        ("STRIPE_METER_EXPORT_INTERVAL_SECS", "0"),
    ])
    .await;
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": "finn"})),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let customer = c["customer_id"].as_str().unwrap_or_default().to_string();
    let (k1, _) = api.mint("finn").await;
    let (k2, _) = api.mint("finn").await;
    let now = api.advance(0).await;
    let day = |offset: i64| {
        tollgate_protocol::day::format_day(tollgate_protocol::day::day_index(now) + offset)
    };
    let ingest = |batch: u64, entries: Value| {
        let api = api.clone();
        async move {
            let (s, v) = api
                .call(
                    "POST",
                    "/internal/usage",
                    Some(json!({"gateway_id": "gw-e2e", "batch_id": batch, "entries": entries})),
                )
                .await;
            assert_eq!(s, 200, "{v}");
        }
    };
    ingest(1, json!([{"key_id": k1, "day": day(0), "count": 7, "last_used": now}, {"key_id": k2, "day": day(-1), "count": 5, "last_used": now - 86_400}])).await;

    // The first answer is lost on the way back: Stripe recorded it, we do not know.
    fake.lose_responses(1);
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/report-usage",
            Some(json!({"user_id": "finn"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["export"]["recorded"].clone(),
            v["export"]["sent"].clone(),
            v["export"]["pending"].clone()
        ),
        (json!(2), json!(1), json!(1)),
        "{v}"
    );
    assert_eq!(fake.meter_events().len(), 2);
    // The retry sends the same identifier with the same Idempotency-Key: counted once.
    let (_, v) = api
        .call("POST", "/api/v1/billing/report-usage", json!({}).into())
        .await;
    assert_eq!(
        (v["export"]["sent"].clone(), v["export"]["pending"].clone()),
        (json!(1), json!(0)),
        "{v}"
    );
    assert_eq!(fake.meter_events().len(), 2);
    assert_eq!(fake.metered_total(&customer), 12);
    let meter_posts: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p == "/v1/billing/meter_events")
        .collect();
    assert_eq!(meter_posts.len(), 3);
    assert!(
        meter_posts
            .iter()
            .all(|(_, _, k)| k.as_deref().is_some_and(|k| k.starts_with("tg_key_"))),
        "{meter_posts:?}"
    );
    for e in fake.meter_events() {
        assert_eq!(e["payload"]["stripe_customer_id"], json!(customer));
    }

    // More usage later the same day: only the difference goes out, under a new identifier.
    ingest(
        2,
        json!([{"key_id": k1, "day": day(0), "count": 3, "last_used": now}]),
    )
    .await;
    let (_, v) = api
        .call("GET", "/api/v1/billing/usage-drift?user_id=finn", None)
        .await;
    assert_eq!(
        (
            v["totals"]["metered"].clone(),
            v["totals"]["exported"].clone(),
            v["totals"]["drift"].clone()
        ),
        (json!(15), json!(12), json!(3)),
        "{v}"
    );
    let (_, v) = api.call("POST", "/api/v1/billing/report-usage", None).await;
    assert_eq!(
        (
            v["export"]["recorded"].clone(),
            v["export"]["units_sent"].clone()
        ),
        (json!(1), json!(3)),
        "{v}"
    );
    let (_, v) = api.call("POST", "/api/v1/billing/report-usage", None).await;
    assert_eq!(
        (v["export"]["recorded"].clone(), v["export"]["sent"].clone()),
        (json!(0), json!(0)),
        "{v}"
    );
    assert_eq!(fake.metered_total(&customer), 15);
    let (_, v) = api
        .call("GET", "/api/v1/billing/usage-drift?user_id=finn", None)
        .await;
    assert_eq!(
        (
            v["totals"]["metered"].clone(),
            v["totals"]["exported"].clone(),
            v["totals"]["drift"].clone()
        ),
        (json!(15), json!(15), json!(0)),
        "{v}"
    );
    // A replayed usage batch (same gateway and batch id) adds nothing to export either.
    ingest(
        2,
        json!([{"key_id": k1, "day": day(0), "count": 3, "last_used": now}]),
    )
    .await;
    let (_, v) = api.call("POST", "/api/v1/billing/report-usage", None).await;
    assert_eq!(v["export"]["recorded"], json!(0), "{v}");
    assert_eq!(fake.metered_total(&customer), 15);
}

#[tokio::test]
async fn without_stripe_configuration_every_stripe_endpoint_answers_503() {
    let be = StripeBackend::start(None, &[], "");
    let api = Api {
        base: be.url.clone(),
    };
    let (s, v) = api.call("GET", "/api/v1/billing/status", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["providers"]["stripe"]["configured"], json!(false), "{v}");
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": "u"})),
        ),
        (
            "POST",
            "/api/v1/billing/payment-intent",
            Some(json!({"amount": 100, "currency": "eur"})),
        ),
        (
            "POST",
            "/api/v1/billing/create-subscription",
            Some(json!({"user_id": "u", "plan": "pro"})),
        ),
        ("GET", "/api/v1/billing/products", None),
        (
            "POST",
            "/api/v1/billing/checkout",
            Some(
                json!({"user_id": "u", "plan": "pro", "success_url": "https://a.b", "cancel_url": "https://a.b"}),
            ),
        ),
        ("GET", "/api/v1/billing/checkout/cs_test_1", None),
        ("POST", "/api/v1/billing/report-usage", None),
        ("GET", "/api/v1/billing/usage-drift", None),
    ] {
        let (s, v) = api.call(method, path, body).await;
        assert_eq!(
            (s, v["error"]["code"].clone()),
            (503, json!("provider_not_configured")),
            "{method} {path}: {v}"
        );
    }
    let (s, v) = api
        .webhook_raw(br#"{"id":"evt_1"}"#, Some("t=1,v1=00"))
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (503, json!("provider_not_configured")),
        "{v}"
    );
}
