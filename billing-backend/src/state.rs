//! [`AppState`]: what the handlers share (the store, configuration, plan catalogue, clock,
//! tokens' digests, feed hub, metrics, the last minute of usage, the providers and the
//! portal's sessions), built by `Backend` (`app.rs`). It sits below the routers: the modules
//! that serve HTTP import it; it imports none of them, only what it holds.

use crate::auth::{TokenDigest, Tokens};
#[cfg(feature = "test-clock")]
use crate::clock::OffsetClock;
use crate::clock::SharedClock;
use crate::config::{BackendConfig, Secret};
use crate::extract::BodyLimit;
use crate::hub::FeedHub;
use crate::metrics::Metrics;
use crate::minute::MinuteWindow;
use crate::providers::Providers;
use crate::session::Portal;
use crate::store::Store;
use arc_swap::ArcSwap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tollgate_protocol::plans::Catalogue;

/// Its parts are read through accessors; only [`AppState::new`] (called by `Backend`) puts
/// them together.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    cfg: Arc<BackendConfig>,
    /// The plan catalogue: read it with [`AppState::catalogue`]; SIGHUP swaps it
    /// ([`Backend::reload_plans`](crate::Backend::reload_plans)).
    plans: Plans,
    clock: SharedClock,
    /// Present when `TOLLGATE_TEST_CLOCK=1` in a build with the `test-clock` feature: lets
    /// end-to-end tests move time.
    #[cfg(feature = "test-clock")]
    test_clock: Option<Arc<OffsetClock>>,
    service_token: TokenDigest,
    feed_token: Option<TokenDigest>,
    hub: FeedHub,
    metrics: Metrics,
    minute: Arc<MinuteWindow>,
    providers: Arc<Providers>,
    /// Customer portal: sessions and hand-off signing.
    portal: Arc<Portal>,
    /// The origin (`http://host:port`) of the listener that actually serves this backend, set
    /// once by [`AppState::advertise`] after the bind; links fall back to it when
    /// `[backend] public_url` is unset (see [`AppState::origin`]). Shared, so routers built
    /// before the bind see it too.
    advertised: Arc<OnceLock<String>>,
    started: Instant,
}

impl AppState {
    /// The state of a backend on `store` with `cfg`, whose feed head is `head`. `service_token`
    /// is the token itself: the state keeps its digest, and the portal derives its hand-off
    /// key from it and calls the providers' endpoints with it.
    pub(crate) fn new(
        cfg: BackendConfig,
        store: Arc<dyn Store>,
        clock: SharedClock,
        service_token: &Secret,
        providers: Providers,
        head: u64,
    ) -> Result<AppState, String> {
        Ok(AppState {
            plans: Plans::new(cfg.catalogue.clone()),
            service_token: TokenDigest::of(service_token.expose()),
            feed_token: cfg.feed_token.as_ref().map(|t| TokenDigest::of(t.expose())),
            cfg: Arc::new(cfg),
            store,
            clock,
            #[cfg(feature = "test-clock")]
            test_clock: None,
            hub: FeedHub::new(head),
            metrics: Metrics::new(),
            minute: Arc::new(MinuteWindow::default()),
            providers: Arc::new(providers),
            portal: Arc::new(Portal::new(service_token)?),
            advertised: Arc::new(OnceLock::new()),
            started: Instant::now(),
        })
    }

    /// Lets end-to-end tests move time through `clock` (which is also the state's clock).
    #[cfg(feature = "test-clock")]
    pub(crate) fn with_test_clock(mut self, clock: Option<Arc<OffsetClock>>) -> AppState {
        self.test_clock = clock;
        self
    }

    /// The same state with other providers (tests configure one that the environment does not).
    #[cfg(test)]
    pub(crate) fn with_providers(mut self, providers: Providers) -> AppState {
        self.providers = Arc::new(providers);
        self
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn cfg(&self) -> &BackendConfig {
        &self.cfg
    }

    /// The feed head in memory, which wakes gateways waiting on the feed.
    pub fn hub(&self) -> &FeedHub {
        &self.hub
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The units gateways reported over the last minute.
    pub fn minute(&self) -> &MinuteWindow {
        &self.minute
    }

    /// The payment providers configured at start.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The portal's sessions and hand-off signing.
    pub fn portal(&self) -> &Portal {
        &self.portal
    }

    /// When this backend started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The clock end-to-end tests move, when `TOLLGATE_TEST_CLOCK=1`.
    #[cfg(feature = "test-clock")]
    pub fn test_clock(&self) -> Option<&Arc<OffsetClock>> {
        self.test_clock.as_ref()
    }

    /// Puts `catalogue` in force; returns whether any plan's limits changed.
    pub(crate) fn replace_plans(&self, catalogue: Catalogue) -> bool {
        self.plans.replace(catalogue)
    }

    /// Records the origin of the listener that serves this backend (the first call wins).
    pub(crate) fn advertise(&self, addr: SocketAddr) {
        let _ = self.advertised.set(listen_origin(addr));
    }

    /// The plan catalogue in force now.
    pub fn catalogue(&self) -> Arc<Catalogue> {
        self.plans.0.load().catalogue.clone()
    }

    /// The key feed's `db_id`: the database's id and a fingerprint of the plans' limits. Keys'
    /// limits come from their plan, so when a plan's limits change (a restart with an edited
    /// `[[plans]]`, or a reload) the epoch changes and every gateway re-reads the whole feed:
    /// existing keys get the new limits, and a gateway's saved snapshot with the old ones is
    /// replaced at its first contact.
    pub fn feed_epoch(&self) -> String {
        format!("{}.{}", self.store.db_id(), self.plans.0.load().fingerprint)
    }

    /// The origin absolute links are built on (portal hand-offs, Stripe Checkout's return pages,
    /// PayPal's return and cancel pages): `[backend] public_url`, else the listener this process
    /// serves on ([`crate::Backend::advertise`]), else `[backend] listen`. Never the request's
    /// `Host` or `X-Forwarded-Host`: the client chooses those, and a link minted for a customer
    /// must not point at a host an attacker put in the request. Behind a proxy or on another
    /// public name, the operator sets `public_url`.
    pub fn origin(&self) -> String {
        if let Some(u) = &self.cfg.public_url {
            return u.trim_end_matches('/').to_string();
        }
        match self.advertised.get() {
            Some(o) => o.clone(),
            None => listen_origin(self.cfg.listen),
        }
    }
}

/// `http://addr` for a listen address, with a wildcard bind (`0.0.0.0`, `[::]`) shown as
/// loopback on the same family: a wildcard is not an address anyone can open, loopback is.
pub fn listen_origin(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

impl Tokens for AppState {
    fn service_token(&self) -> &TokenDigest {
        &self.service_token
    }

    fn feed_token(&self) -> Option<&TokenDigest> {
        self.feed_token.as_ref()
    }
}

impl BodyLimit for AppState {
    fn max_body_bytes(&self) -> usize {
        self.cfg.max_body_bytes
    }
}

/// The plan catalogue, swapped whole on reload, with its limits' fingerprint.
#[derive(Clone)]
pub struct Plans(Arc<ArcSwap<CurrentPlans>>);

struct CurrentPlans {
    catalogue: Arc<Catalogue>,
    fingerprint: String,
}

impl Plans {
    pub(crate) fn new(catalogue: Catalogue) -> Plans {
        Plans(Arc::new(ArcSwap::from_pointee(CurrentPlans::of(catalogue))))
    }

    /// Puts `catalogue` in force; returns whether any plan's limits changed.
    pub(crate) fn replace(&self, catalogue: Catalogue) -> bool {
        let new = CurrentPlans::of(catalogue);
        let old = self.0.swap(Arc::new(new));
        old.fingerprint != self.0.load().fingerprint
    }
}

impl CurrentPlans {
    fn of(catalogue: Catalogue) -> CurrentPlans {
        use sha2::{Digest, Sha256};
        let mut plans: Vec<_> = catalogue
            .all()
            .iter()
            .map(|p| (p.id.clone(), p.limits()))
            .collect();
        plans.sort_by(|a, b| a.0.cmp(&b.0));
        let mut h = Sha256::new();
        for (id, l) in &plans {
            h.update(format!("{id}:{}:{};", l.per_minute, l.per_day).as_bytes());
        }
        let fingerprint = hex::encode(&h.finalize()[..6]);
        CurrentPlans {
            catalogue: Arc::new(catalogue),
            fingerprint,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_are_shown_as_loopback() {
        let shown = |a: &str| listen_origin(a.parse().unwrap_or_else(|e| panic!("{a}: {e}")));
        assert_eq!(shown("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(shown("[::]:8080"), "http://[::1]:8080");
        assert_eq!(shown("10.1.2.3:81"), "http://10.1.2.3:81");
        assert_eq!(shown("[2001:db8::1]:81"), "http://[2001:db8::1]:81");
    }
}
