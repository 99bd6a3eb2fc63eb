//! The OpenAPI 3.1 document served at `GET /openapi.json`, generated from the handlers so it
//! cannot drift from them.
//!
//! Every handler carries `#[utoipa::path]` beside its code (method, path, parameters, request
//! body, and each status it answers, with the body type of each); request and response types
//! derive `ToSchema`, and the handlers return those very types. Each domain module lists its
//! handlers in a `pub struct Api` (`#[derive(utoipa::OpenApi)]`), next to its `router()`;
//! [`document`] merges them and [`contract`] adds what is the same everywhere:
//!
//! - the security schemes, and 401 `unauthorized` / 403 `forbidden` on every operation that
//!   needs a token (the [`crate::auth`] extractors answer those before the handler runs);
//! - 400 `invalid_json` / `invalid_body` and 413 `body_too_large` on every operation with a
//!   JSON request body ([`crate::extract`]);
//! - the `Idempotency-Key` header and its 400/409 answers on the POSTs listed in
//!   [`crate::idempotency::ENDPOINTS`];
//! - 404 on every operation with a path parameter (the router's own answer to an empty
//!   segment), and the answers shared by a tag (see [`PROVIDER_ANSWERS`], [`PORTAL_ERRORS`]).
//!
//! The document describes the server that serves it: the standalone backend. The gateway
//! answers `POST /api/marketplace/keys/validate` itself; that endpoint is not in this document.
//!
//! Tests: `tests/it` walks every documented operation against the real router (and every
//! method of every documented path, so nothing routed is left out); the workspace test
//! `openapi_contract` runs schemathesis against the real binary.

use crate::error::{ErrorDetailDoc, ErrorDoc};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use utoipa::OpenApi;

/// The root of the document: metadata and the shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate",
        description = "API keys, plans, quotas and billing in front of an existing API: the \
                       billing backend's HTTP contract (the original module's endpoints plus its own)."
    ),
    paths(openapi),
    components(schemas(ErrorDoc, ErrorDetailDoc)),
    tags(
        (name = "plans", description = "The plan catalogue"),
        (name = "keys", description = "API keys and their usage"),
        (name = "billing", description = "Subscriptions, ledger, provider status"),
        (name = "stripe", description = "Stripe payments, subscriptions, Checkout, webhooks, metered usage"),
        (name = "paypal", description = "PayPal orders and webhooks"),
        (name = "sepa", description = "SEPA credit transfers and bank statements"),
        (name = "webhooks", description = "Payment providers' signed event deliveries"),
        (name = "portal", description = "Customer portal and operator view: HTML pages and forms"),
        (name = "portal-links", description = "Sign-in links to the portal, minted with the service token"),
        (name = "gateways", description = "What gateways call: the key feed and usage batches"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    )
)]
struct Root;

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi() -> Json<&'static Value> {
    Json(document())
}

/// The whole document, built once.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = Root::openapi();
        for part in [
            crate::plans::Api::openapi(),
            crate::keys::Api::openapi(),
            crate::usage::Api::openapi(),
            crate::stats::Api::openapi(),
            crate::billing::Api::openapi(),
            crate::billing::stripe::Api::openapi(),
            crate::billing::stripe::meter::Api::openapi(),
            crate::billing::paypal::Api::openapi(),
            crate::billing::sepa::Api::openapi(),
            crate::portal::Api::openapi(),
            crate::feed::Api::openapi(),
            crate::ops::Api::openapi(),
        ] {
            doc.merge(part);
        }
        let mut value = serde_json::to_value(&doc).unwrap_or_else(|e| {
            // Serialising the document is serialising plain maps and strings.
            tracing::error!(error = %e, "OpenAPI document could not be serialised");
            json!({})
        });
        contract(&mut value);
        value
    })
}

/// The error body as a response content.
fn error_content() -> Value {
    json!({"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}})
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": error_content()})
}

/// Inserts `status` into `responses`; when the handler documented it itself, the description
/// is added to the handler's.
fn add_response(responses: &mut Map<String, Value>, status: &str, description: &str) {
    match responses.get_mut(status) {
        None => {
            responses.insert(status.to_string(), error_response(description));
        }
        Some(existing) => {
            let own = existing["description"].as_str().unwrap_or_default();
            if !own.contains(description) {
                existing["description"] = Value::String(format!("{own}; {description}"));
            }
        }
    }
}

/// Answers every operation of a tag can give besides its own, because of what the handlers
/// share: the Stripe endpoints map Stripe's failures ([`crate::billing::stripe::Failure`]),
/// PayPal's and SEPA's need their provider configured, and portal pages render errors as HTML.
const PROVIDER_ANSWERS: &[(&str, &str, &str)] = &[
    ("stripe", "402", "`payment_failed`: Stripe declined the payment"),
    ("stripe", "404", "`stripe_resource_missing`: Stripe has no such object"),
    ("stripe", "409", "`idempotency_conflict`: Stripe saw this idempotency key with other parameters"),
    ("stripe", "502", "`provider_unavailable`: Stripe could not be reached, failed, or refused this server's credentials"),
    ("stripe", "503", "`provider_not_configured` (no STRIPE_SECRET_KEY), `provider_unavailable` (Stripe rate limits) or `store_unavailable`"),
    ("paypal", "503", "`provider_not_configured` (no PAYPAL_CLIENT_ID/PAYPAL_SECRET), `provider_unavailable`, `provider_error` (PayPal refused the call) or `store_unavailable`"),
    ("sepa", "503", "`provider_not_configured` (no SEPA_HOLDER/SEPA_IBAN, for the operations that need them) or `store_unavailable`"),
    ("portal-links", "503", "`store_unavailable`"),
];

/// The statuses a portal page or form may answer with a page for people (HTML), or with the
/// JSON body when the router refuses the request before the handler (an oversized body).
const PORTAL_ERRORS: &[(&str, &str)] = &[
    ("400", "The form or link is refused"),
    (
        "401",
        "Not signed in (no session, or it ended), or the sign-in link is not accepted",
    ),
    ("402", "A subscription is required"),
    (
        "403",
        "The CSRF token is missing or wrong, or the session is of the other role",
    ),
    ("404", "Not found (or not this customer's)"),
    (
        "409",
        "Not possible right now (e.g. a payment already decided)",
    ),
    ("413", "The form is larger than `[backend] max_body_bytes`"),
    ("502", "A payment provider failed"),
    (
        "503",
        "A payment provider is not configured, or storage is unavailable",
    ),
];

fn tags_of(op: &Map<String, Value>) -> Vec<String> {
    op.get("tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The cross-cutting parts of the contract (see the module doc).
fn contract(doc: &mut Value) {
    doc["components"]["securitySchemes"] = json!({
        "serviceToken": {
            "type": "http", "scheme": "bearer",
            "description": "The operator's service token: TOLLGATE_SERVICE_TOKEN, else the one \
                            generated into data_dir/service_token"
        },
        "feedToken": {
            "type": "http", "scheme": "bearer",
            "description": "The gateways' token ([backend] feed_token); the service token is \
                            accepted too"
        },
        "portalSession": {
            "type": "apiKey", "in": "cookie", "name": crate::session::COOKIE,
            "description": "The portal session, opened by GET /portal/login with a hand-off \
                            token from POST /portal/api/handoff or /portal/api/operator-handoff"
        }
    });
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let tags = tags_of(op);
            let portal_page = tags.iter().any(|t| t == "portal");
            let secured = !portal_page
                && op
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| {
                        s.iter()
                            .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
                    });
            let has_body = op.contains_key("requestBody");
            let idempotent =
                method == "post" && crate::idempotency::ENDPOINTS.contains(&path.as_str());
            if idempotent {
                let summary = op
                    .get("summary")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .trim_end_matches('.')
                    .to_string();
                op.insert(
                    "summary".into(),
                    Value::String(format!("{summary}; Idempotency-Key honoured")),
                );
                let params = op
                    .entry("parameters")
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Some(params) = params.as_array_mut() {
                    params.push(json!({
                        "name": "Idempotency-Key", "in": "header", "required": false,
                        "schema": {"type": "string", "minLength": 1, "maxLength": 255,
                                   "pattern": "^[!-~]+$"},
                        "description": "Same key and same request: the first 2xx answer again \
                            (Idempotent-Replayed: true), nothing created twice; same key and \
                            another request: 409 idempotency_mismatch; while the first still \
                            runs: 409 idempotency_in_progress"
                    }));
                }
            }
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            if portal_page {
                for (status, description) in PORTAL_ERRORS {
                    if !responses.contains_key(*status) {
                        responses.insert(
                            (*status).to_string(),
                            json!({
                                "description": description,
                                "content": {
                                    "text/html": {"schema": {"type": "string"}},
                                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                                }
                            }),
                        );
                    }
                }
            }
            for (tag, status, description) in PROVIDER_ANSWERS {
                if tags.iter().any(|t| t == tag) {
                    add_response(responses, status, description);
                }
            }
            if secured {
                add_response(
                    responses,
                    "401",
                    "`unauthorized`: no `Authorization: Bearer` token",
                );
                add_response(responses, "403", "`forbidden`: the token is not accepted");
            }
            if path.contains('{') {
                // An id the handler does not know, or one that is empty or a dot segment, which
                // the router itself answers.
                add_response(
                    responses,
                    "404",
                    "`not_found`: no such endpoint (e.g. an empty path segment)",
                );
            }
            if has_body {
                add_response(
                    responses,
                    "400",
                    "`invalid_json` (not JSON, or empty) or `invalid_body` (a field is missing, \
                     has the wrong type or a bad value; the message names it)",
                );
                add_response(
                    responses,
                    "413",
                    "`body_too_large`: the body is larger than `[backend] max_body_bytes`",
                );
            }
            if idempotent {
                add_response(
                    responses,
                    "400",
                    "`invalid_idempotency_key`, or the body is refused",
                );
                add_response(
                    responses,
                    "409",
                    "`idempotency_mismatch` (the key was used for another request) or \
                     `idempotency_in_progress` (the first request still runs)",
                );
            }
        }
    }
}

/// `GET /openapi.json`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/openapi.json", get(openapi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_error_schema_is_the_wire_error_body() {
        let wire = tollgate_protocol::error::ErrorBody::new("key_not_found", "no such key");
        let doc = ErrorDoc {
            detail: "no such key".into(),
            error: ErrorDetailDoc {
                code: "key_not_found".into(),
                message: "no such key".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&doc).unwrap_or_default(),
            serde_json::to_value(&wire).unwrap_or_default()
        );
        let schema = &document()["components"]["schemas"]["Error"];
        assert_eq!(schema["required"], json!(["detail", "error"]), "{schema}");
    }

    #[test]
    fn operation_ids_are_unique_and_every_operation_answers_something() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut ids = BTreeSet::new();
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        assert!(paths.len() > 50, "{} paths", paths.len());
        for (path, item) in &paths {
            for (method, op) in item.as_object().cloned().unwrap_or_default() {
                let id = op["operationId"].as_str().unwrap_or_default().to_string();
                assert!(
                    ids.insert(id.clone()),
                    "{method} {path}: operationId {id} twice"
                );
                let responses = op["responses"].as_object().cloned().unwrap_or_default();
                assert!(
                    responses
                        .keys()
                        .any(|s| s.starts_with('2') || s.starts_with('3')),
                    "{method} {path} documents no success"
                );
            }
        }
    }

    #[test]
    fn authenticated_operations_document_401_and_403_and_bodies_400_and_413() {
        let doc = document();
        let generate = &doc["paths"]["/api/marketplace/keys/generate"]["post"];
        for status in ["200", "400", "401", "402", "403", "409", "413", "503"] {
            assert!(
                generate["responses"][status].is_object(),
                "generate lacks {status}: {}",
                generate["responses"]
            );
        }
        assert!(
            generate["requestBody"]["content"]["application/json"]["schema"].is_object(),
            "{generate}"
        );
        let plans = &doc["paths"]["/api/marketplace/plans"]["get"];
        assert!(plans["responses"]["401"].is_null(), "{plans}");
        assert_eq!(
            doc["components"]["securitySchemes"]["serviceToken"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn the_gateway_endpoint_is_not_described_by_the_backend() {
        let doc = document();
        assert!(doc["paths"]["/api/marketplace/keys/validate"].is_null());
    }

    #[test]
    fn pages_are_html_and_metrics_text() {
        let doc = document();
        let pricing = &doc["paths"]["/portal/pricing"]["get"]["responses"]["200"]["content"];
        assert!(pricing["text/html"].is_object(), "{pricing}");
        let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
        assert!(metrics["text/plain"].is_object(), "{metrics}");
    }
}
