//! The gateway's configuration: `[gateway]`, `[[routes]]`, the gateway's part of `[backend]`
//! (`mode`, `url`, `feed_token`, `ca_file`) and the `[[plans]]` catalogue that route `plans` are
//! checked against. Defaults → TOML file → `TOLLGATE_<SECTION>_<KEY>` env (see
//! `tollgate_protocol::config`).
//!
//! TLS files (`gateway.tls_cert_file`/`tls_key_file`, a route's `tls_ca_file`,
//! `tls_client_cert_file`/`tls_client_key_file`, `backend.ca_file`) are read and turned into
//! rustls configurations here, at load: a missing, unreadable or malformed file, or a key that
//! does not go with its certificate, is a config error like any other, and a SIGHUP reload
//! re-reads them (renewed certificates) or keeps the running ones.
//!
//! Every bad setting gives one line naming it (`gateway.listen: ...`, `routes[2].plans: ...`);
//! start-up stops on any. Unknown keys in `[gateway]` and `[[routes]]` are errors, so a typo
//! never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::plans::Catalogue;
use tollgate_protocol::tls::rustls::{ClientConfig, ServerConfig};
use tollgate_protocol::tls::{self as tls, ClientError, ServerError};

pub use tollgate_protocol::config::Secret;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisFailure {
    Local,
    Closed,
}

/// `[gateway]`
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Runtime worker threads (1 = a single-threaded runtime).
    pub workers: usize,
    /// Identifies this gateway's usage batches; generated into `data_dir/gateway_id` when unset.
    pub gateway_id: Option<String>,
    pub usage_flush: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub client_header_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub upstream_pool_max_idle: usize,
    pub unhealthy_cooldown: Duration,
    pub shutdown_timeout: Duration,
    pub legacy_ratelimit_headers: bool,
    pub feed_wait: Duration,
    pub redis_url: Option<String>,
    pub redis_failure: RedisFailure,
    /// Longest wait for one Redis answer before the failure behaviour applies.
    pub redis_timeout: Duration,
    pub json_logs: bool,
    /// Proxy plain HTTP/1.1 keyed requests on the fast lane (`h1`); `false` sends every
    /// connection through hyper (same answers, more CPU). For tests and as an escape hatch.
    pub fast_lane: bool,
    /// Client connections held open at most on the main listener. At the cap, the least
    /// recently active idle connection is closed to make room; with none idle, a new connection
    /// is closed at once.
    pub max_connections: usize,
    /// `tls_cert_file` + `tls_key_file`: the main listener speaks TLS (h2 and http/1.1 by
    /// ALPN, all through hyper: the fast lane is plain TCP only).
    pub tls: Option<ListenerTls>,
    /// Peers (load balancers) whose `X-Forwarded-*` / `Forwarded` headers are believed and
    /// appended to; from anyone else they are replaced (see `crate::forwarded`).
    pub trusted_proxies: crate::forwarded::TrustedProxies,
}

/// The main listener's certificate: the files, and the configuration read from them.
#[derive(Clone, Debug)]
pub struct ListenerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub config: Arc<ServerConfig>,
}

#[derive(Clone, Debug)]
pub enum BackendMode {
    /// The backend runs inside the gateway process.
    Embedded,
    /// A separate backend at `url` (http or https), authenticated with the feed token; `tls`
    /// is the client configuration for an https `url` (trust: `ca_file`, else the system's).
    Remote {
        url: http::Uri,
        feed_token: Secret,
        tls: Option<Arc<ClientConfig>>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Auth {
    Key,
    None,
}

/// Which request headers may carry the key: a header concept, defined with the header helpers
/// that read it.
pub use crate::headers::KeySource;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    /// `http://host:port`
    Http { authority: http::uri::Authority },
    /// `https://host:port` (port 443 when left out), with the route's [`RouteConfig::tls`].
    Https { authority: http::uri::Authority },
    /// `builtin:echo`: a small JSON echo answered by the gateway itself.
    Echo,
}

/// `[[routes]]`
#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: String,
    pub prefix: String,
    pub host: Option<String>,
    pub upstreams: Vec<Upstream>,
    pub auth: Auth,
    /// Plans allowed on this route; `None` = all.
    pub plans: Option<Vec<String>>,
    pub cost: u64,
    pub key_source: KeySource,
    pub timeout: Duration,
    pub max_body_bytes: u64,
    pub strip_prefix: bool,
    pub preserve_host: bool,
    /// The client configuration for this route's https upstreams (`tls_ca_file` or the system's
    /// roots, `tls_client_cert_file` + `tls_client_key_file`, ALPN http/1.1); `None` when the
    /// route has none.
    pub tls: Option<Arc<ClientConfig>>,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub gateway: GatewaySettings,
    pub backend: BackendMode,
    pub catalogue: Catalogue,
    pub routes: Vec<RouteConfig>,
    /// The whole (env-overridden) document, for the embedded backend's own parser.
    pub document: Document,
}

/// Paths the gateway answers itself or hands to the backend; routes may not shadow them.
pub const MANAGEMENT_PREFIXES: &[&str] = &[
    "/api/marketplace",
    "/api/v1/billing",
    "/billing",
    "/portal",
    "/openapi.json",
];
pub const OWN_PATHS: &[&str] = &["/health", "/ready"];

use tollgate_protocol::config::{Document, Fields};

/// Half the process's open-file limit (each client connection may hold an upstream one too),
/// less a reserve for listeners, the database and logs; at most 10,000 and at least 64.
fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft.saturating_sub(256) / 2).clamp(64, 10_000)
}

/// `trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]`: addresses and CIDR blocks.
fn trusted_proxies(f: &mut Fields<'_>) -> crate::forwarded::TrustedProxies {
    let mut blocks = Vec::new();
    for (i, text) in f
        .strings("trusted_proxies")
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match crate::forwarded::Cidr::parse(text) {
            Ok(c) => blocks.push(c),
            Err(e) => f.err(&format!("trusted_proxies[{i}]"), e),
        }
    }
    crate::forwarded::TrustedProxies::new(blocks)
}

fn gateway_settings(doc: &Document, errors: &mut Vec<String>) -> GatewaySettings {
    let mut f = doc.fields("gateway", errors);
    let default_workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let s = GatewaySettings {
        listen: f.addr("listen", "127.0.0.1:8080"),
        metrics_listen: f.addr("metrics_listen", "127.0.0.1:9464"),
        data_dir: PathBuf::from(f.string("data_dir").unwrap_or_else(|| "./data".to_string())),
        workers: f
            .u64("workers", 1, 1024)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(default_workers),
        gateway_id: f.string("gateway_id"),
        usage_flush: f.millis("usage_flush_ms", 1000, 10, 1000),
        max_header_bytes: f
            .u64("max_header_bytes", 8192, 1 << 20)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(64 * 1024),
        max_body_bytes: f
            .u64("max_body_bytes", 0, u64::MAX >> 1)
            .unwrap_or(64 << 20),
        client_header_timeout: f.millis("client_header_timeout_ms", 10_000, 100, 600_000),
        upstream_connect_timeout: f.millis("upstream_connect_timeout_ms", 2_000, 1, 600_000),
        upstream_timeout: f.millis("upstream_timeout_ms", 30_000, 1, 3_600_000),
        upstream_idle_timeout: f.millis("upstream_idle_timeout_ms", 90_000, 1, 3_600_000),
        upstream_pool_max_idle: f
            .u64("upstream_pool_max_idle", 0, 1 << 20)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(1024),
        unhealthy_cooldown: f.millis("unhealthy_cooldown_ms", 5_000, 0, 3_600_000),
        shutdown_timeout: f.millis("shutdown_timeout_ms", 10_000, 0, 600_000),
        legacy_ratelimit_headers: f.bool("legacy_ratelimit_headers").unwrap_or(false),
        feed_wait: Duration::from_secs(
            f.u64("feed_wait_secs", 1, tollgate_protocol::feed::MAX_WAIT_SECS)
                .unwrap_or(25),
        ),
        redis_url: f.string("redis_url"),
        redis_failure: match f.string("redis_failure").as_deref() {
            None | Some("local") => RedisFailure::Local,
            Some("closed") => RedisFailure::Closed,
            Some(other) => {
                f.err(
                    "redis_failure",
                    format!("{other:?} must be \"local\" or \"closed\""),
                );
                RedisFailure::Local
            }
        },
        redis_timeout: f.millis("redis_timeout_ms", 250, 1, 10_000),
        json_logs: f.bool("json_logs").unwrap_or(false),
        fast_lane: f.bool("fast_lane").unwrap_or(true),
        max_connections: f
            .u64("max_connections", 1, 10_000_000)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(default_max_connections),
        trusted_proxies: trusted_proxies(&mut f),
        tls: listener_tls(&mut f),
    };
    if let Some(id) = &s.gateway_id {
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            f.err(
                "gateway_id",
                "must be 1-64 characters of A-Z, a-z, 0-9, '-' and '_'",
            );
        }
    }
    if let Some(url) = &s.redis_url {
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            // `invalid` masks a password in the URL.
            f.invalid(
                "redis_url",
                &format!("{url:?}"),
                "must start with redis://, rediss:// or unix://",
            );
        }
    }
    f.finish();
    s
}

/// `tls_cert_file` + `tls_key_file` (both or neither), read now.
fn listener_tls(f: &mut Fields<'_>) -> Option<ListenerTls> {
    let cert = f.string("tls_cert_file").map(PathBuf::from);
    let key = f.string("tls_key_file").map(PathBuf::from);
    match (cert, key) {
        (None, None) => None,
        (Some(_), None) => {
            f.err(
                "tls_key_file",
                "required with tls_cert_file (the certificate's private key, PEM)",
            );
            None
        }
        (None, Some(_)) => {
            f.err(
                "tls_cert_file",
                "required with tls_key_file (the certificate chain, PEM, leaf first)",
            );
            None
        }
        (Some(cert_file), Some(key_file)) => {
            match tls::server_config(&cert_file, &key_file, tls::ALPN_H2_HTTP1) {
                Ok(c) => Some(ListenerTls {
                    cert_file,
                    key_file,
                    config: Arc::new(c),
                }),
                Err(ServerError::Cert(e)) => {
                    f.err("tls_cert_file", e);
                    None
                }
                Err(ServerError::Key(e)) => {
                    f.err("tls_key_file", e);
                    None
                }
            }
        }
    }
}

fn backend_mode(doc: &Document, errors: &mut Vec<String>) -> BackendMode {
    // `[backend]` is shared with the backend: the gateway reads only its four keys here and
    // leaves the rest (and unknown-key checks) to the backend's own parser.
    let table = doc
        .get("backend")
        .and_then(|v| v.as_table())
        .cloned()
        .unwrap_or_default();
    let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
    // An error names the variable when one set the value.
    let name = |k: &str| {
        doc.env_var("backend", k)
            .map(str::to_string)
            .unwrap_or_else(|| format!("backend.{k}"))
    };
    match get("mode").as_deref() {
        None | Some("embedded") => BackendMode::Embedded,
        Some("remote") => {
            let url = match get("url") {
                None => {
                    errors.push("backend.url: required when backend.mode = \"remote\"".to_string());
                    None
                }
                Some(u) => match parse_base(&u) {
                    Ok(uri) => Some(uri),
                    Err(e) => {
                        errors.push(format!("{}: {e}", name("url")));
                        None
                    }
                },
            };
            let ca_file = get("ca_file").map(PathBuf::from);
            let https = url
                .as_ref()
                .is_some_and(|u| u.scheme_str() == Some("https"));
            let tls = match (&url, https, &ca_file) {
                (Some(_), false, Some(_)) => {
                    errors.push(
                        "backend.ca_file: only used with an https:// backend.url".to_string(),
                    );
                    None
                }
                (_, true, _) => {
                    let trust = match &ca_file {
                        Some(p) => tls::Trust::CaFile(p),
                        None => tls::Trust::System,
                    };
                    match tls::client_config(trust, None, tls::ALPN_HTTP1) {
                        Ok(c) => Some(Arc::new(c)),
                        Err(e) => {
                            let (key, msg) = match e {
                                ClientError::Trust(m) if ca_file.is_some() => ("ca_file", m),
                                ClientError::Trust(m)
                                | ClientError::Cert(m)
                                | ClientError::Key(m) => ("url", m),
                            };
                            errors.push(format!("{}: {msg}", name(key)));
                            None
                        }
                    }
                }
                _ => None,
            };
            let token = get("feed_token").filter(|t| !t.is_empty());
            if token.is_none() {
                errors.push("backend.feed_token: required when backend.mode = \"remote\" (or set TOLLGATE_BACKEND_FEED_TOKEN)".to_string());
            }
            match (url, token) {
                (Some(url), Some(t)) => BackendMode::Remote {
                    url,
                    feed_token: Secret::new(t),
                    tls,
                },
                _ => BackendMode::Embedded,
            }
        }
        Some(other) => {
            // Worded as the backend's own check words it, so embedded mode reports it once.
            errors.push(match doc.env_var("backend", "mode") {
                Some(var) => format!("{var}={other:?} must be \"embedded\" or \"remote\""),
                None => format!("backend.mode: {other:?} must be \"embedded\" or \"remote\""),
            });
            BackendMode::Embedded
        }
    }
}

/// `http://host:port` or `https://host:port` (no path).
fn parse_base(text: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = text
        .trim_end_matches('/')
        .parse()
        .map_err(|_| format!("{text:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("{text:?} must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("{text:?} has no host"));
    }
    if uri
        .path_and_query()
        .is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty())
    {
        return Err(format!("{text:?} must not have a path"));
    }
    Ok(uri)
}

fn plans(doc: &Document, errors: &mut Vec<String>) -> Catalogue {
    tollgate_protocol::config::catalogue(doc, errors).unwrap_or_else(Catalogue::defaults)
}

fn routes(
    doc: &Document,
    gw: &GatewaySettings,
    catalogue: &Catalogue,
    errors: &mut Vec<String>,
) -> Vec<RouteConfig> {
    let items = match doc.get("routes") {
        None => return Vec::new(),
        Some(v) => match v.as_array() {
            Some(a) => a.clone(),
            None => {
                errors.push("routes: must be an array of tables ([[routes]])".to_string());
                return Vec::new();
            }
        },
    };
    let mut out: Vec<RouteConfig> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("routes[{i}]");
        let mut f = Fields::new(&at, Some(item), errors);
        let prefix = f.string("prefix");
        let host = f.string("host").map(|h| h.to_ascii_lowercase());
        let name = f.string("name");
        let mut upstream_texts = f.strings("upstreams").unwrap_or_default();
        if let Some(u) = f.string("upstream") {
            upstream_texts.push(u);
        }
        let mut upstreams = Vec::new();
        for u in &upstream_texts {
            if u == "builtin:echo" {
                upstreams.push(Upstream::Echo);
            } else {
                match parse_base(u) {
                    Ok(uri) => {
                        if let Some(authority) = uri.authority().cloned() {
                            if uri.scheme_str() == Some("https") {
                                upstreams.push(Upstream::Https { authority });
                            } else {
                                upstreams.push(Upstream::Http { authority });
                            }
                        }
                    }
                    Err(e) => f.err("upstreams", e),
                }
            }
        }
        let tls = upstream_tls(&mut f, &upstreams);
        if upstream_texts.is_empty() {
            f.err("upstreams", "a route needs at least one upstream (upstreams = [\"http://host:port\"] or upstream = \"builtin:echo\")");
        }
        let auth = match f.string("auth").as_deref() {
            None | Some("key") => Auth::Key,
            Some("none") => Auth::None,
            Some(other) => {
                f.err("auth", format!("{other:?} must be \"key\" or \"none\""));
                Auth::Key
            }
        };
        let plans = f.strings("plans");
        if let Some(ps) = &plans {
            for p in ps {
                if catalogue.get(p).is_none() {
                    f.err(
                        "plans",
                        format!("unknown plan {p:?} (known: {})", catalogue.ids().join(", ")),
                    );
                }
            }
            if ps.is_empty() {
                f.err(
                    "plans",
                    "an empty list would refuse every key; leave it out to allow all plans",
                );
            }
        }
        let cost = f.u64("cost", 1, 1_000_000).unwrap_or(1);
        let key_source = match f.string("key_header").as_deref() {
            None | Some("any") => KeySource::Either,
            Some("x-api-key") => KeySource::ApiKeyHeader,
            Some("authorization") => KeySource::Bearer,
            Some(other) => {
                f.err(
                    "key_header",
                    format!("{other:?} must be \"x-api-key\", \"authorization\" or \"any\""),
                );
                KeySource::Either
            }
        };
        let timeout = f.millis(
            "timeout_ms",
            u64::try_from(gw.upstream_timeout.as_millis()).unwrap_or(30_000),
            1,
            3_600_000,
        );
        let max_body_bytes = f
            .u64("max_body_bytes", 0, u64::MAX >> 1)
            .unwrap_or(gw.max_body_bytes);
        let strip_prefix = f.bool("strip_prefix").unwrap_or(false);
        let preserve_host = f.bool("preserve_host").unwrap_or(false);
        let prefix = match (prefix, &host) {
            (Some(p), _) => {
                if !p.starts_with('/') {
                    f.err("prefix", format!("{p:?} must start with '/'"));
                }
                // A route inside a management path would never be reached (those match first);
                // a route around one (`/api`) is fine: it gets everything else under it.
                let shadowed = MANAGEMENT_PREFIXES
                    .iter()
                    .chain(OWN_PATHS)
                    .find(|m| p.starts_with(*m));
                if let Some(m) = shadowed {
                    f.err(
                        "prefix",
                        format!("{p:?} overlaps {m}, which the gateway answers itself"),
                    );
                }
                p
            }
            (None, Some(_)) => "/".to_string(),
            (None, None) => {
                f.err("prefix", "a route needs a prefix (or a host)");
                "/".to_string()
            }
        };
        let name = name.unwrap_or_else(|| match &host {
            Some(h) => format!("{h}{prefix}"),
            None => prefix.clone(),
        });
        if out.iter().any(|r| r.name == name) {
            f.err("name", format!("route name {name:?} is used twice"));
        }
        if out.iter().any(|r| r.prefix == prefix && r.host == host) {
            f.err(
                "prefix",
                format!("another route already has prefix {prefix:?} for the same host"),
            );
        }
        f.finish();
        out.push(RouteConfig {
            name,
            prefix,
            host,
            upstreams,
            auth,
            plans,
            cost,
            key_source,
            timeout,
            max_body_bytes,
            strip_prefix,
            preserve_host,
            tls,
        });
    }
    out
}

/// A route's `tls_ca_file`, `tls_client_cert_file` and `tls_client_key_file`, read now into
/// the client configuration of its https upstreams.
fn upstream_tls(f: &mut Fields<'_>, upstreams: &[Upstream]) -> Option<Arc<ClientConfig>> {
    let ca = f.string("tls_ca_file").map(PathBuf::from);
    let cert = f.string("tls_client_cert_file").map(PathBuf::from);
    let key = f.string("tls_client_key_file").map(PathBuf::from);
    let https = upstreams
        .iter()
        .any(|u| matches!(u, Upstream::Https { .. }));
    if !https {
        for (name, set) in [
            ("tls_ca_file", ca.is_some()),
            ("tls_client_cert_file", cert.is_some()),
            ("tls_client_key_file", key.is_some()),
        ] {
            if set {
                f.err(name, "set, but the route has no https:// upstream");
            }
        }
        return None;
    }
    let identity = match (&cert, &key) {
        (None, None) => None,
        (Some(cert_file), Some(key_file)) => Some(tls::Identity {
            cert_file,
            key_file,
        }),
        (Some(_), None) => {
            f.err(
                "tls_client_key_file",
                "required with tls_client_cert_file (the client certificate's private key, PEM)",
            );
            return None;
        }
        (None, Some(_)) => {
            f.err(
                "tls_client_cert_file",
                "required with tls_client_key_file (the client certificate, PEM)",
            );
            return None;
        }
    };
    let trust = match &ca {
        Some(p) => tls::Trust::CaFile(p),
        None => tls::Trust::System,
    };
    match tls::client_config(trust, identity, tls::ALPN_HTTP1) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            let (key, msg) = match e {
                ClientError::Trust(m) if ca.is_some() => ("tls_ca_file", m),
                ClientError::Trust(m) => ("upstreams", m),
                ClientError::Cert(m) => ("tls_client_cert_file", m),
                ClientError::Key(m) => ("tls_client_key_file", m),
            };
            f.err(key, msg);
            None
        }
    }
}

/// The sections `TOLLGATE_<SECTION>_<KEY>` variables override for the gateway.
pub const ENV_SECTIONS: &[&str] = &["gateway", "backend"];

/// Parses configuration text, with the process environment's overrides applied.
pub fn parse(text: &str) -> Result<Config, Vec<String>> {
    let mut document = Document::parse(text, "config").map_err(|e| vec![e])?;
    document.override_from_env(ENV_SECTIONS);
    from_config(document)
}

/// A parsed table without overrides (tests, tools).
pub fn from_document(document: toml::Table) -> Result<Config, Vec<String>> {
    from_config(Document::from_table(document))
}

/// Checks everything (in embedded mode the backend's settings too) before anything is created
/// or bound: one line per problem, each naming the setting or the variable.
pub fn from_config(document: Document) -> Result<Config, Vec<String>> {
    let mut errors = document.problems().to_vec();
    document.check_sections(&["gateway", "backend", "plans", "routes"], &mut errors);
    let gateway = gateway_settings(&document, &mut errors);
    let backend = backend_mode(&document, &mut errors);
    let catalogue = plans(&document, &mut errors);
    let routes = routes(&document, &gateway, &catalogue, &mut errors);
    #[cfg(feature = "embedded")]
    if matches!(backend, BackendMode::Embedded) {
        if let Err(es) = backend_config(&document, &gateway.data_dir) {
            errors.extend(es);
        }
    }
    tollgate_protocol::config::dedup(&mut errors);
    if errors.is_empty() {
        Ok(Config {
            gateway,
            backend,
            catalogue,
            routes,
            document,
        })
    } else {
        Err(errors)
    }
}

/// Embedded mode: the backend's configuration from the gateway's document. `[backend]
/// data_dir` defaults to the gateway's. [`from_config`] calls this too, so a bad `[backend]`
/// setting stops start-up before anything is created.
#[cfg(feature = "embedded")]
pub fn backend_config(
    doc: &Document,
    data_dir: &Path,
) -> Result<tollgate_backend::BackendConfig, Vec<String>> {
    let mut doc = doc.clone();
    doc.set_default(
        "backend",
        "data_dir",
        toml::Value::String(data_dir.display().to_string()),
    );
    tollgate_backend::Backend::load_config(&doc)
}

/// Reads and parses the file at `path` (SIGHUP reload).
pub fn load(path: &Path) -> Result<Config, Vec<String>> {
    load_from(Some(path))
}

/// Reads the file at `path` (none: defaults), applies the environment, checks everything.
pub fn load_from(path: Option<&Path>) -> Result<Config, Vec<String>> {
    from_config(Document::load(path, ENV_SECTIONS)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Variables are named in their errors, a number in a text setting stays text, and in
    /// embedded mode `[backend]` is checked with the rest (before anything starts).
    #[cfg(feature = "embedded")]
    #[test]
    fn env_errors_name_the_variable_and_backend_settings_are_checked_up_front() {
        let mut doc = Document::parse("[backend]\nmax_body_bytes = \"big\"\n", "t.toml")
            .unwrap_or_else(|e| panic!("{e}"));
        doc.override_from(
            ENV_SECTIONS,
            [
                ("TOLLGATE_GATEWAY_LISTEN", "notaport"),
                ("TOLLGATE_GATEWAY_GATEWAY_ID", "1"),
                ("TOLLGATE_GATEWAY_WORKERS", "2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let errs = from_config(doc).err().unwrap_or_default();
        assert_eq!(
            errs,
            [
                "TOLLGATE_GATEWAY_LISTEN=\"notaport\" is not a socket address like 127.0.0.1:8080 (IP:port)",
                "backend.max_body_bytes: expected a whole number, got a string \"big\"",
            ]
        );
        let mut doc = Document::default();
        doc.override_from(
            ENV_SECTIONS,
            [
                ("TOLLGATE_GATEWAY_GATEWAY_ID", "1"),
                ("TOLLGATE_GATEWAY_WORKERS", "2"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let c = from_config(doc).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.gateway.gateway_id.as_deref(), Some("1"));
        assert_eq!(c.gateway.workers, 2);
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text).err().unwrap_or_default()
    }

    #[test]
    fn minimal_config_has_defaults() {
        let c = parse("[[routes]]\nprefix = \"/demo\"\nupstream = \"builtin:echo\"\n");
        let c = c.unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(c.gateway.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.gateway.metrics_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.gateway.usage_flush, Duration::from_secs(1));
        assert!(matches!(c.backend, BackendMode::Embedded));
        assert_eq!(c.routes[0].upstreams, vec![Upstream::Echo]);
        assert_eq!(c.routes[0].name, "/demo");
        assert_eq!(c.routes[0].cost, 1);
        assert_eq!(c.catalogue.all().len(), 3);
    }

    #[test]
    fn every_bad_setting_is_named() {
        let errs = errors(
            r#"
[gateway]
listen = "nowhere"
colour = "blue"
usage_flush_ms = 5000

[backend]
mode = "remote"

[[routes]]
prefix = "/a"
plans = ["gold"]
cost = 0
upstreams = ["https://x:1/api", "ftp://y"]

[[routes]]
prefix = "/b"
tls = true

[[routes]]
prefix = "/billing/x"
upstream = "builtin:echo"
"#,
        );
        for want in [
            "gateway.listen:",
            "gateway.colour: unknown setting",
            "gateway.usage_flush_ms:",
            "backend.url: required",
            "backend.feed_token: required",
            "routes[0].plans: unknown plan \"gold\"",
            "routes[0].cost:",
            "routes[0].upstreams: \"https://x:1/api\" must not have a path",
            "routes[0].upstreams: \"ftp://y\"",
            "routes[1].upstreams: a route needs at least one upstream",
            "routes[1].tls: unknown setting",
            "routes[2].prefix: \"/billing/x\" overlaps /billing",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn plans_come_from_the_catalogue() {
        let text = r#"
[[plans]]
id = "free"
name = "Free"
price_monthly_minor = 0
price_yearly_minor = 0
rate_limit_per_minute = 5
daily_limit = 20
max_keys_per_user = 1

[[plans]]
id = "gold"
name = "Gold"
price_monthly_minor = 100
price_yearly_minor = 1000
rate_limit_per_minute = 50
daily_limit = 200
max_keys_per_user = 3

[[routes]]
prefix = "/gold"
plans = ["gold"]
upstreams = ["http://127.0.0.1:9"]
"#;
        let c = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            c.routes[0].plans.as_deref(),
            Some(&["gold".to_string()][..])
        );
        let errs = errors(&text.replace("plans = [\"gold\"]", "plans = [\"pro\"]"));
        assert!(
            errs.iter()
                .any(|e| e.contains("routes[0].plans: unknown plan \"pro\"")),
            "{errs:?}"
        );
    }

    #[test]
    fn example_files_are_valid() {
        for (name, text) in [
            ("gateway.toml", include_str!("../../config/gateway.toml")),
            (
                "quickstart.toml",
                include_str!("../../config/quickstart.toml"),
            ),
        ] {
            let mut doc: toml::Table = text
                .parse()
                .unwrap_or_else(|e| panic!("config/{name}: {e}"));
            // The example keeps the feed token out of the file (it comes from the environment).
            if let Some(toml::Value::Table(b)) = doc.get_mut("backend") {
                if b.get("mode").and_then(|m| m.as_str()) == Some("remote") {
                    b.insert("feed_token".into(), toml::Value::String("from-env".into()));
                }
            }
            if let Err(e) = from_document(doc) {
                panic!("config/{name}: {e:?}");
            }
        }
    }

    #[test]
    fn remote_mode_needs_url_and_token() {
        let c = parse(
            "[backend]\nmode = \"remote\"\nurl = \"http://127.0.0.1:8081\"\nfeed_token = \"t\"\n",
        );
        assert!(matches!(
            c.map(|c| c.backend),
            Ok(BackendMode::Remote { .. })
        ));
    }

    #[test]
    fn tls_settings_name_the_setting_and_the_file() {
        let errs = errors(
            r#"
[gateway]
tls_cert_file = "/nonexistent/tollgate/cert.pem"

[backend]
mode = "remote"
url = "http://127.0.0.1:8081"
feed_token = "t"
ca_file = "/nonexistent/tollgate/backend-ca.pem"

[[routes]]
prefix = "/a"
upstreams = ["https://127.0.0.1:8443"]
tls_ca_file = "/nonexistent/tollgate/ca.pem"

[[routes]]
prefix = "/b"
upstreams = ["https://api.example.com"]
tls_client_cert_file = "/nonexistent/tollgate/client.pem"

[[routes]]
prefix = "/c"
upstreams = ["http://127.0.0.1:8080"]
tls_ca_file = "/nonexistent/tollgate/ca.pem"
"#,
        );
        for want in [
            "gateway.tls_key_file: required with tls_cert_file",
            "backend.ca_file: only used with an https:// backend.url",
            "routes[0].tls_ca_file: cannot read /nonexistent/tollgate/ca.pem:",
            "routes[1].tls_client_key_file: required with tls_client_cert_file",
            "routes[2].tls_ca_file: set, but the route has no https:// upstream",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
        let errs = errors(
            "[gateway]\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"\n\n[backend]\nmode = \"remote\"\nurl = \"https://backend.internal:8443\"\nfeed_token = \"t\"\nca_file = \"/nonexistent/b.pem\"\n",
        );
        for want in [
            "gateway.tls_cert_file: cannot read /nonexistent/c.pem:",
            "backend.ca_file: cannot read /nonexistent/b.pem:",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
    }
}
