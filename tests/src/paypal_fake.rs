//! A fake of PayPal's REST API for end-to-end tests, written from PayPal's public reference
//! (no fake exists in any registry): an in-process axum server on `127.0.0.1:0`.
//!
//! - `POST /v1/oauth2/token`: Basic `client_id:secret`, `grant_type=client_credentials` →
//!   `{access_token, token_type, expires_in, ...}`; the lifetime is configurable and every
//!   issued token can be expired at once ([`PayPalFake::expire_tokens`]).
//! - `POST /v2/checkout/orders`: validates the body (intent, one to ten purchase units, amount
//!   `{currency_code, value}` with at most the currency's decimals, lengths, unique
//!   `invoice_id`), `PayPal-Request-Id` replay returns the same order; `PAYER_ACTION_REQUIRED`
//!   with a `payer-action` link when a payment source is given, else `CREATED` with `approve`.
//! - `GET /v2/checkout/orders/{id}`, `POST /v2/checkout/orders/{id}/capture` (only once the
//!   buyer approved: 422 `ORDER_NOT_APPROVED`; a second capture 422 `ORDER_ALREADY_CAPTURED`;
//!   `PayPal-Request-Id` replay returns the first answer), `GET /v2/payments/captures/{id}`.
//! - Every API call checks the bearer token: unknown or expired → 401 `invalid_token`.
//! - `GET /checkoutnow?token=<id>`: the buyer approves (what PayPal's approval page does).
//! - `GET /v1/notifications/certs/{name}`: a self-signed certificate for a test RSA key, which
//!   signs webhooks the way PayPal does ([`PayPalFake::signed_headers`]).
//!
//! Test knobs: the next capture's status (`PENDING`) or amount, refunds, and counters.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use rsa::pkcs1v15::SigningKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "AfakeClientIdForTollgateTests";
pub const SECRET: &str = "EfakeSecretForTollgateTests";
pub const WEBHOOK_ID: &str = "8PT597110X687430LKGECATA";
const CERT_NAME: &str = "CERT-360caa42-fca2a594-tollgate";

/// The test signing key and its self-signed certificate (made once per test binary).
struct Keys {
    signer: SigningKey<Sha256>,
    cert_pem: String,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::pkcs8::EncodePublicKey;
        use std::str::FromStr;
        use x509_cert::builder::{Builder, CertificateBuilder, Profile};
        use x509_cert::der::{pem::LineEnding, EncodePem};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .expect("generate the test RSA key");
        let signer = SigningKey::<Sha256>::new(private.clone());
        let spki_der = private
            .to_public_key()
            .to_public_key_der()
            .expect("encode the public key");
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::try_from(spki_der.as_bytes())
            .expect("public key info");
        let subject = x509_cert::name::Name::from_str(
            "CN=messageverificationcerts.paypal.test,O=tollgate tests,C=DE",
        )
        .expect("subject");
        let validity = x509_cert::time::Validity::from_now(Duration::from_secs(365 * 86_400))
            .expect("validity");
        let builder = CertificateBuilder::new(
            Profile::Root,
            x509_cert::serial_number::SerialNumber::from(7u32),
            validity,
            subject,
            spki,
            &signer,
        )
        .expect("certificate builder");
        let cert = builder
            .build::<rsa::pkcs1v15::Signature>()
            .expect("sign the certificate");
        let cert_pem = cert.to_pem(LineEnding::LF).expect("certificate PEM");
        Keys { signer, cert_pem }
    })
}

fn random_id(len: usize) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut x =
        (nanos as u64) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id());
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKLMNPRSTUVWXY";
    let mut out = String::with_capacity(len);
    for _ in 0..len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(ALPHABET[(x % 32) as usize] as char);
    }
    out
}

fn now_rfc3339() -> String {
    time_text(std::time::SystemTime::now())
}

/// RFC 3339 UTC without a date library (civil-from-days).
fn time_text(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Decimals PayPal allows per currency (the ones tests use; others default to 2).
fn decimals(currency: &str) -> usize {
    match currency {
        "JPY" | "HUF" | "TWD" => 0,
        _ => 2,
    }
}

/// `"29.00"` → 2900 for a 2-decimal currency; None when not a valid PayPal amount.
fn minor_units(value: &str, currency: &str) -> Option<i64> {
    let dec = decimals(currency);
    let (int, frac) = value.split_once('.').unwrap_or((value, ""));
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > dec
        || (value.contains('.') && frac.is_empty())
        || int.len() > 10
    {
        return None;
    }
    let mut minor: i64 = int.parse().ok()?;
    for i in 0..dec {
        minor = minor * 10
            + frac
                .as_bytes()
                .get(i)
                .map(|c| i64::from(c - b'0'))
                .unwrap_or(0);
    }
    Some(minor)
}

fn format_minor(minor: i64, currency: &str) -> String {
    let dec = decimals(currency);
    if dec == 0 {
        return minor.to_string();
    }
    let scale = 10_i64.pow(dec as u32);
    format!("{}.{:0width$}", minor / scale, minor % scale, width = dec)
}

#[derive(Clone)]
struct FakeOrder {
    id: String,
    status: String,
    intent: String,
    unit: Value,
    payer_action: bool,
    capture: Option<Value>,
    refunded_minor: i64,
    create_time: String,
}

#[derive(Default)]
struct FakeState {
    token_lifetime: u64,
    tokens: HashMap<String, Instant>,
    token_requests: u64,
    unauthorized: u64,
    orders: HashMap<String, FakeOrder>,
    order_by_request: HashMap<String, String>,
    capture_by_request: HashMap<String, (u16, Value)>,
    capture_order: HashMap<String, String>,
    capture_calls: u64,
    next_capture_status: Option<String>,
    next_capture_value: Option<String>,
}

#[derive(Clone)]
struct Shared {
    base: String,
    state: Arc<Mutex<FakeState>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running fake. Dropping it stops the server.
pub struct PayPalFake {
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PayPalFake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn paypal_error(status: StatusCode, name: &str, issue: &str, description: &str) -> Response {
    let message = match status {
        StatusCode::NOT_FOUND => "The specified resource does not exist.",
        StatusCode::UNPROCESSABLE_ENTITY => {
            "The requested action could not be performed, semantically incorrect, or failed business validation."
        }
        _ => "Request is not well-formed, syntactically incorrect, or violates schema.",
    };
    (
        status,
        Json(json!({
            "name": name,
            "message": message,
            "debug_id": random_id(13).to_lowercase(),
            "details": [{"issue": issue, "description": description}],
            "links": [{"href": format!("https://developer.paypal.com/docs/api/orders/v2/#error-{issue}"), "rel": "information_link", "method": "GET"}]
        })),
    )
        .into_response()
}

fn invalid(issue: &str, description: &str) -> Response {
    paypal_error(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        issue,
        description,
    )
}

fn unprocessable(issue: &str, description: &str) -> Response {
    paypal_error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "UNPROCESSABLE_ENTITY",
        issue,
        description,
    )
}

fn not_found() -> Response {
    paypal_error(
        StatusCode::NOT_FOUND,
        "RESOURCE_NOT_FOUND",
        "INVALID_RESOURCE_ID",
        "Specified resource ID does not exist. Please check the resource ID and try again.",
    )
}

/// Checks the bearer token; counts refusals.
// A PayPal error response is the natural error here; size does not matter in a test fake.
#[allow(clippy::result_large_err)]
fn authorized(s: &Shared, headers: &HeaderMap) -> Result<(), Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut st = s.lock();
    let ok = st
        .tokens
        .get(token)
        .is_some_and(|exp| *exp > Instant::now());
    if ok {
        return Ok(());
    }
    st.unauthorized += 1;
    Err((
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": "invalid_token", "error_description": "Token signature verification failed"})),
    )
        .into_response())
}

async fn token(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{SECRET}"))
    );
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if given != expected {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client", "error_description": "Client Authentication failed"})),
        )
            .into_response();
    }
    if !body
        .split('&')
        .any(|kv| kv == "grant_type=client_credentials")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type", "error_description": "Grant Type is NULL"})),
        )
            .into_response();
    }
    let mut st = s.lock();
    st.token_requests += 1;
    let value = format!("A21AA{}", random_id(60));
    let lifetime = st.token_lifetime;
    st.tokens.insert(
        value.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    Json(json!({
        "scope": "https://uri.paypal.com/services/payments/payment https://uri.paypal.com/services/payments/refund",
        "access_token": value,
        "token_type": "Bearer",
        "app_id": "APP-80W284485P519543T",
        "expires_in": lifetime,
        "nonce": format!("{}{}", now_rfc3339(), random_id(20)),
    }))
    .into_response()
}

fn order_json(base: &str, o: &FakeOrder) -> Value {
    let mut unit = o.unit.clone();
    if let Some(c) = &o.capture {
        unit["payments"] = json!({"captures": [c]});
    }
    let mut links = vec![
        json!({"href": format!("{base}/v2/checkout/orders/{}", o.id), "rel": "self", "method": "GET"}),
    ];
    match o.status.as_str() {
        "CREATED" | "PAYER_ACTION_REQUIRED" => links.push(json!({
            "href": format!("{base}/checkoutnow?token={}", o.id),
            "rel": if o.payer_action { "payer-action" } else { "approve" },
            "method": "GET"
        })),
        "APPROVED" => links.push(json!({"href": format!("{base}/v2/checkout/orders/{}/capture", o.id), "rel": "capture", "method": "POST"})),
        _ => {}
    }
    json!({
        "id": o.id,
        "intent": o.intent,
        "status": o.status,
        "purchase_units": [unit],
        "create_time": o.create_time,
        "links": links,
    })
}

// A PayPal error response is the natural error here; size does not matter in a test fake.
#[allow(clippy::result_large_err)]
fn text_field(v: &Value, field: &str, max: usize) -> Result<Option<String>, Response> {
    match v.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(Some(s.clone())),
        Some(_) => Err(invalid(
            "INVALID_STRING_LENGTH",
            &format!("The value of {field} is either too short or too long."),
        )),
    }
}

async fn create_order(State(s): State<Shared>, headers: HeaderMap, body: String) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let request_id = headers
        .get("paypal-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(rid) = &request_id {
        let st = s.lock();
        if let Some(o) = st
            .order_by_request
            .get(rid)
            .and_then(|id| st.orders.get(id))
        {
            return (StatusCode::OK, Json(order_json(&s.base, o))).into_response();
        }
    }
    let Ok(req) = serde_json::from_str::<Value>(&body) else {
        return invalid(
            "MALFORMED_REQUEST_JSON",
            "The request JSON is not well formed.",
        );
    };
    let intent = req["intent"].as_str().unwrap_or("");
    if intent != "CAPTURE" && intent != "AUTHORIZE" {
        return invalid(
            "INVALID_PARAMETER_VALUE",
            "intent: must be CAPTURE or AUTHORIZE",
        );
    }
    let Some(units) = req["purchase_units"]
        .as_array()
        .filter(|u| (1..=10).contains(&u.len()))
    else {
        return invalid(
            "MISSING_REQUIRED_PARAMETER",
            "purchase_units: 1 to 10 required",
        );
    };
    if units.len() > 1 {
        return unprocessable(
            "MULTI_PURCHASE_UNITS_NOT_SUPPORTED",
            "one purchase unit in this fake",
        );
    }
    let unit = &units[0];
    let currency = unit["amount"]["currency_code"].as_str().unwrap_or("");
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return invalid(
            "INVALID_CURRENCY_CODE",
            "Currency code is invalid or is not currently supported.",
        );
    }
    let Some(value) = unit["amount"]["value"].as_str() else {
        return invalid(
            "INVALID_PARAMETER_SYNTAX",
            "amount.value: a string is required",
        );
    };
    match minor_units(value, currency) {
        Some(m) if m > 0 => {}
        Some(_) => {
            return unprocessable("CANNOT_BE_ZERO_OR_NEGATIVE", "Must be greater than zero.")
        }
        None => {
            return unprocessable(
                "DECIMAL_PRECISION",
                "If the currency supports decimals, only two decimal place precision is supported.",
            )
        }
    }
    let mut clean = json!({"reference_id": unit.get("reference_id").cloned().unwrap_or(json!("default")), "amount": {"currency_code": currency, "value": value}});
    for (field, max) in [
        ("custom_id", 127),
        ("invoice_id", 127),
        ("description", 127),
    ] {
        match text_field(unit, field, max) {
            Ok(Some(v)) => clean[field] = json!(v),
            Ok(None) => {}
            Err(r) => return r,
        }
    }
    let ctx = &req["payment_source"]["paypal"]["experience_context"];
    for field in ["return_url", "cancel_url"] {
        if let Some(u) = ctx.get(field) {
            let ok = u
                .as_str()
                .is_some_and(|u| u.starts_with("https://") || u.starts_with("http://"));
            if !ok {
                return invalid(
                    "INVALID_PARAMETER_SYNTAX",
                    &format!("{field}: must be an absolute URL"),
                );
            }
        }
    }
    let payer_action = req.get("payment_source").is_some();
    let mut st = s.lock();
    if let Some(inv) = clean.get("invoice_id").and_then(Value::as_str) {
        if st
            .orders
            .values()
            .any(|o| o.unit.get("invoice_id").and_then(Value::as_str) == Some(inv))
        {
            return unprocessable("DUPLICATE_INVOICE_ID", "Duplicate Invoice ID detected.");
        }
    }
    let order = FakeOrder {
        id: random_id(17),
        status: if payer_action {
            "PAYER_ACTION_REQUIRED"
        } else {
            "CREATED"
        }
        .into(),
        intent: intent.into(),
        unit: clean,
        payer_action,
        capture: None,
        refunded_minor: 0,
        create_time: now_rfc3339(),
    };
    if let Some(rid) = request_id {
        st.order_by_request.insert(rid, order.id.clone());
    }
    let body = order_json(&s.base, &order);
    st.orders.insert(order.id.clone(), order);
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_order(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let st = s.lock();
    match st.orders.get(&id) {
        Some(o) => Json(order_json(&s.base, o)).into_response(),
        None => not_found(),
    }
}

fn capture_json(base: &str, order: &FakeOrder, id: &str, status: &str, value: &str) -> Value {
    let currency = order.unit["amount"]["currency_code"]
        .as_str()
        .unwrap_or("EUR");
    let minor = minor_units(value, currency).unwrap_or(0);
    let fee = minor * 29 / 1000 + 35;
    let mut c = json!({
        "id": id,
        "status": status,
        "amount": {"currency_code": currency, "value": value},
        "final_capture": true,
        "seller_protection": {"status": "ELIGIBLE", "dispute_categories": ["ITEM_NOT_RECEIVED", "UNAUTHORIZED_TRANSACTION"]},
        "seller_receivable_breakdown": {
            "gross_amount": {"currency_code": currency, "value": value},
            "paypal_fee": {"currency_code": currency, "value": format_minor(fee, currency)},
            "net_amount": {"currency_code": currency, "value": format_minor(minor - fee, currency)}
        },
        "supplementary_data": {"related_ids": {"order_id": order.id}},
        "create_time": now_rfc3339(),
        "update_time": now_rfc3339(),
        "links": [
            {"href": format!("{base}/v2/payments/captures/{id}"), "rel": "self", "method": "GET"},
            {"href": format!("{base}/v2/payments/captures/{id}/refund"), "rel": "refund", "method": "POST"},
            {"href": format!("{base}/v2/checkout/orders/{}", order.id), "rel": "up", "method": "GET"}
        ]
    });
    for f in ["custom_id", "invoice_id"] {
        if let Some(v) = order.unit.get(f) {
            c[f] = v.clone();
        }
    }
    if status == "PENDING" {
        c["status_details"] = json!({"reason": "PENDING_REVIEW"});
    }
    c
}

async fn capture_order(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let request_id = headers
        .get("paypal-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut st = s.lock();
    st.capture_calls += 1;
    if let Some(rid) = &request_id {
        if let Some((status, body)) = st.capture_by_request.get(rid) {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return (status, Json(body.clone())).into_response();
        }
    }
    let Some(order) = st.orders.get(&id).cloned() else {
        return not_found();
    };
    match order.status.as_str() {
        "APPROVED" => {}
        "COMPLETED" => {
            return unprocessable(
                "ORDER_ALREADY_CAPTURED",
                "Order already captured.If 'intent=CAPTURE' only one capture per order is allowed.",
            )
        }
        _ => {
            return unprocessable(
                "ORDER_NOT_APPROVED",
                "Payer has not yet approved the Order for payment. Please redirect the payer to the 'rel':'approve' url returned as part of the HATEOAS links within the Create Order call or provide a valid payment_source in the request.",
            )
        }
    }
    let status = st
        .next_capture_status
        .take()
        .unwrap_or_else(|| "COMPLETED".into());
    let value = st.next_capture_value.take().unwrap_or_else(|| {
        order.unit["amount"]["value"]
            .as_str()
            .unwrap_or("0")
            .to_string()
    });
    let capture_id = random_id(17);
    let capture = capture_json(&s.base, &order, &capture_id, &status, &value);
    let mut order = order;
    order.status = "COMPLETED".into();
    order.capture = Some(capture);
    let body = order_json(&s.base, &order);
    st.capture_order.insert(capture_id, order.id.clone());
    st.orders.insert(order.id.clone(), order);
    if let Some(rid) = request_id {
        st.capture_by_request.insert(rid, (201, body.clone()));
    }
    (StatusCode::CREATED, Json(body)).into_response()
}

async fn get_capture(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorized(&s, &headers) {
        return r;
    }
    let st = s.lock();
    let capture = st
        .capture_order
        .get(&id)
        .and_then(|o| st.orders.get(o))
        .and_then(|o| o.capture.clone());
    match capture {
        Some(c) => Json(c).into_response(),
        None => not_found(),
    }
}

/// The buyer on PayPal's approval page.
async fn approve_page(
    State(s): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let id = q.get("token").cloned().unwrap_or_default();
    let mut st = s.lock();
    match st.orders.get_mut(&id) {
        Some(o) if o.status == "CREATED" || o.status == "PAYER_ACTION_REQUIRED" => {
            o.status = "APPROVED".into();
            (StatusCode::OK, "approved").into_response()
        }
        Some(_) => (StatusCode::CONFLICT, "not approvable").into_response(),
        None => (StatusCode::NOT_FOUND, "no such order").into_response(),
    }
}

async fn cert(Path(name): Path<String>) -> Response {
    if name != CERT_NAME {
        return (StatusCode::NOT_FOUND, "no such certificate").into_response();
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-pem-file")],
        keys().cert_pem.clone(),
    )
        .into_response()
}

impl PayPalFake {
    /// Starts the fake with tokens that live `token_lifetime_secs`.
    pub async fn start(token_lifetime_secs: u64) -> PayPalFake {
        // Make the key before serving, so no request waits on key generation.
        let _ = keys();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the PayPal fake");
        let addr = listener.local_addr().expect("fake address");
        let shared = Shared {
            base: format!("http://{addr}"),
            state: Arc::new(Mutex::new(FakeState {
                token_lifetime: token_lifetime_secs,
                ..FakeState::default()
            })),
        };
        let app = Router::new()
            .route("/v1/oauth2/token", post(token))
            .route("/v2/checkout/orders", post(create_order))
            .route("/v2/checkout/orders/{id}", get(get_order))
            .route("/v2/checkout/orders/{id}/capture", post(capture_order))
            .route("/v2/payments/captures/{id}", get(get_capture))
            .route("/checkoutnow", get(approve_page))
            .route("/v1/notifications/certs/{name}", get(cert))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        PayPalFake { shared, task }
    }

    pub fn base_url(&self) -> &str {
        &self.shared.base
    }

    pub fn cert_url(&self) -> String {
        format!("{}/v1/notifications/certs/{CERT_NAME}", self.shared.base)
    }

    /// The environment that points a backend at this fake.
    pub fn backend_env(&self) -> Vec<(String, String)> {
        vec![
            ("PAYPAL_CLIENT_ID".into(), CLIENT_ID.into()),
            ("PAYPAL_SECRET".into(), SECRET.into()),
            ("PAYPAL_BASE".into(), self.shared.base.clone()),
            ("PAYPAL_WEBHOOK_ID".into(), WEBHOOK_ID.into()),
            (
                "TOLLGATE_TEST_PAYPAL_CERT_PREFIX".into(),
                format!("{}/v1/notifications/certs/", self.shared.base),
            ),
        ]
    }

    /// An order as PayPal would show it, without checking a token.
    pub fn order(&self, id: &str) -> Option<Value> {
        let st = self.shared.lock();
        st.orders.get(id).map(|o| order_json(&self.shared.base, o))
    }

    pub fn orders_created(&self) -> usize {
        self.shared.lock().orders.len()
    }

    pub fn token_requests(&self) -> u64 {
        self.shared.lock().token_requests
    }

    /// API calls refused with 401.
    pub fn unauthorized_calls(&self) -> u64 {
        self.shared.lock().unauthorized
    }

    pub fn capture_calls(&self) -> u64 {
        self.shared.lock().capture_calls
    }

    /// Every token issued so far stops working now (PayPal revoked or expired it early).
    pub fn expire_tokens(&self) {
        let past = Instant::now();
        for exp in self.shared.lock().tokens.values_mut() {
            *exp = past;
        }
    }

    /// The next capture gets this status (e.g. `PENDING`).
    pub fn next_capture_status(&self, status: &str) {
        self.shared.lock().next_capture_status = Some(status.to_string());
    }

    /// The next capture is for this amount instead of the order's.
    pub fn next_capture_value(&self, value: &str) {
        self.shared.lock().next_capture_value = Some(value.to_string());
    }

    /// A webhook event body (`event_type` with the order's capture as resource).
    pub fn capture_event(&self, order_id: &str, event_type: &str) -> Vec<u8> {
        let st = self.shared.lock();
        let capture = st
            .orders
            .get(order_id)
            .and_then(|o| o.capture.clone())
            .expect("order has a capture");
        event_body(&self.shared.base, event_type, "capture", capture)
    }

    /// PayPal finishes a pending capture; returns the `PAYMENT.CAPTURE.COMPLETED` event body.
    pub fn complete_capture(&self, order_id: &str) -> Vec<u8> {
        {
            let mut st = self.shared.lock();
            let order = st.orders.get_mut(order_id).expect("order");
            if let Some(c) = order.capture.as_mut() {
                c["status"] = json!("COMPLETED");
                if let Some(m) = c.as_object_mut() {
                    m.remove("status_details");
                }
            }
        }
        self.capture_event(order_id, "PAYMENT.CAPTURE.COMPLETED")
    }

    /// Refunds `value` (all when None) of the order's capture; returns the
    /// `PAYMENT.CAPTURE.REFUNDED` event body. Like PayPal's, the refund resource links `up` to
    /// the capture.
    pub fn refund(&self, order_id: &str, value: Option<&str>) -> Vec<u8> {
        let mut st = self.shared.lock();
        let order = st.orders.get_mut(order_id).expect("order");
        let capture = order.capture.as_mut().expect("captured");
        let currency = capture["amount"]["currency_code"]
            .as_str()
            .unwrap_or("EUR")
            .to_string();
        let captured = minor_units(
            capture["amount"]["value"].as_str().unwrap_or("0"),
            &currency,
        )
        .unwrap_or(0);
        let amount = value
            .and_then(|v| minor_units(v, &currency))
            .unwrap_or(captured - order.refunded_minor);
        order.refunded_minor += amount;
        capture["status"] = json!(if order.refunded_minor >= captured {
            "REFUNDED"
        } else {
            "PARTIALLY_REFUNDED"
        });
        let capture_id = capture["id"].as_str().unwrap_or("").to_string();
        let refund_id = random_id(17);
        let base = &self.shared.base;
        let refund = json!({
            "id": refund_id,
            "status": "COMPLETED",
            "amount": {"currency_code": currency, "value": format_minor(amount, &currency)},
            "seller_payable_breakdown": {"gross_amount": {"currency_code": currency, "value": format_minor(amount, &currency)}},
            "create_time": now_rfc3339(),
            "update_time": now_rfc3339(),
            "links": [
                {"href": format!("{base}/v2/payments/refunds/{refund_id}"), "rel": "self", "method": "GET"},
                {"href": format!("{base}/v2/payments/captures/{capture_id}"), "rel": "up", "method": "GET"}
            ]
        });
        event_body(base, "PAYMENT.CAPTURE.REFUNDED", "refund", refund)
    }

    /// PayPal's webhook headers for `body`, signed with the test key over
    /// `transmission_id|time|webhook_id|crc32(body)`.
    pub fn signed_headers(&self, body: &[u8], webhook_id: &str) -> Vec<(String, String)> {
        let transmission_id = format!("{}-{}", random_id(8), random_id(12)).to_lowercase();
        let time = now_rfc3339();
        let msg = format!(
            "{transmission_id}|{time}|{webhook_id}|{}",
            crc32fast::hash(body)
        );
        let sig = keys().signer.sign(msg.as_bytes());
        vec![
            ("PAYPAL-TRANSMISSION-ID".into(), transmission_id),
            ("PAYPAL-TRANSMISSION-TIME".into(), time),
            (
                "PAYPAL-TRANSMISSION-SIG".into(),
                base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
            ),
            ("PAYPAL-CERT-URL".into(), self.cert_url()),
            ("PAYPAL-AUTH-ALGO".into(), "SHA256withRSA".into()),
        ]
    }

    /// Delivers a correctly signed webhook to `backend_url`.
    pub async fn send_webhook(&self, backend_url: &str, body: &[u8]) -> (u16, Value) {
        let headers = self.signed_headers(body, WEBHOOK_ID);
        post_webhook(backend_url, body, &headers).await
    }
}

/// Posts a webhook with the given headers (forged ones too).
pub async fn post_webhook(
    backend_url: &str,
    body: &[u8],
    headers: &[(String, String)],
) -> (u16, Value) {
    let mut req = crate::client()
        .post(format!("{backend_url}/billing/paypal/webhook"))
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.expect("webhook request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn event_body(base: &str, event_type: &str, resource_type: &str, resource: Value) -> Vec<u8> {
    let id = format!("WH-{}-{}", random_id(17), random_id(17));
    let summary = format!(
        "{event_type} for {}",
        resource["amount"]["value"].as_str().unwrap_or("")
    );
    let event = json!({
        "id": id,
        "event_version": "1.0",
        "create_time": now_rfc3339(),
        "resource_type": resource_type,
        "resource_version": "2.0",
        "event_type": event_type,
        "summary": summary,
        "resource": resource,
        "links": [
            {"href": format!("{base}/v1/notifications/webhooks-events/{id}"), "rel": "self", "method": "GET"},
            {"href": format!("{base}/v1/notifications/webhooks-events/{id}/resend"), "rel": "resend", "method": "POST"}
        ]
    });
    serde_json::to_vec(&event).expect("event JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_and_times() {
        assert_eq!(minor_units("29.00", "EUR"), Some(2900));
        assert_eq!(minor_units("29", "EUR"), Some(2900));
        assert_eq!(minor_units("29.5", "EUR"), Some(2950));
        assert_eq!(minor_units("29.001", "EUR"), None);
        assert_eq!(minor_units("29.", "EUR"), None);
        assert_eq!(minor_units("-1", "EUR"), None);
        assert_eq!(minor_units("500", "JPY"), Some(500));
        assert_eq!(minor_units("5.5", "JPY"), None);
        assert_eq!(format_minor(2900, "EUR"), "29.00");
        assert_eq!(format_minor(119, "EUR"), "1.19");
        assert_eq!(
            time_text(std::time::UNIX_EPOCH + Duration::from_secs(1_795_541_753)),
            "2026-11-24T17:35:53Z"
        );
    }
}
