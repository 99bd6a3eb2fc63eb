//! Provider events (Stripe and PayPal webhooks) are applied exactly once, across concurrent
//! deliveries and across a crash of the process applying one.
//!
//! A delivery **claims the event with a lease** ([`begin`]): one upsert on `provider_events`
//! that succeeds for the first delivery, and for a later one only when no outcome is recorded
//! and the earlier claim was released or its lease (60 s on the backend's clock) ran out. The
//! holder applies the event and records the outcome with its claim token ([`Lease::finish`]);
//! a transient failure releases the claim so the provider's retry is applied
//! ([`Lease::release`]). Other deliveries meanwhile get [`Begin::Busy`] (the webhook answers
//! 503 and the provider delivers again later) or, once finished, [`Begin::Done`] (200,
//! duplicate). A process killed after its claim leaves a lease that runs out; the redelivery
//! after that applies the event.
//!
//! Why a lease and not claim + effect + outcome in one database transaction: applying an event
//! can call the provider (Stripe: read the subscription a checkout or invoice names; PayPal:
//! read a refunded capture) and writes through several store operations (customer, link,
//! subscription with its ledger entry and feed bump), each its own transaction. Holding one
//! transaction across provider calls would pin SQLite's single connection (every other request
//! waits up to the provider's 30 s timeout) and keep PostgreSQL row locks for as long.
//!
//! What makes a re-application after a crash safe is that every effect is conditional on the
//! state it moves from, so applying an event whose effect already committed changes nothing:
//! a payment settles only out of an expected status, a subscription is written only when it
//! differs (and its watermark accepts the same event again), a customer or link is recorded
//! once. A crash at any point (after the claim, between two writes, after the last write but
//! before the outcome) therefore ends with the effect applied once when the event comes again.
//!
//! A holder must not outlive its lease, or a redelivery could apply the event beside it: the
//! work is bounded by [`APPLY_BUDGET`], well under the lease, and a holder that runs out of it
//! releases the claim and answers 503 (the provider delivers again).
//!
//! Test hook (builds with the `test-clock` feature only): with `TOLLGATE_TEST_CLOCK=1` (the
//! end-to-end tests' switch) and `TOLLGATE_TEST_HANG_AFTER_CLAIM=1`, a delivery stops for good
//! right after its claim committed, so a test can SIGKILL the process exactly between claim and
//! effect. Without the test clock the variable is ignored.

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::EventClaim;
use std::time::Duration;

/// How long a claim keeps other deliveries of the event away, on the backend's clock.
pub const LEASE_SECS: i64 = 60;

/// The most time a delivery spends applying its event (waiting for its turn included).
pub const APPLY_BUDGET: Duration = Duration::from_secs(45);

/// What a delivery should do with its event.
pub enum Begin {
    /// Apply it, then finish or release the lease.
    Apply(Lease),
    /// Applied before: this is the recorded outcome.
    Done(String),
    /// Another delivery is applying it now.
    Busy,
}

/// A delivery's hold on an event.
pub struct Lease {
    provider: &'static str,
    event_id: String,
    token: String,
}

/// Claims `event_id` for this delivery.
pub async fn begin(
    state: &AppState,
    provider: &'static str,
    event_id: &str,
    event_type: &str,
    payload: &str,
) -> Result<Begin, ApiError> {
    let now = state.now();
    let claim = state
        .store()
        .claim_event(
            provider,
            event_id,
            event_type,
            payload,
            now,
            now + LEASE_SECS,
        )
        .await?;
    Ok(match claim {
        EventClaim::Claimed { token, claims } => {
            if claims > 1 {
                tracing::info!(provider, event = %event_id, claims, "event claimed again: an earlier delivery failed or its process stopped before finishing it");
            }
            #[cfg(feature = "test-clock")]
            hang_after_claim_for_tests(state, provider, event_id).await;
            Begin::Apply(Lease {
                provider,
                event_id: event_id.to_string(),
                token,
            })
        }
        EventClaim::Done { outcome } => Begin::Done(outcome),
        EventClaim::Busy { lease_until } => {
            tracing::info!(provider, event = %event_id, lease_until, "event is being applied by another delivery");
            Begin::Busy
        }
    })
}

impl Lease {
    /// Records the outcome: the event is done for good.
    pub async fn finish(self, state: &AppState, outcome: &str) {
        match state
            .store()
            .finish_event(self.provider, &self.event_id, &self.token, outcome)
            .await
        {
            Ok(true) => {}
            // Its effect is in; the delivery that took over records the outcome again.
            Ok(false) => {
                tracing::warn!(provider = self.provider, event = %self.event_id, "event lease lapsed before its outcome was recorded")
            }
            // Unrecorded: the lease lapses and a redelivery finds the effect already applied.
            Err(e) => {
                tracing::warn!(provider = self.provider, event = %self.event_id, error = %e, "could not record the event outcome")
            }
        }
    }

    /// Gives the event up so the provider's next delivery applies it.
    pub async fn release(self, state: &AppState) {
        if let Err(e) = state
            .store()
            .release_event(self.provider, &self.event_id, &self.token)
            .await
        {
            // The lease then runs out instead.
            tracing::warn!(provider = self.provider, event = %self.event_id, error = %e, "could not release a failed event");
        }
    }
}

/// The answer to a delivery that met another one applying the same event: 503, so the provider
/// delivers it again (Stripe and PayPal retry on any non-2xx).
pub fn busy() -> ApiError {
    ApiError::Unavailable {
        code: "event_in_progress",
        message: "this event is being applied by another delivery; deliver it again later".into(),
    }
}

/// The end-to-end tests' failpoint (see the module doc): never returns when armed.
#[cfg(feature = "test-clock")]
async fn hang_after_claim_for_tests(state: &AppState, provider: &str, event_id: &str) {
    if state.test_clock().is_none()
        || std::env::var("TOLLGATE_TEST_HANG_AFTER_CLAIM").as_deref() != Ok("1")
    {
        return;
    }
    tracing::warn!(provider, event = %event_id, "test failpoint: event claimed; stopping here until the process is killed");
    std::future::pending::<()>().await;
}
