//! The key feed for gateways (see `tollgate_protocol::feed` for the protocol).
//!
//! Writers call [`FeedHub::notify`] after committing a change; waiting long-polls wake at once.
//! [`watch_head`] also polls the database head every 250 ms, so changes committed by another
//! backend on the same PostgreSQL reach this backend's waiting gateways too.

use crate::app::AppState;
use crate::auth::FeedAuth;
use crate::error::ApiError;
use crate::extract::parse_json;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::feed::{
    FeedKey, FeedPage, FeedQuery, GraceHash, KeyState, UsageAck, DEFAULT_PAGE, FEED_PATH,
    FEED_SEQ_HEADER, MAX_PAGE, MAX_WAIT_SECS, USAGE_PATH,
};
use tollgate_protocol::plans::{Catalogue, Limits};
use tollgate_protocol::usage_wire;

#[derive(Clone)]
pub struct FeedHub {
    head: watch::Sender<u64>,
}

impl FeedHub {
    pub fn new(head: u64) -> FeedHub {
        FeedHub {
            head: watch::channel(head).0,
        }
    }

    /// Records that the database head is at least `head` and wakes waiting readers.
    pub fn notify(&self, head: u64) {
        self.head.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }

    /// Wakes every waiting reader without a new head (the feed epoch changed).
    pub fn wake(&self) {
        self.head.send_modify(|_| {});
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }
}

/// Background: follows the database head (other backends may write to the same database).
pub async fn watch_head(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(head) = state.store.feed_head().await {
            state.hub.notify(head);
            state
                .metrics
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
        match state.store.feed_head().await {
            Ok(head) => {
                state.hub.notify(head);
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
    let mut rx = state.hub.subscribe();
    let epoch = state.feed_epoch();
    loop {
        rx.borrow_and_update();
        let (keys, head) = state.store.feed_page(since, limit).await?;
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

async fn feed_handler(
    _: FeedAuth,
    State(state): State<AppState>,
    Query(q): Query<FeedQuery>,
) -> Result<Json<FeedPage>, ApiError> {
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(MAX_WAIT_SECS));
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

/// Takes a batch as JSON (`UsageBatch`) or in the binary form gateways send
/// ([`usage_wire::CONTENT_TYPE`]).
async fn usage_handler(
    _: FeedAuth,
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<UsageAck>, ApiError> {
    let binary = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == usage_wire::CONTENT_TYPE);
    if binary {
        let bad = |e: String| ApiError::bad("invalid_body", e);
        let (gateway_id, batch_id, entries) = usage_wire::read_header(&body).map_err(bad)?;
        let mut rows = Vec::with_capacity(entries.len() / 48);
        usage_wire::read_entries(entries, |r| rows.push(r)).map_err(bad)?;
        let encoded = body.slice_ref(entries);
        return crate::usage::ingest(&state, gateway_id, batch_id, &rows, Some(encoded))
            .await
            .map(Json);
    }
    let batch: crate::usage::BatchIn<'_> = parse_json(&body)?;
    crate::usage::ingest(
        &state,
        &batch.gateway_id,
        batch.batch_id,
        &batch.rows(),
        None,
    )
    .await
    .map(Json)
}

pub fn router() -> Router<AppState> {
    Router::new().route(FEED_PATH, get(feed_handler)).route(
        USAGE_PATH,
        post(usage_handler).layer(axum::extract::DefaultBodyLimit::max(USAGE_BODY_LIMIT)),
    )
}
