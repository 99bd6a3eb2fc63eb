//! Storage for statement imports: every recorded entry (keyed by the bank's entry reference,
//! so a re-imported statement finds its entries again) and each import's report.

use crate::store::sql::{db_err, SqlStore};
use crate::store::{StoreError, StoreResult};
use async_trait::async_trait;
use sqlx::Row;
use std::collections::HashSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEntry {
    pub entry_ref: String,
    pub import_id: String,
    pub payment_id: Option<String>,
    pub amount_minor: i64,
    pub currency: String,
    pub reference: Option<String>,
    pub debtor: Option<String>,
    pub outcome: String,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportRecord {
    pub id: String,
    pub file_name: String,
    pub file_sha256: String,
    pub report: String,
    pub created_at: i64,
}

#[async_trait]
pub trait SepaStore: Send + Sync {
    /// Which of `entry_refs` were recorded by earlier imports.
    async fn known_entries(&self, entry_refs: &[String]) -> StoreResult<HashSet<String>>;
    /// Records an entry once; false when it was recorded before.
    async fn record_entry(&self, e: &RecordedEntry) -> StoreResult<bool>;
    async fn save_import(&self, rec: &ImportRecord) -> StoreResult<()>;
    async fn get_import(&self, id: &str) -> StoreResult<ImportRecord>;
    async fn list_imports(&self, limit: u32) -> StoreResult<Vec<ImportRecord>>;
}

fn import_from_row(r: &sqlx::any::AnyRow) -> StoreResult<ImportRecord> {
    let g = |e: sqlx::Error| StoreError::Internal(format!("decoding import row: {e}"));
    Ok(ImportRecord {
        id: r.try_get("id").map_err(g)?,
        file_name: r.try_get("file_name").map_err(g)?,
        file_sha256: r.try_get("file_sha256").map_err(g)?,
        report: r.try_get("report").map_err(g)?,
        created_at: r.try_get("created_at").map_err(g)?,
    })
}

#[async_trait]
impl SepaStore for SqlStore {
    async fn known_entries(&self, entry_refs: &[String]) -> StoreResult<HashSet<String>> {
        let mut out = HashSet::new();
        for r in entry_refs {
            let found: Option<String> =
                sqlx::query_scalar("SELECT entry_ref FROM sepa_entries WHERE entry_ref = $1")
                    .bind(r)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| db_err("sepa entries", e))?;
            if let Some(f) = found {
                out.insert(f);
            }
        }
        Ok(out)
    }

    async fn record_entry(&self, e: &RecordedEntry) -> StoreResult<bool> {
        let n = sqlx::query(
            "INSERT INTO sepa_entries (entry_ref, import_id, payment_id, amount_minor, currency, reference, debtor, outcome, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (entry_ref) DO NOTHING",
        )
        .bind(&e.entry_ref)
        .bind(&e.import_id)
        .bind(e.payment_id.clone())
        .bind(e.amount_minor)
        .bind(&e.currency)
        .bind(e.reference.clone())
        .bind(e.debtor.clone())
        .bind(&e.outcome)
        .bind(e.created_at)
        .execute(&self.pool)
        .await
        .map_err(|err| db_err("sepa entry", err))?
        .rows_affected();
        Ok(n == 1)
    }

    async fn save_import(&self, rec: &ImportRecord) -> StoreResult<()> {
        sqlx::query("INSERT INTO sepa_imports (id, file_name, file_sha256, report, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&rec.id)
            .bind(&rec.file_name)
            .bind(&rec.file_sha256)
            .bind(&rec.report)
            .bind(rec.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err("sepa import", e))?;
        Ok(())
    }

    async fn get_import(&self, id: &str) -> StoreResult<ImportRecord> {
        let row = sqlx::query(
            "SELECT id, file_name, file_sha256, report, created_at FROM sepa_imports WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| db_err("sepa import", e))?
        .ok_or_else(|| StoreError::NotFound(format!("statement import {id}")))?;
        import_from_row(&row)
    }

    async fn list_imports(&self, limit: u32) -> StoreResult<Vec<ImportRecord>> {
        let rows = sqlx::query("SELECT id, file_name, file_sha256, report, created_at FROM sepa_imports ORDER BY created_at DESC, id DESC LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err("sepa imports", e))?;
        rows.iter().map(import_from_row).collect()
    }
}
