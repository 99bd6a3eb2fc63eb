//! The plan catalogue as the original module served it, plus exact minor-unit fields.

use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate_protocol::money::Money;
use tollgate_protocol::plans::{Cycle, Plan};

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

pub fn plan_json(plan: &Plan, sepa_discount_bps: u32) -> Value {
    let monthly = plan.price(Cycle::Monthly);
    let yearly = plan.price(Cycle::Yearly);
    let sepa = |m: Money| {
        m.discounted_bps(sepa_discount_bps)
            .map(|d| d.minor)
            .unwrap_or(m.minor)
    };
    json!({
        "id": plan.id,
        "name": plan.name,
        "price_monthly": monthly.json_major(),
        "price_yearly": yearly.json_major(),
        "price_monthly_minor": monthly.minor,
        "price_yearly_minor": yearly.minor,
        "sepa_price_monthly_minor": sepa(monthly),
        "sepa_price_yearly_minor": sepa(yearly),
        "currency": plan.currency,
        "rate_limit": plan.rate_limit_per_minute,
        "rate_limit_per_minute": plan.rate_limit_per_minute,
        "daily_limit": plan.daily_limit,
        "features": plan.features,
        "max_keys_per_user": plan.max_keys_per_user,
    })
}

async fn list(State(state): State<AppState>) -> Json<Value> {
    let plans: Vec<Value> = state
        .catalogue()
        .all()
        .iter()
        .map(|p| plan_json(p, state.cfg.sepa_discount_bps))
        .collect();
    Json(json!({
        "plans": plans,
        "currency": state.catalogue().currency(),
        "billing_cycles": [Cycle::Monthly.as_str(), Cycle::Yearly.as_str()],
        "yearly_discount": "2 months free",
        "sepa_discount_percent": format!("{}.{:02}", state.cfg.sepa_discount_bps / 100, state.cfg.sepa_discount_bps % 100),
    }))
}

async fn one(
    State(state): State<AppState>,
    Path(plan_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    state
        .catalogue()
        .get(&plan_id)
        .map(|p| Json(plan_json(p, state.cfg.sepa_discount_bps)))
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/marketplace/plans", get(list))
        .route("/api/marketplace/plans/{plan_id}", get(one))
}
