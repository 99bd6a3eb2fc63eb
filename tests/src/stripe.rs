//! Stripe end-to-end helpers: localstripe as a separate process (PyPI `localstripe`, GPL-3.0,
//! installed into a venv by `scripts/localstripe.sh`, never vendored), a backend configured
//! for Stripe, and signed webhook deliveries made by the test itself.
//!
//! Everything a test calls goes to a base URL (`Api::base`), so a gateway in front of the
//! backend slots in by passing the gateway's URL instead.

use crate::gw::TOKEN;
use crate::{client, Proc, TempDir};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const SECRET_KEY: &str = "sk_test_tollgate_e2e_0123456789";
pub const WEBHOOK_SECRET: &str = "whsec_tollgate_e2e_secret";

/// The venv python that has localstripe: `LOCALSTRIPE_PYTHON`, else the one
/// `scripts/localstripe.sh install` makes under the target directory.
fn localstripe_python() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("LOCALSTRIPE_PYTHON") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/<test> → target/
    let target = exe.parent()?.parent()?.parent()?;
    let p = target.join("localstripe-venv/bin/python");
    p.exists().then_some(p)
}

/// A localstripe server on a free loopback port with empty state, stopped on drop.
pub struct Localstripe {
    child: Child,
    pub url: String,
}

impl Localstripe {
    /// Starts localstripe, or returns None (printing SKIPPED) when it is not installed. Under
    /// `CI=true` a missing localstripe fails the test.
    pub async fn start() -> Option<Localstripe> {
        let Some(python) = localstripe_python() else {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true but localstripe is not installed: run scripts/localstripe.sh install (or set LOCALSTRIPE_PYTHON)");
            }
            eprintln!("SKIPPED: localstripe is not installed (scripts/localstripe.sh install, or set LOCALSTRIPE_PYTHON)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        // Bound to loopback (the `localstripe` command binds all interfaces). Its state lives
        // in memory only: persisting to the shared /tmp/localstripe.pickle is switched off, so
        // every instance starts empty and parallel tests do not share a file.
        let code = format!(
            "import localstripe.resources as r\n\
             r.Store.dump_to_disk = lambda self: None\n\
             from localstripe.server import app\n\
             from aiohttp import web\n\
             web.run_app(app, host='127.0.0.1', port={port}, print=None)\n"
        );
        let child = Command::new(python)
            .args(["-c", &code])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TOLLGATE_TEST_ECHO").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start localstripe");
        let ls = Localstripe {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let c = client();
        crate::eventually(Duration::from_secs(30), "localstripe answers", || {
            let c = c.clone();
            let url = format!("{}/v1/customers", ls.url);
            async move {
                c.get(url)
                    .bearer_auth(SECRET_KEY)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        Some(ls)
    }

    /// `POST /_config/webhooks/<id>`: localstripe signs events with `secret` and posts them.
    pub async fn webhook(&self, url: &str, secret: &str) {
        let r = client()
            .post(format!("{}/_config/webhooks/tollgate", self.url))
            .form(&[("url", url), ("secret", secret)])
            .send()
            .await
            .expect("configure webhook");
        assert!(r.status().is_success(), "webhook config: {}", r.status());
    }

    pub async fn call(&self, method: &str, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let c = client();
        let url = format!("{}{path}", self.url);
        let req = match method {
            "GET" => c.get(url).query(form),
            "DELETE" => c.delete(url),
            _ => c.post(url).form(form),
        };
        let r = req
            .bearer_auth(SECRET_KEY)
            .send()
            .await
            .expect("localstripe call");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// A legacy Plan (localstripe has no Prices API) for `amount` minor units a month.
    pub async fn plan(&self, id: &str, amount: i64) {
        let (s, prod) = self.call("POST", "/v1/products", &[("name", id)]).await;
        assert_eq!(s, 200, "{prod}");
        let amount = amount.to_string();
        let (s, plan) = self
            .call(
                "POST",
                "/v1/plans",
                &[
                    ("id", id),
                    ("product", prod["id"].as_str().unwrap_or_default()),
                    ("amount", &amount),
                    ("currency", "eur"),
                    ("interval", "month"),
                ],
            )
            .await;
        assert_eq!(s, 200, "{plan}");
    }
}

impl Drop for Localstripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The default catalogue as `[[plans]]`, with Stripe price ids for pro.
pub fn plans_toml(pro_monthly: &str, pro_yearly: &str) -> String {
    catalogue_toml(
        2900,
        &format!(
            "provider_prices = {{ stripe_monthly = \"{pro_monthly}\", stripe_yearly = \"{pro_yearly}\" }}"
        ),
    )
}

/// The default catalogue with pro at `pro_monthly_minor` a month and `pro_extra` added to its
/// `[[plans]]` table (e.g. `provider_prices = {...}`, or nothing).
pub fn catalogue_toml(pro_monthly_minor: i64, pro_extra: &str) -> String {
    format!(
        r#"
[[plans]]
id = "free"
name = "Free"
price_monthly_minor = 0
price_yearly_minor = 0
rate_limit_per_minute = 10
daily_limit = 50
max_keys_per_user = 2

[[plans]]
id = "pro"
name = "Pro"
price_monthly_minor = {pro_monthly_minor}
price_yearly_minor = 29000
rate_limit_per_minute = 100
daily_limit = 5000
max_keys_per_user = 10
{pro_extra}

[[plans]]
id = "enterprise"
name = "Enterprise"
price_monthly_minor = 19900
price_yearly_minor = 199000
rate_limit_per_minute = 1000
daily_limit = 50000
max_keys_per_user = 50
"#
    )
}

/// The environment a backend (or a gateway with the embedded backend) needs to talk to Stripe
/// at `stripe_base` with the test secrets.
pub fn stripe_env(stripe_base: &str) -> Vec<(String, String)> {
    [
        ("STRIPE_SECRET_KEY", SECRET_KEY),
        ("STRIPE_API_BASE", stripe_base),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// A `tollgate-backend serve` talking to Stripe at `stripe_base`, with the test clock on.
pub struct StripeBackend {
    pub dir: TempDir,
    pub proc: Proc,
    pub url: String,
}

impl StripeBackend {
    /// `stripe_base = None` starts a backend without any Stripe configuration.
    pub fn start(
        stripe_base: Option<&str>,
        extra_env: &[(&str, &str)],
        plans: &str,
    ) -> StripeBackend {
        let dir = TempDir::new("stripe-backend");
        let config = backend_config(&dir, plans);
        StripeBackend::start_with(dir, &config, stripe_base, extra_env)
    }

    /// Serves `config` (from [`backend_config`]) in `dir`.
    pub fn start_with(
        dir: TempDir,
        config: &Path,
        stripe_base: Option<&str>,
        extra_env: &[(&str, &str)],
    ) -> StripeBackend {
        let stripe = stripe_base.map(stripe_env).unwrap_or_default();
        let mut env: Vec<(&str, &str)> = vec![
            ("TOLLGATE_SERVICE_TOKEN", TOKEN),
            ("TOLLGATE_TEST_CLOCK", "1"),
        ];
        env.extend(stripe.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        env.extend_from_slice(extra_env);
        let path = config.display().to_string();
        let proc = Proc::start("tollgate-backend", &["--config", &path, "serve"], &env);
        let url = proc.url("backend");
        StripeBackend { dir, proc, url }
    }
}

/// A backend configuration file in `dir`: loopback listener, SQLite under `dir/data`, `plans`.
pub fn backend_config(dir: &TempDir, plans: &str) -> PathBuf {
    let text = format!(
        "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{plans}\n",
        dir.path().join("data").display()
    );
    dir.write("backend.toml", &text)
}

/// What a finished command printed.
#[derive(Debug)]
pub struct CliRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CliRun {
    /// stdout as JSON (the backend's commands print one JSON document).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

/// Runs `tollgate-backend --config <config> <args>` to completion with only `env` from the
/// `TOLLGATE_*`/`STRIPE_*` family. It waits on a blocking thread, so in-test fakes on this
/// runtime keep answering the command meanwhile.
pub async fn backend_cli(config: &Path, args: &[&str], env: &[(String, String)]) -> CliRun {
    let mut cmd = Command::new(crate::bin_path("tollgate-backend"));
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if ["TOLLGATE_", "STRIPE_", "PAYPAL_", "SEPA_"]
            .iter()
            .any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.env("TOLLGATE_SERVICE_TOKEN", TOKEN)
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run tollgate-backend");
    CliRun {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// Management and webhook calls against a base URL (a backend, or a gateway in front of one).
#[derive(Clone)]
pub struct Api {
    pub base: String,
}

impl Api {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let c = client();
        let mut req = c
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.base),
            )
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("request");
        let s = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (
            s,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Mints a key; returns (key_id, api_key).
    pub async fn mint(&self, user: &str) -> (String, String) {
        let (s, v) = self
            .call(
                "POST",
                "/api/marketplace/keys/generate",
                Some(json!({"user_id": user, "plan": "free", "name": "e2e"})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        (
            v["key_id"].as_str().unwrap_or_default().to_string(),
            v["api_key"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// The key's per-minute limit as the backend reports it.
    pub async fn per_minute(&self, key_id: &str) -> u64 {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/marketplace/keys/{key_id}/usage"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["rate_limit"]["requests_per_minute"].as_u64().unwrap_or(0)
    }

    /// The key's `limits.per_minute` in the gateways' key feed.
    pub async fn feed_per_minute(&self, key_id: &str) -> Option<u64> {
        let (s, v) = self
            .call("GET", "/internal/feed?since=0&limit=10000", None)
            .await;
        assert_eq!(s, 200, "{v}");
        v["keys"]
            .as_array()?
            .iter()
            .rev()
            .find(|k| k["key_id"] == key_id)
            .and_then(|k| k["limits"]["per_minute"].as_u64())
    }

    pub async fn ledger(&self, user: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/billing/ledger?user_id={user}&limit=1000"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["entries"].as_array().cloned().unwrap_or_default()
    }

    pub async fn subscriptions(&self, user: &str) -> Value {
        let (s, v) = self
            .call(
                "GET",
                &format!("/api/v1/billing/subscriptions?user_id={user}"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Moves the backend's clock; returns its new time (unix seconds).
    pub async fn advance(&self, secs: i64) -> i64 {
        let (s, v) = self
            .call(
                "POST",
                "/internal/test/clock",
                Some(json!({"advance_seconds": secs})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let text = v["now"].as_str().unwrap_or_default();
        parse_rfc3339(text)
    }

    /// Posts `body` to the webhook with the given `Stripe-Signature` header (None: no header).
    pub async fn webhook_raw(&self, body: &[u8], signature: Option<&str>) -> (u16, Value) {
        let c = client();
        let mut req = c
            .post(format!("{}/api/v1/billing/webhook", self.base))
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(s) = signature {
            req = req.header("Stripe-Signature", s);
        }
        let r = req.send().await.expect("webhook");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Delivers `event` signed with the test secret at time `t`.
    pub async fn deliver(&self, event: &Value, t: i64) -> (u16, Value) {
        let body = serde_json::to_vec(event).expect("json");
        let sig = crate::stripe_fake::sign(WEBHOOK_SECRET, t, &body);
        self.webhook_raw(&body, Some(&sig)).await
    }
}

/// RFC 3339 (`2026-01-02T03:04:05Z`) to unix seconds, for the clock endpoint's answer.
pub fn parse_rfc3339(text: &str) -> i64 {
    let b = text.as_bytes();
    let num = |r: std::ops::Range<usize>| -> i64 {
        text.get(r).and_then(|s| s.parse().ok()).unwrap_or(0)
    };
    assert!(b.len() >= 19, "not RFC 3339: {text}");
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let days = tollgate_protocol::day::days_from_civil(y, m, d);
    days * 86_400 + hh * 3600 + mm * 60 + ss
}

/// An event envelope as Stripe sends it.
pub fn event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "livemode": false,
        "api_version": "2026-09-30.endive", "data": {"object": object}})
}

/// One webhook delivery passed through a [`WebhookRelay`].
#[derive(Clone, Debug)]
pub struct Delivery {
    pub at: std::time::Instant,
    pub kind: String,
    pub status: u16,
    pub answer: Value,
}

/// Sits between a Stripe (localstripe) and the backend's webhook: forwards each delivery as
/// is (body and `Stripe-Signature`) and records when it was answered and how, so a test can
/// measure "within 1 s of the webhook".
pub struct WebhookRelay {
    pub url: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>,
}

impl WebhookRelay {
    pub async fn start(target: &str) -> WebhookRelay {
        use axum::body::Bytes;
        use axum::http::HeaderMap;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let log: std::sync::Arc<std::sync::Mutex<Vec<Delivery>>> = Default::default();
        let (l2, target) = (log.clone(), target.to_string());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (log, target) = (l2.clone(), target.clone());
                async move {
                    let kind = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["type"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let mut req = client()
                        .post(&target)
                        .header("content-type", "application/json")
                        .body(body.to_vec());
                    if let Some(sig) = headers
                        .get("stripe-signature")
                        .and_then(|v| v.to_str().ok())
                    {
                        req = req.header("Stripe-Signature", sig);
                    }
                    let (status, answer) = match req.send().await {
                        Ok(r) => {
                            let s = r.status().as_u16();
                            (s, r.json::<Value>().await.unwrap_or(Value::Null))
                        }
                        Err(_) => (0, Value::Null),
                    };
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Delivery {
                            at: std::time::Instant::now(),
                            kind,
                            status,
                            answer: answer.clone(),
                        });
                    (
                        axum::http::StatusCode::from_u16(status)
                            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY),
                        axum::Json(answer),
                    )
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        WebhookRelay { url, log }
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The first delivery of `kind` (any kind with "") the backend applied.
    pub fn applied(&self, kind: &str) -> Option<Delivery> {
        self.deliveries()
            .into_iter()
            .find(|d| (kind.is_empty() || d.kind == kind) && d.answer["applied"] == true)
    }
}
