//! Usage: batches from gateways (idempotent per gateway and batch id) feed `usage_today`,
//! `usage_total`, `last_used` and the daily history; `GET /api/marketplace/keys/{id}/usage`
//! reports them.

use crate::app::AppState;
use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::keys::{rfc3339, valid_key_id_or_404};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::day::{day_index, format_day, parse_day};
use tollgate_protocol::feed::{UsageAck, UsageBatch, MAX_BATCH_ENTRIES};

/// Units reported by gateways per key over the last 60 s, by the time of last use; this is
/// what `current_minute_usage` shows (the gateways enforce the exact window themselves).
#[derive(Default)]
pub struct MinuteWindow {
    inner: Mutex<HashMap<String, VecDeque<(i64, u64)>>>,
}

impl MinuteWindow {
    /// Records a batch's entries under one lock; a key's id is copied only the first time.
    fn record_all<'a>(&self, entries: impl Iterator<Item = (&'a str, i64, u64)>, now: i64) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (key_id, at, units) in entries {
            let q = match map.get_mut(key_id) {
                Some(q) => q,
                None => map.entry(key_id.to_string()).or_default(),
            };
            q.push_back((at, units));
            while q.front().is_some_and(|(t, _)| *t <= now - 60) {
                q.pop_front();
            }
        }
        // Forget idle keys so the map stays small.
        if map.len() > 100_000 {
            map.retain(|_, q| q.back().is_some_and(|(t, _)| *t > now - 60));
        }
    }

    pub fn current(&self, key_id: &str, now: i64) -> u64 {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key_id)
            .map(|q| {
                q.iter()
                    .filter(|(t, _)| *t > now - 60)
                    .map(|(_, u)| *u)
                    .sum()
            })
            .unwrap_or(0)
    }
}

/// Applies a batch once. Duplicates (same gateway and batch id) are acknowledged, not applied.
pub async fn ingest(state: &AppState, batch: UsageBatch) -> Result<UsageAck, ApiError> {
    if batch.gateway_id.is_empty() || batch.gateway_id.len() > 128 {
        return Err(ApiError::bad(
            "invalid_body",
            "gateway_id must be 1-128 characters",
        ));
    }
    if batch.entries.len() > MAX_BATCH_ENTRIES {
        return Err(ApiError::bad(
            "invalid_body",
            format!("a batch holds at most {MAX_BATCH_ENTRIES} entries"),
        ));
    }
    for (i, e) in batch.entries.iter().enumerate() {
        if parse_day(&e.day).is_none() {
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
    }
    let now = state.now();
    let duplicate = state.store.ingest_usage(&batch, now).await?;
    if !duplicate {
        let units = batch
            .entries
            .iter()
            .map(|e| e.count)
            .fold(0u64, u64::saturating_add);
        state.minute.record_all(
            batch
                .entries
                .iter()
                .map(|e| (e.key_id.as_str(), e.last_used, e.count)),
            now,
        );
        state.metrics.usage_units.inc_by(units);
    }
    state
        .metrics
        .usage_batches
        .with_label_values(&[if duplicate { "duplicate" } else { "applied" }])
        .inc();
    Ok(UsageAck {
        gateway_id: batch.gateway_id,
        batch_id: batch.batch_id,
        duplicate,
    })
}

/// How often accepted usage batches are applied (summed per key). Reads apply what is pending
/// first, so this bounds only how much waits, not what a read sees.
pub const SETTLE_EVERY: Duration = Duration::from_secs(5);

/// Applies pending usage every [`SETTLE_EVERY`] (closing the store applies the rest).
pub async fn settle_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SETTLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = state.store.settle_usage().await {
            tracing::warn!(error = %e, "pending usage could not be applied; retrying");
        }
    }
}

async fn key_usage(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let now = state.now();
    let today = format_day(day_index(now));
    let key = state.store.get_key(&key_id).await?;
    let usage = state.store.usage_of(&key_id, &today, 30).await?;
    let limits = crate::keys::effective_limits(&state, &key);
    Ok(Json(json!({
        "key_id": key.key_id,
        "plan": key.plan,
        "usage": {
            "today": usage.today,
            "total": usage.total,
            "daily_limit": limits.per_day,
            "remaining_today": limits.per_day.saturating_sub(usage.today),
        },
        "rate_limit": {
            "requests_per_minute": limits.per_minute,
            "current_minute_usage": state.minute.current(&key_id, now),
        },
        "last_used": usage.last_used.map(rfc3339),
        "created_at": rfc3339(key.created_at),
        "history": usage.history,
    })))
}

pub fn router() -> Router<AppState> {
    Router::new().route("/api/marketplace/keys/{key_id}/usage", get(key_usage))
}
