//! What `/ready` and the gauges report: is the backend reachable, how far behind is the replica,
//! how much usage waits in the journal, does Redis (when configured) answer.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::Instant;

pub struct Health {
    started: Instant,
    feed_ok: AtomicBool,
    usage_ok: AtomicBool,
    /// Milliseconds since start of the last moment the replica was known to match the backend
    /// (-1: never).
    synced_at_ms: AtomicI64,
    /// Unacknowledged usage batches (in the journal).
    pub journal_depth: AtomicU64,
    /// Redis as last probed: [`REDIS_NOT_CONFIGURED`], [`REDIS_UP`] or [`REDIS_DOWN`].
    redis: AtomicU8,
}

const REDIS_NOT_CONFIGURED: u8 = 0;
const REDIS_UP: u8 = 1;
const REDIS_DOWN: u8 = 2;

/// Redis as `/ready` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisHealth {
    /// No `redis_url`: quota state is in-process.
    NotConfigured,
    Reachable,
    /// The last probe or quota call failed: the `redis_failure` behaviour applies.
    Unreachable,
}

impl RedisHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            RedisHealth::NotConfigured => "not_configured",
            RedisHealth::Reachable => "reachable",
            RedisHealth::Unreachable => "unreachable",
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health {
            started: Instant::now(),
            feed_ok: AtomicBool::new(false),
            usage_ok: AtomicBool::new(true),
            synced_at_ms: AtomicI64::new(-1),
            journal_depth: AtomicU64::new(0),
            redis: AtomicU8::new(REDIS_NOT_CONFIGURED),
        }
    }

    /// Records a Redis probe (the gateway pings Redis every second when `redis_url` is set,
    /// so `/ready` tells the truth even while no request exercises the quota store).
    pub fn redis_probed(&self, ok: bool) {
        self.redis
            .store(if ok { REDIS_UP } else { REDIS_DOWN }, Ordering::Relaxed);
    }

    /// Redis as probed, or unreachable when the quota store has just seen it fail
    /// (`quota_down`, from [`crate::quota::Quota::degraded`]).
    pub fn redis(&self, quota_down: bool) -> RedisHealth {
        match self.redis.load(Ordering::Relaxed) {
            REDIS_NOT_CONFIGURED if !quota_down => RedisHealth::NotConfigured,
            REDIS_UP if !quota_down => RedisHealth::Reachable,
            _ => RedisHealth::Unreachable,
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    pub fn feed_reachable(&self, ok: bool) {
        self.feed_ok.store(ok, Ordering::Relaxed);
    }

    pub fn usage_reachable(&self, ok: bool) {
        self.usage_ok.store(ok, Ordering::Relaxed);
    }

    /// The replica has just been confirmed up to date (a page with `seq == head`).
    pub fn synced(&self) {
        self.synced_at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn backend_reachable(&self) -> bool {
        self.feed_ok.load(Ordering::Relaxed) && self.usage_ok.load(Ordering::Relaxed)
    }

    /// Seconds the replica may be behind: 0 while the feed is healthy, else time since last sync.
    pub fn feed_lag_secs(&self) -> f64 {
        let at = self.synced_at_ms.load(Ordering::Relaxed);
        if self.feed_ok.load(Ordering::Relaxed) && at >= 0 {
            return 0.0;
        }
        let since = if at >= 0 {
            self.now_ms() - at
        } else {
            self.now_ms()
        };
        // Milliseconds to seconds for a gauge; precision loss is irrelevant here.
        let whole = since / 1000;
        let frac = since % 1000;
        format!("{whole}.{frac:03}").parse().unwrap_or(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_health_follows_the_probe_and_the_quota_store() {
        let h = Health::new();
        assert_eq!(h.redis(false), RedisHealth::NotConfigured);
        h.redis_probed(true);
        assert_eq!(h.redis(false), RedisHealth::Reachable);
        assert_eq!(h.redis(true), RedisHealth::Unreachable);
        h.redis_probed(false);
        assert_eq!(h.redis(false), RedisHealth::Unreachable);
        assert_eq!(RedisHealth::Unreachable.as_str(), "unreachable");
    }
}
