//! The customer portal's sign-in: hand-off tokens, server-side sessions and their cookies, and
//! [`Portal`], the part the app state holds. The pages that use it are in `portal`.
//!
//! Sign-in without passwords: the operator's own backend mints a short-lived, single-use
//! hand-off token with the service token (`POST /portal/api/handoff`) and sends its customer to
//! `/portal/login?token=...`. The landing handler checks the token, opens a server-side session,
//! sets the session cookie and redirects to the dashboard, so the token leaves the address bar
//! at once and is worthless afterwards.
//!
//! - Token: `base64url(claims JSON) "." base64url(HMAC-SHA256(key, "tollgate-portal-handoff-v1." || claims))`.
//!   The key is derived from the service token, so every backend sharing that token accepts the
//!   same links and rotating the token invalidates all of them. Claims: role, user id, expiry
//!   (≤ 1 hour) and a random nonce that is remembered until the expiry, which makes the token
//!   single use.
//! - Session: 32 random bytes in an `HttpOnly; SameSite=Lax; Path=/portal` cookie (`Secure`
//!   behind HTTPS, see [`CookieSecure`]). The server keeps only its SHA-256, with the role,
//!   the CSRF token, an absolute expiry and an idle expiry; both are checked on every request.
//!   `SameSite=Lax` rather than `Strict`: the hand-off link arrives from the operator's site, and
//!   browsers withhold `Strict` cookies for the whole redirect chain that such a click starts,
//!   which would bounce every customer off the dashboard. Forms are covered by CSRF tokens and
//!   `Lax` already keeps the cookie off cross-site POSTs.
//!
//! Sessions live in this process's memory: a restart signs everyone out (they sign in again from
//! the operator's site) and, with several backends, `/portal` must reach the same one (sticky
//! routing); the hand-off links themselves work on any backend.

use crate::config::Secret;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

type HmacSha256 = Hmac<Sha256>;

const DOMAIN: &[u8] = b"tollgate-portal-handoff-v1.";
pub const COOKIE: &str = "tg_portal";
pub const HANDOFF_DEFAULT_TTL: i64 = 300;
pub const HANDOFF_MAX_TTL: i64 = 3600;
pub const CUSTOMER_SESSION_TTL: i64 = 8 * 3600;
pub const CUSTOMER_IDLE_TTL: i64 = 30 * 60;
pub const OPERATOR_SESSION_TTL: i64 = 3600;
pub const OPERATOR_IDLE_TTL: i64 = 15 * 60;
/// Sessions kept at most; beyond it the longest-idle one is dropped.
const MAX_SESSIONS: usize = 100_000;
/// One-time form nonces kept per session (pages open in other tabs keep working).
const MAX_NONCES: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Customer(String),
    Operator,
}

impl Role {
    pub fn label(&self) -> &str {
        match self {
            Role::Customer(u) => u,
            Role::Operator => "operator",
        }
    }
    fn ttls(&self) -> (i64, i64) {
        match self {
            Role::Customer(_) => (CUSTOMER_SESSION_TTL, CUSTOMER_IDLE_TTL),
            Role::Operator => (OPERATOR_SESSION_TTL, OPERATOR_IDLE_TTL),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    /// "customer" or "operator".
    role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    exp: i64,
    nonce: String,
}

/// Why a hand-off link was refused; each gets its own message.
#[derive(Debug, PartialEq, Eq)]
pub enum HandoffError {
    Invalid,
    Expired,
    Used,
}

#[derive(Clone, Debug)]
pub struct SessionView {
    /// SHA-256 (hex) of the cookie value: how the server names the session.
    pub digest: String,
    pub role: Role,
    pub csrf: String,
    pub expires_at: i64,
}

struct Session {
    role: Role,
    csrf: String,
    expires_at: i64,
    idle_ttl: i64,
    idle_until: i64,
    nonces: VecDeque<String>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<String, Session>,
    /// Redeemed hand-off nonces until their token's expiry.
    used: HashMap<String, i64>,
}

pub struct Sessions {
    key: [u8; 32],
    inner: Mutex<Inner>,
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn mac(key: &[u8; 32]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

impl Sessions {
    /// `secret` is the service token: the signing key is HMAC(secret, label).
    pub fn new(secret: &str) -> Sessions {
        let mut m = <HmacSha256 as Mac>::new_from_slice(secret.as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(b"tollgate portal hand-off signing key v1");
        let mut key = [0u8; 32];
        key.copy_from_slice(&m.finalize().into_bytes());
        Sessions {
            key,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A signed hand-off token for `role`, valid until `now + ttl`.
    pub fn mint_handoff(&self, role: &Role, now: i64, ttl: i64) -> (String, i64) {
        let exp = now + ttl;
        let claims = Claims {
            role: match role {
                Role::Customer(_) => "customer".into(),
                Role::Operator => "operator".into(),
            },
            user_id: match role {
                Role::Customer(u) => Some(u.clone()),
                Role::Operator => None,
            },
            exp,
            nonce: crate::ids::random_hex(16),
        };
        let body = b64(serde_json::to_string(&claims)
            .unwrap_or_default()
            .as_bytes());
        let mut m = mac(&self.key);
        m.update(DOMAIN);
        m.update(body.as_bytes());
        let sig = b64(&m.finalize().into_bytes());
        (format!("{body}.{sig}"), exp)
    }

    /// Checks a hand-off token (signature in constant time, then expiry, then single use) and
    /// marks it used.
    pub fn redeem(&self, token: &str, now: i64) -> Result<Role, HandoffError> {
        let (body, sig) = token.split_once('.').ok_or(HandoffError::Invalid)?;
        let sig = unb64(sig).ok_or(HandoffError::Invalid)?;
        let mut m = mac(&self.key);
        m.update(DOMAIN);
        m.update(body.as_bytes());
        m.verify_slice(&sig).map_err(|_| HandoffError::Invalid)?;
        let claims: Claims = unb64(body)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(HandoffError::Invalid)?;
        let role = match (claims.role.as_str(), claims.user_id) {
            ("customer", Some(u)) => Role::Customer(u),
            ("operator", None) => Role::Operator,
            _ => return Err(HandoffError::Invalid),
        };
        if claims.exp <= now {
            return Err(HandoffError::Expired);
        }
        let mut inner = self.lock();
        inner.used.retain(|_, exp| *exp > now);
        if inner.used.contains_key(&claims.nonce) {
            return Err(HandoffError::Used);
        }
        inner.used.insert(claims.nonce, claims.exp);
        Ok(role)
    }

    /// Opens a session; returns the cookie value (shown to nobody else) and the session.
    pub fn open(&self, role: Role, now: i64) -> (String, SessionView) {
        let id = crate::ids::token();
        let key = digest(&id);
        let (ttl, idle) = role.ttls();
        let s = Session {
            role: role.clone(),
            csrf: crate::ids::random_hex(32),
            expires_at: now + ttl,
            idle_ttl: idle,
            idle_until: now + idle,
            nonces: VecDeque::new(),
        };
        let view = SessionView {
            digest: key.clone(),
            role,
            csrf: s.csrf.clone(),
            expires_at: s.expires_at,
        };
        let mut inner = self.lock();
        inner
            .sessions
            .retain(|_, s| s.expires_at > now && s.idle_until > now);
        if inner.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.idle_until)
                .map(|(k, _)| k.clone())
            {
                inner.sessions.remove(&oldest);
            }
        }
        inner.sessions.insert(key, s);
        (id, view)
    }

    /// The live session for a cookie value; refreshes its idle expiry. Expired sessions are
    /// removed here, so an expired cookie never works again.
    pub fn get(&self, cookie_value: &str, now: i64) -> Option<SessionView> {
        let key = digest(cookie_value);
        let mut inner = self.lock();
        let live = inner
            .sessions
            .get(&key)
            .is_some_and(|s| s.expires_at > now && s.idle_until > now);
        if !live {
            inner.sessions.remove(&key);
            return None;
        }
        let s = inner.sessions.get_mut(&key)?;
        s.idle_until = (now + s.idle_ttl).min(s.expires_at);
        Some(SessionView {
            digest: key,
            role: s.role.clone(),
            csrf: s.csrf.clone(),
            expires_at: s.expires_at,
        })
    }

    pub fn close(&self, digest: &str) {
        self.lock().sessions.remove(digest);
    }

    /// A one-time nonce for a form whose answer shows a secret (create, rotate): submitting the
    /// same form twice (a reload of the answer) is recognised and creates nothing.
    pub fn issue_nonce(&self, digest: &str) -> String {
        let nonce = crate::ids::random_hex(12);
        if let Some(s) = self.lock().sessions.get_mut(digest) {
            if s.nonces.len() >= MAX_NONCES {
                s.nonces.pop_front();
            }
            s.nonces.push_back(nonce.clone());
        }
        nonce
    }

    /// Consumes a nonce; false when it was never issued to this session or already used.
    pub fn take_nonce(&self, digest: &str, nonce: &str) -> bool {
        let mut inner = self.lock();
        let Some(s) = inner.sessions.get_mut(digest) else {
            return false;
        };
        match s.nonces.iter().position(|n| n == nonce) {
            Some(i) => {
                s.nonces.remove(i);
                true
            }
            None => false,
        }
    }
}

/// The session cookie header value.
pub fn set_cookie(value: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{COOKIE}={value}; Path=/portal; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Clears the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

/// The session cookie's value in a request, if any.
pub fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == COOKIE && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

/// When the session cookie is marked `Secure`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieSecure {
    Auto,
    Always,
    Never,
}

/// The portal's sign-in state, which the app state holds: sessions, the cookie policy and the
/// service token the portal uses for its in-process calls to the payment providers.
pub struct Portal {
    pub sessions: Sessions,
    token: Secret,
    secure: CookieSecure,
}

impl Portal {
    pub fn new(service_token: &Secret) -> Result<Portal, String> {
        let secure = match std::env::var("TOLLGATE_PORTAL_SECURE_COOKIE")
            .ok()
            .as_deref()
        {
            None | Some("") | Some("auto") => CookieSecure::Auto,
            Some("always") => CookieSecure::Always,
            Some("never") => CookieSecure::Never,
            Some(other) => {
                return Err(format!(
                    "TOLLGATE_PORTAL_SECURE_COOKIE: {other:?} must be auto, always or never"
                ))
            }
        };
        Ok(Portal {
            sessions: Sessions::new(service_token.expose()),
            token: service_token.clone(),
            secure,
        })
    }

    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// Whether cookies set in answer to this request get `Secure`; `public_url` is `[backend]
    /// public_url`.
    pub fn secure_cookie(&self, public_url: Option<&str>, headers: &HeaderMap) -> bool {
        match self.secure {
            CookieSecure::Always => true,
            CookieSecure::Never => false,
            CookieSecure::Auto => {
                public_url.is_some_and(|u| u.starts_with("https://"))
                    || forwarded_proto(headers).as_deref() == Some("https")
            }
        }
    }
}

fn forwarded_proto(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new("test-service-token-0123456789")
    }

    #[test]
    fn handoff_round_trip_is_single_use() {
        let s = sessions();
        let role = Role::Customer("alice".into());
        let (token, exp) = s.mint_handoff(&role, 1000, 300);
        assert_eq!(exp, 1300);
        assert_eq!(s.redeem(&token, 1100), Ok(role));
        assert_eq!(s.redeem(&token, 1101), Err(HandoffError::Used));
    }

    #[test]
    fn expired_and_tampered_tokens_are_refused() {
        let s = sessions();
        let (token, _) = s.mint_handoff(&Role::Operator, 1000, 60);
        assert_eq!(s.redeem(&token, 1060), Err(HandoffError::Expired));
        // Another user id under the same signature.
        let (token, _) = s.mint_handoff(&Role::Customer("alice".into()), 1000, 60);
        let (body, sig) = token.split_once('.').unwrap_or_default();
        let claims = String::from_utf8(unb64(body).unwrap_or_default()).unwrap_or_default();
        let forged = b64(claims.replace("alice", "bob").as_bytes());
        assert_eq!(
            s.redeem(&format!("{forged}.{sig}"), 1001),
            Err(HandoffError::Invalid)
        );
        assert_eq!(s.redeem("garbage", 1001), Err(HandoffError::Invalid));
        assert_eq!(s.redeem("a.b", 1001), Err(HandoffError::Invalid));
        // Signed with another service token.
        let other = Sessions::new("another-service-token-0123456789");
        let (token, _) = other.mint_handoff(&Role::Operator, 1000, 60);
        assert_eq!(s.redeem(&token, 1001), Err(HandoffError::Invalid));
    }

    #[test]
    fn sessions_expire_when_idle_and_absolutely() {
        let s = sessions();
        let (id, view) = s.open(Role::Customer("alice".into()), 0);
        assert_eq!(view.expires_at, CUSTOMER_SESSION_TTL);
        // Activity keeps it alive until the absolute end.
        let mut t = 0;
        while t + CUSTOMER_IDLE_TTL - 1 < CUSTOMER_SESSION_TTL {
            t += CUSTOMER_IDLE_TTL - 1;
            assert!(s.get(&id, t).is_some(), "alive at {t}");
        }
        assert!(s.get(&id, CUSTOMER_SESSION_TTL).is_none());
        let (id, _) = s.open(Role::Operator, 0);
        assert!(s.get(&id, OPERATOR_IDLE_TTL).is_none());
        assert!(
            s.get(&id, 1).is_none(),
            "an expired session is gone for good"
        );
        assert!(s.get("not-a-session", 1).is_none());
    }

    #[test]
    fn nonces_are_single_use_and_per_session() {
        let s = sessions();
        let (_, a) = s.open(Role::Customer("a".into()), 0);
        let (_, b) = s.open(Role::Customer("b".into()), 0);
        let n = s.issue_nonce(&a.digest);
        assert!(!s.take_nonce(&b.digest, &n));
        assert!(s.take_nonce(&a.digest, &n));
        assert!(!s.take_nonce(&a.digest, &n));
    }

    #[test]
    fn cookie_attributes() {
        let c = set_cookie("abc", 60, false);
        assert_eq!(
            c,
            "tg_portal=abc; Path=/portal; Max-Age=60; HttpOnly; SameSite=Lax"
        );
        assert!(set_cookie("abc", 60, true).ends_with("; Secure"));
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            axum::http::HeaderValue::from_static("x=1; tg_portal=v123; y=2"),
        );
        assert_eq!(cookie_value(&h).as_deref(), Some("v123"));
    }
}
