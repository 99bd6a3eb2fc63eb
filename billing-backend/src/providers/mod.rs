//! Payment providers, each a pair of files: `mod.rs` (HTTP calls, handlers, base URL from
//! config) and `wire.rs` (wire structs, exhaustive status mapping). They change entitlements
//! only through `billing::save` (subscriptions) and `billing::settle` (payments), so every
//! effect is idempotent and ledgered with its cause.
//!
//! Provider settings come from the environment variables of the original module (SPEC §2).
//! An unconfigured provider is not an error: its endpoints answer 503 `provider_not_configured`.

use crate::app::AppState;
use crate::error::ApiError;
use axum::Router;

/// The configured providers, built once at start.
#[derive(Clone, Default)]
pub struct Providers {}

impl Providers {
    /// Reads provider settings from the environment; one message per bad setting.
    pub fn from_env() -> Result<Providers, Vec<String>> {
        Ok(Providers::default())
    }
}

/// The error every endpoint of an unconfigured provider answers with.
pub fn not_configured(provider: &str, settings: &str) -> ApiError {
    ApiError::Unavailable {
        code: "provider_not_configured",
        message: format!("{provider} is not configured on this server (set {settings})"),
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
}
