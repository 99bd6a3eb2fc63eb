//! tollgate billing backend.
//!
//! # Layout
//! - [`config`]: `[backend]` + `[[plans]]` from TOML with `TOLLGATE_BACKEND_*` overrides.
//! - [`app`]: the router and [`Backend`] (start / router / feed / usage / shutdown), used by
//!   `main.rs` and by the gateway in embedded mode; [`state`]: [`AppState`], what the handlers
//!   share, below the routers.
//! - [`store`]: storage traits and the SQL implementation (SQLite default, PostgreSQL).
//! - [`plans`], [`keys`], [`usage`], [`billing`], [`stats`]: one module per domain, each with its
//!   DTOs, handlers and `router()`; [`billing`] also serves the payment providers' endpoints
//!   and webhooks ([`billing::stripe`], [`billing::paypal`], [`billing::sepa`]).
//! - [`portal`]: the customer portal and pricing page (server-rendered HTML under `/portal/`)
//!   and the operator view; sessions by a signed hand-off from the operator's backend.
//! - Below the state, what it holds and nothing that serves HTTP: [`providers`] (each payment
//!   provider's settings, HTTP client and wire format; the SEPA banking formats),
//!   [`session`] (the portal's hand-off tokens and sessions), [`minute`] (the last minute of
//!   usage in memory).
//! - [`feed`]: the key feed and usage ingest that gateways use (`/internal/*`); [`hub`]: the
//!   feed head in memory, which wakes waiting gateways.
//! - [`auth`]: service and feed tokens; [`extract`]: JSON parsing, the `Idempotency-Key`
//!   extractor and the JSON-error backstop; [`idempotency`]: the layer that replays retried
//!   POSTs which create money or entitlement objects;
//!   [`error`]: the one client-facing error type; [`ops`], [`metrics`], [`openapi`]: operations.
//! - [`test_clock`] (`test-clock` feature only): the end-to-end tests' hook that moves time.
//! - [`tls`]: the standalone binary's optional TLS listener (`tls_cert_file`/`tls_key_file`).
//!
//! A request flows: router → `metrics::track` → `extract::json_errors` → `idempotency::guard`
//! (listed POSTs with a key only) → handler (extractors do auth and parsing) → domain function
//! → `store` (one transaction per change, ledger included) → `hub::FeedHub::notify` wakes
//! gateways waiting on the feed.

pub mod app;
pub mod auth;
pub mod billing;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod extract;
pub mod feed;
pub mod hub;
pub mod idempotency;
pub mod ids;
pub mod keys;
pub mod metrics;
pub mod minute;
pub mod openapi;
pub mod ops;
pub mod plans;
pub mod portal;
pub mod providers;
pub mod session;
pub mod state;
pub mod stats;
pub mod store;
#[cfg(feature = "test-clock")]
pub mod test_clock;
pub mod tls;
pub mod usage;

pub use app::Backend;
pub use config::BackendConfig;
pub use state::AppState;
