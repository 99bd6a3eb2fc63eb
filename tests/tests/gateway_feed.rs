//! Key changes made in the backend reach the gateway within a second.

use std::time::Duration;
use tollgate_e2e::gw::{route, Gateway};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

fn routes(up: &Upstream) -> String {
    [
        route("/v1", &up.url(), "name = \"v1\""),
        route(
            "/pro",
            &up.url(),
            "name = \"pro\"\nplans = [\"pro\", \"enterprise\"]",
        ),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_in_backend_is_rejected_within_one_second() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let api = gw.api();
    let http = client();
    let key = api.mint("feed-revoke", "free").await;
    let (_, minted_to_usable) = eventually(
        Duration::from_secs(1),
        "new key usable within 1 s",
        || async {
            let r = http
                .get(format!("{}/pro/x", gw.url))
                .header("X-API-Key", &key.api_key)
                .send()
                .await
                .ok()?;
            (r.status() == 403).then_some(())
        },
    )
    .await;
    api.revoke(&key.key_id).await;
    let (_, took) = eventually(Duration::from_secs(1), "revocation within 1 s", || async {
        let r = http
            .get(format!("{}/v1/x", gw.url))
            .header("X-API-Key", &key.api_key)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        (v["error"]["code"] == "key_revoked").then_some(())
    })
    .await;
    eprintln!("new key usable after {minted_to_usable:?}; revocation effective after {took:?}");
    assert!(took <= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_grant_of_pro_raises_the_minute_limit_within_one_second() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&routes(&up));
    let api = gw.api();
    let http = client();
    let key = api.mint("feed-grant", "free").await;
    let pro_url = format!("{}/pro/x", gw.url);
    eventually(Duration::from_secs(1), "key usable", || async {
        let r = http
            .get(&pro_url)
            .header("X-API-Key", &key.api_key)
            .send()
            .await
            .ok()?;
        (r.status() == 403).then_some(())
    })
    .await;
    api.grant("feed-grant", "pro").await;
    // Polling the pro-only route: 403s consume nothing; the first 200 is unit 1 of 100.
    let (policy, took) = eventually(Duration::from_secs(1), "pro limits within 1 s", || async {
        let r = http
            .get(&pro_url)
            .header("X-API-Key", &key.api_key)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then(|| {
            r.headers()["ratelimit-policy"]
                .to_str()
                .unwrap_or("")
                .to_string()
        })
    })
    .await;
    eprintln!("plan change effective after {took:?}");
    assert_eq!(policy, "\"minute\";q=100;w=60, \"day\";q=5000;w=86400");
    let mut admitted = 1;
    loop {
        let r = http
            .get(format!("{}/v1/x", gw.url))
            .header("X-API-Key", &key.api_key)
            .send()
            .await
            .expect("req");
        if r.status() != 200 {
            assert_eq!(r.status(), 429);
            break;
        }
        admitted += 1;
        assert!(admitted <= 100, "more than 100 admitted in a minute");
    }
    assert_eq!(admitted, 100, "the same key now has the pro minute limit");
}
