//! The stored form of a usage batch that is durable but not yet applied (`usage_pending`).
//!
//! Applying a batch means updating one row per key in two tables. A busy gateway's batch names
//! every active key each second, so the backend coalesces: a batch is stored as one row on
//! arrival, and pending rows are summed per key and applied together every few seconds (or
//! before anything reads usage). The row's payload is the batch's entries in the binary usage
//! format ([`tollgate_protocol::usage_wire`], without its header).

use super::{StoreError, StoreResult, UsageRow};
use tollgate_protocol::usage_wire;

pub use usage_wire::units_of;

/// The payload of `rows`; a key id longer than 65,535 bytes or a day longer than 255 is an
/// error (the usage endpoint accepts neither).
pub fn encode(rows: &[UsageRow<'_>]) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(rows.iter().map(|r| usage_wire::entry_len(*r)).sum());
    for r in rows {
        usage_wire::put_entry(&mut out, *r)
            .map_err(|e| StoreError::Conflict(format!("usage {e}")))?;
    }
    Ok(out)
}

/// Reads a payload back; calls `each` per entry (borrowing its text from the payload). A
/// truncated or non-UTF-8 payload is an error (after the entries before the damage were passed
/// on).
pub fn decode<'a>(buf: &'a [u8], each: impl FnMut(UsageRow<'a>)) -> StoreResult<()> {
    usage_wire::read_entries(buf, each)
        .map_err(|e| StoreError::Internal(format!("pending usage payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::feed::UsageEntry;

    fn entry(key_id: &str, day: &str, count: u64, last_used: i64) -> UsageEntry {
        UsageEntry {
            key_id: key_id.into(),
            day: day.into(),
            count,
            last_used,
        }
    }

    #[test]
    fn rows_round_trip_and_damage_is_an_error() {
        let entries = [
            entry("key_0123456789abcdef", "2026-11-25", 6, 1_764_000_000),
            entry("key_1", "2026-11-26", 1, 2),
        ];
        let rows: Vec<UsageRow<'_>> = entries.iter().map(UsageRow::from).collect();
        let buf = encode(&rows).expect("encode");
        let mut back = Vec::new();
        decode(&buf, |r| back.push(r)).expect("decode");
        assert_eq!(back, rows);
        assert!(matches!(
            decode(&buf[..buf.len() - 1], |_| {}),
            Err(StoreError::Internal(_))
        ));
        let long = entry(&"k".repeat(70_000), "2026-11-25", 1, 0);
        assert!(matches!(
            encode(&[UsageRow::from(&long)]),
            Err(StoreError::Conflict(_))
        ));
    }
}
