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
    // A retry with the same Idempotency-Key is answered with the first answer, without asking
    // Stripe again; the one call carried an idempotency key of its own.
    let again: Value = post("checkout-erin-1")
        .await
        .expect("checkout")
        .json()
        .await
        .unwrap_or_default();
    assert_eq!(again, first);
    let creates: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|(m, p, _)| m == "POST" && p == "/v1/checkout/sessions")
        .collect();
    assert_eq!(creates.len(), 1);
    assert!(creates[0].2.is_some(), "{creates:?}");
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

/// One request with `api_key` to the gateway's keyed route: (status, `RateLimit-Policy`).
async fn hit(gw: &str, api_key: &str) -> (u16, String) {
    let r = tollgate_e2e::client()
        .get(format!("{gw}/api/thing"))
        .header("x-api-key", api_key)
        .send()
        .await
        .expect("call through the gateway");
    let policy = r
        .headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (r.status().as_u16(), policy)
}

/// Sends `n` requests and counts the admitted ones, asserting each carries `policy`.
async fn admitted_of(gw: &str, api_key: &str, n: usize, policy: &str) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        let (status, p) = hit(gw, api_key).await;
        assert!(p.contains(policy), "{status}: {p}");
        match status {
            200 => admitted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    admitted
}

/// Our subscription's status for `user`, read through `api`.
async fn sub_status(api: &Api, user: &str) -> String {
    api.subscriptions(user).await["subscriptions"][0]["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits (up to 20 s: localstripe posts its events about a second late) until the user's
/// subscription has `status`, and returns when the last read that still saw another status
/// began: the webhook was applied after that instant, so time measured from it bounds the
/// propagation from above.
async fn status_changed(api: &Api, user: &str, status: &str) -> Instant {
    let before = std::cell::Cell::new(Instant::now());
    let before = &before;
    eventually(
        Duration::from_secs(20),
        &format!("the signed webhook made the subscription {status}"),
        || async move {
            let asked = Instant::now();
            if sub_status(api, user).await == status {
                Some(())
            } else {
                before.set(asked);
                None
            }
        },
    )
    .await;
    before.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_gateway_a_localstripe_subscription_lifts_the_key_and_cancel_drops_it() {
    use tollgate_e2e::gw::{config_text, route, TOKEN as GW_TOKEN};
    use tollgate_e2e::stripe::stripe_env;
    use tollgate_e2e::{Proc, TempDir};
    let Some(ls) = Localstripe::start().await else {
        return;
    };
    ls.plan(PRO_PLAN, 2900).await;
    let upstream = tollgate_e2e::upstream::Upstream::start();
    let dir = TempDir::new("stripe-gw");
    // The gateway runs the backend embedded; its catalogue prices pro with the localstripe plan.
    let routes = format!(
        "{}\n{}",
        route("/api", &upstream.url(), ""),
        plans_toml(PRO_PLAN, "tollgate-pro-yearly")
    );
    let text = config_text(&dir, "[backend]\nmode = \"embedded\"\n", &routes, "");
    let config = dir.write("gateway.toml", &text);
    let stripe = stripe_env(&ls.url);
    let mut env: Vec<(&str, &str)> = vec![
        ("TOLLGATE_SERVICE_TOKEN", GW_TOKEN),
        ("STRIPE_PAYMENT_BEHAVIOR", "allow_incomplete"),
    ];
    env.extend(stripe.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let proc = Proc::start(
        "tollgate-gateway",
        &["--config", config.to_str().unwrap_or_default()],
        &env,
    );
    let gw = tokio::task::block_in_place(|| proc.url("gateway"));
    // localstripe signs its events and posts them to the gateway, which hands them to the
    // embedded backend: the only thing between Stripe and the backend is the gateway.
    ls.webhook(&format!("{gw}/api/v1/billing/webhook"), WEBHOOK_SECRET)
        .await;
    let api = Api { base: gw.clone() };
    let user = "stripe-gw-user";
    let (_, key) = api.mint(user).await;
    let (_, spare) = api.mint(user).await;

    // Free: exactly 10 admitted in the minute.
    eventually(Duration::from_secs(1), "the key at the gateway", || async {
        (hit(&gw, &key).await.0 == 200).then_some(())
    })
    .await;
    let admitted = 1 + admitted_of(&gw, &key, 12, "q=10;").await;
    assert_eq!(admitted, 10, "the free minute limit");

    // Customer + subscription to pro with pm_card_visa, through the gateway.
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": user, "email": "gw@example.com"})),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let (s, sub) = api
        .call(
            "POST",
            "/api/v1/billing/create-subscription",
            Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly", "payment_method": "pm_card_visa"})),
        )
        .await;
    assert_eq!(s, 200, "{sub}");
    assert_eq!(sub["subscription"]["status"], json!("incomplete"), "{sub}");
    let stripe_sub = sub["stripe_subscription_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(stripe_sub.starts_with("sub_"), "{sub}");
    assert_eq!(
        hit(&gw, &key).await.0,
        429,
        "creating the subscription grants nothing"
    );

    // localstripe's signed webhook reaches the backend through the gateway; within 1 s of it
    // being applied the same key has pro limits at the gateway.
    let applied_at = status_changed(&api, user, "active").await;
    eventually(
        Duration::from_secs(1),
        "pro tier at the gateway",
        || async {
            let (status, policy) = hit(&gw, &key).await;
            (status == 200 && policy.contains("q=100;")).then_some(())
        },
    )
    .await;
    let took = applied_at.elapsed();
    eprintln!("stripe webhook via the gateway → 100/min at the gateway after {took:?}");
    assert!(took <= Duration::from_secs(1), "{took:?}");
    let total = admitted + 1 + admitted_of(&gw, &key, 110, "q=100;").await;
    assert_eq!(total, 100, "exactly the pro minute limit");
    let ledger = api.ledger(user).await;
    let change = ledger
        .iter()
        .find(|e| e["kind"] == "plan_changed" && e["detail"]["to"] == "pro")
        .cloned()
        .unwrap_or_default();
    assert_eq!(change["cause"]["kind"], json!("webhook"), "{ledger:?}");

    // Cancelled in Stripe → customer.subscription.deleted → back to free at the gateway.
    let (s, v) = ls
        .call("DELETE", &format!("/v1/subscriptions/{stripe_sub}"), &[])
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("canceled")), "{v}");
    let canceled_at = status_changed(&api, user, "canceled").await;
    eventually(
        Duration::from_secs(1),
        "free tier at the gateway",
        || async { hit(&gw, &key).await.1.contains("q=10;").then_some(()) },
    )
    .await;
    let took = canceled_at.elapsed();
    eprintln!("customer.subscription.deleted via the gateway → 10/min after {took:?}");
    assert!(took <= Duration::from_secs(1), "{took:?}");
    // The user's other key, untouched so far, admits exactly the free 10 in its minute.
    assert_eq!(admitted_of(&gw, &spare, 12, "q=10;").await, 10);
    assert_eq!(hit(&gw, &key).await.0, 429, "the busy key is over 10/min");
    drop(proc);
}

#[tokio::test]
async fn stripe_sync_creates_the_catalogue_once_and_checkout_uses_it() {
    use tollgate_e2e::stripe::{backend_cli, backend_config, catalogue_toml, stripe_env};
    let fake = StripeFake::start("api_requests").await;
    let c = tollgate_e2e::client();
    let post = |path: &str, form: &[(&str, &str)]| {
        c.post(format!("{}{path}", fake.url))
            .bearer_auth(tollgate_e2e::stripe::SECRET_KEY)
            .form(form)
            .send()
    };
    // Already at Stripe: an unrelated product, and the enterprise product an operator made
    // earlier (found by its metadata, not duplicated).
    let r = post("/v1/products", &[("name", "Stickers")])
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 200);
    let r = post(
        "/v1/products",
        &[
            ("name", "Enterprise"),
            ("metadata[tollgate_plan]", "enterprise"),
        ],
    )
    .await
    .expect("post");
    let enterprise: Value = r.json().await.expect("json");
    let enterprise = enterprise["id"].as_str().unwrap_or_default().to_string();

    let dir = tollgate_e2e::TempDir::new("stripe-sync");
    let config = backend_config(&dir, &catalogue_toml(2900, ""));
    let env = stripe_env(&fake.url);
    let posts = |since: usize| {
        fake.requests()
            .into_iter()
            .skip(since)
            .filter(|(m, _, _)| m == "POST")
            .collect::<Vec<_>>()
    };

    // Without Stripe configuration the command says so and fails.
    let off = backend_cli(&config, &["stripe", "sync"], &[]).await;
    assert!(!off.success, "{off:?}");
    assert!(off.stderr.contains("STRIPE_SECRET_KEY"), "{off:?}");

    let first = backend_cli(&config, &["stripe", "sync"], &env).await;
    assert!(first.success, "{first:?}");
    let report = first.json();
    assert_eq!(
        (
            report["created"].clone(),
            report["recorded"].clone(),
            report["changed"].clone()
        ),
        (json!(4), json!(4), json!(true)),
        "{report}"
    );
    let lines = report["prices"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        lines.len(),
        4,
        "pro and enterprise, monthly and yearly: {report}"
    );
    assert!(lines.iter().all(|l| l["action"] == "created"), "{report}");
    let recorded = |plan: &str, cycle: &str| -> String {
        lines
            .iter()
            .find(|l| l["plan"] == plan && l["cycle"] == cycle)
            .and_then(|l| l["price_id"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    // What Stripe now holds: one new product (pro), four prices on the right products.
    let products = fake.products();
    assert_eq!(products.len(), 3, "{products:?}");
    let pro = products
        .iter()
        .find(|p| p["metadata"]["tollgate_plan"] == "pro")
        .and_then(|p| p["id"].as_str())
        .unwrap_or_default()
        .to_string();
    let prices = fake.prices();
    for (plan, cycle, amount, interval, product) in [
        ("pro", "monthly", 2900, "month", &pro),
        ("pro", "yearly", 29000, "year", &pro),
        ("enterprise", "monthly", 19900, "month", &enterprise),
        ("enterprise", "yearly", 199000, "year", &enterprise),
    ] {
        let id = recorded(plan, cycle);
        let p = prices
            .iter()
            .find(|p| p["id"] == id.as_str())
            .unwrap_or_else(|| panic!("{plan} {cycle}: {id} not at Stripe"));
        assert_eq!(
            (
                p["unit_amount"].as_i64(),
                p["currency"].as_str(),
                p["recurring"]["interval"].as_str(),
                p["product"].as_str(),
                p["lookup_key"].as_str()
            ),
            (
                Some(amount),
                Some("eur"),
                Some(interval),
                Some(product.as_str()),
                Some(format!("tollgate_{plan}_{cycle}").as_str())
            ),
            "{p}"
        );
    }
    let created = posts(0);
    assert_eq!(
        created.len(),
        7,
        "2 setup + 1 product + 4 prices: {created:?}"
    );
    assert!(
        created[2..].iter().all(|(_, _, k)| k.is_some()),
        "every create carries an Idempotency-Key: {created:?}"
    );

    // A second run finds everything and changes nothing.
    let seen = fake.requests().len();
    let second = backend_cli(&config, &["stripe", "sync"], &env).await;
    assert!(second.success, "{second:?}");
    let again = second.json();
    assert_eq!(
        (
            again["created"].clone(),
            again["recorded"].clone(),
            again["changed"].clone()
        ),
        (json!(0), json!(0), json!(false)),
        "{again}"
    );
    assert!(
        again["prices"]
            .as_array()
            .is_some_and(|l| l.iter().all(|l| l["action"] == "found")),
        "{again}"
    );
    assert!(posts(seen).is_empty(), "no creates: {:?}", posts(seen));
    assert_eq!((fake.products().len(), fake.prices().len()), (3, 4));

    // The backend uses the recorded prices: Checkout for pro yearly sells the synced price.
    let be = tollgate_e2e::stripe::StripeBackend::start_with(dir, &config, Some(&fake.url), &[]);
    let api = Api {
        base: be.url.clone(),
    };
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/checkout",
            Some(
                json!({"user_id": "sync-user", "plan": "pro", "cycle": "yearly",
                "success_url": "https://example.com/ok", "cancel_url": "https://example.com/no"}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["price_id"], json!(recorded("pro", "yearly")), "{v}");
    let session = fake
        .session(v["session_id"].as_str().unwrap_or_default())
        .unwrap_or_default();
    assert_eq!(
        session["line_items"][0]["price"],
        json!(recorded("pro", "yearly"))
    );
    let (s, v) = api.call("GET", "/api/v1/billing/products", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["prices"].as_array().map(Vec::len), Some(4), "{v}");
    let enterprise_monthly = v["plans"]
        .as_array()
        .and_then(|p| {
            p.iter()
                .find(|p| p["plan"] == "enterprise" && p["cycle"] == "monthly")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        enterprise_monthly["stripe_price_id"],
        json!(recorded("enterprise", "monthly")),
        "{v}"
    );
    let dir = {
        let StripeBackend { dir, proc, .. } = be;
        drop(proc);
        dir
    };

    // The catalogue's pro monthly price changes: a new price takes over the lookup key on the
    // same product and is recorded; nothing else moves. Then all is quiet again.
    let config = backend_config(&dir, &catalogue_toml(3900, ""));
    let seen = fake.requests().len();
    let third = backend_cli(&config, &["stripe", "sync"], &env).await;
    assert!(third.success, "{third:?}");
    let changed = third.json();
    let line = changed["prices"]
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|l| l["plan"] == "pro" && l["cycle"] == "monthly")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (line["action"].clone(), line["recorded"].clone()),
        (json!("replaced"), json!(true)),
        "{changed}"
    );
    assert_eq!(changed["created"], json!(1), "{changed}");
    let new_posts = posts(seen);
    assert_eq!(
        new_posts
            .iter()
            .map(|(_, p, _)| p.as_str())
            .collect::<Vec<_>>(),
        vec!["/v1/prices"],
        "one new price, no new product"
    );
    let prices = fake.prices();
    let old = prices
        .iter()
        .find(|p| p["id"] == recorded("pro", "monthly").as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(old["lookup_key"], Value::Null, "the key moved: {old}");
    let new = prices
        .iter()
        .find(|p| p["id"] == line["price_id"])
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (
            new["unit_amount"].as_i64(),
            new["lookup_key"].as_str(),
            new["product"].as_str()
        ),
        (Some(3900), Some("tollgate_pro_monthly"), Some(pro.as_str()))
    );
    let quiet = backend_cli(&config, &["stripe", "sync"], &env).await;
    assert_eq!(quiet.json()["changed"], json!(false), "{quiet:?}");

    // Stripe goes on renewing subscriptions on the replaced price: they are still followed
    // (the price's sync metadata, read from Stripe, names the plan). A price sync did not make
    // buys nothing.
    let be = tollgate_e2e::stripe::StripeBackend::start_with(dir, &config, Some(&fake.url), &[]);
    let api = Api {
        base: be.url.clone(),
    };
    let r = post(
        "/v1/prices",
        &[
            ("product", pro.as_str()),
            ("unit_amount", "100"),
            ("currency", "eur"),
            ("recurring[interval]", "month"),
        ],
    )
    .await
    .expect("post");
    let foreign: Value = r.json().await.expect("json");
    let now = api.advance(0).await;
    let on_price = |sub: &str, user: &str, price: &str| {
        json!({"id": sub, "object": "subscription", "customer": format!("cus_{sub}"), "status": "active",
            "metadata": {"user_id": user},
            "items": {"object": "list", "data": [{"id": "si_1", "price": {"id": price},
                "current_period_start": now, "current_period_end": now + 30 * 86_400}]}})
    };
    let (olga, _) = api.mint("olga").await;
    let ev = event(
        "evt_e2e_old_price",
        "customer.subscription.created",
        now,
        on_price("sub_oldprice", "olga", &recorded("pro", "monthly")),
    );
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(true)), "{v}");
    assert_eq!(api.per_minute(&olga).await, 100);
    let (petra, _) = api.mint("petra").await;
    let ev = event(
        "evt_e2e_foreign_price",
        "customer.subscription.created",
        now,
        on_price(
            "sub_foreign",
            "petra",
            foreign["id"].as_str().unwrap_or_default(),
        ),
    );
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(false)), "{v}");
    assert_eq!(api.per_minute(&petra).await, 10);
    // New purchases use the price in force only: the replaced one is not for sale.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/checkout",
            Some(
                json!({"user_id": "olga2", "price_id": recorded("pro", "monthly"),
                "success_url": "https://example.com/ok", "cancel_url": "https://example.com/no"}),
            ),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("unknown_price")),
        "{v}"
    );
}

/// The relay's delivery whose handling settled `payment_id`.
fn settled(relay: &WebhookRelay, payment_id: &str) -> Option<tollgate_e2e::stripe::Delivery> {
    relay.deliveries().into_iter().find(|d| {
        d.kind == "payment_intent.succeeded"
            && d.answer["outcome"]
                .as_str()
                .is_some_and(|o| o.contains(payment_id))
    })
}

#[tokio::test]
async fn localstripe_plan_priced_payment_intent_buys_one_period_and_client_amounts_never_grant() {
    let Some((ls, _be, api, relay)) = with_localstripe().await else {
        return;
    };
    let user = "pia";
    let (key_id, _) = api.mint(user).await;
    let (s, c) = api
        .call(
            "POST",
            "/api/v1/billing/create-customer",
            Some(json!({"user_id": user})),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    let intents = || async {
        let (s, v) = ls.call("GET", "/v1/payment_intents", &[]).await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().map(Vec::len).unwrap_or(0)
    };

    // A plan with a client-chosen amount is refused before anything reaches Stripe.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/payment-intent",
            Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly", "amount": 100,
                "currency": "eur", "payment_method_types": ["card"], "payment_method": "pm_card_visa", "confirm": true})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("amount_mismatch")),
        "{v}"
    );
    assert_eq!(intents().await, 0, "nothing reached Stripe");

    // A client-chosen amount (the plan's price, even naming the plan in metadata) is paid
    // and recorded, but buys nothing.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/payment-intent",
            Some(json!({"user_id": user, "amount": 2900, "currency": "eur",
                "metadata": {"plan": "pro", "cycle": "monthly"},
                "payment_method_types": ["card"], "payment_method": "pm_card_visa", "confirm": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], json!("succeeded"), "{v}");
    assert_eq!(v["plan"], Value::Null, "{v}");
    let plain = v["payment_id"].as_str().unwrap_or_default().to_string();
    let (d, _) = eventually(
        Duration::from_secs(20),
        "the client-priced payment settled by the signed webhook",
        || async { settled(&relay, &plain) },
    )
    .await;
    assert_eq!((d.status, d.answer["applied"].clone()), (200, json!(true)));
    assert_eq!(
        api.per_minute(&key_id).await,
        10,
        "a client amount grants nothing"
    );
    let subs = api.subscriptions(user).await;
    assert_eq!(subs["plan"], json!("free"), "{subs}");

    // The plan-priced intent: the server sets 2900 EUR; its success buys one month of pro.
    let (s, v) = api
        .call(
            "POST",
            "/api/v1/billing/payment-intent",
            Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly",
                "payment_method_types": ["card"], "payment_method": "pm_card_visa", "confirm": true})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (
            v["amount"].clone(),
            v["currency"].clone(),
            v["status"].clone()
        ),
        (json!(2900), json!("eur"), json!("succeeded")),
        "{v}"
    );
    let intent = v["payment_intent_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let paid = v["payment_id"].as_str().unwrap_or_default().to_string();
    let (at_stripe_s, at_stripe) = ls
        .call("GET", &format!("/v1/payment_intents/{intent}"), &[])
        .await;
    assert_eq!(at_stripe_s, 200, "{at_stripe}");
    assert_eq!(
        at_stripe["amount"],
        json!(2900),
        "the server's amount went to Stripe"
    );
    let (d, _) = eventually(
        Duration::from_secs(20),
        "payment_intent.succeeded applied",
        || async { settled(&relay, &paid) },
    )
    .await;
    assert_eq!((d.status, d.answer["applied"].clone()), (200, json!(true)));
    limit_becomes(&api, &key_id, 100, d.at, Duration::from_secs(1)).await;
    let subs = api.subscriptions(user).await;
    assert_eq!(subs["plan"], json!("pro"), "{subs}");
    let sub = subs["subscriptions"][0].clone();
    assert_eq!(
        (sub["status"].clone(), sub["cycle"].clone()),
        (json!("active"), json!("monthly")),
        "{sub}"
    );
    let start = tollgate_e2e::stripe::parse_rfc3339(
        sub["current_period_start"].as_str().unwrap_or_default(),
    );
    let end =
        tollgate_e2e::stripe::parse_rfc3339(sub["current_period_end"].as_str().unwrap_or_default());
    assert!(
        (28 * 86_400..=31 * 86_400).contains(&(end - start)),
        "one month: {sub}"
    );

    // Stripe delivering the success again (a new event id for the same intent) buys nothing more.
    let now = api.advance(0).await;
    let ev = event(
        "evt_e2e_pi_again",
        "payment_intent.succeeded",
        now,
        at_stripe,
    );
    let (s, v) = api.deliver(&ev, now).await;
    assert_eq!((s, v["applied"].clone()), (200, json!(false)), "{v}");
    let again = api.subscriptions(user).await["subscriptions"][0].clone();
    assert_eq!(
        again["current_period_end"], sub["current_period_end"],
        "the period was not extended twice"
    );
}
