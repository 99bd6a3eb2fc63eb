//! In-process quota state: a sliding log per key, in sharded tables.
//!
//! Each key has a log of slots `(first_ms, last_ms, units)`, oldest first, and a day counter.
//! A slot's units count until `last_ms + 60 s`. For limits up to [`EXACT_LIMIT`] per minute a
//! slot only ever holds one millisecond, so the log is exact to the millisecond. Above that,
//! requests falling in the same fixed [`coarse_granularity`] bucket share a slot whose `last_ms`
//! moves forward: every unit is then held at least as long as it should be, so coalescing can
//! only under-admit, never over-admit, and a log never has more than ~1,040 slots.
//!
//! The tables are sharded by key (64 `parking_lot` mutexes): a decision locks one shard for a few
//! hundred nanoseconds and never across an `.await`.
//!
//! The state is only in memory; [`super::persist`] saves it to `data_dir` (periodically and at
//! shutdown, reading one shard at a time through [`LocalQuota::visit_shard`]) and puts it back
//! at start with [`LocalQuota::restore`].

use super::{
    ceil_secs, ms_to_midnight, Clock, Decision, Exceeded, QuotaError, QuotaStore, Reservation,
    Usage, WINDOW_MS,
};
use crate::keys::KeyId;
use hashbrown::HashTable;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use tollgate_protocol::plans::Limits;

/// Per-minute limits up to this are enforced exactly to the millisecond.
pub const EXACT_LIMIT: u64 = 1024;
const SHARDS: usize = 64;
const DAY_MS: i64 = 86_400_000;

/// Slot width for a per-minute limit: 1 ms (exact) up to [`EXACT_LIMIT`], then 1/1024 of a window.
pub fn coarse_granularity(per_minute: u64) -> i64 {
    if per_minute <= EXACT_LIMIT {
        1
    } else {
        WINDOW_MS / 1024
    }
}

/// Units admitted between `first` and `last` (inclusive), counted until `last + 60 s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub first: i64,
    pub last: i64,
    pub units: u64,
}

#[derive(Debug)]
struct KeyState {
    key: KeyId,
    log: VecDeque<Slot>,
    in_window: u64,
    day: i64,
    day_used: u64,
}

impl KeyState {
    fn new(key: KeyId) -> KeyState {
        KeyState {
            key,
            log: VecDeque::new(),
            in_window: 0,
            day: i64::MIN,
            day_used: 0,
        }
    }

    /// Forgets slots that left the window and a day counter from an earlier day.
    fn roll(&mut self, now: i64) {
        while let Some(front) = self.log.front() {
            if front.last + WINDOW_MS <= now {
                self.in_window -= front.units.min(self.in_window);
                self.log.pop_front();
            } else {
                break;
            }
        }
        let day = now.div_euclid(DAY_MS);
        if self.day != day {
            self.day = day;
            self.day_used = 0;
        }
    }

    fn push(&mut self, now: i64, units: u64, granularity: i64) {
        if let Some(last) = self.log.back_mut() {
            if last.first.div_euclid(granularity) == now.div_euclid(granularity) {
                last.last = last.last.max(now);
                last.units += units;
                self.in_window += units;
                return;
            }
        }
        self.log.push_back(Slot {
            first: now,
            last: now,
            units,
        });
        self.in_window += units;
    }

    /// Milliseconds until `cost` more units fit under `limit`, or `None` if they never can.
    fn minute_wait(&self, limit: u64, cost: u64, now: i64) -> Option<i64> {
        if cost > limit {
            return None;
        }
        let need = (self.in_window + cost).saturating_sub(limit);
        if need == 0 {
            return Some(0);
        }
        let mut freed = 0;
        for slot in &self.log {
            freed += slot.units;
            if freed >= need {
                return Some(slot.last + WINDOW_MS - now);
            }
        }
        None
    }

    fn usage(&self, limits: Limits, now: i64) -> Usage {
        Usage {
            minute_remaining: limits.per_minute.saturating_sub(self.in_window),
            minute_reset_secs: self
                .log
                .front()
                .map(|s| ceil_secs(s.last + WINDOW_MS - now))
                .unwrap_or(0),
            day_used: self.day_used,
            day_remaining: limits.per_day.saturating_sub(self.day_used),
        }
    }

    fn idle(&self, now: i64) -> bool {
        self.log.is_empty() && (self.day_used == 0 || self.day != now.div_euclid(DAY_MS))
    }
}

/// The in-process [`QuotaStore`].
pub struct LocalQuota {
    shards: Box<[Mutex<HashTable<KeyState>>]>,
    clock: Arc<dyn Clock>,
}

impl LocalQuota {
    pub fn new(clock: Arc<dyn Clock>) -> LocalQuota {
        let shards = (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect();
        LocalQuota { shards, clock }
    }

    fn shard(&self, key: KeyId) -> &Mutex<HashTable<KeyState>> {
        // SHARDS is a power of two; the top bits of the mixed id pick the shard.
        &self.shards[(key.mix() >> 58) as usize % SHARDS]
    }

    /// The decision itself, synchronous: one shard lock, no allocation once a key has a log.
    pub fn decide(&self, key: KeyId, limits: Limits, cost: u64) -> Decision {
        let now = self.clock.now_ms();
        let mut table = self.shard(key).lock();
        let state = match table.find_mut(key.mix(), |s| s.key == key) {
            Some(s) => s,
            None => table
                .insert_unique(key.mix(), KeyState::new(key), |s| s.key.mix())
                .into_mut(),
        };
        // A clock that somehow stepped back must not reorder the log.
        let now = state.log.back().map_or(now, |s| now.max(s.last));
        state.roll(now);
        let minute_ok = state.in_window + cost <= limits.per_minute;
        let day_ok = state.day_used + cost <= limits.per_day;
        if minute_ok && day_ok {
            state.push(now, cost, coarse_granularity(limits.per_minute));
            state.day_used += cost;
            return Decision::Admitted {
                reservation: Reservation {
                    key,
                    at_ms: now,
                    cost,
                    local: true,
                },
                usage: state.usage(limits, now),
            };
        }
        // Until a request could succeed: the later of the two constraints. A cost above a limit
        // can never succeed; say "a full window" (minute) or "tomorrow" (day) rather than never.
        let minute_wait = if minute_ok {
            0
        } else {
            state
                .minute_wait(limits.per_minute, cost, now)
                .unwrap_or(WINDOW_MS)
        };
        let day_wait = if day_ok { 0 } else { ms_to_midnight(now) };
        Decision::Rejected {
            exceeded: if minute_ok {
                Exceeded::Day
            } else {
                Exceeded::Minute
            },
            retry_after_secs: ceil_secs(minute_wait.max(day_wait)),
            usage: state.usage(limits, now),
        }
    }

    /// Gives the units of `r` back: to its minute slot if still in the window, and to its day.
    pub fn give_back(&self, r: Reservation) {
        let mut table = self.shard(r.key).lock();
        let Some(state) = table.find_mut(r.key.mix(), |s| s.key == r.key) else {
            return;
        };
        if state.day == r.day() {
            state.day_used -= r.cost.min(state.day_used);
        }
        // The slot that holds these units is the one whose span contains the reservation time.
        if let Some(slot) = state
            .log
            .iter_mut()
            .find(|s| s.first <= r.at_ms && r.at_ms <= s.last)
        {
            let back = r.cost.min(slot.units);
            slot.units -= back;
            state.in_window -= back.min(state.in_window);
        }
    }

    /// Drops keys with nothing in their window and nothing counted today.
    pub fn sweep(&self) {
        let now = self.clock.now_ms();
        for shard in self.shards.iter() {
            let mut table = shard.lock();
            table.retain(|s| {
                s.roll(now);
                !s.idle(now)
            });
        }
    }

    /// Keys with live state (for tests and metrics).
    pub fn tracked_keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// The time on this store's clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// How many shards [`LocalQuota::visit_shard`] takes.
    pub(crate) fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Calls `f(key, day, day_used, log, in_window)` for every key of shard `i`, under that
    /// shard's lock (decisions on its keys wait meanwhile, so `f` should only copy). Nothing is
    /// rolled: slots past their window and counts of an earlier day are passed as they are
    /// (`in_window` sums the log, expired slots included).
    pub(crate) fn visit_shard(
        &self,
        i: usize,
        mut f: impl FnMut(KeyId, i64, u64, &VecDeque<Slot>, u64),
    ) {
        let Some(shard) = self.shards.get(i) else {
            return;
        };
        for s in shard.lock().iter() {
            f(s.key, s.day, s.day_used, &s.log, s.in_window);
        }
    }

    /// Adds saved state for `key`: `day_used` units on UTC day `day` and the minute `slots`
    /// (any order). Meant for start-up, before any decision; on a key that already has state the
    /// two are added up (a count of an earlier day than the key's own is dropped), which can
    /// only under-admit.
    pub(crate) fn restore(&self, key: KeyId, day: i64, day_used: u64, slots: &[Slot]) {
        let mut table = self.shard(key).lock();
        let state = match table.find_mut(key.mix(), |s| s.key == key) {
            Some(s) => s,
            None => table
                .insert_unique(key.mix(), KeyState::new(key), |s| s.key.mix())
                .into_mut(),
        };
        if state.day == day {
            state.day_used = state.day_used.saturating_add(day_used);
        } else if state.day < day {
            state.day = day;
            state.day_used = day_used;
        }
        if slots.is_empty() {
            return;
        }
        // Slots leave the window (`roll`) and free units (`minute_wait`) front to back, so the
        // log stays ordered by the end of each slot's hold.
        let mut log: Vec<Slot> = state.log.drain(..).chain(slots.iter().copied()).collect();
        log.sort_by_key(|s| (s.last, s.first));
        state.in_window = log.iter().fold(0u64, |sum, s| sum.saturating_add(s.units));
        state.log = log.into();
    }
}

impl QuotaStore for LocalQuota {
    async fn reserve(&self, key: KeyId, limits: Limits, cost: u64) -> Result<Decision, QuotaError> {
        Ok(self.decide(key, limits, cost))
    }

    async fn refund(&self, reservation: Reservation) -> Result<(), QuotaError> {
        self.give_back(reservation);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::conformance;
    use crate::quota::ManualClock;
    use proptest::prelude::*;

    fn make(clock: Arc<ManualClock>) -> LocalQuota {
        LocalQuota::new(clock)
    }

    conformance::suite!(make);

    /// Reference model: an exact log of admitted (time, units); a window holds what was admitted
    /// in `(now - 60 s, now]`.
    #[derive(Default)]
    struct Model {
        events: Vec<(i64, u64, bool)>,
    }

    impl Model {
        fn in_window(&self, now: i64) -> u64 {
            self.events
                .iter()
                .filter(|e| !e.2 && e.0 > now - WINDOW_MS && e.0 <= now)
                .map(|e| e.1)
                .sum()
        }
        fn in_day(&self, now: i64) -> u64 {
            let day = now.div_euclid(DAY_MS);
            self.events
                .iter()
                .filter(|e| !e.2 && e.0.div_euclid(DAY_MS) == day)
                .map(|e| e.1)
                .sum()
        }
        /// Largest number of units in any 60 s window and any UTC day.
        fn worst(&self) -> (u64, u64) {
            let live: Vec<_> = self.events.iter().filter(|e| !e.2).collect();
            let mut minute = 0;
            let mut day = 0;
            for e in &live {
                let w: u64 = live
                    .iter()
                    .filter(|f| f.0 >= e.0 && f.0 < e.0 + WINDOW_MS)
                    .map(|f| f.1)
                    .sum();
                let d: u64 = live
                    .iter()
                    .filter(|f| f.0.div_euclid(DAY_MS) == e.0.div_euclid(DAY_MS))
                    .map(|f| f.1)
                    .sum();
                minute = minute.max(w);
                day = day.max(d);
            }
            (minute, day)
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Advance(i64),
        Take(u64),
        Refund(usize),
        SetLimits(u64, u64),
    }

    fn ops(max_minute: u64) -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                4 => (0i64..3_000).prop_map(Op::Advance),
                1 => (0i64..70_000).prop_map(Op::Advance),
                8 => (1u64..5).prop_map(Op::Take),
                1 => (0usize..50).prop_map(Op::Refund),
                1 => ((1u64..max_minute), (1u64..400)).prop_map(|(m, d)| Op::SetLimits(m, d)),
            ],
            1..300,
        )
    }

    /// Runs `ops`; returns the model and whether every decision matched the exact model.
    fn run(ops: &[Op], start: i64, first: Limits) -> (Model, bool, Limits) {
        let clock = Arc::new(ManualClock::at(start));
        let q = LocalQuota::new(clock.clone());
        let key = KeyId(7);
        let mut limits = first;
        let mut model = Model::default();
        let mut reservations: Vec<(Reservation, usize)> = Vec::new();
        let mut exact = true;
        for op in ops {
            match op {
                Op::Advance(ms) => clock.advance(*ms),
                Op::SetLimits(m, d) => {
                    limits = Limits {
                        per_minute: *m,
                        per_day: *d,
                    }
                }
                Op::Take(cost) => {
                    let now = clock.now_ms();
                    let fits = model.in_window(now) + cost <= limits.per_minute
                        && model.in_day(now) + cost <= limits.per_day;
                    match q.decide(key, limits, *cost) {
                        Decision::Admitted { reservation, .. } => {
                            reservations.push((reservation, model.events.len()));
                            model.events.push((now, *cost, false));
                            if !fits {
                                exact = false;
                            }
                        }
                        Decision::Rejected {
                            retry_after_secs, ..
                        } => {
                            if fits {
                                exact = false;
                            }
                            assert!(retry_after_secs >= 1, "a rejection always says to wait");
                        }
                    }
                }
                Op::Refund(i) => {
                    if !reservations.is_empty() {
                        let (r, idx) = reservations.remove(i % reservations.len());
                        q.give_back(r);
                        model.events[idx].2 = true;
                    }
                }
            }
        }
        (model, exact, limits)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Small limits: every decision is exactly the reference sliding log's decision.
        #[test]
        fn small_limits_are_exact(ops in ops(EXACT_LIMIT), start in 0i64..(3 * DAY_MS)) {
            let (model, exact, _) = run(&ops, start, Limits { per_minute: 10, per_day: 50 });
            prop_assert!(exact, "a decision differed from the exact sliding log");
            let _ = model;
        }

        /// Any limits (including coalesced large ones and changes mid-window): never more admitted
        /// in any window or day than the strictest limit in force over the run allows.
        #[test]
        fn never_over_admits(ops in ops(5_000), start in 0i64..(3 * DAY_MS)) {
            let first = Limits { per_minute: 3_000, per_day: 200 };
            let (model, _, _) = run(&ops, start, first);
            let max_minute = ops.iter().filter_map(|o| match o { Op::SetLimits(m, _) => Some(*m), _ => None }).fold(first.per_minute, u64::max);
            let max_day = ops.iter().filter_map(|o| match o { Op::SetLimits(_, d) => Some(*d), _ => None }).fold(first.per_day, u64::max);
            let (minute, day) = model.worst();
            prop_assert!(minute <= max_minute, "{minute} units in one window, limit {max_minute}");
            prop_assert!(day <= max_day, "{day} units in one day, limit {max_day}");
        }

        /// Constant limits: the bound is the limit itself, for coalesced large limits too.
        #[test]
        fn constant_limits_hold(costs in prop::collection::vec((0i64..200, 1u64..40), 1..400), per_minute in 1u64..4_000) {
            let clock = Arc::new(ManualClock::at(DAY_MS * 100 + 12_345));
            let q = LocalQuota::new(clock.clone());
            let limits = Limits { per_minute, per_day: u64::MAX };
            let mut model = Model::default();
            for (dt, cost) in costs {
                clock.advance(dt);
                if let Decision::Admitted { .. } = q.decide(KeyId(1), limits, cost) {
                    model.events.push((clock.now_ms(), cost, false));
                }
            }
            prop_assert!(model.worst().0 <= per_minute);
        }
    }

    #[test]
    fn coalesced_logs_stay_bounded() {
        let clock = Arc::new(ManualClock::at(DAY_MS * 10));
        let q = LocalQuota::new(clock.clone());
        let limits = Limits {
            per_minute: 1_000_000,
            per_day: u64::MAX,
        };
        for _ in 0..200_000 {
            clock.advance(1);
            assert!(matches!(
                q.decide(KeyId(3), limits, 1),
                Decision::Admitted { .. }
            ));
        }
        let table = q.shard(KeyId(3)).lock();
        let len = table
            .find(KeyId(3).mix(), |s| s.key == KeyId(3))
            .map(|s| s.log.len())
            .unwrap_or(0);
        assert!(len <= 1_100, "log has {len} slots");
    }

    #[test]
    fn sweep_keeps_todays_counts() {
        let clock = Arc::new(ManualClock::at(DAY_MS * 10 + 1_000));
        let q = LocalQuota::new(clock.clone());
        let limits = Limits {
            per_minute: 10,
            per_day: 3,
        };
        for _ in 0..3 {
            assert!(matches!(
                q.decide(KeyId(9), limits, 1),
                Decision::Admitted { .. }
            ));
        }
        clock.advance(2 * WINDOW_MS);
        q.sweep();
        assert_eq!(q.tracked_keys(), 1, "today's count must survive a sweep");
        assert!(matches!(
            q.decide(KeyId(9), limits, 1),
            Decision::Rejected {
                exceeded: Exceeded::Day,
                ..
            }
        ));
        clock.set(DAY_MS * 11 + 5);
        q.sweep();
        assert_eq!(q.tracked_keys(), 0);
    }

    #[test]
    fn concurrent_threads_admit_exactly_the_limit() {
        for round in 0..20 {
            let clock = Arc::new(ManualClock::at(DAY_MS * 5 + round));
            let q = Arc::new(LocalQuota::new(clock));
            let limits = Limits {
                per_minute: 10,
                per_day: 50,
            };
            let admitted = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let q = q.clone();
                    let admitted = admitted.clone();
                    std::thread::spawn(move || {
                        for _ in 0..25 {
                            if let Decision::Admitted { .. } = q.decide(KeyId(42), limits, 1) {
                                admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("thread");
            }
            assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 10);
        }
    }
}
