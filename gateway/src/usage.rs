//! Usage: admitted units per key and UTC day, shipped to the backend in idempotent batches.
//!
//! - [`UsageCounter`]: sharded in-memory counts, added to on the request path (one short lock).
//! - [`Journal`]: an append-only file under `data_dir` holding every batch until the backend
//!   acknowledges it. A batch is written (and fsynced) *before* it is sent, so a backend outage
//!   or a crash after the write loses nothing; batch ids come from the journal too, so they keep
//!   increasing across restarts.
//! - [`Shipper`]: every flush interval (≤ 1 s) cuts a batch from the counter, journals it and
//!   sends all unacknowledged batches in order. On shutdown it flushes once more.
//!
//! The shipper is a task on the same worker threads that serve requests, so a cut does only the
//! cheap part there (swapping each shard's table out). Serialising the counts (~0.7 MB of JSON
//! for 10 k keys, written straight from them) and the journal write run on a blocking thread;
//! the batch is kept as those bytes ([`SealedBatch`]), which are both the journal record and the
//! body sent, so it is never cloned or serialised again.
//!
//! A SIGKILL loses only what was counted since the last cut: at most one flush interval.

use crate::backend::BackendLink;
use crate::background;
use crate::health::Health;
use crate::keys::KeyId;
use crate::metrics::Metrics;
use bytes::Bytes;
use hashbrown::HashTable;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::day::format_day;
use tollgate_protocol::feed::{UsageBatch, UsageEntry, MAX_BATCH_ENTRIES};
use tollgate_protocol::usage_wire::{self, EntryRef};

const SHARDS: usize = 32;

struct Pending {
    key: KeyId,
    day: i64,
    count: u64,
    last_used: i64,
}

fn slot_hash(key: KeyId, day: i64) -> u64 {
    key.mix() ^ u64::from_le_bytes(day.to_le_bytes()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Counts admitted units until the shipper takes them.
pub struct UsageCounter {
    shards: Box<[Mutex<HashTable<Pending>>]>,
}

impl Default for UsageCounter {
    fn default() -> Self {
        UsageCounter::new()
    }
}

impl UsageCounter {
    pub fn new() -> UsageCounter {
        UsageCounter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
        }
    }

    pub fn add(&self, key: KeyId, day: i64, units: u64, now_secs: i64) {
        let h = slot_hash(key, day);
        let mut shard = self.shards[usize::try_from(key.mix() >> 40).unwrap_or(0) % SHARDS].lock();
        match shard.find_mut(h, |p| p.key == key && p.day == day) {
            Some(p) => {
                p.count += units;
                p.last_used = p.last_used.max(now_secs);
            }
            None => {
                shard.insert_unique(
                    h,
                    Pending {
                        key,
                        day,
                        count: units,
                        last_used: now_secs,
                    },
                    |p| slot_hash(p.key, p.day),
                );
            }
        }
    }

    /// Takes everything counted so far: one swap per shard under its lock, nothing converted,
    /// so it is cheap enough for an async worker.
    fn take(&self) -> Drained {
        Drained(
            self.shards
                .iter()
                .map(|shard| std::mem::take(&mut *shard.lock()))
                .collect(),
        )
    }

    /// Takes everything counted so far as wire entries. That is two `String`s per entry; the
    /// shipper serialises straight from the counts instead (see [`Shipper`]).
    pub fn drain(&self) -> Vec<UsageEntry> {
        let drained = self.take();
        let mut out = Vec::with_capacity(drained.len());
        out.extend(drained.0.into_iter().flatten().map(|p| UsageEntry {
            key_id: p.key.to_string(),
            day: format_day(p.day),
            count: p.count,
            last_used: p.last_used,
        }));
        out
    }
}

/// Counts taken from a [`UsageCounter`], still in its compact form.
struct Drained(Vec<HashTable<Pending>>);

impl Drained {
    fn len(&self) -> usize {
        self.0.iter().map(HashTable::len).sum()
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(HashTable::is_empty)
    }
}

/// A batch in the form it is journalled and sent, serialised once: its journal line, whose
/// middle is the `UsageBatch` JSON, and the same batch in the binary form the backend is sent
/// ([`usage_wire`]: about half the bytes, and nothing to parse). Cloning it bumps reference
/// counts.
#[derive(Clone)]
pub struct SealedBatch {
    id: u64,
    /// Units it carries, for the shipped-units metric (so the JSON is never read back).
    units: u64,
    /// `{"t":"batch","batch":<UsageBatch JSON>}\n`, the line serde writes for `Record::Batch`.
    line: Bytes,
    /// None only for a gateway id too long for the binary form (the JSON is sent instead).
    binary: Option<Bytes>,
}

const LINE_HEAD: &[u8] = br#"{"t":"batch","batch":"#;
const LINE_TAIL: &[u8] = b"}\n";

impl SealedBatch {
    /// Writes the journal line around the batch JSON that `write_batch` appends.
    fn seal_with(
        id: u64,
        units: u64,
        json_len_hint: usize,
        write_batch: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
        binary: Option<Vec<u8>>,
    ) -> serde_json::Result<SealedBatch> {
        let mut line = Vec::with_capacity(LINE_HEAD.len() + json_len_hint + LINE_TAIL.len());
        line.extend_from_slice(LINE_HEAD);
        write_batch(&mut line)?;
        line.extend_from_slice(LINE_TAIL);
        Ok(SealedBatch {
            id,
            units,
            line: line.into(),
            binary: binary.map(Bytes::from),
        })
    }

    /// For batches replayed from the journal.
    fn seal(batch: &UsageBatch) -> serde_json::Result<SealedBatch> {
        let units = batch.entries.iter().map(|e| e.count).sum();
        SealedBatch::seal_with(
            batch.batch_id,
            units,
            0,
            |w| serde_json::to_writer(w, batch),
            usage_wire::encode_batch(batch).ok(),
        )
    }

    pub fn batch_id(&self) -> u64 {
        self.id
    }

    /// The `UsageBatch` JSON: a view into the journal line, not a copy.
    fn json(&self) -> Bytes {
        self.line
            .slice(LINE_HEAD.len()..self.line.len() - LINE_TAIL.len())
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Record {
    /// The next batch id to use (written at the top of a compacted journal).
    Next {
        id: u64,
    },
    /// Read back at start; written as [`SealedBatch::line`], which holds the same bytes.
    Batch {
        batch: UsageBatch,
    },
    Ack {
        id: u64,
    },
}

/// Entries serialised between two `yield_now`s: about 0.1 ms of work.
const YIELD_EVERY: usize = 1_000;

/// A `UsageBatch` as serde writes it, borrowed from the counts: the same field names in the
/// same order, so the same bytes (a test holds them equal), without first building two
/// `String`s per entry.
#[derive(Serialize)]
struct WireBatch<'a> {
    gateway_id: &'a str,
    batch_id: u64,
    entries: WireEntries<'a>,
}

struct WireEntries<'a> {
    counts: &'a [Pending],
    /// Each distinct day formatted once (a flush rarely spans more than two).
    days: &'a [(i64, String)],
}

/// One `UsageEntry`.
#[derive(Serialize)]
struct WireEntry<'a> {
    #[serde(serialize_with = "key_text")]
    key_id: KeyId,
    day: &'a str,
    count: u64,
    last_used: i64,
}

fn key_text<S: serde::Serializer>(key: &KeyId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(key)
}

impl Serialize for WireEntries<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.counts.len()))?;
        for (i, p) in self.counts.iter().enumerate() {
            // Where the gateway is pinned to one core (the benchmark's taskset), this thread
            // takes the core from the worker while it runs: yielding every slice lets requests
            // through between slices instead of after the whole batch.
            if i > 0 && i % YIELD_EVERY == 0 {
                std::thread::yield_now();
            }
            let day = self
                .days
                .iter()
                .find(|(d, _)| *d == p.day)
                .map_or("", |(_, text)| text.as_str());
            seq.serialize_element(&WireEntry {
                key_id: p.key,
                day,
                count: p.count,
                last_used: p.last_used,
            })?;
        }
        seq.end()
    }
}

/// The append-only usage journal.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

/// What a journal held at start: batches never acknowledged, and the next batch id.
pub struct Replayed {
    pub pending: Vec<SealedBatch>,
    pub next_id: u64,
}

impl Journal {
    /// Opens (or creates) `data_dir/usage.journal`, replays it and compacts it.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Replayed)> {
        let path = dir.join("usage.journal");
        let mut pending: Vec<UsageBatch> = Vec::new();
        let mut next_id = 1;
        match std::fs::File::open(&path) {
            Ok(f) => {
                for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
                    let line = line?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    match serde_json::from_str::<Record>(&line) {
                        Ok(Record::Next { id }) => next_id = next_id.max(id),
                        Ok(Record::Batch { batch }) => {
                            next_id = next_id.max(batch.batch_id + 1);
                            pending.push(batch);
                        }
                        Ok(Record::Ack { id }) => pending.retain(|b| b.batch_id != id),
                        // Only the last line can be torn (a crash mid-append): that batch was
                        // never sent, and its units are within the SIGKILL loss bound.
                        Err(e) => {
                            tracing::warn!(line = n + 1, error = %e, "usage journal: unreadable line skipped")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Batches journaled under an earlier gateway id keep it: the backend dedupes by both.
        let pending = pending
            .iter()
            .map(SealedBatch::seal)
            .collect::<serde_json::Result<Vec<_>>>()
            .map_err(std::io::Error::other)?;
        let file = Journal::rewrite(&path, next_id, &pending)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((Journal { path, file, bytes }, Replayed { pending, next_id }))
    }

    fn rewrite<'a>(
        path: &Path,
        next_id: u64,
        pending: impl IntoIterator<Item = &'a SealedBatch>,
    ) -> std::io::Result<std::fs::File> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write_record(&mut f, &Record::Next { id: next_id })?;
            for b in pending {
                f.write_all(&b.line)?;
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::OpenOptions::new().append(true).open(path)
    }

    fn append_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)?;
        self.file.sync_data()?;
        self.bytes += u64::try_from(line.len()).unwrap_or(0);
        Ok(())
    }

    fn append(&mut self, r: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.append_line(&line)
    }

    /// Rewrites the journal to just the pending batches once it has grown.
    fn compact_if_large(
        &mut self,
        next_id: u64,
        pending: &VecDeque<SealedBatch>,
    ) -> std::io::Result<()> {
        if self.bytes < (1 << 20) {
            return Ok(());
        }
        self.file = Journal::rewrite(&self.path, next_id, pending)?;
        self.bytes = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(())
    }
}

fn write_record(w: &mut impl Write, r: &Record) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

/// The heavy part of a cut, for a blocking thread: numbers the drained counts into batches
/// from `first_id`, serialises each once and journals it. A batch whose journal write fails is
/// still returned (and sent): the journal protects against outages, and losing the disk must not
/// also lose the usage. The error is loud because durability is reduced.
fn seal_and_journal(
    drained: Drained,
    gateway_id: &str,
    first_id: u64,
    journal: &Mutex<Journal>,
) -> Vec<SealedBatch> {
    let counts: Vec<Pending> = drained.0.into_iter().flatten().collect();
    let mut days: Vec<(i64, String)> = Vec::new();
    for p in &counts {
        if !days.iter().any(|(d, _)| *d == p.day) {
            days.push((p.day, format_day(p.day)));
        }
    }
    let mut sealed = Vec::new();
    for (id, chunk) in (first_id..).zip(counts.chunks(MAX_BATCH_ENTRIES)) {
        let units = chunk.iter().map(|p| p.count).sum();
        let wire = WireBatch {
            gateway_id,
            batch_id: id,
            entries: WireEntries {
                counts: chunk,
                days: &days,
            },
        };
        // ~70 bytes an entry; a close guess saves the buffer's regrowth copies.
        match SealedBatch::seal_with(
            id,
            units,
            chunk.len() * 80,
            |w| serde_json::to_writer(w, &wire),
            binary_batch(gateway_id, id, chunk, &days),
        ) {
            Ok(b) => {
                if let Err(e) = journal.lock().append_line(&b.line) {
                    tracing::error!(error = %e, "usage journal write failed");
                }
                sealed.push(b);
            }
            // Integers and plain strings always serialise; this arm only keeps it visible.
            Err(e) => {
                tracing::error!(error = %e, batch_id = id, "usage batch could not be serialised; its units are lost")
            }
        }
    }
    sealed
}

/// A batch of counts in the binary form; None when the gateway id is too long for it.
fn binary_batch(
    gateway_id: &str,
    id: u64,
    counts: &[Pending],
    days: &[(i64, String)],
) -> Option<Vec<u8>> {
    // Entries are `key_` + 16 hex digits and a 10-character day: 49 bytes.
    let mut out = Vec::with_capacity(gateway_id.len() + 13 + counts.len() * 49);
    usage_wire::put_header(&mut out, gateway_id, id).ok()?;
    for p in counts {
        let key = p.key.text();
        let day = days
            .iter()
            .find(|(d, _)| *d == p.day)
            .map_or("", |(_, text)| text.as_str());
        let entry = EntryRef {
            key_id: std::str::from_utf8(&key).unwrap_or_default(),
            day,
            count: p.count,
            last_used: p.last_used,
        };
        usage_wire::put_entry(&mut out, entry).ok()?;
    }
    Some(out)
}

/// Cuts, journals and sends batches.
pub struct Shipper {
    counter: Arc<UsageCounter>,
    journal: Arc<Mutex<Journal>>,
    pending: VecDeque<SealedBatch>,
    next_id: u64,
    gateway_id: Arc<str>,
    link: Arc<dyn BackendLink>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    failing: bool,
}

impl Shipper {
    pub fn new(
        counter: Arc<UsageCounter>,
        journal: Journal,
        replayed: Replayed,
        gateway_id: String,
        link: Arc<dyn BackendLink>,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Shipper {
        let s = Shipper {
            counter,
            journal: Arc::new(Mutex::new(journal)),
            pending: replayed.pending.into(),
            next_id: replayed.next_id,
            gateway_id: gateway_id.into(),
            link,
            metrics,
            health,
            failing: false,
        };
        s.publish_depth();
        s
    }

    fn publish_depth(&self) {
        self.health.journal_depth.store(
            u64::try_from(self.pending.len()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Runs the journal's blocking file work off the async workers (on the background thread).
    async fn journal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let j = self.journal.clone();
        background::run(move || f(&mut j.lock()))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Moves the counted units into journaled batches. Only the swap of the shard tables runs
    /// here; the rest is [`seal_and_journal`] on the background thread.
    async fn cut(&mut self) {
        let drained = self.counter.take();
        if !drained.is_empty() {
            // Ids are reserved here, whatever happens to the batches, so none is ever reused.
            let first_id = self.next_id;
            let batches = drained.len().div_ceil(MAX_BATCH_ENTRIES);
            self.next_id += u64::try_from(batches).unwrap_or(u64::MAX);
            let (journal, gateway_id) = (self.journal.clone(), self.gateway_id.clone());
            match background::run(move || {
                seal_and_journal(drained, &gateway_id, first_id, &journal)
            })
            .await
            {
                Ok(sealed) => self.pending.extend(sealed),
                // Only a panic while building the batches gets here: a bug, so say it loudly.
                Err(e) => tracing::error!(error = %e, "usage cut failed; its units are lost"),
            }
        }
        self.publish_depth();
    }

    /// Sends pending batches in order until one fails. True when none is left.
    async fn send(&mut self) -> bool {
        while let Some(batch) = self.pending.front() {
            match self
                .link
                .ingest_usage_sealed(batch.json(), batch.binary.clone())
                .await
            {
                Ok(ack) if ack.batch_id == batch.id => {
                    if !ack.duplicate {
                        self.metrics.usage_units_shipped.add(batch.units);
                    }
                    self.metrics.usage_batches_sent.add(1);
                    let id = batch.id;
                    self.pending.pop_front();
                    if let Err(e) = self.journal(move |j| j.append(&Record::Ack { id })).await {
                        tracing::error!(error = %e, "usage journal ack write failed");
                    }
                    if self.failing {
                        tracing::info!("usage shipping recovered");
                        self.failing = false;
                    }
                    self.health.usage_reachable(true);
                }
                Ok(ack) => {
                    tracing::error!(
                        sent = batch.id,
                        acked = ack.batch_id,
                        "backend acknowledged another batch; will retry"
                    );
                    self.metrics.usage_ship_errors.add(1);
                    break;
                }
                Err(e) => {
                    if !self.failing {
                        tracing::warn!(error = %e, pending = self.pending.len(), "usage shipping failed; batches stay in the journal and are retried");
                        self.failing = true;
                    }
                    self.metrics.usage_ship_errors.add(1);
                    self.health.usage_reachable(false);
                    break;
                }
            }
        }
        self.publish_depth();
        // Cloning the queue copies ids and bumps reference counts; the batches stay shared.
        let (next, pending) = (self.next_id, self.pending.clone());
        if let Err(e) = self
            .journal(move |j| j.compact_if_large(next, &pending))
            .await
        {
            tracing::warn!(error = %e, "usage journal compaction failed");
        }
        self.pending.is_empty()
    }

    /// Every `interval` until `stop` fires; then one last cut and delivery attempts until
    /// `final_deadline` (what cannot be delivered stays in the journal for the next start).
    pub async fn run(
        mut self,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
        final_deadline: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.cut().await;
                    self.send().await;
                }
                _ = stop.changed() => break,
            }
        }
        self.cut().await;
        let deadline = tokio::time::Instant::now() + final_deadline;
        while !self.send().await {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    pending = self.pending.len(),
                    "usage not delivered before shutdown; kept in the journal"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tracing::info!("usage flushed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use tollgate_protocol::feed::{FeedPage, UsageAck};

    struct FakeBackend {
        up: std::sync::atomic::AtomicBool,
        got: Mutex<Vec<UsageBatch>>,
    }

    #[async_trait]
    impl BackendLink for FakeBackend {
        async fn feed_page(
            &self,
            _: u64,
            _: usize,
            _: Duration,
            _: &str,
        ) -> Result<FeedPage, String> {
            Err("not used".into())
        }
        async fn ingest_usage(&self, batch: &UsageBatch) -> Result<UsageAck, String> {
            if !self.up.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            let mut got = self.got.lock();
            let duplicate = got
                .iter()
                .any(|b| b.batch_id == batch.batch_id && b.gateway_id == batch.gateway_id);
            if !duplicate {
                got.push(batch.clone());
            }
            Ok(UsageAck {
                gateway_id: batch.gateway_id.clone(),
                batch_id: batch.batch_id,
                duplicate,
            })
        }
    }

    fn total(batches: &[UsageBatch]) -> u64 {
        batches
            .iter()
            .flat_map(|b| b.entries.iter())
            .map(|e| e.count)
            .sum()
    }

    #[test]
    fn counter_sums_per_key_and_day() {
        let c = UsageCounter::new();
        c.add(KeyId(1), 10, 2, 100);
        c.add(KeyId(1), 10, 3, 150);
        c.add(KeyId(1), 11, 1, 200);
        c.add(KeyId(2), 10, 1, 120);
        let mut e = c.drain();
        e.sort_by(|a, b| (&a.key_id, &a.day).cmp(&(&b.key_id, &b.day)));
        assert_eq!(e.len(), 3);
        assert_eq!(
            (e[0].count, e[0].last_used, e[0].day.as_str()),
            (5, 150, "1970-01-11")
        );
        assert!(c.drain().is_empty());
    }

    #[tokio::test]
    async fn outage_loses_nothing_and_ids_survive_restart() {
        let dir = std::env::temp_dir().join(format!("tollgate-usage-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let backend = Arc::new(FakeBackend {
            up: false.into(),
            got: Mutex::new(Vec::new()),
        });
        let counter = Arc::new(UsageCounter::new());
        let (j, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let mut s = Shipper::new(
            counter.clone(),
            j,
            r,
            "gw".into(),
            backend.clone(),
            Arc::new(Metrics::new()),
            Arc::new(Health::new()),
        );
        counter.add(KeyId(1), 10, 4, 1);
        s.cut().await;
        assert!(!s.send().await);
        counter.add(KeyId(1), 10, 6, 2);
        s.cut().await;
        assert!(!s.send().await);
        drop(s); // a crash: nothing acknowledged

        // Restart: the journal gives both batches back, ids go on from 3.
        let (j, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pending.len(), r.next_id), (2, 3));
        backend.up.store(true, Ordering::SeqCst);
        let mut s = Shipper::new(
            counter.clone(),
            j,
            r,
            "gw".into(),
            backend.clone(),
            Arc::new(Metrics::new()),
            Arc::new(Health::new()),
        );
        counter.add(KeyId(2), 10, 1, 3);
        s.cut().await;
        assert!(s.send().await);
        let got = backend.got.lock().clone();
        assert_eq!(
            got.iter().map(|b| b.batch_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(total(&got), 11);
        drop(s);
        let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pending.len(), r.next_id), (0, 4));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sealed_batches_are_what_serde_writes_for_the_protocol_types() {
        let (counter, reference) = (UsageCounter::new(), UsageCounter::new());
        for c in [&counter, &reference] {
            for k in 0..2_500u64 {
                c.add(
                    KeyId(k * 0x0123_4567_89AB),
                    19_000 + i64::from(k % 3 == 0),
                    k,
                    5,
                );
            }
        }
        let drained = counter.take();
        let dir = std::env::temp_dir().join(format!("tollgate-usage-seal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let (j, _) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let sealed = seal_and_journal(drained, "gw\"1", 7, &Mutex::new(j));
        assert_eq!(sealed.len(), 1);
        let b = &sealed[0];
        let batch: UsageBatch = serde_json::from_slice(&b.json()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((batch.gateway_id.as_str(), batch.batch_id), ("gw\"1", 7));
        assert_eq!(batch.entries.len(), 2_500);
        assert_eq!(b.units, (0..2_500).sum::<u64>());
        assert!(batch.entries.iter().any(|e| e.day == "2022-01-09"));
        // The same entries as the owned conversion gives.
        let by_key = |a: &UsageEntry, b: &UsageEntry| (&a.key_id, &a.day).cmp(&(&b.key_id, &b.day));
        let (mut got, mut want) = (batch.entries.clone(), reference.drain());
        got.sort_by(by_key);
        want.sort_by(by_key);
        assert_eq!(got, want);
        // The binary form carries the same batch, in the same order.
        let binary = b.binary.clone().unwrap_or_default();
        let (gateway_id, batch_id, entries) =
            usage_wire::read_header(&binary).unwrap_or_else(|e| panic!("{e}"));
        let mut from_binary = Vec::new();
        usage_wire::read_entries(entries, |e| {
            from_binary.push(UsageEntry {
                key_id: e.key_id.into(),
                day: e.day.into(),
                count: e.count,
                last_used: e.last_used,
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((gateway_id, batch_id), ("gw\"1", 7));
        assert_eq!(from_binary, batch.entries);
        // Byte for byte what serde writes for the journal record and for the body.
        let mut line = serde_json::to_vec(&Record::Batch {
            batch: batch.clone(),
        })
        .unwrap_or_default();
        line.push(b'\n');
        assert_eq!(&b.line[..], &line[..]);
        assert_eq!(
            &b.json()[..],
            &serde_json::to_vec(&batch).unwrap_or_default()[..]
        );
        // The journal replays it as the same batch.
        let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pending.len(), r.next_id), (1, 8));
        assert_eq!(&r.pending[0].line[..], &line[..]);
        assert_eq!(
            r.pending[0].binary, b.binary,
            "and rebuilds the same binary form"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn torn_last_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("tollgate-usage-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(
            dir.join("usage.journal"),
            "{\"t\":\"next\",\"id\":5}\n{\"t\":\"batch\",\"batch\":{\"gateway_id\":\"gw\",\"batch_id\":5,\"entries\":[]}}\n{\"t\":\"batch\",\"bat",
        )
        .unwrap_or_default();
        let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pending.len(), r.next_id), (1, 6));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Sums the time the shipper's polls hold the thread and keeps the longest single poll.
    struct Timed<F> {
        inner: std::pin::Pin<Box<F>>,
        busy: Duration,
        longest: Duration,
    }

    impl<F: std::future::Future> std::future::Future for Timed<F> {
        type Output = (F::Output, Duration, Duration);
        fn poll(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Self::Output> {
            let t = std::time::Instant::now();
            let r = self.inner.as_mut().poll(cx);
            let d = t.elapsed();
            self.busy += d;
            self.longest = self.longest.max(d);
            let (busy, longest) = (self.busy, self.longest);
            r.map(|o| (o, busy, longest))
        }
    }

    /// The fake backend's whole reading of a batch: the id near its start. (In the benchmark the
    /// backend runs on another core; here it may share the gateway's, so it must cost nothing.)
    fn batch_id_of(body: &[u8]) -> u64 {
        let text = std::str::from_utf8(&body[..body.len().min(200)]).unwrap_or_default();
        let (_, rest) = text.split_once("\"batch_id\":").unwrap_or_default();
        let digits = rest.split(|c: char| !c.is_ascii_digit()).next();
        digits.and_then(|d| d.parse().ok()).unwrap_or_default()
    }

    /// A backend on its own thread answering `POST /internal/usage` like the real one.
    fn ack_server() -> std::net::SocketAddr {
        use axum::routing::post;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            rt.block_on(async move {
                let app = axum::Router::new().route(
                    tollgate_protocol::feed::USAGE_PATH,
                    post(|body: bytes::Bytes| async move {
                        axum::Json(UsageAck {
                            gateway_id: "gw".into(),
                            batch_id: batch_id_of(&body),
                            duplicate: false,
                        })
                    }),
                );
                let l =
                    tokio::net::TcpListener::from_std(listener).unwrap_or_else(|e| panic!("{e}"));
                axum::serve(l, app).await.unwrap_or_else(|e| panic!("{e}"));
            });
        });
        addr
    }

    /// Timing harness, not a behaviour test: how long one flush of 10,000 distinct keys keeps a
    /// single-threaded runtime (the benchmark's one worker) from its other tasks. The shipper's
    /// polls are timed, and a probe task that only yields records the longest gap between its
    /// turns: the stall a request would see, hyper's connection task included. Both are wall
    /// time, so they also count the OS giving the core to another thread (the blocking pool, the
    /// fake backend); medians over many rounds keep that noise down. Run it optimised:
    /// `cargo test --release -p tollgate-gateway --lib flush_stall -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing harness; run with --release --ignored --nocapture"]
    fn flush_stall() {
        use crate::backend::RemoteBackend;
        const KEYS: u64 = 10_000;
        const ROUNDS: usize = 30;
        let addr = ack_server();
        let dir = std::env::temp_dir().join(format!("tollgate-usage-stall-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let rows = rt.block_on(async {
            let client = crate::tls::plain_client();
            let base: http::Uri = format!("http://{addr}")
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
            let link =
                Arc::new(RemoteBackend::new(client, base, "t").unwrap_or_else(|e| panic!("{e}")));
            let counter = Arc::new(UsageCounter::new());
            let (j, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            let mut s = Shipper::new(
                counter.clone(),
                j,
                r,
                "gw".into(),
                link,
                Arc::new(Metrics::new()),
                Arc::new(Health::new()),
            );
            let mut rows = Vec::new();
            for round in 0..=ROUNDS {
                for k in 0..KEYS {
                    counter.add(
                        KeyId(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                        20_000,
                        1,
                        1_728_000_000,
                    );
                }
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let probe = tokio::spawn({
                    let stop = stop.clone();
                    async move {
                        let mut gap = Duration::ZERO;
                        let mut last = std::time::Instant::now();
                        while !stop.load(Ordering::Relaxed) {
                            tokio::task::yield_now().await;
                            let now = std::time::Instant::now();
                            gap = gap.max(now - last);
                            last = now;
                        }
                        gap
                    }
                });
                tokio::task::yield_now().await;
                let started = std::time::Instant::now();
                let (delivered, busy, longest_poll) = Timed {
                    inner: Box::pin(async {
                        s.cut().await;
                        s.send().await
                    }),
                    busy: Duration::ZERO,
                    longest: Duration::ZERO,
                }
                .await;
                let wall = started.elapsed();
                stop.store(true, Ordering::Relaxed);
                let gap = probe.await.unwrap_or_else(|e| panic!("{e}"));
                assert!(delivered);
                if round > 0 {
                    // Round 0 opens the connection and warms the allocator.
                    rows.push([busy, longest_poll, gap, wall]);
                }
            }
            rows
        });
        let _ = std::fs::remove_dir_all(&dir);
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let labels = [
            "thread held by the shipper's polls",
            "longest single shipper poll       ",
            "longest gap between probe turns   ",
            "flush, start to acknowledged      ",
        ];
        println!("flush of {KEYS} keys, {ROUNDS} rounds (median / max, ms):");
        for (i, label) in labels.iter().enumerate() {
            let mut v: Vec<Duration> = rows.iter().map(|r| r[i]).collect();
            v.sort();
            println!(
                "  {label} {:7.3} / {:7.3}",
                ms(v[v.len() / 2]),
                ms(v[v.len() - 1])
            );
        }
    }
}
