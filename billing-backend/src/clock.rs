//! Time comes from an injected clock so tests can move it (grace periods, expiry, UTC days).

#[cfg(feature = "test-clock")]
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

pub trait Clock: Send + Sync {
    /// Unix seconds, UTC.
    fn now(&self) -> i64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        crate::store::sql::unix_now()
    }
}

/// The system clock plus an offset that tests (and only tests, through a flag) can move.
/// Compiled only with the `test-clock` feature.
#[cfg(feature = "test-clock")]
#[derive(Default)]
pub struct OffsetClock {
    offset: AtomicI64,
}

#[cfg(feature = "test-clock")]
impl OffsetClock {
    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }
}

#[cfg(feature = "test-clock")]
impl Clock for OffsetClock {
    fn now(&self) -> i64 {
        crate::store::sql::unix_now() + self.offset.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;
