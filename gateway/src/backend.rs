//! The gateway's side of the backend: the key feed and usage ingest ([`BackendLink`]), and the
//! management paths handed to the backend ([`Management`]). Embedded mode calls the in-process
//! backend directly (no network hop, the router as a tower service); remote mode speaks HTTP or
//! HTTPS (`https://` URL, trust from `[backend] ca_file` or the system; see [`crate::tls`]) to
//! `[backend] url` with the feed token.

use crate::body::Body;
use crate::headers::strip_hop_headers;
use crate::tls::HttpClient;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tollgate_protocol::feed::{FeedPage, UsageAck, FEED_PATH, USAGE_PATH};
use tollgate_protocol::usage_codec::{self, Media};

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
    /// Delivers a usage batch, encoded ([`usage_codec`]) once by the shipper, off the async
    /// workers; the backend applies each `(gateway_id, batch_id)` once.
    async fn ingest_usage(&self, batch: Bytes) -> Result<UsageAck, String>;
}

/// A backend reached over HTTP.
pub struct RemoteBackend {
    client: HttpClient,
    base: Uri,
    auth: HeaderValue,
    /// Cleared when the backend's `Accept-Post` leaves out the codec's version (it is then sent
    /// JSON, the same batch).
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

    /// The backend's answer, whatever its status.
    async fn exchange(
        &self,
        req: Request<Body>,
        timeout: Duration,
    ) -> Result<(http::response::Parts, Bytes), String> {
        let resp = tokio::time::timeout(timeout, self.client.request(req))
            .await
            .map_err(|_| "backend did not answer in time".to_string())?
            .map_err(|e| format!("backend unreachable: {e}"))?;
        let (parts, body) = resp.into_parts();
        let body = http_body_util::Limited::new(body, MAX_FEED_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading backend answer: {e}"))?
            .to_bytes();
        Ok((parts, body))
    }

    /// The backend's answer when it is a success; otherwise an error quoting it.
    async fn call(&self, req: Request<Body>, timeout: Duration) -> Result<Bytes, String> {
        let (parts, body) = self.exchange(req, timeout).await?;
        if !parts.status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            return Err(format!("backend answered {}: {text}", parts.status));
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

    /// Posts the encoded bytes as they are, unless the backend said (415 and `Accept-Post`) it
    /// takes only JSON: then the batch is written as JSON, from then on.
    async fn ingest_usage(&self, batch: Bytes) -> Result<UsageAck, String> {
        let media = if self.binary_usage.load(Ordering::Relaxed) {
            Media::Binary
        } else {
            Media::Json
        };
        let accept = match self.post_usage(&batch, media).await? {
            Posted::Ack(ack) => return Ok(ack),
            Posted::Unsupported(accept) => accept,
        };
        let chosen = usage_codec::choose(&accept).filter(|m| *m != media);
        let Some(chosen) = chosen else {
            return Err(format!(
                "backend does not take usage batches as {}; it takes: {accept:?}",
                media.content_type()
            ));
        };
        tracing::warn!(sent = media.content_type(), accepted = %accept, using = chosen.content_type(), "backend takes another usage representation; switching");
        self.binary_usage
            .store(chosen == Media::Binary, Ordering::Relaxed);
        match self.post_usage(&batch, chosen).await? {
            Posted::Ack(ack) => Ok(ack),
            Posted::Unsupported(accept) => Err(format!(
                "backend does not take usage batches as {}; it takes: {accept:?}",
                chosen.content_type()
            )),
        }
    }
}

/// The backend's answer to a usage batch.
enum Posted {
    Ack(UsageAck),
    /// 415: the representation is not one it takes; its `Accept-Post` list.
    Unsupported(String),
}

impl RemoteBackend {
    async fn post_usage(&self, batch: &Bytes, media: Media) -> Result<Posted, String> {
        let body = match media {
            Media::Binary => batch.clone(),
            Media::Json => {
                let view = usage_codec::decode(batch)?;
                serde_json::to_vec(&view).map_err(|e| e.to_string())?.into()
            }
        };
        let req = Request::post(self.uri(USAGE_PATH)?)
            .header(AUTHORIZATION, self.auth.clone())
            .header(http::header::CONTENT_TYPE, media.content_type())
            .body(Body::full(body))
            .map_err(|e| e.to_string())?;
        let (parts, body) = self.exchange(req, Duration::from_secs(10)).await?;
        if parts.status == http::StatusCode::UNSUPPORTED_MEDIA_TYPE {
            let accept: Vec<&str> = parts
                .headers
                .get_all(usage_codec::ACCEPT_POST)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            return Ok(Posted::Unsupported(accept.join(", ")));
        }
        if !parts.status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).to_string();
            return Err(format!("backend answered {}: {text}", parts.status));
        }
        serde_json::from_slice(&body)
            .map(Posted::Ack)
            .map_err(|e| format!("usage ack is not valid JSON: {e}"))
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
    use tollgate_protocol::feed::{UsageBatch, UsageEntry};

    /// A backend that takes usage batches only as JSON: any other content type gets 415 and
    /// `Accept-Post: application/json`. Records each body's content type.
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
                    .push(content_type.clone());
                if content_type != usage_codec::JSON {
                    return (
                        http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        [(usage_codec::ACCEPT_POST, usage_codec::JSON)],
                        axum::Json(serde_json::json!({"error": {"code": "unsupported_media_type"}})),
                    );
                }
                match serde_json::from_slice::<UsageBatch>(&body) {
                    Ok(b) => (
                        http::StatusCode::OK,
                        [(usage_codec::ACCEPT_POST, usage_codec::JSON)],
                        axum::Json(serde_json::json!({"gateway_id": b.gateway_id, "batch_id": b.batch_id, "duplicate": false})),
                    ),
                    Err(e) => (
                        http::StatusCode::BAD_REQUEST,
                        [(usage_codec::ACCEPT_POST, usage_codec::JSON)],
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

    fn batch(batch_id: u64) -> Bytes {
        let batch: UsageBatch = UsageBatch {
            gateway_id: "gw".into(),
            batch_id,
            entries: vec![UsageEntry {
                key_id: "key_0123456789abcdef".into(),
                day: "2026-11-26".into(),
                count: 3,
                last_used: 1_764_115_200,
            }],
        };
        Bytes::from(usage_codec::encode(&batch).unwrap_or_default())
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
            let ack = link
                .ingest_usage(batch(batch_id))
                .await
                .unwrap_or_else(|e| panic!("batch {batch_id}: {e}"));
            assert_eq!((ack.batch_id, ack.duplicate), (batch_id, false));
        }
        // The first batch tried binary once, then JSON; the second went as JSON directly.
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(
            seen,
            [
                usage_codec::CONTENT_TYPE,
                usage_codec::JSON,
                usage_codec::JSON
            ]
        );
    }

    /// A 415 that lists nothing this gateway writes is an error (the batch stays pending), not a
    /// loop of retries in other forms.
    #[tokio::test]
    async fn a_backend_taking_nothing_we_write_is_an_error() {
        let app = axum::Router::new().route(
            USAGE_PATH,
            axum::routing::post(|| async {
                (
                    http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    [(
                        usage_codec::ACCEPT_POST,
                        "application/vnd.tollgate.usage-batch; v=9",
                    )],
                    "",
                )
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let base: Uri = format!("http://{addr}")
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let link = RemoteBackend::new(crate::tls::plain_client(), base, "t")
            .unwrap_or_else(|e| panic!("{e}"));
        let err = link.ingest_usage(batch(1)).await.err().unwrap_or_default();
        assert!(err.contains("v=9"), "{err}");
        assert!(link.binary_usage.load(Ordering::Relaxed), "still binary");
    }
}
