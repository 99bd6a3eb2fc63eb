//! The binary form of a usage batch: the body of `POST /internal/usage` sent with content type
//! [`CONTENT_TYPE`] (a `UsageBatch` as JSON stays accepted), and the backend's stored form of a
//! batch's entries. A busy gateway names every active key each second; as JSON that is ~90 bytes
//! an entry to write and to parse, here ~50 to copy.
//!
//! Layout, integers little-endian: [`MAGIC`], `u8` gateway id length, gateway id, `u64` batch id,
//! then entries to the end: `u16` key id length, key id, `u8` day length, day (`YYYY-MM-DD`),
//! `u64` count, `i64` last use (unix seconds).

use crate::feed::{UsageBatch, UsageEntry};

pub const CONTENT_TYPE: &str = "application/vnd.tollgate.usage-batch";
pub const MAGIC: &[u8; 4] = b"TGU1";

/// One entry, its text borrowed from the buffer it was read from (or from a `UsageEntry`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key_id: &'a str,
    /// `YYYY-MM-DD`
    pub day: &'a str,
    pub count: u64,
    /// Unix seconds of the last admitted request counted here.
    pub last_used: i64,
}

impl<'a> From<&'a UsageEntry> for EntryRef<'a> {
    fn from(e: &'a UsageEntry) -> Self {
        EntryRef {
            key_id: &e.key_id,
            day: &e.day,
            count: e.count,
            last_used: e.last_used,
        }
    }
}

/// Starts a batch: magic, gateway id (at most 255 bytes) and batch id.
pub fn put_header(out: &mut Vec<u8>, gateway_id: &str, batch_id: u64) -> Result<(), String> {
    let len = u8::try_from(gateway_id.len())
        .map_err(|_| format!("gateway id is {} bytes long", gateway_id.len()))?;
    out.extend_from_slice(MAGIC);
    out.push(len);
    out.extend_from_slice(gateway_id.as_bytes());
    out.extend_from_slice(&batch_id.to_le_bytes());
    Ok(())
}

/// Appends one entry; a key id longer than 65,535 bytes or a day longer than 255 is an error.
pub fn put_entry(out: &mut Vec<u8>, e: EntryRef<'_>) -> Result<(), String> {
    let key_len = u16::try_from(e.key_id.len())
        .map_err(|_| format!("key id is {} bytes long", e.key_id.len()))?;
    let day_len =
        u8::try_from(e.day.len()).map_err(|_| format!("day is {} bytes long", e.day.len()))?;
    out.extend_from_slice(&key_len.to_le_bytes());
    out.extend_from_slice(e.key_id.as_bytes());
    out.push(day_len);
    out.extend_from_slice(e.day.as_bytes());
    out.extend_from_slice(&e.count.to_le_bytes());
    out.extend_from_slice(&e.last_used.to_le_bytes());
    Ok(())
}

/// Bytes [`put_entry`] writes for `e`.
pub fn entry_len(e: EntryRef<'_>) -> usize {
    2 + e.key_id.len() + 1 + e.day.len() + 16
}

/// A whole batch in binary form.
pub fn encode_batch(batch: &UsageBatch) -> Result<Vec<u8>, String> {
    let entries: usize = batch.entries.iter().map(|e| entry_len(e.into())).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 1 + batch.gateway_id.len() + 8 + entries);
    put_header(&mut out, &batch.gateway_id, batch.batch_id)?;
    for e in &batch.entries {
        put_entry(&mut out, e.into())?;
    }
    Ok(out)
}

fn take<'b>(buf: &mut &'b [u8], n: usize) -> Result<&'b [u8], String> {
    if buf.len() < n {
        return Err("usage batch is truncated".into());
    }
    let (head, rest) = buf.split_at(n);
    *buf = rest;
    Ok(head)
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|_| "usage batch text is not UTF-8".to_string())
}

fn word(bytes: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    w
}

/// Reads a batch's header: gateway id, batch id and the entries' bytes (for [`read_entries`]).
pub fn read_header(mut buf: &[u8]) -> Result<(&str, u64, &[u8]), String> {
    if take(&mut buf, MAGIC.len())? != MAGIC {
        return Err("not a binary usage batch (bad magic)".into());
    }
    let len = usize::from(take(&mut buf, 1)?[0]);
    let gateway_id = text(take(&mut buf, len)?)?;
    let batch_id = u64::from_le_bytes(word(take(&mut buf, 8)?));
    Ok((gateway_id, batch_id, buf))
}

/// Reads entries; calls `each` per entry. Truncated or non-UTF-8 input is an error (after the
/// entries before the damage were passed on).
pub fn read_entries<'a>(
    mut buf: &'a [u8],
    mut each: impl FnMut(EntryRef<'a>),
) -> Result<(), String> {
    while !buf.is_empty() {
        let key_len = take(&mut buf, 2)?;
        let key_len = usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
        let key_id = text(take(&mut buf, key_len)?)?;
        let day_len = usize::from(take(&mut buf, 1)?[0]);
        let day = text(take(&mut buf, day_len)?)?;
        let nums = take(&mut buf, 16)?;
        each(EntryRef {
            key_id,
            day,
            count: u64::from_le_bytes(word(&nums[..8])),
            last_used: i64::from_le_bytes(word(&nums[8..])),
        });
    }
    Ok(())
}

/// Units of `key_id` in entries' bytes, from entries last used after `since`. Skips other keys
/// without reading their text; damaged input counts what precedes the damage.
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
        if this == key && i64::from_le_bytes(word(&nums[8..])) > since {
            total = total.saturating_add(u64::from_le_bytes(word(&nums[..8])));
        }
        buf = &rest[nums_at + 16..];
    }
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

    #[test]
    fn a_batch_round_trips() {
        let batch = UsageBatch {
            gateway_id: "gw-1".into(),
            batch_id: u64::MAX - 1,
            entries: vec![
                entry("key_0123456789abcdef", "2026-11-25", 6, 1_764_000_000),
                entry("kéy", "2026-11-26", u64::MAX, i64::MIN),
                entry(&"k".repeat(usize::from(u16::MAX)), "", 0, -1),
            ],
        };
        let buf = encode_batch(&batch).expect("encode");
        let (gateway_id, batch_id, entries) = read_header(&buf).expect("header");
        let mut back = Vec::new();
        read_entries(entries, |e| {
            back.push(UsageEntry {
                key_id: e.key_id.into(),
                day: e.day.into(),
                count: e.count,
                last_used: e.last_used,
            })
        })
        .expect("entries");
        assert_eq!(
            UsageBatch {
                gateway_id: gateway_id.into(),
                batch_id,
                entries: back
            },
            batch
        );
    }

    #[test]
    fn bad_input_is_refused() {
        let long = UsageBatch {
            gateway_id: "g".repeat(256),
            batch_id: 1,
            entries: vec![],
        };
        assert!(encode_batch(&long).is_err());
        let mut out = Vec::new();
        let key = "k".repeat(usize::from(u16::MAX) + 1);
        let e = entry(&key, "2026-11-25", 1, 0);
        assert!(put_entry(&mut out, (&e).into()).is_err());
        assert!(
            read_header(b"{\"gateway_id\":").is_err(),
            "JSON is not binary"
        );
        let buf = encode_batch(&UsageBatch {
            gateway_id: "gw".into(),
            batch_id: 7,
            entries: vec![
                entry("key_a", "2026-11-25", 1, 2),
                entry("key_b", "2026-11-25", 3, 4),
            ],
        })
        .expect("encode");
        let (_, _, entries) = read_header(&buf).expect("header");
        let whole = entries.len();
        for cut in 1..whole {
            let r = read_entries(&entries[..cut], |_| {});
            assert_eq!(r.is_ok(), cut == whole / 2, "cut at {cut}");
        }
        for cut in 0..buf.len() - whole {
            assert!(read_header(&buf[..cut]).is_err(), "header cut at {cut}");
        }
    }

    #[test]
    fn units_of_sums_one_key_after_a_time() {
        let mut buf = Vec::new();
        for e in [
            entry("key_a", "2026-11-25", 5, 100),
            entry("key_ab", "2026-11-25", 7, 200),
            entry("key_a", "2026-11-26", 3, 200),
            entry("key_a", "2026-11-26", 2, 50),
        ] {
            put_entry(&mut buf, (&e).into()).expect("entry");
        }
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
}
