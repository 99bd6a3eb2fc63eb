//! The standalone backend's TLS listener: `[backend] tls_cert_file` + `tls_key_file` (both or
//! neither), so the gateway → backend link (key feed, usage ingest, management calls) can be
//! encrypted end to end with a gateway using `url = "https://..."` and `ca_file`.
//!
//! The files are read at config load (a bad one stops start-up with a line naming the setting
//! and the path) and again on SIGHUP ([`ListenerCert::reload`]: a bad new certificate keeps the
//! old one, with a warning). PEM loading and the rustls configuration are
//! `tollgate_protocol::tls`, shared with the gateway.
//!
//! [`TlsListener`] is an `axum::serve` listener. Handshakes run in their own tasks, each bounded
//! by [`HANDSHAKE_TIMEOUT`], so a client that connects and says nothing holds up no one else;
//! finished ones are handed to axum in the order they complete. ALPN offers http/1.1 only (the
//! backend's server speaks HTTP/1.1).

use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tollgate_protocol::tls::rustls::ServerConfig;
use tollgate_protocol::tls::{self, ServerError};

/// Longest a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the listener's certificate chain and key are.
#[derive(Clone, Debug)]
pub struct ListenerFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ListenerFiles {
    /// Reads both files into a server configuration; the error names the setting and the file.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, String> {
        tls::server_config(&self.cert_file, &self.key_file, tls::ALPN_HTTP1)
            .map(Arc::new)
            .map_err(|e| match e {
                ServerError::Cert(m) => format!("backend.tls_cert_file: {m}"),
                ServerError::Key(m) => format!("backend.tls_key_file: {m}"),
            })
    }
}

/// `tls_cert_file` + `tls_key_file` of `[backend]` (both or neither), checked by reading them
/// now. An error names the setting to blame and says why.
pub fn check(
    cert: Option<String>,
    key: Option<String>,
) -> Result<Option<ListenerFiles>, (&'static str, String)> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err((
            "tls_key_file",
            "required with tls_cert_file (the certificate's private key, PEM)".to_string(),
        )),
        (None, Some(_)) => Err((
            "tls_cert_file",
            "required with tls_key_file (the certificate chain, PEM, leaf first)".to_string(),
        )),
        (Some(cert_file), Some(key_file)) => {
            let files = ListenerFiles {
                cert_file: PathBuf::from(cert_file),
                key_file: PathBuf::from(key_file),
            };
            match tls::server_config(&files.cert_file, &files.key_file, tls::ALPN_HTTP1) {
                Ok(_) => Ok(Some(files)),
                Err(ServerError::Cert(m)) => Err(("tls_cert_file", m)),
                Err(ServerError::Key(m)) => Err(("tls_key_file", m)),
            }
        }
    }
}

/// The certificate new handshakes present, swapped whole on reload.
pub struct ListenerCert(ArcSwap<ServerConfig>);

impl ListenerCert {
    pub fn new(files: &ListenerFiles) -> Result<Arc<ListenerCert>, String> {
        Ok(Arc::new(ListenerCert(ArcSwap::new(files.server_config()?))))
    }

    /// Re-reads `files`; on any error the current certificate stays (and the reason is logged).
    pub fn reload(&self, files: &ListenerFiles) {
        match files.server_config() {
            Ok(c) => {
                self.0.store(c);
                tracing::info!(cert = %files.cert_file.display(), "listener certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "listener certificate NOT reloaded; the current one stays")
            }
        }
    }
}

/// Aborts the accept task when the listener goes (axum drops it at shutdown).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP listener whose connections are handed on once their TLS handshake completes.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    _accepting: AbortOnDrop,
}

impl TlsListener {
    pub fn new(listener: TcpListener, cert: Arc<ListenerCert>) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(cert.0.load_full());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            addr,
            _accepting: AbortOnDrop(accepting),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_files_or_neither() {
        assert!(matches!(check(None, None), Ok(None)));
        let e = check(Some("/x/cert.pem".into()), None).err();
        assert_eq!(e.map(|e| e.0), Some("tls_key_file"));
        let e = check(None, Some("/x/key.pem".into())).err();
        assert_eq!(e.map(|e| e.0), Some("tls_cert_file"));
    }

    #[test]
    fn an_unreadable_certificate_names_its_path() {
        let e = check(
            Some("/nonexistent/tollgate/cert.pem".into()),
            Some("/nonexistent/tollgate/key.pem".into()),
        )
        .err()
        .unwrap_or(("", String::new()));
        assert_eq!(e.0, "tls_cert_file");
        assert!(
            e.1.starts_with("cannot read /nonexistent/tollgate/cert.pem"),
            "{}",
            e.1
        );
    }
}
