//! Quota state: how many units a key has used in the trailing minute and in the current UTC day.
//!
//! One trait, [`QuotaStore`], two implementations chosen once at start: [`local::LocalQuota`]
//! (in-process, this instance's admissions only) and, in a later issue, a Redis store shared by
//! a fleet. Both must pass the same [`conformance`] suite, written once as functions generic over
//! the trait and a settable [`Clock`].
//! The in-process state is saved to `data_dir` and loaded at start by [`persist`].
//!
//! The contract every implementation keeps:
//! - never more than `per_minute` units admitted in any trailing 60-second window (windows are
//!   half-open: a unit admitted at `t` counts for every instant in `[t, t + 60 s)`);
//! - never more than `per_day` units admitted in one UTC day (the count resets at 00:00 UTC);
//! - a rejected request consumes nothing; a refunded reservation is as if it never happened;
//! - limits are passed on every call, so a plan change applies at once, mid-window;
//! - `Retry-After` is the whole number of seconds, rounded up, after which the same request
//!   could be admitted (the later of the minute and the day constraints).

pub mod local;
pub mod persist;
pub mod redis;

#[cfg(test)]
pub(crate) mod conformance;

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;
use tollgate_protocol::plans::Limits;

use crate::keys::KeyId;

/// Length of the rate-limit window.
pub const WINDOW_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// Where quota code reads the time: milliseconds since the unix epoch, UTC.
///
/// Injected so tests move time instead of sleeping (window edges, UTC midnight).
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// Wall-clock time that never goes backwards: the UTC time read once at start plus a monotonic
/// `Instant` since then. A stepped system clock (NTP) cannot make a window admit twice.
pub struct SystemClock {
    base_ms: i64,
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
            .unwrap_or(0);
        SystemClock {
            base_ms,
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX / 4);
        self.base_ms.saturating_add(elapsed)
    }
}

/// A clock tests set and advance by hand.
#[derive(Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn at(ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(ms))
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// What a store needs to give units back (on 502/504): which key, when, how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub key: KeyId,
    pub at_ms: i64,
    pub cost: u64,
    /// Counted by the in-process store (always in local mode; in Redis mode only while Redis
    /// was unreachable and `redis_failure = "local"`), so it is refunded there.
    pub local: bool,
}

impl Reservation {
    /// The UTC day (days since the epoch) the units were counted in.
    pub fn day(&self) -> i64 {
        self.at_ms.div_euclid(DAY_MS)
    }
}

/// The numbers behind the `RateLimit` headers and the validate endpoint, as of this decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Units still available in the trailing minute.
    pub minute_remaining: u64,
    /// Seconds until units in the minute window start to free up (0 when nothing is counted).
    pub minute_reset_secs: u64,
    /// Units counted today (UTC).
    pub day_used: u64,
    pub day_remaining: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    /// 429 `rate_limited`
    Minute,
    /// 429 `daily_limit_exceeded`
    Day,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Admitted {
        reservation: Reservation,
        usage: Usage,
    },
    Rejected {
        exceeded: Exceeded,
        retry_after_secs: u64,
        usage: Usage,
    },
}

/// The store could not decide (only the shared store can fail: Redis down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaError(pub String);

impl std::fmt::Display for QuotaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "quota store unavailable: {}", self.0)
    }
}

/// One atomic check-and-count per request, and its undo.
pub trait QuotaStore: Send + Sync + 'static {
    /// Admits `cost` units for `key` under `limits` (counting them) or rejects (counting nothing).
    fn reserve(
        &self,
        key: KeyId,
        limits: Limits,
        cost: u64,
    ) -> impl Future<Output = Result<Decision, QuotaError>> + Send;

    /// Gives back a reservation whose request never reached an upstream (502/504).
    fn refund(
        &self,
        reservation: Reservation,
    ) -> impl Future<Output = Result<(), QuotaError>> + Send;
}

/// The store chosen at start (`match` on config once; no dynamic dispatch per request).
pub enum Quota {
    Local(local::LocalQuota),
    Redis(Box<Fleet>),
}

impl Quota {
    pub async fn reserve(
        &self,
        key: KeyId,
        limits: Limits,
        cost: u64,
    ) -> Result<Decision, QuotaError> {
        match self {
            Quota::Local(q) => q.reserve(key, limits, cost).await,
            Quota::Redis(f) => f.reserve(key, limits, cost).await,
        }
    }

    pub async fn refund(&self, reservation: Reservation) -> Result<(), QuotaError> {
        match self {
            Quota::Local(q) => q.refund(reservation).await,
            Quota::Redis(f) => f.refund(reservation).await,
        }
    }

    /// Drops state that can no longer influence a decision (run every few seconds).
    pub fn sweep(&self) {
        match self {
            Quota::Local(q) => q.sweep(),
            Quota::Redis(f) => f.local.sweep(),
        }
    }

    /// The in-process store: all the state in local mode; in Redis mode, the per-instance counts
    /// made while Redis was unreachable. What [`persist`] saves.
    pub fn in_process(&self) -> &local::LocalQuota {
        match self {
            Quota::Local(q) => q,
            Quota::Redis(f) => &f.local,
        }
    }

    /// True while decisions are made without Redis (it is unreachable).
    pub fn degraded(&self) -> bool {
        match self {
            Quota::Local(_) => false,
            Quota::Redis(f) => f.is_down(),
        }
    }
}

/// What a gateway does while Redis is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRedisFailure {
    /// Decide with this instance's in-process state (limits become per instance).
    Local,
    /// Refuse with 503 `quota_unavailable`.
    Closed,
}

/// Redis quota state for a fleet, with the configured behaviour while Redis is unreachable.
///
/// After a failed call Redis is skipped for [`RETRY_AFTER_FAILURE_MS`] (so requests do not each
/// wait for a timeout), then tried again: the gateway recovers by itself when Redis returns.
pub struct Fleet {
    pub redis: redis::RedisQuota,
    pub local: local::LocalQuota,
    pub on_failure: OnRedisFailure,
    clock: std::sync::Arc<dyn Clock>,
    /// Until when (clock ms) Redis is skipped; 0 when healthy.
    down_until: AtomicI64,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// How long Redis is skipped after a failure before it is tried again.
pub const RETRY_AFTER_FAILURE_MS: i64 = 1_000;

impl Fleet {
    pub fn new(
        redis: redis::RedisQuota,
        on_failure: OnRedisFailure,
        clock: std::sync::Arc<dyn Clock>,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Fleet {
        Fleet {
            redis,
            local: local::LocalQuota::new(clock.clone()),
            on_failure,
            clock,
            down_until: AtomicI64::new(0),
            metrics,
        }
    }

    pub fn is_down(&self) -> bool {
        self.down_until.load(Ordering::Relaxed) > self.clock.now_ms()
    }

    fn failed(&self, e: &QuotaError) {
        self.metrics.redis_errors.add(1);
        let now = self.clock.now_ms();
        let was = self
            .down_until
            .swap(now + RETRY_AFTER_FAILURE_MS, Ordering::Relaxed);
        if was == 0 {
            let mode = match self.on_failure {
                OnRedisFailure::Local => "deciding with per-instance limits",
                OnRedisFailure::Closed => "refusing with 503 quota_unavailable",
            };
            tracing::error!(error = %e, "Redis quota store unreachable: {mode} until it returns");
        }
    }

    async fn reserve(&self, key: KeyId, limits: Limits, cost: u64) -> Result<Decision, QuotaError> {
        if !self.is_down() {
            match self.redis.decide(key, limits, cost).await {
                Ok(d) => {
                    if self.down_until.swap(0, Ordering::Relaxed) != 0 {
                        tracing::info!("Redis quota store is back: fleet-wide limits again");
                    }
                    return Ok(d);
                }
                Err(e) => self.failed(&e),
            }
        }
        match self.on_failure {
            OnRedisFailure::Local => Ok(self.local.decide(key, limits, cost)),
            OnRedisFailure::Closed => Err(QuotaError("Redis quota store unreachable".to_string())),
        }
    }

    async fn refund(&self, r: Reservation) -> Result<(), QuotaError> {
        if r.local {
            self.local.give_back(r);
            return Ok(());
        }
        let result = self.redis.give_back(r).await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }
}

/// Whole seconds, rounded up, of a non-negative duration in milliseconds.
pub fn ceil_secs(ms: i64) -> u64 {
    u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000)
}

/// Milliseconds from `now_ms` until the next 00:00 UTC.
pub fn ms_to_midnight(now_ms: i64) -> i64 {
    (now_ms.div_euclid(DAY_MS) + 1) * DAY_MS - now_ms
}
