//! Read-your-writes through the gateway: a key minted through a gateway is admitted on the very
//! next request there, a key revoked through it is refused on the very next request (embedded
//! backend, and a separate backend in remote mode).

use tollgate_e2e::client;
use tollgate_e2e::gw::{route, Backend, Gateway};
use tollgate_e2e::upstream::Upstream;

const N: usize = 100;

async fn status(url: &str, key: &str) -> u16 {
    client()
        .get(url)
        .header("X-API-Key", key)
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

async fn mint_and_revoke_are_in_force_at_once(gw: &Gateway, mode: &str) {
    let api = gw.api();
    let url = format!("{}/v1/x", gw.url);
    let mut keys = Vec::with_capacity(N);
    for i in 0..N {
        // max_keys_per_user is 2 on the free plan: one user per key.
        let key = api.mint(&format!("ryw-{mode}-{i}"), "free").await;
        assert_eq!(
            status(&url, &key.api_key).await,
            200,
            "{mode}: key {i} minted through the gateway was not admitted on the next request"
        );
        keys.push(key);
    }
    for (i, key) in keys.iter().enumerate() {
        api.revoke(&key.key_id).await;
        assert_eq!(
            status(&url, &key.api_key).await,
            401,
            "{mode}: key {i} revoked through the gateway was admitted on the next request"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_keys_minted_and_revoked_through_the_gateway_are_in_force_at_once() {
    let up = Upstream::start();
    let gw = Gateway::embedded(&route("/v1", &up.url(), ""));
    mint_and_revoke_are_in_force_at_once(&gw, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_keys_minted_and_revoked_through_the_gateway_are_in_force_at_once() {
    let up = Upstream::start();
    let backend = Backend::start();
    // A long feed wait: the answer must not depend on the next poll coming round.
    let gw = Gateway::remote(&backend.url, &route("/v1", &up.url(), ""), "");
    mint_and_revoke_are_in_force_at_once(&gw, "remote").await;
}
