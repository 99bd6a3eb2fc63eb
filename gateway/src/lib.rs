//! tollgate gateway: the key-checking, quota-enforcing reverse proxy (SPEC §5).
//!
//! # Layout
//! - [`config`]: `[gateway]`, `[[routes]]`, the gateway's part of `[backend]`, `[[plans]]`;
//!   validated at start, one error line per bad setting.
//! - [`server`]: start-up, the main and metrics listeners, SIGHUP reload, graceful shutdown.
//! - [`proxy`]: **the request path, in one file**: extract key → replica lookup → route/plan
//!   check → reserve quota → forward → settle (refund on 502/504) → record usage and metrics.
//! - [`routes`]: the route table (host, path prefix), round-robin upstreams, passive health.
//! - [`keys`]: the key replica (sharded, lock-light reads; snapshot in `data_dir`).
//! - [`quota`]: the [`quota::QuotaStore`] trait, [`quota::local`] (sliding log per key) and the
//!   conformance suite every store passes; time from an injected [`quota::Clock`].
//! - [`feed`]: keeps the replica in step with the backend's key feed (long-poll).
//! - [`usage`]: admitted units per key and day → append-only journal → backend, idempotently.
//! - [`backend`]: the backend link (embedded in-process or remote HTTP) and management paths.
//! - [`validate`]: `POST /api/marketplace/keys/validate`, answered by the gateway itself.
//! - [`metrics`], [`health`]: Prometheus text and what `/ready` reports.
//! - [`body`]: the one body type used end to end.
//!
//! A request: hyper (HTTP/1.1, h2) → [`proxy::Gateway::handle`] → own paths (`/health`,
//! `/ready`, validate) or management (to the backend) or a route → phases above → upstream via
//! the pooled keep-alive client; the response streams back with `RateLimit` headers.
//!
//! # Performance notes
//! No global lock and nothing held across `.await` on the request path: the route table is an
//! `ArcSwap`, the replica, quota and usage tables are sharded with short critical sections,
//! metrics are per-route atomics resolved when the table is built, and header values (identity,
//! `RateLimit-Policy`) are precomputed per key and per tier. The only per-request allocations
//! are the `RateLimit` header value and hyper's own.

pub mod backend;
pub mod body;
pub mod config;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod feed;
pub mod health;
pub mod keys;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod routes;
pub mod server;
pub mod usage;
pub mod validate;
