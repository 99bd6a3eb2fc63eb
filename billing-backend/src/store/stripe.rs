//! Stripe's own tables: customers per user, the link from a Stripe subscription to ours (with
//! the watermark that keeps out-of-order events from moving it backwards), price ids recorded
//! by `stripe sync`, and metered-usage exports. One trait, implemented for [`SqlStore`] here
//! with SQL both SQLite and PostgreSQL speak.

use crate::store::sql::{db_err, SqlStore};
use crate::store::{Cause, StoreError, StoreResult, UsageStore};
use async_trait::async_trait;
use sqlx::Row;

/// A Stripe subscription we follow, and the `created` time of the last event applied to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubLink {
    pub stripe_sub_id: String,
    pub sub_id: String,
    pub customer_id: String,
    pub last_event_at: i64,
}

/// One (key, UTC day) of usage for a user with a Stripe customer, with what was exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageLine {
    pub key_id: String,
    pub user_id: String,
    pub customer_id: String,
    pub day: String,
    /// Units the gateways reported (usage_daily).
    pub metered: i64,
    /// Units in export rows, sent or not.
    pub recorded: i64,
    /// Units Stripe acknowledged.
    pub sent: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeterExport {
    pub identifier: String,
    pub customer_id: String,
    pub key_id: String,
    pub period: String,
    pub value: i64,
    /// `pending`, `sent`, `rejected`, `too_old`.
    pub status: String,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

#[async_trait]
pub trait StripeStore: Send + Sync {
    async fn stripe_customer_of(&self, user_id: &str) -> StoreResult<Option<String>>;
    async fn stripe_user_of(&self, customer_id: &str) -> StoreResult<Option<String>>;
    /// Records the user's customer unless one is recorded; returns the recorded one.
    async fn stripe_record_customer(
        &self,
        user_id: &str,
        customer_id: &str,
        cause: &Cause,
        now: i64,
    ) -> StoreResult<String>;
    async fn stripe_sub_link(&self, stripe_sub_id: &str) -> StoreResult<Option<SubLink>>;
    /// Links a Stripe subscription to ours unless linked; returns the link in force.
    async fn stripe_link_sub(&self, link: &SubLink, now: i64) -> StoreResult<SubLink>;
    /// Moves the watermark to `event_at` unless a later event was applied; false when one was.
    async fn stripe_advance(
        &self,
        stripe_sub_id: &str,
        event_at: i64,
        event_id: &str,
    ) -> StoreResult<bool>;
    /// Records the price for a plan and cycle; false when exactly that was recorded already.
    async fn stripe_record_price(
        &self,
        plan: &str,
        cycle: &str,
        price_id: &str,
        now: i64,
    ) -> StoreResult<bool>;
    /// `(plan, cycle, price_id)` recorded by `stripe sync`.
    async fn stripe_prices(&self) -> StoreResult<Vec<(String, String, String)>>;
    /// Usage of users with a Stripe customer on days ≥ `since_day` (optionally one user).
    async fn stripe_usage_lines(
        &self,
        since_day: &str,
        user_id: Option<&str>,
    ) -> StoreResult<Vec<UsageLine>>;
    /// Inserts an export row; false when its identifier exists (another exporter won).
    async fn stripe_add_export(&self, e: &MeterExport) -> StoreResult<bool>;
    async fn stripe_exports(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MeterExport>>;
    async fn stripe_mark_export(
        &self,
        identifier: &str,
        status: &str,
        sent_at: Option<i64>,
    ) -> StoreResult<()>;
}

fn get<T>(r: &sqlx::any::AnyRow, col: &str) -> StoreResult<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    r.try_get(col)
        .map_err(|e| StoreError::Internal(format!("decoding {col}: {e}")))
}

const EXPORT_COLUMNS: &str =
    "identifier, customer_id, key_id, period, value, status, created_at, sent_at";

fn export_from_row(r: &sqlx::any::AnyRow) -> StoreResult<MeterExport> {
    Ok(MeterExport {
        identifier: get(r, "identifier")?,
        customer_id: get(r, "customer_id")?,
        key_id: get::<Option<String>>(r, "key_id")?.unwrap_or_default(),
        period: get(r, "period")?,
        value: get(r, "value")?,
        status: get(r, "status")?,
        created_at: get(r, "created_at")?,
        sent_at: get(r, "sent_at")?,
    })
}

#[async_trait]
impl StripeStore for SqlStore {
    async fn stripe_customer_of(&self, user_id: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("stripe customer", e))
    }

    async fn stripe_user_of(&self, customer_id: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT user_id FROM stripe_customers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("stripe customer", e))
    }

    async fn stripe_record_customer(
        &self,
        user_id: &str,
        customer_id: &str,
        cause: &Cause,
        now: i64,
    ) -> StoreResult<String> {
        let mut tx = self.begin().await?;
        let n = sqlx::query(
            "INSERT INTO stripe_customers (user_id, customer_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(customer_id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("stripe customer (already linked to another user)", e))?
        .rows_affected();
        if n == 1 {
            Self::ledger_append(
                &mut tx,
                now,
                user_id,
                "stripe_customer",
                customer_id,
                serde_json::json!({"customer_id": customer_id}),
                cause,
            )
            .await?;
        }
        let recorded: String =
            sqlx::query_scalar("SELECT customer_id FROM stripe_customers WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| db_err("stripe customer", e))?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(recorded)
    }

    async fn stripe_sub_link(&self, stripe_sub_id: &str) -> StoreResult<Option<SubLink>> {
        let row = sqlx::query(
            "SELECT stripe_sub_id, sub_id, customer_id, last_event_at FROM stripe_subscriptions WHERE stripe_sub_id = $1",
        )
        .bind(stripe_sub_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("stripe subscription", e))?;
        row.map(|r| {
            Ok(SubLink {
                stripe_sub_id: get(&r, "stripe_sub_id")?,
                sub_id: get(&r, "sub_id")?,
                customer_id: get(&r, "customer_id")?,
                last_event_at: get(&r, "last_event_at")?,
            })
        })
        .transpose()
    }

    async fn stripe_link_sub(&self, link: &SubLink, now: i64) -> StoreResult<SubLink> {
        sqlx::query(
            "INSERT INTO stripe_subscriptions (stripe_sub_id, sub_id, customer_id, last_event_at, created_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stripe_sub_id) DO NOTHING",
        )
        .bind(&link.stripe_sub_id)
        .bind(&link.sub_id)
        .bind(&link.customer_id)
        .bind(link.last_event_at)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("stripe subscription link", e))?;
        self.stripe_sub_link(&link.stripe_sub_id)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("stripe subscription {}", link.stripe_sub_id))
            })
    }

    async fn stripe_advance(
        &self,
        stripe_sub_id: &str,
        event_at: i64,
        event_id: &str,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE stripe_subscriptions SET last_event_at = $1, last_event_id = $2 \
             WHERE stripe_sub_id = $3 AND last_event_at <= $1",
        )
        .bind(event_at)
        .bind(event_id)
        .bind(stripe_sub_id)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("stripe subscription watermark", e))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn stripe_record_price(
        &self,
        plan: &str,
        cycle: &str,
        price_id: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO stripe_prices (plan, cycle, price_id, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (plan, cycle) DO UPDATE SET price_id = excluded.price_id, created_at = excluded.created_at \
             WHERE stripe_prices.price_id <> excluded.price_id",
        )
        .bind(plan)
        .bind(cycle)
        .bind(price_id)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("stripe price", e))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn stripe_prices(&self) -> StoreResult<Vec<(String, String, String)>> {
        let rows =
            sqlx::query("SELECT plan, cycle, price_id FROM stripe_prices ORDER BY plan, cycle")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| db_err("stripe prices", e))?;
        rows.iter()
            .map(|r| Ok((get(r, "plan")?, get(r, "cycle")?, get(r, "price_id")?)))
            .collect()
    }

    async fn stripe_usage_lines(
        &self,
        since_day: &str,
        user_id: Option<&str>,
    ) -> StoreResult<Vec<UsageLine>> {
        self.settle_usage().await?;
        let rows = sqlx::query(
            "SELECT u.key_id AS key_id, k.user_id AS user_id, c.customer_id AS customer_id, u.day AS day, u.units AS metered, \
             CAST(COALESCE((SELECT SUM(m.value) FROM meter_exports m WHERE m.key_id = u.key_id AND m.period = u.day), 0) AS BIGINT) AS recorded, \
             CAST(COALESCE((SELECT SUM(m.value) FROM meter_exports m WHERE m.key_id = u.key_id AND m.period = u.day AND m.status = 'sent'), 0) AS BIGINT) AS sent \
             FROM usage_daily u JOIN api_keys k ON k.key_id = u.key_id JOIN stripe_customers c ON c.user_id = k.user_id \
             WHERE u.day >= $1 AND ($2 = '' OR k.user_id = $2) ORDER BY u.day, u.key_id",
        )
        .bind(since_day)
        .bind(user_id.unwrap_or("").to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("usage to export", e))?;
        rows.iter()
            .map(|r| {
                Ok(UsageLine {
                    key_id: get(r, "key_id")?,
                    user_id: get(r, "user_id")?,
                    customer_id: get(r, "customer_id")?,
                    day: get(r, "day")?,
                    metered: get(r, "metered")?,
                    recorded: get(r, "recorded")?,
                    sent: get(r, "sent")?,
                })
            })
            .collect()
    }

    async fn stripe_add_export(&self, e: &MeterExport) -> StoreResult<bool> {
        let n = sqlx::query(&format!(
            "INSERT INTO meter_exports ({EXPORT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (identifier) DO NOTHING"
        ))
        .bind(&e.identifier)
        .bind(&e.customer_id)
        .bind(&e.key_id)
        .bind(&e.period)
        .bind(e.value)
        .bind(&e.status)
        .bind(e.created_at)
        .bind(e.sent_at)
        .execute(&self.pool)
        .await
        .map_err(|err| db_err("meter export", err))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn stripe_exports(
        &self,
        status: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<MeterExport>> {
        let rows = sqlx::query(&format!(
            "SELECT {EXPORT_COLUMNS} FROM meter_exports WHERE ($1 = '' OR status = $1) \
             ORDER BY created_at, identifier LIMIT $2"
        ))
        .bind(status.unwrap_or("").to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("meter exports", e))?;
        rows.iter().map(export_from_row).collect()
    }

    async fn stripe_mark_export(
        &self,
        identifier: &str,
        status: &str,
        sent_at: Option<i64>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE meter_exports SET status = $1, sent_at = $2 WHERE identifier = $3")
            .bind(status)
            .bind(sent_at)
            .bind(identifier)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("meter export", e))?;
        Ok(())
    }
}
