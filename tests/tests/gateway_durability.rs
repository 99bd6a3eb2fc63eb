//! Usage is never lost: graceful shutdown ships exactly what was admitted, a backend outage
//! loses nothing (remote mode, `tollgate-backend serve` killed and restarted), a restarted
//! gateway serves known keys from its snapshot while the backend is down, and a SIGKILL loses
//! at most one flush interval. Also: SIGHUP reload, a bad reload keeps the old routes, and a
//! reload keeps the fast lane's idle connections to upstreams it still names.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_e2e::gw::{metric, route, start_gateway, Backend, Gateway, Key};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

fn routes(up: &Upstream) -> String {
    [
        route("/v1", &up.url(), "name = \"v1\""),
        route(
            "/ent",
            &up.url(),
            "name = \"ent\"\nplans = [\"enterprise\"]",
        ),
    ]
    .concat()
}

async fn status(gw_url: &str, key: &Key) -> u16 {
    client()
        .get(format!("{gw_url}/v1/x"))
        .header("X-API-Key", &key.api_key)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn known(gw_url: &str, key: &Key) {
    eventually(
        Duration::from_secs(2),
        "key known at the gateway",
        || async {
            let r = client()
                .get(format!("{gw_url}/ent/x"))
                .header("X-API-Key", &key.api_key)
                .send()
                .await
                .ok()?;
            (r.status() == 403).then_some(())
        },
    )
    .await;
}

async fn ready(gw_url: &str) -> Value {
    client()
        .get(format!("{gw_url}/ready"))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ships_exactly_what_was_admitted() {
    let up = Upstream::start();
    let mut gw = Gateway::embedded(&routes(&up));
    let api = gw.api();
    let keys = [
        api.mint("term-a", "free").await,
        api.mint("term-b", "free").await,
        api.mint("term-c", "free").await,
    ];
    let mut admitted = [0u64; 3];
    for (i, k) in keys.iter().enumerate() {
        known(&gw.url, k).await;
        // 4, 9 and 14 attempts: the third key is cut off at 10 by its minute limit.
        for _ in 0..(4 + 5 * i) {
            if status(&gw.url, k).await == 200 {
                admitted[i] += 1;
            }
        }
    }
    assert_eq!(admitted, [4, 9, 10]);
    let st = gw.proc.terminate();
    assert!(
        st.success(),
        "gateway exit status {st:?}; output:\n{}",
        gw.proc.output()
    );
    gw.restart();
    let api = gw.api();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(api.usage_today(&k.key_id).await, admitted[i], "key {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_outage_keeps_keys_working_and_loses_no_usage() {
    let up = Upstream::start();
    let mut backend = Backend::start();
    let gw = Gateway::remote(&backend.url, &routes(&up), "usage_flush_ms = 200");
    let api = backend.api();
    let key = api.mint_with(json!({"user_id": "outage", "plan": "free", "rate_limit_per_minute": 1000, "daily_limit": 100000})).await;
    known(&gw.url, &key).await;
    let mut admitted = 0;
    for _ in 0..25 {
        assert_eq!(status(&gw.url, &key).await, 200);
        admitted += 1;
    }
    backend.proc.kill();
    for _ in 0..40 {
        assert_eq!(
            status(&gw.url, &key).await,
            200,
            "known keys keep working while the backend is down"
        );
        admitted += 1;
    }
    let (r, _) = eventually(Duration::from_secs(5), "degraded in /ready", || async {
        let r = ready(&gw.url).await;
        (r["status"] == "degraded").then_some(r)
    })
    .await;
    assert_eq!(r["backend"], "unreachable");
    let text = gw.scrape().await;
    assert_eq!(metric(&text, "tollgate_gateway_degraded", ""), Some(1.0));
    // Management paths answer a clean 502 meanwhile.
    let m = client()
        .get(format!("{}/api/marketplace/plans", gw.url))
        .send()
        .await
        .expect("plans");
    assert_eq!(m.status(), 502);

    backend.restart();
    let api = backend.api();
    let (shipped, took) = eventually(
        Duration::from_secs(10),
        "usage shipped after the backend returns",
        || async {
            let n = api.usage_today(&key.key_id).await;
            (n == admitted).then_some(n)
        },
    )
    .await;
    eprintln!("backend back: {shipped} units shipped after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = ready(&gw.url).await;
        if r["status"] == "ready" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again: {r}\n{}",
            gw.proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The journal empties once the acknowledgement is in (the backend may have recorded the
    // batch a moment before the gateway reads its answer), and nothing more arrives later (no
    // double counting).
    eventually(Duration::from_secs(2), "usage journal empty", || async {
        let text = gw.scrape().await;
        (metric(&text, "tollgate_gateway_usage_journal_batches", "") == Some(0.0)).then_some(())
    })
    .await;
    assert_eq!(api.usage_today(&key.key_id).await, admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_gateway_serves_known_keys_from_its_snapshot() {
    let up = Upstream::start();
    let mut backend = Backend::start();
    let mut gw = Gateway::remote(&backend.url, &routes(&up), "");
    let key = backend.api().mint("snap", "free").await;
    known(&gw.url, &key).await;
    let snapshot = gw.dir.path().join("data").join("keys.snapshot");
    eventually(Duration::from_secs(10), "snapshot written", || async {
        snapshot.exists().then_some(())
    })
    .await;
    assert!(gw.proc.terminate().success());
    backend.proc.kill();
    gw.restart();
    let r = ready(&gw.url).await;
    assert_eq!(r["status"], "degraded", "{r}");
    assert_eq!(r["keys_loaded"], 1);
    assert_eq!(
        status(&gw.url, &key).await,
        200,
        "served from the snapshot while the backend is down"
    );
    assert_eq!(
        status(
            &gw.url,
            &Key {
                api_key: "cli_free_unknown".into(),
                key_id: String::new()
            }
        )
        .await,
        401
    );
    backend.restart();
    let api = backend.api();
    eventually(Duration::from_secs(10), "usage shipped", || async {
        (api.usage_today(&key.key_id).await == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_at_most_one_flush_interval() {
    let up = Upstream::start();
    let backend = Backend::start();
    let mut gw = Gateway::remote(&backend.url, &routes(&up), "usage_flush_ms = 1000");
    let api = backend.api();
    let key = api.mint_with(json!({"user_id": "kill", "plan": "free", "rate_limit_per_minute": 100000, "daily_limit": 1000000})).await;
    known(&gw.url, &key).await;
    // ~3.5 s of steady traffic, remembering when each admitted request was answered.
    let start = Instant::now();
    let mut answered: Vec<Instant> = Vec::new();
    while start.elapsed() < Duration::from_millis(3_500) {
        assert_eq!(status(&gw.url, &key).await, 200);
        answered.push(Instant::now());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    gw.proc.kill();
    let admitted = answered.len() as u64;
    let in_last_interval = answered
        .iter()
        .filter(|t| killed.duration_since(**t) <= Duration::from_millis(1_100))
        .count() as u64;
    // The restarted gateway re-sends what its journal holds.
    gw.restart();
    let (_, _) = eventually(Duration::from_secs(10), "journal drained", || async {
        let text = gw.scrape().await;
        (metric(&text, "tollgate_gateway_usage_journal_batches", "") == Some(0.0)).then_some(())
    })
    .await;
    let shipped = api.usage_today(&key.key_id).await;
    let lost = admitted - shipped;
    let rate = admitted as f64 / 3.5;
    eprintln!(
        "SIGKILL: admitted {admitted}, shipped {shipped}, lost {lost} (= {:.2} s of traffic at {rate:.0} req/s; bound: answered in the last 1.1 s = {in_last_interval})",
        lost as f64 / rate
    );
    assert!(shipped <= admitted, "never more than admitted");
    assert!(
        lost <= in_last_interval,
        "lost {lost} > {in_last_interval} answered in the last flush interval"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_and_a_bad_file_keeps_the_old_ones() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&route("/a", &up.url(), "auth = \"none\""));
    let get = |path: &'static str| {
        let url = format!("{}{path}", gw.url);
        async move {
            client()
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    assert_eq!(get("/a/x").await, 200);
    assert_eq!(get("/b/x").await, 404);
    let text = std::fs::read_to_string(&gw.config).expect("config");
    let with_b = format!("{text}\n{}", route("/b", &up.url(), "auth = \"none\""));
    std::fs::write(&gw.config, &with_b).expect("write");
    let hup = |pid: u32| {
        std::process::Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .expect("kill -HUP")
    };
    hup(gw.proc.pid());
    eventually(Duration::from_secs(5), "new route after SIGHUP", || async {
        (get("/b/x").await == 200).then_some(())
    })
    .await;

    let bad = format!(
        "{with_b}\n{}",
        route("/c", &up.url(), "plans = [\"platinum\"]")
    );
    std::fs::write(&gw.config, bad).expect("write");
    hup(gw.proc.pid());
    eventually(
        Duration::from_secs(5),
        "reload refused in the log",
        || async {
            gw.proc
                .output()
                .contains("routes[2].plans: unknown plan \"platinum\"")
                .then_some(())
        },
    )
    .await;
    assert_eq!(get("/a/x").await, 200);
    assert_eq!(get("/b/x").await, 200, "the old configuration stays");
    assert_eq!(get("/c/x").await, 404);
    let _ = start_gateway; // (the same config file restarts a gateway, see Gateway::restart)
}

/// The fast lane's idle upstream connections belong to the lane, not to the route table: a
/// reload that still names an upstream keeps its idle connections, and requests on the new
/// table (on the old route and on a new one to the same upstream) reuse them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_idle_upstream_connections() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    // An upstream that counts the connections it accepts and answers every head with "ok".
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let up = format!("http://{}", listener.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });

    let gw = Gateway::embedded(&route("/a", &up, "auth = \"none\""));
    // One client connection, one request at a time: the lane serves each after the previous
    // one gave its upstream connection back.
    let addr = gw.url.trim_start_matches("http://").to_string();
    let conn = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let conn = Arc::new(tokio::sync::Mutex::new(conn));
    let get = |path: &'static str| {
        let conn = conn.clone();
        async move { keep_alive_get(&mut *conn.lock().await, path).await }
    };
    for _ in 0..3 {
        assert_eq!(get("/a/x").await, 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one pooled connection");

    let text = std::fs::read_to_string(&gw.config).expect("config");
    let with_b = format!("{text}\n{}", route("/b", &up, "auth = \"none\""));
    std::fs::write(&gw.config, &with_b).expect("write");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.proc.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    eventually(Duration::from_secs(5), "new route after SIGHUP", || async {
        (get("/b/x").await == 200).then_some(())
    })
    .await;
    assert_eq!(get("/a/x").await, 200);
    assert_eq!(get("/b/x").await, 200);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the reload kept the idle upstream connection"
    );
}

/// `GET path` on an open keep-alive connection; the status once the whole answer is in (0 when
/// the connection ends first).
async fn keep_alive_get(c: &mut tokio::net::TcpStream, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n");
    c.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            }
        }
        let mut chunk = [0u8; 4096];
        match c.read(&mut chunk).await {
            Ok(0) | Err(_) => return 0,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}
