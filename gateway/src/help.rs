//! The settings reference `tollgate-gateway --help` prints: every setting of the file with its
//! unit, accepted values and default, how the environment overrides it, and what SIGHUP does.
//! A unit test checks that every setting listed here is one the parser accepts.

/// Printed after the options by `--help`.
pub const AFTER_HELP: &str = "\
CONFIGURATION
  Defaults, then the TOML file (--config), then environment variables
  TOLLGATE_<SECTION>_<KEY> for the [gateway] and [backend] sections, e.g.
  TOLLGATE_GATEWAY_LISTEN=0.0.0.0:8080, TOLLGATE_GATEWAY_WORKERS=4,
  TOLLGATE_BACKEND_FEED_TOKEN=... (keep secrets in the environment). An environment value is
  text converted by the setting it overrides: numbers in decimal, booleans true/false (or
  1/0), lists as a,b or [\"a\", \"b\"]. Every problem is one line naming the setting or the
  variable; nothing is created or bound until the whole configuration is valid (exit 2).

[gateway]
  listen = \"127.0.0.1:8080\"         IP:port of the proxy listener (port 0: any free port)
  metrics_listen = \"127.0.0.1:9464\" IP:port of /metrics (Prometheus) and /health
  data_dir = \"./data\"               key snapshot, usage journal, quota state, gateway id
                                      (and the embedded backend's database and service token)
  workers = <cores>                 runtime threads, 1..=1024 (1 = single-threaded)
  gateway_id = <generated>          names this gateway's usage batches: 1-64 of A-Z a-z 0-9 - _
  usage_flush_ms = 1000             usage shipped at least this often, milliseconds, 10..=1000
  max_header_bytes = 65536          request head limit, bytes, 8192..=1048576
  max_body_bytes = 67108864         default request body limit per route, bytes; 0 = unlimited
  client_header_timeout_ms = 10000  headers must arrive within this; idle connections closed
                                      after it, milliseconds, 100..=600000
  upstream_connect_timeout_ms = 2000  milliseconds, 1..=600000
  upstream_timeout_ms = 30000       upstream response headers within this, else 504 (refunded),
                                      milliseconds, 1..=3600000
  upstream_idle_timeout_ms = 90000  idle pooled upstream connections closed after, milliseconds
  upstream_pool_max_idle = 1024     idle keep-alive connections kept per upstream, 0..=1048576
  unhealthy_cooldown_ms = 5000      an upstream failing connects is skipped this long, ms
  shutdown_timeout_ms = 10000       SIGTERM: open connections drained at most this long, ms
  legacy_ratelimit_headers = false  also send X-RateLimit-Limit/-Remaining/-Reset
  feed_wait_secs = 25               key feed long-poll, seconds, 1..=60
  redis_url = <none>                redis://host:port (or rediss://, unix://): quota state shared
                                      by a fleet; /ready reports it when unreachable
  redis_failure = \"local\"           Redis unreachable: \"local\" (per-instance limits) or
                                      \"closed\" (503 quota_unavailable)
  redis_timeout_ms = 250            longest wait for one Redis answer, milliseconds, 1..=10000
  json_logs = false                 JSON log lines instead of text (on stderr)
  fast_lane = true                  plain HTTP/1.1 on the lean path; false = everything via hyper
  max_connections = <from ulimit>   client connections held at most (least recently active idle
                                      one closed at the cap), 1..=10000000
  tls_cert_file, tls_key_file       PEM certificate chain and key: the listener speaks TLS
  trusted_proxies = []              addresses or CIDR blocks whose forwarding headers are trusted

[backend]
  mode = \"embedded\"                 \"embedded\" (the backend runs in this process) or \"remote\"
  url = <none>                      remote: the backend's http:// or https:// base URL
  feed_token = <none>               remote: token for the key feed and usage (use
                                      TOLLGATE_BACKEND_FEED_TOKEN)
  ca_file = <system roots>          remote, https url: PEM CA bundle to trust
  embedded: every setting of tollgate-backend's [backend] (see tollgate-backend --help);
  data_dir defaults to the gateway's.

[[plans]]  (the catalogue; defaults free, pro, enterprise; a \"free\" plan is required)
  id, name, currency = \"EUR\", price_monthly_minor, price_yearly_minor (minor units: 2900 =
  29.00), rate_limit_per_minute, daily_limit (units), max_keys_per_user, features = [..],
  provider_prices = { stripe_monthly = \"price_...\" }

[[routes]]  (longest prefix wins; host routes before host-less ones)
  prefix = \"/v1\"                    path prefix (or host = \"api.example.com\")
  name = <prefix>                   label in metrics and logs
  upstreams = [\"http://h:p\", ..]    round-robin with passive health; upstream = \"builtin:echo\"
                                      answers with a small JSON echo
  auth = \"key\"                      \"key\" or \"none\"
  plans = <all>                     plan ids allowed; others get 403 plan_not_allowed
  cost = 1                          quota units per request, 1..=1000000
  key_header = \"any\"                \"x-api-key\", \"authorization\" (Bearer) or \"any\"
  timeout_ms = <upstream_timeout_ms>  milliseconds
  max_body_bytes = <gateway's>      bytes; 0 = unlimited
  strip_prefix = false              true: /v1/users is forwarded as /users
  preserve_host = false             true: forward the client's Host header
  tls_ca_file, tls_client_cert_file, tls_client_key_file   https upstreams: trust, client cert

SIGNALS
  SIGHUP   re-read the file: routes and plans (and the embedded backend's plans) are replaced
           without dropping connections; a file with any error is refused, logged line by line,
           and the running configuration stays. Other settings need a restart.
  SIGTERM  stop accepting, drain connections (shutdown_timeout_ms), flush usage, save state.

ENVIRONMENT
  TOLLGATE_CONFIG          the configuration file (as --config)
  TOLLGATE_SERVICE_TOKEN   management token (embedded); else generated into data_dir
  RUST_LOG                 log filter, e.g. info (default), debug or warn,tollgate_gateway=debug
  STRIPE_*, PAYPAL_*, SEPA_*   payment providers of the embedded backend
";

#[cfg(test)]
mod tests {
    /// Every `key = ...` documented under `[gateway]` is a setting the parser accepts.
    #[test]
    fn documented_gateway_settings_exist() {
        let section = super::AFTER_HELP
            .split("[gateway]\n")
            .nth(1)
            .and_then(|s| s.split("\n\n").next())
            .unwrap_or_default();
        let mut keys = Vec::new();
        for line in section.lines() {
            let Some(rest) = line.strip_prefix("  ") else {
                continue;
            };
            if rest.starts_with(' ') {
                continue;
            }
            let head = rest.split(" = ").next().unwrap_or_default();
            let head = head.split("  ").next().unwrap_or_default();
            keys.extend(head.split(", ").map(str::trim).filter(|k| !k.is_empty()));
        }
        assert!(keys.len() >= 25, "{keys:?}");
        for key in keys {
            let text = format!("[gateway]\n{key} = 12345678\n");
            let errors = crate::config::parse(&text).err().unwrap_or_default();
            assert!(
                !errors.iter().any(|e| e.contains("unknown setting")),
                "{key}: {errors:?}"
            );
        }
    }
}
