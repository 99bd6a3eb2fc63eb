//! Connection exhaustion: idle connections (HTTP/2 prior-knowledge prefaces, silent HTTP/1
//! sockets) far beyond `max_connections` neither lock out a working client nor hold file
//! descriptors past the idle timeout.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate_e2e::gw::{metric, route, Gateway};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const MAX: usize = 40;
const ATTACKERS: usize = 400;

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// Opens `n` connections that send only the h2 preface (or nothing) and then wait.
async fn idle_flood(gw: &str, n: usize, preface: bool) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr(gw))).await
        else {
            continue;
        };
        if preface {
            let _ = s.write_all(PREFACE).await;
        }
        held.push(s);
    }
    held
}

/// How many of `conns` the gateway has closed (EOF or reset) within `limit`.
async fn closed_count(conns: &mut [TcpStream], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut closed = 0;
    for s in conns.iter_mut() {
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.max(Duration::from_millis(1)), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed += 1;
                    break;
                }
                // h2 SETTINGS/GOAWAY frames before the close.
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    closed
}

async fn answered_within(url: &str, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let resp = tokio::time::timeout(limit, client().get(url).header("X-API-Key", key).send())
        .await
        .unwrap_or_else(|_| panic!("{url}: no answer within {limit:?} during the flood"))
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(resp.status(), 200, "{url}");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_h2_and_silent_connections_beyond_the_cap_do_not_lock_clients_out() {
    let up = Upstream::start();
    for lane in [true, false] {
        let gw = Gateway::embedded_with(
            &route("/v1", &up.url(), ""),
            &format!(
                "fast_lane = {lane}\nmax_connections = {MAX}\nclient_header_timeout_ms = 3000"
            ),
        );
        let key = gw.api().mint(&format!("h2-{lane}"), "free").await;
        let url = format!("{}/v1/x", gw.url);
        eventually(Duration::from_secs(2), "key known", || async {
            let r = client()
                .get(&url)
                .header("X-API-Key", &key.api_key)
                .send()
                .await
                .ok()?;
            (r.status() == 200).then_some(())
        })
        .await;

        // Ten times the cap in idle h2 connections, then silent ones.
        let mut flood = idle_flood(&gw.url, ATTACKERS, true).await;
        flood.extend(idle_flood(&gw.url, ATTACKERS / 4, false).await);
        let took = answered_within(&url, &key.api_key, Duration::from_secs(1)).await;
        eprintln!(
            "lane {lane}: answered in {took:?} during a flood of {} idle connections",
            flood.len()
        );

        // An h2 (prior knowledge) client is served too.
        let h2 = reqwest::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .build()
            .expect("h2 client");
        let resp = tokio::time::timeout(
            Duration::from_secs(1),
            h2.get(&url).header("X-API-Key", &key.api_key).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("lane {lane}: h2 client not answered within 1 s"))
        .unwrap_or_else(|e| panic!("lane {lane}: h2 client: {e}"));
        assert_eq!(resp.status(), 200, "lane {lane}: h2");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);

        // Connections asked to close to make room are gone at once: the cap holds.
        let (text, _) = eventually(
            Duration::from_secs(1),
            "open connections at the cap",
            || async {
                let text = gw.scrape().await;
                let open = metric(&text, "tollgate_gateway_connections_open", "")?;
                (open <= MAX as f64).then_some(text)
            },
        )
        .await;
        // Each connection past the cap either made an idle one close or was closed at once.
        let evicted =
            metric(&text, "tollgate_gateway_connections_evicted_total", "").unwrap_or(0.0);
        let refused =
            metric(&text, "tollgate_gateway_connections_refused_total", "").unwrap_or(0.0);
        assert!(
            evicted + refused >= (ATTACKERS - MAX) as f64 && evicted > 0.0,
            "lane {lane}: {evicted} evicted + {refused} refused for {} connections past the cap",
            flood.len() + 2 - MAX
        );

        // Whatever is left of the flood is closed by the idle timeout (3 s; h2 has no request
        // in progress on a preface-only connection).
        let gone = closed_count(&mut flood, Duration::from_secs(6)).await;
        assert_eq!(gone, flood.len(), "lane {lane}: idle connections left open");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_connection_that_never_sends_a_request_is_closed_after_the_header_timeout() {
    let up = Upstream::start();
    for lane in [true, false] {
        let gw = Gateway::embedded_with(
            &route("/v1", &up.url(), ""),
            &format!("fast_lane = {lane}\nclient_header_timeout_ms = 500"),
        );
        let mut conns = idle_flood(&gw.url, 3, true).await;
        let start = Instant::now();
        let gone = closed_count(&mut conns, Duration::from_secs(3)).await;
        assert_eq!(
            gone, 3,
            "lane {lane}: preface-only h2 connections still open"
        );
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "lane {lane}: closed after {took:?}, before the timeout"
        );
    }
}
