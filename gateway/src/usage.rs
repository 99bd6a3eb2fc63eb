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
//! A SIGKILL loses only what was counted since the last cut: at most one flush interval.

use crate::backend::BackendLink;
use crate::health::Health;
use crate::keys::KeyId;
use crate::metrics::Metrics;
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

    /// Takes everything counted so far.
    pub fn drain(&self) -> Vec<UsageEntry> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let taken = std::mem::take(&mut *shard.lock());
            out.extend(taken.into_iter().map(|p| UsageEntry {
                key_id: p.key.to_string(),
                day: format_day(p.day),
                count: p.count,
                last_used: p.last_used,
            }));
        }
        out
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "lowercase")]
enum Record {
    /// The next batch id to use (written at the top of a compacted journal).
    Next {
        id: u64,
    },
    Batch {
        batch: UsageBatch,
    },
    Ack {
        id: u64,
    },
}

/// The append-only usage journal.
pub struct Journal {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
}

/// What a journal held at start: batches never acknowledged, and the next batch id.
pub struct Replayed {
    pub pending: Vec<UsageBatch>,
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
        let file = Journal::rewrite(&path, next_id, &pending)?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((Journal { path, file, bytes }, Replayed { pending, next_id }))
    }

    fn rewrite(
        path: &Path,
        next_id: u64,
        pending: &[UsageBatch],
    ) -> std::io::Result<std::fs::File> {
        let tmp = path.with_extension("tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            write_record(&mut f, &Record::Next { id: next_id })?;
            for b in pending {
                write_record(&mut f, &Record::Batch { batch: b.clone() })?;
            }
            let f = f.into_inner().map_err(|e| e.into_error())?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, path)?;
        std::fs::OpenOptions::new().append(true).open(path)
    }

    fn append(&mut self, r: &Record) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(r).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        self.bytes += u64::try_from(line.len()).unwrap_or(0);
        Ok(())
    }

    /// Rewrites the journal to just the pending batches once it has grown.
    fn compact_if_large(
        &mut self,
        next_id: u64,
        pending: &VecDeque<UsageBatch>,
    ) -> std::io::Result<()> {
        if self.bytes < (1 << 20) {
            return Ok(());
        }
        let list: Vec<UsageBatch> = pending.iter().cloned().collect();
        self.file = Journal::rewrite(&self.path, next_id, &list)?;
        self.bytes = self.file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(())
    }
}

fn write_record(w: &mut impl Write, r: &Record) -> std::io::Result<()> {
    serde_json::to_writer(&mut *w, r).map_err(std::io::Error::other)?;
    w.write_all(b"\n")
}

/// Cuts, journals and sends batches.
pub struct Shipper {
    counter: Arc<UsageCounter>,
    journal: Arc<Mutex<Journal>>,
    pending: VecDeque<UsageBatch>,
    next_id: u64,
    gateway_id: String,
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
            gateway_id,
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

    /// Runs the journal's blocking file work off the async workers.
    async fn journal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Journal) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let j = self.journal.clone();
        tokio::task::spawn_blocking(move || f(&mut j.lock()))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Moves the counted units into journaled batches.
    async fn cut(&mut self) {
        let mut entries = self.counter.drain();
        while !entries.is_empty() {
            let rest = entries.split_off(entries.len().min(MAX_BATCH_ENTRIES));
            let batch = UsageBatch {
                gateway_id: self.gateway_id.clone(),
                batch_id: self.next_id,
                entries,
            };
            entries = rest;
            self.next_id += 1;
            let record = Record::Batch {
                batch: batch.clone(),
            };
            if let Err(e) = self.journal(move |j| j.append(&record)).await {
                // Still send it: the journal protects against outages, and losing the disk must
                // not also lose the usage. The error is loud because durability is reduced.
                tracing::error!(error = %e, "usage journal write failed");
            }
            self.pending.push_back(batch);
        }
        self.publish_depth();
    }

    /// Sends pending batches in order until one fails. True when none is left.
    async fn send(&mut self) -> bool {
        while let Some(batch) = self.pending.front() {
            match self.link.ingest_usage(batch).await {
                Ok(ack) if ack.batch_id == batch.batch_id => {
                    let units: u64 = batch.entries.iter().map(|e| e.count).sum();
                    if !ack.duplicate {
                        self.metrics.usage_units_shipped.add(units);
                    }
                    self.metrics.usage_batches_sent.add(1);
                    let id = batch.batch_id;
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
                        sent = batch.batch_id,
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
        async fn feed_page(&self, _: u64, _: usize, _: Duration) -> Result<FeedPage, String> {
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
}
