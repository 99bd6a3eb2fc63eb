//! Criterion micro-benchmarks of the gateway's request-path pieces, through its public API.
//!
//! - `key/extract_hash_lookup`: phase 1 + 2 — the key from `X-API-Key`, SHA-256, replica probe
//!   (10 k and 1 M keys, a random key per iteration, so caches see what a server sees);
//! - `quota/decide`: phase 4 — the local store's check-and-count for a random key of 10 k, with
//!   never-rejecting limits (the state the load test runs in);
//! - `headers/*`: the header work of phases 5–7 — hop-by-hop stripping and identity headers on
//!   a typical request, the `RateLimit` value, and a JSON error response.
//!
//! Run: `CARGO_TARGET_DIR=/work/target-bench cargo bench -p tollgate-benches`.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::sync::Arc;
use tollgate_benches::{Rng, NEVER_REJECT};
use tollgate_gateway::config::KeySource;
use tollgate_gateway::headers::{error_response, extract_key, strip_hop_headers};
use tollgate_gateway::keys::{Found, KeyId, Replica, Tables};
use tollgate_gateway::metrics::Outcome;
use tollgate_gateway::quota::local::LocalQuota;
use tollgate_gateway::quota::{Decision, SystemClock};
use tollgate_protocol::feed::{FeedKey, KeyState};
use tollgate_protocol::keys::{plausible_key, KeyHash};
use tollgate_protocol::plans::Limits;

const LIMITS: Limits = Limits {
    per_minute: NEVER_REJECT,
    per_day: NEVER_REJECT,
};

fn key_text(n: usize) -> String {
    format!("cli_free_{:0>43}", n)
}

fn replica_with(n: usize) -> Replica {
    let r = Replica::new();
    let t = Tables::with_capacity(n);
    for i in 0..n {
        let id = u64::try_from(i).unwrap_or(0);
        r.apply_into(
            &t,
            &FeedKey {
                key_id: format!("key_{id:016x}"),
                user_id: format!("bench-user-{i}"),
                plan: "free".into(),
                hash: KeyHash::of(&key_text(i)),
                previous: None,
                state: KeyState::Active,
                expires_at: None,
                limits: LIMITS,
                seq: id + 1,
            },
        );
    }
    r.install(t, "bench", u64::try_from(n).unwrap_or(0));
    r
}

/// Request headers as wrk sends them, with the key in `X-API-Key`.
fn request_headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
    h.insert(
        HeaderName::from_static("x-api-key"),
        HeaderValue::from_str(key).unwrap_or(HeaderValue::from_static("x")),
    );
    h
}

fn key_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("key");
    g.throughput(Throughput::Elements(1));
    for n in [10_000usize, 1_000_000] {
        let replica = replica_with(n);
        let headers: Vec<HeaderMap> = (0..n.min(10_000))
            .map(|i| request_headers(&key_text(i * (n / n.min(10_000)))))
            .collect();
        let mut rng = Rng::new(42);
        g.bench_function(format!("extract_hash_lookup/{n}"), |b| {
            b.iter(|| {
                let h = &headers[rng.below(headers.len())];
                let (key, _) = extract_key(h, KeySource::Either)
                    .unwrap_or(("", tollgate_gateway::headers::KeyHeader::ApiKey));
                if !plausible_key(key) {
                    return false;
                }
                matches!(replica.find(&KeyHash::of(key), 0), Found::Key(_))
            })
        });
    }
    let h = request_headers(&key_text(7));
    g.bench_function("sha256_only", |b| {
        b.iter(|| {
            KeyHash::of(black_box(
                "cli_free_0000000000000000000000000000000000000000007",
            ))
        })
    });
    g.bench_function("extract_only", |b| {
        b.iter(|| extract_key(black_box(&h), KeySource::Either).map(|k| k.0.len()))
    });
    g.finish();
}

fn quota(c: &mut Criterion) {
    let mut g = c.benchmark_group("quota");
    g.throughput(Throughput::Elements(1));
    let q = LocalQuota::new(Arc::new(SystemClock::new()));
    let mut rng = Rng::new(7);
    // Warm: every key has a log, as after the first second of a load test.
    for i in 0..10_000u64 {
        let _ = q.decide(KeyId(i), LIMITS, 1);
    }
    g.bench_function("decide/10k_keys", |b| {
        b.iter(|| {
            let key = KeyId(u64::try_from(rng.below(10_000)).unwrap_or(0));
            matches!(q.decide(key, LIMITS, 1), Decision::Admitted { .. })
        })
    });
    g.bench_function("decide_then_refund/10k_keys", |b| {
        b.iter(|| {
            let key = KeyId(u64::try_from(rng.below(10_000)).unwrap_or(0));
            if let Decision::Admitted { reservation, .. } = q.decide(key, LIMITS, 1) {
                q.give_back(reservation);
            }
        })
    });
    g.finish();
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("headers");
    g.throughput(Throughput::Elements(1));
    let replica = replica_with(1);
    let Found::Key(entry) = replica.find(&KeyHash::of(&key_text(0)), 0) else {
        return;
    };
    let base = {
        let mut h = request_headers(&key_text(0));
        h.insert(header::USER_AGENT, HeaderValue::from_static("wrk"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        h
    };
    // What the gateway does to a request's headers before forwarding it.
    g.bench_function("upstream_rewrite", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| {
                strip_hop_headers(h, false);
                h.remove("x-tollgate-key-id");
                h.remove("x-tollgate-user-id");
                h.remove("x-tollgate-plan");
                h.remove("x-api-key");
                h.insert("x-tollgate-key-id", entry.id_header.clone());
                h.insert("x-tollgate-user-id", entry.user_header.clone());
                h.insert("x-tollgate-plan", entry.tier.plan_header.clone());
                h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8090"));
            },
            BatchSize::SmallInput,
        )
    });
    // What it adds to the response: RateLimit-Policy (precomputed) and RateLimit (rendered).
    g.bench_function("ratelimit_response", |b| {
        b.iter_batched_ref(
            HeaderMap::new,
            |h| {
                h.insert("ratelimit-policy", entry.tier.policy.clone());
                let v = format!(
                    "\"minute\";r={};t={}",
                    black_box(999_999_123u64),
                    black_box(59u64)
                );
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert("ratelimit", v);
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("error_response_json", |b| {
        b.iter(|| error_response(Outcome::RateLimited, "rate limit exceeded, retry later"))
    });
    g.finish();
}

criterion_group!(benches, key_lookup, quota, headers);
criterion_main!(benches);
