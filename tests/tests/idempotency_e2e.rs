//! End-to-end (issue 19, item 5): the POSTs that create money or entitlement objects, retried
//! with one `Idempotency-Key` against the real `tollgate-backend` binary, make one object and
//! one provider call, and answer the retry with the first answer's exact bytes; the same key
//! with another body is 409 `idempotency_mismatch`. SEPA (no provider), PayPal (the in-test
//! fake), Stripe Checkout (the in-test fake, which counts calls) and a Stripe PaymentIntent
//! (localstripe, which itself ignores `Idempotency-Key`: only ours can keep it to one).

use serde_json::{json, Value};
use tollgate_e2e::gw::TOKEN;
use tollgate_e2e::paypal_fake::PayPalFake;
use tollgate_e2e::stripe::{plans_toml, Localstripe, StripeBackend};
use tollgate_e2e::stripe_fake::StripeFake;
use tollgate_e2e::{client, Proc, TempDir};

/// A `tollgate-backend serve` on SQLite in its own directory, with `env` added.
struct Backend {
    _proc: Proc,
    url: String,
    _dir: TempDir,
}

fn start(env: &[(String, String)]) -> Backend {
    let dir = TempDir::new("idem");
    let cfg = dir.write(
        "backend.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut all: Vec<(&str, &str)> = vec![("TOLLGATE_SERVICE_TOKEN", TOKEN)];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let proc = Proc::start(
        "tollgate-backend",
        &["--config", cfg.to_str().unwrap_or_default(), "serve"],
        &all,
    );
    let url = tokio::task::block_in_place(|| proc.url("backend"));
    Backend {
        _proc: proc,
        url,
        _dir: dir,
    }
}

fn sepa_env() -> Vec<(String, String)> {
    [
        ("SEPA_HOLDER", "Example SaaS GmbH"),
        ("SEPA_IBAN", "DE89370400440532013000"),
        ("SEPA_BIC", "COBADEFFXXX"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// An answer as the client saw it, bytes included.
struct Answer {
    status: u16,
    replayed: bool,
    bytes: Vec<u8>,
    json: Value,
}

async fn post(base: &str, path: &str, key: Option<&str>, body: &Value) -> Answer {
    let mut req = client()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let bytes = resp.bytes().await.expect("body").to_vec();
    Answer {
        status,
        replayed,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        bytes,
    }
}

/// Asserts `again` is `first` replayed: same status, same bytes, marked as a replay.
fn assert_replay(first: &Answer, again: &Answer) {
    assert!(!first.replayed, "the first answer is not a replay");
    assert_eq!(
        (again.status, again.replayed),
        (first.status, true),
        "{}",
        again.json
    );
    assert_eq!(
        String::from_utf8_lossy(&again.bytes),
        String::from_utf8_lossy(&first.bytes),
        "the identical answer"
    );
}

fn assert_mismatch(a: &Answer) {
    assert_eq!(
        (a.status, a.json["error"]["code"].clone()),
        (409, json!("idempotency_mismatch")),
        "{}",
        a.json
    );
}

/// Ledger entries of `kind` for `user`.
async fn ledgered(base: &str, user: &str, kind: &str) -> Vec<Value> {
    let resp = client()
        .get(format!(
            "{base}/api/v1/billing/ledger?user_id={user}&limit=1000"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("ledger");
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.expect("ledger json");
    v["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sepa_instructions_retried_with_one_key_are_one_payment_with_one_reference() {
    let b = start(&sepa_env());
    let u = &b.url;
    let user = "idem-sepa";
    let body = json!({"user_id": user, "plan": "pro", "cycle": "monthly", "method": "sepa"});
    let first = post(u, "/billing/create", Some("sepa-retry-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.json);
    let reference = first.json["instructions"]["reference"].clone();
    assert!(
        reference.as_str().is_some_and(|r| r.starts_with("RF")),
        "{}",
        first.json
    );
    let again = post(u, "/billing/create", Some("sepa-retry-1"), &body).await;
    assert_replay(&first, &again);
    assert_eq!(again.json["instructions"]["reference"], reference);
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 1);

    // The same key with another body is refused and creates nothing.
    let yearly = json!({"user_id": user, "plan": "pro", "cycle": "yearly", "method": "sepa"});
    assert_mismatch(&post(u, "/billing/create", Some("sepa-retry-1"), &yearly).await);
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 1);

    // Retries racing each other: one payment; every answer is the first one or "in progress".
    let racers: Vec<_> = (0..6)
        .map(|_| {
            let (u, body) = (u.clone(), body.clone());
            tokio::spawn(async move { post(&u, "/billing/create", Some("sepa-race"), &body).await })
        })
        .collect();
    let mut answers = Vec::new();
    for r in racers {
        answers.push(r.await.expect("join"));
    }
    let ok: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(!ok.is_empty());
    assert!(ok.iter().all(|a| a.bytes == ok[0].bytes), "one answer");
    for a in answers.iter().filter(|a| a.status != 200) {
        assert_eq!(
            (a.status, a.json["error"]["code"].clone()),
            (409, json!("idempotency_in_progress")),
            "{}",
            a.json
        );
    }
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 2);

    // Without a key nothing changed: two POSTs are two payments with two references.
    let a = post(u, "/billing/create", None, &body).await;
    let b2 = post(u, "/billing/create", None, &body).await;
    assert_eq!((a.status, b2.status), (200, 200));
    assert_ne!(
        a.json["instructions"]["reference"],
        b2.json["instructions"]["reference"]
    );
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paypal_order_and_capture_retried_with_one_key_call_paypal_once() {
    let fake = PayPalFake::start(3600).await;
    let b = start(&fake.backend_env());
    let u = &b.url;
    let user = "idem-paypal";
    let body = json!({"user_id": user, "plan": "pro", "cycle": "monthly"});
    let first = post(u, "/billing/paypal/order", Some("pp-order-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.json);
    let again = post(u, "/billing/paypal/order", Some("pp-order-1"), &body).await;
    assert_replay(&first, &again);
    assert_eq!(fake.orders_created(), 1);
    let yearly = json!({"user_id": user, "plan": "pro", "cycle": "yearly"});
    assert_mismatch(&post(u, "/billing/paypal/order", Some("pp-order-1"), &yearly).await);
    assert_eq!(fake.orders_created(), 1);
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 1);

    let order_id = first.json["id"].as_str().expect("order id").to_string();
    let link = first.json["approve_url"].as_str().expect("approve url");
    assert_eq!(
        client().get(link).send().await.expect("approve").status(),
        200
    );
    let path = format!("/billing/paypal/capture/{order_id}");
    let captured = post(u, &path, Some("pp-capture-1"), &json!({})).await;
    assert_eq!(
        (captured.status, captured.json["payment_status"].clone()),
        (200, json!("succeeded")),
        "{}",
        captured.json
    );
    let again = post(u, &path, Some("pp-capture-1"), &json!({})).await;
    assert_replay(&captured, &again);
    assert_eq!(fake.capture_calls(), 1, "PayPal was asked to capture once");
    assert_eq!(ledgered(u, user, "payment_succeeded").await.len(), 1);
    assert_eq!(ledgered(u, user, "plan_changed").await.len(), 1);
    // The key belongs to that capture: on another order's path it is another request.
    let other = post(
        u,
        "/billing/paypal/capture/5O190127TN364715T",
        Some("pp-capture-1"),
        &json!({}),
    )
    .await;
    assert_mismatch(&other);
    assert_eq!(fake.capture_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_checkout_retried_with_one_key_is_one_session_and_one_stripe_call() {
    let fake = StripeFake::start("api_requests").await;
    let be = StripeBackend::start(
        Some(&fake.url),
        &[],
        &plans_toml("price_pro_monthly", "price_pro_yearly"),
    );
    let u = &be.url;
    let body = json!({"user_id": "idem-stripe", "plan": "pro", "cycle": "monthly",
        "success_url": "https://example.com/ok", "cancel_url": "https://example.com/cancel"});
    let first = post(u, "/api/v1/billing/checkout", Some("co-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.json);
    let again = post(u, "/api/v1/billing/checkout", Some("co-1"), &body).await;
    assert_replay(&first, &again);
    let sessions = || {
        fake.requests()
            .into_iter()
            .filter(|(m, p, _)| m == "POST" && p == "/v1/checkout/sessions")
            .count()
    };
    assert_eq!(sessions(), 1, "one call to Stripe");
    let yearly = json!({"user_id": "idem-stripe", "plan": "pro", "cycle": "yearly",
        "success_url": "https://example.com/ok", "cancel_url": "https://example.com/cancel"});
    assert_mismatch(&post(u, "/api/v1/billing/checkout", Some("co-1"), &yearly).await);
    assert_eq!(sessions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_payment_intent_retried_with_one_key_is_one_intent_and_one_payment() {
    let Some(ls) = Localstripe::start().await else {
        return;
    };
    let be = StripeBackend::start(
        Some(&ls.url),
        &[],
        &plans_toml("tollgate-pro-monthly", "tollgate-pro-yearly"),
    );
    let u = &be.url;
    let user = "idem-pi";
    let intents = || async {
        let (s, v) = ls.call("GET", "/v1/payment_intents", &[]).await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().map(Vec::len).unwrap_or(0)
    };
    let body = json!({"user_id": user, "plan": "pro", "cycle": "monthly",
        "payment_method_types": ["card"]});
    let first = post(u, "/api/v1/billing/payment-intent", Some("pi-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.json);
    assert_eq!(first.json["amount"], json!(2900), "{}", first.json);
    let again = post(u, "/api/v1/billing/payment-intent", Some("pi-1"), &body).await;
    assert_replay(&first, &again);
    assert_eq!(intents().await, 1, "one intent at Stripe");
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 1);
    let yearly = json!({"user_id": user, "plan": "pro", "cycle": "yearly",
        "payment_method_types": ["card"]});
    assert_mismatch(&post(u, "/api/v1/billing/payment-intent", Some("pi-1"), &yearly).await);
    assert_eq!(intents().await, 1);
    assert_eq!(ledgered(u, user, "payment_created").await.len(), 1);
}

/// Through a gateway (embedded backend), as a client that knows only the gateway's address:
/// the header reaches the backend and the retry is answered from the first grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_gateway_a_retried_grant_is_replayed_and_grants_once() {
    let gw = tokio::task::block_in_place(|| {
        tollgate_e2e::gw::Gateway::embedded(&tollgate_e2e::gw::route("/api", "builtin:echo", ""))
    });
    let u = &gw.url;
    let user = "idem-gw";
    let body = json!({"user_id": user, "plan": "pro", "cycle": "monthly"});
    let path = "/api/v1/billing/subscriptions/manual";
    let first = post(u, path, Some("gw-grant-1"), &body).await;
    assert_eq!(first.status, 201, "{}", first.json);
    let again = post(u, path, Some("gw-grant-1"), &body).await;
    assert_replay(&first, &again);
    assert_eq!(ledgered(u, user, "plan_changed").await.len(), 1);
    let enterprise = json!({"user_id": user, "plan": "enterprise", "cycle": "monthly"});
    assert_mismatch(&post(u, path, Some("gw-grant-1"), &enterprise).await);
    assert_eq!(ledgered(u, user, "plan_changed").await.len(), 1);
}
