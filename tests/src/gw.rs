//! Helpers for the gateway's end-to-end tests: write a config, start `tollgate-gateway`
//! (embedded backend by default, or remote against a `tollgate-backend serve`), and talk to the
//! management API with the service token.

use crate::{client, Proc, TempDir};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The service token every test backend runs with.
pub const TOKEN: &str = "tollgate-test-service-token-0123456789abcdef";
/// The feed token remote-mode gateways use.
pub const FEED_TOKEN: &str = "tollgate-test-feed-token-0123456789abcdef";

/// A `[[routes]]` block.
pub fn route(prefix: &str, upstream: &str, extra: &str) -> String {
    format!("[[routes]]\nprefix = \"{prefix}\"\nupstreams = [\"{upstream}\"]\n{extra}\n")
}

pub struct Gateway {
    pub dir: TempDir,
    pub proc: Proc,
    pub url: String,
    pub metrics_url: String,
    pub config: PathBuf,
}

impl Gateway {
    /// Gateway with the embedded backend, data in a fresh directory.
    pub fn embedded(routes: &str) -> Gateway {
        Gateway::embedded_with(routes, "")
    }

    /// `gateway_extra` goes into `[gateway]`.
    pub fn embedded_with(routes: &str, gateway_extra: &str) -> Gateway {
        let dir = TempDir::new("gw");
        let text = config_text(
            &dir,
            "[backend]\nmode = \"embedded\"\n",
            routes,
            gateway_extra,
        );
        Gateway::start_in(dir, &text)
    }

    /// Gateway in remote mode against `backend_url`.
    pub fn remote(backend_url: &str, routes: &str, gateway_extra: &str) -> Gateway {
        let dir = TempDir::new("gw-remote");
        let backend = format!("[backend]\nmode = \"remote\"\nurl = \"{backend_url}\"\nfeed_token = \"{FEED_TOKEN}\"\n");
        let text = config_text(&dir, &backend, routes, gateway_extra);
        Gateway::start_in(dir, &text)
    }

    pub fn start_in(dir: TempDir, text: &str) -> Gateway {
        let config = dir.write("gateway.toml", text);
        let proc = start_gateway(&config);
        let url = proc.url("gateway");
        let metrics_url = proc.url("metrics");
        Gateway {
            dir,
            proc,
            url,
            metrics_url,
            config,
        }
    }

    /// Starts the same configuration again (after a stop), keeping the data directory.
    pub fn restart(&mut self) {
        self.proc = start_gateway(&self.config);
        self.url = self.proc.url("gateway");
        self.metrics_url = self.proc.url("metrics");
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.url.clone(),
            client: client(),
        }
    }

    pub async fn scrape(&self) -> String {
        client()
            .get(format!("{}/metrics", self.metrics_url))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("text")
    }
}

pub fn start_gateway(config: &std::path::Path) -> Proc {
    let path = config.display().to_string();
    Proc::start(
        "tollgate-gateway",
        &["--config", &path],
        &[("TOLLGATE_SERVICE_TOKEN", TOKEN)],
    )
}

/// A config file text: listeners on port 0, data under `dir`.
pub fn config_text(dir: &TempDir, backend: &str, routes: &str, gateway_extra: &str) -> String {
    let data = dir.path().join("data");
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nfeed_wait_secs = 5\n{gateway_extra}\n\n{backend}\n{routes}\n",
        data.display()
    )
}

/// A separate `tollgate-backend serve` (for remote mode), SQLite in its own directory.
pub struct Backend {
    pub dir: TempDir,
    pub proc: Proc,
    pub url: String,
    pub config: PathBuf,
}

impl Backend {
    pub fn start() -> Backend {
        let dir = TempDir::new("backend");
        let text = format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nfeed_token = \"{FEED_TOKEN}\"\n",
            dir.path().join("data").display()
        );
        let config = dir.write("backend.toml", &text);
        let proc = start_backend(&config);
        let url = proc.url("backend");
        Backend {
            dir,
            proc,
            url,
            config,
        }
    }

    /// Starts it again on the same port and database (after a kill).
    pub fn restart(&mut self) {
        let addr = self.url.trim_start_matches("http://").to_string();
        let text = std::fs::read_to_string(&self.config).expect("config");
        let text = text.replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""));
        std::fs::write(&self.config, text).expect("write config");
        self.proc = start_backend(&self.config);
        self.url = self.proc.url("backend");
    }

    pub fn api(&self) -> Api {
        Api {
            base: self.url.clone(),
            client: client(),
        }
    }
}

fn start_backend(config: &std::path::Path) -> Proc {
    let path = config.display().to_string();
    Proc::start(
        "tollgate-backend",
        &["--config", &path, "serve"],
        &[("TOLLGATE_SERVICE_TOKEN", TOKEN)],
    )
}

/// A freshly minted key.
#[derive(Clone, Debug)]
pub struct Key {
    pub api_key: String,
    pub key_id: String,
}

/// The management API (through a gateway or directly at a backend).
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("management call");
        let status = resp.status().as_u16();
        let v = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, v)
    }

    pub async fn mint_with(&self, body: Value) -> Key {
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/api/marketplace/keys/generate",
                Some(body),
            )
            .await;
        assert_eq!(status, 200, "generate: {v}");
        Key {
            api_key: v["api_key"].as_str().expect("api_key").to_string(),
            key_id: v["key_id"].as_str().expect("key_id").to_string(),
        }
    }

    pub async fn mint(&self, user: &str, plan: &str) -> Key {
        self.mint_with(json!({"user_id": user, "plan": plan, "name": "test"}))
            .await
    }

    pub async fn revoke(&self, key_id: &str) {
        let (status, v) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/api/marketplace/keys/{key_id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "revoke: {v}");
    }

    pub async fn grant(&self, user: &str, plan: &str) {
        let body = json!({"user_id": user, "plan": plan, "cycle": "monthly"});
        let (status, v) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/billing/subscriptions/manual",
                Some(body),
            )
            .await;
        assert!(status == 200 || status == 201, "grant: {status} {v}");
    }

    /// `usage.today` of a key as the backend has recorded it.
    pub async fn usage_today(&self, key_id: &str) -> u64 {
        let (status, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/marketplace/keys/{key_id}/usage"),
                None,
            )
            .await;
        assert_eq!(status, 200, "usage: {v}");
        v["usage"]["today"].as_u64().expect("usage.today")
    }
}

/// The value of one Prometheus sample, by name and exact label text (`route="x",status="200"`...).
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let want = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines().find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        (series == want).then(|| value.parse().ok()).flatten()
    })
}

/// Sum of every sample of `name` whose labels contain all of `parts`.
pub fn metric_sum(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}
