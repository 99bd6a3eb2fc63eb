//! Keeps the replica in step with the backend's key feed (see `tollgate_protocol::feed`).
//!
//! Pages of keys with `seq > since` until `seq == head`, then long-polls (`wait`) so a change
//! reaches the gateway as soon as the backend commits it. A new `db_id` (first contact, or the
//! backend's database was replaced) starts a full sync into fresh tables that are swapped in
//! only once complete, so requests keep being served from the old view meanwhile. While the
//! backend is unreachable the replica keeps serving what it has; `/ready` says degraded.
//! The replica is saved to `data_dir` after changes (at most every few seconds).

use crate::backend::BackendLink;
use crate::health::Health;
use crate::keys::{Replica, Tables};
use crate::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tollgate_protocol::feed::DEFAULT_PAGE;

/// Least time between two snapshot writes.
const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Longest pause between two attempts while the backend is unreachable: a restarted backend
/// (with edited plans, say) is back in the replica well within a second.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

struct Staging {
    db_id: String,
    tables: Tables,
    seq: u64,
}

pub struct Feed {
    pub link: Arc<dyn BackendLink>,
    pub replica: Arc<Replica>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub snapshot: PathBuf,
    pub wait: Duration,
}

impl Feed {
    async fn save(&self) {
        let replica = self.replica.clone();
        let path = self.snapshot.clone();
        match crate::background::run(move || replica.save_snapshot(&path)).await {
            Ok(Ok(n)) => tracing::debug!(keys = n, "key snapshot saved"),
            Ok(Err(e)) => tracing::warn!(error = %e, "key snapshot not saved"),
            Err(e) => tracing::warn!(error = %e, "key snapshot task failed"),
        }
    }

    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut staging: Option<Staging> = None;
        let mut dirty = false;
        let mut last_save: Option<Instant> = None;
        let mut backoff = Duration::from_millis(100);
        let mut failing = false;
        loop {
            let caught_up = staging.is_none()
                && self.replica.is_loaded()
                && self.replica.seq() >= self.replica.head();
            // Come back in time to save a pending snapshot instead of sitting in a long poll.
            // After a failure, probe without waiting so recovery shows in /ready at once.
            let wait = match (caught_up && !failing, dirty, last_save) {
                (false, _, _) => Duration::ZERO,
                (true, true, Some(at)) => SAVE_EVERY
                    .saturating_sub(at.elapsed())
                    .min(self.wait)
                    .max(Duration::from_secs(1)),
                _ => self.wait,
            };
            let since = staging.as_ref().map_or(self.replica.seq(), |s| s.seq);
            let known = staging
                .as_ref()
                .map_or_else(|| self.replica.db_id(), |s| s.db_id.clone());
            let page = tokio::select! {
                r = self.link.feed_page(since, DEFAULT_PAGE, wait, &known) => r,
                _ = stop.changed() => break,
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    self.metrics.feed_errors.add(1);
                    self.health.feed_reachable(false);
                    if !failing {
                        tracing::warn!(error = %e, keys = self.replica.len(), "key feed unavailable; serving the keys already known");
                        failing = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if failing {
                tracing::info!("key feed reachable again");
                failing = false;
            }
            backoff = Duration::from_millis(100);
            self.health.feed_reachable(true);
            self.replica.set_head(page.head);

            let known_db = staging
                .as_ref()
                .map_or_else(|| self.replica.db_id(), |s| s.db_id.clone());
            if page.db_id != known_db {
                tracing::info!(db_id = %page.db_id, "full key sync from the backend");
                staging = Some(Staging {
                    db_id: page.db_id.clone(),
                    tables: Tables::default(),
                    seq: 0,
                });
                if since != 0 {
                    continue; // this page continued the old database's history: start over at 0
                }
            }
            match staging.as_mut() {
                Some(st) => {
                    for k in &page.keys {
                        self.replica.apply_into(&st.tables, k);
                    }
                    st.seq = page.seq;
                    if page.seq >= page.head {
                        if let Some(st) = staging.take() {
                            let n = st.tables.len();
                            self.replica.install(st.tables, &st.db_id, st.seq);
                            tracing::info!(keys = n, seq = st.seq, "key replica loaded");
                            dirty = true;
                            last_save = None;
                        }
                    }
                }
                None => {
                    if !page.keys.is_empty() {
                        self.replica.apply_changes(&page.keys, page.seq);
                        dirty = true;
                    } else if page.seq > self.replica.seq() {
                        self.replica.apply_changes(&[], page.seq);
                    }
                }
            }
            if staging.is_none() && page.seq >= page.head {
                self.health.synced();
                if dirty && last_save.is_none_or(|at| at.elapsed() >= SAVE_EVERY) {
                    self.save().await;
                    dirty = false;
                    last_save = Some(Instant::now());
                }
            }
        }
        if dirty {
            self.save().await;
        }
    }
}
