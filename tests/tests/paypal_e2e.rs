//! End-to-end: the real `tollgate-backend` binary against the PayPal fake (tests/src/paypal_fake.rs).
//! Every helper is driven by base URLs, so the same calls run directly at the backend or through
//! a gateway.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::paypal_fake::{post_webhook, PayPalFake, WEBHOOK_ID};
use tollgate_e2e::{client, eventually, Proc, TempDir};

const TOKEN: &str = "paypal-e2e-service-token-0123456789";
/// Webhook headers as (name, value) pairs.
type Headers = Vec<(String, String)>;

const FEED_TOKEN: &str = "paypal-e2e-feed-token-0123456789";

struct Setup {
    fake: PayPalFake,
    url: String,
    _backend: Proc,
    _dir: TempDir,
}

fn start_backend(env: &[(String, String)]) -> (Proc, String, TempDir) {
    let dir = TempDir::new("paypal");
    let cfg = format!(
        "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nfeed_token = \"{FEED_TOKEN}\"\n",
        dir.path().join("data").display()
    );
    let path = dir.write("backend.toml", &cfg);
    let mut all: Vec<(&str, &str)> = vec![
        ("TOLLGATE_SERVICE_TOKEN", TOKEN),
        ("TOLLGATE_TEST_CLOCK", "1"),
    ];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let proc = Proc::start(
        "tollgate-backend",
        &["--config", path.to_str().unwrap_or_default(), "serve"],
        &all,
    );
    let url = tokio::task::block_in_place(|| proc.url("backend"));
    (proc, url, dir)
}

async fn setup() -> Setup {
    setup_with(3600).await
}

async fn setup_with(token_lifetime: u64) -> Setup {
    let fake = PayPalFake::start(token_lifetime).await;
    let (backend, url, dir) = start_backend(&fake.backend_env());
    Setup {
        fake,
        url,
        _backend: backend,
        _dir: dir,
    }
}

async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    call_with(method, url, body, &[]).await
}

async fn call_with(
    method: &str,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client()
        .request(method.parse().expect("method"), url)
        .bearer_auth(TOKEN);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn mint_free_key(base: &str, user: &str) -> String {
    let (st, key) = call(
        "POST",
        &format!("{base}/api/marketplace/keys/generate"),
        Some(json!({"user_id": user, "plan": "free", "name": "paypal test"})),
    )
    .await;
    assert_eq!(st, 200, "{key}");
    assert_eq!(key["rate_limit"], json!(10));
    key["key_id"].as_str().expect("key_id").to_string()
}

async fn per_minute(base: &str, key_id: &str) -> u64 {
    let (st, u) = call(
        "GET",
        &format!("{base}/api/marketplace/keys/{key_id}/usage"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{u}");
    u["rate_limit"]["requests_per_minute"].as_u64().unwrap_or(0)
}

/// The key's limit as the gateways' feed carries it.
async fn feed_per_minute(base: &str, key_id: &str) -> Option<u64> {
    let (st, page) = call("GET", &format!("{base}/internal/feed?since=0"), None).await;
    assert_eq!(st, 200, "{page}");
    page["keys"]
        .as_array()?
        .iter()
        .filter(|k| k["key_id"] == json!(key_id))
        .filter_map(|k| k["limits"]["per_minute"].as_u64())
        .next_back()
}

async fn wait_limit(base: &str, key_id: &str, want: u64) -> Duration {
    let (_, took) = eventually(
        Duration::from_secs(1),
        &format!("key {key_id} at {want}/min"),
        || async {
            let api = per_minute(base, key_id).await;
            let feed = feed_per_minute(base, key_id).await;
            (api == want && feed == Some(want)).then_some(())
        },
    )
    .await;
    took
}

async fn subscriptions(base: &str, user: &str) -> Value {
    let (st, v) = call(
        "GET",
        &format!("{base}/api/v1/billing/subscriptions?user_id={user}"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v
}

/// The user's PayPal subscriptions.
async fn paypal_subs(base: &str, user: &str) -> Vec<Value> {
    subscriptions(base, user).await["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s["provider"] == json!("paypal"))
        .collect()
}

/// `2026-01-31T10:00:00Z` → `2026-02-28T10:00:00Z`: one calendar month, day clamped.
fn plus_month(t: &str) -> String {
    let y: i64 = t[0..4].parse().expect("year");
    let m: i64 = t[5..7].parse().expect("month");
    let d: i64 = t[8..10].parse().expect("day");
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let leap = (ny % 4 == 0 && ny % 100 != 0) || ny % 400 == 0;
    let dim = match nm {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    format!("{ny:04}-{nm:02}-{:02}{}", d.min(dim), &t[10..])
}

/// Orders pro monthly for `user`; returns (order id, payment id, approve link).
async fn order_pro(base: &str, user: &str) -> (String, String, String) {
    let (st, o) = call(
        "POST",
        &format!("{base}/billing/paypal/order"),
        Some(json!({"user_id": user, "plan": "pro", "cycle": "monthly"})),
    )
    .await;
    assert_eq!(st, 200, "{o}");
    let approve = o["links"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["rel"] == json!("approve")))
        .and_then(|l| l["href"].as_str())
        .expect("approve link")
        .to_string();
    (
        o["id"].as_str().expect("order id").to_string(),
        o["payment_id"].as_str().expect("payment id").to_string(),
        approve,
    )
}

/// The buyer follows the approve link.
async fn approve(link: &str) {
    let resp = client().get(link).send().await.expect("approve");
    assert_eq!(resp.status().as_u16(), 200);
}

async fn capture(base: &str, order_id: &str) -> (u16, Value) {
    call(
        "POST",
        &format!("{base}/billing/paypal/capture/{order_id}"),
        None,
    )
    .await
}

async fn ledger(base: &str, user: &str) -> String {
    let (st, v) = call(
        "GET",
        &format!("{base}/api/v1/billing/ledger?user_id={user}&limit=1000"),
        None,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    v.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_buys_a_period_and_paying_early_extends_it() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "alice").await;
    assert_eq!(per_minute(u, &key_id).await, 10);

    // A client cannot choose the price of a plan: refused before anything reaches PayPal.
    for body in [
        json!({"user_id": "alice", "plan": "pro", "cycle": "monthly", "amount": "1.00"}),
        json!({"user_id": "alice", "plan": "pro", "cycle": "monthly", "amount": 1, "currency": "EUR"}),
        json!({"user_id": "alice", "plan": "pro", "intent": "CAPTURE",
               "purchase_units": [{"amount": {"currency_code": "EUR", "value": "1.00"}}]}),
    ] {
        let (st, e) = call("POST", &format!("{u}/billing/paypal/order"), Some(body)).await;
        assert_eq!(
            (st, e["error"]["code"].clone()),
            (400, json!("client_amount_not_allowed")),
            "{e}"
        );
    }
    for (body, code) in [
        (json!({"user_id": "alice", "plan": "gold"}), "unknown_plan"),
        (
            json!({"user_id": "alice", "plan": "pro", "cycle": "weekly"}),
            "unknown_cycle",
        ),
        (json!({"user_id": "alice", "plan": "free"}), "invalid_plan"),
        (json!({"plan": "pro"}), "invalid_body"),
        (json!({"user_id": "alice", "plan": 5}), "invalid_body"),
    ] {
        let (st, e) = call("POST", &format!("{u}/billing/paypal/order"), Some(body)).await;
        assert_eq!((st, e["error"]["code"].clone()), (400, json!(code)), "{e}");
    }
    assert_eq!(s.fake.orders_created(), 0);

    // The server prices pro monthly at 29.00 EUR and ties the order to our payment.
    let (order_id, payment_id, link) = order_pro(u, "alice").await;
    let at_paypal = s.fake.order(&order_id).expect("order at PayPal");
    let unit = &at_paypal["purchase_units"][0];
    assert_eq!(
        unit["amount"],
        json!({"currency_code": "EUR", "value": "29.00"})
    );
    assert_eq!(unit["custom_id"], json!(payment_id));
    assert_eq!(unit["invoice_id"], json!(payment_id));
    assert!(payment_id.starts_with("pay_"), "{payment_id}");

    // Not approved yet: nothing to capture, nothing granted.
    let (st, e) = capture(u, &order_id).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("order_not_approved")),
        "{e}"
    );
    let (st, e) = capture(u, "NOSUCHORDER123").await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (404, json!("order_not_found")),
        "{e}"
    );
    assert_eq!(per_minute(u, &key_id).await, 10);

    approve(&link).await;
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["status"], json!("COMPLETED"));
    assert_eq!(c["payment_status"], json!("succeeded"));
    assert_eq!(c["payment_id"], json!(payment_id));
    assert_eq!(c["changed"], json!(true));
    let capture_id = c["capture_id"].as_str().expect("capture id").to_string();
    let took = wait_limit(u, &key_id, 100).await;
    eprintln!("paypal capture → 100/min at the API and in the feed after {took:?}");

    // One month of pro, bought from now.
    let subs = paypal_subs(u, "alice").await;
    assert_eq!(subs.len(), 1, "{subs:?}");
    let start = subs[0]["current_period_start"]
        .as_str()
        .expect("start")
        .to_string();
    let end1 = subs[0]["current_period_end"]
        .as_str()
        .expect("end")
        .to_string();
    assert_eq!(subs[0]["plan"], json!("pro"));
    assert_eq!(end1, plus_month(&start));
    assert_eq!(subscriptions(u, "alice").await["plan"], json!("pro"));

    // A replayed capture answers the same and buys nothing more.
    let captures_before = s.fake.capture_calls();
    let (st, again) = capture(u, &order_id).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["capture_id"], json!(capture_id));
    assert_eq!(again["payment_status"], json!("succeeded"));
    assert_eq!(again["changed"], json!(false));
    assert!(s.fake.capture_calls() > captures_before);
    // The webhook for the same capture, delivered twice: nothing more either.
    let event = s.fake.capture_event(&order_id, "PAYMENT.CAPTURE.COMPLETED");
    let (st, r) = s.fake.send_webhook(u, &event).await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["outcome"].as_str().unwrap_or("").contains("unchanged"),
        "{r}"
    );
    let (st, r) = s.fake.send_webhook(u, &event).await;
    assert_eq!((st, r["duplicate"].clone()), (200, json!(true)), "{r}");
    let subs = paypal_subs(u, "alice").await;
    assert_eq!(subs[0]["current_period_end"], json!(end1));

    // Paying again before the end extends the same period by one more month.
    let (order2, payment2, link2) = order_pro(u, "alice").await;
    assert_ne!(order2, order_id);
    assert_ne!(payment2, payment_id);
    approve(&link2).await;
    let (st, c2) = capture(u, &order2).await;
    assert_eq!(
        (st, c2["payment_status"].clone()),
        (200, json!("succeeded")),
        "{c2}"
    );
    let subs = paypal_subs(u, "alice").await;
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0]["current_period_end"], json!(plus_month(&end1)));
    assert_eq!(c2["period_end"], json!(plus_month(&end1)));
    assert_eq!(per_minute(u, &key_id).await, 100);

    // Every effect is in the ledger with its cause.
    let l = ledger(u, "alice").await;
    assert!(
        l.contains(&format!("POST /billing/paypal/capture/{order_id}")),
        "{l}"
    );
    assert!(l.contains("payment_succeeded"), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refund_webhook_ends_the_period_it_bought() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "rita").await;
    let (order_id, _, link) = order_pro(u, "rita").await;
    approve(&link).await;
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(st, 200, "{c}");
    wait_limit(u, &key_id, 100).await;

    // A partial refund keeps the period.
    let partial = s.fake.refund(&order_id, Some("5.00"));
    let (st, r) = s.fake.send_webhook(u, &partial).await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["outcome"].as_str().unwrap_or("").contains("partial"),
        "{r}"
    );
    assert_eq!(per_minute(u, &key_id).await, 100);

    // The rest refunded: PayPal's capture is REFUNDED, the period ends, the key drops.
    let rest = s.fake.refund(&order_id, None);
    let (st, r) = s.fake.send_webhook(u, &rest).await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["outcome"].as_str().unwrap_or("").contains("refunded"),
        "{r}"
    );
    wait_limit(u, &key_id, 10).await;
    let subs = subscriptions(u, "rita").await;
    assert_eq!(subs["plan"], json!("free"), "{subs}");
    // Replayed: nothing changes twice.
    let (st, r) = s.fake.send_webhook(u, &rest).await;
    assert_eq!((st, r["duplicate"].clone()), (200, json!(true)), "{r}");
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(
        (st, c["payment_status"].clone()),
        (200, json!("refunded")),
        "{c}"
    );
    assert_eq!(per_minute(u, &key_id).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_webhooks_change_nothing_and_pending_captures_wait_for_the_real_one() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "pete").await;
    let (order_id, payment_id, link) = order_pro(u, "pete").await;
    approve(&link).await;
    s.fake.next_capture_status("PENDING");
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(st, 200, "{c}");
    assert_eq!(c["capture_status"], json!("PENDING"));
    assert_eq!(c["payment_status"], json!("pending"));
    assert_eq!(per_minute(u, &key_id).await, 10);

    let genuine = s.fake.complete_capture(&order_id);
    let good = s.fake.signed_headers(&genuine, WEBHOOK_ID);
    let set = |h: &[(String, String)], name: &str, value: &str| -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| {
                if k == name {
                    (k.clone(), value.to_string())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect()
    };
    let tampered: Vec<u8> = String::from_utf8_lossy(&genuine)
        .replace("PAYMENT.CAPTURE.COMPLETED", "PAYMENT.CAPTURE.COMPLETED ")
        .into_bytes();
    let port = u.rsplit(':').next().unwrap_or("1");
    let forgeries: Vec<(&str, Vec<u8>, Headers)> = vec![
        ("body changed after signing", tampered, good.clone()),
        (
            "signed for another webhook id",
            genuine.clone(),
            s.fake.signed_headers(&genuine, "OTHERWEBHOOK"),
        ),
        (
            "garbage signature",
            genuine.clone(),
            set(&good, "PAYPAL-TRANSMISSION-SIG", "bm90IGEgc2lnbmF0dXJl"),
        ),
        (
            "not base64",
            genuine.clone(),
            set(&good, "PAYPAL-TRANSMISSION-SIG", "%%%"),
        ),
        (
            "other transmission id",
            genuine.clone(),
            set(&good, "PAYPAL-TRANSMISSION-ID", "a-different-id"),
        ),
        (
            "wrong algorithm",
            genuine.clone(),
            set(&good, "PAYPAL-AUTH-ALGO", "SHA1withRSA"),
        ),
        (
            "certificate off PayPal",
            genuine.clone(),
            set(&good, "PAYPAL-CERT-URL", "https://evil.example/cert.pem"),
        ),
        (
            "userinfo trick",
            genuine.clone(),
            set(
                &good,
                "PAYPAL-CERT-URL",
                &format!("https://api.paypal.com@127.0.0.1:{port}/v1/notifications/certs/x"),
            ),
        ),
        (
            "paypal.com as a subdomain",
            genuine.clone(),
            set(
                &good,
                "PAYPAL-CERT-URL",
                "https://api.paypal.com.evil.example/cert",
            ),
        ),
        (
            "unknown certificate",
            genuine.clone(),
            set(
                &good,
                "PAYPAL-CERT-URL",
                &format!("{}/v1/notifications/certs/CERT-other", s.fake.base_url()),
            ),
        ),
        ("no headers", genuine.clone(), vec![]),
    ];
    for (what, body, headers) in forgeries {
        let (st, r) = post_webhook(u, &body, &headers).await;
        assert_eq!(st, 400, "{what}: {r}");
        assert_eq!(
            r["error"]["code"],
            json!("invalid_signature"),
            "{what}: {r}"
        );
    }
    // Signed but not JSON: rejected as an event, not a 500.
    let junk = b"not json".to_vec();
    let (st, r) = s.fake.send_webhook(u, &junk).await;
    assert_eq!(
        (st, r["error"]["code"].clone()),
        (400, json!("invalid_event")),
        "{r}"
    );
    assert_eq!(per_minute(u, &key_id).await, 10);
    let (_, c) = capture(u, &order_id).await;
    assert_eq!(c["payment_status"], json!("pending"), "{c}");

    // The real one settles the payment.
    let (st, r) = post_webhook(u, &genuine, &good).await;
    assert_eq!(st, 200, "{r}");
    wait_limit(u, &key_id, 100).await;
    let l = ledger(u, "pete").await;
    assert!(l.contains("webhook"), "{l}");
    assert!(l.contains(&payment_id), "{l}");
    // Unknown event types are acknowledged and ignored.
    let other = serde_json::to_vec(
        &json!({"id": "WH-OTHER-1", "event_type": "CUSTOMER.DISPUTE.CREATED", "resource": {}}),
    )
    .unwrap_or_default();
    let (st, r) = s.fake.send_webhook(u, &other).await;
    assert_eq!(st, 200, "{r}");
    assert!(
        r["outcome"].as_str().unwrap_or("").starts_with("ignored"),
        "{r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_of_the_wrong_amount_grants_nothing() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "walt").await;
    let (order_id, payment_id, link) = order_pro(u, "walt").await;
    approve(&link).await;
    s.fake.next_capture_value("1.00");
    let (st, e) = capture(u, &order_id).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("amount_mismatch")),
        "{e}"
    );
    assert!(
        e["detail"].as_str().unwrap_or("").contains("1.00 EUR"),
        "{e}"
    );
    // Again: the same answer, still nothing.
    let (st, e) = capture(u, &order_id).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("amount_mismatch")),
        "{e}"
    );
    // Nor does PayPal's webhook for it.
    let event = s.fake.capture_event(&order_id, "PAYMENT.CAPTURE.COMPLETED");
    let (st, r) = s.fake.send_webhook(u, &event).await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(per_minute(u, &key_id).await, 10);
    assert!(paypal_subs(u, "walt").await.is_empty());
    let l = ledger(u, "walt").await;
    assert!(l.contains("amount_mismatch"), "{l}");
    assert!(
        l.contains(&payment_id) && l.contains("payment_failed"),
        "{l}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_fetched_once_and_refreshed_when_paypal_expires_it() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "tina").await;
    // Eight concurrent orders share one token.
    let mut made = Vec::new();
    for _ in 0..8 {
        let base = u.clone();
        made.push(tokio::spawn(async move { order_pro(&base, "tina").await }));
    }
    let mut results = Vec::new();
    for m in made {
        results.push(m.await.expect("order task"));
    }
    assert_eq!(s.fake.orders_created(), 8);
    assert_eq!(s.fake.token_requests(), 1);

    // PayPal expires the token early, mid-flow: one 401, one refresh, the capture goes through.
    let (order_id, _, link) = results.remove(0);
    approve(&link).await;
    s.fake.expire_tokens();
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(
        (st, c["payment_status"].clone()),
        (200, json!("succeeded")),
        "{c}"
    );
    assert_eq!(s.fake.unauthorized_calls(), 1);
    assert_eq!(s.fake.token_requests(), 2);
    wait_limit(u, &key_id, 100).await;
    let (st, _) = capture(u, &order_id).await;
    assert_eq!(st, 200);
    assert_eq!(s.fake.token_requests(), 2);
    assert_eq!(paypal_subs(u, "tina").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_before_they_expire() {
    // PayPal says the token lives 2 s: the backend refreshes it early, never meets a 401.
    let s = setup_with(2).await;
    let u = &s.url;
    order_pro(u, "sam").await;
    assert_eq!(s.fake.token_requests(), 1);
    let (_, took) = eventually(Duration::from_secs(5), "a refreshed token", || async {
        order_pro(u, "sam").await;
        (s.fake.token_requests() >= 2).then_some(())
    })
    .await;
    assert!(
        took < Duration::from_millis(1900),
        "refreshed after {took:?}"
    );
    assert_eq!(s.fake.unauthorized_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_order_form_is_a_plain_payment_and_keys_are_idempotent() {
    let s = setup().await;
    let u = &s.url;
    let key_id = mint_free_key(u, "olga").await;
    let body = json!({"intent": "CAPTURE", "purchase_units": [
        {"amount": {"currency_code": "EUR", "value": "5.00"}, "custom_id": "olga", "description": "Donation"}]});
    let headers = [("Idempotency-Key", "olga-donation-1")];
    let (st, o) = call_with(
        "POST",
        &format!("{u}/billing/paypal/order"),
        Some(body.clone()),
        &headers,
    )
    .await;
    assert_eq!(st, 200, "{o}");
    assert_eq!(o["plan"], Value::Null);
    assert_eq!(o["user_id"], json!("olga"));
    let order_id = o["id"].as_str().expect("id").to_string();
    // A retried POST with the same Idempotency-Key is the same order.
    let (st, again) = call_with(
        "POST",
        &format!("{u}/billing/paypal/order"),
        Some(body),
        &headers,
    )
    .await;
    assert_eq!((st, again["id"].clone()), (200, json!(order_id)), "{again}");
    assert_eq!(s.fake.orders_created(), 1);
    let (st, e) = call_with(
        "POST",
        &format!("{u}/billing/paypal/order"),
        Some(json!({"user_id": "olga", "plan": "pro", "cycle": "monthly"})),
        &headers,
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("idempotency_mismatch")),
        "{e}"
    );

    let unit = &s.fake.order(&order_id).expect("order")["purchase_units"][0];
    assert_eq!(unit["amount"]["value"], json!("5.00"));
    assert_eq!(unit["custom_id"], o["payment_id"]);
    let link = o["approve_url"].as_str().expect("approve url").to_string();
    approve(&link).await;
    let (st, c) = capture(u, &order_id).await;
    assert_eq!(
        (st, c["payment_status"].clone()),
        (200, json!("succeeded")),
        "{c}"
    );
    // Paid, but a client-chosen amount buys no plan.
    assert!(paypal_subs(u, "olga").await.is_empty());
    assert_eq!(per_minute(u, &key_id).await, 10);
    for (body, code) in [
        (
            json!({"intent": "AUTHORIZE", "purchase_units": [{"amount": {"currency_code": "EUR", "value": "5.00"}, "custom_id": "olga"}]}),
            "invalid_body",
        ),
        (
            json!({"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "EUR", "value": "5.001"}, "custom_id": "olga"}]}),
            "invalid_amount",
        ),
        (
            json!({"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "EUR", "value": "-5"}, "custom_id": "olga"}]}),
            "invalid_amount",
        ),
        (
            json!({"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "XYZ", "value": "5"}, "custom_id": "olga"}]}),
            "invalid_amount",
        ),
        (
            json!({"intent": "CAPTURE", "purchase_units": [{"amount": {"currency_code": "EUR", "value": "5.00"}}]}),
            "invalid_body",
        ),
        (
            json!({"intent": "CAPTURE", "purchase_units": []}),
            "invalid_body",
        ),
    ] {
        let (st, e) = call("POST", &format!("{u}/billing/paypal/order"), Some(body)).await;
        assert_eq!((st, e["error"]["code"].clone()), (400, json!(code)), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_paypal_answers_503() {
    let (_backend, u, _dir) = start_backend(&[]);
    for (method, path) in [
        ("POST", "/billing/paypal/order"),
        ("POST", "/billing/paypal/capture/5O190127TN364715T"),
        ("POST", "/billing/paypal/webhook"),
        ("GET", "/billing/paypal/return?token=5O190127TN364715T"),
        ("GET", "/billing/paypal/cancel"),
    ] {
        let body =
            (method == "POST").then(|| json!({"user_id": "u", "plan": "pro", "cycle": "monthly"}));
        let (st, e) = call(method, &format!("{u}{path}"), body).await;
        assert_eq!(
            (st, e["error"]["code"].clone()),
            (503, json!("provider_not_configured")),
            "{method} {path}: {e}"
        );
    }
    let (st, status) = call("GET", &format!("{u}/api/v1/billing/status"), None).await;
    assert_eq!(st, 200);
    assert_eq!(status["providers"]["paypal"]["configured"], json!(false));
}

/// The walk through the gateway (embedded backend) with a real upstream: a free key
/// admits 10 a minute; order pro monthly, approve, capture (all through the gateway); within a
/// second the same key admits 100 a minute at the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_gateway_a_capture_lifts_the_key_to_pro() {
    use tollgate_e2e::gw::{config_text, route, Api, TOKEN as GW_TOKEN};
    let fake = PayPalFake::start(3600).await;
    let upstream = tollgate_e2e::upstream::Upstream::start();
    let dir = TempDir::new("paypal-gw");
    let text = config_text(
        &dir,
        "[backend]\nmode = \"embedded\"\n",
        &route("/api", &upstream.url(), ""),
        "",
    );
    let config = dir.write("gateway.toml", &text);
    let env = fake.backend_env();
    let mut all: Vec<(&str, &str)> = vec![("TOLLGATE_SERVICE_TOKEN", GW_TOKEN)];
    all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let proc = Proc::start(
        "tollgate-gateway",
        &["--config", config.to_str().unwrap_or_default()],
        &all,
    );
    let gw = tokio::task::block_in_place(|| proc.url("gateway"));
    let api = Api {
        base: gw.clone(),
        client: client(),
    };
    let key = api.mint("paypal-gw-user", "free").await;
    let hit = |k: String| {
        let url = format!("{gw}/api/thing");
        async move {
            let r = client()
                .get(url)
                .header("x-api-key", k)
                .send()
                .await
                .expect("call");
            let policy = r
                .headers()
                .get("ratelimit-policy")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (r.status().as_u16(), policy)
        }
    };
    eventually(Duration::from_secs(1), "the key at the gateway", || {
        let k = key.api_key.clone();
        let hit = &hit;
        async move { (hit(k).await.0 == 200).then_some(()) }
    })
    .await;
    let mut admitted = 1;
    for _ in 0..12 {
        let (status, policy) = hit(key.api_key.clone()).await;
        if status == 200 {
            admitted += 1;
            assert!(policy.contains("q=10;"), "{policy}");
        }
    }
    assert_eq!(admitted, 10, "the free minute limit");

    // Order, approve and capture through the gateway's management routes.
    let order_url = format!("{gw}/billing/paypal/order");
    let o: Value = client()
        .post(&order_url)
        .bearer_auth(GW_TOKEN)
        .json(&json!({"user_id": "paypal-gw-user", "plan": "pro", "cycle": "monthly"}))
        .send()
        .await
        .expect("order")
        .json()
        .await
        .expect("order json");
    let order_id = o["id"].as_str().expect("order id").to_string();
    assert_eq!(
        fake.order(&order_id).expect("at PayPal")["purchase_units"][0]["amount"]["value"],
        json!("29.00")
    );
    approve(o["approve_url"].as_str().expect("approve url")).await;
    let resp = client()
        .post(format!("{gw}/billing/paypal/capture/{order_id}"))
        .bearer_auth(GW_TOKEN)
        .send()
        .await
        .expect("capture");
    assert_eq!(resp.status().as_u16(), 200);
    let c: Value = resp.json().await.expect("capture json");
    assert_eq!(c["payment_status"], json!("succeeded"), "{c}");
    let (_, took) = eventually(Duration::from_secs(1), "pro tier at the gateway", || {
        let k = key.api_key.clone();
        let hit = &hit;
        async move {
            let (status, policy) = hit(k).await;
            (status == 200 && policy.contains("q=100;")).then_some(())
        }
    })
    .await;
    eprintln!("paypal capture → 100/min at the gateway after {took:?}");
    let mut total = admitted + 1;
    for _ in 0..110 {
        if hit(key.api_key.clone()).await.0 == 200 {
            total += 1;
        }
    }
    assert_eq!(total, 100, "exactly the pro minute limit");
    // A replayed capture through the gateway grants nothing more.
    let again: Value = client()
        .post(format!("{gw}/billing/paypal/capture/{order_id}"))
        .bearer_auth(GW_TOKEN)
        .send()
        .await
        .expect("capture")
        .json()
        .await
        .expect("json");
    assert_eq!(again["changed"], json!(false), "{again}");
    assert_eq!(again["period_end"], c["period_end"]);
    drop(proc);
}
