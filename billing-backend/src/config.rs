//! Backend configuration: `[backend]` and `[[plans]]` of the TOML document (after
//! `TOLLGATE_BACKEND_*` overrides). Every bad setting yields one line naming it; start-up stops
//! on any. The payment providers' variables are read by `providers` and checked with
//! these by [`Backend::load_config`](crate::Backend::load_config), which start-up calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tollgate_protocol::config::Document;
use tollgate_protocol::plans::Catalogue;

pub use tollgate_protocol::config::Secret;

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub key_prefix: String,
    pub max_body_bytes: usize,
    pub sepa_discount_bps: u32,
    pub grace_days: u32,
    pub public_url: Option<String>,
    pub json_logs: bool,
    /// `TOLLGATE_SERVICE_TOKEN`; generated into `data_dir/service_token` when absent.
    pub service_token: Option<Secret>,
    /// Token gateways send to the feed and usage endpoints; the service token is accepted too.
    pub feed_token: Option<Secret>,
    pub catalogue: Catalogue,
    /// `tls_cert_file` + `tls_key_file`: the standalone backend's listener speaks TLS.
    pub tls: Option<crate::tls::ListenerFiles>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The section `TOLLGATE_BACKEND_<KEY>` variables override.
pub const ENV_SECTIONS: &[&str] = &["backend"];

/// How long start-up waits for PostgreSQL to accept a connection before it gives up.
pub const DATABASE_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl BackendConfig {
    /// Reads `[backend]` and `[[plans]]` from a parsed table (no environment overrides).
    pub fn from_document(doc: &toml::Table) -> Result<BackendConfig, Vec<String>> {
        BackendConfig::from_config(&Document::from_table(doc.clone()))
    }

    /// Reads `[backend]` and `[[plans]]`: one line per bad setting, naming it or the variable
    /// that set it.
    pub fn from_config(doc: &Document) -> Result<BackendConfig, Vec<String>> {
        let mut errors = doc.problems().to_vec();
        let mut f = doc.fields("backend", &mut errors);
        // Gateway-side settings of the shared `[backend]` table, accepted here.
        if let Some(mode) = f.string("mode") {
            if mode != "embedded" && mode != "remote" {
                f.invalid(
                    "mode",
                    &format!("{mode:?}"),
                    "must be \"embedded\" or \"remote\"",
                );
            }
        }
        let _ = f.string("url");
        let _ = f.string("ca_file");
        let feed_token = f
            .string("feed_token")
            .filter(|t| !t.is_empty())
            .map(Secret::new);
        let listen = f.addr("listen", DEFAULT_LISTEN);
        let data_dir = PathBuf::from(f.string("data_dir").unwrap_or_else(|| "./data".to_string()));
        let database_url = f
            .string("database_url")
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("tollgate.db").display()));
        if !database_url.starts_with("sqlite:")
            && !database_url.starts_with("postgres://")
            && !database_url.starts_with("postgresql://")
        {
            f.invalid(
                "database_url",
                &format!("{database_url:?}"),
                "must start with sqlite: or postgres://",
            );
        }
        let key_prefix = f.string("key_prefix").unwrap_or_else(|| "cli".to_string());
        if key_prefix.is_empty()
            || key_prefix.len() > 16
            || !key_prefix
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            f.invalid(
                "key_prefix",
                &format!("{key_prefix:?}"),
                "must be 1-16 characters of a-z and 0-9",
            );
        }
        let max_body_bytes = f
            .u64("max_body_bytes", 1024, 16 * 1024 * 1024)
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(DEFAULT_MAX_BODY);
        let sepa_discount_bps = f
            .u64("sepa_discount_bps", 0, 9_999)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(150);
        let grace_days = f
            .u64("grace_days", 0, 365)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(3);
        let public_url = f.string("public_url");
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                f.invalid(
                    "public_url",
                    &format!("{u:?}"),
                    "must start with http:// or https://",
                );
            }
        }
        let json_logs = f.bool("json_logs").unwrap_or(false);
        let tls = crate::tls::check(f.string("tls_cert_file"), f.string("tls_key_file"))
            .unwrap_or_else(|(key, why)| {
                f.err(key, why);
                None
            });
        f.finish();
        let env_secret = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret::new)
        };
        let service_token = env_secret("TOLLGATE_SERVICE_TOKEN");
        if let Some(t) = &service_token {
            if t.expose().len() < 16 {
                errors.push("TOLLGATE_SERVICE_TOKEN: must be at least 16 characters".to_string());
            }
        }
        let catalogue = tollgate_protocol::config::catalogue(doc, &mut errors);
        tollgate_protocol::config::dedup(&mut errors);
        match catalogue {
            Some(catalogue) if errors.is_empty() => Ok(BackendConfig {
                listen,
                data_dir,
                database_url,
                key_prefix,
                max_body_bytes,
                sepa_discount_bps,
                grace_days,
                public_url,
                json_logs,
                service_token,
                feed_token,
                catalogue,
                tls,
            }),
            _ => Err(errors),
        }
    }

    /// What must hold before the backend opens anything: `data_dir` can be created and written
    /// (the SQLite database and the service token live there), and PostgreSQL, when configured,
    /// accepts a connection within [`DATABASE_CONNECT_TIMEOUT`]. Each failure is one line
    /// naming the setting and the path or `host:port` (never the URL: it may hold a password).
    /// The database comes first, so a backend that cannot reach it leaves no directory behind.
    pub async fn preflight(&self) -> Result<(), String> {
        if self.database_url.starts_with("postgres") {
            reach_postgres(&self.database_url, DATABASE_CONNECT_TIMEOUT).await?;
        }
        tollgate_protocol::config::prepare_data_dir("backend.data_dir", &self.data_dir)
    }

    /// A configuration for tests: SQLite in `dir`, fixed tokens.
    pub fn for_tests(dir: &std::path::Path) -> BackendConfig {
        BackendConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: dir.to_path_buf(),
            database_url: format!("sqlite://{}", dir.join("tollgate.db").display()),
            key_prefix: "cli".to_string(),
            max_body_bytes: DEFAULT_MAX_BODY,
            sepa_discount_bps: 150,
            grace_days: 3,
            public_url: None,
            json_logs: false,
            service_token: Some(Secret::new("test-service-token-0123456789".to_string())),
            feed_token: Some(Secret::new("test-feed-token-0123456789".to_string())),
            catalogue: Catalogue::defaults(),
            tls: None,
        }
    }
}

/// `host:port` of a PostgreSQL URL (port 5432 when left out); `None` for a Unix socket.
pub fn postgres_host_port(database_url: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(database_url).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?.to_string();
    Some((host, url.port().unwrap_or(5432)))
}

/// Opens (and closes) a TCP connection to the database server, so an unreachable server is
/// reported at once with its address and the cause, not after the pool's acquire timeout.
async fn reach_postgres(database_url: &str, timeout: Duration) -> Result<(), String> {
    let Some((host, port)) = postgres_host_port(database_url) else {
        return Ok(());
    };
    let host_port = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let what = format!("backend.database_url: cannot connect to PostgreSQL at {host_port}");
    match tokio::time::timeout(
        timeout,
        tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {} s", timeout.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> toml::Table {
        text.parse().unwrap_or_default()
    }

    #[test]
    fn defaults() {
        let c = BackendConfig::from_document(&doc("")).map_err(|e| e.join("\n"));
        let c = c.as_ref().map(|c| {
            (
                c.listen.to_string(),
                c.catalogue.all().len(),
                c.key_prefix.clone(),
            )
        });
        assert_eq!(c, Ok((DEFAULT_LISTEN.to_string(), 3, "cli".to_string())));
    }

    #[test]
    fn each_bad_setting_is_named() {
        let errs = BackendConfig::from_document(&doc(
            "[backend]\nlisten = \"nowhere\"\nkey_prefix = \"CLI!\"\nsepa_discount_bps = 20000\nmode = \"x\"\n",
        ))
        .err()
        .unwrap_or_default();
        for needle in [
            "backend.listen",
            "backend.key_prefix",
            "backend.sepa_discount_bps",
            "backend.mode",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(needle)),
                "{needle} missing in {errs:?}"
            );
        }
        let errs = BackendConfig::from_document(&doc("[backend]\nlisen = 1\n"))
            .err()
            .unwrap_or_default();
        assert!(errs.iter().any(|e| e.contains("lisen")), "{errs:?}");
        let errs = BackendConfig::from_document(&doc("[[plans]]\nid = \"x\"\n"))
            .err()
            .unwrap_or_default();
        assert!(errs.iter().any(|e| e.starts_with("plans[0]")), "{errs:?}");
    }
}

#[cfg(test)]
mod preflight_tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_postgres_is_named_by_host_and_port_at_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let dir = std::env::temp_dir().join(format!("tollgate-preflight-{}", std::process::id()));
        let mut cfg = BackendConfig::for_tests(&dir);
        cfg.database_url = format!("postgres://app:hunter2@127.0.0.1:{port}/db");
        let started = std::time::Instant::now();
        let e = cfg.preflight().await.err().unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(4), "{e}");
        assert!(
            e.starts_with(&format!(
                "backend.database_url: cannot connect to PostgreSQL at 127.0.0.1:{port}: "
            )),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        assert!(
            !dir.exists(),
            "the data directory is created only after the database answers"
        );
        assert_eq!(
            postgres_host_port("postgres://u@db.internal/x"),
            Some(("db.internal".to_string(), 5432))
        );
    }
}

#[cfg(test)]
mod example_tests {
    #[test]
    fn the_commented_example_is_valid_and_matches_the_defaults() {
        let text = include_str!("../../config/backend.toml");
        let doc: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("config/backend.toml: {e}"));
        let cfg = super::BackendConfig::from_document(&doc)
            .unwrap_or_else(|e| panic!("config/backend.toml: {e:?}"));
        let defaults = tollgate_protocol::plans::default_plans();
        assert_eq!(cfg.catalogue.all(), defaults.as_slice());
    }
}
