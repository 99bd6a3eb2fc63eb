//! The SQL store, on SQLite or PostgreSQL through sqlx's `Any` driver. SQL is written once in
//! the subset both speak (`$n` placeholders, `ON CONFLICT`, `RETURNING`); [`Dialect`] holds the
//! rest (DDL, row locks, connection set-up).
//!
//! SQLite runs with one connection (WAL): writes are serialised anyway, and a single writer
//! never meets `SQLITE_BUSY`. PostgreSQL takes a pool; the single `feed_seq` row is locked by
//! every transaction that bumps a key's sequence, so sequences commit in order and a gateway
//! reading `seq > since` never skips a change that commits later with a lower number.

use super::*;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Row, Transaction};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;
use tollgate_protocol::feed::UsageEntry;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// Suffix that locks the rows a SELECT reads until the transaction ends.
    fn for_update(&self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE",
        }
    }
}

pub struct SqlStore {
    pub(crate) pool: AnyPool,
    dialect: Dialect,
    db_id: String,
}

pub(crate) fn db_err(context: &str, e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::RowNotFound => StoreError::NotFound(context.to_string()),
        sqlx::Error::Database(d)
            if d.is_unique_violation()
                || d.is_foreign_key_violation()
                || d.is_check_violation() =>
        {
            StoreError::Conflict(context.to_string())
        }
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            StoreError::Unavailable(format!("{context}: {e}"))
        }
        _ => StoreError::Internal(format!("{context}: {e}")),
    }
}

pub(crate) fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Internal(format!("{what} out of range")))
}

fn to_u64(v: i64, what: &str) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Internal(format!("{what} negative in database")))
}

fn opt_u64(v: Option<i64>, what: &str) -> StoreResult<Option<u64>> {
    v.map(|v| to_u64(v, what)).transpose()
}

fn opt_i64(v: Option<u64>, what: &str) -> StoreResult<Option<i64>> {
    v.map(|v| to_i64(v, what)).transpose()
}

const KEY_COLUMNS: &str = "key_id, user_id, name, plan, key_hash, start, prev_hash, prev_until, created_at, \
     last_used, revoked_at, expires_at, rate_limit_override, daily_limit_override, metadata, usage_total, seq";

fn key_from_row(r: &AnyRow) -> StoreResult<KeyRecord> {
    let g = |e: sqlx::Error| StoreError::Internal(format!("decoding key row: {e}"));
    let hash_text: String = r.try_get("key_hash").map_err(g)?;
    let prev: Option<String> = r.try_get("prev_hash").map_err(g)?;
    Ok(KeyRecord {
        key_id: r.try_get("key_id").map_err(g)?,
        user_id: r.try_get("user_id").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        plan: r.try_get("plan").map_err(g)?,
        hash: KeyHash::from_hex(&hash_text)
            .ok_or_else(|| StoreError::Internal("bad key hash in database".into()))?,
        start: r.try_get("start").map_err(g)?,
        previous_hash: prev.as_deref().and_then(KeyHash::from_hex),
        previous_until: r.try_get("prev_until").map_err(g)?,
        created_at: r.try_get("created_at").map_err(g)?,
        last_used: r.try_get("last_used").map_err(g)?,
        revoked_at: r.try_get("revoked_at").map_err(g)?,
        expires_at: r.try_get("expires_at").map_err(g)?,
        rate_limit_override: opt_u64(
            r.try_get("rate_limit_override").map_err(g)?,
            "rate_limit_override",
        )?,
        daily_limit_override: opt_u64(
            r.try_get("daily_limit_override").map_err(g)?,
            "daily_limit_override",
        )?,
        metadata: r.try_get("metadata").map_err(g)?,
        usage_total: to_u64(r.try_get("usage_total").map_err(g)?, "usage_total")?,
        seq: to_u64(r.try_get("seq").map_err(g)?, "seq")?,
    })
}

pub(crate) const SUB_COLUMNS: &str =
    "id, user_id, plan, cycle, status, period_start, period_end, provider, provider_ref, \
     cancel_at_period_end, grace_until, created_at, updated_at";

pub(crate) fn sub_from_row(r: &AnyRow) -> StoreResult<Subscription> {
    let g = |e: sqlx::Error| StoreError::Internal(format!("decoding subscription row: {e}"));
    let status: String = r.try_get("status").map_err(g)?;
    let cancel: i64 = r.try_get("cancel_at_period_end").map_err(g)?;
    Ok(Subscription {
        id: r.try_get("id").map_err(g)?,
        user_id: r.try_get("user_id").map_err(g)?,
        plan: r.try_get("plan").map_err(g)?,
        cycle: r.try_get("cycle").map_err(g)?,
        status: SubStatus::parse(&status)
            .ok_or_else(|| StoreError::Internal(format!("bad status {status:?}")))?,
        period_start: r.try_get("period_start").map_err(g)?,
        period_end: r.try_get("period_end").map_err(g)?,
        provider: r.try_get("provider").map_err(g)?,
        provider_ref: r.try_get("provider_ref").map_err(g)?,
        cancel_at_period_end: cancel != 0,
        grace_until: r.try_get("grace_until").map_err(g)?,
        created_at: r.try_get("created_at").map_err(g)?,
        updated_at: r.try_get("updated_at").map_err(g)?,
    })
}

pub(crate) type Tx = Transaction<'static, Any>;

impl SqlStore {
    /// Connects, applies migrations and reads (or creates) the database id.
    pub async fn connect(url: &str) -> StoreResult<SqlStore> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        };
        let url = match dialect {
            Dialect::Sqlite => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(parent) = std::path::Path::new(path).parent() {
                    if !parent.as_os_str().is_empty() {
                        std::fs::create_dir_all(parent).map_err(|e| {
                            StoreError::Unavailable(format!("creating {}: {e}", parent.display()))
                        })?;
                    }
                }
                format!("sqlite://{path}?mode=rwc")
            }
            Dialect::Postgres => url.to_string(),
        };
        let opts = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let opts = match dialect {
            Dialect::Sqlite => {
                opts.max_connections(1)
                    .min_connections(1)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 5000",
                                // Statement journals (multi-row usage statements) in memory,
                                // and a page cache that holds a busy key table (16 MiB).
                                "PRAGMA temp_store = MEMORY",
                                "PRAGMA cache_size = -16384",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
            }
            Dialect::Postgres => opts.max_connections(16),
        };
        let pool = opts
            .connect(&url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("connecting to database: {e}")))?;
        let mut store = SqlStore {
            pool,
            dialect,
            db_id: String::new(),
        };
        store.migrate().await?;
        store.db_id = store.ensure_db_id().await?;
        Ok(store)
    }

    async fn migrate(&self) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // Several backends may start at once against one database.
            sqlx::query("SELECT pg_advisory_xact_lock(7426010)")
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("migration lock", e))?;
        }
        sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("creating schema_migrations", e))?;
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_err("reading schema_migrations", e))?;
        for (version, sqlite, postgres) in schema::migrations() {
            if applied.contains(&version) {
                continue;
            }
            let statements = match self.dialect {
                Dialect::Sqlite => sqlite,
                Dialect::Postgres => postgres,
            };
            for stmt in statements {
                sqlx::query(stmt)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| db_err(&format!("migration {version}"), e))?;
            }
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(unix_now())
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("recording migration", e))?;
            tracing::info!(version, "applied database migration");
        }
        tx.commit()
            .await
            .map_err(|e| db_err("committing migrations", e))
    }

    async fn ensure_db_id(&self) -> StoreResult<String> {
        let fresh = crate::ids::random_hex(16);
        sqlx::query("INSERT INTO meta (k, v) VALUES ('db_id', $1) ON CONFLICT (k) DO NOTHING")
            .bind(&fresh)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("db id", e))?;
        sqlx::query_scalar("SELECT v FROM meta WHERE k = 'db_id'")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_err("db id", e))
    }

    pub(crate) async fn begin(&self) -> StoreResult<Tx> {
        self.pool.begin().await.map_err(|e| db_err("begin", e))
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn for_update_suffix(&self) -> &'static str {
        self.dialect.for_update()
    }

    /// Reserves `n` consecutive feed sequence numbers; returns the first. Locks the sequence row
    /// until the transaction ends (see the module doc).
    async fn next_seqs(tx: &mut Tx, n: u64) -> StoreResult<u64> {
        let top: i64 = sqlx::query_scalar(
            "UPDATE feed_seq SET value = value + $1 WHERE id = 1 RETURNING value",
        )
        .bind(to_i64(n, "seq count")?)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| db_err("feed sequence", e))?;
        Ok(to_u64(top, "seq")? + 1 - n)
    }

    pub(crate) async fn ledger_append(
        tx: &mut Tx,
        at: i64,
        user_id: &str,
        kind: &str,
        subject: &str,
        detail: serde_json::Value,
        cause: &Cause,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO ledger (at, user_id, kind, subject, detail, cause_kind, cause_ref) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(at)
        .bind(user_id)
        .bind(kind)
        .bind(subject)
        .bind(detail.to_string())
        .bind(&cause.kind)
        .bind(&cause.reference)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_err("ledger", e))?;
        Ok(())
    }

    pub(crate) async fn ensure_user(tx: &mut Tx, user_id: &str, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO users (user_id, plan, created_at, updated_at) VALUES ($1, 'free', $2, $2) ON CONFLICT (user_id) DO NOTHING")
            .bind(user_id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_err("user", e))?;
        Ok(())
    }

    async fn key_in_tx(tx: &mut Tx, key_id: &str) -> StoreResult<KeyRecord> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_err("key", e))?
        .ok_or_else(|| StoreError::NotFound(format!("API key {key_id}")))?;
        key_from_row(&row)
    }

    /// Inserts or updates a subscription and records it in the ledger (inside `tx`).
    pub(crate) async fn upsert_subscription(
        tx: &mut Tx,
        sub: &Subscription,
        cause: &Cause,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "INSERT INTO subscriptions ({SUB_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
             ON CONFLICT (id) DO UPDATE SET plan = excluded.plan, cycle = excluded.cycle, status = excluded.status, \
             period_start = excluded.period_start, period_end = excluded.period_end, provider_ref = excluded.provider_ref, \
             cancel_at_period_end = excluded.cancel_at_period_end, grace_until = excluded.grace_until, updated_at = excluded.updated_at"
        ))
        .bind(&sub.id)
        .bind(&sub.user_id)
        .bind(&sub.plan)
        .bind(&sub.cycle)
        .bind(sub.status.as_str())
        .bind(sub.period_start)
        .bind(sub.period_end)
        .bind(&sub.provider)
        .bind(sub.provider_ref.clone())
        .bind(i64::from(sub.cancel_at_period_end))
        .bind(sub.grace_until)
        .bind(sub.created_at)
        .bind(sub.updated_at)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_err("subscription", e))?;
        Self::ledger_append(
            tx,
            now,
            &sub.user_id,
            "subscription",
            &sub.id,
            serde_json::json!({
                "plan": sub.plan, "cycle": sub.cycle, "status": sub.status.as_str(), "provider": sub.provider,
                "period_start": sub.period_start, "period_end": sub.period_end,
                "cancel_at_period_end": sub.cancel_at_period_end, "grace_until": sub.grace_until,
            }),
            cause,
        )
        .await?;
        Ok(())
    }

    /// Recomputes a user's plan inside `tx`; moves their keys and writes the ledger when it changes.
    pub(crate) async fn recompute_in_tx(
        &self,
        tx: &mut Tx,
        user_id: &str,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Option<PlanChange>> {
        Self::ensure_user(tx, user_id, now).await?;
        let current: String = sqlx::query_scalar(&format!(
            "SELECT plan FROM users WHERE user_id = $1{}",
            self.dialect.for_update()
        ))
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| db_err("user plan", e))?;
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_err("subscriptions", e))?;
        let subs = rows
            .iter()
            .map(sub_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        let target = entitle(&subs);
        if target == current {
            return Ok(None);
        }
        sqlx::query("UPDATE users SET plan = $1, updated_at = $2 WHERE user_id = $3")
            .bind(&target)
            .bind(now)
            .bind(user_id)
            .execute(&mut **tx)
            .await
            .map_err(|e| db_err("user plan", e))?;
        let key_ids: Vec<String> =
            sqlx::query_scalar("SELECT key_id FROM api_keys WHERE user_id = $1 ORDER BY key_id")
                .bind(user_id)
                .fetch_all(&mut **tx)
                .await
                .map_err(|e| db_err("user keys", e))?;
        let n = u64::try_from(key_ids.len()).unwrap_or(0);
        if n > 0 {
            let first = Self::next_seqs(tx, n).await?;
            for (i, key_id) in key_ids.iter().enumerate() {
                let seq = first + u64::try_from(i).unwrap_or(0);
                sqlx::query("UPDATE api_keys SET plan = $1, seq = $2 WHERE key_id = $3")
                    .bind(&target)
                    .bind(to_i64(seq, "seq")?)
                    .bind(key_id)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| db_err("moving keys", e))?;
            }
        }
        Self::ledger_append(
            tx,
            now,
            user_id,
            "plan_changed",
            user_id,
            serde_json::json!({"from": current, "to": target, "keys": n}),
            cause,
        )
        .await?;
        Ok(Some(PlanChange {
            user_id: user_id.to_string(),
            from: current,
            to: target,
            keys_touched: n,
        }))
    }

    /// Applies a change to one key: bumps its sequence, runs `update` and records `kind`.
    async fn change_key(
        &self,
        key_id: &str,
        kind: &str,
        detail: serde_json::Value,
        cause: &Cause,
        update: (&str, Vec<Bind>),
    ) -> StoreResult<KeyRecord> {
        let mut tx = self.begin().await?;
        let before = Self::key_in_tx(&mut tx, key_id).await?;
        let seq = Self::next_seqs(&mut tx, 1).await?;
        let (set, binds) = update;
        let sql = format!(
            "UPDATE api_keys SET {set}, seq = ${} WHERE key_id = ${}",
            binds.len() + 1,
            binds.len() + 2
        );
        let mut q = sqlx::query(&sql);
        for b in binds {
            q = match b {
                Bind::I(v) => q.bind(v),
                Bind::S(v) => q.bind(v),
            };
        }
        q.bind(to_i64(seq, "seq")?)
            .bind(key_id)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("updating key", e))?;
        let after = Self::key_in_tx(&mut tx, key_id).await?;
        Self::ledger_append(
            &mut tx,
            unix_now(),
            &before.user_id,
            kind,
            key_id,
            detail,
            cause,
        )
        .await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(after)
    }
}

/// A bind value for the dynamic key updates.
enum Bind {
    I(Option<i64>),
    S(Option<String>),
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn create_key(
        &self,
        key: NewKey,
        max_keys: &BTreeMap<String, u32>,
        cause: &Cause,
    ) -> StoreResult<KeyRecord> {
        let mut tx = self.begin().await?;
        Self::ensure_user(&mut tx, &key.user_id, key.created_at).await?;
        let plan: String = sqlx::query_scalar(&format!(
            "SELECT plan FROM users WHERE user_id = $1{}",
            self.dialect.for_update()
        ))
        .bind(&key.user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_err("user plan", e))?;
        let max = max_keys.get(&plan).copied().unwrap_or(1);
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
        )
        .bind(&key.user_id)
        .bind(key.created_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_err("counting keys", e))?;
        if active >= i64::from(max) {
            return Err(StoreError::KeyLimit { max });
        }
        let seq = Self::next_seqs(&mut tx, 1).await?;
        sqlx::query(
            "INSERT INTO api_keys (key_id, user_id, name, plan, key_hash, start, created_at, expires_at, \
             rate_limit_override, daily_limit_override, metadata, usage_total, seq) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12)",
        )
        .bind(&key.key_id)
        .bind(&key.user_id)
        .bind(&key.name)
        .bind(&plan)
        .bind(key.hash.to_hex())
        .bind(&key.start)
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(opt_i64(key.rate_limit_override, "rate_limit_override")?)
        .bind(opt_i64(key.daily_limit_override, "daily_limit_override")?)
        .bind(&key.metadata)
        .bind(to_i64(seq, "seq")?)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("API key id or hash", e))?;
        Self::ledger_append(
            &mut tx,
            key.created_at,
            &key.user_id,
            "key_created",
            &key.key_id,
            serde_json::json!({"plan": plan, "name": key.name}),
            cause,
        )
        .await?;
        let rec = Self::key_in_tx(&mut tx, &key.key_id).await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(rec)
    }

    async fn get_key(&self, key_id: &str) -> StoreResult<KeyRecord> {
        self.settle_for_read().await;
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("key", e))?
        .ok_or_else(|| StoreError::NotFound(format!("API key {key_id}")))?;
        key_from_row(&row)
    }

    async fn keys_of_user(&self, user_id: &str) -> StoreResult<Vec<KeyRecord>> {
        self.settle_for_read().await;
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, key_id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("user keys", e))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn list_keys(
        &self,
        plan: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<Vec<KeyRecord>> {
        self.settle_for_read().await;
        let rows = match plan {
            Some(p) => sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE plan = $1 ORDER BY created_at, key_id LIMIT $2 OFFSET $3"
            ))
            .bind(p.to_string())
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await,
            None => sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id LIMIT $1 OFFSET $2"))
                .bind(i64::from(limit))
                .bind(i64::from(offset))
                .fetch_all(&self.pool)
                .await,
        }
        .map_err(|e| db_err("keys", e))?;
        rows.iter().map(key_from_row).collect()
    }

    async fn revoke_key(&self, key_id: &str, now: i64, cause: &Cause) -> StoreResult<KeyRecord> {
        let current = self.get_key(key_id).await?;
        if current.revoked_at.is_some() {
            return Ok(current);
        }
        self.change_key(
            key_id,
            "key_revoked",
            serde_json::json!({}),
            cause,
            ("revoked_at = $1", vec![Bind::I(Some(now))]),
        )
        .await
    }

    async fn rotate_key(
        &self,
        key_id: &str,
        hash: KeyHash,
        start: &str,
        grace_until: Option<i64>,
        cause: &Cause,
    ) -> StoreResult<KeyRecord> {
        let current = self.get_key(key_id).await?;
        if current.revoked_at.is_some() {
            return Err(StoreError::Conflict(format!("API key {key_id} is revoked")));
        }
        let prev = grace_until.map(|_| current.hash.to_hex());
        self.change_key(
            key_id,
            "key_rotated",
            serde_json::json!({"grace_until": grace_until}),
            cause,
            (
                "key_hash = $1, start = $2, prev_hash = $3, prev_until = $4",
                vec![
                    Bind::S(Some(hash.to_hex())),
                    Bind::S(Some(start.to_string())),
                    Bind::S(prev),
                    Bind::I(grace_until),
                ],
            ),
        )
        .await
    }

    async fn update_key(
        &self,
        key_id: &str,
        patch: KeyPatch,
        cause: &Cause,
    ) -> StoreResult<KeyRecord> {
        let current = self.get_key(key_id).await?;
        let name = patch.name.clone().unwrap_or(current.name);
        let expires = patch.expires_at.unwrap_or(current.expires_at);
        let rate = patch
            .rate_limit_override
            .unwrap_or(current.rate_limit_override);
        let daily = patch
            .daily_limit_override
            .unwrap_or(current.daily_limit_override);
        let metadata = patch.metadata.clone().unwrap_or(current.metadata);
        let detail = serde_json::json!({
            "name": patch.name, "expires_at": patch.expires_at, "rate_limit_per_minute": patch.rate_limit_override,
            "daily_limit": patch.daily_limit_override, "metadata_changed": patch.metadata.is_some(),
        });
        self.change_key(
            key_id,
            "key_updated",
            detail,
            cause,
            (
                "name = $1, expires_at = $2, rate_limit_override = $3, daily_limit_override = $4, metadata = $5",
                vec![
                    Bind::S(Some(name)),
                    Bind::I(expires),
                    Bind::I(opt_i64(rate, "rate")?),
                    Bind::I(opt_i64(daily, "daily")?),
                    Bind::S(Some(metadata)),
                ],
            ),
        )
        .await
    }

    async fn feed_page(&self, since: u64, limit: u32) -> StoreResult<(Vec<KeyRecord>, u64)> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(to_i64(since, "since")?)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| db_err("feed", e))?;
        let head: i64 = sqlx::query_scalar("SELECT value FROM feed_seq WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| db_err("feed head", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok((
            rows.iter()
                .map(key_from_row)
                .collect::<StoreResult<Vec<_>>>()?,
            to_u64(head, "head")?,
        ))
    }

    async fn feed_head(&self) -> StoreResult<u64> {
        let head: i64 = sqlx::query_scalar("SELECT value FROM feed_seq WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_err("feed head", e))?;
        to_u64(head, "head")
    }

    async fn key_stats(&self, now: i64) -> StoreResult<KeyStats> {
        self.settle_for_read().await;
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, \
             CAST(COALESCE(SUM(CASE WHEN revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) THEN 1 ELSE 0 END), 0) AS BIGINT) AS active, \
             CAST(COALESCE(SUM(CASE WHEN revoked_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS BIGINT) AS revoked, \
             CAST(COALESCE(SUM(usage_total), 0) AS BIGINT) AS requests FROM api_keys",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| db_err("stats", e))?;
        let g = |e: sqlx::Error| StoreError::Internal(format!("stats: {e}"));
        let total: i64 = row.try_get("total").map_err(g)?;
        let active: i64 = row.try_get("active").map_err(g)?;
        let revoked: i64 = row.try_get("revoked").map_err(g)?;
        let requests: i64 = row.try_get("requests").map_err(g)?;
        let rows = sqlx::query(
            "SELECT plan, COUNT(*) AS n FROM api_keys WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) GROUP BY plan",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("stats", e))?;
        let mut by_plan = BTreeMap::new();
        for r in rows {
            let plan: String = r.try_get("plan").map_err(g)?;
            let n: i64 = r.try_get("n").map_err(g)?;
            by_plan.insert(plan, to_u64(n, "count")?);
        }
        let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_err("stats", e))?;
        Ok(KeyStats {
            total_keys: to_u64(total, "total")?,
            active_keys: to_u64(active, "active")?,
            revoked_keys: to_u64(revoked, "revoked")?,
            total_requests: to_u64(requests, "requests")?,
            by_plan,
            users: to_u64(users, "users")?,
        })
    }
}

/// Rows per multi-row statement of the usage ingest (3 parameters each; far below SQLite's and
/// PostgreSQL's parameter limits).
const INGEST_ROWS: usize = 500;

impl Dialect {
    /// `($1, $2, $3), ($4, $5, $6), ...`: `rows` tuples of `width` parameters. SQLite gets
    /// anonymous `?`s: its lookup of numbered parameters by name is linear, which makes binding
    /// a long list quadratic.
    fn values_list(&self, rows: usize, width: usize) -> String {
        let mut s = String::with_capacity(rows * width * 6);
        for r in 0..rows {
            if r > 0 {
                s.push_str(", ");
            }
            s.push('(');
            for c in 0..width {
                if c > 0 {
                    s.push_str(", ");
                }
                match self {
                    Dialect::Sqlite => s.push('?'),
                    Dialect::Postgres => {
                        let _ = write!(s, "${}", r * width + c + 1);
                    }
                }
            }
            s.push(')');
        }
        s
    }
}

impl SqlStore {
    /// Those of `ids` that name no key.
    async fn unknown_keys<'a>(&self, tx: &mut Tx, ids: &[&'a str]) -> StoreResult<Vec<&'a str>> {
        let sql = format!(
            "SELECT v.column1 AS key_id FROM (VALUES {}) AS v \
             WHERE NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.key_id = v.column1)",
            self.dialect.values_list(ids.len(), 1)
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in ids {
            q = q.bind(*id);
        }
        let missing = q
            .fetch_all(&mut **tx)
            .await
            .map_err(|e| db_err("unknown keys", e))?;
        Ok(ids
            .iter()
            .copied()
            .filter(|id| missing.iter().any(|m| m == id))
            .collect())
    }
}

/// Key for PostgreSQL's advisory lock that serialises applying pending usage across backends.
const SETTLE_LOCK: i64 = 0x746f_6c6c_6761_7465; // "tollgate"

impl SqlStore {
    /// Sums `entries` per key and per key and day, and adds the sums to `api_keys` and
    /// `usage_daily`. One statement per table per chunk of rows instead of two per entry: 10 k
    /// keys are ~40 statements. Rows are merged first, as one statement may not touch a row
    /// twice, and sorted, so concurrent writers lock keys in one order. Unknown keys are left out
    /// (and logged).
    async fn apply_usage<'a>(
        &self,
        tx: &mut Tx,
        entries: impl Iterator<Item = UsageEntry<&'a str>>,
    ) -> StoreResult<()> {
        let mut daily: HashMap<(&str, &str), i64> = HashMap::new();
        let mut totals: HashMap<&str, (i64, i64)> = HashMap::new();
        for e in entries {
            let count = to_i64(e.count, "count")?;
            let d = daily.entry((e.key_id, e.day)).or_default();
            *d = d.saturating_add(count);
            let t = totals.entry(e.key_id).or_insert((0, e.last_used));
            t.0 = t.0.saturating_add(count);
            t.1 = t.1.max(e.last_used);
        }
        let mut totals: Vec<_> = totals.into_iter().collect();
        totals.sort_unstable_by_key(|(k, _)| *k);
        for chunk in totals.chunks(INGEST_ROWS) {
            let sql = format!(
                "UPDATE api_keys SET usage_total = api_keys.usage_total + v.column2, \
                 last_used = CASE WHEN api_keys.last_used IS NULL OR api_keys.last_used < v.column3 \
                 THEN v.column3 ELSE api_keys.last_used END \
                 FROM (VALUES {}) AS v WHERE api_keys.key_id = v.column1",
                self.dialect.values_list(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (key_id, (count, last_used)) in chunk {
                q = q.bind(*key_id).bind(*count).bind(*last_used);
            }
            let known = q
                .execute(&mut **tx)
                .await
                .map_err(|e| db_err("usage total", e))?
                .rows_affected();
            if known < chunk.len() as u64 {
                let ids: Vec<&str> = chunk.iter().map(|(k, _)| *k).collect();
                for unknown in self.unknown_keys(tx, &ids).await? {
                    tracing::warn!(key_id = %unknown, "usage for an unknown key ignored");
                }
            }
        }
        let mut daily: Vec<_> = daily.into_iter().collect();
        daily.sort_unstable_by_key(|(k, _)| *k);
        for chunk in daily.chunks(INGEST_ROWS) {
            // The join leaves out unknown keys (warned about above).
            let sql = format!(
                "INSERT INTO usage_daily (key_id, day, units) \
                 SELECT v.column1, v.column2, v.column3 FROM (VALUES {}) AS v \
                 JOIN api_keys k ON k.key_id = v.column1 WHERE true \
                 ON CONFLICT (key_id, day) DO UPDATE SET units = usage_daily.units + excluded.units",
                self.dialect.values_list(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for ((key_id, day), count) in chunk {
                q = q.bind(*key_id).bind(*day).bind(*count);
            }
            q.execute(&mut **tx)
                .await
                .map_err(|e| db_err("daily usage", e))?;
        }
        Ok(())
    }

    /// Before a read that shows usage: applies what is pending, so a read sees every batch
    /// acknowledged before it. A failure is logged, not returned: the batches stay pending
    /// (nothing is lost) and the read shows what was applied.
    async fn settle_for_read(&self) {
        if let Err(e) = self.settle_usage().await {
            tracing::warn!(error = %e, "pending usage could not be applied before a read");
        }
    }
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn ingest_payload(
        &self,
        gateway_id: &str,
        batch_id: u64,
        payload: &[u8],
        entries: usize,
        units: u64,
        now: i64,
    ) -> StoreResult<bool> {
        let batch_id = to_i64(batch_id, "batch_id")?;
        let mut tx = self.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO usage_batches (gateway_id, batch_id, received_at, entries, units) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (gateway_id, batch_id) DO NOTHING",
        )
        .bind(gateway_id)
        .bind(batch_id)
        .bind(now)
        .bind(to_i64(u64::try_from(entries).unwrap_or(u64::MAX), "entries")?)
        .bind(to_i64(units, "units")?)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("usage batch", e))?
        .rows_affected();
        if claimed == 0 {
            return Ok(true);
        }
        sqlx::query(
            "INSERT INTO usage_pending (gateway_id, batch_id, entries) VALUES ($1, $2, $3)",
        )
        .bind(gateway_id)
        .bind(batch_id)
        .bind(payload)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("pending usage", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(false)
    }

    async fn settle_usage(&self) -> StoreResult<usize> {
        let any: Option<i64> = sqlx::query_scalar("SELECT batch_id FROM usage_pending LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("pending usage", e))?;
        if any.is_none() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // One backend applies at a time; the next one's DELETE then sees only what is left.
            sqlx::query("SELECT 1 FROM (SELECT pg_advisory_xact_lock($1)) AS l")
                .bind(SETTLE_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err("usage lock", e))?;
        }
        let rows = sqlx::query("DELETE FROM usage_pending RETURNING gateway_id, batch_id, entries")
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db_err("pending usage", e))?;
        let g = |e: sqlx::Error| StoreError::Internal(format!("pending usage: {e}"));
        let mut payloads = Vec::with_capacity(rows.len());
        for r in &rows {
            payloads.push((
                r.try_get::<String, _>("gateway_id").map_err(g)?,
                r.try_get::<i64, _>("batch_id").map_err(g)?,
                r.try_get::<Vec<u8>, _>("entries").map_err(g)?,
            ));
        }
        let mut entries = Vec::new();
        for (gateway, batch_id, payload) in &payloads {
            match usage_codec::stored_entries(payload) {
                Ok(read) => entries.extend(read.iter()),
                // Only a damaged database gets here; keeping the row would stop every later
                // batch from being applied.
                Err(e) => {
                    tracing::error!(gateway = %gateway, batch_id, error = %e, "a pending usage batch could not be read and is left out")
                }
            }
        }
        self.apply_usage(&mut tx, entries.into_iter()).await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(payloads.len())
    }

    async fn usage_of(
        &self,
        key_id: &str,
        today: &str,
        history_days: u32,
    ) -> StoreResult<UsageSummary> {
        let key = self.get_key(key_id).await?;
        let rows = sqlx::query(
            "SELECT day, units FROM usage_daily WHERE key_id = $1 ORDER BY day DESC LIMIT $2",
        )
        .bind(key_id)
        .bind(i64::from(history_days))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("usage", e))?;
        let g = |e: sqlx::Error| StoreError::Internal(format!("usage: {e}"));
        let mut history = Vec::with_capacity(rows.len());
        for r in rows {
            let units: i64 = r.try_get("units").map_err(g)?;
            history.push(DayCount {
                day: r.try_get("day").map_err(g)?,
                count: to_u64(units, "units")?,
            });
        }
        let today_units = history
            .iter()
            .find(|d| d.day == today)
            .map(|d| d.count)
            .unwrap_or(0);
        Ok(UsageSummary {
            today: today_units,
            total: key.usage_total,
            last_used: key.last_used,
            history,
        })
    }

    async fn usage_on_day(
        &self,
        key_ids: &[String],
        day: &str,
    ) -> StoreResult<BTreeMap<String, u64>> {
        self.settle_for_read().await;
        let mut out = BTreeMap::new();
        for id in key_ids {
            let units: Option<i64> =
                sqlx::query_scalar("SELECT units FROM usage_daily WHERE key_id = $1 AND day = $2")
                    .bind(id)
                    .bind(day)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| db_err("usage", e))?;
            out.insert(id.clone(), to_u64(units.unwrap_or(0), "units")?);
        }
        Ok(out)
    }
}

#[async_trait]
impl BillingStore for SqlStore {
    async fn user_plan(&self, user_id: &str) -> StoreResult<String> {
        let plan: Option<String> = sqlx::query_scalar("SELECT plan FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("user plan", e))?;
        Ok(plan.unwrap_or_else(|| tollgate_protocol::plans::FREE.to_string()))
    }

    async fn write_subscription(
        &self,
        sub: &Subscription,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Option<PlanChange>> {
        let mut tx = self.begin().await?;
        Self::ensure_user(&mut tx, &sub.user_id, now).await?;
        Self::upsert_subscription(&mut tx, sub, cause, now).await?;
        let change = self
            .recompute_in_tx(&mut tx, &sub.user_id, cause, entitle, now)
            .await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(change)
    }

    async fn recompute_plan(
        &self,
        user_id: &str,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Option<PlanChange>> {
        let mut tx = self.begin().await?;
        let change = self
            .recompute_in_tx(&mut tx, user_id, cause, entitle, now)
            .await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(change)
    }

    async fn get_subscription(&self, id: &str) -> StoreResult<Subscription> {
        let row = sqlx::query(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("subscription", e))?
        .ok_or_else(|| StoreError::NotFound(format!("subscription {id}")))?;
        sub_from_row(&row)
    }

    async fn subscriptions_of(&self, user_id: &str) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("subscriptions", e))?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn due_subscriptions(&self, now: i64) -> StoreResult<Vec<Subscription>> {
        let rows = sqlx::query(&format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE (status = 'active' AND period_end <= $1) \
             OR (status = 'past_due' AND (grace_until IS NULL OR grace_until <= $1 OR period_end <= $1)) ORDER BY id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("due subscriptions", e))?;
        rows.iter().map(sub_from_row).collect()
    }

    async fn ledger(&self, user_id: Option<&str>, limit: u32) -> StoreResult<Vec<LedgerEntry>> {
        let cols = "id, at, user_id, kind, subject, detail, cause_kind, cause_ref";
        let rows = match user_id {
            Some(u) => {
                sqlx::query(&format!(
                    "SELECT {cols} FROM ledger WHERE user_id = $1 ORDER BY id DESC LIMIT $2"
                ))
                .bind(u.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {cols} FROM ledger ORDER BY id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(|e| db_err("ledger", e))?;
        let g = |e: sqlx::Error| StoreError::Internal(format!("ledger: {e}"));
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail").map_err(g)?;
                Ok(LedgerEntry {
                    id: r.try_get("id").map_err(g)?,
                    at: r.try_get("at").map_err(g)?,
                    user_id: r.try_get("user_id").map_err(g)?,
                    kind: r.try_get("kind").map_err(g)?,
                    subject: r.try_get("subject").map_err(g)?,
                    detail: serde_json::from_str(&detail)
                        .unwrap_or(serde_json::Value::String(detail)),
                    cause: Cause {
                        kind: r.try_get("cause_kind").map_err(g)?,
                        reference: r.try_get("cause_ref").map_err(g)?,
                    },
                })
            })
            .collect()
    }

    async fn idempotency_claim(
        &self,
        scope: &str,
        key: &str,
        request_hash: &str,
        now: i64,
    ) -> StoreResult<IdemState> {
        let mut tx = self.begin().await?;
        // A claim left in flight for over a minute belongs to a crashed request: take it over.
        sqlx::query("DELETE FROM idempotency WHERE scope = $1 AND idem_key = $2 AND status IS NULL AND created_at < $3")
            .bind(scope)
            .bind(key)
            .bind(now - 60)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err("idempotency", e))?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency (scope, idem_key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, idem_key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(request_hash)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("idempotency", e))?
        .rows_affected();
        let state = if inserted == 1 {
            IdemState::Claimed
        } else {
            let row = sqlx::query("SELECT request_hash, status, body FROM idempotency WHERE scope = $1 AND idem_key = $2")
                .bind(scope)
                .bind(key)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_err("idempotency", e))?;
            let g = |e: sqlx::Error| StoreError::Internal(format!("idempotency: {e}"));
            let hash: String = row.try_get("request_hash").map_err(g)?;
            let status: Option<i64> = row.try_get("status").map_err(g)?;
            let body: Option<String> = row.try_get("body").map_err(g)?;
            match (hash == request_hash, status, body) {
                (false, _, _) => IdemState::Mismatch,
                (true, Some(s), Some(b)) => IdemState::Replay {
                    status: u16::try_from(s).unwrap_or(200),
                    body: b,
                },
                _ => IdemState::InFlight,
            }
        };
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(state)
    }

    async fn idempotency_complete(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE idempotency SET status = $1, body = $2 WHERE scope = $3 AND idem_key = $4 AND status IS NULL",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(scope)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("idempotency", e))?;
        Ok(())
    }

    async fn idempotency_release(&self, scope: &str, key: &str) -> StoreResult<()> {
        sqlx::query(
            "DELETE FROM idempotency WHERE scope = $1 AND idem_key = $2 AND status IS NULL",
        )
        .bind(scope)
        .bind(key)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("idempotency", e))?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqlStore {
    fn db_id(&self) -> &str {
        &self.db_id
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("ping", e))?;
        Ok(())
    }

    async fn close(&self) {
        if let Err(e) = self.settle_usage().await {
            tracing::warn!(error = %e, "pending usage stays pending (applied at the next start)");
        }
        self.pool.close().await;
    }

    fn kind(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }
}

#[cfg(test)]
impl SqlStore {
    /// Runs a statement outside the trait (tests use it to prove the ledger refuses changes).
    pub async fn raw_execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        sqlx::query(sql)
            .execute(&self.pool)
            .await
            .map(|r| r.rows_affected())
    }

    /// A count read outside the trait (tests look at tables the trait hides).
    pub async fn raw_count(&self, sql: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await
    }
}
