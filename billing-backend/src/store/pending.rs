//! The stored form of a usage batch that is durable but not yet applied (`usage_pending`).
//!
//! Applying a batch means updating one row per key in two tables. A busy gateway's batch names
//! every active key each second, so the backend coalesces: a batch is stored as one row on
//! arrival, and pending rows are summed per key and applied together every few seconds (or
//! before anything reads usage). This module is the row's payload: the entries one after
//! another, each `u16` key id length, key id, `u8` day length, day, `u64` count, `i64`
//! last use (little-endian).

use super::{StoreError, StoreResult};
use tollgate_protocol::feed::UsageEntry;

/// One entry of a stored batch, borrowing its text from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingEntry<'a> {
    pub key_id: &'a str,
    pub day: &'a str,
    pub count: u64,
    pub last_used: i64,
}

/// The payload of `entries`; a key id longer than 65,535 bytes or a day longer than 255 is an
/// error (the usage endpoint accepts neither).
pub fn encode(entries: &[UsageEntry]) -> StoreResult<Vec<u8>> {
    let size: usize = entries
        .iter()
        .map(|e| 2 + e.key_id.len() + 1 + e.day.len() + 16)
        .sum();
    let mut out = Vec::with_capacity(size);
    for e in entries {
        let key_len = u16::try_from(e.key_id.len())
            .map_err(|_| StoreError::Conflict(format!("usage key id {} bytes long", e.key_id.len())))?;
        let day_len = u8::try_from(e.day.len())
            .map_err(|_| StoreError::Conflict(format!("usage day {} bytes long", e.day.len())))?;
        out.extend_from_slice(&key_len.to_le_bytes());
        out.extend_from_slice(e.key_id.as_bytes());
        out.push(day_len);
        out.extend_from_slice(e.day.as_bytes());
        out.extend_from_slice(&e.count.to_le_bytes());
        out.extend_from_slice(&e.last_used.to_le_bytes());
    }
    Ok(out)
}

/// Reads a payload back; calls `each` per entry. A truncated or non-UTF-8 payload is an error
/// (after the entries before the damage were passed on).
pub fn decode<'a>(mut buf: &'a [u8], mut each: impl FnMut(PendingEntry<'a>)) -> StoreResult<()> {
    fn take<'b>(buf: &mut &'b [u8], n: usize) -> StoreResult<&'b [u8]> {
        if buf.len() < n {
            return Err(StoreError::Internal(
                "pending usage payload is truncated".into(),
            ));
        }
        let (head, rest) = buf.split_at(n);
        *buf = rest;
        Ok(head)
    }
    fn text<'b>(bytes: &'b [u8]) -> StoreResult<&'b str> {
        std::str::from_utf8(bytes)
            .map_err(|_| StoreError::Internal("pending usage payload is not UTF-8".into()))
    }
    fn word(bytes: &[u8]) -> [u8; 8] {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes);
        w
    }
    while !buf.is_empty() {
        let key_len = take(&mut buf, 2)?;
        let key_len = usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
        let key_id = text(take(&mut buf, key_len)?)?;
        let day_len = usize::from(take(&mut buf, 1)?[0]);
        let day = text(take(&mut buf, day_len)?)?;
        let nums = take(&mut buf, 16)?;
        each(PendingEntry {
            key_id,
            day,
            count: u64::from_le_bytes(word(&nums[..8])),
            last_used: i64::from_le_bytes(word(&nums[8..])),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_id: &str, day: &str, count: u64, last_used: i64) -> UsageEntry {
        UsageEntry {
            key_id: key_id.into(),
            day: day.into(),
            count,
            last_used,
        }
    }

    fn decoded(buf: &[u8]) -> StoreResult<Vec<(String, String, u64, i64)>> {
        let mut out = Vec::new();
        decode(buf, |e| {
            out.push((e.key_id.to_string(), e.day.to_string(), e.count, e.last_used))
        })?;
        Ok(out)
    }

    #[test]
    fn entries_round_trip() {
        let entries = vec![
            entry("key_0123456789abcdef", "2026-11-25", 6, 1_764_000_000),
            entry("", "", 0, -1),
            entry("kéy", "2026-11-26", u64::MAX, i64::MIN),
            entry(&"k".repeat(usize::from(u16::MAX)), "2026-11-26", 1, 0),
        ];
        let buf = encode(&entries).expect("encode");
        let back = decoded(&buf).expect("decode");
        let want: Vec<_> = entries
            .iter()
            .map(|e| (e.key_id.clone(), e.day.clone(), e.count, e.last_used))
            .collect();
        assert_eq!(back, want);
        assert_eq!(decoded(&encode(&[]).expect("empty")).expect("empty"), vec![]);
    }

    #[test]
    fn oversized_fields_are_refused() {
        let long_key = entry(&"k".repeat(usize::from(u16::MAX) + 1), "2026-11-25", 1, 0);
        assert!(matches!(encode(&[long_key]), Err(StoreError::Conflict(_))));
        let long_day = entry("key_1", &"d".repeat(256), 1, 0);
        assert!(matches!(encode(&[long_day]), Err(StoreError::Conflict(_))));
    }

    #[test]
    fn damage_is_an_error_at_every_cut() {
        let buf = encode(&[
            entry("key_a", "2026-11-25", 1, 2),
            entry("key_b", "2026-11-25", 3, 4),
        ])
        .expect("encode");
        let whole = decoded(&buf).expect("whole");
        let first_len = buf.len() / 2;
        for cut in 1..buf.len() {
            let r = decoded(&buf[..cut]);
            if cut == first_len {
                assert_eq!(r.expect("a cut between entries is a shorter batch"), whole[..1]);
            } else {
                assert!(r.is_err(), "cut at {cut} must fail");
            }
        }
        let mut bad = buf.clone();
        bad[2] = 0xff; // inside the first key id
        assert!(decoded(&bad).is_err(), "invalid UTF-8");
    }
}
