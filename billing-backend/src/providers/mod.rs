//! Payment providers, each a pair of files: `mod.rs` (HTTP calls, handlers, base URL from
//! config) and `wire.rs` (wire structs, exhaustive status mapping). They change entitlements
//! only through `billing::save` (subscriptions) and `billing::settle` (payments), so every
//! effect is idempotent and ledgered with its cause.
//!
//! Provider settings come from the environment variables of the original module (SPEC §2).
//! An unconfigured provider is not an error: its endpoints answer 503 `provider_not_configured`.

pub mod paypal;
pub mod sepa;
pub mod stripe;

use crate::app::AppState;
use crate::error::ApiError;
use axum::Router;

/// The configured providers, built once at start.
#[derive(Clone, Default)]
pub struct Providers {
    pub sepa: Option<sepa::api::SepaConfig>,
    pub paypal: Option<std::sync::Arc<paypal::PayPal>>,
    /// Present when `STRIPE_SECRET_KEY` (or `STRIPE_API_KEY`) is set.
    pub stripe: Option<std::sync::Arc<stripe::Stripe>>,
}

/// An environment variable, `None` when unset or empty.
pub fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Providers {
    /// Reads provider settings from the environment; one message per bad setting.
    pub fn from_env() -> Result<Providers, Vec<String>> {
        let mut errors = Vec::new();
        let sepa = sepa::api::SepaConfig::from_env(env).unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        let paypal = paypal::PayPal::from_env().unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        let stripe = stripe::Stripe::from_env().unwrap_or_else(|e| {
            errors.extend(e);
            None
        });
        if errors.is_empty() {
            Ok(Providers {
                sepa,
                paypal: paypal.map(std::sync::Arc::new),
                stripe: stripe.map(std::sync::Arc::new),
            })
        } else {
            Err(errors)
        }
    }
}

/// Starts the providers' background work (the Stripe meter export).
pub fn spawn_background(state: &AppState, stop: tokio::sync::watch::Receiver<bool>) {
    stripe::spawn_background(state, stop);
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
        .merge(sepa::api::router())
        .merge(paypal::router())
        .merge(stripe::router())
}
