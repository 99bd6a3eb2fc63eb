//! Backend Prometheus metrics: HTTP requests by route, method and status; the feed head; usage
//! ingested; key counts measured at scrape time. The standalone backend's `/metrics` adds the
//! build-info and `process_*` gauges ([`Metrics::render_standalone`]); an embedding gateway
//! renders those itself and appends [`Metrics::render`].

use crate::store::Store;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;
use tollgate_protocol::metrics::{self as prom, Counter, CounterVec, IntGauge};

/// The backend's metrics; cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    /// HTTP requests answered, by route template, method and status.
    pub http_requests: Arc<CounterVec<3>>,
    /// Highest key-feed sequence number, refreshed at scrape and when the feed moves.
    pub feed_head: Arc<IntGauge>,
    /// Quota units reported by gateways and applied.
    pub usage_units: Arc<Counter>,
    /// Usage batches received, by result (applied, duplicate).
    pub usage_batches: Arc<CounterVec<1>>,
    /// Keys by state ([`key_states`]' order), measured at scrape; the last measurement stays
    /// when the store cannot answer.
    keys: Arc<[IntGauge; 3]>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            http_requests: Arc::new(CounterVec::new(["route", "method", "status"])),
            feed_head: Arc::default(),
            usage_units: Arc::default(),
            usage_batches: Arc::new(CounterVec::new(["result"])),
            keys: Arc::default(),
        }
    }

    /// Text exposition, after refreshing the gauges measured from the database.
    pub async fn render(&self, store: &dyn Store, now: i64) -> String {
        if let Ok(stats) = store.key_stats(now).await {
            for ((_, n), gauge) in key_states(&stats).into_iter().zip(self.keys.iter()) {
                gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        if let Ok(head) = store.feed_head().await {
            self.feed_head.set(i64::try_from(head).unwrap_or(i64::MAX));
        }
        let mut out = String::with_capacity(2048);
        prom::single(
            &mut out,
            "tollgate_backend_feed_head",
            "Highest key-feed sequence number",
            "gauge",
            self.feed_head.get(),
        );
        self.http_requests.render(
            &mut out,
            "tollgate_backend_http_requests_total",
            "HTTP requests answered, by route template, method and status",
        );
        prom::family(
            &mut out,
            "tollgate_backend_keys",
            "API keys by state (active, expired, revoked; each key in exactly one, so sum() is the total), measured at scrape",
            "gauge",
        );
        for (state, gauge) in KEY_STATES.iter().zip(self.keys.iter()) {
            prom::sample(
                &mut out,
                "tollgate_backend_keys",
                &[("state", state)],
                gauge.get(),
            );
        }
        self.usage_batches.render(
            &mut out,
            "tollgate_backend_usage_batches_total",
            "Usage batches received, by result (applied, duplicate)",
        );
        prom::single(
            &mut out,
            "tollgate_backend_usage_units_ingested_total",
            "Quota units reported by gateways and applied",
            "counter",
            self.usage_units.get(),
        );
        out
    }
}

impl Metrics {
    /// [`Metrics::render`] plus `tollgate_backend_build_info` and the `process_*` gauges: what
    /// the standalone backend's `/metrics` serves.
    pub async fn render_standalone(&self, store: &dyn Store, now: i64) -> String {
        let mut out = self.render(store, now).await;
        tollgate_protocol::process::render_build_info(
            &mut out,
            "tollgate_backend_build_info",
            env!("CARGO_PKG_VERSION"),
            option_env!("TOLLGATE_GIT_COMMIT"),
        );
        tollgate_protocol::process::render(&mut out);
        out
    }
}

/// The `state` label values of `tollgate_backend_keys`, in [`key_states`]' order.
const KEY_STATES: [&str; 3] = ["active", "expired", "revoked"];

/// Each key in exactly one state: revoked (even if it had also expired), else expired, else
/// active.
fn key_states(stats: &crate::store::KeyStats) -> [(&'static str, u64); 3] {
    let expired = stats
        .total_keys
        .saturating_sub(stats.active_keys)
        .saturating_sub(stats.revoked_keys);
    let [active, exp, revoked] = KEY_STATES;
    [
        (active, stats.active_keys),
        (exp, expired),
        (revoked, stats.revoked_keys),
    ]
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Middleware counting every answered request by its route template (never the raw path, so
/// ids do not explode the label set).
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    metrics
        .http_requests
        .with_label_values(&[route.as_str(), method, resp.status().as_str()])
        .inc();
    resp
}

/// The `method` label: the standard methods by name, anything else as `OTHER`. HTTP lets a
/// client send any token as a method, and each distinct label value is a new series kept
/// for the life of the process, so client-chosen text never becomes a label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::testing::TestBackend;
    use axum::body::Body;
    use tower::ServiceExt;

    #[tokio::test]
    async fn client_chosen_methods_are_counted_as_other() {
        let tb = TestBackend::start(|_| {}).await;
        for method in ["FOOBAR", "X1", "GET"] {
            let req = Request::builder()
                .method(method)
                .uri("/health")
                .body(Body::empty())
                .unwrap_or_else(|e| panic!("request: {e}"));
            let resp = tb
                .backend
                .router()
                .oneshot(req)
                .await
                .unwrap_or_else(|e| panic!("call: {e}"));
            assert!(
                method == "GET" || resp.status().is_client_error(),
                "{method}: {}",
                resp.status()
            );
        }
        let m = &tb.state().metrics();
        assert_eq!(
            m.http_requests
                .with_label_values(&["/health", "OTHER", "405"])
                .get(),
            2
        );
        let text = m
            .render(tb.state().store().as_ref(), tb.state().now())
            .await;
        assert!(text.contains(r#"method="OTHER""#), "{text}");
        assert!(text.contains(r#"method="GET""#), "{text}");
        assert!(
            !text.contains("FOOBAR") && !text.contains(r#""X1""#),
            "{text}"
        );
    }

    #[test]
    fn key_states_partition_the_keys() {
        let stats = crate::store::KeyStats {
            total_keys: 10,
            active_keys: 6,
            revoked_keys: 3,
            total_requests: 0,
            by_plan: Default::default(),
            users: 2,
        };
        let states = key_states(&stats);
        assert_eq!(states, [("active", 6), ("expired", 1), ("revoked", 3)]);
        assert_eq!(states.iter().map(|(_, n)| n).sum::<u64>(), stats.total_keys);
    }

    #[test]
    fn every_standard_method_keeps_its_name() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            Method::TRACE,
            Method::CONNECT,
        ] {
            assert_eq!(method_label(&m), m.as_str());
        }
    }
}
