//! API keys: minting (CSPRNG secret, only SHA-256 + 12-char start stored, shown once), listing,
//! revocation, rotation with an optional overlap, expiry, metadata and per-key limit overrides.
//! Minting a paid-plan key needs an active subscription to that plan (402), and a user holds
//! at most `max_keys_per_user` active keys of their plan (409).

use crate::app::AppState;
use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::extract::ValidatedJson;
use crate::store::{Cause, KeyPatch, KeyRecord, NewKey, StoreError};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_protocol::day::{day_index, format_day};
use tollgate_protocol::keys::{format_key, key_start, valid_key_id, KeyHash};
use tollgate_protocol::plans::{Limits, FREE};

/// Longest rotation overlap: 24 hours.
pub const MAX_ROTATION_GRACE: i64 = 86_400;
/// Largest per-key limit override.
pub const MAX_LIMIT: u64 = 1_000_000_000;
pub const MAX_METADATA_BYTES: usize = 4096;

pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

fn parse_rfc3339(field: &str, text: &str) -> Result<i64, ApiError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            ApiError::bad(
                "invalid_body",
                format!("{field}: {text:?} is not an RFC 3339 timestamp"),
            )
        })
}

pub fn valid_key_id_or_404(key_id: &str) -> Result<(), ApiError> {
    if valid_key_id(key_id) {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "key_not_found",
            format!("API key {key_id:?} not found (ids look like key_0123456789abcdef)"),
        ))
    }
}

pub fn valid_user_id(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty() || user_id.len() > 128 || user_id.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_user_id",
            "user_id must be 1-128 characters without control characters",
        ));
    }
    Ok(())
}

/// A key's effective limits: the plan's, unless overridden on the key.
pub fn effective_limits(state: &AppState, key: &KeyRecord) -> Limits {
    let catalogue = state.catalogue();
    let plan = catalogue
        .get(&key.plan)
        .unwrap_or_else(|| catalogue.free())
        .limits();
    Limits {
        per_minute: key.rate_limit_override.unwrap_or(plan.per_minute),
        per_day: key.daily_limit_override.unwrap_or(plan.per_day),
    }
}

fn map_key_err(e: StoreError, key_id: &str) -> ApiError {
    match e {
        StoreError::NotFound(_) => {
            ApiError::not_found("key_not_found", format!("API key {key_id} not found"))
        }
        StoreError::Conflict(m) => ApiError::conflict("key_conflict", m),
        other => other.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    pub user_id: String,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub expires_in_days: Option<u32>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub rate_limit_per_minute: Option<u64>,
    #[serde(default)]
    pub daily_limit: Option<u64>,
}

/// A freshly minted key: the only moment its secret exists outside the client.
pub struct Minted {
    pub api_key: String,
    pub record: KeyRecord,
}

fn check_override(field: &str, v: Option<u64>) -> Result<Option<u64>, ApiError> {
    match v {
        Some(0) => Err(ApiError::bad(
            "invalid_body",
            format!("{field} must be at least 1"),
        )),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad(
            "invalid_body",
            format!("{field} must be at most {MAX_LIMIT}"),
        )),
        other => Ok(other),
    }
}

fn check_metadata(v: Option<Value>) -> Result<Option<String>, ApiError> {
    match v {
        None => Ok(None),
        Some(Value::Object(m)) => {
            let text = Value::Object(m).to_string();
            if text.len() > MAX_METADATA_BYTES {
                return Err(ApiError::bad(
                    "invalid_body",
                    format!("metadata must be at most {MAX_METADATA_BYTES} bytes of JSON"),
                ));
            }
            Ok(Some(text))
        }
        Some(_) => Err(ApiError::bad(
            "invalid_body",
            "metadata must be a JSON object",
        )),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_body",
            "name must be 1-100 characters without control characters",
        ));
    }
    Ok(())
}

/// Mints a key (used by the HTTP handler, the CLI and the portal).
pub async fn mint(
    state: &AppState,
    req: GenerateRequest,
    cause: &Cause,
) -> Result<Minted, ApiError> {
    valid_user_id(&req.user_id)?;
    let plan_id = req.plan.unwrap_or_else(|| FREE.to_string());
    let plan = crate::plans::find(state, &plan_id)?;
    let name = req.name.unwrap_or_else(|| "Default Key".to_string());
    check_name(&name)?;
    let now = state.now();
    let expires_at = match (req.expires_at, req.expires_in_days) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "invalid_body",
                "give expires_at or expires_in_days, not both",
            ))
        }
        (Some(t), None) => Some(parse_rfc3339("expires_at", &t)?),
        (None, Some(0)) => {
            return Err(ApiError::bad(
                "invalid_body",
                "expires_in_days must be at least 1",
            ))
        }
        (None, Some(d)) if d > 3650 => {
            return Err(ApiError::bad(
                "invalid_body",
                "expires_in_days must be at most 3650",
            ))
        }
        (None, Some(d)) => Some(now + i64::from(d) * 86_400),
        (None, None) => None,
    };
    if expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::bad(
            "invalid_body",
            "expires_at must be in the future",
        ));
    }
    let rate = check_override("rate_limit_per_minute", req.rate_limit_per_minute)?;
    let daily = check_override("daily_limit", req.daily_limit)?;
    let metadata = check_metadata(req.metadata)?.unwrap_or_else(|| "{}".to_string());
    if plan.is_paid() {
        let current = state.store.user_plan(&req.user_id).await?;
        if current != plan.id {
            return Err(ApiError::PaymentRequired(format!(
                "a {} key needs an active {} subscription; user {:?} is on {current}",
                plan.id, plan.id, req.user_id
            )));
        }
    }
    let api_key = format_key(&state.cfg.key_prefix, &plan.id, &crate::ids::key_secret());
    let new = NewKey {
        key_id: crate::ids::key_id(),
        user_id: req.user_id,
        name,
        hash: KeyHash::of(&api_key),
        start: key_start(&api_key).to_string(),
        created_at: now,
        expires_at,
        rate_limit_override: rate,
        daily_limit_override: daily,
        metadata,
    };
    let max: BTreeMap<String, u32> = state
        .catalogue()
        .all()
        .iter()
        .map(|p| (p.id.clone(), p.max_keys_per_user))
        .collect();
    let record = match state.store.create_key(new, &max, cause).await {
        Ok(r) => r,
        Err(StoreError::KeyLimit { max }) => {
            return Err(ApiError::conflict(
                "key_limit_reached",
                format!("this user already has {max} active keys, the most their plan allows; revoke one first"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    state.hub.notify(record.seq);
    Ok(Minted { api_key, record })
}

async fn generate(
    _: ServiceAuth,
    State(state): State<AppState>,
    ValidatedJson(req): ValidatedJson<GenerateRequest>,
) -> Result<Json<Value>, ApiError> {
    let minted = mint(
        &state,
        req,
        &Cause::new("api", "POST /api/marketplace/keys/generate"),
    )
    .await?;
    let limits = effective_limits(&state, &minted.record);
    let r = &minted.record;
    Ok(Json(json!({
        "success": true,
        "api_key": minted.api_key,
        "key_id": r.key_id,
        "user_id": r.user_id,
        "name": r.name,
        "plan": r.plan,
        "start": r.start,
        "rate_limit": limits.per_minute,
        "daily_limit": limits.per_day,
        "created_at": rfc3339(r.created_at),
        "expires_at": r.expires_at.map(rfc3339),
        "warning": "Store this API key securely. It is shown only once and cannot be recovered.",
    })))
}

/// The public view of a key record (never the secret, never the hash).
pub fn key_json(state: &AppState, k: &KeyRecord, usage_today: Option<u64>) -> Value {
    let limits = effective_limits(state, k);
    let metadata: Value = serde_json::from_str(&k.metadata).unwrap_or_else(|_| json!({}));
    json!({
        "key_id": k.key_id,
        "user_id": k.user_id,
        "name": k.name,
        "plan": k.plan,
        "start": k.start,
        "created_at": rfc3339(k.created_at),
        "last_used": k.last_used.map(rfc3339),
        "usage_today": usage_today,
        "usage_total": k.usage_total,
        "active": k.is_active(state.now()),
        "revoked_at": k.revoked_at.map(rfc3339),
        "expires_at": k.expires_at.map(rfc3339),
        "rate_limit": limits.per_minute,
        "daily_limit": limits.per_day,
        "overrides": {"rate_limit_per_minute": k.rate_limit_override, "daily_limit": k.daily_limit_override},
        "rotation_grace_until": k.previous_until.map(rfc3339),
        "metadata": metadata,
    })
}

async fn user_keys(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_user_id(&user_id)?;
    let keys = state.store.keys_of_user(&user_id).await?;
    let today = format_day(day_index(state.now()));
    let ids: Vec<String> = keys.iter().map(|k| k.key_id.clone()).collect();
    let usage = state.store.usage_on_day(&ids, &today).await?;
    let list: Vec<Value> = keys
        .iter()
        .map(|k| key_json(&state, k, usage.get(&k.key_id).copied()))
        .collect();
    let plan = state.store.user_plan(&user_id).await?;
    Ok(Json(
        json!({"user_id": user_id, "plan": plan, "total": list.len(), "keys": list}),
    ))
}

async fn get_key(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let k = state
        .store
        .get_key(&key_id)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    let today = format_day(day_index(state.now()));
    let usage = state
        .store
        .usage_on_day(std::slice::from_ref(&k.key_id), &today)
        .await?;
    Ok(Json(key_json(&state, &k, usage.get(&k.key_id).copied())))
}

async fn revoke(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let cause = Cause::new("api", format!("DELETE /api/marketplace/keys/{key_id}"));
    let k = state
        .store
        .revoke_key(&key_id, state.now(), &cause)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    state.hub.notify(k.seq);
    Ok(Json(
        json!({"success": true, "message": "API key revoked", "key_id": k.key_id, "revoked_at": k.revoked_at.map(rfc3339)}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Seconds the old secret keeps working (0 to 86400).
    #[serde(default)]
    pub grace_seconds: Option<i64>,
}

/// Rotates a key's secret (used by the HTTP handler, the CLI and the portal).
pub async fn rotate(
    state: &AppState,
    key_id: &str,
    grace: i64,
    cause: &Cause,
) -> Result<Minted, ApiError> {
    valid_key_id_or_404(key_id)?;
    if !(0..=MAX_ROTATION_GRACE).contains(&grace) {
        return Err(ApiError::bad(
            "invalid_body",
            format!("grace_seconds must be between 0 and {MAX_ROTATION_GRACE}"),
        ));
    }
    let current = state
        .store
        .get_key(key_id)
        .await
        .map_err(|e| map_key_err(e, key_id))?;
    let api_key = format_key(
        &state.cfg.key_prefix,
        &current.plan,
        &crate::ids::key_secret(),
    );
    let grace_until = (grace > 0).then(|| state.now() + grace);
    let record = state
        .store
        .rotate_key(
            key_id,
            KeyHash::of(&api_key),
            key_start(&api_key),
            grace_until,
            cause,
        )
        .await
        .map_err(|e| map_key_err(e, key_id))?;
    state.hub.notify(record.seq);
    Ok(Minted { api_key, record })
}

async fn rotate_handler(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let cause = Cause::new("api", format!("POST /api/marketplace/keys/{key_id}/rotate"));
    let minted = rotate(&state, &key_id, req.grace_seconds.unwrap_or(0), &cause).await?;
    Ok(Json(json!({
        "success": true,
        "api_key": minted.api_key,
        "key_id": minted.record.key_id,
        "start": minted.record.start,
        "previous_valid_until": minted.record.previous_until.map(rfc3339),
        "warning": "Store this API key securely. It is shown only once and cannot be recovered.",
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    #[serde(default)]
    name: Option<String>,
    /// RFC 3339, or null to clear.
    #[serde(default, with = "double_option")]
    expires_at: Option<Option<String>>,
    #[serde(default, with = "double_option")]
    rate_limit_per_minute: Option<Option<u64>>,
    #[serde(default, with = "double_option")]
    daily_limit: Option<Option<u64>>,
    #[serde(default)]
    metadata: Option<Value>,
}

/// Distinguishes an absent field (leave as is) from `null` (clear).
mod double_option {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

async fn patch_key(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    ValidatedJson(req): ValidatedJson<PatchRequest>,
) -> Result<Json<Value>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    if let Some(n) = &req.name {
        check_name(n)?;
    }
    let expires_at = match req.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => Some(Some(parse_rfc3339("expires_at", &t)?)),
    };
    let rate = match req.rate_limit_per_minute {
        Some(v) => Some(check_override("rate_limit_per_minute", v)?),
        None => None,
    };
    let daily = match req.daily_limit {
        Some(v) => Some(check_override("daily_limit", v)?),
        None => None,
    };
    let patch = KeyPatch {
        name: req.name,
        expires_at,
        rate_limit_override: rate,
        daily_limit_override: daily,
        metadata: check_metadata(req.metadata)?,
    };
    let cause = Cause::new("api", format!("PATCH /api/marketplace/keys/{key_id}"));
    let k = state
        .store
        .update_key(&key_id, patch, &cause)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    state.hub.notify(k.seq);
    Ok(Json(key_json(&state, &k, None)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    plan: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn list_keys(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(p) = &q.plan {
        if state.catalogue().get(p).is_none() {
            return Err(ApiError::bad("unknown_plan", format!("unknown plan {p:?}")));
        }
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad(
            "invalid_query",
            "limit must be between 1 and 1000",
        ));
    }
    let keys = state
        .store
        .list_keys(q.plan.as_deref(), limit, q.offset.unwrap_or(0))
        .await?;
    let list: Vec<Value> = keys.iter().map(|k| key_json(&state, k, None)).collect();
    Ok(Json(json!({"keys": list, "total": list.len()})))
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/marketplace/keys/generate", post(generate))
        .route("/api/marketplace/keys", get(list_keys))
        .route("/api/marketplace/keys/user/{user_id}", get(user_keys))
        .route(
            "/api/marketplace/keys/{key_id}",
            get(get_key).delete(revoke).patch(patch_key),
        )
        .route(
            "/api/marketplace/keys/{key_id}/rotate",
            post(rotate_handler),
        )
}
