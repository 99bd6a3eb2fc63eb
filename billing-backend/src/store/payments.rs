//! Payments (all providers) and provider events (claimed with a lease, see
//! `billing::events`).
//!
//! A payment that succeeds and carries a plan **buys one period**: the user's subscription with
//! that provider for that plan is extended from the later of now and its current end, or one
//! is started. A refund takes the bought period back. Both happen in the transaction that
//! changes the payment's status, with the ledger and the user's keys, and only when the payment
//! is in an expected status — so a replayed webhook, a re-imported statement or a second
//! capture call changes nothing twice.

use super::sql::{db_err, SqlStore, Tx, SUB_COLUMNS};
use super::*;
use sqlx::any::AnyRow;
use sqlx::Row;
use tollgate_protocol::day::add_months;
use tollgate_protocol::plans::Cycle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayStatus {
    Pending,
    Succeeded,
    Failed,
    Refunded,
    Expired,
}

impl PayStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            PayStatus::Pending => "pending",
            PayStatus::Succeeded => "succeeded",
            PayStatus::Failed => "failed",
            PayStatus::Refunded => "refunded",
            PayStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<PayStatus> {
        Some(match s {
            "pending" => PayStatus::Pending,
            "succeeded" => PayStatus::Succeeded,
            "failed" => PayStatus::Failed,
            "refunded" => PayStatus::Refunded,
            "expired" => PayStatus::Expired,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payment {
    pub id: String,
    pub user_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// `stripe`, `paypal`, `sepa`, `manual`.
    pub method: String,
    pub status: PayStatus,
    pub provider_ref: Option<String>,
    /// The SEPA creditor reference (RF…), unique.
    pub reference: Option<String>,
    pub fee_minor: Option<i64>,
    /// The plan period this payment buys, when it buys one.
    pub plan: Option<String>,
    pub cycle: Option<String>,
    pub subscription_id: Option<String>,
    pub description: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    /// The period bought, once succeeded.
    pub period_start: Option<i64>,
    pub period_end: Option<i64>,
}

/// Returned once per settlement, never stored in bulk, so the variants' size difference is moot.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// The status changed (and a period was bought or taken back where that applies).
    Applied {
        payment: Payment,
        subscription: Option<Subscription>,
        change: Option<PlanChange>,
    },
    /// The payment was not in an expected status: nothing changed.
    Unchanged(Payment),
}

#[async_trait]
pub trait PaymentStore: Send + Sync {
    async fn create_payment(&self, p: &Payment, cause: &Cause) -> StoreResult<()>;
    async fn get_payment(&self, id: &str) -> StoreResult<Payment>;
    async fn payment_by_provider_ref(
        &self,
        method: &str,
        provider_ref: &str,
    ) -> StoreResult<Option<Payment>>;
    async fn payment_by_reference(&self, reference: &str) -> StoreResult<Option<Payment>>;
    async fn list_payments(
        &self,
        user_id: Option<&str>,
        status: Option<PayStatus>,
        limit: u32,
    ) -> StoreResult<Vec<Payment>>;
    async fn set_payment_provider_ref(
        &self,
        id: &str,
        provider_ref: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// Pending payments whose instructions expired (`expires_at` ≤ now).
    async fn due_payments(&self, now: i64) -> StoreResult<Vec<Payment>>;
    /// Moves a payment from one of `from` to `to` (see the module doc for what that buys).
    #[allow(clippy::too_many_arguments)]
    async fn settle_payment(
        &self,
        id: &str,
        from: &[PayStatus],
        to: PayStatus,
        fee_minor: Option<i64>,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Settled>;
    /// Claims a provider event for one delivery until `lease_until` (see
    /// `billing::events`): the first delivery, or one arriving after an earlier claim lapsed
    /// unfinished (its process died) or was released, gets [`EventClaim::Claimed`]. One
    /// statement, so two deliveries racing for it cannot both win.
    async fn claim_event(
        &self,
        provider: &str,
        event_id: &str,
        event_type: &str,
        payload: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<EventClaim>;
    /// Records the outcome of a claimed event; it is then done for good. False (nothing
    /// written) when `token` no longer holds the claim: it lapsed and another delivery took it.
    async fn finish_event(
        &self,
        provider: &str,
        event_id: &str,
        token: &str,
        outcome: &str,
    ) -> StoreResult<bool>;
    /// Gives up a claim whose processing failed, so the provider's retry is processed at once
    /// (only while `token` holds it).
    async fn release_event(&self, provider: &str, event_id: &str, token: &str) -> StoreResult<()>;
}

/// What a delivery of a provider event got from [`PaymentStore::claim_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventClaim {
    /// This delivery holds the event: apply it, then `finish_event` or `release_event` with
    /// `token`. `claims` counts the deliveries that claimed it (1 the first time; more after a
    /// lapsed or released claim).
    Claimed { token: String, claims: i64 },
    /// Applied (or judged) before; this is its recorded outcome.
    Done { outcome: String },
    /// Another delivery holds it until `lease_until`.
    Busy { lease_until: i64 },
}

const PAY_COLUMNS: &str = "id, user_id, amount_minor, currency, method, status, provider_ref, reference, fee_minor, plan, \
     cycle, subscription_id, description, created_at, updated_at, expires_at, period_start, period_end";

fn payment_from_row(r: &AnyRow) -> StoreResult<Payment> {
    let g = |e: sqlx::Error| StoreError::Internal(format!("decoding payment row: {e}"));
    let status: String = r.try_get("status").map_err(g)?;
    Ok(Payment {
        id: r.try_get("id").map_err(g)?,
        user_id: r.try_get("user_id").map_err(g)?,
        amount_minor: r.try_get("amount_minor").map_err(g)?,
        currency: r.try_get("currency").map_err(g)?,
        method: r.try_get("method").map_err(g)?,
        status: PayStatus::parse(&status)
            .ok_or_else(|| StoreError::Internal(format!("bad payment status {status:?}")))?,
        provider_ref: r.try_get("provider_ref").map_err(g)?,
        reference: r.try_get("reference").map_err(g)?,
        fee_minor: r.try_get("fee_minor").map_err(g)?,
        plan: r.try_get("plan").map_err(g)?,
        cycle: r.try_get("cycle").map_err(g)?,
        subscription_id: r.try_get("subscription_id").map_err(g)?,
        description: r.try_get("description").map_err(g)?,
        created_at: r.try_get("created_at").map_err(g)?,
        updated_at: r.try_get("updated_at").map_err(g)?,
        expires_at: r.try_get("expires_at").map_err(g)?,
        period_start: r.try_get("period_start").map_err(g)?,
        period_end: r.try_get("period_end").map_err(g)?,
    })
}

fn payment_json(p: &Payment) -> serde_json::Value {
    serde_json::json!({
        "amount_minor": p.amount_minor, "currency": p.currency, "method": p.method, "status": p.status.as_str(),
        "plan": p.plan, "cycle": p.cycle, "provider_ref": p.provider_ref, "reference": p.reference,
        "period_start": p.period_start, "period_end": p.period_end, "fee_minor": p.fee_minor,
    })
}

impl SqlStore {
    async fn payment_in_tx(&self, tx: &mut Tx, id: &str) -> StoreResult<Payment> {
        let row = sqlx::query(&format!(
            "SELECT {PAY_COLUMNS} FROM payments WHERE id = $1{}",
            self.for_update_suffix()
        ))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(|e| db_err("payment", e))?
        .ok_or_else(|| StoreError::NotFound(format!("payment {id}")))?;
        payment_from_row(&row)
    }

    async fn one_payment(
        &self,
        sql: &str,
        a: &str,
        b: Option<&str>,
    ) -> StoreResult<Option<Payment>> {
        let mut q = sqlx::query(sql).bind(a.to_string());
        if let Some(b) = b {
            q = q.bind(b.to_string());
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("payment", e))?;
        row.as_ref().map(payment_from_row).transpose()
    }

    async fn write_payment_status(&self, tx: &mut Tx, p: &Payment) -> StoreResult<()> {
        sqlx::query(
            "UPDATE payments SET status = $1, fee_minor = $2, subscription_id = $3, period_start = $4, period_end = $5, \
             updated_at = $6 WHERE id = $7",
        )
        .bind(p.status.as_str())
        .bind(p.fee_minor)
        .bind(p.subscription_id.clone())
        .bind(p.period_start)
        .bind(p.period_end)
        .bind(p.updated_at)
        .bind(&p.id)
        .execute(&mut **tx)
        .await
        .map_err(|e| db_err("payment status", e))?;
        Ok(())
    }

    /// The user's subscription with `provider` for `plan` that still grants access, if any.
    async fn current_sub_in_tx(
        &self,
        tx: &mut Tx,
        user_id: &str,
        provider: &str,
        plan: &str,
        now: i64,
    ) -> StoreResult<Option<Subscription>> {
        let rows = sqlx::query(
            &format!("SELECT {SUB_COLUMNS} FROM subscriptions WHERE user_id = $1 AND provider = $2 AND plan = $3 \
             AND status = 'active' AND period_end > $4 ORDER BY period_end DESC"),
        )
        .bind(user_id)
        .bind(provider)
        .bind(plan)
        .bind(now)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| db_err("subscription", e))?;
        rows.first().map(super::sql::sub_from_row).transpose()
    }
}

#[async_trait]
impl PaymentStore for SqlStore {
    async fn create_payment(&self, p: &Payment, cause: &Cause) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        Self::ensure_user(&mut tx, &p.user_id, p.created_at).await?;
        sqlx::query(&format!(
            "INSERT INTO payments ({PAY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)"
        ))
        .bind(&p.id)
        .bind(&p.user_id)
        .bind(p.amount_minor)
        .bind(&p.currency)
        .bind(&p.method)
        .bind(p.status.as_str())
        .bind(p.provider_ref.clone())
        .bind(p.reference.clone())
        .bind(p.fee_minor)
        .bind(p.plan.clone())
        .bind(p.cycle.clone())
        .bind(p.subscription_id.clone())
        .bind(&p.description)
        .bind(p.created_at)
        .bind(p.updated_at)
        .bind(p.expires_at)
        .bind(p.period_start)
        .bind(p.period_end)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err("payment id, provider reference or creditor reference", e))?;
        Self::ledger_append(
            &mut tx,
            p.created_at,
            &p.user_id,
            "payment_created",
            &p.id,
            payment_json(p),
            cause,
        )
        .await?;
        tx.commit().await.map_err(|e| db_err("commit", e))
    }

    async fn get_payment(&self, id: &str) -> StoreResult<Payment> {
        self.one_payment(
            &format!("SELECT {PAY_COLUMNS} FROM payments WHERE id = $1"),
            id,
            None,
        )
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("payment {id}")))
    }

    async fn payment_by_provider_ref(
        &self,
        method: &str,
        provider_ref: &str,
    ) -> StoreResult<Option<Payment>> {
        self.one_payment(
            &format!("SELECT {PAY_COLUMNS} FROM payments WHERE method = $1 AND provider_ref = $2"),
            method,
            Some(provider_ref),
        )
        .await
    }

    async fn payment_by_reference(&self, reference: &str) -> StoreResult<Option<Payment>> {
        self.one_payment(
            &format!("SELECT {PAY_COLUMNS} FROM payments WHERE reference = $1"),
            reference,
            None,
        )
        .await
    }

    async fn list_payments(
        &self,
        user_id: Option<&str>,
        status: Option<PayStatus>,
        limit: u32,
    ) -> StoreResult<Vec<Payment>> {
        let rows = sqlx::query(&format!(
            "SELECT {PAY_COLUMNS} FROM payments WHERE ($1 = '' OR user_id = $1) AND ($2 = '' OR status = $2) \
             ORDER BY created_at DESC, id LIMIT $3"
        ))
        .bind(user_id.unwrap_or("").to_string())
        .bind(status.map(|s| s.as_str()).unwrap_or("").to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("payments", e))?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn set_payment_provider_ref(
        &self,
        id: &str,
        provider_ref: &str,
        now: i64,
    ) -> StoreResult<()> {
        let n = sqlx::query("UPDATE payments SET provider_ref = $1, updated_at = $2 WHERE id = $3")
            .bind(provider_ref)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("payment provider reference", e))?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("payment {id}")));
        }
        Ok(())
    }

    async fn due_payments(&self, now: i64) -> StoreResult<Vec<Payment>> {
        let rows = sqlx::query(&format!(
            "SELECT {PAY_COLUMNS} FROM payments WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY id"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| db_err("due payments", e))?;
        rows.iter().map(payment_from_row).collect()
    }

    async fn settle_payment(
        &self,
        id: &str,
        from: &[PayStatus],
        to: PayStatus,
        fee_minor: Option<i64>,
        cause: &Cause,
        entitle: Entitle<'_>,
        now: i64,
    ) -> StoreResult<Settled> {
        let mut tx = self.begin().await?;
        let mut p = self.payment_in_tx(&mut tx, id).await?;
        if !from.contains(&p.status) {
            return Ok(Settled::Unchanged(p));
        }
        let before = p.status;
        p.status = to;
        p.updated_at = now;
        if fee_minor.is_some() {
            p.fee_minor = fee_minor;
        }
        let mut subscription = None;
        match (
            to,
            p.plan.clone(),
            p.cycle.as_deref().and_then(Cycle::parse),
        ) {
            (PayStatus::Succeeded, Some(plan), Some(cycle)) => {
                let months = cycle.months();
                let sub = match self
                    .current_sub_in_tx(&mut tx, &p.user_id, &p.method, &plan, now)
                    .await?
                {
                    Some(mut s) => {
                        p.period_start = Some(s.period_end);
                        s.period_end = add_months(s.period_end, months);
                        s.updated_at = now;
                        s
                    }
                    None => {
                        p.period_start = Some(now);
                        Subscription {
                            id: crate::ids::prefixed("sub"),
                            user_id: p.user_id.clone(),
                            plan: plan.clone(),
                            cycle: cycle.as_str().to_string(),
                            status: SubStatus::Active,
                            period_start: now,
                            period_end: add_months(now, months),
                            provider: p.method.clone(),
                            provider_ref: Some(p.id.clone()),
                            cancel_at_period_end: true,
                            grace_until: None,
                            created_at: now,
                            updated_at: now,
                        }
                    }
                };
                p.period_end = Some(sub.period_end);
                p.subscription_id = Some(sub.id.clone());
                Self::upsert_subscription(&mut tx, &sub, cause, now).await?;
                subscription = Some(sub);
            }
            (PayStatus::Refunded, Some(_), _) if before == PayStatus::Succeeded => {
                if let (Some(sub_id), Some(start), Some(end)) =
                    (p.subscription_id.clone(), p.period_start, p.period_end)
                {
                    let row = sqlx::query(&format!(
                        "SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1"
                    ))
                    .bind(&sub_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| db_err("subscription", e))?;
                    if let Some(row) = row {
                        let mut s = super::sql::sub_from_row(&row)?;
                        // Take back exactly the time this payment bought.
                        s.period_end -= end - start;
                        if s.period_end <= now {
                            s.period_end = s.period_end.max(s.period_start);
                            s.status = SubStatus::Canceled;
                        }
                        s.updated_at = now;
                        Self::upsert_subscription(&mut tx, &s, cause, now).await?;
                        subscription = Some(s);
                    }
                }
            }
            _ => {}
        }
        self.write_payment_status(&mut tx, &p).await?;
        Self::ledger_append(
            &mut tx,
            now,
            &p.user_id,
            &format!("payment_{}", to.as_str()),
            &p.id,
            serde_json::json!({"from": before.as_str(), "payment": payment_json(&p)}),
            cause,
        )
        .await?;
        let change = self
            .recompute_in_tx(&mut tx, &p.user_id, cause, entitle, now)
            .await?;
        tx.commit().await.map_err(|e| db_err("commit", e))?;
        Ok(Settled::Applied {
            payment: p,
            subscription,
            change,
        })
    }

    async fn claim_event(
        &self,
        provider: &str,
        event_id: &str,
        event_type: &str,
        payload: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<EventClaim> {
        // Two tries: a claim released between our upsert and our read leaves no holder, and
        // the second upsert takes it.
        for _ in 0..2 {
            let token = crate::ids::random_hex(16);
            let claimed: Option<i64> = sqlx::query_scalar(
                "INSERT INTO provider_events (provider, event_id, event_type, received_at, payload, claim_token, lease_until) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (provider, event_id) DO UPDATE SET claim_token = excluded.claim_token, \
                 lease_until = excluded.lease_until, claims = provider_events.claims + 1 \
                 WHERE provider_events.outcome IS NULL \
                 AND (provider_events.claim_token IS NULL OR provider_events.lease_until IS NULL \
                      OR provider_events.lease_until <= $4) \
                 RETURNING claims",
            )
            .bind(provider)
            .bind(event_id)
            .bind(event_type)
            .bind(now)
            .bind(payload)
            .bind(&token)
            .bind(lease_until)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("provider event", e))?;
            if let Some(claims) = claimed {
                return Ok(EventClaim::Claimed { token, claims });
            }
            let row = sqlx::query(
                "SELECT outcome, claim_token, lease_until FROM provider_events WHERE provider = $1 AND event_id = $2",
            )
            .bind(provider)
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| db_err("provider event", e))?;
            let Some(row) = row else { continue };
            let g = |e: sqlx::Error| StoreError::Internal(format!("provider event: {e}"));
            let outcome: Option<String> = row.try_get("outcome").map_err(g)?;
            let holder: Option<String> = row.try_get("claim_token").map_err(g)?;
            let until: Option<i64> = row.try_get("lease_until").map_err(g)?;
            match (outcome, holder, until) {
                (Some(outcome), _, _) => return Ok(EventClaim::Done { outcome }),
                (None, Some(_), Some(lease_until)) if lease_until > now => {
                    return Ok(EventClaim::Busy { lease_until })
                }
                // Released or lapsed since our upsert: try again.
                _ => continue,
            }
        }
        // Claimed and released twice within this call: someone is working on it right now.
        Ok(EventClaim::Busy { lease_until: now })
    }

    async fn finish_event(
        &self,
        provider: &str,
        event_id: &str,
        token: &str,
        outcome: &str,
    ) -> StoreResult<bool> {
        let n = sqlx::query(
            "UPDATE provider_events SET outcome = $1, lease_until = NULL \
             WHERE provider = $2 AND event_id = $3 AND claim_token = $4 AND outcome IS NULL",
        )
        .bind(outcome)
        .bind(provider)
        .bind(event_id)
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("provider event", e))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn release_event(&self, provider: &str, event_id: &str, token: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE provider_events SET claim_token = NULL, lease_until = NULL \
             WHERE provider = $1 AND event_id = $2 AND claim_token = $3 AND outcome IS NULL",
        )
        .bind(provider)
        .bind(event_id)
        .bind(token)
        .execute(&self.pool)
        .await
        .map_err(|e| db_err("provider event", e))?;
        Ok(())
    }
}
