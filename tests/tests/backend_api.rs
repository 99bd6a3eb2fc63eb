//! End-to-end: the real `tollgate-backend` binary on port 0, walked through the seed API.

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tollgate_e2e::{client, Proc, TempDir};
use tollgate_protocol::feed::{UsageBatch, UsageEntry};

const TOKEN: &str = "e2e-service-token-0123456789";

struct Backend {
    proc: Proc,
    url: String,
    dir: TempDir,
}

fn start_backend(extra_toml: &str) -> Backend {
    let dir = TempDir::new("backend");
    let cfg = format!(
        "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{extra_toml}",
        dir.path().join("data").display()
    );
    let path = dir.write("backend.toml", &cfg);
    let proc = Proc::start(
        "tollgate-backend",
        &["--config", path.to_str().unwrap_or_default(), "serve"],
        &[("TOLLGATE_SERVICE_TOKEN", TOKEN)],
    );
    let url = proc.url("backend");
    Backend { proc, url, dir }
}

async fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let c = client();
    let mut req = c.request(method.parse().expect("method"), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn seed_api_walkthrough() {
    let b = start_backend("");
    let u = &b.url;

    // Plans: exact prices in minor units, limits, features.
    let (st, plans) = call("GET", &format!("{u}/api/marketplace/plans"), None, None).await;
    assert_eq!(st, 200);
    assert_eq!(plans["currency"], "EUR");
    assert_eq!(plans["billing_cycles"], json!(["monthly", "yearly"]));
    let pro = plans["plans"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["id"] == "pro"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(pro["price_monthly"], json!(29));
    assert_eq!(pro["price_monthly_minor"], json!(2900));
    assert_eq!(pro["price_yearly_minor"], json!(29000));
    assert_eq!(pro["sepa_price_monthly_minor"], json!(2857));
    assert_eq!(pro["rate_limit"], json!(100));
    assert_eq!(pro["daily_limit"], json!(5000));
    let (st, ent) = call(
        "GET",
        &format!("{u}/api/marketplace/plans/enterprise"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (
            st,
            ent["price_yearly_minor"].clone(),
            ent["max_keys_per_user"].clone()
        ),
        (200, json!(199000), json!(50))
    );
    let (st, missing) = call(
        "GET",
        &format!("{u}/api/marketplace/plans/gold"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (st, missing["error"]["code"].clone()),
        (404, json!("plan_not_found"))
    );

    // Key generation needs the service token: 401 without, 403 with a wrong one.
    let gen = format!("{u}/api/marketplace/keys/generate");
    let body = json!({"user_id": "alice", "plan": "free", "name": "laptop"});
    let (st, e) = call("POST", &gen, None, Some(body.clone())).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (401, json!("unauthorized"))
    );
    let (st, e) = call(
        "POST",
        &gen,
        Some("wrong-token-wrong-token"),
        Some(body.clone()),
    )
    .await;
    assert_eq!((st, e["error"]["code"].clone()), (403, json!("forbidden")));
    let (st, free) = call("POST", &gen, Some(TOKEN), Some(body)).await;
    assert_eq!(st, 200, "{free}");
    assert_eq!(free["success"], json!(true));
    let secret = free["api_key"].as_str().unwrap_or_default().to_string();
    assert!(
        secret.starts_with("cli_free_") && secret.len() == "cli_free_".len() + 43,
        "{secret}"
    );
    assert_eq!(free["rate_limit"], json!(10));
    assert_eq!(free["daily_limit"], json!(50));
    let free_id = free["key_id"].as_str().unwrap_or_default().to_string();

    // The user's keys and the key's usage (never the secret).
    let (st, list) = call(
        "GET",
        &format!("{u}/api/marketplace/keys/user/alice"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((st, list["total"].clone()), (200, json!(1)));
    assert_eq!(list["keys"][0]["key_id"], json!(free_id));
    assert_eq!(list["keys"][0]["start"], json!(&secret[..12]));
    assert!(!list.to_string().contains(&secret));
    let (st, usage) = call(
        "GET",
        &format!("{u}/api/marketplace/keys/{free_id}/usage"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        usage["usage"],
        json!({"today": 0, "total": 0, "daily_limit": 50, "remaining_today": 50})
    );
    assert_eq!(usage["rate_limit"]["requests_per_minute"], json!(10));

    // A pro key needs a pro subscription: 402 before the manual grant, 200 after.
    let pro_body = json!({"user_id": "alice", "plan": "pro"});
    let (st, e) = call("POST", &gen, Some(TOKEN), Some(pro_body.clone())).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (402, json!("subscription_required"))
    );
    let (st, g) = call(
        "POST",
        &format!("{u}/api/v1/billing/subscriptions/manual"),
        Some(TOKEN),
        Some(json!({"user_id": "alice", "plan": "pro", "cycle": "monthly", "reason": "e2e"})),
    )
    .await;
    assert_eq!(st, 201, "{g}");
    assert_eq!(g["subscription"]["status"], json!("active"));
    let (st, pk) = call("POST", &gen, Some(TOKEN), Some(pro_body.clone())).await;
    assert_eq!(st, 200, "{pk}");
    assert_eq!(
        (pk["plan"].clone(), pk["rate_limit"].clone()),
        (json!("pro"), json!(100))
    );
    // The free key follows the user's plan.
    let (_, usage) = call(
        "GET",
        &format!("{u}/api/marketplace/keys/{free_id}/usage"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(usage["plan"], json!("pro"));

    // max_keys_per_user (pro: 10, counting the free key that is now pro) → 409.
    for _ in 2..10 {
        let (st, r) = call("POST", &gen, Some(TOKEN), Some(pro_body.clone())).await;
        assert_eq!(st, 200, "{r}");
    }
    let (st, e) = call("POST", &gen, Some(TOKEN), Some(pro_body.clone())).await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (409, json!("key_limit_reached"))
    );

    // Revoke: the feed shows the key revoked.
    let (_, feed) = call(
        "GET",
        &format!("{u}/internal/feed?since=0&limit=1000"),
        Some(TOKEN),
        None,
    )
    .await;
    let head = feed["head"].as_u64().unwrap_or(0);
    let (st, r) = call(
        "DELETE",
        &format!("{u}/api/marketplace/keys/{free_id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!((st, r["message"].clone()), (200, json!("API key revoked")));
    let (st, feed) = call(
        "GET",
        &format!("{u}/internal/feed?since={head}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(feed["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (
            feed["keys"][0]["key_id"].clone(),
            feed["keys"][0]["state"].clone()
        ),
        (json!(free_id), json!("revoked"))
    );
    let (st, e) = call(
        "DELETE",
        &format!("{u}/api/marketplace/keys/key_0000000000000000"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (st, e["error"]["code"].clone()),
        (404, json!("key_not_found"))
    );

    // Usage from a gateway, then stats that match what this test did.
    let batch = json!({"gateway_id": "gw-e2e", "batch_id": 1, "entries": [{"key_id": pk["key_id"], "day": today(), "count": 3, "last_used": unix_now()}]});
    for _ in 0..2 {
        let (st, _) = call(
            "POST",
            &format!("{u}/internal/usage"),
            Some(TOKEN),
            Some(batch.clone()),
        )
        .await;
        assert_eq!(st, 200);
    }
    let (st, stats) = call(
        "GET",
        &format!("{u}/api/marketplace/stats"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200);
    // One free key + ten pro keys were minted (the 11th was refused); one was revoked.
    assert_eq!(stats["stats"]["total_api_keys"], json!(10));
    assert_eq!(stats["stats"]["active_api_keys"], json!(9));
    assert_eq!(stats["stats"]["total_api_requests"], json!(3));
    assert_eq!(stats["stats"]["plans_distribution"], json!({"pro": 9}));
    assert_eq!(stats["api_status"], json!("operational"));

    // The ledger holds the grant with its cause.
    let (_, ledger) = call(
        "GET",
        &format!("{u}/api/v1/billing/ledger?user_id=alice"),
        Some(TOKEN),
        None,
    )
    .await;
    let entries = ledger["entries"].as_array().cloned().unwrap_or_default();
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "plan_changed" && e["detail"]["to"] == "pro"));
    assert!(entries
        .iter()
        .any(|e| e["kind"] == "key_revoked" && e["subject"] == json!(free_id)));

    // The database never holds a key in clear.
    drop(b.proc);
    let mut found = Vec::new();
    for entry in std::fs::read_dir(b.dir.path().join("data"))
        .expect("data dir")
        .flatten()
    {
        let bytes = std::fs::read(entry.path()).unwrap_or_default();
        let secret_part = &secret["cli_free_".len()..];
        if bytes
            .windows(secret_part.len())
            .any(|w| w == secret_part.as_bytes())
        {
            found.push(entry.path());
        }
    }
    assert!(found.is_empty(), "secret found in {found:?}");
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn today() -> String {
    tollgate_protocol::day::format_day(tollgate_protocol::day::day_index(unix_now()))
}

#[tokio::test]
async fn feed_long_poll_wakes_within_a_second_and_usage_counts_once() {
    let b = start_backend("");
    let u = b.url.clone();
    let (_, k) = call(
        "POST",
        &format!("{u}/api/marketplace/keys/generate"),
        Some(TOKEN),
        Some(json!({"user_id": "bob"})),
    )
    .await;
    let key_id = k["key_id"].as_str().unwrap_or_default().to_string();
    let (_, feed) = call(
        "GET",
        &format!("{u}/internal/feed?since=0"),
        Some(TOKEN),
        None,
    )
    .await;
    let head = feed["head"].as_u64().unwrap_or(0);
    assert!(head > 0);

    // A reader waits at the head; a revoke must reach it well within a second.
    let waiter = {
        let u = u.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let r = call(
                "GET",
                &format!("{u}/internal/feed?since={head}&wait=20"),
                Some(TOKEN),
                None,
            )
            .await;
            (r, start)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await; // let the long-poll park (not a synchronisation: the result is checked)
    let revoked_at = Instant::now();
    let (st, _) = call(
        "DELETE",
        &format!("{u}/api/marketplace/keys/{key_id}"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(st, 200);
    let ((st, page), started) = waiter.await.expect("join");
    let delivered = revoked_at.elapsed();
    assert_eq!(st, 200);
    assert_eq!(page["keys"][0]["state"], json!("revoked"));
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the long-poll returned because of the change"
    );
    assert!(
        delivered < Duration::from_secs(1),
        "change delivered after {delivered:?}"
    );

    // A usage batch delivered twice counts once.
    let (_, k2) = call(
        "POST",
        &format!("{u}/api/marketplace/keys/generate"),
        Some(TOKEN),
        Some(json!({"user_id": "bob"})),
    )
    .await;
    let batch = json!({"gateway_id": "gw-a", "batch_id": 7, "entries": [{"key_id": k2["key_id"], "day": today(), "count": 4, "last_used": unix_now()}]});
    let (_, first) = call(
        "POST",
        &format!("{u}/internal/usage"),
        Some("wrong-feed-token-xxxx"),
        Some(batch.clone()),
    )
    .await;
    assert_eq!(first["error"]["code"], json!("forbidden"));
    let (_, first) = call(
        "POST",
        &format!("{u}/internal/usage"),
        Some(TOKEN),
        Some(batch.clone()),
    )
    .await;
    let (_, second) = call(
        "POST",
        &format!("{u}/internal/usage"),
        Some(TOKEN),
        Some(batch),
    )
    .await;
    assert_eq!(
        (first["duplicate"].clone(), second["duplicate"].clone()),
        (json!(false), json!(true))
    );
    let (_, usage) = call(
        "GET",
        &format!(
            "{u}/api/marketplace/keys/{}/usage",
            k2["key_id"].as_str().unwrap_or_default()
        ),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (
            usage["usage"]["today"].clone(),
            usage["usage"]["total"].clone()
        ),
        (json!(4), json!(4))
    );
    assert_eq!(usage["rate_limit"]["current_minute_usage"], json!(4));

    // The binary form gateways send counts the same way; damaged binary is a precise 400.
    let key_id = k2["key_id"].as_str().unwrap_or_default();
    let binary = tollgate_protocol::usage_codec::encode::<String>(&UsageBatch {
        gateway_id: "gw-b".into(),
        batch_id: 1,
        entries: vec![UsageEntry {
            key_id: key_id.into(),
            day: today(),
            count: 3,
            last_used: unix_now(),
        }],
    })
    .expect("encode");
    let post_binary = |body: Vec<u8>| {
        client()
            .post(format!("{u}/internal/usage"))
            .bearer_auth(TOKEN)
            .header("content-type", tollgate_protocol::usage_codec::CONTENT_TYPE)
            .body(body)
            .send()
    };
    let resp = post_binary(binary.clone()).await.expect("post");
    assert_eq!(resp.status().as_u16(), 200);
    let ack: Value = resp.json().await.expect("ack");
    assert_eq!(
        ack,
        json!({"gateway_id": "gw-b", "batch_id": 1, "duplicate": false})
    );
    let resp = post_binary(binary[..binary.len() - 3].to_vec())
        .await
        .expect("post");
    assert_eq!(resp.status().as_u16(), 400);
    let err: Value = resp.json().await.expect("error");
    assert_eq!(err["error"]["code"], json!("invalid_body"));
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("truncated"),
        "{err}"
    );
    let (_, usage) = call(
        "GET",
        &format!("{u}/api/marketplace/keys/{key_id}/usage"),
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (
            usage["usage"]["today"].clone(),
            usage["usage"]["total"].clone(),
            usage["rate_limit"]["current_minute_usage"].clone()
        ),
        (json!(7), json!(7), json!(7))
    );
}

#[tokio::test]
async fn bad_input_gets_a_precise_4xx_json_error() {
    let b = start_backend("");
    let u = b.url.clone();
    let (_, k) = call(
        "POST",
        &format!("{u}/api/marketplace/keys/generate"),
        Some(TOKEN),
        Some(json!({"user_id": "carol"})),
    )
    .await;
    let key_id = k["key_id"].as_str().unwrap_or_default().to_string();
    let big = "x".repeat(70 * 1024);
    let meta_big: String = "y".repeat(5000);
    // (method, path, auth, raw body, expected status)
    let cases: Vec<(&str, String, bool, String, u16)> = vec![
        ("POST", "/api/marketplace/keys/generate".into(), true, "{not json".into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, "".into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, "[]".into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": 5}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"plan": "free"}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "plan": "gold"}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "plan": 7}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": ""}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, format!(r#"{{"user_id": "{}"}}"#, "u".repeat(200)), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "name": ""}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "rate_limit_per_minute": -1}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "daily_limit": 99999999999999999999999}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "daily_limit": 0}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "expires_at": "tomorrow"}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "expires_at": "2001-01-01T00:00:00Z"}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "metadata": [1]}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, format!(r#"{{"user_id": "a", "metadata": {{"m": "{meta_big}"}}}}"#), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, r#"{"user_id": "a", "surprise": 1}"#.into(), 400),
        ("POST", "/api/marketplace/keys/generate".into(), true, format!(r#"{{"user_id": "{big}"}}"#), 413),
        ("POST", "/api/marketplace/keys/generate".into(), false, r#"{"user_id": "a"}"#.into(), 401),
        ("GET", "/api/marketplace/keys/nope/usage".into(), true, "".into(), 404),
        ("GET", "/api/marketplace/keys/key_0000000000000000/usage".into(), true, "".into(), 404),
        ("DELETE", "/api/marketplace/keys/KEY_BAD".into(), true, "".into(), 404),
        ("GET", "/api/marketplace/plans/../../etc".into(), false, "".into(), 404),
        ("GET", "/api/marketplace/nothing-here".into(), false, "".into(), 404),
        ("PUT", "/api/marketplace/plans".into(), false, "".into(), 405),
        ("GET", "/api/marketplace/stats".into(), false, "".into(), 401),
        ("POST", "/api/v1/billing/subscriptions/manual".into(), true, r#"{"user_id": "a", "plan": "pro", "cycle": "weekly"}"#.into(), 400),
        ("POST", "/api/v1/billing/subscriptions/manual".into(), true, r#"{"user_id": "a", "plan": "platinum"}"#.into(), 400),
        ("POST", "/api/v1/billing/subscriptions/manual".into(), true, r#"{"user_id": "a", "plan": "free"}"#.into(), 400),
        ("POST", "/api/v1/billing/subscriptions/manual".into(), true, r#"{"user_id": "a", "plan": "pro", "periods": 0}"#.into(), 400),
        ("POST", "/api/v1/billing/subscriptions/manual".into(), true, r#"{"user_id": "a", "plan": "pro", "periods": -3}"#.into(), 400),
        ("POST", "/api/v1/billing/subscriptions/sub_nope/end".into(), true, "".into(), 404),
        ("GET", "/api/v1/billing/ledger?limit=abc".into(), true, "".into(), 400),
        ("GET", "/api/v1/billing/ledger?limit=0".into(), true, "".into(), 400),
        ("GET", "/api/v1/billing/subscriptions".into(), true, "".into(), 400),
        ("GET", "/api/marketplace/keys?plan=gold".into(), true, "".into(), 400),
        ("GET", "/internal/feed?since=-1".into(), true, "".into(), 400),
        ("GET", "/internal/feed?limit=0".into(), true, "".into(), 400),
        ("GET", "/internal/feed".into(), false, "".into(), 401),
        ("POST", "/internal/usage".into(), true, r#"{"gateway_id": "g", "batch_id": 1, "entries": [{"key_id": "k", "day": "2026-13-01", "count": 1, "last_used": 0}]}"#.into(), 400),
        ("POST", "/internal/usage".into(), true, r#"{"gateway_id": "g", "batch_id": -1, "entries": []}"#.into(), 400),
        ("POST", format!("/api/marketplace/keys/{key_id}/rotate"), true, r#"{"grace_seconds": 999999}"#.into(), 400),
        ("PATCH", format!("/api/marketplace/keys/{key_id}"), true, r#"{"expires_at": 12}"#.into(), 400),
        ("PATCH", format!("/api/marketplace/keys/{key_id}"), true, r#"{"name": "x", "rate_limit_per_minute": "fast"}"#.into(), 400),
    ];
    assert!(cases.len() >= 30);
    let c = client();
    for (method, path, auth, body, expected) in &cases {
        let mut req = c.request(method.parse().expect("method"), format!("{u}{path}"));
        if *auth {
            req = req.bearer_auth(TOKEN);
        }
        if !body.is_empty() {
            req = req
                .header("content-type", "application/json")
                .body(body.clone());
        }
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let ctype = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let shown: String = body.chars().take(80).collect();
        assert_eq!(status, *expected, "{method} {path} {shown}: {text}");
        assert!(
            ctype.starts_with("application/json"),
            "{method} {path}: content-type {ctype}"
        );
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path}: no detail in {text}"
        );
        assert!(
            v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{method} {path}: no code in {text}"
        );
        assert_eq!(v["detail"], v["error"]["message"]);
    }
    // Still healthy afterwards.
    let (st, _) = call("GET", &format!("{u}/health"), None, None).await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn invalid_configuration_stops_startup_naming_each_setting() {
    let dir = TempDir::new("badcfg");
    let path = dir.write("bad.toml", "[backend]\nlisten = \"nowhere\"\nkey_prefix = \"NO!\"\n[[plans]]\nid = \"pro\"\nname = \"Pro\"\nprice_monthly_minor = -5\nprice_yearly_minor = 0\nrate_limit_per_minute = 1\ndaily_limit = 1\nmax_keys_per_user = 1\n");
    let out = std::process::Command::new(tollgate_e2e::bin_path("tollgate-backend"))
        .args(["--config", path.to_str().unwrap_or_default(), "serve"])
        .env_remove("TOLLGATE_SERVICE_TOKEN")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "backend.listen",
        "backend.key_prefix",
        "plans[0]: prices must not be negative",
        "\"free\" is required",
    ] {
        assert!(
            err.lines().any(|l| l.contains(needle)),
            "{needle} not named in:\n{err}"
        );
    }
}

#[tokio::test]
async fn generated_service_token_is_written_private_and_printed() {
    let dir = TempDir::new("tokenfile");
    let data = dir.path().join("data");
    let path = dir.write(
        "b.toml",
        &format!(
            "[backend]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    );
    let p = Proc::start(
        "tollgate-backend",
        &["--config", path.to_str().unwrap_or_default(), "serve"],
        &[],
    );
    let url = p.url("backend");
    let token_file = data.join("service_token");
    assert!(
        p.output().contains(&token_file.display().to_string()),
        "{}",
        p.output()
    );
    let token = std::fs::read_to_string(&token_file)
        .expect("token file")
        .trim()
        .to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&token_file)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0),
            0o600
        );
    }
    assert!(
        !p.output().contains(&token),
        "the token itself is never printed"
    );
    let (st, _) = call(
        "GET",
        &format!("{url}/api/marketplace/stats"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test]
async fn cli_commands_act_on_the_same_database() {
    let dir = TempDir::new("cli");
    let cfg = dir.write(
        "b.toml",
        &format!(
            "[backend]\ndata_dir = \"{}\"\n",
            dir.path().join("data").display()
        ),
    );
    let run = |args: &[&str]| -> Value {
        let mut full = vec!["--config", cfg.to_str().unwrap_or_default()];
        full.extend_from_slice(args);
        let out = std::process::Command::new(tollgate_e2e::bin_path("tollgate-backend"))
            .args(&full)
            .env("TOLLGATE_SERVICE_TOKEN", TOKEN)
            .output()
            .expect("run cli");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let plans = run(&["plans"]);
    assert_eq!(plans["plans"].as_array().map(Vec::len), Some(3));
    let created = run(&["keys", "create", "--user", "zoe", "--name", "cli key"]);
    let key_id = created["key_id"].as_str().unwrap_or_default().to_string();
    assert!(created["api_key"]
        .as_str()
        .is_some_and(|k| k.starts_with("cli_free_")));
    let granted = run(&[
        "grant",
        "--user",
        "zoe",
        "--plan",
        "pro",
        "--reason",
        "support ticket 42",
    ]);
    assert_eq!(granted["status"], json!("active"));
    let listed = run(&["keys", "list", "--user", "zoe"]);
    assert_eq!(
        listed["keys"][0]["plan"],
        json!("pro"),
        "the grant moved the existing key"
    );
    let rotated = run(&["keys", "rotate", &key_id, "--grace", "60"]);
    assert_ne!(rotated["api_key"], created["api_key"]);
    assert!(rotated["previous_valid_until"].is_string());
    let revoked = run(&["keys", "revoke", &key_id]);
    assert_eq!(revoked["success"], json!(true));
    let stats = run(&["stats"]);
    assert_eq!(
        (
            stats["total_api_keys"].clone(),
            stats["active_api_keys"].clone()
        ),
        (json!(1), json!(0))
    );
}
