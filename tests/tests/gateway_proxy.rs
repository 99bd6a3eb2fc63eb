//! The gateway's request path end to end: the real `tollgate-gateway` (embedded backend) in
//! front of a real upstream HTTP server.

use serde_json::{json, Value};
use std::time::Duration;
use tollgate_e2e::gw::{metric, metric_sum, route, Gateway};
use tollgate_e2e::upstream::{down_url, pattern_byte, Fnv, Upstream};
use tollgate_e2e::{client, eventually};

fn routes(up: &Upstream) -> String {
    let u = up.url();
    [
        route("/v1", &u, "name = \"v1\""),
        route("/costly", &u, "name = \"costly\"\ncost = 4"),
        route(
            "/pro",
            &u,
            "name = \"pro\"\nplans = [\"pro\", \"enterprise\"]",
        ),
        route("/open", &u, "name = \"open\"\nauth = \"none\""),
        route("/files", &u, "name = \"files\"\nstrip_prefix = true"),
        route("/down", &down_url(), "name = \"down\""),
        route(
            "/slow",
            &u,
            "name = \"slow\"\nstrip_prefix = true\ntimeout_ms = 300",
        ),
    ]
    .concat()
}

async fn get(url: &str, key: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(k) = key {
        req = req.header("X-API-Key", k);
    }
    req.send().await.expect("request")
}

async fn code_of(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// RFC 3339 of unix seconds (UTC).
fn rfc3339(unix: i64) -> String {
    let day = tollgate_protocol::day::day_index(unix);
    let s = unix - day * 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        tollgate_protocol::day::format_day(day),
        s / 3600,
        (s / 60) % 60,
        s % 60
    )
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_has_its_status_and_code() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let api = gw.api();
    let v1 = format!("{}/v1/x", gw.url);

    assert_eq!(
        code_of(get(&v1, None).await).await,
        (401, "missing_key".into())
    );
    assert_eq!(
        code_of(get(&v1, Some("not a key")).await).await,
        (401, "invalid_key".into())
    );
    assert_eq!(
        code_of(
            get(
                &v1,
                Some("cli_free_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            )
            .await
        )
        .await,
        (401, "invalid_key".into())
    );
    let bearer = client()
        .get(&v1)
        .bearer_auth("cli_free_nope")
        .send()
        .await
        .expect("req");
    assert_eq!(code_of(bearer).await, (401, "invalid_key".into()));

    let revoked = api.mint("rej-revoked", "free").await;
    eventually(
        Duration::from_secs(2),
        "key reaches the gateway",
        || async { (get(&v1, Some(&revoked.api_key)).await.status() == 200).then_some(()) },
    )
    .await;
    api.revoke(&revoked.key_id).await;
    eventually(
        Duration::from_secs(2),
        "revocation reaches the gateway",
        || async {
            (code_of(get(&v1, Some(&revoked.api_key)).await).await == (401, "key_revoked".into()))
                .then_some(())
        },
    )
    .await;

    let expiring = api
        .mint_with(
            json!({"user_id": "rej-exp", "plan": "free", "expires_at": rfc3339(now_secs() + 2)}),
        )
        .await;
    eventually(Duration::from_secs(6), "expiry is enforced", || async {
        (code_of(get(&v1, Some(&expiring.api_key)).await).await == (401, "key_expired".into()))
            .then_some(())
    })
    .await;

    let free = api.mint("rej-free", "free").await;
    eventually(
        Duration::from_secs(2),
        "key reaches the gateway",
        || async {
            (get(&format!("{}/open/x", gw.url), None).await.status() == 200
                && get(&format!("{}/pro/x", gw.url), Some(&free.api_key))
                    .await
                    .status()
                    != 401)
                .then_some(())
        },
    )
    .await;
    let pro = get(&format!("{}/pro/x", gw.url), Some(&free.api_key)).await;
    assert!(pro.headers().contains_key("ratelimit-policy"));
    assert_eq!(code_of(pro).await, (403, "plan_not_allowed".into()));

    for i in 0..10 {
        let r = get(&v1, Some(&free.api_key)).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(
            r.headers()["ratelimit-policy"],
            "\"minute\";q=10;w=60, \"day\";q=50;w=86400"
        );
        let rl = r.headers()["ratelimit"].to_str().unwrap_or("").to_string();
        assert!(
            rl.starts_with(&format!("\"minute\";r={};t=", 9 - i)),
            "{rl}"
        );
    }
    let limited = get(&v1, Some(&free.api_key)).await;
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert!(limited.headers()["ratelimit"]
        .to_str()
        .unwrap_or("")
        .starts_with("\"minute\";r=0;"));
    assert_eq!(code_of(limited).await, (429, "rate_limited".into()));

    let daily = api
        .mint_with(json!({"user_id": "rej-daily", "plan": "free", "daily_limit": 3}))
        .await;
    eventually(
        Duration::from_secs(2),
        "key reaches the gateway",
        || async {
            (get(&format!("{}/pro/x", gw.url), Some(&daily.api_key))
                .await
                .status()
                == 403)
                .then_some(())
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get(&v1, Some(&daily.api_key)).await.status(), 200);
    }
    let over = get(&v1, Some(&daily.api_key)).await;
    let retry: i64 = over.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let to_midnight = tollgate_protocol::day::next_midnight(now_secs()) - now_secs();
    assert!(
        (retry - to_midnight).abs() <= 2,
        "Retry-After {retry}, midnight in {to_midnight}"
    );
    assert_eq!(code_of(over).await, (429, "daily_limit_exceeded".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_identity_headers_and_never_the_key() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("ident-user", "free").await;
    let url = format!("{}/v1/echo?q=1", gw.url);
    let echo = eventually(Duration::from_secs(2), "key usable", || async {
        let r = client()
            .get(&url)
            .header("X-API-Key", &key.api_key)
            .header("X-Tollgate-Key-Id", "key_ffffffffffffffff")
            .header("X-Tollgate-Plan", "enterprise")
            .header("Authorization", "Basic dXNlcjpwdw==")
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await
    .0;
    let h = &echo["headers"];
    assert_eq!(h["x-tollgate-key-id"], key.key_id.as_str());
    assert_eq!(h["x-tollgate-user-id"], "ident-user");
    assert_eq!(h["x-tollgate-plan"], "free");
    assert!(h.get("x-api-key").is_none(), "{h}");
    assert_eq!(
        h["authorization"], "Basic dXNlcjpwdw==",
        "an unrelated Authorization passes through"
    );
    assert_eq!(echo["path"], "/v1/echo");
    assert_eq!(echo["query"], "q=1");
    assert!(
        !echo.to_string().contains(&key.api_key),
        "the key leaked upstream: {echo}"
    );

    let r = client()
        .get(&url)
        .bearer_auth(&key.api_key)
        .send()
        .await
        .expect("bearer");
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.expect("json");
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-tollgate-key-id"], key.key_id.as_str());
    assert!(!echo.to_string().contains(&key.api_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_requests_consume_nothing_and_cost_counts() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("cost-user", "free").await;
    let costly = format!("{}/costly/x", gw.url);
    let v1 = format!("{}/v1/x", gw.url);
    eventually(Duration::from_secs(2), "key usable", || async {
        (get(&format!("{}/pro/x", gw.url), Some(&key.api_key))
            .await
            .status()
            == 403)
            .then_some(())
    })
    .await;
    let hits = up.hits();
    assert_eq!(get(&costly, Some(&key.api_key)).await.status(), 200); // 4
    assert_eq!(get(&costly, Some(&key.api_key)).await.status(), 200); // 8
    for _ in 0..20 {
        assert_eq!(
            code_of(get(&costly, Some(&key.api_key)).await).await,
            (429, "rate_limited".into())
        );
    }
    assert_eq!(
        get(&v1, Some(&key.api_key)).await.status(),
        200,
        "9: the 20 rejections took nothing"
    );
    let last = get(&v1, Some(&key.api_key)).await;
    assert_eq!(last.status(), 200);
    assert!(last.headers()["ratelimit"]
        .to_str()
        .unwrap_or("")
        .starts_with("\"minute\";r=0;"));
    assert_eq!(code_of(get(&v1, Some(&key.api_key)).await).await.0, 429);
    assert_eq!(
        up.hits() - hits,
        4,
        "only admitted requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_restricted_route_admits_paid_plans_only() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let api = gw.api();
    let free = api.mint("plans-free", "free").await;
    api.grant("plans-pro", "pro").await;
    let pro = api.mint("plans-pro", "pro").await;
    let url = format!("{}/pro/x", gw.url);
    eventually(Duration::from_secs(2), "pro key admitted", || async {
        (get(&url, Some(&pro.api_key)).await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(
        code_of(get(&url, Some(&free.api_key)).await).await,
        (403, "plan_not_allowed".into())
    );
    assert_eq!(
        get(&format!("{}/v1/x", gw.url), Some(&free.api_key))
            .await
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_or_slow_is_refunded() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("down-user", "free").await;
    let down = format!("{}/down/x", gw.url);
    eventually(Duration::from_secs(2), "key usable", || async {
        (get(&down, Some(&key.api_key)).await.status() == 502).then_some(())
    })
    .await;
    for _ in 0..14 {
        let r = get(&down, Some(&key.api_key)).await;
        assert!(r.headers().contains_key("ratelimit"));
        assert_eq!(code_of(r).await, (502, "upstream_unavailable".into()));
    }
    for _ in 0..3 {
        assert_eq!(
            code_of(get(&format!("{}/slow/slow/2000", gw.url), Some(&key.api_key)).await).await,
            (504, "upstream_timeout".into())
        );
    }
    let v1 = format!("{}/v1/x", gw.url);
    for i in 0..10 {
        assert_eq!(
            get(&v1, Some(&key.api_key)).await.status(),
            200,
            "request {i}: failed requests were refunded"
        );
    }
    assert_eq!(
        code_of(get(&v1, Some(&key.api_key)).await).await.1,
        "rate_limited"
    );
    let text = gw.scrape().await;
    assert_eq!(
        metric(&text, "tollgate_gateway_refunded_units_total", ""),
        Some(18.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabyte_bodies_stream_intact() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("big-user", "free").await;
    const N: usize = 20 * 1024 * 1024;
    let body: Vec<u8> = (0..N as u64).map(|i| pattern_byte(i * 3 + 1)).collect();
    let mut fnv = Fnv::default();
    fnv.update(&body);
    let url = format!("{}/files/upload", gw.url);
    let echo = eventually(Duration::from_secs(2), "key usable", || {
        let body = body.clone();
        let url = url.clone();
        let key = key.api_key.clone();
        async move {
            let r = client()
                .post(&url)
                .header("X-API-Key", key)
                .body(body)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await
    .0;
    assert_eq!(echo["path"], "/upload");
    assert_eq!(echo["bytes"].as_u64(), Some(N as u64));
    assert_eq!(
        echo["fnv"].as_str(),
        Some(format!("{:016x}", fnv.0).as_str())
    );

    let r = get(&format!("{}/files/big/{N}", gw.url), Some(&key.api_key)).await;
    assert_eq!(r.status(), 200);
    let got = r.bytes().await.expect("download");
    assert_eq!(got.len(), N);
    assert!(
        got.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64)),
        "downloaded bytes differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_endpoint_counts_one_unit() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("val-user", "free").await;
    let url = format!("{}/api/marketplace/keys/validate", gw.url);
    let first = eventually(Duration::from_secs(2), "key known", || async {
        let v: Value = client()
            .post(&url)
            .json(&json!({"api_key": key.api_key}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["valid"] == true).then_some(v)
    })
    .await
    .0;
    assert_eq!(first["key_id"], key.key_id.as_str());
    assert_eq!(first["plan"], "free");
    assert_eq!(first["usage_today"], 1);
    assert_eq!(first["daily_limit"], 50);
    assert_eq!(first["remaining"], 49);
    assert_eq!(first["rate_limit"], 10);
    let by_header: Value = client()
        .post(&url)
        .header("X-API-Key", &key.api_key)
        .send()
        .await
        .expect("v")
        .json()
        .await
        .expect("j");
    assert_eq!(by_header["usage_today"], 2);
    for _ in 0..8 {
        assert_eq!(
            get(&format!("{}/v1/x", gw.url), Some(&key.api_key))
                .await
                .status(),
            200
        );
    }
    let limited: Value = client()
        .post(&url)
        .json(&json!({"api_key": key.api_key}))
        .send()
        .await
        .expect("v")
        .json()
        .await
        .expect("j");
    assert_eq!(limited["valid"], false);
    assert_eq!(limited["code"], "rate_limited");
    assert!(
        limited["retry_after"]
            .as_u64()
            .is_some_and(|s| (1..=60).contains(&s)),
        "{limited}"
    );
    let unknown: Value = client()
        .post(&url)
        .json(&json!({"api_key": "cli_free_nope"}))
        .send()
        .await
        .expect("v")
        .json()
        .await
        .expect("j");
    assert_eq!(
        (unknown["valid"].clone(), unknown["code"].clone()),
        (json!(false), json!("invalid_key"))
    );
    let bad = client()
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("v");
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counters_equal_what_was_sent() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("metrics-user", "free").await;
    let v1 = format!("{}/v1/x", gw.url);
    // Wait for the key through a route that is not counted below.
    eventually(Duration::from_secs(2), "key usable", || async {
        (get(&format!("{}/pro/x", gw.url), Some(&key.api_key))
            .await
            .status()
            == 403)
            .then_some(())
    })
    .await;
    for _ in 0..8 {
        assert_eq!(get(&v1, Some(&key.api_key)).await.status(), 200);
    }
    for _ in 0..3 {
        assert_eq!(get(&v1, None).await.status(), 401);
    }
    for _ in 0..2 {
        assert_eq!(
            get(&format!("{}/v1/status/418", gw.url), Some(&key.api_key))
                .await
                .status(),
            418
        );
    }
    for _ in 0..4 {
        assert_eq!(get(&v1, Some(&key.api_key)).await.status(), 429);
    }
    for _ in 0..5 {
        assert_eq!(get(&format!("{}/open/x", gw.url), None).await.status(), 200);
    }
    let text = gw.scrape().await;
    let m = |labels: &str| metric(&text, "tollgate_gateway_requests_total", labels);
    assert_eq!(
        m("route=\"v1\",status=\"200\",code=\"ok\""),
        Some(8.0),
        "{text}"
    );
    assert_eq!(m("route=\"v1\",status=\"418\",code=\"ok\""), Some(2.0));
    assert_eq!(
        m("route=\"v1\",status=\"401\",code=\"missing_key\""),
        Some(3.0)
    );
    assert_eq!(
        m("route=\"v1\",status=\"429\",code=\"rate_limited\""),
        Some(4.0)
    );
    assert_eq!(m("route=\"open\",status=\"200\",code=\"ok\""), Some(5.0));
    assert_eq!(
        metric_sum(&text, "tollgate_gateway_requests_total", &["route=\"v1\""]),
        17.0
    );
    assert_eq!(
        metric(&text, "tollgate_gateway_admitted_units_total", ""),
        Some(10.0)
    );
    assert_eq!(
        metric(
            &text,
            "tollgate_gateway_upstream_seconds_count",
            "route=\"v1\""
        ),
        Some(10.0)
    );
    assert_eq!(metric(&text, "tollgate_gateway_keys_loaded", ""), Some(1.0));
    assert!(metric(&text, "tollgate_gateway_overhead_seconds_count", "").is_some_and(|n| n >= 22.0));
    assert_eq!(metric(&text, "tollgate_gateway_degraded", ""), Some(0.0));
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from a raw socket.
async fn read_response(s: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let body = pending[end + 4..end + 4 + len].to_vec();
                pending.drain(..end + 4 + len);
                return (head, body);
            }
        }
        let mut buf = [0u8; 8192];
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "connection closed mid-response");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// The HTTP/1.1 fast lane (gateway/src/h1.rs) carries ordinary keep-alive traffic without
/// handing any connection to the general stack, and answers as the general path does: bodies
/// both ways, sized and chunked responses small and large, HEAD, 204, `strip_prefix` with a
/// query, pipelined requests. HTTP/1.0 and chunked uploads are handed off and still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_lane_answers_like_the_general_path() {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let key = gw.api().mint("lane-user", "free").await;
    let k = key.api_key.as_str();
    eventually(Duration::from_secs(2), "key usable", || async {
        (get(&format!("{}/pro/x", gw.url), Some(k)).await.status() == 403).then_some(())
    })
    .await;
    let handed_off = |text: &str| {
        metric(text, "tollgate_gateway_connections_handed_off_total", "").unwrap_or(-1.0)
    };
    let before = handed_off(&gw.scrape().await);
    let c = client();
    let pattern_ok = |b: &[u8], n: usize| {
        b.len() == n
            && b.iter()
                .enumerate()
                .all(|(i, x)| *x == pattern_byte(i as u64))
    };

    // Keyed: a chunked answer of 300 kB, a POST body, HEAD, 204, strip_prefix with a query.
    let r = c
        .get(format!("{}/v1/chunked/300000", gw.url))
        .header("X-API-Key", k)
        .send()
        .await
        .expect("chunked");
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("ratelimit"), "{:?}", r.headers());
    assert!(
        pattern_ok(&r.bytes().await.expect("body"), 300_000),
        "chunked body differs"
    );
    let body: Vec<u8> = (0..3000u64).map(pattern_byte).collect();
    let mut fnv = Fnv::default();
    fnv.update(&body);
    let echo: Value = c
        .post(format!("{}/v1/echo", gw.url))
        .header("Authorization", format!("Bearer {k}"))
        .body(body)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["bytes"], 3000);
    assert_eq!(
        echo["fnv"].as_str(),
        Some(format!("{:016x}", fnv.0).as_str())
    );
    assert_eq!(
        echo["headers"]["x-tollgate-key-id"].as_str(),
        Some(key.key_id.as_str())
    );
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    let r = c
        .head(format!("{}/v1/big/5000", gw.url))
        .header("X-API-Key", k)
        .send()
        .await
        .expect("head");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "5000");
    assert!(r.bytes().await.expect("head body").is_empty());
    let r = c
        .get(format!("{}/v1/status/204", gw.url))
        .header("X-API-Key", k)
        .send()
        .await
        .expect("204");
    assert_eq!(r.status(), 204);
    let echo: Value = c
        .get(format!("{}/files/a/b?c=1&d=%20", gw.url))
        .header("X-API-Key", k)
        .send()
        .await
        .expect("files")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (echo["path"].as_str(), echo["query"].as_str()),
        (Some("/a/b"), Some("c=1&d=%20"))
    );

    // Unkeyed: a sized 1 MB answer, a tiny chunked one, then keep-alive reuse.
    let r = c
        .get(format!("{}/open/big/1000000", gw.url))
        .send()
        .await
        .expect("big");
    assert!(
        pattern_ok(&r.bytes().await.expect("body"), 1_000_000),
        "sized body differs"
    );
    let r = c
        .get(format!("{}/open/chunked/10", gw.url))
        .send()
        .await
        .expect("small");
    assert!(pattern_ok(&r.bytes().await.expect("body"), 10));
    for _ in 0..50 {
        assert_eq!(
            c.get(format!("{}/open/x", gw.url))
                .send()
                .await
                .expect("open")
                .status(),
            200
        );
    }

    // Two pipelined requests in one write: two answers, in order.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"GET /open/status/202 HTTP/1.1\r\nHost: gw\r\n\r\nGET /open/first?x=1 HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let mut pending = Vec::new();
    let (h1, _) = read_response(&mut s, &mut pending).await;
    let (h2, b2) = read_response(&mut s, &mut pending).await;
    assert!(h1.starts_with("HTTP/1.1 202"), "{h1}");
    assert!(h2.starts_with("HTTP/1.1 200"), "{h2}");
    assert!(String::from_utf8_lossy(&b2).contains("\"query\":\"x=1\""));
    drop(s);
    assert_eq!(
        handed_off(&gw.scrape().await),
        before,
        "the fast lane handed a connection off"
    );

    // HTTP/1.0 goes to the general stack, and is answered there.
    let mut s = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    s.write_all(b"GET /open/x HTTP/1.0\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let (head, _) = read_response(&mut s, &mut Vec::new()).await;
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert_eq!(handed_off(&gw.scrape().await), before + 1.0);
}
