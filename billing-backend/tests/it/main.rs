//! In-process integration tests of the backend router (the end-to-end tests in the workspace
//! `tests/` crate start the real binary).

use axum::body::Body;
use http::Request;
use serde_json::Value;
use std::collections::BTreeSet;
use tollgate_backend::{Backend, BackendConfig};
use tower::ServiceExt;

/// Routed on purpose without being in the document: redirects to the pricing page, the
/// portal's static assets, and the test clock hook (404 unless `TOLLGATE_TEST_CLOCK=1`).
const UNDOCUMENTED: &[&str] = &[
    "/portal",
    "/portal/",
    "/portal/assets/portal.css",
    "/portal/assets/portal.js",
    "/portal/assets/favicon.svg",
    "/internal/test/clock",
];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// A concrete path for a template: every `{param}` becomes `x1`.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| if seg.starts_with('{') { "x1" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

async fn call(router: &axum::Router, method: &str, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method.to_uppercase().as_str())
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let resp = router.clone().oneshot(req).await.expect("call");
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Route templates named by `.route("...")` in the backend's source.
fn routes_in_source() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read src").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source");
                for (i, _) in text.match_indices(".route(") {
                    let rest = text[i + 7..].trim_start();
                    if let Some(lit) = rest.strip_prefix('"') {
                        if let Some(end) = lit.find('"') {
                            out.insert(lit[..end].to_string());
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut out,
    );
    out.insert(tollgate_protocol::feed::FEED_PATH.to_string());
    out.insert(tollgate_protocol::feed::USAGE_PATH.to_string());
    out
}

/// Every documented operation exists in the real router, every method the router answers on a
/// documented path is documented, and every route in the source is documented (or listed in
/// [`UNDOCUMENTED`] with its reason).
#[tokio::test]
async fn the_document_and_the_router_agree() {
    let dir = std::env::temp_dir().join(format!("tg-openapi-{}", std::process::id()));
    let backend = Backend::start(BackendConfig::for_tests(&dir))
        .await
        .expect("start");
    let router = backend.router();
    let doc = tollgate_backend::openapi::document();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (template, item) in paths {
        let item = item.as_object().expect("path item");
        let path = concrete(template);
        for method in METHODS {
            let (status, text) = call(&router, method, &path).await;
            let routed = status != 405 && !text.contains("no endpoint");
            let documented = item.contains_key(*method);
            assert_eq!(
                routed, documented,
                "{method} {template}: routed {routed} ({status}: {text}), documented {documented}"
            );
        }
    }
    let documented: BTreeSet<String> = paths.keys().cloned().collect();
    for route in routes_in_source() {
        assert!(
            documented.contains(&route) || UNDOCUMENTED.contains(&route.as_str()),
            "{route} is routed but not in /openapi.json"
        );
    }
    for path in UNDOCUMENTED {
        let (status, text) = call(&router, "get", path).await;
        assert!(
            !text.contains("no endpoint"),
            "{path} is listed as routed but is not ({status})"
        );
    }
    // The gateway answers validate; the backend neither routes nor documents it.
    assert!(doc["paths"]["/api/marketplace/keys/validate"].is_null());
    let (status, _) = call(&router, "post", "/api/marketplace/keys/validate").await;
    assert_eq!(status, 405);
    backend.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Every response of every operation names its content: JSON answers their schema, pages
/// `text/html`, metrics `text/plain`.
#[test]
fn every_answer_with_a_body_has_a_schema() {
    let doc = tollgate_backend::openapi::document();
    for (template, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("item") {
            for (status, resp) in op["responses"].as_object().expect("responses") {
                let Some(content) = resp.get("content").and_then(Value::as_object) else {
                    assert!(
                        status.starts_with('3') || status == "204",
                        "{method} {template} {status} has no content"
                    );
                    continue;
                };
                for (media, body) in content {
                    assert!(
                        body.get("schema").is_some(),
                        "{method} {template} {status} {media} has no schema"
                    );
                }
            }
        }
    }
}
