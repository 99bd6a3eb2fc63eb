//! The plan catalogue as the original module served it, plus exact minor-unit fields.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use tollgate_protocol::money::{Currency, Money};
use tollgate_protocol::plans::{Cycle, Plan};
use utoipa::ToSchema;

/// The catalogue plan `id` (as in force now: a copy, the catalogue may be reloaded), or 400
/// `unknown_plan` naming the plans there are.
pub fn find(state: &AppState, id: &str) -> Result<Plan, ApiError> {
    let catalogue = state.catalogue();
    catalogue.get(id).cloned().ok_or_else(|| {
        ApiError::bad(
            "unknown_plan",
            format!(
                "unknown plan {id:?}; plans are {}",
                catalogue.ids().join(", ")
            ),
        )
    })
}

/// A billing cycle, `monthly` when absent; 400 `unknown_cycle` for anything else.
pub fn cycle(text: Option<&str>) -> Result<Cycle, ApiError> {
    let text = text.unwrap_or("monthly");
    Cycle::parse(text).ok_or_else(|| {
        ApiError::bad(
            "unknown_cycle",
            format!("unknown cycle {text:?}; cycles are monthly, yearly"),
        )
    })
}

/// What every purchase needs: a paid plan of the catalogue and a cycle (400 `invalid_plan`
/// for a free plan).
pub fn paid(
    state: &AppState,
    id: &str,
    cycle_text: Option<&str>,
) -> Result<(Plan, Cycle), ApiError> {
    let plan = find(state, id)?;
    if !plan.is_paid() {
        return Err(ApiError::bad(
            "invalid_plan",
            format!("{id:?} is free; nothing to pay"),
        ));
    }
    Ok((plan, cycle(cycle_text)?))
}

/// A plan as the catalogue shows it: the original decimal prices and the exact minor units.
///
/// Fields are in alphabetical order, as the `json!` map this replaced wrote them, so the bytes
/// on the wire did not change.
#[derive(Serialize, ToSchema)]
pub struct PlanView {
    /// ISO 4217, e.g. `EUR`.
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    /// Requests per UTC day.
    pub daily_limit: u64,
    pub features: Vec<String>,
    pub id: String,
    pub max_keys_per_user: u32,
    pub name: String,
    /// Decimal major units, as the original module showed them (`29`, `28.57`).
    #[schema(value_type = f64, example = 29)]
    pub price_monthly: Value,
    /// Exact price in minor units (`2900` = 29.00 EUR).
    pub price_monthly_minor: i64,
    #[schema(value_type = f64, example = 290)]
    pub price_yearly: Value,
    pub price_yearly_minor: i64,
    /// Requests per minute (the original's name for `rate_limit_per_minute`).
    pub rate_limit: u64,
    pub rate_limit_per_minute: u64,
    /// The monthly price paid by SEPA transfer, after the SEPA discount.
    pub sepa_price_monthly_minor: i64,
    pub sepa_price_yearly_minor: i64,
}

pub fn plan_view(plan: &Plan, sepa_discount_bps: u32) -> PlanView {
    let monthly = plan.price(Cycle::Monthly);
    let yearly = plan.price(Cycle::Yearly);
    let sepa = |m: Money| {
        m.discounted_bps(sepa_discount_bps)
            .map(|d| d.minor)
            .unwrap_or(m.minor)
    };
    PlanView {
        currency: plan.currency,
        daily_limit: plan.daily_limit,
        features: plan.features.clone(),
        id: plan.id.clone(),
        max_keys_per_user: plan.max_keys_per_user,
        name: plan.name.clone(),
        price_monthly: monthly.json_major(),
        price_monthly_minor: monthly.minor,
        price_yearly: yearly.json_major(),
        price_yearly_minor: yearly.minor,
        rate_limit: plan.rate_limit_per_minute,
        rate_limit_per_minute: plan.rate_limit_per_minute,
        sepa_price_monthly_minor: sepa(monthly),
        sepa_price_yearly_minor: sepa(yearly),
    }
}

/// The plan as a JSON value (for answers that embed a plan).
pub fn plan_json(plan: &Plan, sepa_discount_bps: u32) -> Value {
    serde_json::to_value(plan_view(plan, sepa_discount_bps)).unwrap_or_default()
}

/// `GET /api/marketplace/plans` (fields in alphabetical order, as before).
#[derive(Serialize, ToSchema)]
pub struct PlanList {
    /// `["monthly", "yearly"]`.
    pub billing_cycles: Vec<&'static str>,
    #[schema(value_type = String, example = "EUR")]
    pub currency: Currency,
    pub plans: Vec<PlanView>,
    /// The SEPA discount in percent with two decimals, e.g. `"1.50"`.
    pub sepa_discount_percent: String,
    /// Always `"2 months free"`.
    pub yearly_discount: &'static str,
}

/// The plan catalogue: prices (decimal and minor units), limits, features.
#[utoipa::path(
    get,
    path = "/api/marketplace/plans",
    tag = "plans",
    responses((status = 200, description = "The whole catalogue", body = PlanList))
)]
async fn list(State(state): State<AppState>) -> Json<PlanList> {
    let catalogue = state.catalogue();
    let bps = state.cfg().sepa_discount_bps;
    Json(PlanList {
        billing_cycles: vec![Cycle::Monthly.as_str(), Cycle::Yearly.as_str()],
        currency: catalogue.currency(),
        plans: catalogue.all().iter().map(|p| plan_view(p, bps)).collect(),
        sepa_discount_percent: format!("{}.{:02}", bps / 100, bps % 100),
        yearly_discount: "2 months free",
    })
}

/// One plan.
#[utoipa::path(
    get,
    path = "/api/marketplace/plans/{plan_id}",
    tag = "plans",
    params(("plan_id" = String, Path, description = "A plan id of the catalogue, e.g. `pro`")),
    responses(
        (status = 200, description = "The plan", body = PlanView),
        (status = 404, description = "`plan_not_found`", body = crate::error::ErrorDoc),
    )
)]
async fn one(
    State(state): State<AppState>,
    Path(plan_id): Path<String>,
) -> Result<Json<PlanView>, ApiError> {
    state
        .catalogue()
        .get(&plan_id)
        .map(|p| Json(plan_view(p, state.cfg().sepa_discount_bps)))
        .ok_or_else(|| {
            ApiError::not_found(
                "plan_not_found",
                format!(
                    "plan {plan_id:?} not found; plans are {}",
                    state.catalogue().ids().join(", ")
                ),
            )
        })
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list, one))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/marketplace/plans", get(list))
        .route("/api/marketplace/plans/{plan_id}", get(one))
}
