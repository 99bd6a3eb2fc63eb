//! An in-test fake of the parts of Stripe that localstripe lacks — Checkout Sessions, Billing
//! Meter events and `Idempotency-Key` replay — written from Stripe's API reference:
//!
//! - Form-encoded requests with bracket notation, `Authorization: Bearer sk_...`, JSON answers,
//!   errors as `{"error": {"type", "code", "message", "param"}}`.
//! - `Idempotency-Key` on a POST: the first answer is saved and replayed (with
//!   `Idempotent-Replayed: true`) for the same key and parameters; other parameters under the
//!   same key are refused with `idempotency_error`.
//! - `POST /v1/checkout/sessions` (`mode`, `line_items[0][price]`, `success_url`,
//!   `client_reference_id`, `metadata[...]`, `customer` / `customer_email`), `GET` one; a test
//!   "pays" a session with [`StripeFake::complete_checkout`], which creates the subscription
//!   (current shapes: `items.data[].current_period_end`) and delivers a signed
//!   `checkout.session.completed` webhook, as Stripe does.
//! - `POST /v1/billing/meter_events` (`event_name`, `payload[stripe_customer_id]`,
//!   `payload[value]`, `identifier`, `timestamp` within 35 days back / 5 minutes ahead); a
//!   duplicate identifier is refused.
//! - Products and Prices: `POST /v1/products` (`name`, `metadata`, optional custom `id`),
//!   `GET /v1/products` (`active`, `limit` 1-100 default 10, `starting_after`, newest first,
//!   `has_more`), `GET /v1/products/{id}`; `POST /v1/prices` (`product`, `unit_amount`,
//!   `currency`, `recurring[interval|interval_count]`, `lookup_key` unique in the account unless
//!   `transfer_lookup_key=true` moves it, `nickname`, `metadata`), `GET /v1/prices` (`active`,
//!   `product`, `lookup_keys[]`, `limit`, `starting_after`), `GET /v1/prices/{id}`.
//! - Fault injection: [`StripeFake::lose_responses`] processes the next requests but answers a
//!   proxy's 502 instead, as when a response is lost on the way back.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    seq: u64,
    idempotency: HashMap<String, (String, u16, String)>,
    customers: BTreeMap<String, Value>,
    sessions: BTreeMap<String, Value>,
    subscriptions: BTreeMap<String, Value>,
    meter_events: Vec<Value>,
    /// In creation order (lists answer newest first).
    products: Vec<Value>,
    prices: Vec<Value>,
    identifiers: HashMap<String, ()>,
    lose: u32,
    webhook: Option<(String, String)>,
    /// Requests seen: (method, path, idempotency key).
    log: Vec<(String, String, Option<String>)>,
}

#[derive(Clone)]
pub struct StripeFake {
    inner: Arc<Mutex<Inner>>,
    pub url: String,
    pub event_name: String,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn err(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    param: Option<&str>,
    msg: &str,
) -> (StatusCode, String) {
    (
        status,
        json!({"error": {"type": kind, "code": code, "param": param, "message": msg}}).to_string(),
    )
}

/// The signature Stripe puts in `Stripe-Signature` for `payload` at `t`.
pub fn sign(secret: &str, t: i64, payload: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("hmac key");
    m.update(format!("{t}.").as_bytes());
    m.update(payload);
    format!("t={t},v1={}", hex_encode(&m.finalize().into_bytes()))
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl StripeFake {
    /// Starts the fake on 127.0.0.1:0 inside the current tokio runtime.
    pub async fn start(event_name: &str) -> StripeFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake stripe");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let fake = StripeFake {
            inner: Arc::new(Mutex::new(Inner::default())),
            url,
            event_name: event_name.to_string(),
        };
        let app = Router::new().fallback(dispatch).with_state(fake.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        fake
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `checkout.session.completed` is delivered, and the signing secret.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.lock().webhook = Some((url.to_string(), secret.to_string()));
    }

    /// The next `n` requests are processed, but their answers are lost (a proxy's 502).
    pub fn lose_responses(&self, n: u32) {
        self.lock().lose = n;
    }

    pub fn meter_events(&self) -> Vec<Value> {
        self.lock().meter_events.clone()
    }

    /// Sum of `payload[value]` Stripe recorded for a customer.
    pub fn metered_total(&self, customer: &str) -> i64 {
        self.lock()
            .meter_events
            .iter()
            .filter(|e| e["payload"]["stripe_customer_id"] == customer)
            .filter_map(|e| {
                e["payload"]["value"]
                    .as_str()
                    .and_then(|v| v.parse::<i64>().ok())
            })
            .sum()
    }

    /// Requests seen so far: (method, path, Idempotency-Key).
    pub fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.lock().log.clone()
    }

    /// Products and prices Stripe holds, in creation order.
    pub fn products(&self) -> Vec<Value> {
        self.lock().products.clone()
    }

    pub fn prices(&self) -> Vec<Value> {
        self.lock().prices.clone()
    }

    pub fn session(&self, id: &str) -> Option<Value> {
        self.lock().sessions.get(id).cloned()
    }

    /// The customer "pays" a Checkout Session: Stripe creates the customer (if needed) and the
    /// subscription, completes the session and sends `checkout.session.completed`. Returns the
    /// webhook delivery's HTTP status.
    pub async fn complete_checkout(&self, session_id: &str) -> u16 {
        let (event, hook) = {
            let mut g = self.lock();
            let mut s = g.sessions.get(session_id).cloned().expect("session exists");
            let t = now();
            let customer = match s["customer"].as_str() {
                Some(c) => c.to_string(),
                None => {
                    g.seq += 1;
                    let id = format!("cus_fake{}", g.seq);
                    g.customers.insert(
                        id.clone(),
                        json!({"id": id, "object": "customer", "email": s["customer_email"]}),
                    );
                    id
                }
            };
            g.seq += 1;
            let sub_id = format!("sub_fake{}", g.seq);
            let price = s["line_items"][0]["price"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let sub = json!({
                "id": sub_id, "object": "subscription", "customer": customer, "status": "active",
                "cancel_at_period_end": false,
                "metadata": s["subscription_data"]["metadata"].clone(),
                "items": {"object": "list", "data": [{
                    "id": format!("si_fake{}", g.seq), "object": "subscription_item",
                    "price": {"id": price, "object": "price"},
                    "current_period_start": t, "current_period_end": t + 30 * 86_400,
                }]},
            });
            g.subscriptions.insert(sub_id.clone(), sub);
            s["status"] = json!("complete");
            s["payment_status"] = json!("paid");
            s["customer"] = json!(customer);
            s["subscription"] = json!(sub_id);
            g.sessions.insert(session_id.to_string(), s.clone());
            g.seq += 1;
            let event = json!({
                "id": format!("evt_fake{}", g.seq), "object": "event", "type": "checkout.session.completed",
                "created": t, "api_version": "2026-09-30.endive", "livemode": false,
                "data": {"object": s},
            });
            (event, g.webhook.clone().expect("set_webhook first"))
        };
        let body = serde_json::to_vec(&event).expect("json");
        let sig = sign(&hook.1, event["created"].as_i64().unwrap_or(0), &body);
        crate::client()
            .post(&hook.0)
            .header("Stripe-Signature", sig)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

/// Parses a form body into (key, value) pairs, keeping order and repeated `a[]` keys.
fn form(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default()
}

/// Rebuilds nested JSON from bracket keys: `a[b]=1` → {"a":{"b":"1"}}, `items[0][price]` → an
/// array of objects, `expand[]` → an array of strings.
fn unflatten(pairs: &[(String, String)]) -> Value {
    let mut root = json!({});
    for (k, v) in pairs {
        let (head, rest) = match k.find('[') {
            Some(i) => (&k[..i], &k[i..]),
            None => (k.as_str(), ""),
        };
        let mut parts = vec![head.to_string()];
        parts.extend(
            rest.split('[')
                .skip(1)
                .map(|s| s.trim_end_matches(']').to_string()),
        );
        insert(&mut root, &parts, v);
    }
    root
}

fn insert(node: &mut Value, parts: &[String], v: &str) {
    let Some((p, rest)) = parts.split_first() else {
        *node = json!(v);
        return;
    };
    if p.is_empty() || p.parse::<usize>().is_ok() {
        if !node.is_array() {
            *node = json!([]);
        }
        if let Value::Array(a) = node {
            let i = p.parse::<usize>().unwrap_or(a.len());
            while a.len() <= i {
                a.push(Value::Null);
            }
            insert(&mut a[i], rest, v);
        }
    } else {
        if !node.is_object() {
            *node = json!({});
        }
        if let Value::Object(o) = node {
            insert(o.entry(p.clone()).or_insert(Value::Null), rest, v);
        }
    }
}

async fn dispatch(
    State(fake): State<StripeFake>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    fake.lock()
        .log
        .push((method.to_string(), path.clone(), idem.clone()));
    let authed = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Bearer sk_"));
    if !authed {
        let (s, b) = err(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            None,
            "Invalid API Key provided",
        );
        return reply(s, b, false);
    }
    // GET parameters come in the query string, POST parameters in the form body.
    let params = if method == Method::GET {
        unflatten(&form(uri.query().unwrap_or("").as_bytes()))
    } else {
        unflatten(&form(&body))
    };
    let canon = {
        let mut pairs = form(&body);
        pairs.sort();
        format!("{method} {path} {pairs:?}")
    };
    if method == Method::POST {
        if let Some(key) = &idem {
            let saved = fake.lock().idempotency.get(key).cloned();
            if let Some((seen, status, body)) = saved {
                if seen != canon {
                    let (s, b) = err(StatusCode::BAD_REQUEST, "idempotency_error", None, None, "Keys for idempotent requests can only be used with the same parameters they were first used with.");
                    return reply(s, b, false);
                }
                return reply(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                    body,
                    true,
                );
            }
        }
    }
    let (status, text) = route(&fake, &method, &path, &params);
    let mut g = fake.lock();
    if method == Method::POST {
        if let Some(key) = idem {
            g.idempotency
                .insert(key, (canon, status.as_u16(), text.clone()));
        }
    }
    if g.lose > 0 {
        g.lose -= 1;
        return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response();
    }
    drop(g);
    reply(status, text, false)
}

fn reply(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut r = (status, [("content-type", "application/json")], body).into_response();
    r.headers_mut().insert(
        "request-id",
        axum::http::HeaderValue::from_static("req_fake"),
    );
    if replayed {
        r.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
    }
    r
}

fn missing(param: &str) -> (StatusCode, String) {
    err(
        StatusCode::BAD_REQUEST,
        "invalid_request_error",
        Some("parameter_missing"),
        Some(param),
        &format!("Missing required param: {param}."),
    )
}

fn no_such(what: &str, id: &str) -> (StatusCode, String) {
    err(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        Some("resource_missing"),
        Some("id"),
        &format!("No such {what}: '{id}'"),
    )
}

/// A list page: `limit` (1-100, default 10) objects after `starting_after`, and `has_more`.
fn page(url: &str, all: Vec<Value>, p: &Value) -> (StatusCode, String) {
    let limit = match p["limit"].as_str().map(str::parse::<usize>) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return err(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid_integer"),
                Some("limit"),
                "limit must be between 1 and 100",
            )
        }
    };
    let start = match p["starting_after"].as_str() {
        None => 0,
        Some(after) => match all.iter().position(|x| x["id"] == after) {
            Some(i) => i + 1,
            None => return no_such("object", after),
        },
    };
    let rest = &all[start.min(all.len())..];
    let data: Vec<Value> = rest.iter().take(limit).cloned().collect();
    let body = json!({"object": "list", "url": url, "has_more": rest.len() > limit, "data": data});
    (StatusCode::OK, body.to_string())
}

fn route(fake: &StripeFake, method: &Method, path: &str, p: &Value) -> (StatusCode, String) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut g = fake.lock();
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["v1", "customers"]) => {
            g.seq += 1;
            let id = format!("cus_fake{}", g.seq);
            let c = json!({"id": id, "object": "customer", "email": p["email"], "name": p["name"], "metadata": p["metadata"]});
            g.customers.insert(id, c.clone());
            (StatusCode::OK, c.to_string())
        }
        ("POST", ["v1", "products"]) => {
            let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) else {
                return missing("name");
            };
            let id = match p["id"].as_str() {
                Some(id) => {
                    if g.products.iter().any(|x| x["id"] == id) {
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_request_error",
                            Some("resource_already_exists"),
                            Some("id"),
                            "Product already exists.",
                        );
                    }
                    id.to_string()
                }
                None => {
                    g.seq += 1;
                    format!("prod_fake{}", g.seq)
                }
            };
            let active = p["active"].as_str() != Some("false");
            let prod = json!({"id": id, "object": "product", "name": name, "active": active,
                "description": p.get("description").cloned().unwrap_or(Value::Null),
                "metadata": p.get("metadata").cloned().unwrap_or(json!({})), "created": now(), "livemode": false});
            g.products.push(prod.clone());
            (StatusCode::OK, prod.to_string())
        }
        ("GET", ["v1", "products"]) => {
            let active = p["active"].as_str().map(|a| a == "true");
            let all: Vec<Value> = g
                .products
                .iter()
                .rev()
                .filter(|x| active.is_none_or(|a| x["active"] == a))
                .cloned()
                .collect();
            page("/v1/products", all, p)
        }
        ("GET", ["v1", "products", id]) => match g.products.iter().find(|x| x["id"] == *id) {
            Some(x) => (StatusCode::OK, x.to_string()),
            None => no_such("product", id),
        },
        ("POST", ["v1", "prices"]) => {
            let Some(product) = p["product"].as_str() else {
                return missing("product");
            };
            if !g.products.iter().any(|x| x["id"] == product) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("resource_missing"),
                    Some("product"),
                    &format!("No such product: '{product}'"),
                );
            }
            let Some(currency) = p["currency"].as_str().filter(|c| c.len() == 3) else {
                return missing("currency");
            };
            let Some(amount) = p["unit_amount"]
                .as_str()
                .and_then(|a| a.parse::<i64>().ok())
            else {
                return missing("unit_amount");
            };
            if amount < 0 {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    Some("unit_amount"),
                    "Invalid non-negative integer",
                );
            }
            let recurring = match p["recurring"]["interval"].as_str() {
                None => Value::Null,
                Some(i) if ["day", "week", "month", "year"].contains(&i) => {
                    let count = p["recurring"]["interval_count"]
                        .as_str()
                        .and_then(|c| c.parse::<i64>().ok())
                        .unwrap_or(1);
                    json!({"interval": i, "interval_count": count, "usage_type": "licensed"})
                }
                Some(_) => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        Some("parameter_invalid_string"),
                        Some("recurring[interval]"),
                        "Invalid interval",
                    )
                }
            };
            let lookup_key = p["lookup_key"].as_str().map(str::to_string);
            if let Some(k) = &lookup_key {
                let holder = g.prices.iter().position(|x| x["lookup_key"] == k.as_str());
                if let Some(i) = holder {
                    if p["transfer_lookup_key"].as_str() == Some("true") {
                        g.prices[i]["lookup_key"] = Value::Null;
                    } else {
                        let other = g.prices[i]["id"].as_str().unwrap_or_default().to_string();
                        return err(
                            StatusCode::BAD_REQUEST,
                            "invalid_request_error",
                            None,
                            Some("lookup_key"),
                            &format!("A price (`{other}`) already uses that lookup key."),
                        );
                    }
                }
            }
            g.seq += 1;
            let id = format!("price_fake{}", g.seq);
            let price = json!({"id": id, "object": "price", "active": true, "product": product,
                "unit_amount": amount, "unit_amount_decimal": amount.to_string(), "currency": currency.to_ascii_lowercase(),
                "recurring": recurring, "type": if recurring.is_null() { "one_time" } else { "recurring" },
                "lookup_key": lookup_key, "nickname": p.get("nickname").cloned().unwrap_or(Value::Null),
                "metadata": p.get("metadata").cloned().unwrap_or(json!({})), "created": now(), "livemode": false});
            g.prices.push(price.clone());
            (StatusCode::OK, price.to_string())
        }
        ("GET", ["v1", "prices"]) => {
            let active = p["active"].as_str().map(|a| a == "true");
            let keys: Option<Vec<&str>> = p["lookup_keys"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect());
            let product = p["product"].as_str();
            let all: Vec<Value> = g
                .prices
                .iter()
                .rev()
                .filter(|x| active.is_none_or(|a| x["active"] == a))
                .filter(|x| product.is_none_or(|pr| x["product"] == pr))
                .filter(|x| {
                    keys.as_ref()
                        .is_none_or(|k| x["lookup_key"].as_str().is_some_and(|l| k.contains(&l)))
                })
                .cloned()
                .collect();
            page("/v1/prices", all, p)
        }
        ("GET", ["v1", "prices", id]) => match g.prices.iter().find(|x| x["id"] == *id) {
            Some(x) => (StatusCode::OK, x.to_string()),
            None => no_such("price", id),
        },
        ("POST", ["v1", "checkout", "sessions"]) => {
            let mode = p["mode"].as_str().unwrap_or("");
            if !["payment", "subscription", "setup"].contains(&mode) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    Some("mode"),
                    "Missing required param: mode.",
                );
            }
            let Some(price) = p["line_items"][0]["price"].as_str() else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    Some("line_items"),
                    "line_items required",
                );
            };
            if p["success_url"].as_str().is_none() {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    Some("success_url"),
                    "Missing required param: success_url.",
                );
            }
            if p["client_reference_id"]
                .as_str()
                .is_some_and(|c| c.len() > 200)
            {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("string_too_long"),
                    Some("client_reference_id"),
                    "too long",
                );
            }
            if let Some(c) = p["customer"].as_str() {
                if !g.customers.contains_key(c) {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        Some("resource_missing"),
                        Some("customer"),
                        "No such customer",
                    );
                }
            }
            g.seq += 1;
            let id = format!("cs_test_fake{}", g.seq);
            let created = now();
            let s = json!({
                "id": id, "object": "checkout.session", "mode": mode, "status": "open", "payment_status": "unpaid",
                "url": format!("https://checkout.stripe.com/c/pay/{id}"), "created": created, "expires_at": created + 86_400,
                "customer": p.get("customer").cloned().unwrap_or(Value::Null), "customer_email": p["customer_email"],
                "client_reference_id": p["client_reference_id"], "metadata": p.get("metadata").cloned().unwrap_or(json!({})),
                "subscription": null, "success_url": p["success_url"], "cancel_url": p["cancel_url"],
                "line_items": [{"price": price, "quantity": p["line_items"][0]["quantity"]}],
                "subscription_data": p.get("subscription_data").cloned().unwrap_or(json!({})),
            });
            g.sessions.insert(id, s.clone());
            (StatusCode::OK, s.to_string())
        }
        ("GET", ["v1", "checkout", "sessions", id]) => match g.sessions.get(*id) {
            Some(s) => (StatusCode::OK, s.to_string()),
            None => err(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("resource_missing"),
                Some("session"),
                "No such checkout.session",
            ),
        },
        ("GET", ["v1", "subscriptions", id]) => match g.subscriptions.get(*id) {
            Some(s) => (StatusCode::OK, s.to_string()),
            None => err(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                Some("resource_missing"),
                Some("id"),
                "No such subscription",
            ),
        },
        ("POST", ["v1", "billing", "meter_events"]) => {
            if p["event_name"].as_str() != Some(fake.event_name.as_str()) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("resource_missing"),
                    Some("event_name"),
                    "No active meter found for event_name",
                );
            }
            let customer = p["payload"]["stripe_customer_id"].as_str().unwrap_or("");
            if !customer.starts_with("cus_") {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    Some("payload[stripe_customer_id]"),
                    "customer required",
                );
            }
            if p["payload"]["value"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .is_none()
            {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    Some("payload[value]"),
                    "value must be an integer",
                );
            }
            let t = now();
            let ts = p["timestamp"]
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(t);
            if ts < t - 35 * 86_400 || ts > t + 300 {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("timestamp_out_of_range"),
                    Some("timestamp"),
                    "timestamp must be within the past 35 days or 5 minutes into the future",
                );
            }
            let ident = match p["identifier"].as_str() {
                Some(i) => i.to_string(),
                None => {
                    g.seq += 1;
                    format!("fake_ident_{}", g.seq)
                }
            };
            if ident.len() > 100 {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("string_too_long"),
                    Some("identifier"),
                    "identifier too long",
                );
            }
            if g.identifiers.contains_key(&ident) {
                return err(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("duplicate_identifier"),
                    Some("identifier"),
                    "An event with this identifier already exists",
                );
            }
            g.identifiers.insert(ident.clone(), ());
            let e = json!({"object": "billing.meter_event", "created": t, "event_name": p["event_name"], "identifier": ident,
                "livemode": false, "payload": p["payload"], "timestamp": ts});
            g.meter_events.push(e.clone());
            (StatusCode::OK, e.to_string())
        }
        _ => err(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            None,
            None,
            &format!("Unrecognized request URL ({method} {path})"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unflatten_brackets() {
        let pairs = vec![
            ("items[0][price]".to_string(), "price_1".to_string()),
            ("metadata[user_id]".to_string(), "alice".to_string()),
            ("expand[]".to_string(), "a".to_string()),
            ("expand[]".to_string(), "b".to_string()),
            ("mode".to_string(), "subscription".to_string()),
        ];
        let v = unflatten(&pairs);
        assert_eq!(v["items"][0]["price"], "price_1");
        assert_eq!(v["metadata"]["user_id"], "alice");
        assert_eq!(v["expand"], json!(["a", "b"]));
        assert_eq!(v["mode"], "subscription");
    }

    #[test]
    fn signature_matches_the_providers_vector() {
        assert_eq!(
            sign("whsec_s3cr3t", 1_795_541_753, br#"{"id":"evt_1"}"#),
            "t=1795541753,v1=17ea0f309b4a9a10720eb5caa12aff0071bb4bb749bf62b0684ad6d6da4ae665"
        );
    }
}
