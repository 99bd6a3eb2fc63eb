//! The request path, phase by phase, in the order SPEC §5 gives:
//!
//! 1. [`extract_key`]: the key text from `X-API-Key` or `Authorization: Bearer`;
//! 2. [`Gateway::lookup`]: the replica entry (unknown / revoked / expired → 401);
//! 3. [`check_route`]: the key's plan is allowed on the route (else 403), the body fits;
//! 4. [`Gateway::reserve`]: quota check-and-count (429 with `Retry-After`);
//! 5. [`Gateway::forward`]: the rewritten request to a round-robin upstream, streaming;
//! 6. [`Gateway::settle`]: a 502/504 gives the units back;
//! 7. [`Gateway::record`]: usage for the backend, metrics.
//!
//! Nothing here holds a lock across an `.await`, and the only shared mutable state touched is
//! one replica shard (read lock), one quota shard and one usage shard (short mutexes), and
//! relaxed atomics for metrics. Header values are precomputed per key and per tier.

use crate::backend::{HttpClient, Management};
use crate::body::{Body, BodyFault, ClientFault};
use crate::config::{KeySource, MANAGEMENT_PREFIXES};
use crate::forwarded::{self, Peer};
use crate::health::Health;
use crate::keys::{Found, KeyEntry, Replica};
use crate::metrics::{Metrics, Outcome, RouteMetrics};
use crate::quota::Clock;
use crate::quota::{Decision, Exceeded, Quota, Reservation, Usage};
use crate::routes::{Route, RouteTable, Target};
use crate::usage::UsageCounter;
use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_protocol::error::ErrorBody;
use tollgate_protocol::keys::{plausible_key, KeyHash};

pub const VALIDATE_PATH: &str = "/api/marketplace/keys/validate";

pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) static X_KEY_ID: HeaderName = HeaderName::from_static("x-tollgate-key-id");
pub(crate) static X_USER_ID: HeaderName = HeaderName::from_static("x-tollgate-user-id");
pub(crate) static X_PLAN: HeaderName = HeaderName::from_static("x-tollgate-plan");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RL_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RL_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RL_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Set by the backend on answers to changes: the key feed sequence that holds the change.
static FEED_SEQ: HeaderName = HeaderName::from_static(tollgate_protocol::feed::FEED_SEQ_HEADER);
/// Longest a management answer waits for the replica to apply its change.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

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

const fn refuse(outcome: Outcome, message: &'static str) -> Refusal {
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

/// A JSON error body (SPEC §9) with the outcome's status.
pub fn error_response(outcome: Outcome, message: &str) -> Response<Body> {
    let body = ErrorBody::new(outcome.code(), message).to_json();
    let mut resp = Response::new(Body::full(body));
    *resp.status_mut() =
        StatusCode::from_u16(outcome.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, JSON.clone());
    resp
}

pub fn json_response(status: StatusCode, json: Vec<u8>) -> Response<Body> {
    let mut resp = Response::new(Body::full(json));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, JSON.clone());
    resp
}

/// The hop-by-hop headers (RFC 9110 §7.6.1, and `HTTP2-Settings` of an h2c upgrade, RFC 9113
/// §3.2.1); `Connection` first and `Upgrade` second.
pub(crate) static HOP_HEADERS: [HeaderName; 9] = [
    header::CONNECTION,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("http2-settings"),
];

/// [`HOP_HEADERS`] as lower-case bytes, for heads the fast lane parses itself.
const HOP_NAMES: [&[u8]; 9] = [
    b"connection",
    b"upgrade",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"proxy-authorization",
    b"http2-settings",
];

/// Whether a header name (any case) is hop-by-hop; a length mismatch rejects most at once.
pub fn is_hop_name(name: &[u8]) -> bool {
    HOP_NAMES
        .iter()
        .any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
/// `keep_upgrade` leaves `Connection`/`Upgrade` for a WebSocket handshake.
///
/// One pass over the (few) names present finds which hop headers are there; only those are
/// removed. Removing an absent name still hashes and probes the map, and nine such removals per
/// message, twice per request, were ~5 % of the gateway's instructions (benches/RESULTS.md).
pub fn strip_hop_headers(headers: &mut HeaderMap, keep_upgrade: bool) {
    let mut present = 0u16;
    for name in headers.keys() {
        if let Some(i) = HOP_HEADERS.iter().position(|h| h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    if !keep_upgrade && present & 1 != 0 {
        if let Some(conn) = headers.remove(header::CONNECTION) {
            if let Ok(text) = conn.to_str() {
                for name in text.split(',').map(str::trim) {
                    if !name.eq_ignore_ascii_case("close")
                        && !name.eq_ignore_ascii_case("keep-alive")
                    {
                        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                            headers.remove(n);
                        }
                    }
                }
            }
        }
    }
    for (i, name) in HOP_HEADERS.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 && !(keep_upgrade && i == 1) {
            headers.remove(name);
        }
    }
}

/// `name` is `want` (lower case, `-` separated) in any case, with `_` for any `-`: CGI-style
/// upstreams (PHP, WSGI, Rack) read `X_Tollgate_Plan` as `X-Tollgate-Plan`.
pub(crate) fn same_name(name: &[u8], want: &[u8]) -> bool {
    name.len() == want.len()
        && name.iter().zip(want).all(|(&a, &b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
}

/// Headers the gateway owns: the key header and every `X-Tollgate-*` identity header, in any
/// spelling. A client's copies never reach the upstream (the gateway sets its own identity).
pub fn is_reserved_header(name: &[u8]) -> bool {
    const PREFIX: &[u8] = b"x-tollgate-";
    same_name(name, X_API_KEY.as_str().as_bytes())
        || (name.len() > PREFIX.len() && same_name(&name[..PREFIX.len()], PREFIX))
}

/// A bearer token shaped like an API key (`<prefix>_<plan>_<43 base64url characters>`).
fn looks_like_key(token: &[u8]) -> bool {
    const SECRET: usize = 43;
    if token.len() < SECRET + 4 {
        return false;
    }
    let (head, secret) = token.split_at(token.len() - SECRET);
    secret
        .iter()
        .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        && head.ends_with(b"_")
        && head.first().is_some_and(u8::is_ascii_alphanumeric)
        && head.iter().filter(|&&c| c == b'_').count() >= 2
}

/// Whether a request header must not be forwarded because it carries an API key or a
/// gateway-owned identity: the key header and `X-Tollgate-*` (any spelling), and an
/// `Authorization` that either held the key of this request or is a bearer token shaped like
/// a key (another customer's, say).
pub fn carries_key(name: &[u8], value: &[u8], key_from: Option<KeyHeader>) -> bool {
    if is_reserved_header(name) {
        return true;
    }
    if !same_name(name, b"authorization") {
        return false;
    }
    if key_from == Some(KeyHeader::Bearer) {
        return true;
    }
    value.len() > 7
        && value[..7].eq_ignore_ascii_case(b"bearer ")
        && looks_like_key(value[7..].trim_ascii())
}

/// Removes every header [`carries_key`] names. A pass without removals allocates nothing.
fn strip_key_headers(headers: &mut HeaderMap, key_from: Option<KeyHeader>) {
    let found = |(n, v): (&HeaderName, &HeaderValue)| {
        carries_key(n.as_str().as_bytes(), v.as_bytes(), key_from).then(|| n.clone())
    };
    if !headers.iter().any(|h| found(h).is_some()) {
        return;
    }
    let names: Vec<HeaderName> = headers.iter().filter_map(found).collect();
    for n in names {
        // Values of one name are judged one by one (a Basic `Authorization` beside a Bearer key
        // stays), as the fast lane does header line by header line.
        let kept: Vec<HeaderValue> = headers
            .get_all(&n)
            .iter()
            .filter(|v| !carries_key(n.as_str().as_bytes(), v.as_bytes(), key_from))
            .cloned()
            .collect();
        headers.remove(&n);
        for v in kept {
            headers.append(n.clone(), v);
        }
    }
}

/// A `Content-Length` value: ASCII digits only (RFC 9110 §8.6), optional SP/HTAB around.
/// `str::trim` would also take Unicode spaces (`5\u{a0}`), and `u64::from_str` a `+`.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Methods safe to send twice (RFC 9110 §9.2.2): a request on a pooled connection that closed
/// without an answer is retried only when it is one of these (as nginx's
/// `proxy_next_upstream` does without `non_idempotent`).
pub fn idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// A WebSocket handshake (the only upgrade the gateway tunnels: one unit per upgrade). Any
/// other `Upgrade` (`h2c` above all: a tunnel would carry unmetered requests) is dropped with
/// the hop-by-hop headers and the request goes on as a plain one.
fn is_upgrade(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::UPGRADE, "websocket") && has(header::CONNECTION, "upgrade")
}

/// Which header the key came from (so exactly that one is removed before forwarding).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    ApiKey,
    Bearer,
}

// ---------------------------------------------------------------------------------------------
// Phase 1: extract the key.

/// Read access to a request's headers: hyper's `HeaderMap`, or the fast lane's parsed head.
pub trait Headers {
    /// The first value of `name`.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
}

impl Headers for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }
}

/// Header text as `&str` when it is visible ASCII (as `HeaderValue::to_str` requires).
fn visible(v: &[u8]) -> Option<&str> {
    v.iter()
        .all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
        .then(|| std::str::from_utf8(v).ok())
        .flatten()
}

/// The key text from `X-API-Key` (first) or `Authorization: Bearer`, as the route allows.
/// A value that is not visible ASCII comes back as a key that can never be valid.
pub fn extract_key<H: Headers + ?Sized>(
    headers: &H,
    source: KeySource,
) -> Option<(&str, KeyHeader)> {
    if source != KeySource::Bearer {
        if let Some(v) = headers.first(&X_API_KEY) {
            return Some((visible(v).unwrap_or("\u{0}"), KeyHeader::ApiKey));
        }
    }
    if source != KeySource::ApiKeyHeader {
        if let Some(b) = headers.first(&header::AUTHORIZATION) {
            if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"bearer ") {
                let text = visible(b).map(|s| s[7..].trim()).unwrap_or("\u{0}");
                return Some((text, KeyHeader::Bearer));
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Phase 3: route and plan.

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

/// What no route may see, checked before routing (the fast lane hands such requests here):
/// `CONNECT` (405: the gateway is not a forward proxy), a transfer coding other than
/// `chunked` (501, RFC 9112 §6.1: the gateway would re-frame the body and lose the coding),
/// and an HTTP/1.1 request without exactly one `Host` (400, RFC 9112 §3.2).
pub fn check_request<B>(req: &Request<B>) -> Result<(), Refusal> {
    if req.method() == Method::CONNECT {
        return Err(refuse(
            Outcome::MethodNotAllowed,
            "CONNECT is not supported: this is a reverse proxy",
        ));
    }
    let h = req.headers();
    let mut codings = h
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&c| c == b','))
        .map(<[u8]>::trim_ascii);
    match (codings.next(), codings.next()) {
        (None, _) => {}
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {}
        _ => {
            return Err(refuse(
                Outcome::NotImplemented,
                "only the chunked transfer coding is supported",
            ))
        }
    }
    if req.version() == Version::HTTP_11 && h.get_all(header::HOST).iter().count() != 1 {
        return Err(refuse(
            Outcome::BadRequest,
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    Ok(())
}

/// Where response headers the gateway adds go: hyper's `HeaderMap` (replacing any value the
/// upstream sent), or the fast lane's response head being written.
pub trait HeaderSink {
    fn value(&mut self, name: &HeaderName, value: &HeaderValue);
    fn text(&mut self, name: &HeaderName, value: &[u8]);
}

impl HeaderSink for HeaderMap {
    fn value(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.insert(name.clone(), value.clone());
    }
    fn text(&mut self, name: &HeaderName, value: &[u8]) {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            self.insert(name.clone(), v);
        }
    }
}

/// The response headers the gateway sets on keyed routes (an upstream's copies are dropped).
pub fn is_gateway_header(name: &[u8], legacy: bool) -> bool {
    let ours = |h: &[u8]| h.len() == name.len() && name.eq_ignore_ascii_case(h);
    ours(b"ratelimit-policy")
        || ours(b"ratelimit")
        || (legacy
            && (ours(b"x-ratelimit-limit")
                || ours(b"x-ratelimit-remaining")
                || ours(b"x-ratelimit-reset")))
}

/// Adds `RateLimit-Policy`, `RateLimit` (and the legacy trio when enabled).
pub fn rate_limit_headers<S: HeaderSink + ?Sized>(
    headers: &mut S,
    entry: &KeyEntry,
    usage: &Usage,
    legacy: bool,
    now_secs: i64,
) {
    headers.value(&RATELIMIT_POLICY, &entry.tier.policy);
    let mut buf = itoa_buf();
    let text = render_ratelimit(&mut buf, usage.minute_remaining, usage.minute_reset_secs);
    headers.text(&RATELIMIT, text);
    if legacy {
        headers.value(&X_RL_LIMIT, &entry.tier.minute_limit);
        let mut buf = itoa_buf();
        headers.text(
            &X_RL_REMAINING,
            render_int(&mut buf, usage.minute_remaining),
        );
        let reset = now_secs.saturating_add(i64::try_from(usage.minute_reset_secs).unwrap_or(0));
        let mut buf = itoa_buf();
        headers.text(
            &X_RL_RESET,
            render_int(&mut buf, u64::try_from(reset).unwrap_or(0)),
        );
    }
}

/// `n` in decimal, written at the end of `buf` (no `fmt` machinery: it was ~300 instructions
/// of every keyed response).
pub(crate) fn render_int(buf: &mut [u8; 64], n: u64) -> &[u8] {
    let start = put_decimal(buf, 64, n);
    &buf[start..]
}

/// Writes `n` in decimal so that it ends just before `end`; returns where it starts.
fn put_decimal(buf: &mut [u8; 64], end: usize, mut n: u64) -> usize {
    let mut i = end;
    loop {
        i -= 1;
        buf[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            return i;
        }
    }
}

fn itoa_buf() -> [u8; 64] {
    [0u8; 64]
}

/// `"minute";r=<remaining>;t=<seconds>` rendered into a stack buffer.
fn render_ratelimit(buf: &mut [u8; 64], remaining: u64, reset: u64) -> &[u8] {
    const HEAD: &[u8] = b"\"minute\";r=";
    // Built from the end: `t=<reset>` after `;`, then `<remaining>`, then the head.
    let t = put_decimal(buf, 64, reset);
    buf[t - 3..t].copy_from_slice(b";t=");
    let r = put_decimal(buf, t - 3, remaining);
    let start = r - HEAD.len();
    buf[start..r].copy_from_slice(HEAD);
    &buf[start..]
}

/// The 400 for a path whose `..` climbs out of the prefix of the route it matched.
pub(crate) const CLIMBS_OUT: Refusal = refuse(
    Outcome::BadRequest,
    "the path climbs out of its route with '..'",
);

/// Routes and forwards the normalised path (see [`crate::path`]): rewrites `uri` when
/// normalising changed it. Returns how far a `..` climbed, or the 400 message.
fn normalize_uri(uri: &mut Uri) -> Result<Option<usize>, &'static str> {
    let normal = crate::path::normalize(uri.path())?;
    let climbed_to = normal.climbed_to;
    if let std::borrow::Cow::Owned(path) = normal.path {
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(
            pq.parse()
                .map_err(|_| "the normalised path is not a valid URI")?,
        );
        *uri = Uri::from_parts(parts).map_err(|_| "the normalised path is not a valid URI")?;
    }
    Ok(climbed_to)
}

/// An admitted request's units between the quota decision and the outcome. Dropped without
/// [`Admission::settle`] (the request future was cancelled: the client hung up while the
/// upstream had the request), the units are recorded as used, so every admitted request reaches
/// usage exactly once.
pub(crate) struct Admission<'g> {
    gw: &'g Gateway,
    reservation: Reservation,
    armed: bool,
}

impl<'g> Admission<'g> {
    pub(crate) fn new(gw: &'g Gateway, reservation: Reservation) -> Admission<'g> {
        Admission {
            gw,
            reservation,
            armed: true,
        }
    }

    /// The reservation, for the caller to account (used or refunded) itself.
    pub(crate) fn settle(mut self) -> Reservation {
        self.armed = false;
        self.reservation
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.gw.record_usage(&self.reservation);
        }
    }
}

impl Gateway {
    /// Entry point for every request on the main listener.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let start = Instant::now();
        if let Err(r) = check_request(&req) {
            self.own.unmatched.count(r.outcome, r.outcome.status());
            return Ok(error_response(r.outcome, r.message));
        }
        let climbed_to = match normalize_uri(req.uri_mut()) {
            Ok(c) => c,
            Err(message) => {
                self.own.unmatched.count(Outcome::BadRequest, 400);
                return Ok(error_response(Outcome::BadRequest, message));
            }
        };
        let path = req.uri().path();
        if path == "/health" || path == "/ready" {
            let resp = self.own_endpoint(path == "/ready");
            self.own.gateway.count(Outcome::Ok, resp.status().as_u16());
            return Ok(resp);
        }
        if path == VALIDATE_PATH && req.method() == Method::POST {
            return Ok(crate::validate::handle(&self, req).await);
        }
        if MANAGEMENT_PREFIXES.iter().any(|p| under(path, p)) {
            return Ok(self.management(req).await);
        }
        let route = {
            let table = self.routes.load();
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| req.uri().host());
            table.find(host, path).cloned()
        };
        let Some(route) = route else {
            self.own.unmatched.count(Outcome::RouteNotFound, 404);
            return Ok(error_response(
                Outcome::RouteNotFound,
                "no route for this path",
            ));
        };
        if climbed_to.is_some_and(|d| d < route.depth) {
            return Ok(self.refused(&route, CLIMBS_OUT, None, start));
        }
        Ok(self.proxy(route, req, start).await)
    }

    /// A configured route: the phases in order.
    async fn proxy(
        &self,
        route: Arc<Route>,
        req: Request<Incoming>,
        start: Instant,
    ) -> Response<Body> {
        if !route.needs_key() {
            if let Err(r) = check_body_size(&route, req.headers()) {
                return self.refused(&route, r, None, start);
            }
            let (result, upstream_time) = self.forward(&route, req, None).await;
            return self
                .finish(&route, None, result, upstream_time, start)
                .await;
        }
        // 1. key
        let Some((key, from)) = extract_key(req.headers(), route.key_source()) else {
            return self.refused(
                &route,
                refuse(
                    Outcome::MissingKey,
                    "an API key is required (X-API-Key or Authorization: Bearer)",
                ),
                None,
                start,
            );
        };
        // 2. replica
        let now_ms = self.clock.now_ms();
        let entry = match self.lookup(key, now_ms.div_euclid(1000)) {
            Ok(e) => e,
            Err(r) => return self.refused(&route, r, None, start),
        };
        // 3. route / plan
        if let Err(r) = check_route(&route, &entry, req.headers()) {
            return self.refused(&route, r, Some(&entry), start);
        }
        // 4. quota
        let (reservation, usage) = match self.reserve(&entry, route.cfg.cost).await {
            Ok(r) => r,
            Err(Err(r)) => return self.refused(&route, r, Some(&entry), start),
            Err(Ok(limited)) => return self.limited(&route, &entry, limited, start),
        };
        // From here the units are the client's, whoever hangs up: if hyper drops this future
        // (the client closed while the upstream worked), the guard records them as used.
        let admitted = Admission::new(self, reservation);
        // 5. forward
        let (result, upstream_time) = self.forward(&route, req, Some((&entry, from))).await;
        // 6.–7. settle, record
        self.finish(
            &route,
            Some((&entry, (admitted.settle(), usage))),
            result,
            upstream_time,
            start,
        )
        .await
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
    // Phase 5: forward.

    /// Sends the rewritten request upstream; returns the response (or why not) and upstream time.
    async fn forward(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
        key: Option<(&KeyEntry, KeyHeader)>,
    ) -> (Result<Response<Body>, UpstreamError>, Duration) {
        let target = route.pick();
        if target.authority.is_none() {
            return (Ok(echo(&req, key.map(|k| k.0))), Duration::ZERO);
        }
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (req, fault) = match upstream_request(route, target, req, key, upgrade) {
            Ok(r) => r,
            Err(_) => return (Err(UpstreamError::Unavailable), Duration::ZERO),
        };
        // A bodiless idempotent request goes once more on another connection if the first
        // fails before an answer (a pooled connection the upstream closed as it was reused),
        // as the fast lane does; anything else could happen twice.
        let again = (fault.is_none() && !upgrade && idempotent(req.method().as_str().as_bytes()))
            .then(|| bodiless_copy(&req));
        // A route with https upstreams has its own client (its TLS settings and pool).
        let client = route.client.as_ref().unwrap_or(&self.client);
        let sent = Instant::now();
        let deadline = tokio::time::Instant::now() + route.cfg.timeout;
        let mut result = tokio::time::timeout_at(deadline, client.request(req)).await;
        if let (Ok(Err(e)), Some(copy)) = (&result, again) {
            if !e.is_connect() {
                tracing::debug!(route = %route.cfg.name, error = %e, "retrying an idempotent request once");
                result = tokio::time::timeout_at(deadline, client.request(copy)).await;
            }
        }
        let took = sent.elapsed();
        let mut resp = match result {
            Err(_) => return (Err(UpstreamError::Timeout), took),
            Ok(Err(e)) => {
                // The client's body broke (bad chunked framing, past the route's limit, or the
                // client went away) after the upstream had the request: the client's fault.
                if let Some(f) = fault.as_deref().and_then(BodyFault::get) {
                    return (Err(UpstreamError::Client(f)), took);
                }
                if e.is_connect() {
                    route.mark_down(target);
                }
                tracing::warn!(route = %route.cfg.name, error = %e, "upstream request failed");
                return (Err(UpstreamError::Unavailable), took);
            }
            Ok(Ok(r)) => r,
        };
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching {
            let Some(client_side) = client_upgrade else {
                // A 101 to a request that asked for no (WebSocket) upgrade would leave the
                // client with a tunnel nobody meters.
                tracing::warn!(route = %route.cfg.name, "upstream switched protocols unasked");
                return (Err(UpstreamError::Unavailable), took);
            };
            let upstream_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(tunnel(client_side, upstream_side));
        }
        let (mut parts, body) = resp.into_parts();
        // A body framed by Transfer-Encoding: a Content-Length beside it is stale (RFC 9112
        // §6.3) and would frame the client's copy wrongly once the coding is re-done.
        if parts.headers.contains_key(header::TRANSFER_ENCODING) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        strip_hop_headers(&mut parts.headers, switching);
        let body = Body::upstream(body, route.cfg.timeout);
        (Ok(Response::from_parts(parts, body)), took)
    }

    // -----------------------------------------------------------------------------------------
    // Phases 6 and 7: settle and record.

    pub(crate) async fn finish(
        &self,
        route: &Route,
        keyed: Option<(&KeyEntry, (Reservation, Usage))>,
        result: Result<Response<Body>, UpstreamError>,
        upstream_time: Duration,
        start: Instant,
    ) -> Response<Body> {
        let (mut resp, outcome) = match result {
            Ok(r) => (r, Outcome::Ok),
            Err(e) => {
                let (outcome, message) = e.outcome();
                (error_response(outcome, message), outcome)
            }
        };
        if let Some((entry, (reservation, usage))) = keyed {
            // Refunded only when the upstream failed; a client's broken body is not a refund.
            let answered = !matches!(
                outcome,
                Outcome::UpstreamUnavailable | Outcome::UpstreamTimeout
            );
            let usage = self.account(entry, reservation, usage, answered).await;
            rate_limit_headers(
                resp.headers_mut(),
                entry,
                &usage,
                self.legacy_headers,
                reservation.at_ms.div_euclid(1000),
            );
        }
        self.record(route, outcome, resp.status().as_u16(), start, upstream_time);
        resp
    }

    /// Phases 6–7 for a keyed request: an answered request's units go to usage, an unanswered
    /// one's are given back; returns the usage its `RateLimit` header shows.
    pub async fn account(
        &self,
        entry: &KeyEntry,
        reservation: Reservation,
        mut usage: Usage,
        answered: bool,
    ) -> Usage {
        if answered {
            self.record_usage(&reservation);
        } else {
            self.settle(reservation).await;
            usage.minute_remaining = usage
                .minute_remaining
                .saturating_add(reservation.cost)
                .min(entry.tier.limits.per_minute);
            usage.day_used = usage.day_used.saturating_sub(reservation.cost);
        }
        usage
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
            entry,
            &usage,
            self.legacy_headers,
            now_secs,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(l.retry_after_secs));
        self.record(route, outcome, outcome.status(), start, Duration::ZERO);
        resp
    }

    async fn management(&self, req: Request<Incoming>) -> Response<Body> {
        let Some(m) = &self.management else {
            self.own.management.count(Outcome::UpstreamUnavailable, 502);
            return error_response(Outcome::UpstreamUnavailable, "no backend is configured");
        };
        match m.forward(req).await {
            Ok(resp) => {
                // A change made through this gateway is in force here when the answer leaves:
                // the backend names the feed sequence that holds it, and the answer waits
                // (bounded) until this gateway's replica has applied it.
                let feed_seq = resp
                    .headers()
                    .get(&FEED_SEQ)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(seq) = feed_seq {
                    if !self.replica.caught_up(seq, READ_YOUR_WRITES).await {
                        tracing::warn!(seq, "management answer sent before the key feed caught up");
                    }
                }
                self.own
                    .management
                    .count(Outcome::Ok, resp.status().as_u16());
                resp
            }
            Err(e) => {
                tracing::warn!(error = %e, "management request failed");
                self.own.management.count(Outcome::UpstreamUnavailable, 502);
                error_response(
                    Outcome::UpstreamUnavailable,
                    "the billing backend is unavailable",
                )
            }
        }
    }

    fn own_endpoint(&self, ready: bool) -> Response<Body> {
        if !ready {
            return json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec());
        }
        let loaded = self.replica.is_loaded();
        let reachable = self.health.backend_reachable();
        let redis = self.health.redis(self.quota.degraded());
        let redis_down = redis == crate::health::RedisHealth::Unreachable;
        let status = match (loaded, reachable && !redis_down) {
            (false, _) => "starting",
            (true, true) => "ready",
            (true, false) => "degraded",
        };
        let body = serde_json::json!({
            "status": status,
            "degraded": loaded && (!reachable || redis_down),
            "backend": if reachable { "reachable" } else { "unreachable" },
            "redis": redis.as_str(),
            "keys_loaded": self.replica.len(),
            "feed_seq": self.replica.seq(),
            "feed_head": self.replica.head(),
            "feed_lag_seconds": self.health.feed_lag_secs(),
            "usage_journal_batches": self.health.journal_depth.load(std::sync::atomic::Ordering::Relaxed),
        });
        let code = if loaded {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(code, serde_json::to_vec(&body).unwrap_or_default())
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
fn under(path: &str, prefix: &str) -> bool {
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

/// Rewrites the client's request for `target`: absolute URI, HTTP/1.1, hop-by-hop and key
/// headers removed, identity headers set (client-sent copies replaced), `Host` = upstream. A
/// request with a body gets a [`BodyFault`] the body sets if the client breaks it.
#[allow(clippy::type_complexity)]
fn upstream_request(
    route: &Route,
    target: &Target,
    req: Request<Incoming>,
    key: Option<(&KeyEntry, KeyHeader)>,
    upgrade: bool,
) -> Result<(Request<Body>, Option<Arc<BodyFault>>), http::Error> {
    let (mut parts, body) = req.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    // The host the client asked for (`Host`, or h2's `:authority`), before it is replaced.
    let client_host = parts
        .headers
        .get(header::HOST)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            uri.authority
                .as_ref()
                .map(|a| a.as_str().as_bytes().to_vec())
        });
    if route.cfg.strip_prefix {
        let pq = uri
            .path_and_query
            .as_ref()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let rest = upstream_target(route, pq).into_owned();
        uri.path_and_query = Some(rest.parse()?);
    }
    uri.scheme = Some(target.scheme.clone());
    uri.authority = target.authority.clone();
    if uri.path_and_query.is_none() {
        uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    parts.uri = Uri::from_parts(uri)?;
    parts.version = Version::HTTP_11;
    let h = &mut parts.headers;
    strip_hop_headers(h, upgrade);
    strip_key_headers(h, key.map(|k| k.1));
    let sent = forwarded::take_sent(h);
    if let Some(peer) = parts.extensions.get::<Arc<Peer>>() {
        let sent = |name: &'static [u8]| {
            sent.iter()
                .filter(move |(n, _)| *n == name)
                .map(|(_, v)| v.as_slice())
        };
        forwarded::emit(
            peer,
            client_host.as_deref(),
            sent,
            &mut forwarded::Map::new(h),
        );
    }
    if let Some((entry, _)) = key {
        h.insert(X_KEY_ID.clone(), entry.id_header.clone());
        h.insert(X_USER_ID.clone(), entry.user_header.clone());
        h.insert(X_PLAN.clone(), entry.tier.plan_header.clone());
    }
    if !route.cfg.preserve_host {
        if let Some(host) = &target.host {
            h.insert(header::HOST, host.clone());
        }
    }
    let (body, fault) = Body::client(body, route.cfg.max_body_bytes);
    Ok((Request::from_parts(parts, body), fault))
}

/// The same request without a body, to send again.
fn bodiless_copy(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(Body::Empty);
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// `builtin:echo`: what the request looked like after the gateway's checks, as JSON.
fn echo(req: &Request<Incoming>, key: Option<&KeyEntry>) -> Response<Body> {
    let body = serde_json::json!({
        "echo": true,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query().unwrap_or(""),
        "key_id": key.and_then(|k| k.id_header.to_str().ok()),
        "user_id": key.and_then(|k| k.user_header.to_str().ok()),
        "plan": key.map(|k| &*k.tier.plan),
    });
    json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

/// Copies bytes both ways between an upgraded client connection and the upstream's.
async fn tunnel(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut a = hyper_util::rt::TokioIo::new(client);
    let mut b = hyper_util::rt::TokioIo::new(upstream);
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_allowed_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer cli_free_abc"),
        );
        assert_eq!(
            extract_key(&h, KeySource::Either).map(|k| k.0),
            Some("cli_free_abc")
        );
        assert!(extract_key(&h, KeySource::ApiKeyHeader).is_none());
        h.insert(&X_API_KEY, HeaderValue::from_static("cli_pro_x"));
        assert_eq!(
            extract_key(&h, KeySource::Either).map(|k| k.0),
            Some("cli_pro_x")
        );
        assert_eq!(
            extract_key(&h, KeySource::Bearer).map(|k| k.0),
            Some("cli_free_abc")
        );
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Zm9vOmJhcg=="),
        );
        assert!(extract_key(&basic, KeySource::Either).is_none());
    }

    #[test]
    fn hop_headers_go_and_named_ones_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_headers(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn ratelimit_text() {
        let mut buf = itoa_buf();
        assert_eq!(render_ratelimit(&mut buf, 7, 45), b"\"minute\";r=7;t=45");
        let mut buf = itoa_buf();
        assert_eq!(
            render_ratelimit(&mut buf, u64::MAX, 0),
            b"\"minute\";r=18446744073709551615;t=0"
        );
        let mut buf = itoa_buf();
        assert_eq!(render_int(&mut buf, 0u64), b"0");
        let mut buf = itoa_buf();
        assert_eq!(render_int(&mut buf, 1_234_567), b"1234567");
    }

    #[test]
    fn management_prefixes() {
        assert!(under("/billing/create", "/billing"));
        assert!(under("/billing", "/billing"));
        assert!(!under("/billingx", "/billing"));
    }
}
