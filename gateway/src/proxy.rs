//! The hyper transport: every request the fast lane does not take (HTTP/1.0, h2, TLS, the
//! gateway's own paths, WebSockets, streamed bodies, `builtin:echo`, https upstreams).
//!
//! [`Gateway::handle`] answers what no route may see ([`check_request`]), the gateway's own
//! paths (`/health`, `/ready`, validate) and the management paths (to the backend), routes the
//! rest and hands it to the request phases ([`crate::phases`]) as an [`Exchange`] whose
//! forward sends it upstream with hyper-util's pooled client, streaming both bodies.

use crate::body::{Body, BodyFault};
use crate::config::MANAGEMENT_PREFIXES;
use crate::forwarded::{self, Peer};
use crate::headers::{error_response, idempotent, json_response, strip_hop_headers};
use crate::headers::{strip_key_headers, KeyHeader, X_KEY_ID, X_PLAN, X_USER_ID};
use crate::keys::KeyEntry;
use crate::metrics::Outcome;
use crate::phases::{refuse, under, upstream_target, Admission, Answered, Exchange, Gateway};
use crate::phases::{Refusal, Reply, Unanswered, UpstreamError, CLIMBS_OUT, VALIDATE_PATH};
use crate::routes::{Route, Target};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set by the backend on answers to changes: the key feed sequence that holds the change.
static FEED_SEQ: HeaderName = HeaderName::from_static(tollgate_protocol::feed::FEED_SEQ_HEADER);
/// Longest a management answer waits for the replica to apply its change.
const READ_YOUR_WRITES: Duration = Duration::from_secs(2);

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
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host());
        let route = match self.route(host, path) {
            Ok(route) => route,
            Err(not_found) => return Ok(not_found),
        };
        if climbed_to.is_some_and(|d| d < route.depth) {
            return Ok(self.refused(&route, CLIMBS_OUT, None, start));
        }
        Ok(match self.serve_route(&route, req, start).await {
            Reply::Forwarded(resp) | Reply::Gateway(resp) => resp,
        })
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

/// A request on hyper: phase 5 sends it with the gateway's client (a route's own for https).
impl Exchange for Request<Incoming> {
    type Headers = HeaderMap;
    type Output = Response<Body>;

    fn headers(&self) -> &HeaderMap {
        Request::headers(self)
    }

    async fn forward(
        self,
        gw: &Gateway,
        route: &Route,
        key: Option<&mut Admission<'_>>,
    ) -> Result<Answered<Response<Body>>, Unanswered> {
        let (result, upstream) = send(gw, route, self, key.as_deref().map(Admission::key)).await;
        match result {
            Ok(mut resp) => {
                if let Some(a) = key {
                    a.answered(resp.headers_mut());
                }
                let status = resp.status().as_u16();
                Ok(Answered {
                    output: resp,
                    status,
                    upstream,
                })
            }
            Err(error) => Err(Unanswered { error, upstream }),
        }
    }
}

/// Sends the rewritten request upstream; returns the response (or why not) and upstream time.
async fn send(
    gw: &Gateway,
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
    let client = route.client.as_ref().unwrap_or(&gw.client);
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
