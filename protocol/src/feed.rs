//! Messages between backend and gateways.
//!
//! **Key feed.** Every key row carries the sequence number of its last change (a change of the
//! key itself or of its user's plan bumps it). A gateway asks `GET /internal/feed?since=S&limit=N`
//! and receives the keys whose sequence is above `S`, oldest change first, with the backend's
//! `head`; it repeats with `since = page.seq` until `seq == head`, then keeps asking with
//! `wait=<secs>` so the backend holds the request open until something changes (long-poll).
//! `since = 0` is a full snapshot. `db_id` identifies the database: when it differs from the one a
//! gateway saw before, the gateway starts again from 0 and replaces its replica.
//!
//! **Usage ingest.** A gateway counts admitted units per key and UTC day and sends batches
//! (`POST /internal/usage`). A batch is identified by `(gateway_id, batch_id)`; the backend
//! applies each batch at most once and acknowledges duplicates without applying them again.
//! The body is the batch in [`crate::usage_codec`]'s encoding, its version named in the media
//! type (JSON is accepted too).

use crate::keys::KeyHash;
use crate::plans::Limits;
use serde::{Deserialize, Serialize};

pub const FEED_PATH: &str = "/internal/feed";
pub const USAGE_PATH: &str = "/internal/usage";
/// Longest long-poll the backend accepts, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;
pub const DEFAULT_PAGE: usize = 5_000;
pub const MAX_PAGE: usize = 50_000;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Active,
    Revoked,
}

/// A hash that keeps working until `until` (unix seconds) after a rotation with overlap.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct GraceHash {
    pub hash: KeyHash,
    pub until: i64,
}

/// One key as a gateway needs it: everything to decide a request, nothing secret.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedKey {
    pub key_id: String,
    pub user_id: String,
    /// Effective plan: the user's entitlement, not the plan written in the key text.
    pub plan: String,
    pub hash: KeyHash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<GraceHash>,
    pub state: KeyState,
    /// Unix seconds after which the key is refused with `key_expired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Effective limits (per-key overrides already applied).
    pub limits: Limits,
    pub seq: u64,
}

/// Response header on the backend's answers to requests that change state (POST, PUT, PATCH,
/// DELETE): the feed head after the change, so a gateway can hold the answer until its replica
/// has applied it (read-your-writes through the gateway).
pub const FEED_SEQ_HEADER: &str = "x-tollgate-feed-seq";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedPage {
    pub db_id: String,
    /// Highest sequence included in this page (equals `since` when the page is empty).
    pub seq: u64,
    /// Highest sequence the backend knows about.
    pub head: u64,
    pub keys: Vec<FeedKey>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedQuery {
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub limit: Option<usize>,
    /// Seconds to wait for a change when nothing is newer than `since`.
    #[serde(default)]
    pub wait: Option<u64>,
    /// The `db_id` (feed epoch) the caller holds: when it is not the current one the page
    /// answers at once, without waiting, so the caller starts over (plan limits changed).
    #[serde(default)]
    pub db_id: Option<String>,
}

/// A key's admitted units on one UTC day. `K` and `D` hold the key id and the day: as text,
/// `String` when owned or `&str` read in place from an encoded batch ([`crate::usage_codec`]);
/// a gateway counts in the same type with its compact key id and day number.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageEntry<K = String, D = K> {
    pub key_id: K,
    /// UTC day, `YYYY-MM-DD`.
    pub day: D,
    pub count: u64,
    /// Unix seconds of the last admitted request in this entry.
    pub last_used: i64,
}

/// The one usage batch: cut by a gateway, kept in its journal, sent to the backend and stored
/// there, always in the form of [`crate::usage_codec`] (JSON is an input representation of the
/// same type on the HTTP API).
///
/// `S` holds the text and `E` the entries: owned (`UsageBatch`), or a view of an encoded batch
/// (`UsageBatch<&str, usage_codec::Entries>`, from [`crate::usage_codec::decode`]) that reads
/// the entries in place instead of copying every key id and day.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageBatch<S = String, E = Vec<UsageEntry<S>>> {
    pub gateway_id: S,
    pub batch_id: u64,
    pub entries: E,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct UsageAck {
    pub gateway_id: String,
    pub batch_id: u64,
    /// True when this batch had been applied before and was ignored this time.
    pub duplicate: bool,
}

/// Largest batch the backend accepts (entries).
pub const MAX_BATCH_ENTRIES: usize = 100_000;
