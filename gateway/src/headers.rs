//! Request and response headers both transports handle alike: the key (`X-API-Key` or
//! `Authorization: Bearer`) and the identity headers the gateway owns, hop-by-hop headers,
//! `Content-Length` values, the `RateLimit` headers, and the JSON error answer.
//!
//! Each helper works on hyper's `HeaderMap` and on the fast lane's parsed head alike ([`Headers`]
//! to read a request, [`HeaderSink`] to add to a response), so both request paths take and add
//! the same headers. Nothing here allocates on a request that needs no change.

use crate::body::Body;
use crate::metrics::Outcome;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tollgate_protocol::error::ErrorBody;

pub(crate) static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub(crate) static X_KEY_ID: HeaderName = HeaderName::from_static("x-tollgate-key-id");
pub(crate) static X_USER_ID: HeaderName = HeaderName::from_static("x-tollgate-user-id");
pub(crate) static X_PLAN: HeaderName = HeaderName::from_static("x-tollgate-plan");
pub(crate) static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static X_RL_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RL_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RL_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The JSON error body (the outcome's stable code and `message`) with the outcome's status.
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
pub(crate) fn strip_key_headers(headers: &mut HeaderMap, key_from: Option<KeyHeader>) {
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

/// Which request headers may carry the key (a route's `key_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource {
    ApiKeyHeader,
    Bearer,
    Either,
}

/// Which header the key came from (so exactly that one is removed before forwarding).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum KeyHeader {
    ApiKey,
    Bearer,
}

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

/// What the `RateLimit` headers of one keyed response say: the key's tier's precomputed
/// values and the state of its minute window.
pub struct RateLimit<'a> {
    /// `RateLimit-Policy`.
    pub policy: &'a HeaderValue,
    /// The per-minute limit as text (legacy `X-RateLimit-Limit`).
    pub minute_limit: &'a HeaderValue,
    /// Units still available in the trailing minute.
    pub remaining: u64,
    /// Seconds until units in the minute window start to free up.
    pub reset_secs: u64,
}

/// Adds `RateLimit-Policy`, `RateLimit` (and the legacy trio when enabled).
pub fn rate_limit_headers<S: HeaderSink + ?Sized>(
    headers: &mut S,
    rl: &RateLimit<'_>,
    legacy: bool,
    now_secs: i64,
) {
    headers.value(&RATELIMIT_POLICY, rl.policy);
    let mut buf = [0u8; RATELIMIT_LEN];
    headers.text(
        &RATELIMIT,
        render_ratelimit(&mut buf, rl.remaining, rl.reset_secs),
    );
    if legacy {
        headers.value(&X_RL_LIMIT, rl.minute_limit);
        let mut n = itoa::Buffer::new();
        headers.text(&X_RL_REMAINING, n.format(rl.remaining).as_bytes());
        let reset = now_secs.saturating_add(i64::try_from(rl.reset_secs).unwrap_or(0));
        headers.text(&X_RL_RESET, n.format(reset.max(0)).as_bytes());
    }
}

/// Room for the longest `RateLimit` value (both numbers of 20 digits).
const RATELIMIT_LEN: usize = 64;

/// `"minute";r=<remaining>;t=<seconds>` rendered into a stack buffer (no `fmt` machinery: it
/// was ~300 instructions of every keyed response).
fn render_ratelimit(buf: &mut [u8; RATELIMIT_LEN], remaining: u64, reset: u64) -> &[u8] {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let parts: [&[u8]; 4] = [
        b"\"minute\";r=",
        r.format(remaining).as_bytes(),
        b";t=",
        t.format(reset).as_bytes(),
    ];
    let mut len = 0;
    for p in parts {
        buf[len..len + p.len()].copy_from_slice(p);
        len += p.len();
    }
    &buf[..len]
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
        let mut buf = [0u8; RATELIMIT_LEN];
        assert_eq!(render_ratelimit(&mut buf, 7, 45), b"\"minute\";r=7;t=45");
        let mut buf = [0u8; RATELIMIT_LEN];
        assert_eq!(
            render_ratelimit(&mut buf, u64::MAX, 0),
            b"\"minute\";r=18446744073709551615;t=0"
        );
        let mut buf = [0u8; RATELIMIT_LEN];
        assert_eq!(
            render_ratelimit(&mut buf, u64::MAX, u64::MAX),
            b"\"minute\";r=18446744073709551615;t=18446744073709551615"
        );
    }
}
