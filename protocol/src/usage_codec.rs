//! The one encoding of a [`UsageBatch`]: a gateway's journal holds it, `POST /internal/usage`
//! carries it, and the backend stores it. A busy gateway names every active key each second; as
//! JSON that is ~90 bytes an entry to write and to parse, here ~50 to copy, and the backend reads
//! the text in place ([`decode`] gives a view, [`Entries`], not copies).
//!
//! Layout, integers little-endian: `TGU` and the version as an ASCII digit (`1`), `u8` gateway
//! id length, gateway id, `u64` batch id, then entries to the end: `u16` key id length, key id,
//! `u8` day length, day (`YYYY-MM-DD`), `u64` count, `i64` last use (unix seconds).
//!
//! **Versions are negotiated by media type.** A gateway sends [`CONTENT_TYPE`] (the type with
//! `v=<version>`); a backend that does not take that type or version answers 415 with an
//! [`ACCEPT_POST`] header listing what it takes ([`ACCEPTED`]), and the gateway picks from that
//! list ([`choose`]). The bare type, as gateways sent it before versions were named, is
//! version 1. JSON (`application/json`) is the same [`UsageBatch`] for clients of the HTTP API.
//!
//! **Stored payloads** written before whole batches were stored hold only the entries (the
//! layout above from the first entry on); [`stored_entries`] reads both.

use crate::feed::{UsageBatch, UsageEntry};
use serde::ser::{Serialize, SerializeSeq, Serializer};

/// The media type of an encoded batch, without its version.
pub const MEDIA_TYPE: &str = "application/vnd.tollgate.usage-batch";
/// The version [`Encoder`] writes.
pub const VERSION: u8 = 1;
/// What a gateway sends its batches as.
pub const CONTENT_TYPE: &str = "application/vnd.tollgate.usage-batch; v=1";
pub const JSON: &str = "application/json";
/// Response header of a 415 from the usage endpoint: the media types it takes, comma-separated.
pub const ACCEPT_POST: &str = "accept-post";
/// The [`ACCEPT_POST`] value of this version's backend.
pub const ACCEPTED: &str = "application/vnd.tollgate.usage-batch; v=1, application/json";

const MAGIC: &[u8; 3] = b"TGU";

/// A representation of a batch the usage endpoint takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// This codec, in [`VERSION`].
    Binary,
    Json,
}

impl Media {
    /// The media type this representation is sent as.
    pub fn content_type(self) -> &'static str {
        match self {
            Media::Binary => CONTENT_TYPE,
            Media::Json => JSON,
        }
    }

    /// The representation a `Content-Type` (or one item of an [`ACCEPT_POST`] list) names;
    /// None for another type, or for a version of this codec it cannot read.
    pub fn parse(content_type: &str) -> Option<Media> {
        let mut parts = content_type.split(';');
        let essence = parts.next().unwrap_or_default().trim();
        if essence.eq_ignore_ascii_case(JSON) {
            return Some(Media::Json);
        }
        if !essence.eq_ignore_ascii_case(MEDIA_TYPE) {
            return None;
        }
        let mut version = 1;
        for param in parts {
            if let Some((name, value)) = param.split_once('=') {
                if name.trim().eq_ignore_ascii_case("v") {
                    version = value.trim().trim_matches('"').parse::<u8>().ok()?;
                }
            }
        }
        (version == VERSION).then_some(Media::Binary)
    }
}

/// What to send to a backend whose [`ACCEPT_POST`] header is `accept`: this codec when it is
/// listed in a version this side writes, else JSON when listed; None when neither is.
pub fn choose(accept: &str) -> Option<Media> {
    let listed: Vec<Media> = accept.split(',').filter_map(Media::parse).collect();
    [Media::Binary, Media::Json]
        .into_iter()
        .find(|m| listed.contains(m))
}

/// Writes one batch: its header, then entries one at a time (the gateway encodes straight from
/// its counters, without building the entries first).
pub struct Encoder {
    out: Vec<u8>,
}

impl Encoder {
    /// Starts a batch; `entries` is how many are expected (for the buffer's size). A gateway
    /// id is at most 255 bytes.
    pub fn new(gateway_id: &str, batch_id: u64, entries: usize) -> Result<Encoder, String> {
        let len = u8::try_from(gateway_id.len())
            .map_err(|_| format!("gateway id is {} bytes long", gateway_id.len()))?;
        // Entries are mostly `key_` + 16 hex digits and a 10-character day: 49 bytes.
        let mut out = Vec::with_capacity(MAGIC.len() + 2 + gateway_id.len() + 8 + entries * 49);
        out.extend_from_slice(MAGIC);
        out.push(b'0' + VERSION);
        out.push(len);
        out.extend_from_slice(gateway_id.as_bytes());
        out.extend_from_slice(&batch_id.to_le_bytes());
        Ok(Encoder { out })
    }

    /// Appends one entry; a key id longer than 65,535 bytes or a day longer than 255 is an
    /// error.
    pub fn push(&mut self, e: UsageEntry<&str>) -> Result<(), String> {
        let key_len = u16::try_from(e.key_id.len())
            .map_err(|_| format!("key id is {} bytes long", e.key_id.len()))?;
        let day_len =
            u8::try_from(e.day.len()).map_err(|_| format!("day is {} bytes long", e.day.len()))?;
        self.out.extend_from_slice(&key_len.to_le_bytes());
        self.out.extend_from_slice(e.key_id.as_bytes());
        self.out.push(day_len);
        self.out.extend_from_slice(e.day.as_bytes());
        self.out.extend_from_slice(&e.count.to_le_bytes());
        self.out.extend_from_slice(&e.last_used.to_le_bytes());
        Ok(())
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// A whole owned (or borrowed-text) batch.
pub fn encode<S: AsRef<str>>(batch: &UsageBatch<S>) -> Result<Vec<u8>, String> {
    let mut enc = Encoder::new(
        batch.gateway_id.as_ref(),
        batch.batch_id,
        batch.entries.len(),
    )?;
    for e in &batch.entries {
        enc.push(UsageEntry {
            key_id: e.key_id.as_ref(),
            day: e.day.as_ref(),
            count: e.count,
            last_used: e.last_used,
        })?;
    }
    Ok(enc.finish())
}

/// The entries of an encoded batch, checked whole when read ([`decode`]) and then read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries<'a> {
    bytes: &'a [u8],
    len: usize,
}

impl<'a> Entries<'a> {
    fn read(bytes: &'a [u8]) -> Result<Entries<'a>, String> {
        let mut rest = bytes;
        let mut len = 0;
        while !rest.is_empty() {
            next_entry(&mut rest)?;
            len += 1;
        }
        Ok(Entries { bytes, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> EntryIter<'a> {
        EntryIter { rest: self.bytes }
    }

    /// The sum of the entries' counts (saturating).
    pub fn units(&self) -> u64 {
        self.iter().map(|e| e.count).fold(0, u64::saturating_add)
    }
}

impl<'a> IntoIterator for &Entries<'a> {
    type Item = UsageEntry<&'a str>;
    type IntoIter = EntryIter<'a>;
    fn into_iter(self) -> EntryIter<'a> {
        self.iter()
    }
}

/// Serialises as the list of entries, so a decoded batch writes the same JSON as an owned one.
impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len))?;
        for e in self.iter() {
            seq.serialize_element(&e)?;
        }
        seq.end()
    }
}

/// The entries of an [`Entries`], in order.
pub struct EntryIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = UsageEntry<&'a str>;
    fn next(&mut self) -> Option<UsageEntry<&'a str>> {
        if self.rest.is_empty() {
            return None;
        }
        // Checked when the `Entries` was read, so this does not fail.
        next_entry(&mut self.rest).ok()
    }
}

/// A batch read in place: its text borrowed from `buf`.
pub type BatchView<'a> = UsageBatch<&'a str, Entries<'a>>;

impl BatchView<'_> {
    /// The same batch with its own copies of the text.
    pub fn to_owned_batch(&self) -> UsageBatch {
        UsageBatch {
            gateway_id: self.gateway_id.to_string(),
            batch_id: self.batch_id,
            entries: self
                .entries
                .iter()
                .map(|e| UsageEntry {
                    key_id: e.key_id.to_string(),
                    day: e.day.to_string(),
                    count: e.count,
                    last_used: e.last_used,
                })
                .collect(),
        }
    }
}

/// Reads an encoded batch (checking all of it: truncation, UTF-8, the version).
pub fn decode(buf: &[u8]) -> Result<BatchView<'_>, String> {
    let (gateway_id, batch_id, entries) = read_header(buf)?;
    Ok(UsageBatch {
        gateway_id,
        batch_id,
        entries: Entries::read(entries)?,
    })
}

/// The entries of a stored payload: a whole encoded batch, or (stored before whole batches
/// were) its entries alone. Entries name key ids of at most 128 bytes, so an entries-only
/// payload never starts with the magic (its second byte, the key id length's high byte, is 0).
pub fn stored_entries(buf: &[u8]) -> Result<Entries<'_>, String> {
    if buf.starts_with(MAGIC) {
        decode(buf).map(|b| b.entries)
    } else {
        Entries::read(buf)
    }
}

/// The batch id and the sum of the counts of an encoded batch this side wrote, without reading
/// its text: for a gateway's bookkeeping of what it already encoded.
pub fn id_and_units(buf: &[u8]) -> Result<(u64, u64), String> {
    let (_, batch_id, entries) = read_header(buf)?;
    Ok((batch_id, scan(entries, |_, _| true)))
}

/// Units of `key_id` in a stored payload (either form, see [`stored_entries`]), from entries
/// last used after `since`. Skips other keys without reading their text; damaged input counts
/// what precedes the damage.
pub fn units_of(buf: &[u8], key_id: &str, since: i64) -> u64 {
    let entries = if buf.starts_with(MAGIC) {
        match read_header(buf) {
            Ok((_, _, entries)) => entries,
            Err(_) => return 0,
        }
    } else {
        buf
    };
    let key = key_id.as_bytes();
    scan(entries, |this, last_used| this == key && last_used > since)
}

/// Sums the counts of the entries `keep` (given key id bytes and last use) selects.
fn scan(mut buf: &[u8], keep: impl Fn(&[u8], i64) -> bool) -> u64 {
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
        if keep(this, i64::from_le_bytes(word(&nums[8..]))) {
            total = total.saturating_add(u64::from_le_bytes(word(&nums[..8])));
        }
        buf = &rest[nums_at + 16..];
    }
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

/// Gateway id, batch id and the entries' bytes.
fn read_header(mut buf: &[u8]) -> Result<(&str, u64, &[u8]), String> {
    let magic = take(&mut buf, MAGIC.len() + 1)?;
    if &magic[..MAGIC.len()] != MAGIC {
        return Err("not a binary usage batch (bad magic)".into());
    }
    let version = magic[MAGIC.len()].wrapping_sub(b'0');
    if version != VERSION {
        return Err(format!("usage batch version {version} is not supported"));
    }
    let len = usize::from(take(&mut buf, 1)?[0]);
    let gateway_id = text(take(&mut buf, len)?)?;
    let batch_id = u64::from_le_bytes(word(take(&mut buf, 8)?));
    Ok((gateway_id, batch_id, buf))
}

fn next_entry<'a>(buf: &mut &'a [u8]) -> Result<UsageEntry<&'a str>, String> {
    let key_len = take(buf, 2)?;
    let key_len = usize::from(u16::from_le_bytes([key_len[0], key_len[1]]));
    let key_id = text(take(buf, key_len)?)?;
    let day_len = usize::from(take(buf, 1)?[0]);
    let day = text(take(buf, day_len)?)?;
    let nums = take(buf, 16)?;
    Ok(UsageEntry {
        key_id,
        day,
        count: u64::from_le_bytes(word(&nums[..8])),
        last_used: i64::from_le_bytes(word(&nums[8..])),
    })
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

    /// `{gateway_id: "gw", batch_id: 7, entries: [key_a 2026-11-25 ×1 at 2, key_b ×3 at 4]}`
    /// as the encoder of the first binary form (magic `TGU1`) wrote it, byte for byte.
    const V1_BATCH: &[u8] = b"TGU1\x02gw\x07\0\0\0\0\0\0\0\
        \x05\0key_a\x0a2026-11-25\x01\0\0\0\0\0\0\0\x02\0\0\0\0\0\0\0\
        \x05\0key_b\x0a2026-11-25\x03\0\0\0\0\0\0\0\x04\0\0\0\0\0\0\0";

    fn v1_batch() -> UsageBatch {
        UsageBatch {
            gateway_id: "gw".into(),
            batch_id: 7,
            entries: vec![
                entry("key_a", "2026-11-25", 1, 2),
                entry("key_b", "2026-11-25", 3, 4),
            ],
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
        let buf = encode(&batch).expect("encode");
        let view = decode(&buf).expect("decode");
        assert_eq!(view.entries.len(), 3);
        assert_eq!(view.to_owned_batch(), batch);
        assert_eq!(
            serde_json::to_value(&view).expect("json"),
            serde_json::to_value(&batch).expect("json"),
            "a view writes the same JSON as the owned batch"
        );
        assert_eq!(id_and_units(&buf), Ok((u64::MAX - 1, u64::MAX)));
    }

    #[test]
    fn bytes_of_the_first_version_still_decode() {
        assert_eq!(encode(&v1_batch()).expect("encode"), V1_BATCH);
        let view = decode(V1_BATCH).expect("decode");
        assert_eq!(view.to_owned_batch(), v1_batch());
        assert_eq!(id_and_units(V1_BATCH), Ok((7, 4)));
        // A stored payload of that version held the entries without the header.
        let header = 4 + 1 + 2 + 8;
        let stored = stored_entries(&V1_BATCH[header..]).expect("entries-only payload");
        assert_eq!(stored, view.entries);
        assert_eq!(stored_entries(V1_BATCH), Ok(view.entries));
        assert_eq!(units_of(&V1_BATCH[header..], "key_b", 0), 3);
        assert_eq!(units_of(V1_BATCH, "key_b", 0), 3);
    }

    #[test]
    fn bad_input_is_refused() {
        let long = UsageBatch {
            gateway_id: "g".repeat(256),
            batch_id: 1,
            entries: vec![],
        };
        assert!(encode(&long).is_err());
        let key = "k".repeat(usize::from(u16::MAX) + 1);
        let mut enc = Encoder::new("gw", 1, 1).expect("header");
        assert!(enc
            .push(UsageEntry {
                key_id: &key,
                day: "2026-11-25",
                count: 1,
                last_used: 0
            })
            .is_err());
        assert!(decode(b"{\"gateway_id\":").is_err(), "JSON is not binary");
        let mut v9 = V1_BATCH.to_vec();
        v9[3] = b'9';
        assert_eq!(
            decode(&v9).map(|_| ()),
            Err("usage batch version 9 is not supported".to_string())
        );
        // A 15-byte header, then two 34-byte entries: only cuts between entries read.
        for cut in 1..V1_BATCH.len() {
            assert_eq!(
                decode(&V1_BATCH[..cut]).is_ok(),
                [15, 49].contains(&cut),
                "cut at {cut}"
            );
        }
        assert_eq!(
            decode(&V1_BATCH[..V1_BATCH.len() - 3]).map(|_| ()),
            Err("usage batch is truncated".to_string())
        );
    }

    #[test]
    fn units_of_sums_one_key_after_a_time() {
        let buf = encode(&UsageBatch {
            gateway_id: "gw".to_string(),
            batch_id: 1,
            entries: vec![
                entry("key_a", "2026-11-25", 5, 100),
                entry("key_ab", "2026-11-25", 7, 200),
                entry("key_a", "2026-11-26", 3, 200),
                entry("key_a", "2026-11-26", 2, 50),
            ],
        })
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
    fn media_types_and_versions_are_negotiated() {
        assert_eq!(Media::parse(CONTENT_TYPE), Some(Media::Binary));
        assert_eq!(Media::parse(MEDIA_TYPE), Some(Media::Binary), "bare: v1");
        assert_eq!(
            Media::parse("Application/Vnd.Tollgate.Usage-Batch ; v=\"1\""),
            Some(Media::Binary)
        );
        assert_eq!(
            Media::parse("application/vnd.tollgate.usage-batch; v=2"),
            None
        );
        assert_eq!(
            Media::parse("application/vnd.tollgate.usage-batch; v=x"),
            None
        );
        assert_eq!(
            Media::parse("application/json; charset=utf-8"),
            Some(Media::Json)
        );
        assert_eq!(Media::parse("text/plain"), None);
        assert_eq!(choose(ACCEPTED), Some(Media::Binary));
        assert_eq!(choose("application/json"), Some(Media::Json));
        assert_eq!(
            choose("application/vnd.tollgate.usage-batch; v=3, application/json"),
            Some(Media::Json),
            "a newer version only: JSON"
        );
        assert_eq!(choose("text/csv"), None);
        for m in [Media::Binary, Media::Json] {
            assert_eq!(Media::parse(m.content_type()), Some(m));
        }
    }
}
