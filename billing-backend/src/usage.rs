//! Usage: batches from gateways (idempotent per gateway and batch id) feed `usage_today`,
//! `usage_total`, `last_used` and the daily history; `GET /api/marketplace/keys/{id}/usage`
//! reports them.

use crate::auth::ServiceAuth;
use crate::error::{json_error, ApiError, ErrorDoc};
use crate::keys::{rfc3339, valid_key_id_or_404};
use crate::state::AppState;
use crate::store::DayCount;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::day::{day_index, format_day, parse_day};
use tollgate_protocol::feed::{UsageAck, UsageBatch, MAX_BATCH_ENTRIES};
use tollgate_protocol::usage_codec;
use utoipa::ToSchema;

/// [`UsageBatch`] as the document shows it, JSON being its representation for clients of the
/// HTTP API (the store's and the protocol's types stay free of documentation derives).
#[derive(ToSchema)]
#[schema(as = UsageBatch)]
#[allow(dead_code)]
pub struct UsageBatchDoc {
    /// 1-128 characters.
    #[schema(min_length = 1, max_length = 128)]
    gateway_id: String,
    /// The gateway's sequence number for the batch; a batch is applied once per
    /// `(gateway_id, batch_id)`. At most 2^63 - 1 (the databases store a signed 64-bit id).
    #[schema(maximum = 9223372036854775807_i64)]
    batch_id: u64,
    entries: Vec<UsageEntryDoc>,
}

/// [`UsageEntry`](tollgate_protocol::feed::UsageEntry) as the document shows it.
#[derive(ToSchema)]
#[schema(as = UsageEntry)]
#[allow(dead_code)]
pub struct UsageEntryDoc {
    /// 1-128 characters.
    #[schema(min_length = 1, max_length = 128)]
    key_id: String,
    /// `YYYY-MM-DD` (UTC).
    #[schema(example = "2026-12-04", pattern = "^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]
    day: String,
    /// Units admitted; at most 2^63 - 1.
    #[schema(maximum = 9223372036854775807_i64)]
    count: u64,
    /// Unix seconds.
    last_used: i64,
}

/// Longest key id a usage entry may name (ids the backend issues are 20 characters).
const MAX_KEY_ID: usize = 128;

/// A batch that arrived as JSON, in the one encoding ([`usage_codec`]) it is stored in.
pub fn encode(batch: &UsageBatch) -> Result<Bytes, ApiError> {
    usage_codec::encode(batch)
        .map(Bytes::from)
        .map_err(|e| ApiError::bad("invalid_body", format!("usage batch: {e}")))
}

/// The answer to a usage batch in a representation this backend does not take: 415, and
/// `Accept-Post` listing those it takes (a gateway picks from that list).
pub fn unsupported_media() -> Response {
    let mut resp = json_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        format!("usage batches are taken as {}", usage_codec::ACCEPTED),
    );
    resp.headers_mut().insert(
        usage_codec::ACCEPT_POST,
        HeaderValue::from_static(usage_codec::ACCEPTED),
    );
    resp
}

/// Accepts an encoded batch ([`usage_codec`]) once. Duplicates (same gateway and batch id) are
/// acknowledged, not applied. The bytes are read in place and stored as they are: the one
/// encoding is what the store keeps and what the minute window scans.
pub async fn ingest(state: &AppState, encoded: Bytes) -> Result<UsageAck, ApiError> {
    let batch = usage_codec::decode(&encoded).map_err(|e| ApiError::bad("invalid_body", e))?;
    let UsageBatch {
        gateway_id,
        batch_id,
        entries,
    } = batch;
    if gateway_id.is_empty() || gateway_id.len() > 128 {
        return Err(ApiError::bad(
            "invalid_body",
            "gateway_id must be 1-128 characters",
        ));
    }
    // Both databases keep batch ids (and unit counts) as signed 64-bit integers.
    if i64::try_from(batch_id).is_err() {
        return Err(ApiError::bad(
            "invalid_body",
            format!("batch_id must be at most {}", i64::MAX),
        ));
    }
    if entries.len() > MAX_BATCH_ENTRIES {
        return Err(ApiError::bad(
            "invalid_body",
            format!("a batch holds at most {MAX_BATCH_ENTRIES} entries"),
        ));
    }
    let mut units = 0u64;
    let mut newest = i64::MIN;
    for (i, e) in entries.iter().enumerate() {
        if e.key_id.is_empty() || e.key_id.len() > MAX_KEY_ID {
            return Err(ApiError::bad(
                "invalid_body",
                format!("entries[{i}].key_id must be 1-{MAX_KEY_ID} characters"),
            ));
        }
        if parse_day(e.day).is_none() {
            return Err(ApiError::bad(
                "invalid_body",
                format!("entries[{i}].day: {:?} is not YYYY-MM-DD", e.day),
            ));
        }
        if i64::try_from(e.count).is_err() {
            return Err(ApiError::bad(
                "invalid_body",
                format!("entries[{i}].count is too large"),
            ));
        }
        units = units.saturating_add(e.count);
        newest = newest.max(e.last_used);
    }
    if i64::try_from(units).is_err() {
        return Err(ApiError::bad(
            "invalid_body",
            format!("the entries' counts add up to more than {}", i64::MAX),
        ));
    }
    let now = state.now();
    let duplicate = state
        .store()
        .ingest_payload(gateway_id, batch_id, &encoded, entries.len(), units, now)
        .await?;
    if !duplicate {
        state.minute().record(encoded.clone(), newest, now);
        state.metrics().usage_units.add(units);
    }
    state
        .metrics()
        .usage_batches
        .with_label_values(&[if duplicate { "duplicate" } else { "applied" }])
        .inc();
    Ok(UsageAck {
        gateway_id: gateway_id.to_string(),
        batch_id,
        duplicate,
    })
}

/// How often accepted usage batches are applied (summed per key). Reads apply what is pending
/// first, so this bounds only how much waits, not what a read sees.
pub const SETTLE_EVERY: Duration = Duration::from_secs(10);

/// Applies pending usage every [`SETTLE_EVERY`] (closing the store applies the rest).
pub async fn settle_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SETTLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.store().settle_usage().await {
            tracing::warn!(error = %e, "pending usage could not be applied; retrying");
        }
    }
}

/// `usage` of [`KeyUsage`] (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, ToSchema)]
pub struct UsageCounts {
    pub daily_limit: u64,
    pub remaining_today: u64,
    /// Units today (UTC).
    pub today: u64,
    pub total: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MinuteUsage {
    /// Units the gateways reported for the last 60 seconds.
    pub current_minute_usage: u64,
    pub requests_per_minute: u64,
}

/// [`DayCount`] as the document shows it (the store's types stay free of documentation
/// derives).
#[derive(ToSchema)]
#[schema(as = DayCount)]
#[allow(dead_code)]
pub struct DayCountDoc {
    /// `YYYY-MM-DD` (UTC).
    day: String,
    count: u64,
}

/// `GET /api/marketplace/keys/{key_id}/usage`.
#[derive(Serialize, ToSchema)]
pub struct KeyUsage {
    pub created_at: String,
    /// The last 30 days with usage, most recent first.
    #[schema(value_type = Vec<DayCountDoc>)]
    pub history: Vec<DayCount>,
    pub key_id: String,
    pub last_used: Option<String>,
    pub plan: String,
    pub rate_limit: MinuteUsage,
    pub usage: UsageCounts,
}

/// Usage today and in total, limits, the current minute and the last 30 days.
#[utoipa::path(
    get,
    path = "/api/marketplace/keys/{key_id}/usage",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("key_id" = String, Path, description = "`key_` + 16 lowercase hex")),
    responses(
        (status = 200, description = "The key's usage", body = KeyUsage),
        (status = 404, description = "`key_not_found` or `not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn key_usage(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyUsage>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let now = state.now();
    let today = format_day(day_index(now));
    let key = state.store().get_key(&key_id).await?;
    let usage = state.store().usage_of(&key_id, &today, 30).await?;
    let limits = crate::keys::effective_limits(&state, &key);
    Ok(Json(KeyUsage {
        created_at: rfc3339(key.created_at),
        history: usage.history,
        key_id: key.key_id,
        last_used: usage.last_used.map(rfc3339),
        plan: key.plan,
        rate_limit: MinuteUsage {
            current_minute_usage: state.minute().current(&key_id, now),
            requests_per_minute: limits.per_minute,
        },
        usage: UsageCounts {
            daily_limit: limits.per_day,
            remaining_today: limits.per_day.saturating_sub(usage.today),
            today: usage.today,
            total: usage.total,
        },
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(key_usage))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/marketplace/keys/{key_id}/usage", get(key_usage))
}
