//! TLS material loaded the same way by both binaries (feature `tls`): PEM certificates and
//! private keys, and the rustls configurations built from them: a server (the gateway's
//! listener, the standalone backend's) and a client (HTTPS upstreams, the gateway's backend
//! link).
//!
//! Every function here answers a one-line reason that names the file; the caller puts the
//! setting in front (`routes[0].tls_ca_file: cannot read /etc/x.pem: No such file ...`), so a
//! bad file stops start-up (or a SIGHUP reload) with a line that says what to fix.
//!
//! One crypto provider for everything: rustls' `ring` (already built for reqwest), TLS 1.3 and
//! 1.2, chosen explicitly rather than through a process-wide default so two providers compiled
//! into one binary cannot make the choice ambiguous.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use rustls;

/// ALPN for a client that speaks HTTP/1.1 only (upstreams, the backend link).
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];
/// ALPN for a server that speaks both (hyper-util's auto server).
pub const ALPN_H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The crypto provider every configuration here uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every `CERTIFICATE` block of a PEM file (a chain: leaf first; or a CA bundle).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----)",
            path.display()
        ),
        e => format!("{} is not valid PEM: {e}", path.display()),
    })
}

/// A trust store of the CA certificates in a PEM file.
pub fn read_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The operating system's trust store (what `curl` trusts: `/etc/ssl/certs` and friends,
/// `SSL_CERT_FILE`), read once per process. Certificates the OS lists but webpki cannot use are
/// skipped, as browsers do.
pub fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static SYSTEM: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system CA certificates could be loaded{why}; name a CA file instead"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// Where a client's trust comes from.
pub enum Trust<'a> {
    /// The operating system's store ([`system_roots`]).
    System,
    /// Only the CA certificates in this PEM file (a private CA), not the system's.
    CaFile(&'a Path),
}

/// A client's own certificate (mTLS): the chain and its key, each from a PEM file.
pub struct Identity<'a> {
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
}

/// Which of a client configuration's inputs was wrong, so the caller can name the setting.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientError {
    Trust(String),
    Cert(String),
    Key(String),
}

/// A client configuration: server certificates verified against `trust` (for an IP address,
/// against its IP SAN; no SNI is sent for one), `identity` presented when the server asks,
/// `alpn` offered.
pub fn client_config(
    trust: Trust<'_>,
    identity: Option<Identity<'_>>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, ClientError> {
    let roots = match trust {
        Trust::System => system_roots().map_err(ClientError::Trust)?,
        Trust::CaFile(path) => Arc::new(read_roots(path).map_err(ClientError::Trust)?),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Trust(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs = read_certs(id.cert_file).map_err(ClientError::Cert)?;
            let key = read_key(id.key_file).map_err(ClientError::Key)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                ClientError::Key(format!(
                    "{} does not go with {}: {e}",
                    id.key_file.display(),
                    id.cert_file.display()
                ))
            })?
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Which of a server configuration's files was wrong.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerError {
    Cert(String),
    Key(String),
}

/// A server configuration presenting the chain in `cert_file` with the key in `key_file`, no
/// client certificates asked for, `alpn` offered in order of preference.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    alpn: &[&[u8]],
) -> Result<ServerConfig, ServerError> {
    let certs = read_certs(cert_file).map_err(ServerError::Cert)?;
    let key = read_key(key_file).map_err(ServerError::Key)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Cert(format!("TLS set-up: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServerError::Key(format!(
                "{} does not go with {}: {e}",
                key_file.display(),
                cert_file.display()
            ))
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    #[test]
    fn a_missing_file_is_named() {
        let e = read_certs(Path::new("/nonexistent/tollgate/ca.pem"))
            .err()
            .unwrap_or_default();
        assert!(
            e.starts_with("cannot read /nonexistent/tollgate/ca.pem:"),
            "{e}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let p = temp("empty.pem", "just some text\n");
        let e = read_certs(&p).err().unwrap_or_default();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = read_key(&p).err().unwrap_or_default();
        assert!(e.contains("holds no PEM private key"), "{e}");
    }

    #[test]
    fn broken_pem_is_refused() {
        let p = temp(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let e = read_certs(&p).err().unwrap_or_default();
        assert!(e.contains("is not valid PEM"), "{e}");
    }

    #[test]
    fn a_ca_file_error_names_the_trust_input() {
        let e = client_config(
            Trust::CaFile(Path::new("/nonexistent/ca.pem")),
            None,
            ALPN_HTTP1,
        )
        .err();
        assert!(matches!(e, Some(ClientError::Trust(m)) if m.contains("/nonexistent/ca.pem")));
    }
}
