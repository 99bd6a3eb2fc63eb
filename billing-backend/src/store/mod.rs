//! Storage behind traits. The handlers and services only see [`Store`]; one SQL implementation
//! ([`sql::SqlStore`]) runs on SQLite (default, WAL) and PostgreSQL, with the dialect
//! differences (DDL, locking) kept in one place. Constraint violations become
//! [`StoreError::Conflict`] inside the store, because their codes differ per database.
//!
//! Every operation that changes an entitlement (a subscription, a user's effective plan, a key)
//! is one transaction that also appends to the ledger and bumps the feed sequence of the keys it
//! touched, so a gateway sees either all of it or none of it.

pub mod payments;
pub mod schema;
pub mod sepa;
pub mod sql;
pub mod stripe;

pub use payments::{EventClaim, PayStatus, Payment, PaymentStore, Settled};

use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use tollgate_protocol::feed::UsageBatch;
use tollgate_protocol::keys::KeyHash;
use tollgate_protocol::usage_codec;

#[derive(Debug)]
pub enum StoreError {
    NotFound(String),
    Conflict(String),
    /// The user already holds `max` active keys.
    KeyLimit {
        max: u32,
    },
    Unavailable(String),
    Internal(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::NotFound(w) => write!(f, "{w} not found"),
            StoreError::Conflict(w) => write!(f, "conflict: {w}"),
            StoreError::KeyLimit { max } => write!(f, "key limit {max} reached"),
            StoreError::Unavailable(c) => write!(f, "unavailable: {c}"),
            StoreError::Internal(c) => write!(f, "internal: {c}"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type StoreResult<T> = Result<T, StoreError>;

/// What caused a change: recorded in the ledger next to it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Cause {
    /// `api`, `cli`, `webhook`, `statement`, `system`.
    pub kind: String,
    /// A request id, an event id, a statement entry reference, ...
    pub reference: String,
}

impl Cause {
    pub fn new(kind: &str, reference: impl Into<String>) -> Cause {
        Cause {
            kind: kind.to_string(),
            reference: reference.into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct NewKey {
    pub key_id: String,
    pub user_id: String,
    pub name: String,
    pub hash: KeyHash,
    pub start: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub rate_limit_override: Option<u64>,
    pub daily_limit_override: Option<u64>,
    /// A JSON object as text (≤ 4 KiB, validated by the caller).
    pub metadata: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    pub key_id: String,
    pub user_id: String,
    pub name: String,
    /// The effective plan (the user's entitlement).
    pub plan: String,
    pub hash: KeyHash,
    pub start: String,
    pub previous_hash: Option<KeyHash>,
    pub previous_until: Option<i64>,
    pub created_at: i64,
    pub last_used: Option<i64>,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub rate_limit_override: Option<u64>,
    pub daily_limit_override: Option<u64>,
    pub metadata: String,
    pub usage_total: u64,
    pub seq: u64,
}

impl KeyRecord {
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e > now)
    }
}

#[derive(Clone, Debug, Default)]
pub struct KeyPatch {
    pub name: Option<String>,
    /// `Some(None)` clears the expiry.
    pub expires_at: Option<Option<i64>>,
    pub rate_limit_override: Option<Option<u64>>,
    pub daily_limit_override: Option<Option<u64>>,
    pub metadata: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct KeyStats {
    pub total_keys: u64,
    pub active_keys: u64,
    /// Revoked keys (whether or not they had also expired).
    pub revoked_keys: u64,
    pub total_requests: u64,
    /// Active keys per effective plan.
    pub by_plan: BTreeMap<String, u64>,
    pub users: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub user_id: String,
    pub plan: String,
    pub cycle: String,
    pub status: SubStatus,
    pub period_start: i64,
    pub period_end: i64,
    pub provider: String,
    pub provider_ref: Option<String>,
    pub cancel_at_period_end: bool,
    /// Set while `past_due`: access is kept until then.
    pub grace_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubStatus {
    Incomplete,
    Active,
    PastDue,
    Canceled,
    Expired,
}

impl SubStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            SubStatus::Incomplete => "incomplete",
            SubStatus::Active => "active",
            SubStatus::PastDue => "past_due",
            SubStatus::Canceled => "canceled",
            SubStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<SubStatus> {
        Some(match s {
            "incomplete" => SubStatus::Incomplete,
            "active" => SubStatus::Active,
            "past_due" => SubStatus::PastDue,
            "canceled" => SubStatus::Canceled,
            "expired" => SubStatus::Expired,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub id: i64,
    pub at: i64,
    pub user_id: String,
    pub kind: String,
    pub subject: String,
    pub detail: serde_json::Value,
    pub cause: Cause,
}

/// A user's effective plan before and after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanChange {
    pub user_id: String,
    pub from: String,
    pub to: String,
    /// Keys whose feed sequence was bumped.
    pub keys_touched: u64,
}

/// Decides a user's effective plan from their subscriptions at the current time.
pub type Entitle<'a> = &'a (dyn Fn(&[Subscription]) -> String + Send + Sync);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdemState {
    /// First time: the caller proceeds and then calls `idempotency_complete`.
    Claimed,
    /// Seen before with the same request: replay this status and body.
    Replay { status: u16, body: String },
    /// Seen before with a different request body.
    Mismatch,
    /// A request with this key is being processed right now.
    InFlight,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DayCount {
    pub day: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageSummary {
    pub today: u64,
    pub total: u64,
    pub last_used: Option<i64>,
    /// Most recent day first.
    pub history: Vec<DayCount>,
}

#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts a key on the user's effective plan, unless the user already holds the maximum
    /// number of active keys for that plan (`max_keys(plan)`), checked in the same transaction.
    async fn create_key(
        &self,
        key: NewKey,
        max_keys: &BTreeMap<String, u32>,
        cause: &Cause,
    ) -> StoreResult<KeyRecord>;
    async fn get_key(&self, key_id: &str) -> StoreResult<KeyRecord>;
    async fn keys_of_user(&self, user_id: &str) -> StoreResult<Vec<KeyRecord>>;
    async fn list_keys(
        &self,
        plan: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<KeyRecord>>;
    /// Revokes; revoking a revoked key returns it unchanged.
    async fn revoke_key(&self, key_id: &str, now: i64, cause: &Cause) -> StoreResult<KeyRecord>;
    /// New secret hash for the same key id; the old hash stays valid until `grace_until`.
    async fn rotate_key(
        &self,
        key_id: &str,
        hash: KeyHash,
        start: &str,
        grace_until: Option<i64>,
        cause: &Cause,
    ) -> StoreResult<KeyRecord>;
    async fn update_key(
        &self,
        key_id: &str,
        patch: KeyPatch,
        cause: &Cause,
    ) -> StoreResult<KeyRecord>;
    /// Keys changed after `since`, oldest change first, and the current head sequence.
    async fn feed_page(&self, since: u64, limit: u32) -> StoreResult<(Vec<KeyRecord>, u64)>;
    async fn feed_head(&self) -> StoreResult<u64>;
    async fn key_stats(&self, now: i64) -> StoreResult<KeyStats>;
}

/// Usage batches from gateways.
///
/// Applying a batch means updating one row per key in two tables. A busy gateway's batch names
/// every active key each second, so the store coalesces: a batch is stored as one row on
/// arrival (`usage_pending`, its payload the batch in its one encoding,
/// [`tollgate_protocol::usage_codec`]), and pending rows are summed per key and applied together
/// every few seconds (or before anything reads usage).
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Accepts a batch once per (gateway_id, batch_id), durably; returns true when it was a
    /// duplicate. `payload` is the encoded batch ([`usage_codec::encode`], or the body a gateway
    /// sent), `entries` and `units` their number and the sum of their counts. Accepted batches
    /// are applied by [`UsageStore::settle_usage`], which every read of usage (here and in key
    /// records) runs first.
    async fn ingest_payload(
        &self,
        gateway_id: &str,
        batch_id: u64,
        payload: &[u8],
        entries: usize,
        units: u64,
        now: i64,
    ) -> StoreResult<bool>;
    /// [`UsageStore::ingest_payload`] for an owned batch.
    async fn ingest_usage(&self, batch: &UsageBatch, now: i64) -> StoreResult<bool> {
        let payload =
            usage_codec::encode(batch).map_err(|e| StoreError::Conflict(format!("usage {e}")))?;
        let units = batch
            .entries
            .iter()
            .map(|e| e.count)
            .fold(0u64, u64::saturating_add);
        self.ingest_payload(
            &batch.gateway_id,
            batch.batch_id,
            &payload,
            batch.entries.len(),
            units,
            now,
        )
        .await
    }
    /// Applies every accepted batch not yet applied, summed per key, in one transaction;
    /// returns how many batches that was.
    async fn settle_usage(&self) -> StoreResult<usize>;
    async fn usage_of(
        &self,
        key_id: &str,
        today: &str,
        history_days: u32,
    ) -> StoreResult<UsageSummary>;
    /// Units used on `day` by each of the given keys (absent keys used none).
    async fn usage_on_day(
        &self,
        key_ids: &[String],
        day: &str,
    ) -> StoreResult<BTreeMap<String, u64>>;
}

#[async_trait]
pub trait BillingStore: Send + Sync {
    /// The user's effective plan (`free` for unknown users).
    async fn user_plan(&self, user_id: &str) -> StoreResult<String>;
    /// Inserts or updates a subscription, recomputes the user's plan with `entitle`, moves the
    /// user's keys to it and records both in the ledger; all in one transaction.
    async fn write_subscription(
        &self,
        sub: &Subscription,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Option<PlanChange>>;
    /// Recomputes the user's plan without changing a subscription (used by the expiry sweep).
    async fn recompute_plan(
        &self,
        user_id: &str,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Option<PlanChange>>;
    async fn get_subscription(&self, id: &str) -> StoreResult<Subscription>;
    async fn subscriptions_of(&self, user_id: &str) -> StoreResult<Vec<Subscription>>;
    /// Users whose paid-up time or grace has run out (`period_end` or `grace_until` ≤ now) while
    /// a subscription still counts as active or past due.
    async fn due_subscriptions(&self, now: i64) -> StoreResult<Vec<Subscription>>;
    async fn ledger(&self, user_id: Option<&str>, limit: u32) -> StoreResult<Vec<LedgerEntry>>;
    /// Claims `key` in `scope` for a request identified by `request_hash` (see
    /// the idempotency layer). A claim left unfinished for over a minute belongs to a process
    /// that died and is taken over.
    async fn idempotency_claim(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        now: i64,
    ) -> StoreResult<IdemState>;
    /// Stores the answer of a claimed key; the first answer stays (a later one is ignored).
    async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()>;
    /// Forgets a claimed key whose request did not succeed, so a retry runs.
    async fn idempotency_release(&self, scope: &str, key: &str) -> StoreResult<()>;
}

#[async_trait]
pub trait Store:
    KeyStore + UsageStore + BillingStore + PaymentStore + sepa::SepaStore + stripe::StripeStore
{
    /// A random id fixed when the database was created (the feed's `db_id`).
    fn db_id(&self) -> &str;
    async fn ping(&self) -> StoreResult<()>;
    async fn close(&self);
    /// `sqlite` or `postgres`.
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
pub mod conformance;
