//! Exactness under concurrency, end to end: 100 concurrent requests on a fresh free key admit
//! exactly its per-minute limit (10), twenty times over, never one more.

use std::time::Duration;
use tollgate_e2e::gw::{route, Gateway};
use tollgate_e2e::upstream::Upstream;
use tollgate_e2e::{client, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_requests_admit_exactly_ten() {
    let up = Upstream::start();
    let routes = [
        route("/v1", &up.url(), "name = \"v1\""),
        route(
            "/ent",
            &up.url(),
            "name = \"ent\"\nplans = [\"enterprise\"]",
        ),
    ]
    .concat();
    let gw = Gateway::embedded(&routes);
    let api = gw.api();
    let http = client();
    let mut over_admissions = 0;
    for round in 0..20 {
        let key = api.mint(&format!("conc-{round}"), "free").await;
        // The enterprise-only route answers 403 once the key is known, consuming nothing.
        eventually(Duration::from_secs(2), "key known", || async {
            let r = http
                .get(format!("{}/ent/x", gw.url))
                .header("X-API-Key", &key.api_key)
                .send()
                .await
                .ok()?;
            (r.status() == 403).then_some(())
        })
        .await;
        let hits_before = up.hits();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let http = http.clone();
                let url = format!("{}/v1/x", gw.url);
                let k = key.api_key.clone();
                tokio::spawn(async move {
                    http.get(url)
                        .header("X-API-Key", k)
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                })
            })
            .collect();
        let mut ok = 0;
        let mut limited = 0;
        for t in tasks {
            match t.await.unwrap_or(0) {
                200 => ok += 1,
                429 => limited += 1,
                other => panic!("round {round}: unexpected status {other}"),
            }
        }
        if ok > 10 {
            over_admissions += ok - 10;
        }
        assert_eq!((ok, limited), (10, 90), "round {round}");
        assert_eq!(
            up.hits() - hits_before,
            10,
            "round {round}: upstream saw only admitted requests"
        );
    }
    assert_eq!(over_admissions, 0);
}
