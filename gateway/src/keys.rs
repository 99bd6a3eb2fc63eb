//! The key replica: every key the backend knows, by SHA-256 of the key text, in memory.
//!
//! Reads are sharded: 64 `RwLock`ed `HashTable`s selected by one byte of the (uniformly random)
//! hash, so a lookup takes one uncontended read lock and one probe, and the hash bytes are the
//! table hash (no hashing beyond the SHA-256 itself). The feed task is the only writer; it
//! changes one entry at a time under one shard's write lock, so an update never copies the map.
//! A full resync (new database) builds fresh [`Tables`] aside and swaps them in with `arc-swap`,
//! so requests never see a half-loaded replica.
//!
//! Entries are immutable `Arc<KeyEntry>`s carrying what the request path needs, precomputed: the
//! identity header values and an interned [`Tier`] (plan, limits, `RateLimit-Policy` text).
//! A `HashTable` keeps one pointer per bucket, which is what keeps 1 M keys near 250 MB.
//!
//! The replica is saved to `data_dir/keys.snapshot` (with the database id and feed sequence) so a
//! restarted gateway serves known keys while the backend is down.

use arc_swap::ArcSwap;
use hashbrown::HashTable;
use http::HeaderValue;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fmt;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tollgate_protocol::feed::{FeedKey, GraceHash, KeyState};
use tollgate_protocol::keys::{valid_key_id, KeyHash};
use tollgate_protocol::plans::Limits;

/// `key_` + 16 hex digits, held as the number they spell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub u64);

impl KeyId {
    pub fn parse(text: &str) -> Option<KeyId> {
        if !valid_key_id(text) {
            return None;
        }
        u64::from_str_radix(&text[4..], 16).ok().map(KeyId)
    }

    /// A well-spread 64-bit hash of the id (splitmix64's finaliser), for sharding and tables.
    pub fn mix(self) -> u64 {
        let mut z = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl KeyId {
    /// `key_<16 hex>`, rendered without a temporary string (ASCII).
    pub fn text(self) -> [u8; 20] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = *b"key_0000000000000000";
        for i in 0..16 {
            b[4 + i] = HEX[usize::try_from((self.0 >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
        }
        b
    }

    /// `key_<16 hex>` as a header value.
    pub fn header(self) -> HeaderValue {
        HeaderValue::from_bytes(&self.text()).unwrap_or(HeaderValue::from_static("key_invalid"))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key_{:016x}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A plan with its effective limits, shared by every key on it, with header values rendered once.
pub struct Tier {
    pub plan: Box<str>,
    pub plan_header: HeaderValue,
    pub limits: Limits,
    /// `"minute";q=100;w=60, "day";q=5000;w=86400`
    pub policy: HeaderValue,
    /// `per_minute` as text (legacy `X-RateLimit-Limit`).
    pub minute_limit: HeaderValue,
}

/// One key as the request path needs it.
pub struct KeyEntry {
    pub hash: KeyHash,
    pub id: KeyId,
    pub id_header: HeaderValue,
    pub user_header: HeaderValue,
    pub tier: Arc<Tier>,
    pub expires_at: Option<i64>,
    pub revoked: bool,
}

const SHARDS: usize = 64;

/// A rotated-out hash still accepted: (old hash, current hash, until unix seconds).
type GraceRow = (KeyHash, KeyHash, i64);
/// Tiers are interned by plan and effective limits.
type TierKey = (Box<str>, Limits);

fn hash_u64(h: &KeyHash) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.0[..8]);
    u64::from_le_bytes(b)
}

/// Header-safe text: visible ASCII as is, anything else percent-encoded.
fn header_value(text: &str) -> HeaderValue {
    if let Ok(v) = HeaderValue::from_str(text) {
        return v;
    }
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or(HeaderValue::from_static("invalid"))
}

/// One generation of the replica's tables.
pub struct Tables {
    shards: Box<[RwLock<HashTable<Arc<KeyEntry>>>]>,
    /// Writer-side index from key id to entry, to find a key's old hash when it is rotated.
    by_id: Mutex<HashTable<Arc<KeyEntry>>>,
    /// Previous hashes still accepted after a rotation: old hash → (current hash, until).
    grace: RwLock<HashMap<KeyHash, (KeyHash, i64)>>,
    len: AtomicUsize,
}

impl Default for Tables {
    fn default() -> Self {
        Tables::with_capacity(0)
    }
}

impl Tables {
    pub fn with_capacity(n: usize) -> Tables {
        let per = n / SHARDS + n / (SHARDS * 8);
        Tables {
            shards: (0..SHARDS)
                .map(|_| RwLock::new(HashTable::with_capacity(per)))
                .collect(),
            by_id: Mutex::new(HashTable::with_capacity(n)),
            grace: RwLock::new(HashMap::new()),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, h: &KeyHash) -> &RwLock<HashTable<Arc<KeyEntry>>> {
        // Byte 31 picks the shard; bytes 0..8 are the in-table hash: independent bits.
        &self.shards[usize::from(h.0[31]) % SHARDS]
    }

    pub fn get(&self, h: &KeyHash) -> Option<Arc<KeyEntry>> {
        self.shard(h)
            .read()
            .find(hash_u64(h), |e| e.hash == *h)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remove_hash(&self, h: &KeyHash) {
        let mut shard = self.shard(h).write();
        if let Ok(e) = shard.find_entry(hash_u64(h), |e| e.hash == *h) {
            e.remove();
        }
    }

    /// Adds a key known to be new to tables not yet shared (snapshot loading): no locks taken.
    fn insert_loaded(&mut self, entry: KeyEntry) {
        let entry = Arc::new(entry);
        let h = entry.hash;
        self.by_id
            .get_mut()
            .insert_unique(entry.id.mix(), entry.clone(), |e| e.id.mix());
        self.shards[usize::from(h.0[31]) % SHARDS]
            .get_mut()
            .insert_unique(hash_u64(&h), entry, |e| hash_u64(&e.hash));
        *self.len.get_mut() += 1;
    }

    /// Inserts or replaces one key (the feed task is the only caller).
    pub fn apply(&self, entry: KeyEntry, previous: Option<&GraceHash>) {
        let entry = Arc::new(entry);
        let id = entry.id;
        let new_hash = entry.hash;
        let old = {
            let mut by_id = self.by_id.lock();
            match by_id.find_entry(id.mix(), |e| e.id == id) {
                Ok(mut slot) => Some(std::mem::replace(slot.get_mut(), entry.clone())),
                Err(_) => {
                    by_id.insert_unique(id.mix(), entry.clone(), |e| e.id.mix());
                    None
                }
            }
        };
        if let Some(old) = &old {
            if old.hash != entry.hash {
                self.remove_hash(&old.hash);
            }
        } else {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        {
            let h = entry.hash;
            let mut shard = self.shard(&h).write();
            match shard.find_entry(hash_u64(&h), |e| e.hash == h) {
                Ok(mut slot) => *slot.get_mut() = entry,
                Err(_) => {
                    shard.insert_unique(hash_u64(&h), entry, |e| hash_u64(&e.hash));
                }
            }
        }
        let mut grace = self.grace.write();
        if let Some(o) = &old {
            if !grace.is_empty() {
                grace.retain(|_, (current, _)| *current != o.hash);
            }
        }
        if let Some(g) = previous {
            grace.insert(g.hash, (new_hash, g.until));
        }
    }

    /// Every entry and grace hash, for a snapshot.
    fn collect(&self) -> (Vec<Arc<KeyEntry>>, Vec<GraceRow>) {
        let entries = self.by_id.lock().iter().cloned().collect();
        let grace = self
            .grace
            .read()
            .iter()
            .map(|(old, (cur, until))| (*old, *cur, *until))
            .collect();
        (entries, grace)
    }
}

/// The replica: the current tables and how far along the feed they are.
pub struct Replica {
    tables: ArcSwap<Tables>,
    db_id: Mutex<String>,
    seq: AtomicU64,
    head: AtomicU64,
    /// True once the tables hold a complete view (from a snapshot or a finished sync).
    loaded: AtomicBool,
    tiers: Mutex<HashMap<TierKey, Arc<Tier>>>,
    /// Woken whenever `seq` moves (a management answer may wait for its change, see
    /// [`Replica::caught_up`]).
    advanced: tokio::sync::Notify,
}

impl Default for Replica {
    fn default() -> Self {
        Replica::new()
    }
}

/// The outcome of looking a key up.
pub enum Found {
    Key(Arc<KeyEntry>),
    Unknown,
}

impl Replica {
    pub fn new() -> Replica {
        Replica {
            tables: ArcSwap::from_pointee(Tables::default()),
            db_id: Mutex::new(String::new()),
            seq: AtomicU64::new(0),
            head: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            tiers: Mutex::new(HashMap::new()),
            advanced: tokio::sync::Notify::new(),
        }
    }

    /// Waits (at most `limit`) until the replica is loaded and has applied the feed up to
    /// `seq`; `false` if it has not by then. Read-your-writes for changes made through this
    /// gateway: the backend names the feed sequence of its change and the answer waits for it.
    pub async fn caught_up(&self, seq: u64, limit: std::time::Duration) -> bool {
        let wait = async {
            loop {
                let advanced = self.advanced.notified();
                if self.is_loaded() && self.seq() >= seq {
                    return;
                }
                advanced.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// The hot-path lookup: current hash first, then a rotated-out hash still in its grace period.
    pub fn find(&self, hash: &KeyHash, now_secs: i64) -> Found {
        let tables = self.tables.load();
        if let Some(e) = tables.get(hash) {
            return Found::Key(e);
        }
        let current = tables.grace.read().get(hash).copied();
        match current {
            Some((cur, until)) if now_secs < until => {
                tables.get(&cur).map_or(Found::Unknown, Found::Key)
            }
            _ => Found::Unknown,
        }
    }

    pub fn len(&self) -> usize {
        self.tables.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn db_id(&self) -> String {
        self.db_id.lock().clone()
    }

    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Relaxed)
    }

    pub fn set_head(&self, head: u64) {
        self.head.store(head, Ordering::Relaxed);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    pub fn current(&self) -> Arc<Tables> {
        self.tables.load_full()
    }

    /// Applies incremental changes to the live tables and advances the sequence.
    pub fn apply_changes(&self, keys: &[FeedKey], seq: u64) {
        let tables = self.tables.load_full();
        for k in keys {
            self.apply_into(&tables, k);
        }
        self.seq.store(seq, Ordering::Release);
        self.advanced.notify_waiters();
    }

    /// Converts and applies one feed key to `tables` (live or staging).
    pub fn apply_into(&self, tables: &Tables, k: &FeedKey) {
        match self.entry_of(k) {
            Some(e) => tables.apply(e, k.previous.as_ref()),
            None => {
                tracing::warn!(key_id = %k.key_id.chars().take(32).collect::<String>(), "feed sent a key with a malformed id; ignored")
            }
        }
    }

    /// Swaps in tables built by a full sync (or loaded from a snapshot).
    pub fn install(&self, tables: Tables, db_id: &str, seq: u64) {
        self.tables.store(Arc::new(tables));
        *self.db_id.lock() = db_id.to_string();
        self.seq.store(seq, Ordering::Release);
        self.loaded.store(true, Ordering::Release);
        self.advanced.notify_waiters();
    }

    pub fn tier(&self, plan: &str, limits: Limits) -> Arc<Tier> {
        let mut tiers = self.tiers.lock();
        if let Some(t) = tiers.get(&(Box::from(plan), limits)) {
            return t.clone();
        }
        let policy = format!(
            "\"minute\";q={};w=60, \"day\";q={};w=86400",
            limits.per_minute, limits.per_day
        );
        let t = Arc::new(Tier {
            plan: plan.into(),
            plan_header: header_value(plan),
            limits,
            policy: header_value(&policy),
            minute_limit: HeaderValue::from(limits.per_minute),
        });
        tiers.insert((plan.into(), limits), t.clone());
        t
    }

    fn entry_of(&self, k: &FeedKey) -> Option<KeyEntry> {
        let id = KeyId::parse(&k.key_id)?;
        Some(KeyEntry {
            hash: k.hash,
            id,
            id_header: id.header(),
            user_header: header_value(&k.user_id),
            tier: self.tier(&k.plan, k.limits),
            expires_at: k.expires_at,
            revoked: k.state == KeyState::Revoked,
        })
    }

    /// Writes the current tables to `path` atomically (temp file + rename). Blocking: call it
    /// from `spawn_blocking`; it works on a consistent copy of the entry pointers.
    pub fn save_snapshot(&self, path: &Path) -> std::io::Result<usize> {
        let tables = self.tables.load_full();
        let (entries, grace) = tables.collect();
        let db_id = self.db_id();
        let seq = self.seq();
        write_snapshot(path, &db_id, seq, &entries, &grace)?;
        Ok(entries.len())
    }

    /// Loads a snapshot written by [`Replica::save_snapshot`]; `Ok(false)` when there is none.
    pub fn load_snapshot(&self, path: &Path) -> std::io::Result<bool> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mut r = BufReader::with_capacity(1 << 20, file);
        let bad = |what: &str| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("snapshot: {what}"))
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(bad("not a tollgate key snapshot (bad magic)"));
        }
        let db_id = read_str(&mut r)?;
        let seq = read_u64(&mut r)?;
        let count = usize::try_from(read_u64(&mut r)?).map_err(|_| bad("count"))?;
        let mut tables = Tables::with_capacity(count);
        // Loading is single-threaded into tables nobody else sees yet: no locks, reused buffers,
        // and consecutive keys usually share a tier (no interning lookup for them).
        let mut plan_buf = Vec::new();
        let mut user_buf = Vec::new();
        let mut last_tier: Option<Arc<Tier>> = None;
        for _ in 0..count {
            let mut hash = [0u8; 32];
            r.read_exact(&mut hash)?;
            let id = KeyId(read_u64(&mut r)?);
            let flags = read_u8(&mut r)?;
            let expires = read_u64(&mut r)?;
            let limits = Limits {
                per_minute: read_u64(&mut r)?,
                per_day: read_u64(&mut r)?,
            };
            read_bytes(&mut r, &mut plan_buf)?;
            read_bytes(&mut r, &mut user_buf)?;
            let plan = std::str::from_utf8(&plan_buf).map_err(|_| bad("plan is not utf-8"))?;
            let user = std::str::from_utf8(&user_buf).map_err(|_| bad("user id is not utf-8"))?;
            let tier = match &last_tier {
                Some(t) if t.limits == limits && &*t.plan == plan => t.clone(),
                _ => {
                    let t = self.tier(plan, limits);
                    last_tier = Some(t.clone());
                    t
                }
            };
            let expires_at = if flags & 2 != 0 {
                Some(i64::from_le_bytes(expires.to_le_bytes()))
            } else {
                None
            };
            tables.insert_loaded(KeyEntry {
                hash: KeyHash(hash),
                id,
                id_header: id.header(),
                user_header: header_value(user),
                tier,
                expires_at,
                revoked: flags & 1 != 0,
            });
        }
        let grace_count = read_u64(&mut r)?;
        {
            let mut grace = tables.grace.write();
            for _ in 0..grace_count {
                let mut old = [0u8; 32];
                let mut cur = [0u8; 32];
                r.read_exact(&mut old)?;
                r.read_exact(&mut cur)?;
                let until = i64::from_le_bytes(read_u64(&mut r)?.to_le_bytes());
                grace.insert(KeyHash(old), (KeyHash(cur), until));
            }
        }
        let mut end = [0u8; 4];
        r.read_exact(&mut end)?;
        if &end != END {
            return Err(bad("truncated"));
        }
        self.install(tables, &db_id, seq);
        Ok(true)
    }
}

const MAGIC: &[u8; 8] = b"TGKEYS01";
const END: &[u8; 4] = b"END.";

fn write_snapshot(
    path: &Path,
    db_id: &str,
    seq: u64,
    entries: &[Arc<KeyEntry>],
    grace: &[GraceRow],
) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        w.write_all(MAGIC)?;
        write_str(&mut w, db_id)?;
        w.write_all(&seq.to_le_bytes())?;
        w.write_all(
            &u64::try_from(entries.len())
                .unwrap_or(u64::MAX)
                .to_le_bytes(),
        )?;
        for e in entries {
            w.write_all(&e.hash.0)?;
            w.write_all(&e.id.0.to_le_bytes())?;
            let flags = u8::from(e.revoked) | (u8::from(e.expires_at.is_some()) << 1);
            w.write_all(&[flags])?;
            w.write_all(&e.expires_at.unwrap_or(0).to_le_bytes())?;
            w.write_all(&e.tier.limits.per_minute.to_le_bytes())?;
            w.write_all(&e.tier.limits.per_day.to_le_bytes())?;
            write_str(&mut w, &e.tier.plan)?;
            write_str(&mut w, e.user_header.to_str().unwrap_or(""))?;
        }
        w.write_all(&u64::try_from(grace.len()).unwrap_or(u64::MAX).to_le_bytes())?;
        for (old, cur, until) in grace {
            w.write_all(&old.0)?;
            w.write_all(&cur.0)?;
            w.write_all(&until.to_le_bytes())?;
        }
        w.write_all(END)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

fn write_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    let len = u32::try_from(s.len()).map_err(|_| std::io::Error::other("string too long"))?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn read_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

fn read_bytes(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let len = usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
    if len > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "snapshot: string too long",
        ));
    }
    buf.resize(len, 0);
    r.read_exact(buf)
}

fn read_str(r: &mut impl Read) -> std::io::Result<String> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    let len = usize::try_from(u32::from_le_bytes(b)).unwrap_or(usize::MAX);
    if len > 1 << 20 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "snapshot: string too long",
        ));
    }
    let mut s = vec![0u8; len];
    r.read_exact(&mut s)?;
    String::from_utf8(s)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "snapshot: bad utf-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn feed_key(n: u64, plan: &str, limits: Limits) -> FeedKey {
        FeedKey {
            key_id: format!("key_{n:016x}"),
            user_id: format!("user-{n}"),
            plan: plan.to_string(),
            hash: KeyHash::of(&format!("cli_{plan}_secret{n}")),
            previous: None,
            state: KeyState::Active,
            expires_at: None,
            limits,
            seq: n,
        }
    }

    const FREE: Limits = Limits {
        per_minute: 10,
        per_day: 50,
    };

    fn found(r: &Replica, key: &str) -> Option<Arc<KeyEntry>> {
        match r.find(&KeyHash::of(key), 0) {
            Found::Key(e) => Some(e),
            Found::Unknown => None,
        }
    }

    #[test]
    fn ids_roundtrip() {
        let id = KeyId::parse("key_00ff00ff00ff00ff");
        assert_eq!(id, Some(KeyId(0x00ff_00ff_00ff_00ff)));
        assert_eq!(
            id.map(|i| i.to_string()).as_deref(),
            Some("key_00ff00ff00ff00ff")
        );
        assert_eq!(KeyId::parse("key_XYZ"), None);
    }

    #[test]
    fn updates_replace_and_rotation_drops_old_hash() {
        let r = Replica::new();
        r.apply_changes(&[feed_key(1, "free", FREE), feed_key(2, "free", FREE)], 2);
        assert_eq!(r.len(), 2);
        let e = found(&r, "cli_free_secret1")
            .map(|e| (e.tier.plan.to_string(), e.tier.limits.per_minute));
        assert_eq!(e, Some(("free".to_string(), 10)));
        // Plan change: same hash, new tier.
        let mut k = feed_key(
            1,
            "pro",
            Limits {
                per_minute: 100,
                per_day: 5000,
            },
        );
        k.hash = KeyHash::of("cli_free_secret1");
        r.apply_changes(&[k.clone()], 3);
        assert_eq!(
            found(&r, "cli_free_secret1").map(|e| e.tier.limits.per_minute),
            Some(100)
        );
        // Rotation without grace: the old text stops working.
        k.hash = KeyHash::of("cli_pro_new");
        r.apply_changes(&[k.clone()], 4);
        assert!(found(&r, "cli_free_secret1").is_none());
        assert!(found(&r, "cli_pro_new").is_some());
        assert_eq!(r.len(), 2);
        // Rotation with grace: the old one works until `until`.
        k.previous = Some(GraceHash {
            hash: KeyHash::of("cli_pro_new"),
            until: 100,
        });
        k.hash = KeyHash::of("cli_pro_newer");
        r.apply_changes(&[k.clone()], 5);
        assert!(matches!(
            r.find(&KeyHash::of("cli_pro_new"), 99),
            Found::Key(_)
        ));
        assert!(matches!(
            r.find(&KeyHash::of("cli_pro_new"), 100),
            Found::Unknown
        ));
        // Revocation keeps the entry (so the answer is key_revoked, not invalid_key).
        k.state = KeyState::Revoked;
        k.previous = None;
        r.apply_changes(&[k], 6);
        assert_eq!(found(&r, "cli_pro_newer").map(|e| e.revoked), Some(true));
        assert!(matches!(
            r.find(&KeyHash::of("cli_pro_new"), 99),
            Found::Unknown
        ));
        assert_eq!(r.seq(), 6);
    }

    #[test]
    fn snapshot_roundtrip() {
        let dir = std::env::temp_dir().join(format!("tollgate-keys-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("keys.snapshot");
        let r = Replica::new();
        let mut keys: Vec<FeedKey> = (1..=500).map(|n| feed_key(n, "free", FREE)).collect();
        keys[3].state = KeyState::Revoked;
        keys[4].expires_at = Some(1_700_000_000);
        keys[5].previous = Some(GraceHash {
            hash: KeyHash::of("old"),
            until: 5_000,
        });
        let t = Tables::default();
        for k in &keys {
            r.apply_into(&t, k);
        }
        r.install(t, "db-1", 500);
        assert_eq!(r.save_snapshot(&path).ok(), Some(500));
        let r2 = Replica::new();
        assert!(r2.load_snapshot(&path).unwrap_or(false));
        assert_eq!(
            (r2.len(), r2.seq(), r2.db_id()),
            (500, 500, "db-1".to_string())
        );
        assert!(r2.is_loaded());
        assert_eq!(
            found(&r2, "cli_free_secret4").map(|e| e.revoked),
            Some(true)
        );
        assert_eq!(
            found(&r2, "cli_free_secret5").and_then(|e| e.expires_at),
            Some(1_700_000_000)
        );
        assert!(matches!(r2.find(&KeyHash::of("old"), 10), Found::Key(_)));
        let e = found(&r2, "cli_free_secret77");
        assert_eq!(
            e.as_ref().map(|e| e.user_header.to_str().unwrap_or("")),
            Some("user-77")
        );
        assert_eq!(
            e.as_ref().map(|e| e.id_header.to_str().unwrap_or("")),
            Some("key_000000000000004d")
        );
        assert_eq!(r2.load_snapshot(&dir.join("missing")).ok(), Some(false));
        std::fs::write(&path, b"garbage!").ok();
        assert!(r2.load_snapshot(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Writes a snapshot of `TOLLGATE_BENCH_KEYS` (default 1 M) keys to `TOLLGATE_BENCH_SNAPSHOT`,
    /// for measuring a gateway's RSS and load time with that many keys (issue 5's memory figure):
    /// `cargo test --release -p tollgate-gateway -- --ignored write_bench_snapshot`.
    #[test]
    #[ignore]
    fn write_bench_snapshot() {
        let Some(path) = std::env::var_os("TOLLGATE_BENCH_SNAPSHOT") else {
            return;
        };
        let n: u64 = std::env::var("TOLLGATE_BENCH_KEYS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1_000_000);
        let r = Replica::new();
        let t = Tables::with_capacity(usize::try_from(n).unwrap_or(0));
        let plans = [
            ("free", FREE),
            (
                "pro",
                Limits {
                    per_minute: 100,
                    per_day: 5000,
                },
            ),
        ];
        for i in 1..=n {
            let (plan, limits) = plans[usize::from(i % 10 == 0)];
            r.apply_into(&t, &feed_key(i, plan, limits));
        }
        r.install(t, "bench-db", n);
        let start = std::time::Instant::now();
        assert_eq!(
            r.save_snapshot(Path::new(&path)).ok(),
            Some(usize::try_from(n).unwrap_or(0))
        );
        eprintln!("wrote {n} keys in {:?}", start.elapsed());
        let r2 = Replica::new();
        let start = std::time::Instant::now();
        assert!(r2.load_snapshot(Path::new(&path)).unwrap_or(false));
        eprintln!("loaded {} keys in {:?}", r2.len(), start.elapsed());
    }

    #[test]
    fn policy_text() {
        let r = Replica::new();
        let t = r.tier(
            "pro",
            Limits {
                per_minute: 100,
                per_day: 5000,
            },
        );
        assert_eq!(
            t.policy.to_str().ok(),
            Some("\"minute\";q=100;w=60, \"day\";q=5000;w=86400")
        );
        assert!(Arc::ptr_eq(
            &t,
            &r.tier(
                "pro",
                Limits {
                    per_minute: 100,
                    per_day: 5000
                }
            )
        ));
    }
}
