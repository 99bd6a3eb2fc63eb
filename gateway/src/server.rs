//! Start-up, listeners, reload and graceful shutdown.
//!
//! `run` wires the pieces (replica from the saved snapshot, backend link, quota store, usage
//! journal), binds the main and metrics listeners, prints where they listen, and serves until
//! SIGTERM/SIGINT. Shutdown stops accepting, drains open connections (up to
//! `shutdown_timeout`), then flushes usage to the backend and saves the key snapshot and the
//! quota state (also saved every `usage_flush`, and loaded before serving: `quota::persist`).
//! SIGHUP re-reads the file and swaps in new routes (and the plans they are checked against)
//! and, with `tls_cert_file` set, the listener's certificate (new handshakes present it); a
//! file with any error (an unreadable or mismatched certificate included) is refused with its
//! error lines and the running config stays.
//!
//! With TLS on the main listener, each admitted connection's handshake (ALPN h2, http/1.1) is
//! bounded by `client_header_timeout` and counts against `max_connections` as an idle
//! connection from the start; it is then served by hyper, never the fast lane (plain TCP).

use crate::backend::{BackendLink, Management, RemoteBackend};
use crate::body::Body;
use crate::config::RedisFailure;
use crate::config::{BackendMode, Config, RouteConfig};
use crate::conns::{Conn, Conns};
use crate::feed::Feed;
use crate::forwarded::Peer;
use crate::h1::{Exit, Pools};
use crate::health::Health;
use crate::keys::Replica;
use crate::limits::Limits;
use crate::metrics::{Gauge, Metrics};
use crate::phases::{Gateway, OwnMetrics};
use crate::quota::redis::RedisQuota;
use crate::quota::{local::LocalQuota, persist, Clock, Fleet, OnRedisFailure, Quota, SystemClock};
use crate::routes::RouteTable;
use crate::tls::HttpClient;
use crate::usage::{Journal, Shipper, UsageCounter};
use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The in-process backend, when `[backend] mode = "embedded"`.
#[cfg(feature = "embedded")]
type Embedded = tollgate_backend::Backend;
#[cfg(not(feature = "embedded"))]
type Embedded = std::convert::Infallible;

/// This gateway's id for usage batches: configured, or generated once into `data_dir/gateway_id`.
fn gateway_id(configured: Option<&str>, data_dir: &Path) -> Result<String, String> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let path = data_dir.join("gateway_id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a gateway id: {e}"))?;
    let id = format!(
        "gw-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// A pooled client with the upstream connect and pool settings; `tls` for https URIs (an
/// https backend), `None` for the shared client of plain-HTTP upstreams.
fn http_client(
    limits: &Limits,
    tls: Option<Arc<tollgate_protocol::tls::rustls::ClientConfig>>,
) -> HttpClient {
    crate::tls::client(limits.upstream, tls)
}

fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    // The h2 limits beside hyper's defaults: streams per connection, and the HEADERS size as
    // HTTP/1's head limit. Handshake and idle time are bounded per connection by `serve_hyper`.
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    b
}

/// Concurrent h2 streams per client connection (each is a request in flight).
const H2_MAX_STREAMS: u32 = 128;

/// How long a connection closed gracefully while a request was in progress (evicted or idle in
/// a race with a new request) may take before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Serves a connection with hyper (HTTP/1.x or h2, upgrades allowed) until it ends. A
/// connection with no request in progress is dropped when it has been idle for `idle` (the h2
/// handshake included) or when the table needs its place: nothing is lost, and an h2 peer that
/// never acknowledges a GOAWAY's ping cannot keep it. At shutdown, in-flight requests get
/// `shutdown_timeout` to finish.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper<I>(
    io: I,
    builder: &auto::Builder<TokioExecutor>,
    gw: Arc<Gateway>,
    conn: &Arc<Conn>,
    peer: Arc<Peer>,
    mut drain: watch::Receiver<bool>,
    idle: Duration,
    shutdown_timeout: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service_conn = conn.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        // Who the client is, for the forwarding headers (see crate::forwarded).
        req.extensions_mut().insert(peer.clone());
        let busy = service_conn.begin();
        let gw = gw.clone();
        async move {
            let resp = gw.handle(req).await;
            drop(busy);
            resp
        }
    });
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(served);
    let check = tokio::time::sleep(idle);
    tokio::pin!(check);
    let mut grace: Option<Duration> = None;
    loop {
        if let Some(limit) = grace {
            return match tokio::time::timeout(limit, served.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            };
        }
        tokio::select! {
            r = served.as_mut() => return r,
            _ = conn.asked_to_close() => {
                if conn.is_idle() {
                    return Ok(());
                }
                grace = Some(CLOSE_GRACE);
            }
            _ = drain.changed() => {
                if conn.is_idle() {
                    return Ok(());
                }
                grace = Some(shutdown_timeout);
            }
            _ = check.as_mut() => {
                let quiet = conn.idle_for();
                if quiet >= idle {
                    return Ok(());
                }
                let wait = if quiet.is_zero() { idle } else { idle - quiet };
                check.as_mut().reset(tokio::time::Instant::now() + wait);
                continue;
            }
        }
        served.as_mut().graceful_shutdown();
    }
}

/// A TLS client's handshake, bounded by `limit` (`client_header_timeout`: a client that
/// opens a connection and says nothing is cut off as on plain HTTP). The connection is idle
/// meanwhile, so at `max_connections` it is among the first closed; shutdown ends it too.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    conn: &Conn,
    mut drain: watch::Receiver<bool>,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    tokio::select! {
        r = tokio::time::timeout(limit, acceptor.accept(stream)) => match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake timed out");
                None
            }
        },
        _ = conn.asked_to_close() => None,
        _ = drain.changed() => None,
    }
}

fn gauges(gw: &Gateway) -> Vec<Gauge> {
    let behind = gw.replica.head().saturating_sub(gw.replica.seq());
    let f = |n: u64| n.to_string().parse::<f64>().unwrap_or(0.0);
    vec![
        Gauge { name: "tollgate_gateway_keys_loaded", help: "Keys in the replica.", value: f(u64::try_from(gw.replica.len()).unwrap_or(0)) },
        Gauge {
            name: "tollgate_gateway_feed_lag_seconds",
            help: "How long the key replica may have been behind the backend (0 while the feed is connected).",
            value: gw.health.feed_lag_secs(),
        },
        Gauge { name: "tollgate_gateway_feed_changes_behind", help: "Feed sequence numbers not yet applied.", value: f(behind) },
        Gauge {
            name: "tollgate_gateway_degraded",
            help: "1 while the backend is unreachable and the gateway serves from its last key snapshot.",
            value: if gw.health.backend_reachable() { 0.0 } else { 1.0 },
        },
        Gauge {
            name: "tollgate_gateway_usage_journal_batches",
            help: "Usage batches in the journal awaiting the backend's acknowledgement.",
            value: f(gw.health.journal_depth.load(Ordering::Relaxed)),
        },
        Gauge {
            name: "tollgate_gateway_quota_degraded",
            help: "1 while Redis is unreachable and the configured failure behaviour (local or closed) applies.",
            value: if gw.health.redis(gw.quota.degraded()) == crate::health::RedisHealth::Unreachable { 1.0 } else { 0.0 },
        },
        Gauge {
            name: "tollgate_gateway_connections_open",
            help: "Client connections open on the main listener (at most max_connections).",
            value: f(gw.metrics.connections_open.load(Ordering::Relaxed)),
        },
        Gauge { name: "tollgate_gateway_routes", help: "Configured routes.", value: f(u64::try_from(gw.routes.load().len()).unwrap_or(0)) },
    ]
}

/// `/metrics`: the gateway's own metrics, the process and build-info gauges, and in embedded
/// mode the backend's metrics (one scrape target for the one process).
async fn metrics_endpoint(
    gw: Arc<Gateway>,
    embedded: Option<Embedded>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let resp = match req.uri().path() {
        "/metrics" => {
            let mut text = gw.metrics.render(&gauges(&gw));
            crate::metrics::render_process(&mut text);
            #[cfg(feature = "embedded")]
            if let Some(b) = &embedded {
                text.push_str(&crate::embedded::render_metrics(b).await);
            }
            #[cfg(not(feature = "embedded"))]
            let _ = embedded;
            let mut r = Response::new(Body::full(text));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => crate::headers::json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        _ => crate::headers::error_response(
            crate::metrics::Outcome::RouteNotFound,
            "only /metrics and /health here",
        ),
    };
    Ok(resp)
}

/// The address to show in curl lines (a wildcard bind is reachable on loopback).
fn shown(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

fn print_quickstart(
    scheme: &str,
    addr: SocketAddr,
    token_path: Option<PathBuf>,
    routes: &[RouteConfig],
) {
    let base = format!("{scheme}://{}", shown(addr));
    let token = match &token_path {
        Some(p) => {
            println!("tollgate: service token in {}", p.display());
            format!("$(cat {})", p.display())
        }
        None => {
            println!("tollgate: service token from TOLLGATE_SERVICE_TOKEN");
            "$TOLLGATE_SERVICE_TOKEN".to_string()
        }
    };
    println!(
        "tollgate: mint a key:  curl -s -X POST {base}/api/marketplace/keys/generate -H \"Authorization: Bearer {token}\" -H 'Content-Type: application/json' -d '{{\"user_id\":\"demo\",\"plan\":\"free\",\"name\":\"demo\"}}'"
    );
    if let Some(r) = routes
        .iter()
        .find(|r| r.auth == crate::config::Auth::Key && r.host.is_none())
    {
        let path = format!("{}/hello", r.prefix.trim_end_matches('/'));
        println!("tollgate: call the demo route:  curl -s {base}{path} -H 'X-API-Key: <api_key from the answer above>'");
    }
}

/// Re-reads `path` and swaps in its routes and plans (in embedded mode the backend's catalogue
/// too, so existing keys get edited limits); any error keeps the running ones. In remote mode
/// the separate backend owns the catalogue: reload it there (`kill -HUP` the backend).
fn reload(
    path: &Path,
    gw: &Gateway,
    pools: &Pools,
    metrics: &Metrics,
    g: &crate::config::GatewaySettings,
    embedded: Option<&Embedded>,
    cert: Option<&crate::tls::ListenerCert>,
) {
    let refused = |errors: &[String]| {
        for e in errors {
            tracing::error!("config reload refused: {e}");
        }
        tracing::error!(
            errors = errors.len(),
            "configuration NOT reloaded; the running configuration stays"
        );
    };
    let cfg = match crate::config::load(path) {
        Ok(cfg) => cfg,
        Err(errors) => return refused(&errors),
    };
    #[cfg(feature = "embedded")]
    if let Some(b) = embedded {
        if let Err(errors) = crate::embedded::reload_plans(b, &cfg.document, &g.data_dir) {
            return refused(&errors);
        }
    }
    #[cfg(not(feature = "embedded"))]
    let _ = embedded;
    let table = RouteTable::build(
        &cfg.routes,
        metrics,
        g.unhealthy_cooldown,
        gw.limits.upstream,
    );
    let n = table.len();
    pools.sync(&table);
    gw.routes.store(Arc::new(table));
    // The certificate files were read (and checked against each other) by `load`.
    match (cert, &cfg.gateway.tls) {
        (Some(cert), Some(new)) => {
            cert.replace(new.config.clone());
            tracing::info!(cert = %new.cert_file.display(), "listener certificate reloaded");
        }
        (Some(_), None) => tracing::warn!(
            "gateway.tls_cert_file removed: the listener keeps TLS and its certificate until a restart"
        ),
        (None, Some(_)) => tracing::warn!(
            "gateway.tls_cert_file added: the listener stays plain HTTP until a restart"
        ),
        (None, None) => {}
    }
    tracing::info!(
        routes = n,
        plans = cfg.catalogue.all().len(),
        "configuration reloaded (routes and plans; other settings need a restart)"
    );
}

/// Runs the gateway until SIGTERM/SIGINT.
pub async fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), String> {
    let g = cfg.gateway.clone();
    tollgate_protocol::config::prepare_data_dir("gateway.data_dir", &g.data_dir)?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());

    // Replica: what we knew last time, before asking the backend anything.
    let replica = Arc::new(Replica::new());
    let snapshot = g.data_dir.join("keys.snapshot");
    let started = std::time::Instant::now();
    match replica.load_snapshot(&snapshot) {
        Ok(true) => tracing::info!(
            keys = replica.len(),
            seq = replica.seq(),
            ms = started.elapsed().as_millis(),
            "key snapshot loaded"
        ),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "key snapshot unreadable; starting from the backend's feed")
        }
    }

    // The limits of both transports, read once.
    let limits = Limits::new(&g);
    let client = http_client(&limits, None);
    #[cfg_attr(not(feature = "embedded"), allow(unused_mut))]
    let mut embedded: Option<Embedded> = None;
    let (link, management): (Arc<dyn BackendLink>, Management) = match &cfg.backend {
        BackendMode::Remote {
            url,
            feed_token,
            tls,
        } => {
            // An https backend gets its own client (its CA); http shares the upstreams' one.
            let backend_client = match tls {
                Some(tls) => http_client(&limits, Some(tls.clone())),
                None => client.clone(),
            };
            let link =
                RemoteBackend::new(backend_client.clone(), url.clone(), feed_token.expose())?;
            let m = Management::remote(backend_client, url)
                .ok_or_else(|| "backend.url: no host".to_string())?;
            (Arc::new(link), m)
        }
        #[cfg(feature = "embedded")]
        BackendMode::Embedded => {
            let b = crate::embedded::start(&cfg.document, &g.data_dir)
                .await
                .map_err(|e| e.join("\n"))?;
            let m = Management::Embedded(crate::embedded::router(&b));
            let link = crate::embedded::EmbeddedLink(b.clone());
            embedded = Some(b);
            (Arc::new(link), m)
        }
        #[cfg(not(feature = "embedded"))]
        BackendMode::Embedded => {
            return Err("backend.mode: this gateway was built without the embedded backend; set mode = \"remote\"".into());
        }
    };

    let id = gateway_id(g.gateway_id.as_deref(), &g.data_dir)?;
    let (journal, replayed) = Journal::open(&g.data_dir)
        .map_err(|e| format!("usage journal in {}: {e}", g.data_dir.display()))?;
    if !replayed.pending.is_empty() {
        tracing::info!(
            batches = replayed.pending.len(),
            "usage batches from the journal will be re-sent"
        );
    }
    let usage = Arc::new(UsageCounter::new());
    let shipper = Shipper::new(
        usage.clone(),
        journal,
        replayed,
        id.clone(),
        link.clone(),
        metrics.clone(),
        health.clone(),
    );

    let quota = match &g.redis_url {
        None => Quota::Local(LocalQuota::new(clock.clone())),
        Some(url) => {
            let redis = RedisQuota::new(url, clock.clone(), "tg", g.redis_timeout)
                .map_err(|e| format!("gateway.redis_url: {e}"))?;
            let on_failure = match g.redis_failure {
                RedisFailure::Local => OnRedisFailure::Local,
                RedisFailure::Closed => OnRedisFailure::Closed,
            };
            let probe = redis.ping().await;
            health.redis_probed(probe.is_ok());
            match probe {
                Ok(()) => tracing::info!("quota state in Redis, shared by the fleet"),
                Err(e) => {
                    tracing::error!(error = %e, ?on_failure, "Redis is unreachable at start; the failure behaviour applies until it answers")
                }
            }
            Quota::Redis(Box::new(Fleet::new(
                redis,
                on_failure,
                clock.clone(),
                metrics.clone(),
            )))
        }
    };
    // Counts from before a restart, before anything is served (see quota::persist).
    let quota_state = g.data_dir.join(persist::FILE);
    persist::load(quota.in_process(), &quota_state);
    let routes = RouteTable::build(&cfg.routes, &metrics, g.unhealthy_cooldown, limits.upstream);
    // The fast lane's upstream connections, per upstream address (kept across reloads).
    let pools = Arc::new(Pools::new(limits.upstream));
    pools.sync(&routes);
    let gw = Arc::new(Gateway {
        routes: ArcSwap::from_pointee(routes),
        replica: replica.clone(),
        quota,
        usage,
        metrics: metrics.clone(),
        health: health.clone(),
        client,
        management: Some(management),
        clock,
        legacy_headers: g.legacy_ratelimit_headers,
        limits,
        own: OwnMetrics::new(&metrics),
    });

    let listener = TcpListener::bind(g.listen)
        .await
        .map_err(|e| format!("gateway.listen: cannot bind {}: {e}", g.listen))?;
    let metrics_listener = TcpListener::bind(g.metrics_listen).await.map_err(|e| {
        format!(
            "gateway.metrics_listen: cannot bind {}: {e}",
            g.metrics_listen
        )
    })?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let maddr = metrics_listener.local_addr().map_err(|e| e.to_string())?;
    let cert = g
        .tls
        .as_ref()
        .map(|t| Arc::new(crate::tls::ListenerCert::new(t.config.clone())));
    let scheme = if cert.is_some() { "https" } else { "http" };
    // Signal handlers before the "listening" line: a supervisor (or a test) may signal as soon
    // as it reads it, and until a handler is in place the default action ends the process at
    // once, without the drain.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    println!("tollgate: gateway listening on {scheme}://{addr}");
    println!("tollgate: metrics listening on http://{maddr}");
    #[cfg(feature = "embedded")]
    if let Some(b) = &embedded {
        // Links the embedded backend builds (portal hand-off, payment returns) point here,
        // never at a client-sent Host.
        b.advertise(addr);
        print_quickstart(
            scheme,
            addr,
            crate::embedded::service_token_path(b),
            &cfg.routes,
        );
    }
    #[cfg(not(feature = "embedded"))]
    let _ = (&embedded, print_quickstart, scheme);
    tracing::info!(gateway_id = %id, routes = cfg.routes.len(), keys = replica.len(), "gateway started");

    let (stop_tx, stop_rx) = watch::channel(false);
    let feed = Feed {
        link,
        replica: replica.clone(),
        health,
        metrics: metrics.clone(),
        snapshot,
        wait: g.feed_wait,
    };
    let feed_task = tokio::spawn(feed.run(stop_rx.clone()));
    let quota_task = tokio::spawn(persist::run(
        gw.clone(),
        |gw: &Gateway| &gw.quota,
        quota_state,
        g.usage_flush,
        stop_rx.clone(),
    ));
    let usage_task = tokio::spawn(shipper.run(
        g.usage_flush,
        stop_rx.clone(),
        g.shutdown_timeout.max(Duration::from_secs(5)),
    ));
    {
        let gw = gw.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => gw.quota.sweep(),
                    _ = stop.changed() => break,
                }
            }
        });
    }
    if matches!(gw.quota, Quota::Redis(_)) {
        // Redis is probed every second so /ready and the gauge tell whether it answers even
        // while no request exercises the quota store.
        let gw = gw.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Quota::Redis(f) = &gw.quota {
                            let ok = f.redis.ping().await.is_ok();
                            gw.health.redis_probed(ok);
                        }
                    }
                    _ = stop.changed() => break,
                }
            }
        });
    }

    let builder = Arc::new(server_builder(&limits));
    // The metrics listener's connections; the main listener's are in `conns`.
    let graceful = GracefulShutdown::new();
    let conns = Conns::new(g.max_connections, metrics.clone());
    // Tells every main-listener connection to finish what it is doing and close.
    let (drain_tx, drain_rx) = watch::channel(false);
    loop {
        let (stream, is_metrics) = tokio::select! {
            r = listener.accept() => (r, false),
            r = metrics_listener.accept() => (r, true),
            _ = hup.recv() => {
                match &config_path {
                    Some(p) => reload(p, &gw, &pools, &metrics, &g, embedded.as_ref(), cert.as_deref()),
                    None => tracing::warn!("SIGHUP ignored: no config file to re-read"),
                }
                continue;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        let (stream, peer) = match stream {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let gw = gw.clone();
        let pools = pools.clone();
        if is_metrics {
            let watcher = graceful.watcher();
            let embedded = embedded.clone();
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let svc = hyper::service::service_fn(move |req| {
                    metrics_endpoint(gw.clone(), embedded.clone(), req)
                });
                if let Err(e) = watcher.watch(builder.serve_connection(io, svc)).await {
                    tracing::debug!(error = %e, "metrics connection ended with an error");
                }
            });
            continue;
        }
        // Over `max_connections` with nothing idle to close: closed at once.
        let Some(admitted) = conns.admit().await else {
            drop(stream);
            continue;
        };
        let drain = drain_rx.clone();
        let (idle, grace, fast_lane) = (limits.header_timeout, g.shutdown_timeout, g.fast_lane);
        let peer = Arc::new(Peer::new(peer, &g.trusted_proxies, cert.is_some()));
        if let Some(cert) = &cert {
            let acceptor = cert.acceptor();
            tokio::spawn(async move {
                let conn = &admitted.conn;
                let Some(tls) = handshake(acceptor, stream, conn, drain.clone(), idle).await else {
                    return;
                };
                if let Err(e) = serve_hyper(tls, &builder, gw, conn, peer, drain, idle, grace).await
                {
                    tracing::debug!(error = %e, "TLS connection ended with an error");
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let conn = &admitted.conn;
            let result = if fast_lane {
                match crate::h1::serve(gw.clone(), &pools, stream, drain.clone(), conn, &peer).await
                {
                    Exit::Closed => return,
                    Exit::Handoff(io) => {
                        serve_hyper(io, &builder, gw, conn, peer, drain, idle, grace).await
                    }
                }
            } else {
                serve_hyper(stream, &builder, gw, conn, peer, drain, idle, grace).await
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }

    tracing::info!("shutting down: draining connections");
    drop(listener);
    drop(metrics_listener);
    let _ = drain_tx.send(true);
    let metrics_drained = tokio::time::timeout(g.shutdown_timeout, graceful.shutdown());
    let (main, metrics_conns) = tokio::join!(conns.drained(g.shutdown_timeout), metrics_drained);
    if !main || metrics_conns.is_err() {
        tracing::warn!("connections still open after shutdown_timeout; closing them");
    }
    let _ = stop_tx.send(true);
    if let Err(e) = usage_task.await {
        tracing::error!(error = %e, "usage task failed");
    }
    if let Err(e) = quota_task.await {
        tracing::error!(error = %e, "quota state task failed");
    }
    if let Err(e) = feed_task.await {
        tracing::error!(error = %e, "feed task failed");
    }
    #[cfg(feature = "embedded")]
    if let Some(b) = embedded.take() {
        crate::embedded::shutdown(&b).await;
    }
    tracing::info!("gateway stopped");
    Ok(())
}
