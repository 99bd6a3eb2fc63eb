//! What `/ready` and the gauges report: is the backend reachable, how far behind is the replica,
//! how much usage waits in the journal.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
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
