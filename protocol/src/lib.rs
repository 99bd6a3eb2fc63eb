//! What the tollgate gateway and billing backend agree on.
//!
//! # Layout
//! - [`keys`]: the `cli_<plan>_<secret>` key format, its SHA-256 [`keys::KeyHash`] and `key_` ids.
//! - [`money`]: integer minor units plus an ISO 4217 code, parsed and printed exactly.
//! - [`plans`]: the `[[plans]]` catalogue with the three default plans.
//! - [`feed`]: the key feed (snapshot, then changes by sequence number) and usage batches.
//! - [`error`]: the JSON error body every client-visible error uses: a stable code and a message.
//! - [`config`]: the configuration layer both binaries load through (TOML file, then
//!   `TOLLGATE_<SECTION>_<KEY>` overrides) and its one-line errors naming the setting.
//! - [`metrics`]: counters, gauges and histograms and the Prometheus text format both binaries
//!   serve on `/metrics`.
//! - [`process`]: `process_*` metrics from `/proc/self` and the build-info gauge.
//! - [`usage_codec`]: the one versioned encoding of a usage batch (the gateway's journal, the
//!   body sent to the backend, the backend's stored form) and its media-type negotiation.
//! - [`day`]: UTC day arithmetic on unix seconds (the daily quota resets at 00:00 UTC).
//! - [`cli`] (feature `cli`): both binaries' command line, version, error lines and logs.
//! - [`tls`] (feature `tls`): PEM certificates and keys, rustls server and client
//!   configurations, for both binaries' listeners and outgoing HTTPS.

#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod day;
pub mod error;
pub mod feed;
pub mod keys;
pub mod metrics;
pub mod money;
pub mod plans;
pub mod process;
#[cfg(feature = "tls")]
pub mod tls;
pub mod usage_codec;
