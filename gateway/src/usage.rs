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
//! cheap part there (swapping each shard's table out). Encoding the counts and the journal write
//! run on a blocking thread. A batch is encoded once, in [`usage_codec`]'s form, straight from
//! the counts: those bytes are the journal record and the body sent (and the backend stores
//! them), so a pending batch is only those bytes, never cloned or encoded again.
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
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::day::format_day;
use tollgate_protocol::feed::{UsageEntry, MAX_BATCH_ENTRIES};
use tollgate_protocol::usage_codec::{self, Encoder};

const SHARDS: usize = 32;

/// A count as the request path keeps it: the batch entry with the key's number and the day's.
type Counted = UsageEntry<KeyId, i64>;

fn slot_hash(key: KeyId, day: i64) -> u64 {
    key.mix() ^ u64::from_le_bytes(day.to_le_bytes()).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Counts admitted units until the shipper takes them.
pub struct UsageCounter {
    shards: Box<[Mutex<HashTable<Counted>>]>,
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
        match shard.find_mut(h, |p| p.key_id == key && p.day == day) {
            Some(p) => {
                p.count += units;
                p.last_used = p.last_used.max(now_secs);
            }
            None => {
                shard.insert_unique(
                    h,
                    UsageEntry {
                        key_id: key,
                        day,
                        count: units,
                        last_used: now_secs,
                    },
                    |p| slot_hash(p.key_id, p.day),
                );
            }
        }
    }

    /// Takes everything counted so far: one swap per shard under its lock, nothing converted,
    /// so it is cheap enough for an async worker.
    fn take(&self) -> Vec<HashTable<Counted>> {
        self.shards
            .iter()
            .map(|shard| std::mem::take(&mut *shard.lock()))
            .collect()
    }
}

/// The journal file: [`JOURNAL_MAGIC`], then records of a tag byte, a `u32` length (LE) and
/// that many bytes: the next batch id (`u64` LE), an encoded batch, or an acknowledged id.
const JOURNAL_MAGIC: &[u8; 4] = b"TGJ1";
const NEXT: u8 = b'n';
const BATCH: u8 = b'b';
const ACK: u8 = b'a';

/// The journal of the previous version: one JSON object a line, the batch as JSON. Read at
/// start only (the journal is then rewritten in the current form).
#[derive(serde::Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum JsonLine {
    Next {
        id: u64,
    },
    Batch {
        batch: tollgate_protocol::feed::UsageBatch,
    },
    Ack {
        id: u64,
    },
}

fn record_head(tag: u8, len: usize) -> std::io::Result<[u8; 5]> {
    let len = u32::try_from(len).map_err(|_| std::io::Error::other("journal record too large"))?;
    let mut head = [tag, 0, 0, 0, 0];
    head[1..].copy_from_slice(&len.to_le_bytes());
    Ok(head)
}

fn write_record(w: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&record_head(tag, payload.len())?)?;
    w.write_all(payload)
}

/// The append-only usage journal.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

/// What a journal held at start: batches never acknowledged (encoded), and the next batch id.
pub struct Replayed {
    pub pending: Vec<Bytes>,
    pub next_id: u64,
}

/// Replay state: batches by id, in journal order.
struct Replay {
    pending: Vec<(u64, Bytes)>,
    next_id: u64,
}

impl Replay {
    fn batch(&mut self, id: u64, encoded: Bytes) {
        self.next_id = self.next_id.max(id.saturating_add(1));
        self.pending.push((id, encoded));
    }

    fn ack(&mut self, id: u64) {
        self.pending.retain(|(b, _)| *b != id);
    }

    fn next(&mut self, id: u64) {
        self.next_id = self.next_id.max(id);
    }

    /// Reads the current form. Only the tail can be torn (a crash mid-append): that batch was
    /// never sent, and its units are within the SIGKILL loss bound.
    fn records(&mut self, data: &Bytes) {
        let mut at = JOURNAL_MAGIC.len();
        while at < data.len() {
            let Some(head) = data.get(at..at + 5) else {
                tracing::warn!(offset = at, "usage journal: torn last record skipped");
                return;
            };
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let start = at + 5;
            let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            if end > data.len() {
                tracing::warn!(offset = at, "usage journal: torn last record skipped");
                return;
            }
            let payload = data.slice(start..end);
            let id = <[u8; 8]>::try_from(&payload[..]).map(u64::from_le_bytes);
            match (head[0], id) {
                (NEXT, Ok(id)) => self.next(id),
                (ACK, Ok(id)) => self.ack(id),
                (BATCH, _) => match usage_codec::decode(&payload) {
                    Ok(b) => {
                        let id = b.batch_id;
                        self.batch(id, payload);
                    }
                    Err(e) => {
                        tracing::warn!(offset = at, error = %e, "usage journal: unreadable batch skipped")
                    }
                },
                _ => tracing::warn!(offset = at, "usage journal: unreadable record skipped"),
            }
            at = end;
        }
    }

    /// Reads the previous version's JSON lines, encoding each batch in the current form.
    fn json_lines(&mut self, data: &[u8]) {
        for (n, line) in data.split(|&c| c == b'\n').enumerate() {
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<JsonLine>(line) {
                Ok(JsonLine::Next { id }) => self.next(id),
                Ok(JsonLine::Batch { batch }) => match usage_codec::encode(&batch) {
                    Ok(encoded) => self.batch(batch.batch_id, encoded.into()),
                    Err(e) => {
                        tracing::warn!(line = n + 1, error = %e, "usage journal: batch cannot be encoded; skipped")
                    }
                },
                Ok(JsonLine::Ack { id }) => self.ack(id),
                // Only the last line can be torn, as above.
                Err(e) => {
                    tracing::warn!(line = n + 1, error = %e, "usage journal: unreadable line skipped")
                }
            }
        }
    }
}

impl Journal {
    /// Opens (or creates) `data_dir/usage.journal`, replays it and compacts it. A journal in the
    /// previous version's form (JSON lines) is replayed too and rewritten in the current one.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Replayed)> {
        let path = dir.join("usage.journal");
        let mut replay = Replay {
            pending: Vec::new(),
            next_id: 1,
        };
        match std::fs::read(&path) {
            Ok(data) if data.starts_with(JOURNAL_MAGIC) => replay.records(&data.into()),
            Ok(data) => replay.json_lines(&data),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Batches journaled under an earlier gateway id keep it: the backend dedupes by both.
        let pending: Vec<Bytes> = replay.pending.into_iter().map(|(_, b)| b).collect();
        let file = Journal::rewrite(&path, replay.next_id, &pending)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((
            Journal { path, file, bytes },
            Replayed {
                pending,
                next_id: replay.next_id,
            },
        ))
    }

    fn rewrite<'a>(
        path: &Path,
        next_id: u64,
        pending: impl IntoIterator<Item = &'a Bytes>,
    ) -> std::io::Result<std::fs::File> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            f.write_all(JOURNAL_MAGIC)?;
            write_record(&mut f, NEXT, &next_id.to_le_bytes())?;
            for b in pending {
                write_record(&mut f, BATCH, b)?;
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::OpenOptions::new().append(true).open(path)
    }

    fn append(&mut self, tag: u8, payload: &[u8]) -> std::io::Result<()> {
        let head = record_head(tag, payload.len())?;
        self.file.write_all(&head)?;
        self.file.write_all(payload)?;
        self.file.sync_data()?;
        self.bytes += u64::try_from(head.len() + payload.len()).unwrap_or(0);
        Ok(())
    }

    /// Rewrites the journal to just the pending batches once it has grown.
    fn compact_if_large(&mut self, next_id: u64, pending: &VecDeque<Bytes>) -> std::io::Result<()> {
        if self.bytes < (1 << 20) {
            return Ok(());
        }
        self.file = Journal::rewrite(&self.path, next_id, pending)?;
        self.bytes = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(())
    }
}

/// The heavy part of a cut, for a blocking thread: numbers the drained counts into batches
/// from `first_id`, encodes each once and journals it. A batch whose journal write fails is
/// still returned (and sent): the journal protects against outages, and losing the disk must not
/// also lose the usage. The error is loud because durability is reduced.
fn encode_and_journal(
    drained: Vec<HashTable<Counted>>,
    gateway_id: &str,
    first_id: u64,
    journal: &Mutex<Journal>,
) -> Vec<Bytes> {
    let counts: Vec<Counted> = drained.into_iter().flatten().collect();
    // Each distinct day formatted once (a flush rarely spans more than two).
    let mut days: Vec<(i64, String)> = Vec::new();
    for p in &counts {
        if !days.iter().any(|(d, _)| *d == p.day) {
            days.push((p.day, format_day(p.day)));
        }
    }
    let mut encoded = Vec::new();
    for (id, chunk) in (first_id..).zip(counts.chunks(MAX_BATCH_ENTRIES)) {
        match encode_counts(gateway_id, id, chunk, &days) {
            Ok(b) => {
                if let Err(e) = journal.lock().append(BATCH, &b) {
                    tracing::error!(error = %e, "usage journal write failed");
                }
                encoded.push(b);
            }
            // The gateway id is checked at start and key ids are 20 bytes: this arm only keeps
            // a bug visible.
            Err(e) => {
                tracing::error!(error = %e, batch_id = id, "usage batch could not be encoded; its units are lost")
            }
        }
    }
    encoded
}

/// One batch of counts, encoded.
fn encode_counts(
    gateway_id: &str,
    id: u64,
    counts: &[Counted],
    days: &[(i64, String)],
) -> Result<Bytes, String> {
    let mut enc = Encoder::new(gateway_id, id, counts.len())?;
    for p in counts {
        let key = p.key_id.text();
        let day = days
            .iter()
            .find(|(d, _)| *d == p.day)
            .map_or("", |(_, text)| text.as_str());
        enc.push(UsageEntry {
            key_id: std::str::from_utf8(&key).unwrap_or_default(),
            day,
            count: p.count,
            last_used: p.last_used,
        })?;
    }
    Ok(enc.finish().into())
}

/// Cuts, journals and sends batches.
pub struct Shipper {
    counter: Arc<UsageCounter>,
    journal: Arc<Mutex<Journal>>,
    /// Encoded batches not yet acknowledged, oldest first.
    pending: VecDeque<Bytes>,
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
    /// here; the rest is [`encode_and_journal`] on the background thread.
    async fn cut(&mut self) {
        let drained = self.counter.take();
        let counted: usize = drained.iter().map(HashTable::len).sum();
        if counted > 0 {
            // Ids are reserved here, whatever happens to the batches, so none is ever reused.
            let first_id = self.next_id;
            let batches = counted.div_ceil(MAX_BATCH_ENTRIES);
            self.next_id += u64::try_from(batches).unwrap_or(u64::MAX);
            let (journal, gateway_id) = (self.journal.clone(), self.gateway_id.clone());
            match background::run(move || {
                encode_and_journal(drained, &gateway_id, first_id, &journal)
            })
            .await
            {
                Ok(encoded) => self.pending.extend(encoded),
                // Only a panic while building the batches gets here: a bug, so say it loudly.
                Err(e) => tracing::error!(error = %e, "usage cut failed; its units are lost"),
            }
        }
        self.publish_depth();
    }

    /// Sends pending batches in order until one fails. True when none is left.
    async fn send(&mut self) -> bool {
        while let Some(batch) = self.pending.front() {
            // Every pending batch was encoded here or read back whole from the journal.
            let Ok((id, units)) = usage_codec::id_and_units(batch) else {
                tracing::error!("unreadable usage batch dropped from the queue");
                self.pending.pop_front();
                continue;
            };
            match self.link.ingest_usage(batch.clone()).await {
                Ok(ack) if ack.batch_id == id => {
                    if !ack.duplicate {
                        self.metrics.usage_units_shipped.add(units);
                    }
                    self.metrics.usage_batches_sent.add(1);
                    self.pending.pop_front();
                    if let Err(e) = self
                        .journal(move |j| j.append(ACK, &id.to_le_bytes()))
                        .await
                    {
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
                        sent = id,
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
        // Cloning the queue bumps reference counts; the batches stay shared.
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
    use tollgate_protocol::feed::{FeedPage, UsageAck, UsageBatch};

    impl UsageCounter {
        /// Takes everything counted so far as owned entries.
        fn drain(&self) -> Vec<UsageEntry> {
            self.take()
                .into_iter()
                .flatten()
                .map(|p| UsageEntry {
                    key_id: p.key_id.to_string(),
                    day: format_day(p.day),
                    count: p.count,
                    last_used: p.last_used,
                })
                .collect()
        }
    }

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
        async fn ingest_usage(&self, batch: Bytes) -> Result<UsageAck, String> {
            if !self.up.load(Ordering::SeqCst) {
                return Err("down".into());
            }
            let batch = usage_codec::decode(&batch)?.to_owned_batch();
            let mut got = self.got.lock();
            let duplicate = got
                .iter()
                .any(|b| b.batch_id == batch.batch_id && b.gateway_id == batch.gateway_id);
            let ack = UsageAck {
                gateway_id: batch.gateway_id.clone(),
                batch_id: batch.batch_id,
                duplicate,
            };
            if !duplicate {
                got.push(batch);
            }
            Ok(ack)
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
    fn batches_are_encoded_straight_from_the_counts() {
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
        let encoded = encode_and_journal(drained, "gw\"1", 7, &Mutex::new(j));
        assert_eq!(encoded.len(), 1);
        let batch = usage_codec::decode(&encoded[0])
            .unwrap_or_else(|e| panic!("{e}"))
            .to_owned_batch();
        assert_eq!((batch.gateway_id.as_str(), batch.batch_id), ("gw\"1", 7));
        assert_eq!(batch.entries.len(), 2_500);
        assert_eq!(
            usage_codec::id_and_units(&encoded[0]),
            Ok((7, (0..2_500).sum::<u64>()))
        );
        assert!(batch.entries.iter().any(|e| e.day == "2022-01-09"));
        // The same entries as the owned conversion gives.
        let by_key = |a: &UsageEntry, b: &UsageEntry| (&a.key_id, &a.day).cmp(&(&b.key_id, &b.day));
        let (mut got, mut want) = (batch.entries.clone(), reference.drain());
        got.sort_by(by_key);
        want.sort_by(by_key);
        assert_eq!(got, want);
        // Byte for byte what the codec writes for the owned batch.
        assert_eq!(
            &encoded[0][..],
            &usage_codec::encode(&batch).unwrap_or_default()[..]
        );
        // The journal replays the same bytes.
        let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.pending.len(), r.next_id), (1, 8));
        assert_eq!(r.pending[0], encoded[0]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A journal the previous version wrote (JSON lines, as its `Record` serialised): the batch
    /// never acknowledged is replayed, the acknowledged one is not, ids go on after both; the
    /// journal is then rewritten in the current form and replays the same way.
    #[test]
    fn a_journal_of_the_previous_version_is_replayed() {
        let dir = std::env::temp_dir().join(format!("tollgate-usage-v0-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        std::fs::write(
            dir.join("usage.journal"),
            concat!(
                "{\"t\":\"next\",\"id\":3}\n",
                "{\"t\":\"batch\",\"batch\":{\"gateway_id\":\"gw-old\",\"batch_id\":3,\"entries\":[",
                "{\"key_id\":\"key_00000000000000aa\",\"day\":\"2026-11-25\",\"count\":4,\"last_used\":1764028800}]}}\n",
                "{\"t\":\"batch\",\"batch\":{\"gateway_id\":\"gw-old\",\"batch_id\":4,\"entries\":[",
                "{\"key_id\":\"key_00000000000000bb\",\"day\":\"2026-11-25\",\"count\":6,\"last_used\":1764028801},",
                "{\"key_id\":\"key_00000000000000cc\",\"day\":\"2026-11-26\",\"count\":1,\"last_used\":1764115200}]}}\n",
                "{\"t\":\"ack\",\"id\":3}\n",
            ),
        )
        .unwrap_or_default();
        let want = UsageBatch {
            gateway_id: "gw-old".to_string(),
            batch_id: 4,
            entries: vec![
                UsageEntry {
                    key_id: "key_00000000000000bb".to_string(),
                    day: "2026-11-25".to_string(),
                    count: 6,
                    last_used: 1_764_028_801,
                },
                UsageEntry {
                    key_id: "key_00000000000000cc".to_string(),
                    day: "2026-11-26".to_string(),
                    count: 1,
                    last_used: 1_764_115_200,
                },
            ],
        };
        for round in ["JSON lines", "rewritten"] {
            let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((r.pending.len(), r.next_id), (1, 5), "{round}");
            let got = usage_codec::decode(&r.pending[0]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.to_owned_batch(), want, "{round}");
        }
        let data = std::fs::read(dir.join("usage.journal")).unwrap_or_default();
        assert!(data.starts_with(JOURNAL_MAGIC));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_torn_last_record_is_skipped() {
        let dir = std::env::temp_dir().join(format!("tollgate-usage-tear-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let (mut j, _) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let batch = |id: u64| {
            usage_codec::encode(&UsageBatch {
                gateway_id: "gw".to_string(),
                batch_id: id,
                entries: vec![UsageEntry {
                    key_id: "key_00000000000000aa".to_string(),
                    day: "2026-11-25".to_string(),
                    count: id,
                    last_used: 1,
                }],
            })
            .unwrap_or_default()
        };
        j.append(BATCH, &batch(1)).unwrap_or_else(|e| panic!("{e}"));
        let whole = std::fs::read(dir.join("usage.journal")).unwrap_or_default();
        let mut torn = whole.clone();
        write_record(&mut torn, BATCH, &batch(2)).unwrap_or_else(|e| panic!("{e}"));
        for cut in whole.len() + 1..torn.len() {
            std::fs::write(dir.join("usage.journal"), &torn[..cut]).unwrap_or_default();
            let (_, r) = Journal::open(&dir).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((r.pending.len(), r.next_id), (1, 2), "cut at {cut}");
            assert_eq!(&r.pending[0][..], &batch(1)[..]);
        }
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

    /// The fake backend's whole reading of a batch: its id. (In the benchmark the backend runs on
    /// another core; here it may share the gateway's, so it must cost next to nothing.)
    fn batch_id_of(body: &[u8]) -> u64 {
        usage_codec::id_and_units(body).map_or(0, |(id, _)| id)
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
