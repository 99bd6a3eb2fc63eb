//! The router and [`Backend`]: the handle the binary and the embedding gateway use to start,
//! serve and stop the backend. The state the handlers share is [`crate::state`].

#[cfg(feature = "test-clock")]
use crate::clock::OffsetClock;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{BackendConfig, ENV_SECTIONS};
use crate::providers::Providers;
use crate::state::AppState;
use crate::store::sql::SqlStore;
use crate::store::Store;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tollgate_protocol::config::Document;
use tollgate_protocol::feed::{FeedPage, UsageAck};
use tollgate_protocol::plans::Catalogue;

pub fn router(state: AppState) -> Router {
    let limit = state.cfg().max_body_bytes;
    let routes = Router::new()
        .merge(crate::plans::router())
        .merge(crate::keys::router())
        .merge(crate::usage::router())
        .merge(crate::billing::router())
        .merge(crate::portal::router())
        .merge(crate::feed::router())
        .merge(crate::ops::router())
        .merge(crate::openapi::router());
    #[cfg(feature = "test-clock")]
    let routes = routes.merge(crate::test_clock::router());
    routes
        .fallback(crate::extract::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::idempotency::guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::feed::stamp_seq,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics().clone(),
            crate::metrics::track,
        ))
        .layer(axum::middleware::from_fn(crate::extract::json_errors))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// A running backend: state plus its background tasks.
#[derive(Clone)]
pub struct Backend {
    state: AppState,
    token_path: Option<PathBuf>,
    stop: watch::Sender<bool>,
}

impl Backend {
    /// The backend's configuration from `doc` ([`BackendConfig::from_config`]) with the payment
    /// providers' variables (`SEPA_*`, `STRIPE_*`, `PAYPAL_*`) checked alongside, so a bad one
    /// stops start-up before a database or data directory is created: one line per bad
    /// setting, naming it.
    pub fn load_config(doc: &Document) -> Result<BackendConfig, Vec<String>> {
        match (BackendConfig::from_config(doc), Providers::from_env()) {
            (Ok(cfg), Ok(_)) => Ok(cfg),
            (cfg, providers) => {
                let mut errors = cfg.err().unwrap_or_default();
                errors.extend(providers.err().unwrap_or_default());
                tollgate_protocol::config::dedup(&mut errors);
                Err(errors)
            }
        }
    }

    /// [`Backend::load_config`] of a TOML file (an empty document when `path` is None) with
    /// the `TOLLGATE_BACKEND_*` overrides.
    pub fn load_config_file(path: Option<&Path>) -> Result<BackendConfig, Vec<String>> {
        Backend::load_config(&Document::load(path, ENV_SECTIONS)?)
    }

    /// Opens the database (migrations applied), resolves tokens and starts the background tasks.
    pub async fn start(cfg: BackendConfig) -> Result<Backend, String> {
        let store = SqlStore::connect(&cfg.database_url)
            .await
            .map_err(|e| format!("database: {e}"))?;
        Self::with_store(cfg, Arc::new(store)).await
    }

    /// Starts on an already opened store (tests run the same code on SQLite and PostgreSQL).
    pub async fn with_store(cfg: BackendConfig, store: Arc<dyn Store>) -> Result<Backend, String> {
        let (token, token_path) =
            crate::auth::service_token(cfg.service_token.as_ref(), &cfg.data_dir)
                .map_err(|e| format!("service token under {}: {e}", cfg.data_dir.display()))?;
        #[cfg(feature = "test-clock")]
        let test_clock = (std::env::var("TOLLGATE_TEST_CLOCK").as_deref() == Ok("1"))
            .then(|| Arc::new(OffsetClock::default()));
        #[cfg(feature = "test-clock")]
        let clock: SharedClock = match &test_clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        #[cfg(not(feature = "test-clock"))]
        let clock: SharedClock = Arc::new(SystemClock);
        let head = store
            .feed_head()
            .await
            .map_err(|e| format!("database: {e}"))?;
        let providers = Providers::from_env().map_err(|errs| errs.join("\n"))?;
        let state = AppState::new(cfg, store, clock, &token, providers, head)?;
        #[cfg(feature = "test-clock")]
        let state = state.with_test_clock(test_clock);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(crate::billing::expiry_sweep(state.clone(), stop_rx.clone()));
        crate::billing::spawn_background(&state, stop_rx.clone());
        tokio::spawn(crate::usage::settle_loop(state.clone(), stop_rx.clone()));
        tokio::spawn(crate::feed::watch_head(state.clone(), stop_rx));
        Ok(Backend {
            state,
            token_path,
            stop,
        })
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// Tells the backend the address its routes are served on: the standalone binary's bound
    /// `[backend] listen`, or the embedding gateway's bound listener. Links the backend builds
    /// (portal hand-offs, payment return pages) use it when `[backend] public_url` is unset,
    /// rather than the request's `Host`, which the client chooses. A wildcard address is shown
    /// as loopback. The first call wins: the listener does not move while the process runs.
    pub fn advertise(&self, addr: SocketAddr) {
        self.state.advertise(addr);
    }

    /// Puts a new plan catalogue in force (SIGHUP): prices, features and limits at once. When
    /// any plan's limits changed, the feed epoch changes too, and waiting gateways are woken
    /// so their replicas re-read every key with the new limits within a moment. Returns
    /// whether the limits changed.
    pub fn reload_plans(&self, catalogue: Catalogue) -> bool {
        let changed = self.state.replace_plans(catalogue);
        tracing::info!(
            plans = self.state.catalogue().all().len(),
            limits_changed = changed,
            "plan catalogue reloaded"
        );
        if changed {
            self.state.hub().wake();
        }
        changed
    }

    pub async fn feed_page(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
        known: &str,
    ) -> Result<FeedPage, String> {
        crate::feed::page(&self.state, since, limit, wait, Some(known))
            .await
            .map_err(|e| e.to_string())
    }

    /// A usage batch in its one encoding ([`tollgate_protocol::usage_codec`]), stored as it is.
    pub async fn ingest_usage(&self, batch: axum::body::Bytes) -> Result<UsageAck, String> {
        crate::usage::ingest(&self.state, batch)
            .await
            .map_err(|e| e.to_string())
    }

    pub fn service_token_path(&self) -> Option<PathBuf> {
        self.token_path.clone()
    }

    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        self.state.store().close().await;
    }
}

/// Router-level unit tests start a real [`Backend`] on a fresh SQLite database.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A started backend in its own temporary directory, removed on drop.
    pub struct TestBackend {
        pub backend: Backend,
        dir: PathBuf,
    }

    impl TestBackend {
        /// Starts a backend on [`BackendConfig::for_tests`], changed by `edit` first.
        pub async fn start(edit: impl FnOnce(&mut BackendConfig)) -> TestBackend {
            let dir = std::env::temp_dir().join(format!("tg-app-{}", crate::ids::random_hex(8)));
            let mut cfg = BackendConfig::for_tests(&dir);
            edit(&mut cfg);
            let backend = Backend::start(cfg)
                .await
                .unwrap_or_else(|e| panic!("backend start: {e}"));
            TestBackend { backend, dir }
        }

        pub fn state(&self) -> &AppState {
            self.backend.state()
        }
    }

    impl Drop for TestBackend {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
