//! The in-process quota state on disk: `data_dir/quota.state`, so a restart does not hand every
//! key a fresh minute and day.
//!
//! When: loaded once at start, before the listener serves ([`load`]); saved every `usage_flush`
//! interval (default 1 s) by a background task and once more at SIGTERM/SIGINT after the
//! connections are drained ([`run`]). So a graceful restart forgets nothing, and a SIGKILL (or a
//! crash) forgets at most the admissions made since the last save: those of the last save
//! interval before the kill (plus the few milliseconds a save takes to reach the file). That is
//! the bound the usage journal has too. A file that cannot be read, is corrupt, or has an
//! unknown version is logged and ignored (the gateway starts with fresh counts), never fatal.
//!
//! Cost: a save reads the 64 shards one at a time, each under its lock only for as long as it
//! takes to encode that shard's keys into a buffer (no allocation per key), yielding between
//! shards; the file is written, synced and renamed into place on the background thread. The
//! request path never waits for a save. A state identical to the last one saved (an idle
//! gateway) is not written again.
//!
//! What is kept small: keys with nothing in their minute window and nothing counted today are
//! not saved; a key's minute log is coarsened to at most one slot per second (slots that start
//! in the same second merge: first = earliest, last = latest, units summed). A merged slot holds
//! each unit until the latest of its slot-mates leaves the window, never shorter, so a restored
//! log can only under-admit (by less than a second's worth of hold), never over-admit. Day
//! counts are saved with their UTC day; at load a count from an earlier day is dropped (minute
//! slots still in the window are kept, also across midnight).
//!
//! Format, version 1 (integers little-endian; `varint` is LEB128, `zigzag` maps signed to
//! unsigned as in protobuf):
//! ```text
//! "TGQS"  version: u32 = 1  day: i64 (UTC day of the save, days since the epoch)  keys: u64
//! keys × { key id: u64  day_used: varint (units counted on `day`)  slots: varint
//!          slots × { start: zigzag varint  span: zigzag varint (last - first)  units: varint } }
//! "END."  checksum: u64 (FNV-1a 64 of every byte before "END.")
//! ```
//! A slot's `start` is its `first` minus `day * 86 400 000` for a key's first slot, minus the
//! previous slot's `last` for the others (the log is ordered, so these stay a few bytes).
//!
//! Only the in-process store is saved: all of the state in local mode; in Redis mode (whose
//! state is in Redis and survives a gateway restart by itself) the per-instance counts made
//! while Redis was unreachable with `redis_failure = "local"`.

use super::local::{LocalQuota, Slot};
use super::{Quota, WINDOW_MS};
use crate::keys::KeyId;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The file's name under `data_dir`.
pub const FILE: &str = "quota.state";
/// Slots are merged to at most one per this many milliseconds when saved.
pub const SAVE_GRANULARITY_MS: i64 = 1_000;

const MAGIC: &[u8; 4] = b"TGQS";
const VERSION: u32 = 1;
const END: &[u8; 4] = b"END.";
const DAY_MS: i64 = 86_400_000;
const HEADER: usize = 4 + 4 + 8 + 8;
const TRAILER: usize = 4 + 8;

/// Builds the file's bytes one shard (or any set of keys) at a time.
pub(crate) struct Encoder {
    now: i64,
    /// Every slot (merged per second), or one per key (see [`Encoder::summary`]).
    full: bool,
    day: i64,
    keys: u64,
    out: Vec<u8>,
    /// One key's merged slots (reused: no allocation per key).
    merged: Vec<Slot>,
}

impl Encoder {
    /// A file as of `now_ms`: slots that left the window by then and counts of an earlier UTC
    /// day are not written.
    pub(crate) fn new(now_ms: i64) -> Encoder {
        Encoder::with(now_ms, true)
    }

    /// The periodic save's form: per key its day count and its whole minute count as ONE slot
    /// held until a minute after the key's newest unit. O(1) per key whatever the log's length
    /// (a key above 1,024/min may hold a thousand slots: walking 10,000 such logs every second
    /// cost ~20 % of a core under load). After a SIGKILL such a window frees its units at once a
    /// minute after the last request instead of one by one: it can only under-admit, for that
    /// minute. The save at shutdown ([`Encoder::new`]) keeps every slot.
    pub(crate) fn summary(now_ms: i64) -> Encoder {
        Encoder::with(now_ms, false)
    }

    fn with(now_ms: i64, full: bool) -> Encoder {
        let mut out = Vec::with_capacity(4096);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        let day = now_ms.div_euclid(DAY_MS);
        out.extend_from_slice(&day.to_le_bytes());
        // The key count, filled in by `finish`.
        out.extend_from_slice(&0u64.to_le_bytes());
        Encoder {
            now: now_ms,
            full,
            day,
            keys: 0,
            out,
            merged: Vec::new(),
        }
    }

    /// Appends one key's state (nothing if it has nothing worth keeping).
    pub(crate) fn key(
        &mut self,
        key: KeyId,
        day: i64,
        day_used: u64,
        log: &VecDeque<Slot>,
        in_window: u64,
    ) {
        let day_used = if day == self.day { day_used } else { 0 };
        self.merged.clear();
        if !self.full {
            if let (Some(front), Some(back)) = (log.front(), log.back()) {
                if in_window > 0 && back.last + WINDOW_MS > self.now {
                    self.merged.push(Slot {
                        first: front.first.max(back.last - WINDOW_MS),
                        last: back.last,
                        units: in_window,
                    });
                }
            }
        }
        // The slots still holding units at `now`, merged to one per second.
        let full = self.full;
        for s in log
            .iter()
            .take_while(|_| full)
            .filter(|s| s.units > 0 && s.last + WINDOW_MS > self.now)
        {
            match self.merged.last_mut() {
                Some(m) if same_second(m.first, s.first) => {
                    m.first = m.first.min(s.first);
                    m.last = m.last.max(s.last);
                    m.units = m.units.saturating_add(s.units);
                }
                _ => self.merged.push(*s),
            }
        }
        if day_used == 0 && self.merged.is_empty() {
            return;
        }
        self.keys += 1;
        self.out.extend_from_slice(&key.0.to_le_bytes());
        put_varint(&mut self.out, day_used);
        put_varint(
            &mut self.out,
            u64::try_from(self.merged.len()).unwrap_or(u64::MAX),
        );
        let mut prev_last = self.day.saturating_mul(DAY_MS);
        for s in &self.merged {
            put_varint(&mut self.out, zigzag(s.first.saturating_sub(prev_last)));
            put_varint(&mut self.out, zigzag(s.last.saturating_sub(s.first)));
            put_varint(&mut self.out, s.units);
            prev_last = s.last;
        }
    }

    /// The keys of shard `i` of `q`, under that shard's lock only while they are encoded.
    pub(crate) fn shard(&mut self, q: &LocalQuota, i: usize) {
        q.visit_shard(i, |key, day, used, log, in_window| {
            self.key(key, day, used, log, in_window)
        });
    }

    /// The finished file.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out[HEADER - 8..HEADER].copy_from_slice(&self.keys.to_le_bytes());
        let sum = fnv1a(&self.out);
        self.out.extend_from_slice(END);
        self.out.extend_from_slice(&sum.to_le_bytes());
        self.out
    }
}

fn same_second(a: i64, b: i64) -> bool {
    a.div_euclid(SAVE_GRANULARITY_MS) == b.div_euclid(SAVE_GRANULARITY_MS)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v.to_le_bytes()[0] | 0x80);
        v >>= 7;
    }
    out.push(v.to_le_bytes()[0]);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)).cast_unsigned()
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1).cast_signed()) ^ -((v & 1).cast_signed())
}

/// FNV-1a, 64 bits: enough to tell a torn or damaged file from a good one, and no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One key's state as read from a file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct SavedKey {
    pub key: KeyId,
    pub day_used: u64,
    pub slots: Vec<Slot>,
}

/// A whole file, checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Saved {
    /// The UTC day the `day_used` counts belong to.
    pub day: i64,
    pub keys: Vec<SavedKey>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let end = self.at.checked_add(N).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err("truncated".to_string());
        };
        let mut b = [0u8; N];
        b.copy_from_slice(&self.bytes[self.at..end]);
        self.at = end;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let [b] = self.take::<1>()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long".to_string())
    }
}

/// Parses and checks a file's bytes. Every error says what is wrong; none panics.
pub(crate) fn decode(bytes: &[u8]) -> Result<Saved, String> {
    if bytes.len() < HEADER + TRAILER || &bytes[..4] != MAGIC {
        return Err("not a quota state file".to_string());
    }
    let mut r = Reader { bytes, at: 4 };
    let version = u32::from_le_bytes(r.take()?);
    if version != VERSION {
        return Err(format!(
            "unknown version {version} (this gateway reads {VERSION})"
        ));
    }
    let body = bytes.len() - TRAILER;
    if &bytes[body..body + 4] != END {
        return Err("truncated (no end marker)".to_string());
    }
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&bytes[body + 4..]);
    if u64::from_le_bytes(sum) != fnv1a(&bytes[..body]) {
        return Err("checksum mismatch".to_string());
    }
    let mut r = Reader {
        bytes: &bytes[..body],
        at: r.at,
    };
    let day = i64::from_le_bytes(r.take()?);
    let count = u64::from_le_bytes(r.take()?);
    // Each key takes at least 10 bytes: a count no file of this size can hold is damage, and
    // must not size an allocation.
    let fits = usize::try_from(count)
        .ok()
        .filter(|n| n.saturating_mul(10) <= body);
    let Some(count) = fits else {
        return Err(format!("{count} keys cannot fit in {body} bytes"));
    };
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let key = KeyId(u64::from_le_bytes(r.take()?));
        let day_used = r.varint()?;
        let n = r.varint()?;
        let mut slots = Vec::new();
        let mut prev_last = day.saturating_mul(DAY_MS);
        for _ in 0..n {
            let first = prev_last.saturating_add(unzigzag(r.varint()?));
            let last = first.saturating_add(unzigzag(r.varint()?));
            let units = r.varint()?;
            if last < first {
                return Err("a slot ends before it starts".to_string());
            }
            slots.push(Slot { first, last, units });
            prev_last = last;
        }
        keys.push(SavedKey {
            key,
            day_used,
            slots,
        });
    }
    if r.at != body {
        return Err(format!("{} bytes after the last key", body - r.at));
    }
    Ok(Saved { day, keys })
}

/// Puts a saved state into `q` as of `now_ms`: minute slots still in the window, and day counts
/// if they are from today (UTC). Returns how many keys got state.
pub(crate) fn restore(q: &LocalQuota, saved: &Saved, now_ms: i64) -> usize {
    let today = now_ms.div_euclid(DAY_MS);
    let mut restored = 0;
    let mut live = Vec::new();
    for k in &saved.keys {
        live.clear();
        live.extend(k.slots.iter().filter(|s| s.last + WINDOW_MS > now_ms));
        let day_used = if saved.day == today { k.day_used } else { 0 };
        if day_used == 0 && live.is_empty() {
            continue;
        }
        q.restore(k.key, today, day_used, &live);
        restored += 1;
    }
    restored
}

/// Loads `path` into `q` (at start, before serving). A missing file is a first start; any other
/// problem is logged and the gateway starts with fresh counts.
pub fn load(q: &LocalQuota, path: &Path) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "quota state unreadable; starting with fresh counts");
            return;
        }
    };
    match decode(&bytes) {
        Ok(saved) => {
            let keys = restore(q, &saved, q.now_ms());
            tracing::info!(keys, bytes = bytes.len(), "quota state loaded");
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "quota state file ignored; starting with fresh counts")
        }
    }
}

/// Writes `bytes` to `path` so that a reader (or a crash at any moment) sees the old file or
/// the new one, never a part: a temporary file, synced, renamed over it.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("state.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// Saves `q` to a file, skipping a state identical to the last one written.
struct Saver {
    path: PathBuf,
    /// Length and checksum of the last file written.
    last: Option<(usize, u64)>,
    failing: bool,
}

impl Saver {
    /// True when the file holds `q`'s state as of now (written, or unchanged since the last
    /// write).
    async fn save(&mut self, q: &LocalQuota, full: bool) -> bool {
        let mut enc = if full {
            Encoder::new(q.now_ms())
        } else {
            Encoder::summary(q.now_ms())
        };
        for i in 0..q.shard_count() {
            enc.shard(q, i);
            // Many keys make this a few milliseconds of CPU: let the requests on this worker run
            // between shards.
            tokio::task::yield_now().await;
        }
        let bytes = enc.finish();
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&bytes[bytes.len() - 8..]);
        let id = (bytes.len(), u64::from_le_bytes(sum));
        if self.last == Some(id) {
            return true;
        }
        let path = self.path.clone();
        let written = crate::background::run(move || write_atomically(&path, &bytes))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match written {
            Ok(()) => {
                self.last = Some(id);
                if self.failing {
                    tracing::info!("quota state saved again");
                    self.failing = false;
                }
                true
            }
            Err(e) => {
                // Said once, not every interval; the counts stay in memory meanwhile.
                if !self.failing {
                    tracing::error!(path = %self.path.display(), error = %e, "quota state not saved: a restart would forget counts until this works");
                    self.failing = true;
                }
                false
            }
        }
    }
}

/// Saves the in-process quota state (`quota(&owner)`, the owner being whatever holds the
/// store, the request path's shared state) to `path` every `every`, until `stop` turns true,
/// then once more. `stop` must turn true only after the connections are drained, so the last
/// save holds every admission.
pub async fn run<T>(
    owner: Arc<T>,
    quota: fn(&T) -> &Quota,
    path: PathBuf,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut saver = Saver {
        path,
        last: None,
        failing: false,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                saver.save(quota(&owner).in_process(), false).await;
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    if saver.save(quota(&owner).in_process(), true).await {
        tracing::info!("quota state saved");
    } else {
        tracing::error!("quota state NOT saved at shutdown: the next start forgets the counts made since the last save");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Clock, Decision, Exceeded, ManualClock};
    use tollgate_protocol::plans::Limits;

    const NOON: i64 = DAY_MS * 20_000 + DAY_MS / 2;

    fn store(at: i64) -> (Arc<ManualClock>, LocalQuota) {
        let clock = Arc::new(ManualClock::at(at));
        let q = LocalQuota::new(clock.clone());
        (clock, q)
    }

    fn save(q: &LocalQuota) -> Vec<u8> {
        let mut enc = Encoder::new(q.now_ms());
        for i in 0..q.shard_count() {
            enc.shard(q, i);
        }
        enc.finish()
    }

    /// A fresh store at `at` with `bytes` loaded, as a restarted gateway would have it.
    fn reload(bytes: &[u8], at: i64) -> (Arc<ManualClock>, LocalQuota) {
        let (clock, q) = store(at);
        let saved = decode(bytes).unwrap_or_else(|e| panic!("decode: {e}"));
        restore(&q, &saved, at);
        (clock, q)
    }

    fn admitted(d: Decision) -> bool {
        matches!(d, Decision::Admitted { .. })
    }

    /// Admits until refused; returns how many were admitted and what refused.
    fn drain(q: &LocalQuota, key: KeyId, limits: Limits) -> (u64, Option<Exceeded>) {
        let mut n = 0;
        loop {
            match q.decide(key, limits, 1) {
                Decision::Admitted { .. } => n += 1,
                Decision::Rejected { exceeded, .. } => return (n, Some(exceeded)),
            }
            if n > 10_000 {
                return (n, None);
            }
        }
    }

    #[test]
    fn round_trip_keeps_minute_and_day_counts() {
        let (clock, q) = store(NOON);
        let free = Limits {
            per_minute: 10,
            per_day: 50,
        };
        for _ in 0..10 {
            assert!(admitted(q.decide(KeyId(1), free, 1)));
            clock.advance(7);
        }
        let daily = Limits {
            per_minute: 1_000,
            per_day: 5,
        };
        for _ in 0..3 {
            assert!(admitted(q.decide(KeyId(2), daily, 1)));
        }
        let bytes = save(&q);
        let saved = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.day, NOON.div_euclid(DAY_MS));
        assert_eq!(saved.keys.len(), 2);

        let (_, q2) = reload(&bytes, clock.now_ms() + 5);
        assert_eq!(drain(&q2, KeyId(1), free), (0, Some(Exceeded::Minute)));
        assert_eq!(drain(&q2, KeyId(2), daily), (2, Some(Exceeded::Day)));
        // An unknown key is untouched.
        assert_eq!(drain(&q2, KeyId(3), free), (10, Some(Exceeded::Minute)));
    }

    /// The periodic save's one-slot summary keeps a key's whole minute count and day count,
    /// and frees the window only a minute after its newest unit: never more admitted than by
    /// the original, and exactly the original's count from a minute after its last request.
    #[test]
    fn a_summary_save_holds_the_whole_window_until_a_minute_after_the_last_unit() {
        let (clock, q) = store(NOON);
        let limits = Limits {
            per_minute: 5_000,
            per_day: 100_000,
        };
        // Many slots: 3,000 units over 30 s (coarse granularity above 1,024/min).
        for _ in 0..3_000 {
            assert!(admitted(q.decide(KeyId(9), limits, 1)));
            clock.advance(10);
        }
        let last_unit = clock.now_ms() - 10;
        let mut enc = Encoder::summary(q.now_ms());
        for i in 0..q.shard_count() {
            enc.shard(&q, i);
        }
        let bytes = enc.finish();
        let saved = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(saved.keys.len(), 1);
        // Right after: 2,000 more fit (as in the original), whatever the slots were.
        let (_, q2) = reload(&bytes, clock.now_ms());
        assert_eq!(
            drain(&q2, KeyId(9), limits),
            (2_000, Some(Exceeded::Minute))
        );
        // 45 s on, the original has freed its first 15 s; the summary frees nothing yet.
        let later = clock.now_ms() + 15_000;
        let (_, q3) = reload(&bytes, later);
        assert_eq!(
            drain(&q3, KeyId(9), limits),
            (2_000, Some(Exceeded::Minute))
        );
        // A minute after the newest unit everything is free again, and the day still counts.
        let (_, q4) = reload(&bytes, last_unit + WINDOW_MS);
        let day_limits = Limits {
            per_minute: 100_000,
            per_day: 3_500,
        };
        assert_eq!(drain(&q4, KeyId(9), day_limits), (500, Some(Exceeded::Day)));
    }

    /// The same state saves to the same bytes (what lets an idle gateway skip the write), and
    /// reloading then saving again gives the same state.
    #[test]
    fn saves_are_deterministic_and_stable() {
        let (clock, q) = store(NOON);
        let limits = Limits {
            per_minute: 100,
            per_day: 1_000,
        };
        for i in 0..500u64 {
            let _ = q.decide(KeyId(i % 37), limits, 1 + i % 3);
            clock.advance(97);
        }
        let a = save(&q);
        assert_eq!(a, save(&q));
        // A reloaded store has the same state (its keys may iterate in another order).
        let sorted = |bytes: &[u8]| {
            let mut s = decode(bytes).unwrap_or_else(|e| panic!("{e}"));
            s.keys.sort_by_key(|k| k.key.0);
            s
        };
        let (_, q2) = reload(&a, clock.now_ms());
        assert_eq!(sorted(&a), sorted(&save(&q2)));
    }

    /// Coarsening keeps every unit and holds each at least as long: after a reload the store
    /// never admits where the original would refuse, at any later moment, and frees units at
    /// most one second later than the original.
    #[test]
    fn coarsened_log_never_admits_more_than_the_original() {
        let limits = Limits {
            per_minute: 40,
            per_day: 10_000,
        };
        for seed in 0..40u64 {
            let (clock, q) = store(NOON + i64::try_from(seed).unwrap_or(0) * 13);
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            // Several requests a second for ~30 s, so slots merge and the window is full.
            for _ in 0..150 {
                clock.advance(i64::try_from(next() % 400).unwrap_or(0));
                let _ = q.decide(KeyId(5), limits, 1 + next() % 3);
            }
            let bytes = save(&q);
            let saved = decode(&bytes).unwrap_or_else(|e| panic!("{e}"));
            let slots = &saved.keys[0].slots;
            let mut original = 0;
            for i in 0..q.shard_count() {
                q.visit_shard(i, |_, _, _, log, _| original += log.len());
            }
            assert!(slots.len() < original, "seed {seed}: nothing was merged");
            // At most one slot per second.
            for w in slots.windows(2) {
                assert!(!same_second(w[0].first, w[1].first), "{w:?}");
            }
            let (clock2, q2) = reload(&bytes, clock.now_ms());
            // Over the next 65 s, every 50 ms, what each store has left in the window (asked
            // with a cost above the limit: refused, consumes nothing). The reloaded store never
            // has more left than the original, and has at least what the original had 1 s before.
            let left = |q: &LocalQuota| match q.decide(KeyId(5), limits, limits.per_minute + 1) {
                Decision::Rejected { usage, .. } => usage.minute_remaining,
                d => panic!("{d:?}"),
            };
            let mut before = Vec::new();
            for i in 0..1_300 {
                let (a, b) = (left(&q), left(&q2));
                assert!(b <= a, "seed {seed}: reloaded has {b} left, original {a}");
                if i >= 20 {
                    let a_1s_ago = before[i - 20];
                    assert!(
                        b >= a_1s_ago,
                        "seed {seed}: a unit freed more than 1 s late"
                    );
                }
                before.push(a);
                clock.advance(50);
                clock2.advance(50);
            }
            assert_eq!(
                left(&q2),
                limits.per_minute,
                "seed {seed}: all freed in the end"
            );
        }
    }

    #[test]
    fn idle_keys_and_expired_slots_are_not_saved() {
        let (clock, q) = store(NOON);
        let limits = Limits {
            per_minute: 10,
            per_day: 50,
        };
        assert!(admitted(q.decide(KeyId(1), limits, 1)));
        assert!(admitted(q.decide(KeyId(2), limits, 1)));
        q.give_back(match q.decide(KeyId(3), limits, 2) {
            Decision::Admitted { reservation, .. } => reservation,
            d => panic!("{d:?}"),
        });
        clock.advance(WINDOW_MS + 1);
        let saved = decode(&save(&q)).unwrap_or_else(|e| panic!("{e}"));
        // Keys 1 and 2: today's count only, their slots have left the window. Key 3 was given
        // back in full: nothing in the window, nothing today.
        assert_eq!(saved.keys.len(), 2);
        assert!(saved
            .keys
            .iter()
            .all(|k| k.day_used == 1 && k.slots.is_empty()));
        // Next day: nothing at all.
        clock.set((NOON.div_euclid(DAY_MS) + 1) * DAY_MS + 5 * WINDOW_MS);
        let bytes = save(&q);
        assert_eq!(bytes.len(), HEADER + TRAILER);
        assert!(decode(&bytes).is_ok_and(|s| s.keys.is_empty()));
    }

    #[test]
    fn a_file_from_yesterday_gives_back_the_day_but_keeps_the_window() {
        let midnight = (NOON.div_euclid(DAY_MS) + 1) * DAY_MS;
        let (_, q) = store(midnight - 2_000);
        let limits = Limits {
            per_minute: 10,
            per_day: 10,
        };
        for _ in 0..10 {
            assert!(admitted(q.decide(KeyId(8), limits, 1)));
        }
        let bytes = save(&q);
        // Two seconds after midnight: a new day, but the last minute still counts.
        let (clock, q2) = reload(&bytes, midnight + 2_000);
        assert_eq!(drain(&q2, KeyId(8), limits), (0, Some(Exceeded::Minute)));
        clock.advance(WINDOW_MS);
        assert_eq!(drain(&q2, KeyId(8), limits), (10, Some(Exceeded::Minute)));
        // Hours later: nothing of it is left.
        let (_, q3) = reload(&bytes, midnight + 3 * 3_600_000);
        assert_eq!(q3.tracked_keys(), 0);
        assert_eq!(drain(&q3, KeyId(8), limits), (10, Some(Exceeded::Minute)));
    }

    #[test]
    fn corrupt_or_foreign_files_are_refused() {
        let (_, q) = store(NOON);
        let limits = Limits {
            per_minute: 10,
            per_day: 50,
        };
        for k in 0..20 {
            assert!(admitted(q.decide(KeyId(k), limits, 1)));
        }
        let good = save(&q);
        assert!(decode(&good).is_ok());
        // Every single flipped bit and every truncation is caught.
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "flip at byte {i} bit {bit}");
            }
            assert!(decode(&good[..i]).is_err(), "truncated to {i}");
        }
        let mut newer = good.clone();
        newer[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(decode(&newer).is_err_and(|e| e.contains("unknown version 2")));
        assert!(decode(b"").is_err());
        assert!(decode(b"{\"not\": \"ours\"}").is_err());
        // A damaged count cannot make the reader allocate for it.
        let mut huge = Encoder::new(NOON).finish();
        huge[HEADER - 8..HEADER].copy_from_slice(&u64::MAX.to_le_bytes());
        let body = huge.len() - TRAILER;
        let sum = fnv1a(&huge[..body]);
        huge[body + 4..].copy_from_slice(&sum.to_le_bytes());
        assert!(decode(&huge).is_err());
    }

    #[test]
    fn load_ignores_a_corrupt_file_and_a_missing_one() {
        let dir = std::env::temp_dir().join(format!(
            "tollgate-quota-persist-{}-{}",
            std::process::id(),
            NOON
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join(FILE);
        let (_, q) = store(NOON);
        load(&q, &path);
        assert_eq!(q.tracked_keys(), 0);
        std::fs::write(&path, b"TGQS\x01\x00\x00\x00garbage").unwrap_or_else(|e| panic!("{e}"));
        load(&q, &path);
        assert_eq!(q.tracked_keys(), 0);
        let limits = Limits {
            per_minute: 10,
            per_day: 50,
        };
        assert!(admitted(q.decide(KeyId(4), limits, 3)));
        write_atomically(&path, &save(&q)).unwrap_or_else(|e| panic!("{e}"));
        let (_, q2) = store(NOON + 1);
        load(&q2, &path);
        assert_eq!(drain(&q2, KeyId(4), limits), (7, Some(Exceeded::Minute)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn varints_round_trip() {
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 40, i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            put_varint(&mut out, zigzag(v));
            let mut r = Reader { bytes: &out, at: 0 };
            assert_eq!(r.varint().map(unzigzag), Ok(v));
            assert_eq!(r.at, out.len());
        }
    }
}
