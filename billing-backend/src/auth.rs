//! Service-token and feed-token authentication. Tokens are compared in constant time (on their
//! SHA-256, so length differences leak nothing either) and never logged. Without
//! `TOLLGATE_SERVICE_TOKEN` a token is generated on first start into `data_dir/service_token`
//! (mode 0600) and reused afterwards.

use crate::config::Secret;
use crate::error::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Digest of an accepted token; only the digest is kept in memory.
#[derive(Clone)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    pub fn of(token: &str) -> TokenDigest {
        let mut d = [0u8; 32];
        d.copy_from_slice(&Sha256::digest(token.as_bytes()));
        TokenDigest(d)
    }

    pub fn matches(&self, presented: &str) -> bool {
        let p = TokenDigest::of(presented);
        bool::from(self.0.ct_eq(&p.0))
    }
}

/// Resolves the service token: env, else the file under `data_dir`, else a new one written there.
/// Returns the token and the file path when a file is used.
pub fn service_token(
    configured: Option<&Secret>,
    data_dir: &Path,
) -> std::io::Result<(Secret, Option<PathBuf>)> {
    if let Some(t) = configured {
        return Ok((t.clone(), None));
    }
    let path = data_dir.join("service_token");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let t = existing.trim().to_string();
        if t.len() >= 16 {
            return Ok((Secret::new(t), Some(path)));
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let token = crate::ids::token();
    write_private(&path, &token)?;
    Ok((Secret::new(token), Some(path)))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// The bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let v = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// What the token extractors check a bearer token against; the application state holds the
/// digests and implements it.
pub trait Tokens {
    fn service_token(&self) -> &TokenDigest;
    /// The feed token's digest, when `[backend] feed_token` is set.
    fn feed_token(&self) -> Option<&TokenDigest>;
}

/// Extractor: the request carries the service token. 401 without one, 403 with a wrong one.
pub struct ServiceAuth;

impl<S: Tokens + Sync> FromRequestParts<S> for ServiceAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match bearer(parts) {
            None => Err(ApiError::Unauthorized(
                "missing service token: send Authorization: Bearer <token>".into(),
            )),
            Some(t) if state.service_token().matches(t) => Ok(ServiceAuth),
            Some(_) => Err(ApiError::Forbidden("invalid service token".into())),
        }
    }
}

/// Extractor for the gateway-facing endpoints: the feed token or the service token.
pub struct FeedAuth;

impl<S: Tokens + Sync> FromRequestParts<S> for FeedAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match bearer(parts) {
            None => Err(ApiError::Unauthorized(
                "missing feed token: send Authorization: Bearer <token>".into(),
            )),
            Some(t)
                if state.service_token().matches(t)
                    || state.feed_token().is_some_and(|f| f.matches(t)) =>
            {
                Ok(FeedAuth)
            }
            Some(_) => Err(ApiError::Forbidden("invalid feed token".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_private_and_stable() {
        let dir = std::env::temp_dir().join(format!("tg-auth-{}", crate::ids::random_hex(6)));
        let (a, path) = service_token(None, &dir).unwrap_or_else(|e| panic!("{e}"));
        let (b, _) = service_token(None, &dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.expose(), b.expose());
        let path = path.unwrap_or_default();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            assert_eq!(mode, 0o600);
        }
        assert!(TokenDigest::of(a.expose()).matches(a.expose()));
        assert!(!TokenDigest::of(a.expose()).matches("other"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
