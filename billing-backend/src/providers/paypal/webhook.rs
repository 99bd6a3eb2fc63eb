//! Offline verification of PayPal webhook signatures.
//!
//! PayPal signs `<transmission_id>|<transmission_time>|<webhook_id>|<crc32(raw body)>` (the
//! CRC32 as an unsigned decimal) with RSA PKCS#1 v1.5 over SHA-256 (`PAYPAL-AUTH-ALGO:
//! SHA256withRSA`), and names in `PAYPAL-CERT-URL` the certificate that holds the public key.
//!
//! The certificate is fetched only from `https` URLs whose host is `paypal.com` or ends with
//! `.paypal.com` (parsed, so `https://api.paypal.com@evil.example/` or `https://paypal.com.evil/`
//! do not pass), on port 443, without redirects. The TLS connection to PayPal's own host is
//! what authenticates the certificate; its validity period is checked too. Certificates are
//! cached by URL (PayPal reuses one for many events).
//!
//! Tests can allow one more URL prefix with `TOLLGATE_TEST_PAYPAL_CERT_PREFIX`, and only on a
//! loopback address (`http://127.0.0.1:<port>/...`): whoever can serve a certificate on the
//! server's own loopback already controls the server, so production stays strict.

use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use x509_cert::der::{DecodePem, Encode};
use x509_cert::Certificate;

/// The only algorithm PayPal uses for webhook signatures.
pub const AUTH_ALGO: &str = "SHA256withRSA";
/// Most certificates kept at once (an attacker can only name `*.paypal.com` URLs, but still).
const MAX_CACHED: usize = 32;
/// Largest certificate file accepted.
const MAX_CERT_BYTES: usize = 64 * 1024;

/// The headers PayPal sends with a webhook.
pub struct Transmission<'a> {
    pub id: &'a str,
    pub time: &'a str,
    pub sig: &'a str,
    pub cert_url: &'a str,
    pub auth_algo: &'a str,
}

/// Why a webhook was not verified.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// Forged, malformed or not from PayPal: 400, nothing changes, PayPal would not retry.
    Rejected(String),
    /// The certificate could not be fetched now: 503, so PayPal retries later.
    Unavailable(String),
}

/// CRC32 (IEEE) of the raw body, as the unsigned decimal PayPal signs.
pub fn crc32_decimal(body: &[u8]) -> String {
    crc32fast::hash(body).to_string()
}

/// The exact text PayPal signs.
pub fn signed_message(transmission_id: &str, time: &str, webhook_id: &str, body: &[u8]) -> String {
    format!(
        "{transmission_id}|{time}|{webhook_id}|{}",
        crc32_decimal(body)
    )
}

/// Checks a certificate URL: PayPal's https hosts, or the loopback test prefix when allowed.
pub fn check_cert_url(url: &str, test_prefix: Option<&str>) -> Result<reqwest::Url, String> {
    if url.len() > 2048 {
        return Err("certificate URL is too long".into());
    }
    let parsed =
        reqwest::Url::parse(url).map_err(|_| "certificate URL is not a URL".to_string())?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("certificate URL must not carry credentials".into());
    }
    if let Some(prefix) = test_prefix {
        if url.starts_with(prefix) && is_loopback(&parsed) {
            return Ok(parsed);
        }
    }
    if parsed.scheme() != "https" {
        return Err("certificate URL must be https".into());
    }
    if parsed.port().is_some_and(|p| p != 443) {
        return Err("certificate URL must use the default https port".into());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
        _ => return Err("certificate URL must name a paypal.com host".into()),
    };
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host == "paypal.com" || host.ends_with(".paypal.com") {
        Ok(parsed)
    } else {
        Err("certificate URL must be on a paypal.com host".into())
    }
}

/// Whether a URL points at this machine's loopback interface.
pub fn is_loopback(u: &reqwest::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// A certificate's RSA key and validity window (unix seconds).
#[derive(Clone)]
pub struct CertKey {
    pub key: RsaPublicKey,
    pub not_before: i64,
    pub not_after: i64,
}

/// Reads the first certificate of a PEM file (PayPal serves the leaf first, then its chain).
pub fn cert_key_from_pem(pem: &[u8]) -> Result<CertKey, String> {
    // The first PEM block only (x509-cert's `load_pem_chain` panics on an empty input).
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(pem, BEGIN).ok_or_else(|| "no PEM certificate in the file".to_string())?;
    let end = find(&pem[start..], END)
        .map(|e| start + e + END.len())
        .ok_or_else(|| "unterminated PEM certificate".to_string())?;
    let leaf = Certificate::from_pem(&pem[start..end])
        .map_err(|e| format!("certificate is not PEM X.509: {e}"))?;
    let spki = leaf
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("certificate key: {e}"))?;
    let key = RsaPublicKey::from_public_key_der(&spki)
        .map_err(|e| format!("certificate key is not RSA: {e}"))?;
    let validity = &leaf.tbs_certificate.validity;
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    Ok(CertKey {
        key,
        not_before: secs(validity.not_before.to_unix_duration()),
        not_after: secs(validity.not_after.to_unix_duration()),
    })
}

/// Verifies a base64 PKCS#1 v1.5 SHA-256 signature over `message`.
pub fn verify_signature(key: &RsaPublicKey, message: &[u8], sig_b64: &str) -> bool {
    use base64::Engine;
    let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(sig_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::try_from(raw.as_slice()) else {
        return false;
    };
    VerifyingKey::<Sha256>::new(key.clone())
        .verify(message, &sig)
        .is_ok()
}

/// Fetches and caches certificates.
pub struct CertSource {
    http: reqwest::Client,
    test_prefix: Option<String>,
    cache: Mutex<HashMap<String, CertKey>>,
}

impl CertSource {
    pub fn new(test_prefix: Option<String>) -> Result<CertSource, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("PayPal certificate client: {e}"))?;
        Ok(CertSource {
            http,
            test_prefix,
            cache: Mutex::new(HashMap::new()),
        })
    }

    fn cached(&self, url: &str) -> Option<CertKey> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(url)
            .cloned()
    }

    async fn key_for(&self, url: &str) -> Result<CertKey, VerifyError> {
        let parsed =
            check_cert_url(url, self.test_prefix.as_deref()).map_err(VerifyError::Rejected)?;
        if let Some(k) = self.cached(url) {
            return Ok(k);
        }
        let resp = self.http.get(parsed).send().await.map_err(|e| {
            VerifyError::Unavailable(format!("fetching the PayPal certificate: {e}"))
        })?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(VerifyError::Unavailable(format!(
                "PayPal certificate host answered {status}"
            )));
        }
        if !status.is_success() {
            return Err(VerifyError::Rejected(format!(
                "certificate URL answered {status}"
            )));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_CERT_BYTES as u64)
        {
            return Err(VerifyError::Rejected("certificate is too large".into()));
        }
        let body = resp.bytes().await.map_err(|e| {
            VerifyError::Unavailable(format!("reading the PayPal certificate: {e}"))
        })?;
        if body.len() > MAX_CERT_BYTES {
            return Err(VerifyError::Rejected("certificate is too large".into()));
        }
        let key = cert_key_from_pem(&body).map_err(VerifyError::Rejected)?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(url.to_string(), key.clone());
        Ok(key)
    }

    /// Verifies one transmission against the raw body. `now` is the real time (unix seconds).
    pub async fn verify(
        &self,
        t: &Transmission<'_>,
        webhook_id: &str,
        body: &[u8],
        now: i64,
    ) -> Result<(), VerifyError> {
        if !t.auth_algo.eq_ignore_ascii_case(AUTH_ALGO) {
            return Err(VerifyError::Rejected(format!(
                "PAYPAL-AUTH-ALGO must be {AUTH_ALGO}"
            )));
        }
        if t.id.is_empty() || t.time.is_empty() || t.sig.is_empty() {
            return Err(VerifyError::Rejected(
                "PAYPAL-TRANSMISSION-ID, -TIME and -SIG are required".into(),
            ));
        }
        let cert = self.key_for(t.cert_url).await?;
        if now < cert.not_before || now > cert.not_after {
            return Err(VerifyError::Rejected(
                "the signing certificate is not valid now".into(),
            ));
        }
        let message = signed_message(t.id, t.time, webhook_id, body);
        if verify_signature(&cert.key, message.as_bytes(), t.sig) {
            Ok(())
        } else {
            Err(VerifyError::Rejected("signature does not verify".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_reference_vector() {
        // PROVIDERS.md §3: crc32fast and Python's zlib.crc32 agree on this body.
        assert_eq!(crc32_decimal(br#"{"id":"evt_1"}"#), "2394574875");
        // Unsigned: a CRC with the high bit set must not print negative.
        assert!(!crc32_decimal(b"a").starts_with('-'));
    }

    #[test]
    fn signed_message_layout() {
        assert_eq!(
            signed_message(
                "69cd13f0-d67a-11e5-baa3-778b53f4ae55",
                "2016-02-18T20:01:35Z",
                "1JE4291016473214C",
                br#"{"id":"evt_1"}"#
            ),
            "69cd13f0-d67a-11e5-baa3-778b53f4ae55|2016-02-18T20:01:35Z|1JE4291016473214C|2394574875"
        );
    }

    #[test]
    fn cert_urls_only_on_paypal_https() {
        let ok = |u: &str| check_cert_url(u, None).is_ok();
        assert!(ok(
            "https://api.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-1d93a270"
        ));
        assert!(ok(
            "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-1"
        ));
        assert!(ok("https://paypal.com/cert"));
        assert!(ok("https://API.PAYPAL.COM/cert"));
        assert!(ok("https://api.paypal.com:443/cert"));
        assert!(!ok("http://api.paypal.com/cert"));
        assert!(!ok("https://api.paypal.com:8443/cert"));
        assert!(!ok("https://paypal.com.evil.example/cert"));
        assert!(!ok("https://evilpaypal.com/cert"));
        assert!(!ok("https://api.paypal.com@evil.example/cert"));
        assert!(!ok("https://user:pw@api.paypal.com/cert"));
        assert!(!ok("https://evil.example\\@api.paypal.com/cert"));
        assert!(!ok("https://evil.example/api.paypal.com"));
        assert!(!ok("https://evil.example/?h=.paypal.com"));
        assert!(!ok("https://1.2.3.4/cert"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("not a url"));
        // The test prefix only opens the loopback URL it names.
        let p = Some("http://127.0.0.1:4000/v1/notifications/certs/");
        assert!(check_cert_url("http://127.0.0.1:4000/v1/notifications/certs/CERT-1", p).is_ok());
        assert!(check_cert_url("http://127.0.0.1:4001/v1/notifications/certs/CERT-1", p).is_err());
        assert!(check_cert_url("http://127.0.0.1:4000/other", p).is_err());
        let remote = Some("http://10.0.0.5/certs/");
        assert!(check_cert_url("http://10.0.0.5/certs/CERT-1", remote).is_err());
    }

    #[test]
    fn garbage_signatures_do_not_verify() {
        // A well-formed public key is not needed to reject undecodable input.
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(cert_key_from_pem(pem).is_err());
        assert!(cert_key_from_pem(b"").is_err());
        assert!(cert_key_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA").is_err());
    }

    #[test]
    fn signatures_verify_only_for_the_signed_message() {
        use base64::Engine;
        use rsa::signature::{SignatureEncoding, Signer};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024)
            .unwrap_or_else(|e| panic!("{e}"));
        let public = private.to_public_key();
        let body = br#"{"id":"WH-1","event_type":"PAYMENT.CAPTURE.COMPLETED"}"#;
        let msg = signed_message("tid-1", "2026-01-01T00:00:00Z", "WH-ID", body);
        let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new(private);
        let sig = base64::engine::general_purpose::STANDARD
            .encode(signer.sign(msg.as_bytes()).to_bytes());
        assert!(verify_signature(&public, msg.as_bytes(), &sig));
        // Any change to the body, the ids or the time breaks it.
        let tampered = signed_message(
            "tid-1",
            "2026-01-01T00:00:00Z",
            "WH-ID",
            br#"{"id":"WH-2"}"#,
        );
        assert!(!verify_signature(&public, tampered.as_bytes(), &sig));
        let other_hook = signed_message("tid-1", "2026-01-01T00:00:00Z", "WH-OTHER", body);
        assert!(!verify_signature(&public, other_hook.as_bytes(), &sig));
        assert!(!verify_signature(&public, msg.as_bytes(), "not base64!"));
        assert!(!verify_signature(&public, msg.as_bytes(), ""));
    }
}
