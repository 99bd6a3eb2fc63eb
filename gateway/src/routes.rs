//! The route table: which upstreams serve a request, by host and path prefix, with round-robin
//! over healthy upstreams. Built from `[[routes]]` at start and on every SIGHUP, then swapped in
//! whole (`arc-swap`), so a request sees one consistent table.
//!
//! Passive health: an upstream whose connect fails is skipped for `unhealthy_cooldown`; when all
//! of a route's upstreams are cooling down, round-robin goes on over all of them.
//!
//! A route with an `https://` upstream gets its own pooled client ([`Route::client`]) with the
//! route's TLS configuration (see [`crate::tls`]), and is never on the fast lane: the lane
//! speaks plain TCP to upstreams. The lane's idle connections are not here: the lane keeps them
//! per upstream address, so a reloaded table carries no sockets.

use crate::config::{Auth, RouteConfig, Upstream};
use crate::headers::KeySource;
use crate::limits::UpstreamLimits;
use crate::metrics::{Metrics, RouteMetrics};
use crate::tls::HttpClient;
use http::uri::{Authority, Scheme};
use http::HeaderValue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Target {
    pub kind: Upstream,
    pub scheme: Scheme,
    pub authority: Option<Authority>,
    /// `Host` sent upstream (the upstream's own authority, as nginx's `proxy_pass` does).
    pub host: Option<HeaderValue>,
    /// Milliseconds since `epoch` until which this upstream is skipped.
    down_until: AtomicU64,
    /// For an `http://` upstream, where its address is in [`RouteTable::addrs`] (so the fast
    /// lane finds its connections by index, not by hashing the address per request).
    pub addr: Option<usize>,
}

pub struct Route {
    pub cfg: RouteConfig,
    pub targets: Box<[Target]>,
    /// Every upstream is plain HTTP, so the fast lane can proxy this route (see `h1`).
    pub fast: bool,
    /// This route's own client when it has https upstreams (its TLS settings, its pool);
    /// `None`: the gateway's shared client.
    pub client: Option<HttpClient>,
    /// Segments in the prefix: a `..` may not climb above them (see [`crate::path`]).
    pub depth: usize,
    next: AtomicUsize,
    pub metrics: Arc<RouteMetrics>,
    /// [`RouteTable::id`] of the table this route belongs to.
    pub table: u64,
    epoch: Instant,
    cooldown: Duration,
}

impl Route {
    pub fn needs_key(&self) -> bool {
        self.cfg.auth == Auth::Key
    }

    pub fn key_source(&self) -> KeySource {
        self.cfg.key_source
    }

    pub fn allows(&self, plan: &str) -> bool {
        self.cfg
            .plans
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == plan))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The next upstream in round-robin order, skipping those cooling down if any is healthy.
    pub fn pick(&self) -> &Target {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return &self.targets[0];
        }
        let now = self.now_ms();
        for i in 0..n {
            let t = &self.targets[(start + i) % n];
            if t.down_until.load(Ordering::Relaxed) <= now {
                return t;
            }
        }
        &self.targets[start % n]
    }

    /// Marks `target` as failing connects.
    pub fn mark_down(&self, target: &Target) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(self.cooldown.as_millis()).unwrap_or(0));
        target.down_until.store(until, Ordering::Relaxed);
    }

    /// `path` matches when it equals the prefix or continues it at a segment boundary.
    fn matches_path(&self, path: &str) -> bool {
        let p = self.cfg.prefix.as_str();
        path.starts_with(p)
            && (p.ends_with('/')
                || path.len() == p.len()
                || path.as_bytes().get(p.len()) == Some(&b'/'))
    }
}

pub struct RouteTable {
    /// Host routes first, then by prefix length, longest first.
    routes: Vec<Arc<Route>>,
    /// The distinct `http://` upstream addresses, each once ([`Target::addr`] indexes this).
    addrs: Vec<Authority>,
    id: u64,
}

/// Numbers the tables built by this process, so an index into one table's [`RouteTable::addrs`]
/// is never read against another's.
static TABLES: AtomicU64 = AtomicU64::new(1);

impl RouteTable {
    pub fn build(
        cfgs: &[RouteConfig],
        metrics: &Metrics,
        cooldown: Duration,
        upstream: UpstreamLimits,
    ) -> RouteTable {
        let epoch = Instant::now();
        let id = TABLES.fetch_add(1, Ordering::Relaxed);
        let mut addrs: Vec<Authority> = Vec::new();
        let mut routes: Vec<Arc<Route>> = cfgs
            .iter()
            .map(|c| {
                let targets = c
                    .upstreams
                    .iter()
                    .map(|u| {
                        let (scheme, authority) = match u {
                            Upstream::Http { authority } => (Scheme::HTTP, Some(authority)),
                            Upstream::Https { authority } => (Scheme::HTTPS, Some(authority)),
                            Upstream::Echo => (Scheme::HTTP, None),
                        };
                        let host = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
                        let addr = match u {
                            Upstream::Http { authority } => {
                                Some(addrs.iter().position(|a| a == authority).unwrap_or_else(
                                    || {
                                        addrs.push(authority.clone());
                                        addrs.len() - 1
                                    },
                                ))
                            }
                            Upstream::Https { .. } | Upstream::Echo => None,
                        };
                        Target {
                            kind: u.clone(),
                            scheme,
                            authority: authority.cloned(),
                            host,
                            down_until: AtomicU64::new(0),
                            addr,
                        }
                    })
                    .collect::<Box<[Target]>>();
                let fast = targets
                    .iter()
                    .all(|t| matches!(t.kind, Upstream::Http { .. }));
                let client = c
                    .tls
                    .clone()
                    .map(|tls| crate::tls::client(upstream, Some(tls)));
                Arc::new(Route {
                    cfg: c.clone(),
                    targets,
                    fast,
                    client,
                    depth: crate::path::depth(&c.prefix),
                    next: AtomicUsize::new(0),
                    metrics: metrics.route(&c.name),
                    table: id,
                    epoch,
                    cooldown,
                })
            })
            .collect();
        routes.sort_by_key(|r| (r.cfg.host.is_none(), std::cmp::Reverse(r.cfg.prefix.len())));
        RouteTable { routes, addrs, id }
    }

    /// This table's number, unique in the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The distinct `http://` upstream addresses of the table.
    pub fn addrs(&self) -> &[Authority] {
        &self.addrs
    }

    /// The route for a request's host (without port, any case) and path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host = host.map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| {
                if port.bytes().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    h
                }
            })
        });
        self.routes.iter().find(|r| {
            let host_ok = match (&r.cfg.host, host) {
                (None, _) => true,
                (Some(want), Some(have)) => want.eq_ignore_ascii_case(have),
                (Some(_), None) => false,
            };
            host_ok && r.matches_path(path)
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> RouteTable {
        let cfg = crate::config::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        RouteTable::build(
            &cfg.routes,
            &Metrics::new(),
            Duration::from_secs(5),
            UpstreamLimits::default(),
        )
    }

    #[test]
    fn longest_prefix_and_host_win() {
        let t = table(
            r#"
[[routes]]
name = "root"
prefix = "/"
upstream = "builtin:echo"
[[routes]]
name = "v1"
prefix = "/v1"
upstream = "builtin:echo"
[[routes]]
name = "v1-users"
prefix = "/v1/users"
upstream = "builtin:echo"
[[routes]]
name = "host"
host = "api.example.com"
upstream = "builtin:echo"
"#,
        );
        let name =
            |h: Option<&str>, p: &str| t.find(h, p).map(|r| r.cfg.name.clone()).unwrap_or_default();
        assert_eq!(name(None, "/v1/users/7"), "v1-users");
        assert_eq!(name(None, "/v1/usersx"), "v1");
        assert_eq!(name(None, "/v1"), "v1");
        assert_eq!(name(None, "/v10"), "root");
        assert_eq!(name(Some("API.example.com:8080"), "/v1/users"), "host");
        assert_eq!(name(Some("other"), "/x"), "root");
    }

    #[test]
    fn round_robin_skips_down_upstreams() {
        let t = table("[[routes]]\nprefix = \"/a\"\nupstreams = [\"http://127.0.0.1:1\", \"http://127.0.0.1:2\", \"http://127.0.0.1:3\"]\n");
        let r = t
            .find(None, "/a")
            .map(Arc::clone)
            .unwrap_or_else(|| panic!("route"));
        let port = |t: &Target| t.authority.as_ref().and_then(|a| a.port_u16()).unwrap_or(0);
        let seen: Vec<u16> = (0..3).map(|_| port(r.pick())).collect();
        assert_eq!(seen, vec![1, 2, 3]);
        r.mark_down(&r.targets[1]);
        let seen: Vec<u16> = (0..4).map(|_| port(r.pick())).collect();
        assert!(!seen.contains(&2), "{seen:?}");
    }
}
