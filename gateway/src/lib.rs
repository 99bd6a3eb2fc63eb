//! tollgate gateway: the key-checking, quota-enforcing reverse proxy.
//!
//! # Layout
//! - [`config`]: `[gateway]`, `[[routes]]`, the gateway's part of `[backend]`, `[[plans]]`;
//!   validated at start, one error line per bad setting.
//! - [`conns`]: the main listener's connections: `max_connections`, idle ones closed first.
//! - [`server`]: start-up, the main and metrics listeners, SIGHUP reload, graceful shutdown.
//! - [`phases`]: **the request path, in one file**: extract key → replica lookup → route/plan
//!   check → reserve quota → forward (the transport's part) → settle (refund on 502/504) →
//!   record usage and metrics; both transports below run it.
//! - [`h1`]: the HTTP/1.1 fast lane: every main-listener connection starts here; ordinary
//!   keep-alive requests on HTTP routes run the phases between two sockets, anything else is
//!   handed (with the bytes read) to hyper and [`phases::Gateway::handle`]. Its idle upstream
//!   connections are kept per upstream address in [`h1::Pools`] (the server's, not the route
//!   table's), so they survive a reload.
//! - [`proxy`]: the hyper transport: own paths, management, and the phases with hyper's client.
//! - [`headers`]: the headers both transports read and write alike (key, identity, hop-by-hop,
//!   `RateLimit`, the JSON error answer).
//! - [`limits`]: header size and time and upstream connection limits, read once for both.
//! - [`forwarded`]: `X-Forwarded-*` and `Forwarded` for the upstream; client-sent values
//!   believed only from `trusted_proxies`.
//! - [`path`]: the normalised request path both request paths route on and forward.
//! - [`routes`]: the route table (host, path prefix), round-robin upstreams, passive health.
//! - [`keys`]: the key replica (sharded, lock-light reads; snapshot in `data_dir`).
//! - [`quota`]: the [`quota::QuotaStore`] trait, [`quota::local`] (sliding log per key) and the
//!   conformance suite every store passes; time from an injected [`quota::Clock`];
//!   [`quota::persist`] saves the in-process state to `data_dir` so a restart keeps the counts.
//! - [`feed`]: keeps the replica in step with the backend's key feed (long-poll).
//! - [`usage`]: admitted units per key and day → append-only journal → backend, idempotently.
//! - [`backend`]: the backend link (embedded in-process or remote HTTP) and management paths.
//! - [`tls`]: the connector of every outgoing client (http, or https with rustls: upstreams,
//!   the backend link) and the listener's reloadable certificate.
//! - [`validate`]: `POST /api/marketplace/keys/validate`, answered by the gateway itself.
//! - [`metrics`], [`health`]: Prometheus text and what `/ready` reports.
//! - [`help`]: the settings reference `--help` prints.
//! - [`body`]: the one body type used end to end.
//!
//! # Layers
//! A module imports only from modules listed before it here (no import cycles):
//! 1. shared pieces: [`body`], [`path`], [`metrics`], [`background`], [`help`], then
//!    [`headers`] → [`forwarded`] → [`config`] → [`limits`] → [`tls`];
//! 2. state: [`keys`], [`quota`], [`health`], [`backend`], [`usage`], [`feed`], [`conns`],
//!    [`routes`];
//! 3. [`phases`];
//! 4. what serves a request: [`validate`], then the transports [`h1`] and [`proxy`];
//! 5. the embedded backend (`embedded`), then [`server`] (and `main`).
//!
//! What a lower module needs from a higher one comes in as a parameter or a generic (the
//! phases call a transport through `phases::Exchange`; the quota saver is handed the store).
//!
//! A request: the fast lane ([`h1::serve`]: parse in place → phases above → pooled upstream
//! connection → response copied back with `RateLimit` headers), or, for what the lane does not
//! take, hyper (HTTP/1.0, HTTP/1.1, h2) → [`phases::Gateway::handle`] → own paths (`/health`,
//! `/ready`, validate) or management (to the backend) or a route → the same phases → upstream
//! via hyper-util's pooled client.
//!
//! # Performance notes
//! No global lock and nothing held across `.await` on the request path: the route table is an
//! `ArcSwap`, the replica, quota and usage tables are sharded with short critical sections,
//! metrics are per-route atomics resolved when the table is built, and header values (identity,
//! `RateLimit-Policy`) are precomputed per key and per tier. The fast lane allocates no buffers per
//! request (its buffers belong to the connection); on the general path, hyper allocates.

pub mod backend;
pub mod background;
pub mod body;
pub mod config;
pub mod conns;
#[cfg(feature = "embedded")]
pub mod embedded;
pub mod feed;
pub mod forwarded;
pub mod h1;
pub mod headers;
pub mod health;
pub mod help;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod path;
pub mod phases;
pub mod proxy;
pub mod quota;
pub mod routes;
pub mod server;
pub mod tls;
pub mod usage;
pub mod validate;
