//! The request phases, written once and run by both transports (the fast lane, `h1`, and
//! hyper, `proxy`; both sit above this module and reach it through `Exchange`), in this
//! order:
//!
//! 1. the key, from `X-API-Key` or `Authorization: Bearer` as the route allows
//!    ([`crate::headers::extract_key`]);
//! 2. [`Gateway::lookup`]: the replica entry (unknown / revoked / expired → 401);
//! 3. [`check_route`]: the key's plan is allowed on the route (else 403), the body fits (413);
//! 4. [`Gateway::reserve`]: quota check-and-count (429 with `Retry-After`, 503 when the store
//!    fails);
//! 5. [`Exchange::forward`]: the transport's own part, the rewritten request to a round-robin
//!    upstream and the answer back, calling [`Admission::answered`] when the upstream's head
//!    is in;
//! 6. settle: an answered request's units go to usage, a 502/504 gives them back
//!    ([`Gateway::serve_route`]);
//! 7. [`Gateway::record`]: the route's metrics.
//!
//! A transport routes the request ([`Gateway::route`]), then hands it to
//! [`Gateway::serve_route`] as an [`Exchange`]: the phases call the transport's `forward`
//! through a generic (static dispatch, no boxed future), and what the gateway answers itself
//! (a refusal, a 502/504) comes back as a [`Reply::Gateway`] for the transport to frame.
//!
//! Nothing here holds a lock across an `.await`, and the only shared mutable state touched is
//! one replica shard (read lock), one quota shard and one usage shard (short mutexes), and
//! relaxed atomics for metrics. Header values are precomputed per key and per tier.

use crate::backend::Management;
use crate::body::{Body, ClientFault};
use crate::config::MANAGEMENT_PREFIXES;
use crate::headers::{error_response, extract_key, parse_length, rate_limit_headers};
use crate::headers::{HeaderSink, Headers, KeyHeader, RateLimit, RATELIMIT_POLICY};
use crate::health::Health;
use crate::keys::{Found, KeyEntry, Replica};
use crate::limits::Limits;
use crate::metrics::{Metrics, Outcome, RouteMetrics};
use crate::quota::Clock;
use crate::quota::{Decision, Exceeded, Quota, Reservation, Usage};
use crate::routes::{Route, RouteTable};
use crate::tls::HttpClient;
use crate::usage::UsageCounter;
use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::Response;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_protocol::keys::{plausible_key, KeyHash};

pub const VALIDATE_PATH: &str = "/api/marketplace/keys/validate";

/// Everything a request needs, shared by all connections.
pub struct Gateway {
    pub routes: ArcSwap<RouteTable>,
    pub replica: Arc<Replica>,
    pub quota: Quota,
    pub usage: Arc<UsageCounter>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub client: HttpClient,
    pub management: Option<Management>,
    pub clock: Arc<dyn Clock>,
    pub legacy_headers: bool,
    /// The limits both transports apply (header size and time, upstream connections).
    pub limits: Limits,
    /// Pseudo-route counters for what is not a configured route.
    pub own: OwnMetrics,
}

pub struct OwnMetrics {
    pub gateway: Arc<RouteMetrics>,
    pub management: Arc<RouteMetrics>,
    pub validate: Arc<RouteMetrics>,
    pub unmatched: Arc<RouteMetrics>,
}

impl OwnMetrics {
    pub fn new(m: &Metrics) -> OwnMetrics {
        let validate = m.route("_validate");
        OwnMetrics {
            gateway: m.route("_gateway"),
            management: m.route("_management"),
            validate,
            unmatched: m.route("_unmatched"),
        }
    }
}

/// A refusal: the outcome and the message shown to the client.
pub struct Refusal {
    pub outcome: Outcome,
    pub message: &'static str,
}

pub(crate) const fn refuse(outcome: Outcome, message: &'static str) -> Refusal {
    Refusal { outcome, message }
}

/// A quota rejection with what its headers need.
pub struct Limited {
    pub exceeded: Exceeded,
    pub retry_after_secs: u64,
    pub usage: Usage,
}

pub enum UpstreamError {
    Unavailable,
    Timeout,
    /// The client's request body failed while it streamed upstream.
    Client(ClientFault),
}

impl UpstreamError {
    /// The client's answer: 502/504 (refunded), or 400/413 for a client's broken body.
    pub fn outcome(&self) -> (Outcome, &'static str) {
        match self {
            UpstreamError::Unavailable => (
                Outcome::UpstreamUnavailable,
                "the upstream service is unavailable",
            ),
            UpstreamError::Timeout => (
                Outcome::UpstreamTimeout,
                "the upstream service did not answer in time",
            ),
            UpstreamError::Client(ClientFault::Malformed) => (
                Outcome::BadRequest,
                "the request body is malformed or was cut short",
            ),
            UpstreamError::Client(ClientFault::TooLarge) => (
                Outcome::PayloadTooLarge,
                "request body is larger than this endpoint accepts",
            ),
        }
    }
}

/// The key's plan may use the route, and a declared body fits the route's limit.
pub fn check_route<H: Headers + ?Sized>(
    route: &Route,
    entry: &KeyEntry,
    headers: &H,
) -> Result<(), Refusal> {
    if !route.allows(&entry.tier.plan) {
        return Err(refuse(
            Outcome::PlanNotAllowed,
            "your plan does not include this endpoint",
        ));
    }
    check_body_size(route, headers)
}

pub fn check_body_size<H: Headers + ?Sized>(route: &Route, headers: &H) -> Result<(), Refusal> {
    let max = route.cfg.max_body_bytes;
    if max > 0 {
        let declared = headers
            .first(&header::CONTENT_LENGTH)
            .and_then(parse_length);
        if declared.is_some_and(|n| n > max) {
            return Err(refuse(
                Outcome::PayloadTooLarge,
                "request body is larger than this endpoint accepts",
            ));
        }
    }
    Ok(())
}

/// The 400 for a path whose `..` climbs out of the prefix of the route it matched.
pub(crate) const CLIMBS_OUT: Refusal = refuse(
    Outcome::BadRequest,
    "the path climbs out of its route with '..'",
);

const MISSING_KEY: Refusal = refuse(
    Outcome::MissingKey,
    "an API key is required (X-API-Key or Authorization: Bearer)",
);

/// An admitted keyed request: its key, its units between the quota decision and the outcome,
/// and the usage its `RateLimit` headers show. Dropped unsettled (the request was cancelled:
/// the client hung up while the upstream had the request), the units are recorded as used, so
/// every admitted request reaches usage exactly once.
pub(crate) struct Admission<'g> {
    gw: &'g Gateway,
    entry: Arc<KeyEntry>,
    from: KeyHeader,
    reservation: Reservation,
    usage: Usage,
    /// The units are not accounted yet.
    armed: bool,
}

impl Admission<'_> {
    /// The key and the header it came from, for the identity headers sent upstream.
    pub(crate) fn key(&self) -> (&KeyEntry, KeyHeader) {
        (&self.entry, self.from)
    }

    /// The upstream answered: the units are used (counted once, however often this is called)
    /// and the `RateLimit` headers go on the client's response.
    #[inline]
    pub(crate) fn answered<S: HeaderSink + ?Sized>(&mut self, headers: &mut S) {
        if std::mem::take(&mut self.armed) {
            self.gw.record_usage(&self.reservation);
        }
        self.rate_limit_headers(headers);
    }

    /// The upstream never answered: the units are given back, and the headers show them back.
    async fn refunded<S: HeaderSink + ?Sized>(mut self, headers: &mut S) {
        self.armed = false;
        self.gw.settle(self.reservation).await;
        let cost = self.reservation.cost;
        let u = &mut self.usage;
        u.minute_remaining = u
            .minute_remaining
            .saturating_add(cost)
            .min(self.entry.tier.limits.per_minute);
        u.day_used = u.day_used.saturating_sub(cost);
        self.rate_limit_headers(headers);
    }

    fn rate_limit_headers<S: HeaderSink + ?Sized>(&self, headers: &mut S) {
        rate_limit_headers(
            headers,
            &rate_limit(&self.entry, &self.usage),
            self.gw.legacy_headers,
            self.reservation.at_ms.div_euclid(1000),
        );
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gw.record_usage(&self.reservation);
        }
    }
}

/// A request as a transport holds it, for [`Gateway::serve_route`].
pub(crate) trait Exchange {
    /// The request's headers (the key, the declared body length).
    type Headers: Headers + ?Sized;
    /// What the transport makes of a request the upstream answered.
    type Output;

    fn headers(&self) -> &Self::Headers;

    /// Phase 5: sends the request to one of `route`'s upstreams (with the key's identity
    /// headers, and without the key) and passes the answer on, calling
    /// [`Admission::answered`] with the client's response headers once the upstream's head is
    /// in. Metrics and an unanswered request's refund are the phases' part.
    fn forward(
        self,
        gw: &Gateway,
        route: &Route,
        key: Option<&mut Admission<'_>>,
    ) -> impl Future<Output = Result<Answered<Self::Output>, Unanswered>>;
}

/// A request the upstream answered.
pub(crate) struct Answered<T> {
    pub output: T,
    pub status: u16,
    /// Until the upstream's head (the lane) or the response (hyper) was in.
    pub upstream: Duration,
}

/// A request the upstream did not answer (or whose body the client broke on the way).
pub(crate) struct Unanswered {
    pub error: UpstreamError,
    pub upstream: Duration,
}

/// What became of a request on a route.
pub(crate) enum Reply<T> {
    /// The upstream's answer, as the transport passed it on.
    Forwarded(T),
    /// The gateway's own answer (a refusal, a 502/504), for the transport to write.
    Gateway(Response<Body>),
}

impl Gateway {
    /// The configured route for a request's `Host` and normalised path; no route is a 404.
    /// (The 404 is returned by value, as the transport sends it at once: boxing it would
    /// allocate.)
    #[inline]
    #[allow(clippy::result_large_err)]
    pub(crate) fn route(
        &self,
        host: Option<&str>,
        path: &str,
    ) -> Result<Arc<Route>, Response<Body>> {
        let route = self.routes.load().find(host, path).cloned();
        route.ok_or_else(|| {
            self.own.unmatched.count(Outcome::RouteNotFound, 404);
            error_response(Outcome::RouteNotFound, "no route for this path")
        })
    }

    /// The phases in order for a request on `route`, the transport forwarding it (phase 5).
    pub(crate) async fn serve_route<E: Exchange>(
        &self,
        route: &Route,
        req: E,
        start: Instant,
    ) -> Reply<E::Output> {
        let mut admission = match self.admit(route, req.headers(), start).await {
            Ok(a) => a,
            Err(refused) => return Reply::Gateway(refused),
        };
        // 5. forward
        match req.forward(self, route, admission.as_mut()).await {
            Ok(answered) => {
                // 7. record (the answered units were settled as the head went by)
                self.record(
                    route,
                    Outcome::Ok,
                    answered.status,
                    start,
                    answered.upstream,
                );
                Reply::Forwarded(answered.output)
            }
            Err(e) => Reply::Gateway(self.unanswered(route, admission, e, start).await),
        }
    }

    /// Phases 1–4: the key, the replica, the route's plan and body limit, the quota. `None`
    /// for a route without keys; a refusal is answered here.
    async fn admit<H: Headers + ?Sized>(
        &self,
        route: &Route,
        headers: &H,
        start: Instant,
    ) -> Result<Option<Admission<'_>>, Response<Body>> {
        if !route.needs_key() {
            return match check_body_size(route, headers) {
                Ok(()) => Ok(None),
                Err(r) => Err(self.refused(route, r, None, start)),
            };
        }
        // 1. key
        let Some((key, from)) = extract_key(headers, route.key_source()) else {
            return Err(self.refused(route, MISSING_KEY, None, start));
        };
        // 2. replica
        let now_ms = self.clock.now_ms();
        let entry = match self.lookup(key, now_ms.div_euclid(1000)) {
            Ok(e) => e,
            Err(r) => return Err(self.refused(route, r, None, start)),
        };
        // 3. route / plan
        if let Err(r) = check_route(route, &entry, headers) {
            return Err(self.refused(route, r, Some(&entry), start));
        }
        // 4. quota
        let (reservation, usage) = match self.reserve(&entry, route.cfg.cost).await {
            Ok(r) => r,
            Err(Err(r)) => return Err(self.refused(route, r, Some(&entry), start)),
            Err(Ok(limited)) => return Err(self.limited(route, &entry, limited, start)),
        };
        // From here the units are the client's, whoever hangs up (see `Admission`).
        Ok(Some(Admission {
            gw: self,
            entry,
            from,
            reservation,
            usage,
            armed: true,
        }))
    }

    // -----------------------------------------------------------------------------------------
    // Phase 2: the replica.

    pub fn lookup(&self, key: &str, now_secs: i64) -> Result<Arc<KeyEntry>, Refusal> {
        if !plausible_key(key) {
            return Err(refuse(Outcome::InvalidKey, "invalid API key"));
        }
        match self.replica.find(&KeyHash::of(key), now_secs) {
            Found::Unknown => Err(refuse(Outcome::InvalidKey, "invalid API key")),
            Found::Key(e) if e.revoked => {
                Err(refuse(Outcome::KeyRevoked, "this API key has been revoked"))
            }
            Found::Key(e) if e.expires_at.is_some_and(|t| t <= now_secs) => {
                Err(refuse(Outcome::KeyExpired, "this API key has expired"))
            }
            Found::Key(e) => Ok(e),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Phase 4: quota. `Err(Ok(_))` is a 429; `Err(Err(_))` a store failure (503).

    pub async fn reserve(
        &self,
        entry: &KeyEntry,
        cost: u64,
    ) -> Result<(Reservation, Usage), Result<Limited, Refusal>> {
        match self.quota.reserve(entry.id, entry.tier.limits, cost).await {
            Ok(Decision::Admitted { reservation, usage }) => Ok((reservation, usage)),
            Ok(Decision::Rejected {
                exceeded,
                retry_after_secs,
                usage,
            }) => Err(Ok(Limited {
                exceeded,
                retry_after_secs,
                usage,
            })),
            Err(e) => {
                // The store logged and counted the failure (once per outage, not per request).
                tracing::debug!(error = %e, "quota store failed");
                Err(Err(refuse(
                    Outcome::QuotaUnavailable,
                    "quota service unavailable, try again shortly",
                )))
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Phases 6 and 7 for a request the upstream did not answer.

    /// The client's answer for a request that got none from the upstream: a 502/504 gives the
    /// units back; a body the client broke (400/413) keeps them used.
    async fn unanswered(
        &self,
        route: &Route,
        admission: Option<Admission<'_>>,
        e: Unanswered,
        start: Instant,
    ) -> Response<Body> {
        let (outcome, message) = e.error.outcome();
        let mut resp = error_response(outcome, message);
        if let Some(mut a) = admission {
            if matches!(
                outcome,
                Outcome::UpstreamUnavailable | Outcome::UpstreamTimeout
            ) {
                a.refunded(resp.headers_mut()).await;
            } else {
                a.answered(resp.headers_mut());
            }
        }
        self.record(route, outcome, resp.status().as_u16(), start, e.upstream);
        resp
    }

    /// Phase 6: a request that never got an answer from the upstream costs nothing.
    async fn settle(&self, reservation: Reservation) {
        match self.quota.refund(reservation).await {
            Ok(()) => self.metrics.refunded_units.add(reservation.cost),
            Err(e) => tracing::error!(error = %e, "refund failed"),
        }
    }

    /// Admitted units go to the usage counter (shipped to the backend every flush interval).
    pub fn record_usage(&self, r: &Reservation) {
        self.usage
            .add(r.key, r.day(), r.cost, r.at_ms.div_euclid(1000));
        self.metrics.admitted_units.add(r.cost);
    }

    /// Phase 7: metrics.
    pub(crate) fn record(
        &self,
        route: &Route,
        outcome: Outcome,
        status: u16,
        start: Instant,
        upstream: Duration,
    ) {
        route.metrics.count(outcome, status);
        if !upstream.is_zero() {
            route.metrics.upstream.observe(upstream);
        }
        self.metrics
            .overhead
            .observe(start.elapsed().saturating_sub(upstream));
    }

    pub(crate) fn refused(
        &self,
        route: &Route,
        r: Refusal,
        entry: Option<&KeyEntry>,
        start: Instant,
    ) -> Response<Body> {
        let mut resp = error_response(r.outcome, r.message);
        if let Some(e) = entry {
            resp.headers_mut()
                .insert(RATELIMIT_POLICY.clone(), e.tier.policy.clone());
        }
        self.record(route, r.outcome, r.outcome.status(), start, Duration::ZERO);
        resp
    }

    pub(crate) fn limited(
        &self,
        route: &Route,
        entry: &KeyEntry,
        l: Limited,
        start: Instant,
    ) -> Response<Body> {
        let (outcome, message) = match l.exceeded {
            Exceeded::Minute => (Outcome::RateLimited, "rate limit exceeded, retry later"),
            Exceeded::Day => (
                Outcome::DailyLimitExceeded,
                "daily limit reached; it resets at 00:00 UTC",
            ),
        };
        let mut resp = error_response(outcome, message);
        let mut usage = l.usage;
        if l.exceeded == Exceeded::Minute {
            usage.minute_reset_secs = l.retry_after_secs;
        }
        let now_secs = self.clock.now_ms().div_euclid(1000);
        rate_limit_headers(
            resp.headers_mut(),
            &rate_limit(entry, &usage),
            self.legacy_headers,
            now_secs,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after_secs));
        self.record(route, outcome, outcome.status(), start, Duration::ZERO);
        resp
    }
}

/// What a key's `RateLimit` headers show: its tier's precomputed values and its usage.
fn rate_limit<'a>(entry: &'a KeyEntry, usage: &Usage) -> RateLimit<'a> {
    RateLimit {
        policy: &entry.tier.policy,
        minute_limit: &entry.tier.minute_limit,
        remaining: usage.minute_remaining,
        reset_secs: usage.minute_reset_secs,
    }
}

/// Paths the gateway answers itself or hands to the backend, whatever the routes say.
pub fn is_own_path(path: &str) -> bool {
    path == "/health"
        || path == "/ready"
        || path == VALIDATE_PATH
        || MANAGEMENT_PREFIXES.iter().any(|p| under(path, p))
}

/// `path` is `prefix` or below it.
pub(crate) fn under(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The request target sent upstream: the client's path and query, without the route's prefix
/// when `strip_prefix` is set (always starting with `/`).
pub fn upstream_target<'a>(route: &Route, pq: &'a str) -> std::borrow::Cow<'a, str> {
    if !route.cfg.strip_prefix {
        return std::borrow::Cow::Borrowed(pq);
    }
    let rest = pq
        .get(route.cfg.prefix.trim_end_matches('/').len()..)
        .unwrap_or("");
    if rest.starts_with('/') {
        std::borrow::Cow::Borrowed(rest)
    } else {
        std::borrow::Cow::Owned(format!("/{rest}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_prefixes() {
        assert!(under("/billing/create", "/billing"));
        assert!(under("/billing", "/billing"));
        assert!(!under("/billingx", "/billing"));
    }
}
