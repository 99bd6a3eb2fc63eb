//! The conformance suite every [`QuotaStore`] passes, written once as functions generic over the
//! store. An implementation's test module calls `conformance::suite!(make)` with a constructor
//! `fn(Arc<ManualClock>) -> S`, which expands to one `#[tokio::test]` per function below.

use super::{Clock, Decision, Exceeded, ManualClock, QuotaStore, WINDOW_MS};
use crate::keys::KeyId;
use std::sync::Arc;
use tollgate_protocol::plans::Limits;

pub const DAY_MS: i64 = 86_400_000;
/// Noon UTC on some day: far from midnight, so minute tests never cross a day.
pub const NOON: i64 = 20_417 * DAY_MS + DAY_MS / 2;
const FREE: Limits = Limits {
    per_minute: 10,
    per_day: 50,
};

async fn admitted<S: QuotaStore>(s: &S, key: KeyId, limits: Limits, cost: u64) -> bool {
    matches!(
        s.reserve(key, limits, cost).await,
        Ok(Decision::Admitted { .. })
    )
}

async fn rejection<S: QuotaStore>(
    s: &S,
    key: KeyId,
    limits: Limits,
    cost: u64,
) -> Option<(Exceeded, u64)> {
    match s.reserve(key, limits, cost).await {
        Ok(Decision::Rejected {
            exceeded,
            retry_after_secs,
            ..
        }) => Some((exceeded, retry_after_secs)),
        _ => None,
    }
}

pub async fn minute_limit_then_reject<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    clock.set(NOON);
    for i in 0..10 {
        assert!(
            admitted(&s, KeyId(1), FREE, 1).await,
            "request {i} within the limit"
        );
        clock.advance(100);
    }
    assert_eq!(
        rejection(&s, KeyId(1), FREE, 1).await.map(|r| r.0),
        Some(Exceeded::Minute)
    );
    // Another key is not affected.
    assert!(admitted(&s, KeyId(2), FREE, 1).await);
}

pub async fn window_edges_are_exact<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    let limits = Limits {
        per_minute: 2,
        per_day: 100,
    };
    clock.set(NOON);
    assert!(admitted(&s, KeyId(1), limits, 1).await); // t0
    clock.advance(10_000);
    assert!(admitted(&s, KeyId(1), limits, 1).await); // t0 + 10 s
    clock.set(NOON + WINDOW_MS - 1);
    assert_eq!(
        rejection(&s, KeyId(1), limits, 1).await,
        Some((Exceeded::Minute, 1)),
        "1 ms before the edge"
    );
    clock.set(NOON + WINDOW_MS);
    assert!(
        admitted(&s, KeyId(1), limits, 1).await,
        "the first unit left the window at t0 + 60 s"
    );
    assert_eq!(
        rejection(&s, KeyId(1), limits, 1).await.map(|r| r.0),
        Some(Exceeded::Minute)
    );
}

pub async fn retry_after_rounds_up_to_when_it_would_succeed<S: QuotaStore>(
    s: S,
    clock: Arc<ManualClock>,
) {
    let limits = Limits {
        per_minute: 3,
        per_day: 100,
    };
    clock.set(NOON + 500);
    for _ in 0..3 {
        assert!(admitted(&s, KeyId(5), limits, 1).await);
        clock.advance(1_000);
    }
    // Now NOON + 3.5 s; the first unit frees at NOON + 60.5 s: 57 s away exactly.
    assert_eq!(
        rejection(&s, KeyId(5), limits, 1).await,
        Some((Exceeded::Minute, 57))
    );
    clock.advance(200);
    // 56.8 s away → 57 whole seconds.
    let (_, secs) = rejection(&s, KeyId(5), limits, 1)
        .await
        .unwrap_or((Exceeded::Day, 0));
    assert_eq!(secs, 57);
    clock.advance(i64::try_from(secs).unwrap_or(0) * 1000);
    assert!(
        admitted(&s, KeyId(5), limits, 1).await,
        "admitted after waiting Retry-After"
    );
    // Cost 2 needs two units freed: the second one frees 1 s after the first.
    let limits2 = Limits {
        per_minute: 3,
        per_day: 100,
    };
    assert_eq!(
        rejection(&s, KeyId(5), limits2, 2).await.map(|r| r.0),
        Some(Exceeded::Minute)
    );
}

pub async fn daily_limit_resets_at_utc_midnight<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    let limits = Limits {
        per_minute: 100,
        per_day: 5,
    };
    let midnight = 20_418 * DAY_MS;
    clock.set(midnight - 3 * WINDOW_MS);
    for _ in 0..5 {
        assert!(admitted(&s, KeyId(1), limits, 1).await);
    }
    assert_eq!(
        rejection(&s, KeyId(1), limits, 1).await,
        Some((Exceeded::Day, 180))
    );
    clock.set(midnight - 1);
    assert_eq!(
        rejection(&s, KeyId(1), limits, 1).await,
        Some((Exceeded::Day, 1))
    );
    clock.set(midnight);
    assert!(
        admitted(&s, KeyId(1), limits, 1).await,
        "a new UTC day starts at 00:00:00.000"
    );
}

pub async fn both_exceeded_waits_for_the_later<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    let limits = Limits {
        per_minute: 2,
        per_day: 2,
    };
    clock.set(NOON);
    assert!(admitted(&s, KeyId(1), limits, 1).await);
    assert!(admitted(&s, KeyId(1), limits, 1).await);
    let (code, secs) = rejection(&s, KeyId(1), limits, 1)
        .await
        .unwrap_or((Exceeded::Day, 0));
    assert_eq!(code, Exceeded::Minute, "the minute check comes first");
    assert_eq!(secs, 12 * 3600, "but nothing succeeds before midnight");
}

pub async fn cost_counts_units<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    clock.set(NOON);
    assert!(admitted(&s, KeyId(1), FREE, 4).await);
    assert!(admitted(&s, KeyId(1), FREE, 4).await);
    assert_eq!(
        rejection(&s, KeyId(1), FREE, 4).await.map(|r| r.0),
        Some(Exceeded::Minute)
    );
    assert!(admitted(&s, KeyId(1), FREE, 2).await, "2 units still fit");
    assert!(rejection(&s, KeyId(1), FREE, 1).await.is_some());
    // A cost above the limit is rejected, with a finite Retry-After.
    let r = rejection(&s, KeyId(9), FREE, 11).await;
    assert!(matches!(r, Some((Exceeded::Minute, secs)) if secs >= 1));
}

pub async fn rejection_consumes_nothing<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    let limits = Limits {
        per_minute: 10,
        per_day: 12,
    };
    clock.set(NOON);
    for _ in 0..10 {
        assert!(admitted(&s, KeyId(1), limits, 1).await);
    }
    for _ in 0..50 {
        assert!(rejection(&s, KeyId(1), limits, 1).await.is_some());
    }
    clock.advance(WINDOW_MS);
    // The day saw 10, not 60: two more fit.
    assert!(admitted(&s, KeyId(1), limits, 1).await);
    assert!(admitted(&s, KeyId(1), limits, 1).await);
    assert_eq!(
        rejection(&s, KeyId(1), limits, 1).await.map(|r| r.0),
        Some(Exceeded::Day)
    );
}

pub async fn refund_gives_units_back<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    clock.set(NOON);
    let mut last = None;
    for i in 0..10 {
        match s.reserve(KeyId(1), FREE, 1).await {
            Ok(Decision::Admitted { reservation, usage }) => {
                last = Some(reservation);
                assert_eq!(usage.day_used, i + 1);
            }
            other => panic!("expected admission, got {other:?}"),
        }
        clock.advance(10);
    }
    assert!(rejection(&s, KeyId(1), FREE, 1).await.is_some());
    let r = last.unwrap_or_else(|| panic!("no reservation"));
    assert!(s.refund(r).await.is_ok());
    match s.reserve(KeyId(1), FREE, 1).await {
        Ok(Decision::Admitted { usage, .. }) => assert_eq!(usage.day_used, 10),
        other => panic!("refunded unit not available: {other:?}"),
    }
    assert!(rejection(&s, KeyId(1), FREE, 1).await.is_some());
}

pub async fn limit_change_applies_mid_window<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    let pro = Limits {
        per_minute: 100,
        per_day: 5_000,
    };
    clock.set(NOON);
    for _ in 0..10 {
        assert!(admitted(&s, KeyId(1), FREE, 1).await);
    }
    assert!(rejection(&s, KeyId(1), FREE, 1).await.is_some());
    // Upgrade: the 10 already used count against the new limit.
    for i in 0..90 {
        assert!(
            admitted(&s, KeyId(1), pro, 1).await,
            "request {i} after the upgrade"
        );
    }
    assert!(rejection(&s, KeyId(1), pro, 1).await.is_some());
    // Downgrade mid-window: nothing more until the window has fewer than 10.
    assert!(rejection(&s, KeyId(1), FREE, 1).await.is_some());
    clock.advance(WINDOW_MS);
    // Day count is 100 > free's 50: the daily limit now rejects.
    assert_eq!(
        rejection(&s, KeyId(1), FREE, 1).await.map(|r| r.0),
        Some(Exceeded::Day)
    );
}

pub async fn usage_numbers_follow_decisions<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    clock.set(NOON);
    match s.reserve(KeyId(1), FREE, 3).await {
        Ok(Decision::Admitted { usage, .. }) => {
            assert_eq!(usage.minute_remaining, 7);
            assert_eq!(usage.day_used, 3);
            assert_eq!(usage.day_remaining, 47);
            assert_eq!(usage.minute_reset_secs, 60);
        }
        other => panic!("{other:?}"),
    }
    clock.advance(15_500);
    match s.reserve(KeyId(1), FREE, 8).await {
        Ok(Decision::Rejected { usage, .. }) => {
            assert_eq!(usage.minute_remaining, 7);
            assert_eq!(usage.minute_reset_secs, 45);
        }
        other => panic!("{other:?}"),
    }
}

pub async fn concurrent_reservations_never_exceed<S: QuotaStore>(s: S, clock: Arc<ManualClock>) {
    clock.set(NOON);
    let s = Arc::new(s);
    for round in 0..20u64 {
        let key = KeyId(1_000 + round);
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { admitted(&*s, key, FREE, 1).await })
            })
            .collect();
        let mut n = 0;
        for t in tasks {
            if t.await.unwrap_or(false) {
                n += 1;
            }
        }
        assert_eq!(n, 10, "round {round}");
    }
    let _ = clock.now_ms();
}

/// Expands to one test per conformance function for the store built by `$make`
/// (`suite!(make)` for `fn(Arc<ManualClock>) -> S`; `suite!(async make)` for an async
/// constructor returning `Option<S>`, `None` meaning the backing service is not configured).
macro_rules! suite {
    (async $make:path) => {
        $crate::quota::conformance::suite!(@cases (|clock: std::sync::Arc<crate::quota::ManualClock>| async move { $make(clock).await }));
    };
    ($make:path) => {
        $crate::quota::conformance::suite!(@cases (|clock: std::sync::Arc<crate::quota::ManualClock>| async move { Some($make(clock)) }));
    };
    (@cases $make:expr) => {
        mod conformance_suite {
            use super::*;
            use crate::quota::conformance as c;
            use crate::quota::ManualClock;
            use std::sync::Arc;

            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        let clock = Arc::new(ManualClock::at(0));
                        let Some(store) = ($make)(clock.clone()).await else { return };
                        c::$name(store, clock).await;
                    }
                };
            }

            case!(minute_limit_then_reject);
            case!(window_edges_are_exact);
            case!(retry_after_rounds_up_to_when_it_would_succeed);
            case!(daily_limit_resets_at_utc_midnight);
            case!(both_exceeded_waits_for_the_later);
            case!(cost_counts_units);
            case!(rejection_consumes_nothing);
            case!(refund_gives_units_back);
            case!(limit_change_applies_mid_window);
            case!(usage_numbers_follow_decisions);
            case!(concurrent_reservations_never_exceed);
        }
    };
}
pub(crate) use suite;
