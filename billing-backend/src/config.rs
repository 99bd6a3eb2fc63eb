//! Backend configuration: `[backend]` and `[[plans]]` of the TOML document (after
//! `TOLLGATE_BACKEND_*` overrides), plus the provider variables of the original module.
//! Every bad setting yields one line naming it; start-up stops on any.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use tollgate_protocol::plans::{Catalogue, Plan};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    /// Gateway-side: "embedded" (backend in the gateway process) or "remote".
    mode: Option<String>,
    /// Gateway-side: the backend's base URL in remote mode (accepted here, read by the gateway).
    #[allow(dead_code)]
    url: Option<String>,
    feed_token: Option<String>,
    listen: Option<String>,
    data_dir: Option<String>,
    database_url: Option<String>,
    key_prefix: Option<String>,
    max_body_bytes: Option<u64>,
    sepa_discount_bps: Option<u32>,
    grace_days: Option<u32>,
    public_url: Option<String>,
    json_logs: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct RawDoc {
    #[serde(default)]
    backend: Option<toml::Value>,
    #[serde(default)]
    plans: Vec<toml::Value>,
}

/// A secret that never shows in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

impl BackendConfig {
    /// Reads `[backend]` and `[[plans]]` from an already env-overridden document.
    pub fn from_document(doc: &toml::Table) -> Result<BackendConfig, Vec<String>> {
        let mut errors = Vec::new();
        let raw_doc: RawDoc = toml::Value::Table(doc.clone())
            .try_into()
            .map_err(|e: toml::de::Error| vec![format!("config: {}", e.message())])?;
        let raw: RawBackend = match raw_doc.backend {
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| vec![format!("backend: {}", e.message())])?,
            None => RawBackend::default(),
        };
        let mut plans: Vec<Plan> = Vec::new();
        for (i, p) in raw_doc.plans.into_iter().enumerate() {
            match p.try_into::<Plan>() {
                Ok(p) => plans.push(p),
                Err(e) => errors.push(format!("plans[{i}]: {}", e.message())),
            }
        }
        let catalogue = match Catalogue::new(plans) {
            Ok(c) => Some(c),
            Err(errs) => {
                errors.extend(errs);
                None
            }
        };
        if let Some(mode) = &raw.mode {
            if mode != "embedded" && mode != "remote" {
                errors.push(format!(
                    "backend.mode: {mode:?} must be \"embedded\" or \"remote\""
                ));
            }
        }
        let listen_text = raw.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = match listen_text.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                errors.push(format!(
                    "backend.listen: {listen_text:?} is not an address like 127.0.0.1:8081"
                ));
                None
            }
        };
        let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| "./data".to_string()));
        let database_url = raw
            .database_url
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("tollgate.db").display()));
        if !database_url.starts_with("sqlite:")
            && !database_url.starts_with("postgres://")
            && !database_url.starts_with("postgresql://")
        {
            errors.push("backend.database_url: must start with sqlite: or postgres://".to_string());
        }
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "cli".to_string());
        if key_prefix.is_empty()
            || key_prefix.len() > 16
            || !key_prefix
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        {
            errors.push(format!(
                "backend.key_prefix: {key_prefix:?} must be 1-16 chars of a-z and 0-9"
            ));
        }
        let max_body = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY as u64);
        if !(1024..=16 * 1024 * 1024).contains(&max_body) {
            errors.push(format!(
                "backend.max_body_bytes: {max_body} must be between 1024 and 16777216"
            ));
        }
        let sepa_discount_bps = raw.sepa_discount_bps.unwrap_or(150);
        if sepa_discount_bps >= 10_000 {
            errors.push(format!(
                "backend.sepa_discount_bps: {sepa_discount_bps} must be below 10000 (100 %)"
            ));
        }
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
        let feed_token = raw.feed_token.filter(|t| !t.is_empty()).map(Secret::new);
        if errors.is_empty() {
            if let (Some(listen), Some(catalogue)) = (listen, catalogue) {
                return Ok(BackendConfig {
                    listen,
                    data_dir,
                    database_url,
                    key_prefix,
                    max_body_bytes: usize::try_from(max_body).unwrap_or(DEFAULT_MAX_BODY),
                    sepa_discount_bps,
                    grace_days: raw.grace_days.unwrap_or(3),
                    public_url: raw.public_url,
                    json_logs: raw.json_logs.unwrap_or(false),
                    service_token,
                    feed_token,
                    catalogue,
                });
            }
        }
        Err(errors)
    }

    /// Loads a TOML file (or an empty document when `path` is None) with env overrides.
    pub fn load(path: Option<&std::path::Path>) -> Result<BackendConfig, Vec<String>> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| vec![format!("config file {}: {e}", p.display())])?,
            None => String::new(),
        };
        let doc = tollgate_protocol::config::load_document(&text, &["backend"])
            .map_err(|e| vec![format!("config: {e}")])?;
        BackendConfig::from_document(&doc)
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
        }
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
