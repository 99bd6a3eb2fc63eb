//! Embedded mode: the billing backend runs inside the gateway process (SQLite under `data_dir`),
//! so the quick start is one command. Feed and usage are direct calls (a usage batch is handed
//! over in its one encoding, which the backend stores as it is); management paths go to
//! the backend's router as a tower service.

use crate::backend::BackendLink;
use crate::config::backend_config;
use async_trait::async_trait;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tollgate_backend::Backend;
use tollgate_protocol::config::Document;
use tollgate_protocol::feed::{FeedPage, UsageAck};

/// Starts the backend from the same document (its database reachable and its `data_dir`
/// writable first, each failure one line naming the setting).
pub async fn start(doc: &Document, data_dir: &Path) -> Result<Backend, Vec<String>> {
    let cfg = backend_config(doc, data_dir)?;
    cfg.preflight().await.map_err(|e| vec![e])?;
    Backend::start(cfg)
        .await
        .map_err(|e| vec![format!("backend: {e}")])
}

/// SIGHUP: the reloaded document's `[[plans]]` go in force in the backend too (prices,
/// features, and the limits every key's tier comes from).
pub fn reload_plans(b: &Backend, doc: &Document, data_dir: &Path) -> Result<(), Vec<String>> {
    let cfg = backend_config(doc, data_dir)?;
    b.reload_plans(cfg.catalogue);
    Ok(())
}

/// The embedded backend's metrics (its registry, measured now), for the gateway's metrics
/// listener.
pub async fn render_metrics(b: &Backend) -> String {
    let state = b.state();
    state
        .metrics()
        .render(state.store().as_ref(), state.now())
        .await
}

pub fn router(b: &Backend) -> axum::Router {
    b.router()
}

pub fn service_token_path(b: &Backend) -> Option<PathBuf> {
    b.service_token_path()
}

pub async fn shutdown(b: &Backend) {
    b.shutdown().await;
}

pub struct EmbeddedLink(pub Backend);

#[async_trait]
impl BackendLink for EmbeddedLink {
    async fn feed_page(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
        known: &str,
    ) -> Result<FeedPage, String> {
        self.0.feed_page(since, limit, wait, known).await
    }

    /// The encoded batch goes to the backend as it is: it stores those bytes.
    async fn ingest_usage(&self, batch: Bytes) -> Result<UsageAck, String> {
        self.0.ingest_usage(batch).await
    }
}
