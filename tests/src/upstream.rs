//! A real upstream HTTP server for the gateway's end-to-end tests, running on its own thread.
//!
//! - any path: a JSON echo `{method, path, query, headers: {name: value}}` of what arrived;
//! - `/slow/<ms>/...`: the echo after `<ms>` milliseconds;
//! - `/big/<bytes>`: a streamed body of `<bytes>` pattern bytes (see [`pattern_byte`]);
//! - `/chunked/<bytes>`: the same without a declared length (`Transfer-Encoding: chunked`);
//! - `POST /upload`: reads the whole body as it streams and answers `{bytes, fnv}` (FNV-1a 64);
//! - `/status/<code>`: an empty answer with that status;
//! - `.../upgrade` with an `Upgrade` header: 101, then every byte sent is echoed back.
//!
//! The commands may also follow a prefix (`/v1/status/418`).
//!
//! It counts the requests it received ([`Upstream::hits`]) so tests can show a rejected request
//! never reached it. [`down_url`] gives an address where nothing listens.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The byte at offset `i` of a `/big/<n>` body.
pub fn pattern_byte(i: u64) -> u8 {
    // i % 251 fits in a u8; 251 is prime so the pattern does not line up with chunk sizes.
    u8::try_from((i * 7 + i / 4096) % 251).unwrap_or(0)
}

/// FNV-1a 64 of a byte stream, updated chunk by chunk.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

enum UpBody {
    Full(Option<Bytes>),
    Pattern { at: u64, len: u64, declared: bool },
}

impl hyper::body::Body for UpBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            UpBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            UpBody::Pattern { at, len, .. } => {
                if *at >= *len {
                    return Poll::Ready(None);
                }
                let n = (*len - *at).min(64 * 1024 - 7);
                let chunk: Vec<u8> = (*at..*at + n).map(pattern_byte).collect();
                *at += n;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            UpBody::Pattern {
                at,
                len,
                declared: true,
            } => SizeHint::with_exact(len - at),
            UpBody::Pattern { .. } => SizeHint::default(),
        }
    }
}

fn json(v: serde_json::Value) -> Response<UpBody> {
    let mut r = Response::new(UpBody::Full(Some(Bytes::from(v.to_string()))));
    r.headers_mut().insert(
        "content-type",
        hyper::http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    mut req: Request<Incoming>,
    hits: Arc<AtomicU64>,
) -> Result<Response<UpBody>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    if req.uri().path().ends_with("/upgrade") && req.headers().contains_key("upgrade") {
        // Switch protocols, then echo every byte back on the raw connection.
        let protocol = req.headers()["upgrade"].clone();
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = on.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut r = Response::new(UpBody::Full(None));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut().insert(
            "connection",
            hyper::http::HeaderValue::from_static("upgrade"),
        );
        r.headers_mut().insert("upgrade", protocol);
        return Ok(r);
    }
    let path = req.uri().path().to_string();
    // Commands may follow a route prefix the gateway did not strip (`/v1/status/418`).
    let all: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let at = all
        .iter()
        .position(|p| ["big", "chunked", "status", "slow"].contains(p))
        .unwrap_or(0);
    let parts = &all[at..];
    if let Some(&command @ ("big" | "chunked")) = parts.first() {
        let len = parts.get(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        return Ok(Response::new(UpBody::Pattern {
            at: 0,
            len,
            declared: command == "big",
        }));
    }
    if parts.first() == Some(&"status") {
        let code = parts.get(1).and_then(|n| n.parse().ok()).unwrap_or(200);
        let mut r = Response::new(UpBody::Full(None));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::OK);
        return Ok(r);
    }
    if parts.first() == Some(&"slow") {
        let ms = parts.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let mut body = req.into_body();
    let mut fnv = Fnv::default();
    let mut bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    fnv.update(d);
                    bytes += d.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    Ok(json(serde_json::json!({
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "bytes": bytes,
        "fnv": format!("{:016x}", fnv.0),
    })))
}

impl Upstream {
    pub fn start() -> Upstream {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let h = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                loop {
                    tokio::select! {
                        r = listener.accept() => {
                            let Ok((stream, _)) = r else { continue };
                            let _ = stream.set_nodelay(true);
                            let h = h.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| handle(req, h.clone()));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                                    .with_upgrades()
                                    .await;
                            });
                        }
                        _ = &mut rx => break,
                    }
                }
            });
        });
        Upstream {
            addr,
            hits,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests received so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `http://127.0.0.1:<port>` where nothing listens (a port just released).
pub fn down_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}
