//! A fixed request loop through the fast lane, in one process, for instruction counts:
//! `N` keyed keep-alive `GET`s from one client connection → [`h1::serve`] (key, replica,
//! quota, `RateLimit` headers, an upstream connection from [`h1::Pools`]) → a minimal in-process upstream.
//!
//! ```text
//! cargo build --release -p tollgate-gateway --no-default-features --example lane_loop
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/lane_loop 2000
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/lane_loop 12000
//! ```
//! The difference of the two totals over 10,000 is the instructions per request of the
//! whole loop (client and upstream included; they are the same from one build to the next).

use arc_swap::ArcSwap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tollgate_gateway::conns::Conns;
use tollgate_gateway::forwarded::{Peer, TrustedProxies};
use tollgate_gateway::h1;
use tollgate_gateway::health::Health;
use tollgate_gateway::keys::{Replica, Tables};
use tollgate_gateway::limits::Limits;
use tollgate_gateway::metrics::Metrics;
use tollgate_gateway::phases::{Gateway, OwnMetrics};
use tollgate_gateway::quota::{local::LocalQuota, Clock, Quota, SystemClock};
use tollgate_gateway::routes::RouteTable;
use tollgate_gateway::usage::UsageCounter;
use tollgate_protocol::feed::{FeedKey, KeyState};
use tollgate_protocol::keys::KeyHash;
use tollgate_protocol::plans::Limits as PlanLimits;

const KEY: &str = "cli_free_0000000000000000000000000000000000000000007";
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Answers every request head on a connection with [`RESPONSE`].
async fn upstream(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            loop {
                if buf.len() == buf.capacity() {
                    buf.reserve(4096);
                }
                match s.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if s.write_all(RESPONSE).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn replica() -> Arc<Replica> {
    let r = Replica::new();
    let t = Tables::with_capacity(1);
    r.apply_into(
        &t,
        &FeedKey {
            key_id: "key_0000000000000007".into(),
            user_id: "loop-user".into(),
            plan: "free".into(),
            hash: KeyHash::of(KEY),
            previous: None,
            state: KeyState::Active,
            expires_at: None,
            limits: PlanLimits {
                per_minute: 1_000_000_000,
                per_day: 1_000_000_000,
            },
            seq: 1,
        },
    );
    r.install(t, "loop", 1);
    Arc::new(r)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    rt.block_on(run(n));
}

async fn run(n: usize) {
    let up = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let up_addr = up.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    tokio::spawn(upstream(up));

    let text =
        format!("[[routes]]\nname = \"api\"\nprefix = \"/api\"\nupstream = \"http://{up_addr}\"\n");
    let cfg = tollgate_gateway::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let limits = Limits::new(&cfg.gateway);
    let metrics = Arc::new(Metrics::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let routes = RouteTable::build(
        &cfg.routes,
        &metrics,
        Duration::from_secs(5),
        limits.upstream,
    );
    let pools = h1::Pools::new(limits.upstream);
    pools.sync(&routes);
    let gw = Arc::new(Gateway {
        routes: ArcSwap::from_pointee(routes),
        replica: replica(),
        quota: Quota::Local(LocalQuota::new(clock.clone())),
        usage: Arc::new(UsageCounter::new()),
        metrics: metrics.clone(),
        health: Arc::new(Health::new()),
        client: tollgate_gateway::tls::client(limits.upstream, None),
        management: None,
        clock,
        legacy_headers: false,
        limits,
        own: OwnMetrics::new(&metrics),
    });

    let front = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let front_addr = front.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    let conns = Conns::new(16, metrics.clone());
    let (_drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(async move {
        let (stream, peer) = front.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let _ = stream.set_nodelay(true);
        let admitted = conns.admit().await.unwrap_or_else(|| panic!("admit"));
        let peer = Peer::new(peer, &TrustedProxies::new(Vec::new()), false);
        let _ = h1::serve(gw, &pools, stream, drain_rx, &admitted.conn, &peer).await;
    });

    let mut client = TcpStream::connect(front_addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    client.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    let request = format!("GET /api/items?page=2 HTTP/1.1\r\nHost: api.example\r\nX-API-Key: {KEY}\r\nUser-Agent: lane-loop\r\nAccept: */*\r\n\r\n");
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        client
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        // The answer ends with the upstream's 2-byte body.
        let mut got = 0;
        loop {
            let r = client
                .read(&mut buf[got..])
                .await
                .unwrap_or_else(|e| panic!("read: {e}"));
            assert!(r > 0, "gateway closed after {i} requests");
            got += r;
            if buf[..got].ends_with(b"\r\n\r\nok") {
                break;
            }
        }
        if i == 0 {
            assert!(
                buf.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&buf[..got])
            );
        }
    }
    drop(client);
    let _ = server.await;
}
