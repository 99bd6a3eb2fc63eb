//! The fast lane and the hyper path answer alike: generated requests and generated upstream
//! answers go through two gateways on one [`RawUpstream`] — one with `[gateway] fast_lane =
//! true`, one with `fast_lane = false` — and both must give the client the same answer and the
//! upstream the same request (issue 18: "both request paths must behave the same").
//!
//! Per generated case, compared between the two paths:
//! - the client's answer: status, gateway error code, body bytes, end-to-end headers (names
//!   compared case-insensitively; `Date`, `Connection`, `Keep-Alive`, `Transfer-Encoding`,
//!   `Content-Length` and `RateLimit` left out, since framing may differ), and the `RateLimit`
//!   remaining count;
//! - what reached the upstream: how many requests, and for each its method, target, body and
//!   header multiset (names case-insensitive; hop-by-hop, `Host`, `Content-Length`,
//!   `Transfer-Encoding` left out; each gateway's own key text and key id shown as placeholders);
//! - that the connection still frames correctly afterwards (a follow-up request on it, unless
//!   the answer closed it, gets its own answer), and that the upstream never got a request it
//!   cannot frame.
//!
//! After all cases, each key's recorded usage equals the answered keyed requests on its path.
//!
//! The upstream picks the generated answer for a request by its `x-case` header. The plan has
//! high limits (a custom `free` plan) so generated traffic never meets the quota.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_e2e::gw::{route, Gateway, Key};
use tollgate_e2e::raw::{
    echo, error_code, lane_gateway, lane_name, wait_keys_loaded, Action, RawClient, RawResponse,
    RawUpstream, Recorded,
};

const T: Duration = Duration::from_secs(5);
const CASES: u32 = 256;

/// Stands for the gateway's own key text in generated headers.
const KEY: &str = "{KEY}";
/// A well-formed key no gateway knows.
const UNKNOWN_KEY: &str = "cli_free_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

const PLANS: &str = r#"
[[plans]]
id = "free"
name = "Free"
price_monthly_minor = 0
price_yearly_minor = 0
rate_limit_per_minute = 100000
daily_limit = 1000000
max_keys_per_user = 2
"#;

#[derive(Clone, Copy, Debug)]
enum KeyUse {
    None,
    ApiKey,
    Bearer,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Length,
    Chunked,
    Close,
}

/// What the upstream answers to the case's request.
#[derive(Clone, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    framing: Framing,
    /// `Connection: close` and a close after the answer.
    close: bool,
}

#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    path: String,
    key: KeyUse,
    extra: Vec<(&'static str, &'static str)>,
    close: bool,
    body: Option<Vec<u8>>,
    answer: Answer,
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
const SEGMENTS: [&str; 7] = ["a", "b", ".", "..", "%2e", "%41", ""];
const QUERIES: [&str; 4] = ["", "?q=1", "?x=%2e%2e&y=/../z", "?a"];
/// Extra request headers: ordinary ones, key carriers, identity spoofs and their underscore
/// spellings.
const EXTRA: [(&str, &str); 16] = [
    ("X-Custom", "one"),
    ("x-custom", "two"),
    ("Accept", "application/json"),
    ("Cookie", "session=abc"),
    ("X-API-Key", KEY),
    ("X_API_Key", KEY),
    ("Authorization", "Bearer {KEY}"),
    ("Authorization", "Basic dXNlcjpwYXNz"),
    ("X-Tollgate-Plan", "enterprise"),
    ("X_Tollgate_Plan", "enterprise"),
    ("x-tollgate-user-id", "admin"),
    ("X_Tollgate_User_Id", "admin"),
    ("X-Tollgate-Key-Id", "key_0000000000000000"),
    ("x_tollgate_key_id", "k"),
    ("Cache-Control", "no-cache"),
    ("X-Forwarded-For", "10.0.0.1"),
];
const STATUSES: [u16; 7] = [200, 201, 204, 301, 304, 404, 500];
const ANSWER_HEADERS: [(&str, &str); 6] = [
    ("Content-Type", "application/json"),
    ("X-Upstream", "1"),
    ("Cache-Control", "max-age=5"),
    ("Set-Cookie", "s=1; Path=/"),
    ("Location", "/elsewhere"),
    ("ETag", "\"abc\""),
];

fn answer() -> impl Strategy<Value = Answer> {
    (
        prop::sample::select(&STATUSES[..]),
        prop::sample::subsequence(&ANSWER_HEADERS[..], 0..4),
        prop::collection::vec(any::<u8>(), 0..200),
        prop::sample::select(&[Framing::Length, Framing::Chunked, Framing::Close][..]),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(status, headers, body, framing, close)| Answer {
            status,
            headers,
            body,
            framing,
            close,
        })
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(&METHODS[..]),
        prop::bool::ANY,
        prop::collection::vec(prop::sample::select(&SEGMENTS[..]), 0..4),
        prop::sample::select(&QUERIES[..]),
        prop::sample::select(
            &[
                KeyUse::None,
                KeyUse::ApiKey,
                KeyUse::Bearer,
                KeyUse::Unknown,
            ][..],
        ),
        prop::collection::vec(prop::sample::select(&EXTRA[..]), 0..4),
        prop::bool::weighted(0.25),
        prop::option::weighted(0.4, prop::collection::vec(32u8..127, 0..100)),
        answer(),
    )
        .prop_map(
            |(method, keyed, segments, query, key, extra, close, body, answer)| Case {
                method,
                path: format!(
                    "{}/{}{query}",
                    if keyed { "/v1" } else { "/open" },
                    segments.join("/")
                ),
                key,
                extra,
                close,
                body,
                answer,
            },
        )
}

/// The upstream's bytes for `answer` to a request with `method`; HEAD, 204 and 304 get no body.
fn answer_actions(answer: &Answer, method: &str) -> Vec<Action> {
    let no_body = method == "HEAD" || answer.status == 204 || answer.status == 304;
    let reason = http_reason(answer.status);
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", answer.status).into_bytes();
    for (n, v) in &answer.headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    let bodyless_status = answer.status == 204 || answer.status == 304;
    match answer.framing {
        Framing::Length if !bodyless_status => {
            out.extend_from_slice(format!("Content-Length: {}\r\n", answer.body.len()).as_bytes())
        }
        Framing::Chunked if !bodyless_status => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        _ => {}
    }
    let close = answer.close || (answer.framing == Framing::Close && !no_body);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !no_body {
        match answer.framing {
            Framing::Length | Framing::Close => out.extend_from_slice(&answer.body),
            Framing::Chunked => {
                for chunk in answer.body.chunks(64) {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    out.extend_from_slice(chunk);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
        }
    }
    let mut actions = vec![Action::Write(out)];
    if close {
        actions.push(Action::Close);
    }
    actions
}

fn http_reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        404 => "Not Found",
        _ => "Internal Server Error",
    }
}

/// One request path under test.
struct Side {
    lane: bool,
    gw: Gateway,
    key: Key,
    /// Keyed requests answered (and so counted) on this path.
    counted: Mutex<u64>,
}

struct World {
    up: RawUpstream,
    answers: Arc<Mutex<HashMap<String, Answer>>>,
    sides: [Side; 2],
    next: Mutex<u64>,
}

/// The request bytes of `case` for a gateway whose key is `key`.
fn request_bytes(case: &Case, key: &str, id: &str) -> Vec<u8> {
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: gw\r\nx-case: {id}\r\n",
        case.method, case.path
    )
    .into_bytes();
    match case.key {
        KeyUse::None => {}
        KeyUse::ApiKey => out.extend_from_slice(format!("X-API-Key: {key}\r\n").as_bytes()),
        KeyUse::Bearer => {
            out.extend_from_slice(format!("Authorization: Bearer {key}\r\n").as_bytes())
        }
        KeyUse::Unknown => {
            out.extend_from_slice(format!("X-API-Key: {UNKNOWN_KEY}\r\n").as_bytes())
        }
    }
    for (n, v) in &case.extra {
        out.extend_from_slice(format!("{n}: {}\r\n", v.replace(KEY, key)).as_bytes());
    }
    if case.close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    if let Some(b) = &case.body {
        out.extend_from_slice(format!("Content-Length: {}\r\n", b.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if let Some(b) = &case.body {
        out.extend_from_slice(b);
    }
    out
}

/// What one path did with one case, normalised for comparison.
#[derive(Debug, PartialEq)]
struct Outcome {
    status: u16,
    code: Option<String>,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
    remaining: Option<u64>,
    upstream: Vec<UpstreamRequest>,
}

#[derive(Debug, PartialEq)]
struct UpstreamRequest {
    method: String,
    target: String,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

const UNCOMPARED_RESPONSE: [&str; 6] = [
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "ratelimit",
];
const UNCOMPARED_REQUEST: [&str; 11] = [
    "x-case",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "host",
    "content-length",
];

fn remaining(r: &RawResponse) -> Option<u64> {
    let text = r.header_str("ratelimit")?;
    let at = text.find(";r=")? + 3;
    text[at..].split(';').next()?.trim().parse().ok()
}

fn normalise_upstream(rec: &Recorded, key: &Key) -> UpstreamRequest {
    let mut headers: Vec<(String, String)> = rec
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .filter(|(n, _)| !UNCOMPARED_REQUEST.contains(&n.as_str()))
        .map(|(n, v)| {
            let v = v
                .replace(&key.api_key, "<key>")
                .replace(&key.key_id, "<key-id>");
            (n, v)
        })
        .collect();
    headers.sort();
    UpstreamRequest {
        method: rec.method.clone(),
        target: rec.target.clone(),
        body: rec.body.clone(),
        headers,
    }
}

/// Sends `case` through `side`, then a follow-up on the same connection when it stays open.
async fn run_on(world: &World, side: &Side, case: &Case, id: &str) -> Result<Outcome, String> {
    let l = lane_name(side.lane);
    let malformed = world.up.malformed().len();
    let mut c = RawClient::connect(&side.gw.url).await;
    c.send(&request_bytes(case, &side.key.api_key, id))
        .await
        .map_err(|e| format!("{l}: send: {e}"))?;
    let r = if case.method == "HEAD" {
        c.read_response_to_head(T).await
    } else {
        c.read_response(T).await
    }
    .map_err(|e| format!("{l}: {e}"))?;
    if !case.close && !r.says_close() {
        let after = format!("/open/after-{id}");
        c.send(format!("GET {after} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("{l}: follow-up send: {e}"))?;
        let f = c
            .read_response(T)
            .await
            .map_err(|e| format!("{l}: follow-up on a kept-alive connection: {e}"))?;
        let target = f.json().map(|v| v["target"].clone());
        if f.status != 200 || target != Some(serde_json::Value::from(after.clone())) {
            return Err(format!(
                "{l}: the connection lost its framing: the follow-up got {}",
                f.summary()
            ));
        }
    }
    if world.up.malformed().len() != malformed {
        return Err(format!(
            "{l}: the upstream got a request it cannot frame:\n{}",
            world.up.summary()
        ));
    }
    let upstream = world
        .up
        .requests()
        .iter()
        .filter(|rec| rec.header_str("x-case").as_deref() == Some(id))
        .map(|rec| normalise_upstream(rec, &side.key))
        .collect();
    let mut headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .filter(|(n, _)| !UNCOMPARED_RESPONSE.contains(&n.as_str()))
        .collect();
    headers.sort();
    if r.header("ratelimit").is_some() && ![429, 502, 504].contains(&r.status) {
        *side.counted.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    }
    Ok(Outcome {
        status: r.status,
        code: error_code(&r.body),
        body: r.body.clone(),
        headers,
        remaining: remaining(&r),
        upstream,
    })
}

async fn check(world: &World, case: Case) -> Result<(), TestCaseError> {
    let n = {
        let mut next = world.next.lock().unwrap_or_else(|p| p.into_inner());
        *next += 1;
        *next
    };
    let mut outcomes = Vec::new();
    for side in &world.sides {
        // Each path gets its own case id, so its upstream requests are told apart.
        let id = format!("{n}-{}", u8::from(side.lane));
        world
            .answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), case.answer.clone());
        let outcome = run_on(world, side, &case, &id)
            .await
            .map_err(TestCaseError::fail)?;
        outcomes.push(outcome);
    }
    let (fast, hyper) = (&outcomes[0], &outcomes[1]);
    // Every comparison: left = fast lane, right = hyper path.
    prop_assert_eq!(
        fast.status,
        hyper.status,
        "status (left: fast lane, right: hyper path)"
    );
    prop_assert_eq!(
        &fast.code,
        &hyper.code,
        "gateway error code (left: fast lane)"
    );
    prop_assert_eq!(
        String::from_utf8_lossy(&fast.body),
        String::from_utf8_lossy(&hyper.body),
        "body (left: fast lane, right: hyper path)"
    );
    prop_assert_eq!(
        &fast.headers,
        &hyper.headers,
        "end-to-end response headers (left: fast lane, right: hyper path)"
    );
    prop_assert_eq!(
        fast.remaining,
        hyper.remaining,
        "RateLimit remaining (left: fast lane, right: hyper path)"
    );
    prop_assert_eq!(
        fast.upstream.len(),
        hyper.upstream.len(),
        "requests at the upstream: fast lane {:?}, hyper path {:?}",
        &fast.upstream,
        &hyper.upstream
    );
    for (f, h) in fast.upstream.iter().zip(&hyper.upstream) {
        prop_assert_eq!(
            f,
            h,
            "the request at the upstream (left: fast lane, right: hyper path)"
        );
    }
    Ok(())
}

#[test]
fn fast_lane_and_hyper_path_answer_alike() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let answers: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
    let table = answers.clone();
    let up = RawUpstream::start_with(move |rec| {
        let answer = rec.header_str("x-case").and_then(|id| {
            table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .cloned()
        });
        match answer {
            Some(a) => answer_actions(&a, &rec.method),
            None => echo(rec),
        }
    });
    let routes = [
        PLANS.to_string(),
        route("/v1", &up.url(), "name = \"v1\""),
        route("/open", &up.url(), "name = \"open\"\nauth = \"none\""),
    ]
    .concat();
    let sides = rt.block_on(async {
        let mut sides = Vec::new();
        for lane in [true, false] {
            let gw = lane_gateway(&routes, lane, "");
            let key = gw.api().mint("diff-user", "free").await;
            wait_keys_loaded(&gw, 1).await;
            sides.push(Side {
                lane,
                gw,
                key,
                counted: Mutex::new(0),
            });
        }
        sides
    });
    let [fast, hyper]: [Side; 2] = match sides.try_into() {
        Ok(s) => s,
        Err(_) => panic!("two gateways"),
    };
    let world = World {
        up,
        answers,
        sides: [fast, hyper],
        next: Mutex::new(0),
    };
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        max_shrink_iters: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "proptest-regressions/gateway_differential.txt",
        ))),
        ..Config::default()
    });
    let result = runner.run(&case(), |case| rt.block_on(check(&world, case)));
    if let Err(e) = result {
        panic!("the fast lane and the hyper path differ: {e}");
    }

    // Every answered keyed request is in usage exactly once, on both paths.
    rt.block_on(async {
        for side in &world.sides {
            let want = *side.counted.lock().unwrap_or_else(|p| p.into_inner());
            let api = side.gw.api();
            let id = side.key.key_id.clone();
            let mut last = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while tokio::time::Instant::now() < deadline {
                last = api.usage_today(&id).await;
                if last == want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                last,
                want,
                "{}: usage shows {last} units for {want} answered keyed requests",
                lane_name(side.lane)
            );
        }
    });
}
