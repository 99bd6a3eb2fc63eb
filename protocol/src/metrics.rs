//! Prometheus metrics for both binaries: lock-free counters and histograms for the request path,
//! labelled counters for the backend's handlers, and the text exposition format they render to
//! (`# HELP`, `# TYPE`, then one `name{label="value",...} number` line per series).
//!
//! Rendering appends to a `String`, like [`crate::process`], so a `/metrics` answer is built in
//! one buffer from the gateway's, the embedded backend's and the process metrics.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A monotonically increasing count (`counter`).
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (`gauge`), set by whoever measures it.
#[derive(Default)]
pub struct IntGauge(AtomicI64);

impl IntGauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters told apart by `N` label values, one series per distinct combination, created on
/// first use. Label values must come from a small fixed set (route templates, status codes),
/// never from client-chosen text: every series lives as long as the process.
pub struct CounterVec<const N: usize> {
    labels: [&'static str; N],
    series: Mutex<BTreeMap<[String; N], Arc<Counter>>>,
}

impl<const N: usize> CounterVec<N> {
    pub fn new(labels: [&'static str; N]) -> CounterVec<N> {
        CounterVec {
            labels,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    /// The counter for these label values (in the order of the label names).
    pub fn with_label_values(&self, values: &[&str; N]) -> Arc<Counter> {
        let key = values.map(str::to_string);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.entry(key).or_default().clone()
    }

    /// Appends the family: its header and one line per series, in label order.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        family(out, name, help, "counter");
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (values, counter) in series.iter() {
            let mut labels = [("", ""); N];
            for (i, l) in labels.iter_mut().enumerate() {
                *l = (self.labels[i], values[i].as_str());
            }
            sample(out, name, &labels, counter.get());
        }
    }
}

/// A histogram with fixed bucket bounds in nanoseconds, one atomic per bucket; rendered in
/// seconds.
pub struct Histogram {
    bounds_ns: &'static [u64],
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds_ns: &'static [u64]) -> Histogram {
        Histogram {
            bounds_ns,
            buckets: (0..=bounds_ns.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self
            .bounds_ns
            .iter()
            .position(|b| ns <= *b)
            .unwrap_or(self.bounds_ns.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends the `_bucket` (cumulative, ending with `le="+Inf"`), `_sum` and `_count` lines of
    /// one series; the family header is the caller's, so several series can share it.
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let bounds: Vec<String> = self.bounds_ns.iter().map(|b| seconds(*b)).collect();
        let mut le = labels.to_vec();
        le.push(("le", ""));
        let last = le.len() - 1;
        let mut cumulative = 0;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Ordering::Relaxed);
            le[last].1 = bound;
            sample(out, &bucket, &le, cumulative);
        }
        cumulative += self.buckets[self.bounds_ns.len()].load(Ordering::Relaxed);
        le[last].1 = "+Inf";
        sample(out, &bucket, &le, cumulative);
        let sum = seconds(self.sum_ns.load(Ordering::Relaxed));
        sample(out, &format!("{name}_sum"), labels, sum);
        sample(out, &format!("{name}_count"), labels, cumulative);
    }
}

/// Appends a family's `# HELP` and `# TYPE` lines (`kind`: counter, gauge, histogram).
pub fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Appends one series line; label values are escaped.
pub fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A family with one unlabelled series: a header and its value.
pub fn single(out: &mut String, name: &str, help: &str, kind: &str, value: impl Display) {
    family(out, name, help, kind);
    sample(out, name, &[], value);
}

/// A label value as the exposition format needs it: backslash, double quote and newline
/// escaped.
pub fn escape(label: &str) -> Cow<'_, str> {
    if !label.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(label);
    }
    Cow::Owned(
        label
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// Nanoseconds as decimal seconds, exactly (no float formatting surprises).
pub fn seconds(ns: u64) -> String {
    let whole = ns / 1_000_000_000;
    let frac = ns % 1_000_000_000;
    if frac == 0 {
        return whole.to_string();
    }
    let f = format!("{frac:09}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_are_exact() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(25_000), "0.000025");
        assert_eq!(seconds(2_500_000_000), "2.5");
        assert_eq!(seconds(30_000_000_000), "30");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("route", "a\"b\\c\nd"), ("s", "200")], 3);
        assert_eq!(out, "m{route=\"a\\\"b\\\\c\\nd\",s=\"200\"} 3\n");
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn counter_vec_renders_one_line_per_series_in_label_order() {
        let v = CounterVec::new(["route", "status"]);
        v.with_label_values(&["/b", "200"]).inc();
        v.with_label_values(&["/a", "404"]).add(2);
        v.with_label_values(&["/b", "200"]).inc();
        assert_eq!(v.with_label_values(&["/b", "200"]).get(), 2);
        let mut out = String::new();
        v.render(&mut out, "reqs_total", "Requests.");
        assert_eq!(
            out,
            "# HELP reqs_total Requests.\n# TYPE reqs_total counter\n\
             reqs_total{route=\"/a\",status=\"404\"} 2\n\
             reqs_total{route=\"/b\",status=\"200\"} 2\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        static BOUNDS: &[u64] = &[1_000_000, 10_000_000];
        let h = Histogram::new(BOUNDS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_secs(1));
        let mut out = String::new();
        h.render(&mut out, "t_seconds", &[("route", "r")]);
        assert_eq!(
            out,
            "t_seconds_bucket{route=\"r\",le=\"0.001\"} 1\n\
             t_seconds_bucket{route=\"r\",le=\"0.01\"} 2\n\
             t_seconds_bucket{route=\"r\",le=\"+Inf\"} 3\n\
             t_seconds_sum{route=\"r\"} 1.0055\n\
             t_seconds_count{route=\"r\"} 3\n"
        );
    }

    #[test]
    fn gauges_and_single_series() {
        let g = IntGauge::default();
        g.set(-4);
        let mut out = String::new();
        single(&mut out, "g", "A gauge.", "gauge", g.get());
        assert_eq!(out, "# HELP g A gauge.\n# TYPE g gauge\ng -4\n");
    }
}
