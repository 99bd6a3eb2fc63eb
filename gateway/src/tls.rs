//! TLS for the gateway's outgoing connections (https upstreams, an https backend) and its
//! listener's certificate. PEM loading and the rustls configurations themselves live in
//! `tollgate_protocol::tls`, shared with the backend.
//!
//! Outgoing: [`Connector`] is the connector of every hyper-util client the gateway builds. An
//! `http://` URI gets a plain TCP connection, exactly as `HttpConnector` alone gave; an
//! `https://` one a TCP connection (same connect timeout) and then a TLS handshake, bounded by
//! the same timeout, with SNI = the URI's host name (none for an IP literal, whose IP SAN is
//! verified instead). A connector without a TLS configuration refuses https (no client is
//! built that way for an https target; it keeps a mistake loud). The handshake is part of the
//! connect, so a certificate the upstream cannot prove counts as a failed connect: 502
//! `upstream_unavailable`, refunded, the upstream cooled down like one that refuses TCP.
//!
//! Each route with an https upstream gets its own client ([`client`]) with its own pool: the
//! pool is keyed by scheme and authority only, and two routes to one host may trust different
//! CAs or present different client certificates.
//!
//! Listening: [`ListenerCert`] holds the listener's current `ServerConfig`; SIGHUP swaps in a
//! new one (certificate files re-read) and new handshakes use it, connections already open keep
//! theirs.

use crate::body::Body;
use arc_swap::ArcSwap;
use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tollgate_protocol::tls::rustls::pki_types::ServerName;
use tollgate_protocol::tls::rustls::{ClientConfig, ServerConfig};

/// Connects `http://` over TCP and `https://` over TLS (see the module doc).
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsConnector>,
    /// Bounds the TLS handshake (the TCP connect has its own, in `http`).
    handshake_timeout: Duration,
}

impl Connector {
    /// `tls` = the client configuration for https URIs; `None` refuses them.
    pub fn new(connect_timeout: Duration, tls: Option<Arc<ClientConfig>>) -> Connector {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        // The scheme is checked here, not by HttpConnector (it would refuse https).
        http.enforce_http(false);
        Connector {
            http,
            tls: tls.map(TlsConnector::from),
            handshake_timeout: connect_timeout,
        }
    }
}

/// A client connection: plain TCP, or TLS over it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        match self {
            Stream::Plain(s) => s.connected(),
            Stream::Tls(s) => s.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The TLS server name for a URI's host: a DNS name (sent as SNI and verified), or an IP
/// address (`[::1]` without brackets; no SNI, verified against the certificate's IP SANs).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare)
        .map(|n| n.to_owned())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.http, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => {
                let msg = format!("unsupported URI scheme {other:?}");
                return Box::pin(async move { Err(msg.into()) });
            }
        };
        let tls = self.tls.clone();
        let timeout = self.handshake_timeout;
        let tcp = tower::Service::<Uri>::call(&mut self.http, uri.clone());
        Box::pin(async move {
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp.await?.into_inner())));
            }
            let Some(tls) = tls else {
                return Err("https is not configured for this client".into());
            };
            let host = uri.host().unwrap_or_default();
            let name = server_name(host)?;
            let tcp = tcp.await?.into_inner();
            match tokio::time::timeout(timeout, tls.connect(name, tcp)).await {
                Ok(Ok(s)) => Ok(TokioIo::new(Stream::Tls(Box::new(s)))),
                Ok(Err(e)) => {
                    // Says why (unknown issuer, name mismatch, a client certificate refused);
                    // hyper's own error shows only "client error (Connect)".
                    tracing::warn!(host, error = %e, "TLS handshake failed");
                    Err(Box::new(e) as BoxError)
                }
                Err(_) => {
                    tracing::warn!(host, "TLS handshake timed out");
                    Err("TLS handshake timed out".into())
                }
            }
        })
    }
}

/// Every outgoing HTTP(S) client of the gateway: upstreams, the backend link.
pub type HttpClient = Client<Connector, Body>;

/// A pooled HTTP/1.1 client: plain TCP for http, TLS with `tls` for https.
pub fn client(
    settings: crate::limits::UpstreamLimits,
    tls: Option<Arc<ClientConfig>>,
) -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(settings.idle_timeout)
        .pool_max_idle_per_host(settings.max_idle)
        .pool_timer(TokioTimer::new())
        .build(Connector::new(settings.connect_timeout, tls))
}

/// A client for tests and for links that never see https.
pub fn plain_client() -> Client<Connector, Body> {
    Client::builder(TokioExecutor::new()).build(Connector::new(Duration::from_secs(10), None))
}

/// The listener's certificate, swapped whole on reload.
pub struct ListenerCert(ArcSwap<ServerConfig>);

impl ListenerCert {
    pub fn new(config: Arc<ServerConfig>) -> ListenerCert {
        ListenerCert(ArcSwap::new(config))
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }

    /// New handshakes present `config` from now on.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.0.store(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_literals_are_ip_server_names() {
        let name = |h: &str| server_name(h).map(|n| matches!(n, ServerName::IpAddress(_)));
        assert_eq!(name("127.0.0.1"), Ok(true));
        assert_eq!(name("[::1]"), Ok(true));
        assert_eq!(name("api.example.com"), Ok(false));
        assert!(server_name("bad name!").is_err());
    }

    #[tokio::test]
    async fn https_without_a_tls_configuration_is_refused() {
        use tower::Service;
        let mut c = Connector::new(Duration::from_secs(1), None);
        let uri: Uri = "https://127.0.0.1:9/"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let e = c.call(uri).await.err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("https is not configured for this client")
        );
    }
}
