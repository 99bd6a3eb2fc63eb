//! Idempotent retries: a POST retried with the same `Idempotency-Key` changes nothing twice.
//! Every POST that creates money or entitlement objects honours the header the same way,
//! through one layer ([`guard`]) and one table (`idempotency`, behind
//! `BillingStore::idempotency_claim / complete / release`). The endpoints are listed once, in
//! [`ENDPOINTS`]; the OpenAPI document and the README name the same list.
//!
//! For a request to one of them that carries a key (parsed by [`IdempotencyKey`]):
//! - the scope is the endpoint (its route template), and the request is identified by the
//!   SHA-256 of its method, path (with query) and body;
//! - first time: the key is claimed, the handler runs, and a 2xx JSON answer is stored;
//! - same key, same request: the stored status and body are answered again, marked
//!   `Idempotent-Replayed: true`. The handler does not run: no new object, no provider call;
//! - same key, another request: 409 `idempotency_mismatch`;
//! - same key while the first attempt still runs: 409 `idempotency_in_progress`. A claim whose
//!   process died is taken over after 60 s (see `SqlStore::idempotency_claim`);
//! - any answer other than 2xx (a refusal or a failure) releases the key. Such an answer
//!   created nothing a retry could duplicate: handlers that record something before a provider
//!   call that may fail derive the record's id and the provider's idempotency key
//!   (`Idempotency-Key` at Stripe, `PayPal-Request-Id`) from the client's key, so a retry
//!   resumes what the first attempt began rather than starting another.
//!
//! Without the header nothing changes. The claimed request runs to its end in its own task, so
//! a client that hangs up mid-request still finds the answer stored when it retries.
//!
//! Two protections for what is stored:
//! - The service token is checked before a key is claimed or an answer replayed: every listed
//!   endpoint needs it, and a stored answer must never reach a caller the handler would refuse.
//! - Answers are stored sealed (ChaCha20-Poly1305) with a key derived from the client's
//!   `Idempotency-Key`, and the table holds only a hash of that key. A minted API key's secret
//!   is in the answer of `keys/generate` and `rotate`; the backend stores only the SHA-256 of a
//!   key, so the database must not hold it readable either. Only a caller presenting the same key again
//!   (the one that made the request) can open it.

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::extract::IdempotencyKey;
use crate::state::AppState;
use crate::store::IdemState;
use axum::body::Body;
use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use sha2::{Digest, Sha256};

/// The POST endpoints (route templates) that honour `Idempotency-Key`. All need the service
/// token. Not listed, because a retry changes nothing twice by construction: SEPA
/// confirm/reject and statement imports (a payment moves only out of an expected status;
/// entries are deduplicated by the bank's reference), `report-usage` (exactly once per meter
/// identifier), ending a subscription.
pub const ENDPOINTS: &[&str] = &[
    "/api/marketplace/keys/generate",
    "/api/marketplace/keys/{key_id}/rotate",
    "/api/v1/billing/subscriptions/manual",
    "/api/v1/billing/create-customer",
    "/api/v1/billing/payment-intent",
    "/api/v1/billing/create-subscription",
    "/api/v1/billing/checkout",
    "/billing/paypal/order",
    "/billing/paypal/capture/{order_id}",
    "/billing/create",
];

/// Largest handler answer that is stored (ours are a few KiB of JSON).
const MAX_ANSWER_BYTES: usize = 1 << 20;

const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Whether `method path` (a route template) is guarded.
pub fn guarded(method: &Method, template: &str) -> bool {
    method == Method::POST && ENDPOINTS.contains(&template)
}

/// Middleware for the whole router: acts on the [`ENDPOINTS`], passes everything else through.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let scope = req.extensions().get::<MatchedPath>().and_then(|p| {
        ENDPOINTS
            .iter()
            .copied()
            .find(|e| guarded(req.method(), e) && *e == p.as_str())
    });
    let Some(scope) = scope else {
        return next.run(req).await;
    };
    if !req.headers().contains_key("idempotency-key") {
        return next.run(req).await;
    }
    match run(&state, scope, req, next).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &AppState,
    scope: &'static str,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    ServiceAuth::from_request_parts(&mut parts, state).await?;
    let key = IdempotencyKey::from_headers(&parts.headers)?.ok_or_else(|| {
        ApiError::internal("Idempotency-Key vanished between two reads of the headers")
    })?;
    let limit = state.cfg().max_body_bytes;
    let body = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::PayloadTooLarge(limit))?;
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let hash = request_hash(&parts.method, path, &body);
    let id = storage_id(scope, &key);
    match state
        .store()
        .idempotency_claim(scope, &id, &hash, state.now())
        .await?
    {
        IdemState::Replay { status, body } => replay(scope, &key, status, &body),
        IdemState::Mismatch => Err(ApiError::conflict(
            "idempotency_mismatch",
            "this Idempotency-Key was used with a different request (method, path or body) on this endpoint",
        )),
        IdemState::InFlight => Err(ApiError::conflict(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry later",
        )),
        IdemState::Claimed => {
            parts.extensions.insert(key.clone());
            let req = Request::from_parts(parts, Body::from(body));
            let state = state.clone();
            // Its own task: a client hanging up must not cut the handler (and the recording
            // of its answer) short, or its retry would meet a claim nobody finishes.
            let task = tokio::spawn(async move {
                let resp = next.run(req).await;
                record(&state, scope, &key, &id, resp).await
            });
            task.await
                .map_err(|e| ApiError::internal(format!("idempotent request on {scope}: {e}")))
        }
    }
}

/// Stores a 2xx JSON answer (sealed) or releases the key, and hands the answer on unchanged.
async fn record(
    state: &AppState,
    scope: &str,
    key: &IdempotencyKey,
    id: &str,
    resp: Response,
) -> Response {
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(resp.status().is_success() && is_json) {
        if let Err(e) = state.store().idempotency_release(scope, id).await {
            // The claim then lapses after its lease, and a retry runs.
            tracing::warn!(scope, error = %e, "could not release an idempotency key");
        }
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            // The request did its work but its answer is lost; the claim stays until its lease
            // lapses, so an immediate retry meets 409 rather than a second run.
            return ApiError::internal(format!("reading the answer of {scope}: {e}"))
                .into_response();
        }
    };
    let stored = match seal(scope, key, parts.status.as_u16(), &bytes) {
        Ok(sealed) => {
            state
                .store()
                .idempotency_complete(scope, id, parts.status.as_u16(), &sealed)
                .await
        }
        Err(e) => Err(crate::store::StoreError::Internal(e)),
    };
    if let Err(e) = stored {
        // The client gets its answer; only a later retry would run again.
        tracing::warn!(scope, error = %e, "answered, but could not store the answer for retries");
    }
    Response::from_parts(parts, Body::from(bytes))
}

fn replay(
    scope: &str,
    key: &IdempotencyKey,
    status: u16,
    sealed: &str,
) -> Result<Response, ApiError> {
    let body = open(scope, key, status, sealed).map_err(ApiError::internal)?;
    let status = StatusCode::from_u16(status)
        .map_err(|_| ApiError::internal(format!("stored status {status} on {scope}")))?;
    Ok((
        status,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (REPLAYED, HeaderValue::from_static("true")),
        ],
        body,
    )
        .into_response())
}

/// SHA-256 over `parts`, each followed by a NUL so that no two sequences hash alike.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0u8]);
    }
    h.finalize().into()
}

/// What "the same request" means: method, path with query, and the exact body bytes.
pub fn request_hash(method: &Method, path: &str, body: &[u8]) -> String {
    hex::encode(digest(&[method.as_str().as_bytes(), path.as_bytes(), body]))
}

/// The key as the table holds it: a hash, so the stored answer's sealing key is not beside it.
pub fn storage_id(scope: &str, key: &IdempotencyKey) -> String {
    hex::encode(digest(&[
        b"tollgate idempotency id v1",
        scope.as_bytes(),
        key.as_str().as_bytes(),
    ]))
}

fn sealing_key(scope: &str, key: &IdempotencyKey) -> Result<LessSafeKey, String> {
    let k = digest(&[
        b"tollgate idempotency seal v1",
        scope.as_bytes(),
        key.as_str().as_bytes(),
    ]);
    UnboundKey::new(&CHACHA20_POLY1305, &k)
        .map(LessSafeKey::new)
        .map_err(|_| "idempotency sealing key".to_string())
}

/// The status is authenticated with the body, so a stored row cannot pair one with another.
fn aad(scope: &str, status: u16) -> Vec<u8> {
    format!("{scope}\n{status}").into_bytes()
}

const SEALED_PREFIX: &str = "v1.";

/// `v1.` + base64url(nonce ‖ ciphertext ‖ tag). One answer is sealed per key, under a fresh
/// random nonce.
fn seal(scope: &str, key: &IdempotencyKey, status: u16, body: &[u8]) -> Result<String, String> {
    let nonce_bytes: [u8; NONCE_LEN] = crate::ids::random_bytes(NONCE_LEN)
        .try_into()
        .map_err(|_| "nonce length".to_string())?;
    let mut buf = body.to_vec();
    sealing_key(scope, key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad(scope, status)),
            &mut buf,
        )
        .map_err(|_| "sealing an idempotent answer".to_string())?;
    let mut out = nonce_bytes.to_vec();
    out.extend_from_slice(&buf);
    Ok(format!(
        "{SEALED_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(out)
    ))
}

fn open(scope: &str, key: &IdempotencyKey, status: u16, sealed: &str) -> Result<Vec<u8>, String> {
    let fail = || format!("a stored answer on {scope} could not be opened");
    let raw = sealed
        .strip_prefix(SEALED_PREFIX)
        .and_then(|b| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(b)
                .ok()
        })
        .ok_or_else(fail)?;
    if raw.len() < NONCE_LEN {
        return Err(fail());
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
    let mut buf = ct.to_vec();
    let plain = sealing_key(scope, key)?
        .open_in_place(nonce, Aad::from(aad(scope, status)), &mut buf)
        .map_err(|_| fail())?;
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn keys_are_one_to_255_visible_ascii() {
        assert!(IdempotencyKey::parse("a").is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(255)).is_ok());
        assert!(IdempotencyKey::parse("8e0f-4c1a_~!").is_ok());
        for bad in ["", " ", "a b", "tab\there", "é", &"k".repeat(256)] {
            let e = IdempotencyKey::parse(bad)
                .err()
                .map(|e| e.parts().1.to_string());
            assert_eq!(e.as_deref(), Some("invalid_idempotency_key"), "{bad:?}");
        }
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&h).ok(), Some(None));
        h.append("idempotency-key", HeaderValue::from_static("one"));
        assert_eq!(
            IdempotencyKey::from_headers(&h).ok().flatten(),
            Some(key("one"))
        );
        h.append("idempotency-key", HeaderValue::from_static("two"));
        assert!(IdempotencyKey::from_headers(&h).is_err(), "two headers");
        assert_eq!(format!("{:?}", key("secretish")), "IdempotencyKey(..)");
    }

    #[test]
    fn sealed_answers_open_only_with_the_same_key_scope_and_status() {
        let k = key("retry-1");
        let body = br#"{"api_key":"cli_pro_secret"}"#;
        let sealed = seal("/s", &k, 200, body).unwrap_or_else(|e| panic!("{e}"));
        assert!(!sealed.contains("cli_pro_secret"));
        assert_eq!(
            open("/s", &k, 200, &sealed).ok().as_deref(),
            Some(&body[..])
        );
        assert!(open("/s", &key("retry-2"), 200, &sealed).is_err());
        assert!(open("/other", &k, 200, &sealed).is_err());
        assert!(open("/s", &k, 201, &sealed).is_err());
        assert!(open("/s", &k, 200, "v1.AAAA").is_err());
        assert!(open("/s", &k, 200, "{\"plain\":1}").is_err());
        // Fresh nonces: the same answer seals differently each time.
        assert_ne!(seal("/s", &k, 200, body).ok(), Some(sealed));
    }

    #[test]
    fn requests_and_ids_are_told_apart() {
        let h = |m: &Method, p: &str, b: &[u8]| request_hash(m, p, b);
        assert_eq!(h(&Method::POST, "/a", b"{}"), h(&Method::POST, "/a", b"{}"));
        assert_ne!(
            h(&Method::POST, "/a", b"{}"),
            h(&Method::POST, "/a", b"{ }")
        );
        assert_ne!(h(&Method::POST, "/a/b", b""), h(&Method::POST, "/a", b"/b"));
        assert_ne!(h(&Method::POST, "/a", b""), h(&Method::PUT, "/a", b""));
        let k = key("k1");
        assert_ne!(storage_id("/a", &k), storage_id("/b", &k));
        assert!(!storage_id("/a", &k).contains("k1"));
    }

    #[test]
    fn every_listed_endpoint_is_a_documented_service_post() {
        let described = crate::openapi::document();
        for path in ENDPOINTS {
            let op = &described["paths"][path]["post"];
            assert!(op.is_object(), "{path} is not a documented POST");
            assert_eq!(
                op["security"],
                serde_json::json!([{"serviceToken": []}]),
                "{path}"
            );
        }
        for path in ENDPOINTS {
            let summary = described["paths"][path]["post"]["summary"]
                .as_str()
                .unwrap_or_default();
            assert!(
                summary.contains("Idempotency-Key honoured"),
                "{path}: {summary}"
            );
        }
    }

    /// Router-level: the layer in front of a real handler (manual grants and key minting, which
    /// need no provider), on a fresh SQLite backend.
    mod through_the_router {
        use crate::app::testing::TestBackend;
        use axum::body::Body;
        use axum::http::Request;
        use serde_json::{json, Value};
        use tower::ServiceExt;

        const TOKEN: &str = "test-service-token-0123456789";

        struct Answer {
            status: u16,
            replayed: bool,
            body: Value,
            raw: Vec<u8>,
        }

        async fn post(
            tb: &TestBackend,
            path: &str,
            key: Option<&str>,
            token: &str,
            body: &Value,
        ) -> Answer {
            let mut req = Request::post(path).header("content-type", "application/json");
            if !token.is_empty() {
                req = req.header("authorization", format!("Bearer {token}"));
            }
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            let req = req
                .body(Body::from(body.to_string()))
                .unwrap_or_else(|e| panic!("request: {e}"));
            let resp = tb
                .backend
                .router()
                .oneshot(req)
                .await
                .unwrap_or_else(|e| panic!("call: {e}"));
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let raw = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default()
                .to_vec();
            Answer {
                status,
                replayed,
                body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                raw,
            }
        }

        const GRANT: &str = "/api/v1/billing/subscriptions/manual";

        async fn subscriptions(tb: &TestBackend, user: &str) -> usize {
            tb.state()
                .store()
                .subscriptions_of(user)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .len()
        }

        #[tokio::test]
        async fn a_retried_grant_is_answered_again_and_grants_once() {
            let tb = TestBackend::start(|_| {}).await;
            let body = json!({"user_id": "ann", "plan": "pro", "cycle": "monthly"});
            let first = post(&tb, GRANT, Some("grant-ann-1"), TOKEN, &body).await;
            assert_eq!(
                (first.status, first.replayed),
                (201, false),
                "{}",
                first.body
            );
            let again = post(&tb, GRANT, Some("grant-ann-1"), TOKEN, &body).await;
            assert_eq!(
                (again.status, again.replayed),
                (201, true),
                "{}",
                again.body
            );
            assert_eq!(again.raw, first.raw, "the same bytes");
            assert_eq!(subscriptions(&tb, "ann").await, 1);

            let other = json!({"user_id": "ann", "plan": "enterprise", "cycle": "monthly"});
            let refused = post(&tb, GRANT, Some("grant-ann-1"), TOKEN, &other).await;
            assert_eq!(
                (refused.status, refused.body["error"]["code"].clone()),
                (409, json!("idempotency_mismatch"))
            );
            // A key is scoped to its endpoint: the same text elsewhere is another key.
            let mint = post(
                &tb,
                "/api/marketplace/keys/generate",
                Some("grant-ann-1"),
                TOKEN,
                &json!({"user_id": "ann", "plan": "pro"}),
            )
            .await;
            assert_eq!((mint.status, mint.replayed), (200, false), "{}", mint.body);
            // Without a key, nothing changes: each POST grants.
            post(&tb, GRANT, None, TOKEN, &body).await;
            post(&tb, GRANT, None, TOKEN, &body).await;
            assert_eq!(subscriptions(&tb, "ann").await, 3);
        }

        #[tokio::test]
        async fn a_refusal_releases_the_key_and_nothing_is_replayed_without_the_token() {
            let tb = TestBackend::start(|_| {}).await;
            // 402: no subscription yet. Refusals are not stored: the same key works later.
            let mint = json!({"user_id": "bo", "plan": "pro", "name": "k"});
            let refused = post(
                &tb,
                "/api/marketplace/keys/generate",
                Some("mint-bo"),
                TOKEN,
                &mint,
            )
            .await;
            assert_eq!(refused.status, 402, "{}", refused.body);
            let grant = json!({"user_id": "bo", "plan": "pro"});
            assert_eq!(post(&tb, GRANT, None, TOKEN, &grant).await.status, 201);
            let minted = post(
                &tb,
                "/api/marketplace/keys/generate",
                Some("mint-bo"),
                TOKEN,
                &mint,
            )
            .await;
            assert_eq!(
                (minted.status, minted.replayed),
                (200, false),
                "{}",
                minted.body
            );
            let secret = minted.body["api_key"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(secret.starts_with("cli_"), "{}", minted.body);
            let again = post(
                &tb,
                "/api/marketplace/keys/generate",
                Some("mint-bo"),
                TOKEN,
                &mint,
            )
            .await;
            assert_eq!((again.status, again.replayed), (200, true));
            assert_eq!(again.body["api_key"], json!(secret));
            assert_eq!(
                tb.state()
                    .store()
                    .keys_of_user("bo")
                    .await
                    .map(|k| k.len())
                    .ok(),
                Some(1)
            );
            // The stored answer holds the secret sealed: the database never has it readable.
            let db = crate::store::sql::SqlStore::connect(&tb.state().cfg().database_url)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let count = |sql: String| {
                let db = &db;
                async move { db.raw_count(&sql).await.unwrap_or_else(|e| panic!("{e}")) }
            };
            assert_eq!(
                count("SELECT COUNT(*) FROM idempotency WHERE status = 200".into()).await,
                1
            );
            let tail = secret.get(4..).unwrap_or_default();
            assert_eq!(
                count(format!(
                    "SELECT COUNT(*) FROM idempotency WHERE body LIKE '%{tail}%' OR idem_key = 'mint-bo'"
                ))
                .await,
                0
            );
            crate::store::Store::close(&db).await;
            // The token is checked before any replay.
            for (token, status) in [("wrong-token-0123456789", 403), ("", 401)] {
                let a = post(
                    &tb,
                    "/api/marketplace/keys/generate",
                    Some("mint-bo"),
                    token,
                    &mint,
                )
                .await;
                assert_eq!(a.status, status, "{}", a.body);
                assert!(!String::from_utf8_lossy(&a.raw).contains(&secret));
            }
            // A malformed key is refused before anything runs.
            for bad in ["has space", &"k".repeat(256)] {
                let a = post(&tb, GRANT, Some(bad), TOKEN, &grant).await;
                assert_eq!(
                    (a.status, a.body["error"]["code"].clone()),
                    (400, json!("invalid_idempotency_key")),
                    "{bad:?}"
                );
            }
            assert_eq!(subscriptions(&tb, "bo").await, 1);
        }

        #[tokio::test]
        async fn a_key_in_flight_is_refused_until_its_claim_lapses() {
            let tb = TestBackend::start(|_| {}).await;
            let body = json!({"user_id": "cy", "plan": "pro"});
            let key = super::key("grant-cy");
            let hash =
                super::request_hash(&super::Method::POST, GRANT, body.to_string().as_bytes());
            let id = super::storage_id(GRANT, &key);
            let store = &tb.state().store();
            let now = tb.state().now();
            // Another process claimed it and is still running.
            assert_eq!(
                store.idempotency_claim(GRANT, &id, &hash, now).await.ok(),
                Some(crate::store::IdemState::Claimed)
            );
            let busy = post(&tb, GRANT, Some("grant-cy"), TOKEN, &body).await;
            assert_eq!(
                (busy.status, busy.body["error"]["code"].clone()),
                (409, json!("idempotency_in_progress"))
            );
            assert_eq!(subscriptions(&tb, "cy").await, 0);
            // That process died: after the lease, the retry runs.
            let _ = store.idempotency_release(GRANT, &id).await;
            assert_eq!(
                store
                    .idempotency_claim(GRANT, &id, &hash, now - 61)
                    .await
                    .ok(),
                Some(crate::store::IdemState::Claimed)
            );
            let ran = post(&tb, GRANT, Some("grant-cy"), TOKEN, &body).await;
            assert_eq!((ran.status, ran.replayed), (201, false), "{}", ran.body);
            assert_eq!(subscriptions(&tb, "cy").await, 1);
        }
    }
}
