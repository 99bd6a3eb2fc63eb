//! Random identifiers and secrets from the operating system's CSPRNG.

use base64::Engine;

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // The OS generator failing is not recoverable; an id or key must never be predictable.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("operating system random generator failed: {e}");
    }
    buf
}

/// `key_` + 16 lowercase hex digits.
pub fn key_id() -> String {
    format!("key_{}", random_hex(8))
}

/// A prefixed id such as `sub_…` or `pay_…` (24 hex digits).
pub fn prefixed(prefix: &str) -> String {
    format!("{prefix}_{}", random_hex(12))
}

/// The secret part of an API key: 32 random bytes, base64url without padding (43 chars).
pub fn key_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32))
}

/// A token for service or feed authentication (32 random bytes, base64url).
pub fn token() -> String {
    key_secret()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shapes() {
        let id = super::key_id();
        assert!(tollgate_protocol::keys::valid_key_id(&id), "{id}");
        assert_eq!(super::key_secret().len(), 43);
        assert_ne!(super::key_secret(), super::key_secret());
        assert!(super::prefixed("sub").starts_with("sub_"));
    }
}
