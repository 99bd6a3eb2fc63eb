//! Prometheus metrics, rendered as text on `metrics_listen`.
//!
//! The request path never looks a label set up: each route's counters are resolved when the
//! route table is built (an array of atomics per outcome, and one per upstream status code), and
//! a request does one relaxed `fetch_add` per counter. Histograms are fixed buckets of atomics.
//! Route metrics are registered by route name and survive a SIGHUP reload.

use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tollgate_protocol::metrics::{self as prom, family, sample};
pub use tollgate_protocol::metrics::{Counter, Histogram};

/// What happened to a request: `ok` (forwarded or answered) or the error code the gateway sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    MissingKey,
    InvalidKey,
    KeyRevoked,
    KeyExpired,
    PlanNotAllowed,
    RateLimited,
    DailyLimitExceeded,
    UpstreamUnavailable,
    UpstreamTimeout,
    PayloadTooLarge,
    RouteNotFound,
    QuotaUnavailable,
    BadRequest,
    NotReady,
    MethodNotAllowed,
    NotImplemented,
}

impl Outcome {
    pub const ALL: [Outcome; 17] = [
        Outcome::Ok,
        Outcome::MissingKey,
        Outcome::InvalidKey,
        Outcome::KeyRevoked,
        Outcome::KeyExpired,
        Outcome::PlanNotAllowed,
        Outcome::RateLimited,
        Outcome::DailyLimitExceeded,
        Outcome::UpstreamUnavailable,
        Outcome::UpstreamTimeout,
        Outcome::PayloadTooLarge,
        Outcome::RouteNotFound,
        Outcome::QuotaUnavailable,
        Outcome::BadRequest,
        Outcome::NotReady,
        Outcome::MethodNotAllowed,
        Outcome::NotImplemented,
    ];

    /// The stable code clients see in `error.code` (and the metrics label).
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::MissingKey => "missing_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::KeyRevoked => "key_revoked",
            Outcome::KeyExpired => "key_expired",
            Outcome::PlanNotAllowed => "plan_not_allowed",
            Outcome::RateLimited => "rate_limited",
            Outcome::DailyLimitExceeded => "daily_limit_exceeded",
            Outcome::UpstreamUnavailable => "upstream_unavailable",
            Outcome::UpstreamTimeout => "upstream_timeout",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::RouteNotFound => "route_not_found",
            Outcome::QuotaUnavailable => "quota_unavailable",
            Outcome::BadRequest => "bad_request",
            Outcome::NotReady => "not_ready",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::NotImplemented => "not_implemented",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Outcome::Ok => 200,
            Outcome::MissingKey
            | Outcome::InvalidKey
            | Outcome::KeyRevoked
            | Outcome::KeyExpired => 401,
            Outcome::PlanNotAllowed => 403,
            Outcome::RateLimited | Outcome::DailyLimitExceeded => 429,
            Outcome::UpstreamUnavailable => 502,
            Outcome::UpstreamTimeout => 504,
            Outcome::PayloadTooLarge => 413,
            Outcome::RouteNotFound => 404,
            Outcome::QuotaUnavailable | Outcome::NotReady => 503,
            Outcome::BadRequest => 400,
            Outcome::MethodNotAllowed => 405,
            Outcome::NotImplemented => 501,
        }
    }

    fn index(self) -> usize {
        Outcome::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// 25 µs … 100 ms: what the gateway adds to a request.
pub const OVERHEAD_BOUNDS_NS: &[u64] = &[
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    100_000_000,
];
/// 0.5 ms … 30 s: how long upstreams take to answer.
pub const UPSTREAM_BOUNDS_NS: &[u64] = &[
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// Counters of one route (or one of the gateway's own pseudo-routes like `_validate`).
pub struct RouteMetrics {
    pub name: String,
    outcomes: [AtomicU64; Outcome::ALL.len()],
    /// Forwarded responses by upstream status (100..=599).
    statuses: Box<[AtomicU64]>,
    /// Outcomes answered inside a 200 body (the validate endpoint's `valid:false` answers).
    in_body: [AtomicU64; Outcome::ALL.len()],
    pub upstream: Histogram,
}

impl RouteMetrics {
    fn new(name: &str) -> RouteMetrics {
        RouteMetrics {
            name: name.to_string(),
            outcomes: Default::default(),
            in_body: Default::default(),
            statuses: (0..600).map(|_| AtomicU64::new(0)).collect(),
            upstream: Histogram::new(UPSTREAM_BOUNDS_NS),
        }
    }

    /// Counts one request: a forwarded response by its status, a gateway answer by its outcome.
    pub fn count(&self, outcome: Outcome, status: u16) {
        if outcome == Outcome::Ok {
            if let Some(c) = self.statuses.get(usize::from(status)) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            self.outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an outcome the client received in a 200 answer's body.
    pub fn count_validate(&self, outcome: Outcome) {
        self.in_body[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Total requests counted for this route.
    pub fn total(&self) -> u64 {
        self.outcomes
            .iter()
            .chain(self.statuses.iter())
            .chain(self.in_body.iter())
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Everything the gateway exports.
pub struct Metrics {
    routes: Mutex<Vec<Arc<RouteMetrics>>>,
    pub overhead: Histogram,
    pub admitted_units: Counter,
    pub refunded_units: Counter,
    pub feed_errors: Counter,
    pub usage_batches_sent: Counter,
    pub usage_units_shipped: Counter,
    pub usage_ship_errors: Counter,
    pub redis_errors: Counter,
    pub connections: Counter,
    pub handed_off: Counter,
    pub connections_evicted: Counter,
    pub connections_refused: Counter,
    /// Client connections open on the main listener (a gauge).
    pub connections_open: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A gauge value read at scrape time.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            routes: Mutex::new(Vec::new()),
            overhead: Histogram::new(OVERHEAD_BOUNDS_NS),
            admitted_units: Counter::default(),
            refunded_units: Counter::default(),
            feed_errors: Counter::default(),
            usage_batches_sent: Counter::default(),
            usage_units_shipped: Counter::default(),
            usage_ship_errors: Counter::default(),
            redis_errors: Counter::default(),
            connections: Counter::default(),
            connections_evicted: Counter::default(),
            connections_refused: Counter::default(),
            connections_open: AtomicU64::new(0),
            handed_off: Counter::default(),
        }
    }

    /// The counters for route `name`, created on first use and kept across reloads.
    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let mut routes = self.routes.lock();
        if let Some(r) = routes.iter().find(|r| r.name == name) {
            return r.clone();
        }
        let r = Arc::new(RouteMetrics::new(name));
        routes.push(r.clone());
        r
    }

    pub fn render(&self, gauges: &[Gauge]) -> String {
        let mut out = String::with_capacity(8192);
        let requests = "tollgate_gateway_requests_total";
        family(
            &mut out,
            requests,
            "Requests by route, response status and outcome code.",
            "counter",
        );
        let routes: Vec<_> = self.routes.lock().clone();
        for r in &routes {
            let route = r.name.as_str();
            for (status, c) in r.statuses.iter().enumerate() {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let status = status.to_string();
                    let labels = [("route", route), ("status", &status), ("code", "ok")];
                    sample(&mut out, requests, &labels, n);
                }
            }
            for o in Outcome::ALL {
                let n = r.in_body[o.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let labels = [("route", route), ("status", "200"), ("code", o.code())];
                    sample(&mut out, requests, &labels, n);
                }
                let n = r.outcomes[o.index()].load(Ordering::Relaxed);
                if n > 0 {
                    let status = o.status().to_string();
                    let labels = [("route", route), ("status", &status), ("code", o.code())];
                    sample(&mut out, requests, &labels, n);
                }
            }
        }
        family(
            &mut out,
            "tollgate_gateway_overhead_seconds",
            "Time the gateway adds to a request (total minus upstream time).",
            "histogram",
        );
        self.overhead
            .render(&mut out, "tollgate_gateway_overhead_seconds", &[]);
        family(
            &mut out,
            "tollgate_gateway_upstream_seconds",
            "Time from forwarding a request to the upstream's response headers.",
            "histogram",
        );
        for r in &routes {
            if r.upstream.count() > 0 {
                let labels = [("route", r.name.as_str())];
                r.upstream
                    .render(&mut out, "tollgate_gateway_upstream_seconds", &labels);
            }
        }
        let counters: [(&str, &str, &Counter); 11] = [
            (
                "tollgate_gateway_connections_total",
                "Client connections accepted on the main listener.",
                &self.connections,
            ),
            (
                "tollgate_gateway_connections_handed_off_total",
                "Client connections the HTTP/1.1 fast lane handed to the general HTTP stack (HTTP/2, HTTP/1.0, upgrades, the gateway's own paths, streamed uploads).",
                &self.handed_off,
            ),
            (
                "tollgate_gateway_connections_evicted_total",
                "Idle client connections closed to make room at max_connections.",
                &self.connections_evicted,
            ),
            (
                "tollgate_gateway_connections_refused_total",
                "Client connections closed at once at max_connections (none idle to close).",
                &self.connections_refused,
            ),
            (
                "tollgate_gateway_admitted_units_total",
                "Quota units admitted (after refunds are subtracted separately).",
                &self.admitted_units,
            ),
            (
                "tollgate_gateway_refunded_units_total",
                "Quota units given back after 502/504.",
                &self.refunded_units,
            ),
            (
                "tollgate_gateway_feed_errors_total",
                "Failed key feed requests.",
                &self.feed_errors,
            ),
            (
                "tollgate_gateway_usage_batches_sent_total",
                "Usage batches acknowledged by the backend.",
                &self.usage_batches_sent,
            ),
            (
                "tollgate_gateway_usage_units_shipped_total",
                "Usage units acknowledged by the backend.",
                &self.usage_units_shipped,
            ),
            (
                "tollgate_gateway_usage_ship_errors_total",
                "Failed usage batch deliveries (retried).",
                &self.usage_ship_errors,
            ),
            (
                "tollgate_gateway_redis_errors_total",
                "Errors talking to the shared quota store.",
                &self.redis_errors,
            ),
        ];
        for (name, help, c) in counters {
            prom::single(&mut out, name, help, "counter", c.get());
        }
        for g in gauges {
            prom::single(&mut out, g.name, g.help, "gauge", g.value);
        }
        out
    }
}

/// Appends `tollgate_gateway_build_info` (version, and the commit when the build set
/// `TOLLGATE_GIT_COMMIT`) and the `process_*` metrics read from `/proc` at scrape time.
pub fn render_process(out: &mut String) {
    tollgate_protocol::process::render_build_info(
        out,
        "tollgate_gateway_build_info",
        env!("CARGO_PKG_VERSION"),
        option_env!("TOLLGATE_GIT_COMMIT"),
    );
    tollgate_protocol::process::render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_and_build_info_are_rendered() {
        let mut out = String::new();
        render_process(&mut out);
        assert!(
            out.contains(&format!(
                "tollgate_gateway_build_info{{version=\"{}\"",
                env!("CARGO_PKG_VERSION")
            )),
            "{out}"
        );
        if std::path::Path::new("/proc/self/stat").exists() {
            for name in [
                "process_resident_memory_bytes ",
                "process_open_fds ",
                "process_cpu_seconds_total ",
                "process_start_time_seconds ",
            ] {
                assert!(out.contains(name), "{name} missing in {out}");
            }
        }
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::new();
        let r = m.route("demo \"x\"");
        r.count(Outcome::Ok, 200);
        r.count(Outcome::Ok, 200);
        r.count(Outcome::RateLimited, 429);
        r.upstream.observe(std::time::Duration::from_millis(3));
        m.overhead.observe(std::time::Duration::from_micros(30));
        assert!(Arc::ptr_eq(&r, &m.route("demo \"x\"")));
        assert_eq!(r.total(), 3);
        let text = m.render(&[Gauge {
            name: "tollgate_gateway_keys_loaded",
            help: "Keys.",
            value: 3.0,
        }]);
        assert!(text.contains("tollgate_gateway_requests_total{route=\"demo \\\"x\\\"\",status=\"200\",code=\"ok\"} 2"), "{text}");
        assert!(
            text.contains("status=\"429\",code=\"rate_limited\"} 1"),
            "{text}"
        );
        assert!(text.contains("tollgate_gateway_upstream_seconds_bucket{route=\"demo \\\"x\\\"\",le=\"0.0025\"} 0"), "{text}");
        assert!(
            text.contains(
                "tollgate_gateway_upstream_seconds_bucket{route=\"demo \\\"x\\\"\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("tollgate_gateway_overhead_seconds_bucket{le=\"0.00005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_gateway_overhead_seconds_sum 0.00003\n"),
            "{text}"
        );
        assert!(text.contains("tollgate_gateway_keys_loaded 3\n"), "{text}");
    }
}
