//! In-process integration tests of the backend router (the end-to-end tests in the workspace
//! `tests/` crate start the real binary).

use axum::body::Body;
use http::Request;
use tollgate_backend::openapi::{Auth, ENDPOINTS};
use tollgate_backend::{Backend, BackendConfig};
use tower::ServiceExt;

#[tokio::test]
async fn every_documented_endpoint_exists() {
    let dir = std::env::temp_dir().join(format!("tg-openapi-{}", std::process::id()));
    let backend = Backend::start(BackendConfig::for_tests(&dir))
        .await
        .expect("start");
    let router = backend.router();
    for e in ENDPOINTS {
        if e.auth == Auth::Gateway {
            continue;
        }
        let path = e
            .path
            .replace("{plan_id}", "free")
            .replace("{key_id}", "key_0000000000000000")
            .replace("{user_id}", "u")
            .replace("{sub_id}", "sub_x")
            .replace("{payment_id}", "pay_x")
            .replace("{import_id}", "imp_x");
        let req = Request::builder()
            .method(e.method.to_uppercase().as_str())
            .uri(&path)
            .body(Body::empty())
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("call");
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        assert!(
            status != 405 && !text.contains("no endpoint"),
            "{} {} is documented but not routed ({status}: {text})",
            e.method,
            e.path
        );
    }
    let doc = tollgate_backend::openapi::document();
    assert_eq!(doc["openapi"], "3.1.0");
    backend.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}
