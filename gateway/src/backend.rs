//! The gateway's side of the backend: the key feed and usage ingest ([`BackendLink`]), and the
//! management paths handed to the backend ([`Management`]). Embedded mode calls the in-process
//! backend directly (no network hop, the router as a tower service); remote mode speaks HTTP or
//! HTTPS (`https://` URL, trust from `[backend] ca_file` or the system; see [`crate::tls`]) to
//! `[backend] url` with the feed token.

use crate::body::Body;
use crate::headers::strip_hop_headers;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tollgate_protocol::feed::{FeedPage, UsageAck, UsageBatch, FEED_PATH, USAGE_PATH};
use tollgate_protocol::usage_wire;

/// Every outgoing HTTP(S) client of the gateway: upstreams, the backend link.
pub type HttpClient = Client<crate::tls::Connector, Body>;

#[async_trait]
pub trait BackendLink: Send + Sync {
    /// Keys changed after `since`; waits up to `wait` when there are none.
    /// A feed page; `known` is the `db_id` the replica holds (a different current one answers
    /// at once instead of after `wait`).
    async fn feed_page(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
        known: &str,
    ) -> Result<FeedPage, String>;
    /// Delivers a usage batch; the backend applies each `(gateway_id, batch_id)` once.
    async fn ingest_usage(&self, batch: &UsageBatch) -> Result<UsageAck, String>;
    /// Delivers a usage batch already serialised, as `UsageBatch` JSON and (when it fits) in
    /// the binary form: the shipper serialises a batch once, off the async workers, and
    /// journals the JSON. This default (links that need the struct) parses the JSON back on the
    /// background thread; the remote link sends the binary form.
    async fn ingest_usage_sealed(
        &self,
        json: Bytes,
        _binary: Option<Bytes>,
    ) -> Result<UsageAck, String> {
        let batch = crate::background::run(move || serde_json::from_slice::<UsageBatch>(&json))
            .await
            .map_err(|e| format!("reading usage batch: {e}"))?
            .map_err(|e| format!("usage batch is not valid JSON: {e}"))?;
        self.ingest_usage(&batch).await
    }
}

/// A backend reached over HTTP.
pub struct RemoteBackend {
    client: HttpClient,
    base: Uri,
    auth: HeaderValue,
    /// Cleared when the backend refuses the binary usage form.
    binary_usage: AtomicBool,
}

/// Largest feed page body accepted (a 50,000-key page is ~20 MB of JSON).
const MAX_FEED_BODY: usize = 256 << 20;

impl RemoteBackend {
    pub fn new(client: HttpClient, base: Uri, feed_token: &str) -> Result<RemoteBackend, String> {
        let mut auth = HeaderValue::from_str(&format!("Bearer {feed_token}"))
            .map_err(|_| "backend.feed_token: must be printable ASCII".to_string())?;
        auth.set_sensitive(true);
        Ok(RemoteBackend {
            client,
            base,
            auth,
            binary_usage: AtomicBool::new(true),
        })
    }

    fn uri(&self, path_and_query: &str) -> Result<Uri, String> {
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or("");
        let scheme = self.base.scheme_str().unwrap_or("http");
        format!("{scheme}://{authority}{path_and_query}")
            .parse()
            .map_err(|e| format!("bad backend URI: {e}"))
    }

    async fn call(&self, req: Request<Body>, timeout: Duration) -> Result<Bytes, String> {
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| "backend did not answer in time".to_string())?
            .map_err(|e| format!("backend unreachable: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_FEED_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading backend answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            return Err(format!("backend answered {status}: {text}"));
        }
        Ok(body)
    }
}

#[async_trait]
impl BackendLink for RemoteBackend {
    async fn feed_page(
        &self,
        since: u64,
        limit: usize,
        wait: Duration,
        known: &str,
    ) -> Result<FeedPage, String> {
        // A db_id is hex and dots; anything else is not sent (the backend then just waits).
        let known = if known
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.')
        {
            known
        } else {
            ""
        };
        let uri = self.uri(&format!(
            "{FEED_PATH}?since={since}&limit={limit}&wait={}&db_id={known}",
            wait.as_secs()
        ))?;
        let req = Request::get(uri)
            .header(AUTHORIZATION, self.auth.clone())
            .body(Body::Empty)
            .map_err(|e| e.to_string())?;
        let body = self.call(req, wait + Duration::from_secs(10)).await?;
        serde_json::from_slice(&body).map_err(|e| format!("feed page is not valid JSON: {e}"))
    }

    async fn ingest_usage(&self, batch: &UsageBatch) -> Result<UsageAck, String> {
        let json = serde_json::to_vec(batch).map_err(|e| e.to_string())?;
        self.post_usage(json.into(), "application/json").await
    }

    /// Posts the bytes as they are (no serialisation on the caller's async thread), binary when
    /// there is a binary form and the backend has not refused one.
    async fn ingest_usage_sealed(
        &self,
        json: Bytes,
        binary: Option<Bytes>,
    ) -> Result<UsageAck, String> {
        if let Some(binary) = binary.filter(|_| self.binary_usage.load(Ordering::Relaxed)) {
            match self.post_usage(binary, usage_wire::CONTENT_TYPE).await {
                // A backend from before the binary form parses the body as JSON.
                Err(e) if e.contains(" 415 ") || e.contains("invalid_json") => {
                    tracing::warn!(error = %e, "backend does not take binary usage batches (older version?); sending JSON");
                    self.binary_usage.store(false, Ordering::Relaxed);
                }
                done => return done,
            }
        }
        self.post_usage(json, "application/json").await
    }
}

impl RemoteBackend {
    async fn post_usage(
        &self,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<UsageAck, String> {
        let req = Request::post(self.uri(USAGE_PATH)?)
            .header(AUTHORIZATION, self.auth.clone())
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Body::full(body))
            .map_err(|e| e.to_string())?;
        let body = self.call(req, Duration::from_secs(10)).await?;
        serde_json::from_slice(&body).map_err(|e| format!("usage ack is not valid JSON: {e}"))
    }
}

pub struct RemoteManagement {
    client: HttpClient,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    host: HeaderValue,
}

/// Where management paths (`/api/marketplace/*`, `/api/v1/billing/*`, ...) go.
pub enum Management {
    Remote(Box<RemoteManagement>),
    Embedded(axum::Router),
}

impl Management {
    pub fn remote(client: HttpClient, base: &Uri) -> Option<Management> {
        let authority = base.authority()?.clone();
        let host = HeaderValue::from_str(authority.as_str()).ok()?;
        let scheme = base.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        Some(Management::Remote(Box::new(RemoteManagement {
            client,
            scheme,
            authority,
            host,
        })))
    }

    /// Hands the request to the backend; `Err` when it cannot be reached.
    pub async fn forward(&self, req: Request<Incoming>) -> Result<Response<Body>, String> {
        match self {
            Management::Embedded(router) => {
                use tower::ServiceExt;
                let resp = router.clone().oneshot(req.map(axum::body::Body::new)).await;
                match resp {
                    Ok(r) => Ok(r.map(Body::Axum)),
                    Err(never) => match never {},
                }
            }
            Management::Remote(r) => {
                let RemoteManagement {
                    client,
                    scheme,
                    authority,
                    host,
                } = &**r;
                let (mut parts, body) = req.into_parts();
                let mut uri = std::mem::take(&mut parts.uri).into_parts();
                uri.scheme = Some(scheme.clone());
                uri.authority = Some(authority.clone());
                parts.uri = Uri::from_parts(uri).map_err(|e| e.to_string())?;
                parts.version = http::Version::HTTP_11;
                strip_hop_headers(&mut parts.headers, false);
                parts.headers.insert(HOST, host.clone());
                let resp = client
                    .request(Request::from_parts(parts, Body::Incoming(body)))
                    .await
                    .map_err(|e| format!("backend unreachable: {e}"))?;
                let (mut parts, body) = resp.into_parts();
                strip_hop_headers(&mut parts.headers, false);
                Ok(Response::from_parts(parts, Body::Incoming(body)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tollgate_protocol::feed::UsageEntry;

    /// A backend from before the binary usage form: it parses every usage body as JSON and
    /// answers a binary one with its `invalid_json` error. Records each body's content type.
    async fn old_backend(seen: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
        let app = axum::Router::new().route(
            USAGE_PATH,
            axum::routing::post(move |headers: http::HeaderMap, body: Bytes| async move {
                let content_type = headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(content_type);
                match serde_json::from_slice::<UsageBatch>(&body) {
                    Ok(b) => (
                        http::StatusCode::OK,
                        axum::Json(serde_json::json!({"gateway_id": b.gateway_id, "batch_id": b.batch_id, "duplicate": false})),
                    ),
                    Err(e) => (
                        http::StatusCode::BAD_REQUEST,
                        axum::Json(serde_json::json!({"error": {"code": "invalid_json", "message": e.to_string()}})),
                    ),
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn a_backend_refusing_binary_usage_gets_json_from_then_on() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let addr = old_backend(seen.clone()).await;
        let client = crate::tls::plain_client();
        let base: Uri = format!("http://{addr}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let link = RemoteBackend::new(client, base, "t").unwrap_or_else(|e| panic!("{e}"));
        for batch_id in 1..=2u64 {
            let batch = UsageBatch {
                gateway_id: "gw".into(),
                batch_id,
                entries: vec![UsageEntry {
                    key_id: "key_0123456789abcdef".into(),
                    day: "2026-11-26".into(),
                    count: 3,
                    last_used: 1_764_115_200,
                }],
            };
            let json = Bytes::from(serde_json::to_vec(&batch).unwrap_or_default());
            let binary = Bytes::from(usage_wire::encode_batch(&batch).unwrap_or_default());
            let ack = link
                .ingest_usage_sealed(json, Some(binary))
                .await
                .unwrap_or_else(|e| panic!("batch {batch_id}: {e}"));
            assert_eq!((ack.batch_id, ack.duplicate), (batch_id, false));
        }
        // The first batch tried binary once, then JSON; the second went as JSON directly.
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            seen,
            [
                usage_wire::CONTENT_TYPE,
                "application/json",
                "application/json"
            ]
        );
    }
}
