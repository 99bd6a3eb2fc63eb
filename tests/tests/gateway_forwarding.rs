//! Forwarding headers (issue 20): every forwarded request tells the upstream who the client is
//! (`X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`, `Forwarded`), on both request
//! paths. A client's own values are believed only from `[gateway] trusted_proxies`; from anyone
//! else they are replaced, in any spelling. The clients here connect from 127.0.0.1.

use std::time::Duration;
use tollgate_e2e::gw::{Gateway, Key};
use tollgate_e2e::raw::{keys, lane_gateway, lane_name, v1_and_open, RawClient, RawUpstream};

const LANES: [bool; 2] = [true, false];
const T: Duration = Duration::from_secs(5);

fn gateway(up: &RawUpstream, lane: bool, gateway_extra: &str) -> Gateway {
    lane_gateway(&v1_and_open(up, ""), lane, gateway_extra)
}

async fn key(gw: &Gateway, user: &str) -> Key {
    keys(gw, "free", &[user]).await.remove(0)
}

/// What a client that lies about where it comes from sends.
const FORGED: [(&str, &str); 7] = [
    ("X-Forwarded-For", "203.0.113.7"),
    ("x-forwarded-for", "10.9.9.9"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "bank.example"),
    ("Forwarded", "for=203.0.113.7;proto=https"),
    ("X-Real-IP", "203.0.113.7"),
    ("X_Forwarded_For", "198.51.100.1"),
];

/// Sends a GET with `headers` (and the key, when given) and returns what reached the upstream
/// as (lower-case name, value) pairs, in order.
async fn sent_upstream(
    gw: &Gateway,
    up: &RawUpstream,
    target: &str,
    key: Option<&Key>,
    headers: &[(&str, &str)],
    l: &str,
) -> Vec<(String, String)> {
    let before = up.requests().len();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: api.example:8080\r\n");
    if let Some(k) = key {
        req.push_str(&format!("X-API-Key: {}\r\n", k.api_key));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut c = RawClient::connect(&gw.url).await;
    let _ = c.send(req.as_bytes()).await;
    let r = c
        .read_response(T)
        .await
        .unwrap_or_else(|e| panic!("{l}: {target}: {e}"));
    assert_eq!(r.status, 200, "{l}: {target}: {}", r.summary());
    let recs = up.requests();
    assert_eq!(
        recs.len(),
        before + 1,
        "{l}: {target}: one request upstream"
    );
    let rec = &recs[before];
    rec.headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn assert_replaced(h: &[(String, String)], what: &str) {
    assert_eq!(values(h, "x-forwarded-for"), ["127.0.0.1"], "{what}");
    assert_eq!(values(h, "x-forwarded-proto"), ["http"], "{what}");
    assert_eq!(
        values(h, "x-forwarded-host"),
        ["api.example:8080"],
        "{what}"
    );
    assert_eq!(
        values(h, "forwarded"),
        ["for=127.0.0.1;proto=http;host=\"api.example:8080\""],
        "{what}"
    );
    for (n, v) in h {
        assert!(
            !n.contains('_') && n != "x-real-ip" && !v.contains("203.0.113.7"),
            "{what}: a forged forwarding header reached the upstream: {n}: {v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_learns_the_client_and_forged_values_are_replaced() {
    for lane in LANES {
        let l = lane_name(lane);
        let up = RawUpstream::start();
        // A trusted list that does not hold the client: still replaced.
        let gw = gateway(
            &up,
            lane,
            "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        );
        let k = key(&gw, &format!("fwd-{l}")).await;

        let plain = sent_upstream(&gw, &up, "/v1/plain", Some(&k), &[], l).await;
        assert_replaced(&plain, &format!("{l}: keyed, nothing sent"));

        let forged = sent_upstream(&gw, &up, "/v1/forged", Some(&k), &FORGED, l).await;
        assert_replaced(&forged, &format!("{l}: keyed, forged"));

        let open = sent_upstream(&gw, &up, "/open/forged", None, &FORGED, l).await;
        assert_replaced(&open, &format!("{l}: keyless route, forged"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_appended_to() {
    for lane in LANES {
        let l = lane_name(lane);
        let up = RawUpstream::start();
        let gw = gateway(&up, lane, "trusted_proxies = [\"127.0.0.0/8\"]");
        let k = key(&gw, &format!("fwd-trusted-{l}")).await;

        let h = sent_upstream(&gw, &up, "/v1/lb", Some(&k), &FORGED, l).await;
        assert_eq!(
            values(&h, "x-forwarded-for"),
            ["203.0.113.7, 10.9.9.9, 127.0.0.1"],
            "{l}: the client's list, then the peer"
        );
        assert_eq!(values(&h, "x-forwarded-proto"), ["https"], "{l}");
        assert_eq!(values(&h, "x-forwarded-host"), ["bank.example"], "{l}");
        assert_eq!(
            values(&h, "forwarded"),
            ["for=203.0.113.7;proto=https, for=127.0.0.1;proto=http;host=\"api.example:8080\""],
            "{l}"
        );
        assert_eq!(
            values(&h, "x-real-ip"),
            ["203.0.113.7"],
            "{l}: kept from a trusted peer"
        );
        assert!(
            !h.iter().any(|(n, _)| n.contains('_')),
            "{l}: underscore spellings are never believed: {h:?}"
        );

        // Nothing sent: the gateway's own values.
        let h = sent_upstream(&gw, &up, "/open/lb", None, &[], l).await;
        assert_eq!(values(&h, "x-forwarded-for"), ["127.0.0.1"], "{l}");
        assert_eq!(values(&h, "x-forwarded-proto"), ["http"], "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_clients_get_the_authority_as_forwarded_host() {
    let up = RawUpstream::start();
    let gw = gateway(&up, true, "");
    let k = key(&gw, "fwd-h2").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2 client");
    let resp = h2
        .get(format!("{}/v1/h2", gw.url))
        .header("X-API-Key", &k.api_key)
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 200);
    let rec = up.requests().pop().expect("reached the upstream");
    let authority = gw.url.trim_start_matches("http://");
    assert_eq!(
        rec.header_str("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        rec.header_str("x-forwarded-host").as_deref(),
        Some(authority)
    );
    assert_eq!(
        rec.header_str("forwarded"),
        Some(format!("for=127.0.0.1;proto=http;host=\"{authority}\""))
    );
}
