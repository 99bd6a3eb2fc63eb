//! Stripe: the configured account ([`Stripe`], read from `STRIPE_*`), the REST [`client`],
//! the objects we read ([`wire`]) and webhook [`signature`]s. What the backend does with them
//! (endpoints, webhook, metering, catalogue sync) is in `billing::stripe`.
//!
//! # Layout
//! - [`client`]: the REST client (form encoding, pinned `Stripe-Version`, `Idempotency-Key`,
//!   error mapping); [`wire`]: the objects we read, both API generations, status mapping.
//! - [`signature`]: the `Stripe-Signature` check on a webhook's raw body.
//! - this file: settings from the environment.

pub mod client;
pub mod signature;
pub mod wire;

use crate::config::Secret;
use client::StripeClient;
use std::time::Duration;

/// How a new subscription's first payment is collected (`STRIPE_PAYMENT_BEHAVIOR`).
///
/// `default_incomplete` (the default, what Stripe recommends) leaves the subscription
/// `incomplete` and returns a client secret for Stripe.js to confirm. `allow_incomplete` and
/// `error_if_incomplete` charge the customer's default payment method at once; localstripe
/// only knows these two, so its test setup sets `allow_incomplete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentBehavior {
    DefaultIncomplete,
    AllowIncomplete,
    ErrorIfIncomplete,
    PendingIfIncomplete,
}

impl PaymentBehavior {
    fn parse(s: &str) -> Option<PaymentBehavior> {
        Some(match s {
            "default_incomplete" => PaymentBehavior::DefaultIncomplete,
            "allow_incomplete" => PaymentBehavior::AllowIncomplete,
            "error_if_incomplete" => PaymentBehavior::ErrorIfIncomplete,
            "pending_if_incomplete" => PaymentBehavior::PendingIfIncomplete,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentBehavior::DefaultIncomplete => "default_incomplete",
            PaymentBehavior::AllowIncomplete => "allow_incomplete",
            PaymentBehavior::ErrorIfIncomplete => "error_if_incomplete",
            PaymentBehavior::PendingIfIncomplete => "pending_if_incomplete",
        }
    }
}

/// The configured Stripe provider.
pub struct Stripe {
    pub client: StripeClient,
    pub webhook_secret: Option<Secret>,
    pub payment_behavior: PaymentBehavior,
    /// `STRIPE_METER_EVENT_NAME`: the Billing Meter's event name; metering is off without it.
    pub meter_event_name: Option<String>,
    /// `STRIPE_METER_EXPORT_INTERVAL_SECS` (default 3600; 0 turns the periodic export off).
    pub export_interval: Option<Duration>,
    /// Serialises webhook effects in this process so two deliveries for one subscription
    /// cannot interleave their read-decide-write (the watermark guards across processes).
    pub(crate) webhook_lock: tokio::sync::Mutex<()>,
    pub(crate) export_lock: tokio::sync::Mutex<()>,
}

impl Stripe {
    /// Reads `STRIPE_*`; `Ok(None)` when no secret key is set (the provider is off).
    pub fn from_env() -> Result<Option<Stripe>, Vec<String>> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let Some(secret) = env("STRIPE_SECRET_KEY").or_else(|| env("STRIPE_API_KEY")) else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        if !(secret.starts_with("sk_") || secret.starts_with("rk_")) {
            errors.push(
                "STRIPE_SECRET_KEY: must be a Stripe secret or restricted key (sk_... or rk_...)"
                    .to_string(),
            );
        }
        let base = env("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com".to_string());
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            errors.push(format!("STRIPE_API_BASE: {base:?} must be an http(s) URL"));
        }
        let behavior_text =
            env("STRIPE_PAYMENT_BEHAVIOR").unwrap_or_else(|| "default_incomplete".to_string());
        let payment_behavior = PaymentBehavior::parse(&behavior_text);
        if payment_behavior.is_none() {
            errors.push(format!("STRIPE_PAYMENT_BEHAVIOR: {behavior_text:?} must be default_incomplete, allow_incomplete, error_if_incomplete or pending_if_incomplete"));
        }
        let meter_event_name = env("STRIPE_METER_EVENT_NAME");
        if let Some(n) = &meter_event_name {
            if n.len() > 100 {
                errors.push("STRIPE_METER_EVENT_NAME: at most 100 characters".to_string());
            }
        }
        let interval = match env("STRIPE_METER_EXPORT_INTERVAL_SECS") {
            None => Some(Duration::from_secs(3600)),
            Some(t) => match t.parse::<u64>() {
                Ok(0) => None,
                Ok(n) => Some(Duration::from_secs(n)),
                Err(_) => {
                    errors.push(format!(
                        "STRIPE_METER_EXPORT_INTERVAL_SECS: {t:?} is not a whole number of seconds"
                    ));
                    None
                }
            },
        };
        let client = match StripeClient::new(&base, Secret::new(secret)) {
            Ok(c) => Some(c),
            Err(e) => {
                errors.push(e);
                None
            }
        };
        match (client, payment_behavior) {
            (Some(client), Some(payment_behavior)) if errors.is_empty() => Ok(Some(Stripe {
                client,
                webhook_secret: env("STRIPE_WEBHOOK_SECRET").map(Secret::new),
                payment_behavior,
                meter_event_name,
                export_interval: interval,
                webhook_lock: tokio::sync::Mutex::new(()),
                export_lock: tokio::sync::Mutex::new(()),
            })),
            _ => Err(errors),
        }
    }
}
