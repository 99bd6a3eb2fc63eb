//! TLS for the end-to-end tests: a throwaway PKI made at test time with rcgen (no certificate
//! is committed), an HTTPS upstream (optionally requiring a client certificate), a TLS client
//! that speaks HTTP/1.1 or h2 by ALPN to the gateway's listener, and a standalone backend with
//! a TLS listener.
//!
//! - [`Pki`]: a CA; [`Pki::issue`] writes a leaf certificate and key (server or client) as PEM
//!   files for the binaries to read.
//! - [`TlsUpstream`]: answers any request with a JSON echo of what it saw, plus what the TLS
//!   layer saw: the SNI name, the ALPN protocol, whether a client certificate was presented.
//! - [`fetch`]: one request over a fresh TLS connection; reports the negotiated protocol and
//!   the server's leaf certificate.

use crate::{Proc, TempDir};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_pem: String,
}

impl Issued {
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("issued certificate PEM")
    }
}

/// A certificate authority for one test.
pub struct Pki {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
    pub ca_file: PathBuf,
    dir: PathBuf,
    serial: AtomicU64,
}

impl Pki {
    /// A new CA named `name`; its certificate is written to `dir/<name>-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("tollgate test CA {name}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-signed CA");
        let ca_pem = cert.pem();
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, &ca_pem).expect("write CA");
        Pki {
            issuer: rcgen::Issuer::new(params, key),
            ca_pem,
            ca_file,
            dir: dir.to_path_buf(),
            serial: AtomicU64::new(1),
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), written as
    /// `dir/<file>.pem` and `dir/<file>.key`. `client` = for TLS client authentication.
    pub fn issue(&self, file: &str, names: &[&str], client: bool) -> Issued {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(rcgen::SerialNumber::from(serial.to_be_bytes().to_vec()));
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_file = self.dir.join(format!("{file}.pem"));
        let key_file = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).expect("write cert");
        std::fs::write(&key_file, key.serialize_pem()).expect("write key");
        Issued {
            cert_file,
            key_file,
            cert_pem: cert.pem(),
        }
    }

    /// A trust store holding this CA only.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).expect("CA PEM");
        roots.add(ca).expect("add CA");
        roots
    }
}

fn certs_and_key(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let certs = vec![issued.der()];
    let key = PrivateKeyDer::from_pem_file(&issued.key_file).expect("key PEM");
    (certs, key)
}

/// What the TLS upstream saw of one request.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsUpstream {
    /// An HTTPS upstream on 127.0.0.1 presenting `cert`, ALPN http/1.1 only; with
    /// `client_ca`, a client certificate signed by it is required.
    pub fn start(cert: &Issued, client_ca: Option<&Pki>) -> TlsUpstream {
        let (certs, key) = certs_and_key(cert);
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(pki) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(pki.roots()),
                    provider(),
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

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
                            let acceptor = acceptor.clone();
                            let h = h.clone();
                            tokio::spawn(async move {
                                // A refused handshake (unknown client) just ends here.
                                let Ok(tls) = acceptor.accept(stream).await else { return };
                                let (_, conn) = tls.get_ref();
                                let seen = serde_json::json!({
                                    "sni": conn.server_name(),
                                    "alpn": conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
                                    "client_cert": conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                                });
                                let svc = hyper::service::service_fn(move |req| {
                                    echo(req, h.clone(), seen.clone())
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                                    .await;
                            });
                        }
                        _ = &mut rx => break,
                    }
                }
            });
        });
        TlsUpstream {
            addr,
            hits,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `https://localhost:<port>` (a DNS name: sent as SNI).
    pub fn url_by_name(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Requests received (after a completed handshake).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn echo(
    req: Request<hyper::body::Incoming>,
    hits: Arc<AtomicU64>,
    tls: serde_json::Value,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
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
    let body = serde_json::json!({
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "headers": headers,
        "tls": tls,
    });
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    r.headers_mut().insert(
        "content-type",
        hyper::http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// What [`fetch`] got.
pub struct Fetched {
    /// The ALPN protocol the server chose (`h2`, `http/1.1`), if any.
    pub alpn: Option<String>,
    pub version: hyper::Version,
    pub status: u16,
    pub body: String,
    /// The server's leaf certificate.
    pub leaf: CertificateDer<'static>,
}

/// One GET of `path` over a new TLS connection to `addr`, trusting `roots`, verifying the
/// certificate for `name`, offering `alpn`; HTTP/2 when the server chose `h2`.
pub async fn fetch(
    addr: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
    path: &str,
) -> Result<Fetched, String> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (_, conn) = tls.get_ref();
    let negotiated = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.clone().into_owned())
        .ok_or("no server certificate")?;
    let io = hyper_util::rt::TokioIo::new(tls);
    let uri = format!("https://{name}{path}");
    let req = Request::get(uri.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = if negotiated.as_deref() == Some("h2") {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        send.send_request(req).await.map_err(|e| e.to_string())?
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| format!("http1 handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = req;
        *req.uri_mut() = path
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
        req.headers_mut().insert(
            hyper::header::HOST,
            hyper::http::HeaderValue::from_str(name).map_err(|e| e.to_string())?,
        );
        send.send_request(req).await.map_err(|e| e.to_string())?
    };
    let version = resp.version();
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Fetched {
        alpn: negotiated,
        version,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        leaf,
    })
}

/// `addr` of a `http://addr` URL as the harness reports listeners (TLS ones included).
pub fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("listener address")
}

/// A standalone `tollgate-backend serve` with a TLS listener presenting `cert`.
pub struct TlsBackend {
    pub dir: TempDir,
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl TlsBackend {
    pub fn start(cert: &Issued) -> TlsBackend {
        let dir = TempDir::new("backend-tls");
        let text = format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nfeed_token = \"{}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n",
            dir.path().join("data").display(),
            crate::gw::FEED_TOKEN,
            cert.cert_file.display(),
            cert.key_file.display(),
        );
        let config = dir.write("backend.toml", &text);
        let path = config.display().to_string();
        let proc = Proc::start(
            "tollgate-backend",
            &["--config", &path, "serve"],
            &[("TOLLGATE_SERVICE_TOKEN", crate::gw::TOKEN)],
        );
        let addr = addr_of(&proc.url("backend"));
        TlsBackend { dir, proc, addr }
    }
}
