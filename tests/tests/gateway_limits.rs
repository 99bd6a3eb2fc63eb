//! Connection-level behaviour: WebSocket-style upgrades pass through, slow clients are cut off,
//! oversized heads and bodies are refused.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_e2e::gw::{route, Gateway};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Reads until the end of an HTTP head.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(1)) => head.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_pass_through_with_a_key() {
    let up = Upstream::start();
    let gw = Gateway::embedded(
        &[
            route("/v1", &up.url(), ""),
            route("/ent", &up.url(), "plans = [\"enterprise\"]"),
        ]
        .concat(),
    );
    let key = gw.api().mint("ws-user", "free").await;
    eventually(Duration::from_secs(2), "key known", || async {
        let r = client()
            .get(format!("{}/ent/x", gw.url))
            .header("X-API-Key", &key.api_key)
            .send()
            .await
            .ok()?;
        (r.status() == 403).then_some(())
    })
    .await;
    let mut s = TcpStream::connect(addr(&gw.url)).await.expect("connect");
    let req = format!(
        "GET /v1/chat/upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-API-Key: {}\r\n\r\n",
        key.api_key
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let head = read_head(&mut s).await;
    if !head.starts_with("HTTP/1.1 101") {
        let mut rest = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut rest))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        panic!("{head}{}", String::from_utf8_lossy(&rest[..n]));
    }
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("ratelimit: \"minute\";r=9;"),
        "{head}"
    );
    for msg in ["hello through the tunnel", "second frame"] {
        s.write_all(msg.as_bytes()).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo in time")
            .expect("read");
        assert_eq!(got, msg.as_bytes());
    }
    // Without a key the upgrade never reaches the upstream.
    let mut s = TcpStream::connect(addr(&gw.url)).await.expect("connect");
    s.write_all(b"GET /v1/chat/upgrade HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").await.expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

/// How long until the gateway closes `s` (reading and dropping anything it sends), or None
/// if it is still open after `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_are_cut_off_and_oversized_requests_refused() {
    let up = Upstream::start();
    let gw = Gateway::embedded_with(
        &[route(
            "/open",
            &up.url(),
            "auth = \"none\"\nmax_body_bytes = 1000",
        )]
        .concat(),
        "client_header_timeout_ms = 500\nmax_header_bytes = 8192",
    );
    // Slowloris: half a head, then silence.
    let mut s = TcpStream::connect(addr(&gw.url)).await.expect("connect");
    s.write_all(b"GET /open/x HTTP/1.1\r\nHost: gw\r\n")
        .await
        .expect("write");
    let open_for = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("a slow client keeps its connection");
    assert!(
        open_for >= Duration::from_millis(400),
        "closed too early: {open_for:?}"
    );

    // An idle keep-alive connection (one whole request answered, then silence) is closed
    // after the same timeout, less at most its slack (a sixteenth).
    let mut s = TcpStream::connect(addr(&gw.url)).await.expect("connect");
    s.write_all(b"GET /open/x HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .expect("write");
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let open_for = closed_within(&mut s, Duration::from_secs(5))
        .await
        .expect("an idle connection is kept open");
    assert!(
        open_for >= Duration::from_millis(400),
        "idle connection closed too early: {open_for:?}"
    );

    let big = "x".repeat(20_000);
    let r = client()
        .get(format!("{}/open/x", gw.url))
        .header("X-Big", big)
        .send()
        .await;
    assert!(
        r.map(|r| r.status().as_u16()).unwrap_or(431) == 431,
        "oversized head refused"
    );

    let hits = up.hits();
    let r = client()
        .post(format!("{}/open/x", gw.url))
        .body(vec![b'a'; 5000])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 413);
    let ok = client()
        .post(format!("{}/open/x", gw.url))
        .body(vec![b'a'; 900])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    assert_eq!(
        up.hits() - hits,
        1,
        "the oversized body never reached the upstream"
    );
}
