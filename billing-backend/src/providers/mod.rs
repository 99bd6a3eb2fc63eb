//! Payment providers as the backend sees them: each one's settings, its HTTP calls (`mod.rs`,
//! base URL from the settings) and its wire structs with an exhaustive status mapping
//! (`wire.rs`); the SEPA banking formats. [`Providers`] is the set configured at start, which
//! the app state holds. Nothing here serves HTTP or touches the store: the endpoints and
//! webhooks that use the providers are in `billing` (`billing::stripe`, `billing::paypal`,
//! `billing::sepa`), and change entitlements only through `billing::save` and `billing::settle`.
//!
//! Provider settings come from the same environment variables as the original module
//! (`STRIPE_*`, `PAYPAL_*`, `SEPA_*`). An unconfigured provider is not an error: its endpoints
//! answer 503 `provider_not_configured`.

pub mod paypal;
pub mod sepa;
pub mod stripe;

use crate::error::ApiError;

/// The configured providers, built once at start.
#[derive(Clone, Default)]
pub struct Providers {
    pub sepa: Option<sepa::SepaConfig>,
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
        let sepa = sepa::SepaConfig::from_env(env).unwrap_or_else(|e| {
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

/// The error every endpoint of an unconfigured provider answers with.
pub fn not_configured(provider: &str, settings: &str) -> ApiError {
    ApiError::Unavailable {
        code: "provider_not_configured",
        message: format!("{provider} is not configured on this server (set {settings})"),
    }
}
