//! Redis quota state shared by a fleet of gateways.
//!
//! Each decision is one Lua script (EVALSHA; the `redis` crate reloads it on NOSCRIPT) that
//! rolls, checks and counts atomically, so limits hold across every gateway sharing the Redis:
//! no read-then-write from the gateway. The script keeps exactly the in-process semantics
//! ([`super::local`]): a sliding log of `(first_ms, last_ms, units)` slots (one millisecond per
//! slot up to [`super::local::EXACT_LIMIT`] per minute, coarser slots above, only ever
//! under-admitting) and a day counter. An API key's whole state is one Redis hash,
//! `<prefix>:{<key id>}:q`, with fields `w` (units in the window), `d` (UTC day number), `du`
//! (units that day) and `l` (the log: slots packed as three little-endian doubles, oldest
//! first); it expires by itself after its day and window have passed. A decision is one
//! `HMGET` and one `HSET` inside the script: Redis spends ~1 µs per call, more than the Lua.
//!
//! Time comes from the gateway's injected clock (tests move it). Gateways of a fleet must run
//! NTP-synchronised clocks; the script never lets a key's log go backwards in time, so a gateway
//! whose clock lags can only count its units slightly longer.
//!
//! Requests share one multiplexed connection ([`redis::aio::ConnectionManager`]): concurrent
//! scripts are pipelined on it, and it reconnects by itself when Redis comes back.

use super::local::coarse_granularity;
use super::{Clock, Decision, Exceeded, QuotaError, QuotaStore, Reservation, Usage};
use crate::keys::KeyId;
use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use redis::Script;
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::plans::Limits;

/// KEYS: the key's state hash. ARGV: now_ms, per_minute, per_day, cost, granularity_ms.
/// Returns {1, at_ms, minute_remaining, reset_ms, day_used, day_remaining} when admitted,
/// {0, exceeded (1 minute, 2 day), wait_ms, minute_remaining, reset_ms, day_used, day_remaining}
/// when rejected.
const RESERVE: &str = r#"
local W = 60000
local DAY = 86400000
local S = 24
local now = tonumber(ARGV[1])
local per_minute = tonumber(ARGV[2])
local per_day = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local gran = tonumber(ARGV[5])
-- One read and one write of the key's hash: every redis.call costs about a microsecond of
-- the server's one thread, more than the Lua around it.
local st = redis.call('HMGET', KEYS[1], 'w', 'd', 'du', 'l')
local inw = tonumber(st[1]) or 0
local day = tonumber(st[2]) or -1
local du = tonumber(st[3]) or 0
local log = st[4] or ''
local n = #log / S
if n > 0 then
  local _, bl = struct.unpack('<dd', log, (n - 1) * S + 1)
  -- A clock that lags (another gateway's, or a step back) must not reorder the log.
  if now < bl then now = bl end
end
-- Drop the slots that left the window (oldest first).
local expired = 0
while expired < n do
  local _, l, u = struct.unpack('<ddd', log, expired * S + 1)
  if l + W > now then break end
  inw = inw - math.min(u, inw)
  expired = expired + 1
end
if expired > 0 then
  log = string.sub(log, expired * S + 1)
  n = n - expired
end
if n == 0 then inw = 0 end
local today = math.floor(now / DAY)
local newday = day ~= today
if newday then day = today; du = 0 end
local function save()
  redis.call('HSET', KEYS[1], 'w', inw, 'd', day, 'du', du, 'l', log)
  if newday then
    -- Set once a day, relative, so it holds whatever clock the gateway runs on: past the
    -- window and the day (the next day's first request sets it again).
    local midnight = (today + 1) * DAY
    redis.call('PEXPIRE', KEYS[1], math.max(midnight - now, W) + 60000)
  end
end
local function reset_ms()
  if n == 0 then return 0 end
  local _, l = struct.unpack('<dd', log, 1)
  return l + W - now
end
local minute_ok = inw + cost <= per_minute
local day_ok = du + cost <= per_day
if minute_ok and day_ok then
  local merged = false
  if n > 0 then
    local at = (n - 1) * S
    local f, l, u = struct.unpack('<ddd', log, at + 1)
    if math.floor(f / gran) == math.floor(now / gran) then
      log = string.sub(log, 1, at) .. struct.pack('<ddd', f, math.max(l, now), u + cost)
      merged = true
    end
  end
  if not merged then
    log = log .. struct.pack('<ddd', now, now, cost)
    n = n + 1
  end
  inw = inw + cost
  du = du + cost
  save()
  return {1, now, math.max(per_minute - inw, 0), reset_ms(), du, math.max(per_day - du, 0)}
end
local minute_wait = 0
if not minute_ok then
  minute_wait = W
  if cost <= per_minute then
    local need = inw + cost - per_minute
    local freed = 0
    for i = 0, n - 1 do
      local _, l, u = struct.unpack('<ddd', log, i * S + 1)
      freed = freed + u
      if freed >= need then
        minute_wait = l + W - now
        break
      end
    end
  end
end
local day_wait = 0
if not day_ok then day_wait = (today + 1) * DAY - now end
save()
local exceeded = 1
if minute_ok then exceeded = 2 end
return {0, exceeded, math.max(minute_wait, day_wait), math.max(per_minute - inw, 0), reset_ms(), du, math.max(per_day - du, 0)}
"#;

/// KEYS: the key's state hash. ARGV: at_ms, cost, day. Gives the units back to the slot whose
/// span holds `at_ms` (if still in the window) and to the day counter (if still that day).
const REFUND: &str = r#"
local S = 24
local at = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local day = tonumber(ARGV[3])
local st = redis.call('HMGET', KEYS[1], 'w', 'd', 'du', 'l')
if not st[2] then return 0 end
local inw = tonumber(st[1]) or 0
local du = tonumber(st[3]) or 0
if tonumber(st[2]) == day then
  du = du - math.min(cost, du)
end
local log = st[4] or ''
for i = 0, #log / S - 1 do
  local f, l, u = struct.unpack('<ddd', log, i * S + 1)
  if f <= at and at <= l then
    local back = math.min(cost, u)
    log = string.sub(log, 1, i * S) .. struct.pack('<ddd', f, l, u - back) .. string.sub(log, (i + 1) * S + 1)
    inw = inw - math.min(back, inw)
    break
  end
end
redis.call('HSET', KEYS[1], 'w', inw, 'du', du, 'l', log)
return 1
"#;

pub struct RedisQuota {
    client: redis::Client,
    /// The multiplexed connection, made on first use (Redis may be down when a gateway starts).
    conn: ArcSwapOption<ConnectionManager>,
    connecting: tokio::sync::Mutex<()>,
    reserve: Script,
    refund: Script,
    clock: Arc<dyn Clock>,
    /// Key namespace (`tg` in production; tests use a random one per test).
    prefix: String,
    timeout: Duration,
}

fn err(e: impl std::fmt::Display) -> QuotaError {
    QuotaError(e.to_string())
}

impl RedisQuota {
    /// Checks the URL; the connection is made on first use and remade after failures by
    /// the connection manager. Scripts go out as EVALSHA and are loaded on NOSCRIPT.
    pub fn new(
        url: &str,
        clock: Arc<dyn Clock>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<RedisQuota, QuotaError> {
        let client = redis::Client::open(url).map_err(err)?;
        Ok(RedisQuota {
            client,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
            reserve: Script::new(RESERVE),
            refund: Script::new(REFUND),
            clock,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    /// The shared connection, connecting once if there is none yet (one attempt at a time;
    /// concurrent callers fail fast instead of queueing behind it).
    async fn connection(&self) -> Result<ConnectionManager, QuotaError> {
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let Ok(_guard) = self.connecting.try_lock() else {
            return Err(QuotaError("connecting to Redis".to_string()));
        };
        if let Some(c) = self.conn.load_full() {
            return Ok((*c).clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let manager = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| {
            QuotaError(format!(
                "connecting to Redis timed out after {:?}",
                self.timeout * 2
            ))
        })?
        .map_err(err)?;
        self.conn.store(Some(Arc::new(manager.clone())));
        Ok(manager)
    }

    /// Connects now (used at start to say early whether Redis answers).
    pub async fn ping(&self) -> Result<(), QuotaError> {
        let mut conn = self.connection().await?;
        let _: String =
            tokio::time::timeout(self.timeout, redis::cmd("PING").query_async(&mut conn))
                .await
                .map_err(|_| QuotaError("Redis PING timed out".to_string()))?
                .map_err(err)?;
        Ok(())
    }

    /// The Redis key of an API key's quota state (braces: a hash tag, for Redis Cluster).
    fn state_key(&self, key: KeyId) -> String {
        format!("{}:{{{:016x}}}:q", self.prefix, key.0)
    }

    pub async fn decide(
        &self,
        key: KeyId,
        limits: Limits,
        cost: u64,
    ) -> Result<Decision, QuotaError> {
        let now = self.clock.now_ms();
        let state = self.state_key(key);
        let mut inv = self.reserve.key(state);
        inv.arg(now)
            .arg(limits.per_minute)
            .arg(limits.per_day)
            .arg(cost)
            .arg(coarse_granularity(limits.per_minute));
        let out: Vec<i64> = self.invoke(&inv).await?;
        let u = |i: usize| out.get(i).copied().unwrap_or(0);
        let secs = |ms: i64| super::ceil_secs(ms);
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        match out.first() {
            Some(1) if out.len() == 6 => Ok(Decision::Admitted {
                reservation: Reservation {
                    key,
                    at_ms: u(1),
                    cost,
                    local: false,
                },
                usage: Usage {
                    minute_remaining: n(u(2)),
                    minute_reset_secs: secs(u(3)),
                    day_used: n(u(4)),
                    day_remaining: n(u(5)),
                },
            }),
            Some(0) if out.len() == 7 => Ok(Decision::Rejected {
                exceeded: if u(1) == 2 {
                    Exceeded::Day
                } else {
                    Exceeded::Minute
                },
                retry_after_secs: secs(u(2)),
                usage: Usage {
                    minute_remaining: n(u(3)),
                    minute_reset_secs: secs(u(4)),
                    day_used: n(u(5)),
                    day_remaining: n(u(6)),
                },
            }),
            _ => Err(QuotaError(format!(
                "unexpected reply from the quota script: {out:?}"
            ))),
        }
    }

    pub async fn give_back(&self, r: Reservation) -> Result<(), QuotaError> {
        let state = self.state_key(r.key);
        let mut inv = self.refund.key(state);
        inv.arg(r.at_ms).arg(r.cost).arg(r.day());
        let _: i64 = self.invoke(&inv).await?;
        Ok(())
    }

    /// Runs a script on the shared connection, within the configured timeout.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, QuotaError> {
        let mut conn = self.connection().await?;
        tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn))
            .await
            .map_err(|_| QuotaError(format!("Redis did not answer within {:?}", self.timeout)))?
            .map_err(err)
    }
}

impl QuotaStore for RedisQuota {
    async fn reserve(&self, key: KeyId, limits: Limits, cost: u64) -> Result<Decision, QuotaError> {
        self.decide(key, limits, cost).await
    }

    async fn refund(&self, reservation: Reservation) -> Result<(), QuotaError> {
        self.give_back(reservation).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{conformance, ManualClock};

    /// A store on `TOLLGATE_TEST_REDIS_URL` with its own key namespace, or `None` (loudly)
    /// when it is not set outside CI. Under `CI=true` Redis is mandatory.
    async fn make(clock: Arc<ManualClock>) -> Option<RedisQuota> {
        let url = match std::env::var("TOLLGATE_TEST_REDIS_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("CI=true but TOLLGATE_TEST_REDIS_URL is not set: the Redis quota suite is mandatory in CI");
                }
                eprintln!(
                    "SKIPPED: Redis quota conformance test (set TOLLGATE_TEST_REDIS_URL to run it)"
                );
                return None;
            }
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let prefix = format!("tgtest{}x{nanos}", std::process::id());
        let store = RedisQuota::new(&url, clock, &prefix, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{e}"));
        store.ping().await.unwrap_or_else(|e| {
            panic!("TOLLGATE_TEST_REDIS_URL is set but Redis is unreachable: {e}")
        });
        Some(store)
    }

    conformance::suite!(async make);

    /// A key's state expires by itself: after its day (the TTL is set at the day's first
    /// request, relative) and never before its window has passed.
    #[tokio::test]
    async fn state_expires_on_its_own() {
        let clock = Arc::new(ManualClock::at(conformance::NOON));
        let Some(store) = make(clock.clone()).await else {
            return;
        };
        let limits = Limits {
            per_minute: 5,
            per_day: 10,
        };
        assert!(matches!(
            store.decide(KeyId(77), limits, 1).await,
            Ok(Decision::Admitted { .. })
        ));
        let mut conn = store.connection().await.unwrap_or_else(|e| panic!("{e}"));
        let ttl = |conn: &mut ConnectionManager| {
            let mut conn = conn.clone();
            let key = store.state_key(KeyId(77));
            async move {
                redis::cmd("PTTL")
                    .arg(&key)
                    .query_async::<i64>(&mut conn)
                    .await
                    .unwrap_or(-3)
            }
        };
        // Noon: half a day and a minute.
        let noon_ttl = ttl(&mut conn).await;
        assert!(
            noon_ttl > 43_200_000 && noon_ttl <= 43_260_000,
            "ttl {noon_ttl}"
        );
        // The first request of the next day, 10 s before its midnight: the window and a minute.
        clock.set(conformance::NOON + conformance::DAY_MS / 2 + conformance::DAY_MS - 10_000);
        assert!(matches!(
            store.decide(KeyId(77), limits, 1).await,
            Ok(Decision::Admitted { .. })
        ));
        let late_ttl = ttl(&mut conn).await;
        assert!(late_ttl > 100_000 && late_ttl <= 120_000, "ttl {late_ttl}");
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_hang() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::at(conformance::NOON));
        let store = RedisQuota::new(
            "redis://127.0.0.1:1",
            clock,
            "x",
            Duration::from_millis(200),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let started = std::time::Instant::now();
        let r = store
            .decide(
                KeyId(1),
                Limits {
                    per_minute: 1,
                    per_day: 1,
                },
                1,
            )
            .await;
        assert!(r.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
