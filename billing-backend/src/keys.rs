//! API keys: minting (CSPRNG secret, only SHA-256 + 12-char start stored, shown once), listing,
//! revocation, rotation with an optional overlap, expiry, metadata and per-key limit overrides.
//! Minting a paid-plan key needs an active subscription to that plan (402), and a user holds
//! at most `max_keys_per_user` active keys of their plan (409).

use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::error::ErrorDoc;
use crate::extract::ValidatedJson;
use crate::state::AppState;
use crate::store::{Cause, KeyPatch, KeyRecord, NewKey, StoreError};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tollgate_protocol::day::{day_index, format_day};
use tollgate_protocol::keys::{format_key, key_start, valid_key_id, KeyHash};
use tollgate_protocol::plans::{Limits, FREE};
use utoipa::{IntoParams, ToSchema};

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

/// `POST /api/marketplace/keys/generate`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// The operator's id for the user: 1-128 characters, no control characters.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub user_id: String,
    /// A plan of the catalogue; default `free`. A paid plan needs the user's active
    /// subscription to it (else 402).
    #[serde(default)]
    pub plan: Option<String>,
    /// 1-100 characters; default `Default Key`.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// RFC 3339, in the future. Not together with `expires_in_days`.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// 1-3650.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<u32>,
    /// A JSON object of at most 4 KiB.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Per-key override of the plan's limit (1 to 10^9).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub rate_limit_per_minute: Option<u64>,
    /// Per-key override of the plan's daily limit (1 to 10^9).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
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
        let current = state.store().user_plan(&req.user_id).await?;
        if current != plan.id {
            return Err(ApiError::PaymentRequired(format!(
                "a {} key needs an active {} subscription; user {:?} is on {current}",
                plan.id, plan.id, req.user_id
            )));
        }
    }
    let api_key = format_key(&state.cfg().key_prefix, &plan.id, &crate::ids::key_secret());
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
    let record = match state.store().create_key(new, &max, cause).await {
        Ok(r) => r,
        Err(StoreError::KeyLimit { max }) => {
            return Err(ApiError::conflict(
                "key_limit_reached",
                format!("this user already has {max} active keys, the most their plan allows; revoke one first"),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    state.hub().notify(record.seq);
    Ok(Minted { api_key, record })
}

const SHOWN_ONCE: &str =
    "Store this API key securely. It is shown only once and cannot be recovered.";

/// A freshly minted key, with its secret (the only time it is shown).
///
/// Response structs in this module list their fields in alphabetical order: the `json!` maps
/// they replaced wrote them so, and the bytes on the wire stayed the same.
#[derive(Serialize, ToSchema)]
pub struct GeneratedKey {
    /// The secret, `cli_<plan>_<43 base64url characters>`.
    pub api_key: String,
    /// RFC 3339.
    pub created_at: String,
    pub daily_limit: u64,
    pub expires_at: Option<String>,
    /// `key_` + 16 lowercase hex.
    pub key_id: String,
    pub name: String,
    pub plan: String,
    /// Requests per minute.
    pub rate_limit: u64,
    /// The key's first 12 characters, kept to recognise it.
    pub start: String,
    pub success: bool,
    pub user_id: String,
    pub warning: &'static str,
}

/// Mint a key; the secret is shown once.
///
/// `{user_id, plan="free", name="Default Key", expires_at?|expires_in_days?, metadata?,
/// rate_limit_per_minute?, daily_limit?}`.
#[utoipa::path(
    post,
    path = "/api/marketplace/keys/generate",
    tag = "keys",
    security(("serviceToken" = [])),
    request_body = GenerateRequest,
    responses(
        (status = 200, description = "The key and its secret", body = GeneratedKey),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_user_id`, `unknown_plan`", body = ErrorDoc),
        (status = 402, description = "`subscription_required`: a paid plan without an active subscription to it", body = ErrorDoc),
        (status = 409, description = "`key_limit_reached`: the user holds `max_keys_per_user` active keys", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn generate(
    _: ServiceAuth,
    State(state): State<AppState>,
    ValidatedJson(req): ValidatedJson<GenerateRequest>,
) -> Result<Json<GeneratedKey>, ApiError> {
    let minted = mint(
        &state,
        req,
        &Cause::new("api", "POST /api/marketplace/keys/generate"),
    )
    .await?;
    let limits = effective_limits(&state, &minted.record);
    let r = minted.record;
    Ok(Json(GeneratedKey {
        api_key: minted.api_key,
        created_at: rfc3339(r.created_at),
        daily_limit: limits.per_day,
        expires_at: r.expires_at.map(rfc3339),
        key_id: r.key_id,
        name: r.name,
        plan: r.plan,
        rate_limit: limits.per_minute,
        start: r.start,
        success: true,
        user_id: r.user_id,
        warning: SHOWN_ONCE,
    }))
}

/// Per-key limits that replace the plan's (`null`: the plan's).
#[derive(Serialize, ToSchema)]
pub struct Overrides {
    pub daily_limit: Option<u64>,
    pub rate_limit_per_minute: Option<u64>,
}

/// The public view of a key record (never the secret, never the hash).
#[derive(Serialize, ToSchema)]
pub struct KeyView {
    /// Not revoked and not expired.
    pub active: bool,
    pub created_at: String,
    /// Effective daily limit (override, else the plan's).
    pub daily_limit: u64,
    pub expires_at: Option<String>,
    pub key_id: String,
    pub last_used: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub name: String,
    pub overrides: Overrides,
    /// The tier: the user's effective plan.
    pub plan: String,
    /// Effective requests per minute.
    pub rate_limit: u64,
    pub revoked_at: Option<String>,
    /// Until when the secret before the last rotation still works.
    pub rotation_grace_until: Option<String>,
    pub start: String,
    /// Units today (UTC); `null` where the answer does not count them.
    pub usage_today: Option<u64>,
    pub usage_total: u64,
    pub user_id: String,
}

pub fn key_view(state: &AppState, k: &KeyRecord, usage_today: Option<u64>) -> KeyView {
    let limits = effective_limits(state, k);
    let metadata: Value = serde_json::from_str(&k.metadata).unwrap_or_else(|_| json!({}));
    KeyView {
        active: k.is_active(state.now()),
        created_at: rfc3339(k.created_at),
        daily_limit: limits.per_day,
        expires_at: k.expires_at.map(rfc3339),
        key_id: k.key_id.clone(),
        last_used: k.last_used.map(rfc3339),
        metadata,
        name: k.name.clone(),
        overrides: Overrides {
            daily_limit: k.daily_limit_override,
            rate_limit_per_minute: k.rate_limit_override,
        },
        plan: k.plan.clone(),
        rate_limit: limits.per_minute,
        revoked_at: k.revoked_at.map(rfc3339),
        rotation_grace_until: k.previous_until.map(rfc3339),
        start: k.start.clone(),
        usage_today,
        usage_total: k.usage_total,
        user_id: k.user_id.clone(),
    }
}

/// The public view as a JSON value (the CLI prints it).
pub fn key_json(state: &AppState, k: &KeyRecord, usage_today: Option<u64>) -> Value {
    serde_json::to_value(key_view(state, k, usage_today)).unwrap_or_default()
}

/// `GET /api/marketplace/keys/user/{user_id}`.
#[derive(Serialize, ToSchema)]
pub struct UserKeys {
    pub keys: Vec<KeyView>,
    /// The user's effective plan.
    pub plan: String,
    pub total: usize,
    pub user_id: String,
}

/// A user's keys (revoked ones included) with usage today.
#[utoipa::path(
    get,
    path = "/api/marketplace/keys/user/{user_id}",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("user_id" = String, Path, description = "The operator's id for the user")),
    responses(
        (status = 200, description = "The user's keys", body = UserKeys),
        (status = 400, description = "`invalid_user_id`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn user_keys(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(user_id): Path<String>,
) -> Result<Json<UserKeys>, ApiError> {
    valid_user_id(&user_id)?;
    let keys = state.store().keys_of_user(&user_id).await?;
    let today = format_day(day_index(state.now()));
    let ids: Vec<String> = keys.iter().map(|k| k.key_id.clone()).collect();
    let usage = state.store().usage_on_day(&ids, &today).await?;
    let list: Vec<KeyView> = keys
        .iter()
        .map(|k| key_view(&state, k, usage.get(&k.key_id).copied()))
        .collect();
    let plan = state.store().user_plan(&user_id).await?;
    Ok(Json(UserKeys {
        total: list.len(),
        keys: list,
        plan,
        user_id,
    }))
}

/// One key (never its secret), with usage today.
#[utoipa::path(
    get,
    path = "/api/marketplace/keys/{key_id}",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("key_id" = String, Path, description = "`key_` + 16 lowercase hex")),
    responses(
        (status = 200, description = "The key", body = KeyView),
        (status = 404, description = "`key_not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn get_key(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let k = state
        .store()
        .get_key(&key_id)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    let today = format_day(day_index(state.now()));
    let usage = state
        .store()
        .usage_on_day(std::slice::from_ref(&k.key_id), &today)
        .await?;
    Ok(Json(key_view(&state, &k, usage.get(&k.key_id).copied())))
}

/// `DELETE /api/marketplace/keys/{key_id}`.
#[derive(Serialize, ToSchema)]
pub struct Revoked {
    pub key_id: String,
    /// `API key revoked`.
    pub message: &'static str,
    pub revoked_at: Option<String>,
    pub success: bool,
}

/// Revoke a key; every gateway refuses it within a second. Revoking again changes nothing.
#[utoipa::path(
    delete,
    path = "/api/marketplace/keys/{key_id}",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("key_id" = String, Path, description = "`key_` + 16 lowercase hex")),
    responses(
        (status = 200, description = "Revoked", body = Revoked),
        (status = 404, description = "`key_not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn revoke(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
) -> Result<Json<Revoked>, ApiError> {
    valid_key_id_or_404(&key_id)?;
    let cause = Cause::new("api", format!("DELETE /api/marketplace/keys/{key_id}"));
    let k = state
        .store()
        .revoke_key(&key_id, state.now(), &cause)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    state.hub().notify(k.seq);
    Ok(Json(Revoked {
        key_id: k.key_id,
        message: "API key revoked",
        revoked_at: k.revoked_at.map(rfc3339),
        success: true,
    }))
}

/// `POST /api/marketplace/keys/{key_id}/rotate`; the body may be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// Seconds the old secret keeps working (0 to 86400).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 86400)]
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
        .store()
        .get_key(key_id)
        .await
        .map_err(|e| map_key_err(e, key_id))?;
    let api_key = format_key(
        &state.cfg().key_prefix,
        &current.plan,
        &crate::ids::key_secret(),
    );
    let grace_until = (grace > 0).then(|| state.now() + grace);
    let record = state
        .store()
        .rotate_key(
            key_id,
            KeyHash::of(&api_key),
            key_start(&api_key),
            grace_until,
            cause,
        )
        .await
        .map_err(|e| map_key_err(e, key_id))?;
    state.hub().notify(record.seq);
    Ok(Minted { api_key, record })
}

/// A rotated key's new secret.
#[derive(Serialize, ToSchema)]
pub struct Rotated {
    pub api_key: String,
    pub key_id: String,
    /// Until when the previous secret keeps working (`null`: it stopped now).
    pub previous_valid_until: Option<String>,
    pub start: String,
    pub success: bool,
    pub warning: &'static str,
}

/// New secret for the same key id; `{grace_seconds}` keeps the old one working (at most 24 h).
#[utoipa::path(
    post,
    path = "/api/marketplace/keys/{key_id}/rotate",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("key_id" = String, Path, description = "`key_` + 16 lowercase hex")),
    request_body(content = Option<RotateRequest>, description = "Optional; an empty body means no overlap"),
    responses(
        (status = 200, description = "The new secret", body = Rotated),
        (status = 404, description = "`key_not_found`", body = ErrorDoc),
        (status = 409, description = "`key_conflict`: the key is revoked", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn rotate_handler(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Rotated>, ApiError> {
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    let cause = Cause::new("api", format!("POST /api/marketplace/keys/{key_id}/rotate"));
    let minted = rotate(&state, &key_id, req.grace_seconds.unwrap_or(0), &cause).await?;
    let r = minted.record;
    Ok(Json(Rotated {
        api_key: minted.api_key,
        key_id: r.key_id,
        previous_valid_until: r.previous_until.map(rfc3339),
        start: r.start,
        success: true,
        warning: SHOWN_ONCE,
    }))
}

/// `PATCH /api/marketplace/keys/{key_id}`: absent fields stay as they are, `null` clears.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchRequest {
    /// 1-100 characters.
    #[serde(default)]
    name: Option<String>,
    /// RFC 3339, or null to clear.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<String>)]
    expires_at: Option<Option<String>>,
    /// 1 to 10^9, or null for the plan's.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u64>)]
    rate_limit_per_minute: Option<Option<u64>>,
    /// 1 to 10^9, or null for the plan's.
    #[serde(default, with = "double_option")]
    #[schema(value_type = Option<u64>)]
    daily_limit: Option<Option<u64>>,
    /// A JSON object of at most 4 KiB; replaces the stored one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
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

/// Change a key's name, expiry, per-key limits or metadata.
#[utoipa::path(
    patch,
    path = "/api/marketplace/keys/{key_id}",
    tag = "keys",
    security(("serviceToken" = [])),
    params(("key_id" = String, Path, description = "`key_` + 16 lowercase hex")),
    request_body = PatchRequest,
    responses(
        (status = 200, description = "The key as changed (`usage_today` is null)", body = KeyView),
        (status = 404, description = "`key_not_found`", body = ErrorDoc),
        (status = 409, description = "`key_conflict`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn patch_key(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    ValidatedJson(req): ValidatedJson<PatchRequest>,
) -> Result<Json<KeyView>, ApiError> {
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
        .store()
        .update_key(&key_id, patch, &cause)
        .await
        .map_err(|e| map_key_err(e, &key_id))?;
    state.hub().notify(k.seq);
    Ok(Json(key_view(&state, &k, None)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only keys of this plan.
    plan: Option<String>,
    /// 1-1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/marketplace/keys`.
#[derive(Serialize, ToSchema)]
pub struct KeyList {
    /// `usage_today` is null in this list.
    pub keys: Vec<KeyView>,
    pub total: usize,
}

/// List keys, newest first.
#[utoipa::path(
    get,
    path = "/api/marketplace/keys",
    tag = "keys",
    security(("serviceToken" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page of keys", body = KeyList),
        (status = 400, description = "`unknown_plan`, `invalid_query` (limit out of range), or a query that does not parse (`bad_request`)", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn list_keys(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<KeyList>, ApiError> {
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
        .store()
        .list_keys(q.plan.as_deref(), limit, q.offset.unwrap_or(0))
        .await?;
    let list: Vec<KeyView> = keys.iter().map(|k| key_view(&state, k, None)).collect();
    Ok(Json(KeyList {
        total: list.len(),
        keys: list,
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    generate,
    list_keys,
    user_keys,
    get_key,
    patch_key,
    revoke,
    rotate_handler
))]
pub struct Api;

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
