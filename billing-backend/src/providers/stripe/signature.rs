//! `Stripe-Signature` verification, on the raw body before anything parses it.
//!
//! Header: `t=<unix>,v1=<hex>[,v1=<hex>...][,v0=...]`. Expected signature:
//! `hex(HMAC-SHA256(key = the whsec_... string as bytes, "<t>.<raw body>"))`. Any `v1` may
//! match (Stripe sends one per active secret while a secret rolls); other schemes are ignored.
//! Comparison is constant-time. The timestamp must be within the tolerance of our clock
//! (either direction), so a captured delivery cannot be replayed later.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Stripe's SDK default.
pub const TOLERANCE_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigError {
    Missing,
    Malformed(&'static str),
    NoV1,
    Mismatch,
    Stale { age: i64 },
}

impl SigError {
    pub fn message(&self) -> String {
        match self {
            SigError::Missing => "missing Stripe-Signature header".into(),
            SigError::Malformed(why) => format!("malformed Stripe-Signature header: {why}"),
            SigError::NoV1 => "Stripe-Signature has no v1 signature".into(),
            SigError::Mismatch => "Stripe-Signature does not match the payload".into(),
            SigError::Stale { age } => format!(
                "Stripe-Signature timestamp is {age} s from now, outside the {TOLERANCE_SECS} s tolerance"
            ),
        }
    }
}

/// Hex HMAC-SHA256 of `t.payload`, as Stripe computes it.
pub fn sign(secret: &[u8], t: i64, payload: &[u8]) -> String {
    hex::encode(mac(secret, t, payload))
}

fn mac(secret: &[u8], t: i64, payload: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match <Hmac<Sha256> as Mac>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return [0u8; 32],
    };
    m.update(t.to_string().as_bytes());
    m.update(b".");
    m.update(payload);
    m.finalize().into_bytes().into()
}

/// Verifies the header against the raw payload; returns the signed timestamp.
pub fn verify(
    header: Option<&str>,
    payload: &[u8],
    secret: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<i64, SigError> {
    let header = header.ok_or(SigError::Missing)?;
    if header.len() > 4096 {
        return Err(SigError::Malformed("too long"));
    }
    let mut t: Option<i64> = None;
    let mut v1: Vec<[u8; 32]> = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(SigError::Malformed("expected key=value pairs"))?;
        match k {
            "t" => {
                if t.is_some() {
                    return Err(SigError::Malformed("more than one timestamp"));
                }
                t = Some(
                    v.parse::<i64>()
                        .map_err(|_| SigError::Malformed("timestamp is not an integer"))?,
                );
            }
            "v1" => {
                // A value that is not 32 bytes of hex can never match; skip it rather than
                // failing, as Stripe's libraries do.
                let mut buf = [0u8; 32];
                if hex::decode_to_slice(v, &mut buf).is_ok() {
                    v1.push(buf);
                }
            }
            _ => {}
        }
    }
    let t = t.ok_or(SigError::Malformed("no timestamp"))?;
    if v1.is_empty() {
        return Err(SigError::NoV1);
    }
    let expected = mac(secret, t, payload);
    let mut ok = subtle::Choice::from(0u8);
    for candidate in &v1 {
        ok |= candidate.ct_eq(&expected);
    }
    if !bool::from(ok) {
        return Err(SigError::Mismatch);
    }
    let age = now.saturating_sub(t);
    if age.abs() > tolerance {
        return Err(SigError::Stale { age });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_s3cr3t";
    const BODY: &[u8] = br#"{"id":"evt_1"}"#;
    const T: i64 = 1_795_541_753;
    /// The verified vector from PROVIDERS.md (Python's hmac and this code agree).
    const V1: &str = "17ea0f309b4a9a10720eb5caa12aff0071bb4bb749bf62b0684ad6d6da4ae665";

    #[test]
    fn known_vector() {
        assert_eq!(sign(SECRET, T, BODY), V1);
        let h = format!("t={T},v1={V1}");
        assert_eq!(verify(Some(&h), BODY, SECRET, T + 10, 300), Ok(T));
    }

    #[test]
    fn any_v1_may_match_and_other_schemes_are_ignored() {
        let other = "0".repeat(64);
        let h = format!("t={T},v0=abc,v1={other},v1={V1}");
        assert_eq!(verify(Some(&h), BODY, SECRET, T, 300), Ok(T));
        let h = format!("t={T}, v1=nothex, v1={V1}");
        assert_eq!(verify(Some(&h), BODY, SECRET, T, 300), Ok(T));
    }

    #[test]
    fn forged_or_tampered_is_refused() {
        let forged = sign(b"whsec_other", T, BODY);
        let h = format!("t={T},v1={forged}");
        assert_eq!(
            verify(Some(&h), BODY, SECRET, T, 300),
            Err(SigError::Mismatch)
        );
        let h = format!("t={T},v1={V1}");
        assert_eq!(
            verify(Some(&h), br#"{"id":"evt_2"}"#, SECRET, T, 300),
            Err(SigError::Mismatch)
        );
        // The timestamp is signed too: moving it breaks the signature.
        let h = format!("t={},v1={V1}", T + 1);
        assert_eq!(
            verify(Some(&h), BODY, SECRET, T, 300),
            Err(SigError::Mismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let h = format!("t={T},v1={V1}");
        assert_eq!(verify(Some(&h), BODY, SECRET, T + 300, 300), Ok(T));
        assert_eq!(
            verify(Some(&h), BODY, SECRET, T + 301, 300),
            Err(SigError::Stale { age: 301 })
        );
        assert_eq!(
            verify(Some(&h), BODY, SECRET, T - 301, 300),
            Err(SigError::Stale { age: -301 })
        );
    }

    #[test]
    fn malformed_headers() {
        for (h, want) in [
            (None, SigError::Missing),
            (
                Some("garbage"),
                SigError::Malformed("expected key=value pairs"),
            ),
            (
                Some("t=abc,v1=00"),
                SigError::Malformed("timestamp is not an integer"),
            ),
            (Some("v1=00"), SigError::Malformed("no timestamp")),
            (
                Some("t=1,t=2,v1=00"),
                SigError::Malformed("more than one timestamp"),
            ),
            (Some("t=1795541753,v0=00"), SigError::NoV1),
        ] {
            assert_eq!(verify(h, BODY, SECRET, T, 300), Err(want), "{h:?}");
        }
    }
}
