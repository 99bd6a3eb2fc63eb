//! The last minute of usage in memory: what `GET /api/marketplace/keys/{id}/usage` shows as
//! `current_minute_usage`. The app state holds one [`MinuteWindow`]; `usage` fills and reads it.

use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Mutex;
use tollgate_protocol::usage_codec;

/// Units reported by gateways per key over the last 60 s, by the time of last use; this is
/// what `current_minute_usage` shows (the gateways enforce the exact window themselves).
///
/// Kept as the last minute's batches in their one encoding ([`usage_codec`]), the same
/// bytes the store keeps: recording a batch shares them, with no per-key work (a per-key map
/// cost a hash lookup and two cache misses per entry, ~18 % of the ingest), and a read scans
/// what arrived in the last minute (for 10 k active keys, 600 k entries: a few milliseconds).
#[derive(Default)]
pub struct MinuteWindow {
    batches: Mutex<VecDeque<Recent>>,
}

struct Recent {
    received: i64,
    /// Newest `last_used` in the batch: it leaves the window once this is a minute old.
    newest: i64,
    payload: Bytes,
}

impl MinuteWindow {
    /// Takes a batch that arrived at `now`; `newest` is its newest `last_used`.
    pub fn record(&self, payload: Bytes, newest: i64, now: i64) {
        let mut batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
        batches.push_back(Recent {
            received: now,
            newest,
            payload,
        });
        // Batches are in arrival order; a gateway whose clock runs ahead keeps its batch at
        // most two minutes.
        while batches
            .front()
            .is_some_and(|b| b.newest <= now - 60 || b.received <= now - 120)
        {
            batches.pop_front();
        }
    }

    pub fn current(&self, key_id: &str, now: i64) -> u64 {
        let recent: Vec<Bytes> = {
            let batches = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            batches
                .iter()
                .filter(|b| b.newest > now - 60)
                .map(|b| b.payload.clone())
                .collect()
        };
        recent
            .iter()
            .map(|p| usage_codec::units_of(p, key_id, now - 60))
            .fold(0u64, u64::saturating_add)
    }
}
