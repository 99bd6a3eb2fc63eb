//! Payment providers, each a pair of files: `mod.rs` (HTTP calls, handlers, base URL from
//! config) and `wire.rs` (wire structs, exhaustive status mapping). They change entitlements
//! only through `billing::save` (subscriptions) and `billing::settle` (payments), so every
//! effect is idempotent and ledgered with its cause.

use crate::app::AppState;
use axum::Router;

pub fn router() -> Router<AppState> {
    Router::new()
}
