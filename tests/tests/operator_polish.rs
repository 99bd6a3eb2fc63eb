//! What an operator sees around the request path: `--version` and `--help` of both binaries,
//! `keys list` counts, `/ready` when Redis is down, process and build-info metrics on both
//! binaries, the embedded backend's metrics on the gateway's metrics port, and a keys gauge
//! whose states add up to the number of keys.

use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tollgate_e2e::gw::{metric, Gateway, TOKEN};
use tollgate_e2e::{bin_path, client, eventually, Proc, TempDir};

fn output(bin: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin_path(bin));
    cmd.args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap_or_else(|e| panic!("{bin}: {e}"))
}

#[test]
fn version_and_help() {
    let version = env!("CARGO_PKG_VERSION");
    for bin in ["tollgate-gateway", "tollgate-backend"] {
        let out = output(bin, &["--version"], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{bin} --version: {out:?}");
        assert!(
            text.starts_with(&format!("{bin} {version}")),
            "{bin} --version: {text:?}"
        );
    }
    let out = output("tollgate-gateway", &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--config <PATH>",
        "TOLLGATE_CONFIG",
        "TOLLGATE_<SECTION>_<KEY>",
        "SIGHUP",
        "SIGTERM",
        "usage_flush_ms = 1000",
        "milliseconds",
        "redis_failure = \"local\"",
        "\"closed\"",
        "bytes",
        "[[routes]]",
        "key_header",
        "--version",
    ] {
        assert!(
            help.contains(want),
            "gateway --help lacks {want:?}:\n{help}"
        );
    }
    let out = output("tollgate-backend", &["--help"], &[]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--config <PATH>",
        "TOLLGATE_BACKEND_<KEY>",
        "SIGHUP",
        "database_url",
        "sepa_discount_bps = 150",
        "basis points",
        "keys",
        "serve",
        "TOLLGATE_SERVICE_TOKEN",
    ] {
        assert!(
            help.contains(want),
            "backend --help lacks {want:?}:\n{help}"
        );
    }
    let out = output("tollgate-backend", &["keys", "rotate", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--grace <GRACE>") && help.contains("Seconds"),
        "{help}"
    );
}

#[test]
fn keys_list_shows_zero_usage_not_null() {
    let dir = TempDir::new("keys-list");
    let config = dir.write(
        "backend.toml",
        &format!(
            "[backend]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let path = config.display().to_string();
    let env = [("TOLLGATE_SERVICE_TOKEN", TOKEN)];
    let out = output(
        "tollgate-backend",
        &["--config", &path, "keys", "create", "--user", "u1"],
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    let out = output(
        "tollgate-backend",
        &["--config", &path, "keys", "list"],
        &env,
    );
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("keys list prints JSON");
    assert_eq!(v["total"], json!(1), "{v}");
    let key = &v["keys"][0];
    assert_eq!(key["usage_today"], json!(0), "{v}");
    assert_eq!(key["usage_total"], json!(0), "{v}");
    assert_eq!(key["user_id"], json!("u1"), "{v}");
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test]
async fn ready_reports_redis_unreachable() {
    let extra = format!("redis_url = \"redis://127.0.0.1:{}\"\n", closed_port());
    let gw = Gateway::embedded_with(
        &tollgate_e2e::gw::route("/demo", "builtin:echo", ""),
        &extra,
    );
    let http = client();
    let (body, _) = eventually(Duration::from_secs(10), "/ready past starting", || {
        let http = http.clone();
        let url = format!("{}/ready", gw.url);
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["status"] != json!("starting")).then_some(v)
        }
    })
    .await;
    assert_eq!(body["redis"], json!("unreachable"), "{body}");
    assert_eq!(body["status"], json!("degraded"), "{body}");
    assert_eq!(body["degraded"], json!(true), "{body}");
    let text = gw.scrape().await;
    assert_eq!(
        metric(&text, "tollgate_gateway_quota_degraded", ""),
        Some(1.0),
        "{text}"
    );

    // Without redis_url, Redis is not part of readiness.
    let plain = Gateway::embedded(&tollgate_e2e::gw::route("/demo", "builtin:echo", ""));
    let (body, _) = eventually(Duration::from_secs(10), "/ready ready", || {
        let http = http.clone();
        let url = format!("{}/ready", plain.url);
        async move {
            let v: Value = http.get(url).send().await.ok()?.json().await.ok()?;
            (v["status"] == json!("ready")).then_some(v)
        }
    })
    .await;
    assert_eq!(body["redis"], json!("not_configured"), "{body}");
    assert_eq!(body["degraded"], json!(false), "{body}");
}

fn assert_process_metrics(text: &str, who: &str) {
    for name in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        let v = metric(text, name, "").unwrap_or_else(|| panic!("{who}: no {name} in\n{text}"));
        assert!(v >= 0.0, "{who}: {name} = {v}");
    }
    assert!(
        metric(text, "process_resident_memory_bytes", "").unwrap_or(0.0) > 1e6,
        "{who}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let start = metric(text, "process_start_time_seconds", "").unwrap_or(0.0);
    assert!(
        start <= now + 1.0 && start > now - 600.0,
        "{who}: start {start}, now {now}"
    );
    assert_eq!(
        text.matches("# TYPE process_resident_memory_bytes ")
            .count(),
        1,
        "{who}: process metrics once"
    );
}

#[tokio::test]
async fn process_build_info_and_embedded_backend_metrics_on_the_gateway_port() {
    let gw = Gateway::embedded(&tollgate_e2e::gw::route("/demo", "builtin:echo", ""));
    // One management call through the gateway, counted by the embedded backend.
    let status = client()
        .get(format!("{}/api/marketplace/plans", gw.url))
        .send()
        .await
        .expect("plans")
        .status();
    assert_eq!(status.as_u16(), 200);
    let text = gw.scrape().await;
    assert_process_metrics(&text, "gateway");
    assert!(
        !gw.proc.output().contains('\u{1b}'),
        "ANSI codes in piped logs"
    );
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.lines().any(|l| l.starts_with(&format!(
            "tollgate_gateway_build_info{{version=\"{version}\""
        )) && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        text.contains("tollgate_backend_http_requests_total{method=\"GET\",route=\"/api/marketplace/plans\",status=\"200\"}")
            || text.lines().any(|l| l.starts_with("tollgate_backend_http_requests_total{")
                && l.contains("route=\"/api/marketplace/plans\"")),
        "embedded backend metrics missing:\n{text}"
    );
    assert!(text.contains("tollgate_backend_feed_head "), "{text}");
    assert!(
        text.contains("tollgate_backend_keys{state=\"active\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn standalone_backend_metrics_and_a_keys_gauge_that_sums_to_the_keys() {
    let dir = TempDir::new("keys-gauge");
    let config = dir.write(
        "backend.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let path = config.display().to_string();
    let backend = Proc::start(
        "tollgate-backend",
        &["--config", &path, "serve"],
        &[
            ("TOLLGATE_SERVICE_TOKEN", TOKEN),
            ("TOLLGATE_TEST_CLOCK", "1"),
        ],
    );
    let base = backend.url("backend");
    let api = tollgate_e2e::gw::Api {
        base: base.clone(),
        client: client(),
    };
    let expiring = api
        .mint_with(json!({"user_id": "a", "plan": "free", "name": "x", "expires_in_days": 1}))
        .await;
    let _active = api.mint("b", "free").await;
    let revoked = api.mint("c", "free").await;
    api.revoke(&revoked.key_id).await;
    let _ = expiring;
    let r = client()
        .post(format!("{base}/internal/test/clock"))
        .bearer_auth(TOKEN)
        .json(&json!({"advance_seconds": 2 * 86_400}))
        .send()
        .await
        .expect("clock");
    assert_eq!(r.status().as_u16(), 200);
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let state = |s: &str| metric(&text, "tollgate_backend_keys", &format!("state=\"{s}\""));
    assert_eq!(
        (
            state("active"),
            state("expired"),
            state("revoked"),
            state("total")
        ),
        (Some(1.0), Some(1.0), Some(1.0), None),
        "{text}"
    );
    let sum: f64 = text
        .lines()
        .filter(|l| l.starts_with("tollgate_backend_keys{"))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum();
    assert_eq!(
        sum, 3.0,
        "sum(tollgate_backend_keys) is the number of keys:\n{text}"
    );
    assert_process_metrics(&text, "backend");
    // Its log lines went to a pipe: plain text, no colour codes.
    let logs = backend.output();
    assert!(logs.contains("backend started"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escape codes in piped logs:\n{logs:?}"
    );
    assert!(
        text.contains(&format!(
            "tollgate_backend_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
}
