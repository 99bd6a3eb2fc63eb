//! Metered usage to Stripe as Billing Meter events (`POST /v1/billing/meter_events`; the
//! usage-records API was removed in basil), exactly once, plus the drift report.
//!
//! Usage is what gateways reported per key and UTC day (`usage_daily`). An export run looks
//! at each (key, day) of a user with a Stripe customer and, when the gateways counted more
//! than was recorded for export, records the difference as one export row whose identifier is
//! `tg_<key_id>_<day>_<units already recorded>`: the identifier names the link in the chain,
//! so two exporters that race compute the same identifier and only one row exists, and a row
//! once recorded is sent with that identifier (and the same `Idempotency-Key`) until Stripe
//! acknowledges it. Stripe rejects a duplicate identifier, and replays an idempotent retry,
//! so a lost response followed by a retry is counted once.
//!
//! The drift report compares, per key and day, what the gateways metered with what Stripe
//! acknowledged.

use super::{configured, Failure};
use crate::auth::ServiceAuth;
use crate::error::ApiError;
use crate::keys::valid_user_id;
use crate::providers::stripe::client::StripeError;
use crate::providers::stripe::Stripe;
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tollgate_protocol::day::{day_index, format_day, parse_day, SECONDS_PER_DAY};

use crate::store::stripe::MeterExport;

/// Stripe accepts meter event timestamps up to 35 days in the past; keep a day's margin.
const MAX_AGE_DAYS: i64 = 34;

#[derive(Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct ExportReport {
    /// New export rows recorded in this run.
    pub recorded: u64,
    pub sent: u64,
    pub units_sent: i64,
    /// Still pending after this run (Stripe unavailable); retried with the same identifier.
    pub pending: u64,
    pub rejected: u64,
    pub too_old: u64,
}

pub fn identifier(key_id: &str, day: &str, base: i64) -> String {
    format!("tg_{key_id}_{day}_{base}")
}

/// One export run: record what is new, then send everything pending.
pub async fn export(
    state: &AppState,
    stripe: &Stripe,
    user_id: Option<&str>,
) -> Result<ExportReport, Failure> {
    let Some(event_name) = stripe.meter_event_name.clone() else {
        return Err(ApiError::Unavailable {
            code: "provider_not_configured",
            message: "metered billing is off: set STRIPE_METER_EVENT_NAME to the Billing Meter's event name".into(),
        }
        .into());
    };
    let _one_run_at_a_time = stripe.export_lock.lock().await;
    let now = state.now();
    let today = day_index(now);
    let since = format_day(today - MAX_AGE_DAYS);
    let mut report = ExportReport::default();
    for line in state.store().stripe_usage_lines(&since, user_id).await? {
        if line.metered <= line.recorded {
            continue;
        }
        let e = MeterExport {
            identifier: identifier(&line.key_id, &line.day, line.recorded),
            customer_id: line.customer_id.clone(),
            key_id: line.key_id.clone(),
            period: line.day.clone(),
            value: line.metered - line.recorded,
            status: "pending".into(),
            created_at: now,
            sent_at: None,
        };
        if state.store().stripe_add_export(&e).await? {
            report.recorded += 1;
        }
    }
    for e in state.store().stripe_exports(Some("pending"), 1000).await? {
        let Some(day) = parse_day(&e.period) else {
            state
                .store()
                .stripe_mark_export(&e.identifier, "rejected", None)
                .await?;
            report.rejected += 1;
            continue;
        };
        // The event happened on that day: stamp it at the day's last second (or now, today).
        let timestamp = now.min((day + 1) * SECONDS_PER_DAY - 1);
        if timestamp < now - MAX_AGE_DAYS * SECONDS_PER_DAY {
            state
                .store()
                .stripe_mark_export(&e.identifier, "too_old", None)
                .await?;
            report.too_old += 1;
            continue;
        }
        let params = json!({
            "event_name": event_name,
            "identifier": e.identifier,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": e.customer_id, "value": e.value.to_string()},
        });
        let sent: Result<Value, _> = stripe
            .client
            .post("/v1/billing/meter_events", &params, &e.identifier)
            .await;
        match sent {
            Ok(_) => {
                state
                    .store()
                    .stripe_mark_export(&e.identifier, "sent", Some(state.now()))
                    .await?;
                report.sent += 1;
                report.units_sent += e.value;
            }
            Err(err) if err.is_transient() || err == StripeError::Idempotency => {
                tracing::warn!(identifier = %e.identifier, error = %err, "meter event not sent; will retry with the same identifier");
                report.pending += 1;
            }
            Err(err) => {
                tracing::error!(identifier = %e.identifier, error = %err, "Stripe rejected a meter event; it shows in the drift report");
                state
                    .store()
                    .stripe_mark_export(&e.identifier, "rejected", None)
                    .await?;
                report.rejected += 1;
            }
        }
    }
    Ok(report)
}

/// Background: an export run every `every`.
pub async fn periodic(
    state: AppState,
    stripe: Arc<Stripe>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        match export(&state, &stripe, None).await {
            Ok(r) if r.recorded + r.sent + r.pending + r.rejected > 0 => {
                tracing::info!(
                    recorded = r.recorded,
                    sent = r.sent,
                    units = r.units_sent,
                    pending = r.pending,
                    rejected = r.rejected,
                    "meter export"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "meter export failed"),
        }
    }
}

/// `POST /api/v1/billing/report-usage`; the body may be empty.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ReportRequest {
    /// Only this user's usage.
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExportAnswer {
    export: ExportReport,
    success: bool,
}

/// Export metered usage now as Stripe Billing Meter events: exactly once per identifier.
#[utoipa::path(
    post,
    path = "/api/v1/billing/report-usage",
    tag = "stripe",
    security(("serviceToken" = [])),
    request_body(content = Option<ReportRequest>, description = "Optional"),
    responses(
        (status = 200, description = "What this run exported", body = ExportAnswer),
        (status = 400, description = "`invalid_json`, `invalid_body`, `invalid_user_id`", body = crate::error::ErrorDoc),
    )
)]
pub async fn report_usage(
    _: ServiceAuth,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<ExportAnswer>, Failure> {
    let stripe = configured(&state)?;
    let req: ReportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReportRequest::default()
    } else {
        crate::extract::parse_json(&body)?
    };
    if let Some(u) = &req.user_id {
        valid_user_id(u)?;
    }
    let r = export(&state, &stripe, req.user_id.as_deref()).await?;
    Ok(Json(ExportAnswer {
        export: r,
        success: true,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DriftQuery {
    /// Only this user's keys.
    #[serde(default)]
    user_id: Option<String>,
    /// Days back from today, 1-400 (default 35).
    #[serde(default)]
    #[param(minimum = 1, maximum = 400)]
    days: Option<u32>,
}

/// Units per key and day (fields in alphabetical order, as the `json!` map this replaced).
#[derive(Serialize, utoipa::ToSchema)]
pub struct DriftLine {
    customer_id: String,
    day: String,
    /// Metered but not acknowledged by Stripe.
    drift: i64,
    exported: i64,
    in_flight: i64,
    key_id: String,
    metered: i64,
    not_yet_recorded: i64,
    user_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DriftTotals {
    drift: i64,
    exported: i64,
    in_flight: i64,
    metered: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Drift {
    lines: Vec<DriftLine>,
    /// First day covered, `YYYY-MM-DD`.
    since: String,
    totals: DriftTotals,
}

/// Metered at the gateways vs acknowledged by Stripe, per key and day.
#[utoipa::path(
    get,
    path = "/api/v1/billing/usage-drift",
    tag = "stripe",
    security(("serviceToken" = [])),
    params(DriftQuery),
    responses(
        (status = 200, description = "The drift report", body = Drift),
        (status = 400, description = "`invalid_user_id`, `invalid_query` (days), `bad_request` (a query that does not parse)", body = crate::error::ErrorDoc),
    )
)]
pub async fn drift_report(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<DriftQuery>,
) -> Result<Json<Drift>, Failure> {
    let _ = configured(&state)?;
    if let Some(u) = &q.user_id {
        valid_user_id(u)?;
    }
    let days = q.days.unwrap_or(35);
    if !(1..=400).contains(&days) {
        return Err(ApiError::bad("invalid_query", "days must be between 1 and 400").into());
    }
    let since = format_day(day_index(state.now()) - i64::from(days) + 1);
    let lines = state
        .store()
        .stripe_usage_lines(&since, q.user_id.as_deref())
        .await?;
    let (mut metered, mut sent, mut recorded) = (0i64, 0i64, 0i64);
    let rows: Vec<DriftLine> = lines
        .iter()
        .map(|l| {
            metered += l.metered;
            sent += l.sent;
            recorded += l.recorded;
            DriftLine {
                customer_id: l.customer_id.clone(),
                day: l.day.clone(),
                drift: l.metered - l.sent,
                exported: l.sent,
                in_flight: l.recorded - l.sent,
                key_id: l.key_id.clone(),
                metered: l.metered,
                not_yet_recorded: l.metered - l.recorded,
                user_id: l.user_id.clone(),
            }
        })
        .collect();
    Ok(Json(Drift {
        lines: rows,
        since,
        totals: DriftTotals {
            drift: metered - sent,
            exported: sent,
            in_flight: recorded - sent,
            metered,
        },
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(report_usage, drift_report))]
pub struct Api;

#[cfg(test)]
mod tests {
    #[test]
    fn identifiers_name_the_chain_link_and_fit_stripe() {
        let id = super::identifier("key_0123456789abcdef", "2026-03-01", 123_456_789);
        assert_eq!(id, "tg_key_0123456789abcdef_2026-03-01_123456789");
        assert!(id.len() <= 100);
        assert_ne!(
            super::identifier("key_0123456789abcdef", "2026-03-01", 0),
            super::identifier("key_0123456789abcdef", "2026-03-01", 10)
        );
    }
}
