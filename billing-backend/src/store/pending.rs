//! The stored form of a usage batch that is durable but not yet applied (`usage_pending`).
//!
//! Applying a batch means updating one row per key in two tables. A busy gateway's batch names
//! every active key each second, so the backend coalesces: a batch is stored as one row on
//! arrival, and pending rows are summed per key and applied together every few seconds (or
//! before anything reads usage). This module is the row's payload: the entries one after
//! another, each `u16` key id length, key id, `u8` day length, day, `u64` count, `i64`
//! last use (little-endian).

use super::{StoreError, StoreResult, UsageRow};

/// The payload of `entries`; a key id longer than 65,535 bytes or a day longer than 255 is an
/// error (the usage endpoint accepts neither).
pub fn encode(entries: &[UsageRow<'_>]) -> StoreResult<Vec<u8>> {
    let size: usize = entries
        .iter()
        .map(|e| 2 + e.key_id.len() + 1 + e.day.len() + 16)
        .sum();
    let mut out = Vec::with_capacity(size);
    for e in entries {
        let key_len = u16::try_from(e.key_id.len()).map_err(|_| {
            StoreError::Conflict(format!("usage key id {} bytes long", e.key_id.len()))
        })?;
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

/// Reads a payload back; calls `each` per entry (borrowing its text from the payload). A truncated or non-UTF-8 payload is an error
/// (after the entries before the damage were passed on).
pub fn decode<'a>(mut buf: &'a [u8], mut each: impl FnMut(UsageRow<'a>)) -> StoreResult<()> {
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
    fn text(bytes: &[u8]) -> StoreResult<&str> {
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
        each(UsageRow {
            key_id,
            day,
            count: u64::from_le_bytes(word(&nums[..8])),
            last_used: i64::from_le_bytes(word(&nums[8..])),
        });
    }
    Ok(())
}

/// Units of `key_id` in a payload from entries last used after `since`. Skips other keys
/// without reading their text; a damaged payload counts what precedes the damage.
pub fn units_of(mut buf: &[u8], key_id: &str, since: i64) -> u64 {
    let key = key_id.as_bytes();
    let mut total = 0u64;
    loop {
        let Some((len, rest)) = buf.split_first_chunk::<2>() else {
            return total;
        };
        let key_len = usize::from(u16::from_le_bytes(*len));
        let Some(this) = rest.get(..key_len) else {
            return total;
        };
        let Some(&day_len) = rest.get(key_len) else {
            return total;
        };
        let nums_at = key_len + 1 + usize::from(day_len);
        let Some(nums) = rest.get(nums_at..nums_at + 16) else {
            return total;
        };
        if this == key {
            let mut w = [0u8; 8];
            w.copy_from_slice(&nums[8..]);
            if i64::from_le_bytes(w) > since {
                w.copy_from_slice(&nums[..8]);
                total = total.saturating_add(u64::from_le_bytes(w));
            }
        }
        buf = &rest[nums_at + 16..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::feed::UsageEntry;

    fn encode(entries: &[UsageEntry]) -> StoreResult<Vec<u8>> {
        let rows: Vec<UsageRow<'_>> = entries.iter().map(UsageRow::from).collect();
        super::encode(&rows)
    }

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
            out.push((
                e.key_id.to_string(),
                e.day.to_string(),
                e.count,
                e.last_used,
            ))
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
        assert_eq!(
            decoded(&encode(&[]).expect("empty")).expect("empty"),
            vec![]
        );
    }

    #[test]
    fn units_of_sums_one_key_after_a_time() {
        let buf = encode(&[
            entry("key_a", "2026-11-25", 5, 100),
            entry("key_ab", "2026-11-25", 7, 200),
            entry("key_a", "2026-11-26", 3, 200),
            entry("key_a", "2026-11-26", 2, 50),
        ])
        .expect("encode");
        assert_eq!(units_of(&buf, "key_a", 60), 8, "last use after 60 only");
        assert_eq!(units_of(&buf, "key_a", 0), 10);
        assert_eq!(units_of(&buf, "key_ab", 0), 7, "no prefix matches");
        assert_eq!(units_of(&buf, "key_", 0), 0);
        assert_eq!(
            units_of(&buf[..buf.len() - 1], "key_a", 0),
            8,
            "stops at damage"
        );
        assert_eq!(units_of(&[], "key_a", 0), 0);
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
                assert_eq!(
                    r.expect("a cut between entries is a shorter batch"),
                    whole[..1]
                );
            } else {
                assert!(r.is_err(), "cut at {cut} must fail");
            }
        }
        let mut bad = buf.clone();
        bad[2] = 0xff; // inside the first key id
        assert!(decoded(&bad).is_err(), "invalid UTF-8");
    }
}
