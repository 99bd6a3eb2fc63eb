//! The OpenAPI 3.1 document, built from one table of every endpoint. A test walks the table
//! against the real router, so an endpoint cannot be documented without existing.

use serde_json::{json, Map, Value};

/// Who may call an endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Auth {
    Public,
    Service,
    Feed,
    Gateway,
}

pub struct Endpoint {
    pub method: &'static str,
    pub path: &'static str,
    pub auth: Auth,
    pub summary: &'static str,
}

const fn ep(
    method: &'static str,
    path: &'static str,
    auth: Auth,
    summary: &'static str,
) -> Endpoint {
    Endpoint {
        method,
        path,
        auth,
        summary,
    }
}

pub const ENDPOINTS: &[Endpoint] = &[
    ep("get", "/api/marketplace/plans", Auth::Public, "The plan catalogue: prices (decimal and minor units), limits, features"),
    ep("get", "/api/marketplace/plans/{plan_id}", Auth::Public, "One plan; 404 plan_not_found"),
    ep("post", "/api/marketplace/keys/generate", Auth::Service, "Mint a key {user_id, plan, name, expires_at?, metadata?, overrides?}; the secret is shown once. 402 subscription_required, 409 key_limit_reached"),
    ep("post", "/api/marketplace/keys/validate", Auth::Gateway, "Answered by the gateway: {api_key} or X-API-Key → {valid, ...}, counting one unit"),
    ep("get", "/api/marketplace/keys", Auth::Service, "List keys (?plan=&limit=&offset=)"),
    ep("get", "/api/marketplace/keys/user/{user_id}", Auth::Service, "A user's keys with usage today"),
    ep("get", "/api/marketplace/keys/{key_id}", Auth::Service, "One key (never its secret)"),
    ep("patch", "/api/marketplace/keys/{key_id}", Auth::Service, "Change name, expires_at, per-key limits, metadata"),
    ep("delete", "/api/marketplace/keys/{key_id}", Auth::Service, "Revoke a key; reaches every gateway within a second"),
    ep("post", "/api/marketplace/keys/{key_id}/rotate", Auth::Service, "New secret for the same key id; {grace_seconds} keeps the old one working (≤ 24 h)"),
    ep("get", "/api/marketplace/keys/{key_id}/usage", Auth::Service, "Usage today/total, limits, current minute, last 30 days"),
    ep("get", "/api/marketplace/stats", Auth::Service, "Measured totals: keys, active keys, requests, plan distribution, uptime"),
    ep("get", "/api/v1/billing/status", Auth::Public, "Which payment providers are configured and in which mode"),
    ep("get", "/api/v1/billing/subscriptions", Auth::Service, "A user's subscriptions and effective plan (?user_id=)"),
    ep("post", "/api/v1/billing/subscriptions/manual", Auth::Service, "Grant a paid plan with the manual provider {user_id, plan, cycle, periods, reason}"),
    ep("post", "/api/v1/billing/subscriptions/{sub_id}/end", Auth::Service, "End a subscription now {reason?}"),
    ep("get", "/api/v1/billing/ledger", Auth::Service, "The append-only audit ledger (?user_id=&limit=)"),
    ep("post", "/api/v1/billing/create-customer", Auth::Service, "Stripe customer for a user {user_id, email?, name?}: one per user, created once"),
    ep("post", "/api/v1/billing/payment-intent", Auth::Service, "Stripe PaymentIntent: {user_id, plan, cycle} priced by the server (success buys one period), or the original {amount (minor units), currency, description, payment_method_types, metadata} that grants nothing → {client_secret, payment_intent_id, status, amount, currency}"),
    ep("post", "/api/v1/billing/create-subscription", Auth::Service, "Stripe subscription {user_id, plan, cycle, payment_method?} (server picks the price) or {customer_id, price_id}; recorded incomplete until the signed webhook activates it → {subscription_id, status, client_secret?}"),
    ep("get", "/api/v1/billing/products", Auth::Service, "Stripe products and prices, and the price of each plan and cycle"),
    ep("post", "/api/v1/billing/checkout", Auth::Service, "Stripe Checkout Session in subscription mode {user_id, plan+cycle or price_id, customer_email?, success_url, cancel_url} → {status, session_id, url, expires_at}"),
    ep("get", "/api/v1/billing/checkout/{session_id}", Auth::Service, "A Checkout Session: status, payment status, Stripe subscription and ours"),
    ep("post", "/api/v1/billing/webhook", Auth::Public, "Stripe webhook: Stripe-Signature (HMAC-SHA256, 300 s) verified on the raw body; events applied once, in order per subscription; 400 invalid_signature"),
    ep("post", "/api/v1/billing/report-usage", Auth::Service, "Export metered usage now as Stripe Billing Meter events {user_id?}: exactly once per identifier"),
    ep("get", "/api/v1/billing/usage-drift", Auth::Service, "Metered at the gateways vs acknowledged by Stripe, per key and day (?user_id=&days=)"),
    ep("post", "/billing/paypal/order", Auth::Service, "PayPal order {user_id, plan, cycle}, priced by the server (or the original {intent, purchase_units}: a plain payment that grants no plan) → {id, status, links, approve_url, payment_id}"),
    ep("post", "/billing/paypal/capture/{order_id}", Auth::Service, "Capture an approved PayPal order: amount checked, one plan period bought once → {id, status, capture_id, payment_status, period_end}; 409 amount_mismatch / order_not_approved"),
    ep("post", "/billing/paypal/webhook", Auth::Public, "PayPal webhook, verified offline (RSA-SHA256, PayPal certificate) before it is trusted; events deduplicated; 400 invalid_signature"),
    ep("get", "/billing/paypal/return", Auth::Public, "The buyer's return from PayPal (?token=<order id>): captures like /billing/paypal/capture"),
    ep("get", "/billing/paypal/cancel", Auth::Public, "The buyer cancelled at PayPal: nothing is charged"),
    ep("post", "/billing/create", Auth::Service, "SEPA transfer instructions {user_id, plan, cycle, method:\"sepa\"} (or {user_id, amount, currency}): discounted amount, RF reference, EPC QR"),
    ep("get", "/billing/payments/{payment_id}", Auth::Service, "A payment and its status"),
    ep("get", "/billing/sepa/{payment_id}/qr.svg", Auth::Public, "EPC069-12 QR code of pending instructions (SVG; the payment id is the capability)"),
    ep("get", "/billing/sepa/{payment_id}/qr.png", Auth::Public, "EPC069-12 QR code of pending instructions (PNG)"),
    ep("post", "/billing/sepa/{payment_id}/confirm", Auth::Service, "Operator confirms a transfer: the payment succeeds and buys its period"),
    ep("post", "/billing/sepa/{payment_id}/reject", Auth::Service, "Operator rejects a transfer"),
    ep("post", "/billing/sepa/import", Auth::Service, "Import a camt.053/camt.054 statement (XML body, ?name=): reconciliation report"),
    ep("get", "/billing/sepa/imports", Auth::Service, "Recent statement imports"),
    ep("get", "/billing/sepa/imports/{import_id}", Auth::Service, "One import's report"),
    ep("get", "/portal/pricing", Auth::Public, "HTML: the pricing page (plans, monthly/yearly prices, SEPA price with its discount)"),
    ep("post", "/portal/api/handoff", Auth::Service, "A customer's single-use sign-in link {user_id, ttl_seconds? (1-3600, default 300)} → {url, path, expires_at}"),
    ep("post", "/portal/api/operator-handoff", Auth::Service, "A single-use sign-in link to the operator view {ttl_seconds?} → {url, path, expires_at}"),
    ep("get", "/portal/login", Auth::Public, "HTML: redeems a sign-in link (?token=), sets the session cookie and redirects to the dashboard"),
    ep("post", "/portal/logout", Auth::Public, "HTML form (session + CSRF): ends the portal session"),
    ep("get", "/portal/dashboard", Auth::Public, "HTML (customer session): keys, usage chart, quotas, subscription, upgrades"),
    ep("post", "/portal/keys", Auth::Public, "HTML form (customer session + CSRF): create a key; the secret is shown once in the answer"),
    ep("post", "/portal/keys/{key_id}/rotate", Auth::Public, "HTML form (customer session + CSRF): new secret for one of the customer's keys, shown once"),
    ep("post", "/portal/keys/{key_id}/revoke", Auth::Public, "HTML form (customer session + CSRF): revoke one of the customer's keys"),
    ep("post", "/portal/upgrade", Auth::Public, "HTML form (customer session + CSRF) {plan, cycle, provider=stripe|paypal|sepa}: starts a payment priced by the server"),
    ep("get", "/portal/payments/{payment_id}", Auth::Public, "HTML (customer session): one of the customer's payments; SEPA instructions with the EPC QR code"),
    ep("get", "/portal/operator", Auth::Public, "HTML (operator session): stats, keys by plan, payments, pending SEPA transfers, last statement import"),
    ep("post", "/portal/operator/payments/{payment_id}/confirm", Auth::Public, "HTML form (operator session + CSRF): confirm a SEPA transfer"),
    ep("post", "/portal/operator/payments/{payment_id}/reject", Auth::Public, "HTML form (operator session + CSRF): reject a SEPA transfer"),
    ep("get", "/internal/feed", Auth::Feed, "Key feed for gateways: keys changed after ?since=, long-poll with ?wait="),
    ep("post", "/internal/usage", Auth::Feed, "Usage batch from a gateway, applied once per (gateway_id, batch_id)"),
    ep("get", "/health", Auth::Public, "Liveness"),
    ep("get", "/ready", Auth::Public, "Readiness: the database answers"),
    ep("get", "/metrics", Auth::Public, "Prometheus metrics"),
    ep("get", "/openapi.json", Auth::Public, "This document"),
];

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["detail", "error"],
        "properties": {
            "detail": {"type": "string"},
            "error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}
        }
    })
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for e in ENDPOINTS {
        let entry = paths.entry(e.path.to_string()).or_insert_with(|| json!({}));
        let security = match e.auth {
            Auth::Public | Auth::Gateway => json!([]),
            Auth::Service => json!([{"serviceToken": []}]),
            Auth::Feed => json!([{"feedToken": []}, {"serviceToken": []}]),
        };
        let mut params: Vec<Value> = e
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        // The endpoints behind the idempotency layer say so (the list lives in one place).
        let idempotent = e.method == "post" && crate::idempotency::ENDPOINTS.contains(&e.path);
        let summary = if idempotent {
            params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Same key and same request: the first 2xx answer again (Idempotent-Replayed: true), nothing created twice; same key and another request: 409 idempotency_mismatch; while the first still runs: 409 idempotency_in_progress"}));
            format!("{}; Idempotency-Key honoured", e.summary)
        } else {
            e.summary.to_string()
        };
        let mut op = json!({
            "summary": summary,
            "security": security,
            "parameters": params,
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {}}},
                "4XX": {"description": "Client error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if e.auth == Auth::Gateway {
            op["x-answered-by"] = json!("tollgate-gateway");
        }
        if let Some(obj) = entry.as_object_mut() {
            obj.insert(e.method.to_string(), op);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "tollgate", "version": env!("CARGO_PKG_VERSION"), "description": "API keys, plans, quotas and billing in front of an existing API."},
        "paths": paths,
        "components": {
            "securitySchemes": {
                "serviceToken": {"type": "http", "scheme": "bearer", "description": "TOLLGATE_SERVICE_TOKEN or data_dir/service_token"},
                "feedToken": {"type": "http", "scheme": "bearer", "description": "[backend] feed_token, for gateways"}
            },
            "schemas": {"Error": error_schema()}
        }
    })
}
