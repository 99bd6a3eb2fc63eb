//! API keys: `<prefix>_<plan>_<secret>` where the secret is 32 CSPRNG bytes in base64url without
//! padding. Only the SHA-256 of the whole key and its first 12 characters are ever stored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Characters of a key kept in clear to let people recognise it (`cli_pro_AbCd`).
pub const START_LEN: usize = 12;
/// Longest key text accepted before hashing; anything longer is not ours and is not hashed.
pub const MAX_KEY_LEN: usize = 128;

/// SHA-256 of the whole key text. Serialised as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        let mut out = [0u8; 32];
        out.copy_from_slice(&Sha256::digest(key.as_bytes()));
        KeyHash(out)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A hash is not a secret, but it is still an identifier; show a short prefix only.
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

impl Serialize for KeyHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyHash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("key hash must be 64 hex digits"))
    }
}

/// A key id: `key_` + 16 lowercase hex digits.
pub fn valid_key_id(id: &str) -> bool {
    id.len() == 20
        && id.starts_with("key_")
        && id[4..]
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// The first [`START_LEN`] characters of a key, shown in listings instead of the secret.
pub fn key_start(key: &str) -> &str {
    let end = key
        .char_indices()
        .nth(START_LEN)
        .map(|(i, _)| i)
        .unwrap_or(key.len());
    &key[..end]
}

/// Builds the key text from its parts. The secret must already be base64url.
pub fn format_key(prefix: &str, plan: &str, secret_b64: &str) -> String {
    format!("{prefix}_{plan}_{secret_b64}")
}

/// True when `text` looks like a key at all (bounded length, printable ASCII without spaces).
/// Anything else is reported as `invalid_key` without hashing.
pub fn plausible_key(text: &str) -> bool {
    !text.is_empty() && text.len() <= MAX_KEY_LEN && text.bytes().all(|c| c.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_whole_key() {
        // sha256("abc")
        assert_eq!(
            KeyHash::of("abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let h = KeyHash::of("cli_free_x");
        assert_eq!(KeyHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(KeyHash::from_hex("zz"), None);
    }

    #[test]
    fn ids_and_start() {
        assert!(valid_key_id("key_0123456789abcdef"));
        assert!(!valid_key_id("key_0123456789ABCDEF"));
        assert!(!valid_key_id("key_0123"));
        assert_eq!(key_start("cli_free_abcdefgh"), "cli_free_abc");
        assert_eq!(key_start("short"), "short");
        assert!(!plausible_key("a b"));
        assert!(!plausible_key(&"a".repeat(200)));
    }
}
