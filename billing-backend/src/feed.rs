//! The key feed for gateways (see `tollgate_protocol::feed` for the protocol).
//!
//! Writers call [`FeedHub::notify`](crate::hub::FeedHub::notify) after committing a change; waiting long-polls wake at once.
//! [`watch_head`] also polls the database head every 250 ms, so changes committed by another
//! backend on the same PostgreSQL reach this backend's waiting gateways too.

use crate::auth::FeedAuth;
use crate::error::ApiError;
use crate::error::ErrorDoc;
use crate::extract::parse_json;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::feed::{
    FeedKey, FeedPage, GraceHash, KeyState, DEFAULT_PAGE, FEED_PATH, FEED_SEQ_HEADER, MAX_PAGE,
    MAX_WAIT_SECS, USAGE_PATH,
};
use tollgate_protocol::plans::{Catalogue, Limits};
use tollgate_protocol::usage_codec::Media;
use utoipa::{IntoParams, ToSchema};

/// Background: follows the database head (other backends may write to the same database).
pub async fn watch_head(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(head) = state.store().feed_head().await {
            state.hub().notify(head);
            state
                .metrics()
                .feed_head
                .set(i64::try_from(head).unwrap_or(i64::MAX));
        }
    }
}

/// Middleware: a successful answer to a request that may change state (POST, PUT, PATCH,
/// DELETE) carries the feed head after it ([`FEED_SEQ_HEADER`]). A gateway that forwarded the
/// request holds the answer until its replica has applied that sequence, so a key minted or
/// revoked through a gateway is in force there when the client reads the answer. The gateways'
/// own feed and usage calls are left alone.
pub async fn stamp_seq(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::Method;
    let changes = matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && !req.uri().path().starts_with("/internal/");
    let mut resp = next.run(req).await;
    if changes && resp.status().is_success() {
        match state.store().feed_head().await {
            Ok(head) => {
                state.hub().notify(head);
                if let Ok(v) = axum::http::HeaderValue::from_str(&head.to_string()) {
                    resp.headers_mut().insert(FEED_SEQ_HEADER, v);
                }
            }
            Err(e) => tracing::warn!(error = %e, "feed head unavailable for read-your-writes"),
        }
    }
    resp
}

/// Converts a stored key to what a gateway needs, applying the plan limits and overrides.
pub fn feed_key(catalogue: &Catalogue, k: &crate::store::KeyRecord) -> FeedKey {
    let plan_limits = catalogue
        .get(&k.plan)
        .unwrap_or_else(|| catalogue.free())
        .limits();
    FeedKey {
        key_id: k.key_id.clone(),
        user_id: k.user_id.clone(),
        plan: k.plan.clone(),
        hash: k.hash,
        previous: match (k.previous_hash, k.previous_until) {
            (Some(hash), Some(until)) => Some(GraceHash { hash, until }),
            _ => None,
        },
        state: if k.revoked_at.is_some() {
            KeyState::Revoked
        } else {
            KeyState::Active
        },
        expires_at: k.expires_at,
        limits: Limits {
            per_minute: k.rate_limit_override.unwrap_or(plan_limits.per_minute),
            per_day: k.daily_limit_override.unwrap_or(plan_limits.per_day),
        },
        seq: k.seq,
    }
}

/// One feed page; waits up to `wait` for a change when nothing is newer than `since`.
pub async fn page(
    state: &AppState,
    since: u64,
    limit: usize,
    wait: Duration,
    known: Option<&str>,
) -> Result<FeedPage, ApiError> {
    let limit = u32::try_from(limit.clamp(1, MAX_PAGE)).unwrap_or(5000);
    let deadline = tokio::time::Instant::now() + wait.min(Duration::from_secs(MAX_WAIT_SECS));
    let mut rx = state.hub().subscribe();
    let epoch = state.feed_epoch();
    loop {
        rx.borrow_and_update();
        let (keys, head) = state.store().feed_page(since, limit).await?;
        // A new epoch (plan limits changed) answers at once: the gateway starts over.
        let now_epoch = state.feed_epoch();
        let stale = now_epoch != epoch || known.is_some_and(|k| !k.is_empty() && k != now_epoch);
        if !keys.is_empty() || stale || tokio::time::Instant::now() >= deadline {
            let seq = keys.last().map(|k| k.seq).unwrap_or(since);
            let catalogue = state.catalogue();
            let keys = keys.iter().map(|k| feed_key(&catalogue, k)).collect();
            return Ok(FeedPage {
                db_id: now_epoch,
                seq,
                head: head.max(seq),
                keys,
            });
        }
        // Nothing newer: sleep until a writer (or the head watcher) signals, or the deadline.
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            continue;
        }
    }
}

/// The feed's query: the fields of [`tollgate_protocol::feed::FeedQuery`], read here so the
/// document describes exactly what is parsed.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FeedParams {
    /// Keys changed after this sequence number (0: from the start); at most 2^63 - 1.
    #[serde(default)]
    #[param(maximum = 9223372036854775807_i64)]
    since: u64,
    /// Keys per page, 1-50000 (default 5000).
    #[param(minimum = 1, maximum = 50000)]
    limit: Option<usize>,
    /// Seconds to wait for a change when nothing is newer than `since` (at most 30).
    #[param(maximum = 30)]
    wait: Option<u64>,
    /// The feed epoch the caller holds; another one answers at once (start over).
    db_id: Option<String>,
}

/// Mirrors of the feed's wire types ([`tollgate_protocol::feed`]), for the document only: the
/// protocol crate stays free of documentation dependencies. `schemathesis` checks the real
/// answers against them (tests/tests/openapi_contract.rs).
#[derive(ToSchema)]
#[schema(as = FeedPage)]
#[allow(dead_code)]
struct FeedPageDoc {
    /// The feed epoch: database id and plan-limit fingerprint.
    db_id: String,
    /// Highest sequence in this page (`since` when empty).
    seq: u64,
    /// Highest sequence the backend knows.
    head: u64,
    keys: Vec<FeedKeyDoc>,
}

#[derive(ToSchema)]
#[schema(as = FeedKey)]
#[allow(dead_code)]
struct FeedKeyDoc {
    key_id: String,
    user_id: String,
    /// Effective plan.
    plan: String,
    /// SHA-256 of the key, lowercase hex.
    hash: String,
    /// Absent unless a rotation overlap runs.
    previous: Option<GraceHashDoc>,
    /// `active` or `revoked`.
    state: String,
    /// Unix seconds; absent when the key does not expire.
    expires_at: Option<i64>,
    limits: LimitsDoc,
    seq: u64,
}

#[derive(ToSchema)]
#[schema(as = GraceHash)]
#[allow(dead_code)]
struct GraceHashDoc {
    hash: String,
    until: i64,
}

#[derive(ToSchema)]
#[schema(as = Limits)]
#[allow(dead_code)]
struct LimitsDoc {
    per_minute: u64,
    per_day: u64,
}

#[derive(ToSchema)]
#[schema(as = UsageAck)]
#[allow(dead_code)]
struct UsageAckDoc {
    gateway_id: String,
    batch_id: u64,
    /// True when this batch had been applied before and was ignored this time.
    duplicate: bool,
}

/// Key feed for gateways: keys changed after `since`, long-polling up to `wait` seconds.
#[utoipa::path(
    get,
    path = "/internal/feed",
    tag = "gateways",
    security(("feedToken" = []), ("serviceToken" = [])),
    params(FeedParams),
    responses(
        (status = 200, description = "One page of changed keys", body = FeedPageDoc),
        (status = 400, description = "`invalid_query`, or a query that does not parse (`bad_request`)", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn feed_handler(
    _: FeedAuth,
    State(state): State<AppState>,
    Query(q): Query<FeedParams>,
) -> Result<Json<FeedPage>, ApiError> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
    // Sequence numbers are signed 64-bit in both databases; a larger one used to reach the
    // store and answer 500.
    if i64::try_from(q.since).is_err() {
        return Err(ApiError::bad(
            "invalid_query",
            format!("since must be at most {}", i64::MAX),
        ));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad(
            "invalid_query",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    page(&state, q.since, limit, wait, q.db_id.as_deref())
        .await
        .map(Json)
}

/// Usage batches can be far larger than a management request, so this route has its own limit.
const USAGE_BODY_LIMIT: usize = 32 * 1024 * 1024;

/// Takes a batch in the encoding gateways send
/// ([`tollgate_protocol::usage_codec::CONTENT_TYPE`]) or as JSON
/// (also without a content type); anything else is 415 with `Accept-Post` listing both.
#[utoipa::path(
    post,
    path = "/internal/usage",
    tag = "gateways",
    security(("feedToken" = []), ("serviceToken" = [])),
    request_body(
        content = crate::usage::UsageBatchDoc,
        description = "A usage batch as JSON; gateways send the same batch in its binary \
                       encoding, `application/vnd.tollgate.usage-batch; v=1`"
    ),
    responses(
        (status = 200, description = "Accepted (or a duplicate, acknowledged and not applied again)", body = UsageAckDoc),
        (status = 400, description = "`invalid_body` or `invalid_json`: the batch cannot be read or breaks a bound", body = ErrorDoc),
        (status = 415, description = "`unsupported_media_type`: neither JSON nor a version of the binary encoding this backend reads; `Accept-Post` lists what it takes", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn usage_handler(
    _: FeedAuth,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let media = match headers.get(axum::http::header::CONTENT_TYPE) {
        None => Some(Media::Json),
        Some(v) => v.to_str().ok().and_then(Media::parse),
    };
    let encoded = match media {
        Some(Media::Binary) => Ok(body),
        Some(Media::Json) => parse_json(&body).and_then(|b| crate::usage::encode(&b)),
        None => return crate::usage::unsupported_media(),
    };
    match encoded {
        Ok(encoded) => crate::usage::ingest(&state, encoded)
            .await
            .map(Json)
            .into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(feed_handler, usage_handler))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new().route(FEED_PATH, get(feed_handler)).route(
        USAGE_PATH,
        post(usage_handler).layer(axum::extract::DefaultBodyLimit::max(USAGE_BODY_LIMIT)),
    )
}

#[cfg(test)]
mod tests {
    use crate::app::testing::TestBackend;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{json, Value};
    use tower::ServiceExt;

    async fn post_usage(tb: &TestBackend, body: &Value) -> (u16, Value) {
        let req = Request::post(super::USAGE_PATH)
            .header("content-type", "application/json")
            .header("authorization", "Bearer test-feed-token-0123456789")
            .body(Body::from(body.to_string()))
            .unwrap_or_else(|e| panic!("request: {e}"));
        let resp = tb
            .backend
            .router()
            .oneshot(req)
            .await
            .unwrap_or_else(|e| panic!("call: {e}"));
        let status = resp.status().as_u16();
        let raw = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
    }

    /// Batch ids and unit sums live in signed 64-bit columns: what does not fit is refused with
    /// 400 and a JSON error body naming the field: nothing a client sends may cause a 500 (this
    /// used to reach the store and answer 500).
    #[tokio::test]
    async fn batch_ids_and_counts_beyond_i64_are_refused_with_400() {
        let tb = TestBackend::start(|_| {}).await;
        let entry = |count: u64| json!({"key_id": "key_0123456789abcdef", "day": "2026-12-04", "count": count, "last_used": 1_764_806_400});
        let (status, body) = post_usage(
            &tb,
            &json!({"gateway_id": "gw1", "batch_id": 1u64 << 63, "entries": [entry(1)]}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "invalid_body", "{body}");
        assert_eq!(
            body["detail"], "batch_id must be at most 9223372036854775807",
            "{body}"
        );
        let (status, body) = post_usage(
            &tb,
            &json!({"gateway_id": "gw1", "batch_id": u64::MAX, "entries": []}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        let half = 1u64 << 62;
        let (status, body) = post_usage(
            &tb,
            &json!({"gateway_id": "gw1", "batch_id": 7, "entries": [entry(half), entry(half)]}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("add up to more than")),
            "{body}"
        );
        // The largest id that fits is an ordinary batch, applied once.
        let max = json!({"gateway_id": "gw1", "batch_id": i64::MAX, "entries": [entry(3)]});
        let (status, body) = post_usage(&tb, &max).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["duplicate"], false, "{body}");
        assert_eq!(body["batch_id"], json!(i64::MAX), "{body}");
        let (status, body) = post_usage(&tb, &max).await;
        assert_eq!(
            (status, body["duplicate"].clone()),
            (200, json!(true)),
            "{body}"
        );
    }

    /// A representation the backend does not read is 415 with `Accept-Post` naming what it
    /// reads (gateways choose from it); the bare binary type is version 1, as gateways of the
    /// previous version send it.
    #[tokio::test]
    async fn usage_in_another_media_type_or_version_is_415_with_accept_post() {
        use tollgate_protocol::feed::{UsageBatch, UsageEntry};
        use tollgate_protocol::usage_codec;
        let tb = TestBackend::start(|_| {}).await;
        let post = |content_type: &str, body: Vec<u8>| {
            Request::post(super::USAGE_PATH)
                .header("content-type", content_type)
                .header("authorization", "Bearer test-feed-token-0123456789")
                .body(Body::from(body))
                .unwrap_or_else(|e| panic!("request: {e}"))
        };
        let batch = |batch_id: u64| -> Vec<u8> {
            usage_codec::encode(&UsageBatch {
                gateway_id: "gw1".to_string(),
                batch_id,
                entries: vec![UsageEntry {
                    key_id: "key_0123456789abcdef".to_string(),
                    day: "2026-12-04".to_string(),
                    count: 1,
                    last_used: 1_764_806_400,
                }],
            })
            .unwrap_or_default()
        };
        for content_type in ["text/plain", "application/vnd.tollgate.usage-batch; v=2"] {
            let resp = tb
                .backend
                .router()
                .oneshot(post(content_type, batch(1)))
                .await
                .unwrap_or_else(|e| panic!("call: {e}"));
            assert_eq!(resp.status().as_u16(), 415, "{content_type}");
            assert_eq!(
                resp.headers()
                    .get(usage_codec::ACCEPT_POST)
                    .and_then(|v| v.to_str().ok()),
                Some(usage_codec::ACCEPTED),
                "{content_type}"
            );
            let raw = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
            assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
        }
        for (batch_id, content_type) in
            [(1, usage_codec::CONTENT_TYPE), (2, usage_codec::MEDIA_TYPE)]
        {
            let resp = tb
                .backend
                .router()
                .oneshot(post(content_type, batch(batch_id)))
                .await
                .unwrap_or_else(|e| panic!("call: {e}"));
            assert_eq!(resp.status().as_u16(), 200, "{content_type}");
        }
    }

    /// Found by schemathesis: `since` beyond i64 answered 500.
    #[tokio::test]
    async fn a_feed_position_beyond_i64_is_refused_with_400() {
        let tb = TestBackend::start(|_| {}).await;
        let get = |since: &str| {
            Request::get(format!("{}?since={since}&wait=0", super::FEED_PATH))
                .header("authorization", "Bearer test-feed-token-0123456789")
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("request: {e}"))
        };
        let resp = tb
            .backend
            .router()
            .oneshot(get("9223372036854775808"))
            .await
            .unwrap_or_else(|e| panic!("call: {e}"));
        assert_eq!(resp.status().as_u16(), 400);
        let raw = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        assert_eq!(body["error"]["code"], "invalid_query", "{body}");
        assert_eq!(
            body["detail"], "since must be at most 9223372036854775807",
            "{body}"
        );
        let resp = tb
            .backend
            .router()
            .oneshot(get("9223372036854775807"))
            .await
            .unwrap_or_else(|e| panic!("call: {e}"));
        assert_eq!(resp.status().as_u16(), 200);
    }
}
