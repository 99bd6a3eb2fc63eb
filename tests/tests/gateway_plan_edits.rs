//! An edited plan reaches existing keys: a key's limits come from its plan, so after a restart
//! with edited `[[plans]]`, or a SIGHUP, an existing key's `RateLimit-Policy` shows the new
//! limits within a second (embedded backend; and a separate backend in remote mode).

use std::time::Duration;
use tollgate_e2e::gw::{route, Backend, Gateway};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

fn free_plan(per_minute: u64, per_day: u64) -> String {
    format!(
        "[[plans]]\nid = \"free\"\nname = \"Free\"\nprice_monthly_minor = 0\nprice_yearly_minor = 0\nrate_limit_per_minute = {per_minute}\ndaily_limit = {per_day}\nmax_keys_per_user = 2\n"
    )
}

fn policy(per_minute: u64, per_day: u64) -> String {
    format!("\"minute\";q={per_minute};w=60, \"day\";q={per_day};w=86400")
}

/// The `RateLimit-Policy` the gateway sends for `key` now.
async fn policy_of(gw_url: &str, key: &str) -> Option<String> {
    let resp = client()
        .get(format!("{gw_url}/v1/x"))
        .header("X-API-Key", key)
        .send()
        .await
        .ok()?;
    resp.headers()
        .get("ratelimit-policy")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn shows_within_a_second(gw_url: &str, key: &str, want: &str, what: &str) {
    let want = want.to_string();
    let (_, took) = eventually(Duration::from_secs(1), what, || {
        let want = want.clone();
        async move { (policy_of(gw_url, key).await? == want).then_some(()) }
    })
    .await;
    eprintln!("{what}: in force after {took:?}");
}

fn hup(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "kill -HUP {pid}");
}

/// Rewrites the config's free plan in place.
fn edit_plans(config: &std::path::Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).expect("config");
    assert!(text.contains(from), "config has no {from:?}");
    std::fs::write(config, text.replace(from, to)).expect("write config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_plan_edits_reach_existing_keys_on_restart_and_sighup() {
    let up = Upstream::start();
    let routes = format!("{}\n{}", route("/v1", &up.url(), ""), free_plan(10, 50));
    let mut gw = Gateway::embedded(&routes);
    let key = gw.api().mint("plan-edit", "free").await;
    shows_within_a_second(&gw.url, &key.api_key, &policy(10, 50), "the key").await;

    // Restart with the free plan at 3/min, 7/day: the existing key (and its saved snapshot
    // with the old limits) follows.
    gw.proc.terminate();
    edit_plans(&gw.config, &free_plan(10, 50), &free_plan(3, 7));
    gw.restart();
    shows_within_a_second(
        &gw.url,
        &key.api_key,
        &policy(3, 7),
        "restart with edited plans",
    )
    .await;

    // SIGHUP with 4/min, 9/day: no restart.
    edit_plans(&gw.config, &free_plan(3, 7), &free_plan(4, 9));
    hup(gw.proc.pid());
    shows_within_a_second(&gw.url, &key.api_key, &policy(4, 9), "SIGHUP").await;
    // The catalogue the backend serves says the same.
    let plans: serde_json::Value = client()
        .get(format!("{}/api/marketplace/plans/free", gw.url))
        .send()
        .await
        .expect("plan")
        .json()
        .await
        .expect("json");
    let text = plans.to_string();
    assert!(
        text.contains("\"rate_limit\":4") || text.contains("\"rate_limit_per_minute\":4"),
        "the catalogue did not reload: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_plan_edits_reach_existing_keys_on_backend_restart_and_sighup() {
    let up = Upstream::start();
    let mut backend = Backend::start();
    let text = std::fs::read_to_string(&backend.config).expect("config");
    std::fs::write(&backend.config, format!("{text}\n{}", free_plan(10, 50))).expect("write");
    backend.proc.terminate();
    backend.restart();
    let gw = Gateway::remote(&backend.url, &route("/v1", &up.url(), ""), "");
    let key = gw.api().mint("plan-edit-remote", "free").await;
    shows_within_a_second(&gw.url, &key.api_key, &policy(10, 50), "the key").await;

    backend.proc.terminate();
    edit_plans(&backend.config, &free_plan(10, 50), &free_plan(3, 7));
    backend.restart();
    shows_within_a_second(
        &gw.url,
        &key.api_key,
        &policy(3, 7),
        "backend restart with edited plans",
    )
    .await;

    edit_plans(&backend.config, &free_plan(3, 7), &free_plan(4, 9));
    hup(backend.proc.pid());
    shows_within_a_second(&gw.url, &key.api_key, &policy(4, 9), "backend SIGHUP").await;
}
