//! `tollgate-backend stripe sync`: makes Stripe's catalogue match ours and records the price
//! ids that `create-subscription` and `checkout` then use (`price_for`).
//!
//! For every paid plan and cycle it looks the price up by its lookup key
//! (`tollgate_<plan>_<cycle>`, unique in a Stripe account) and keeps it when amount, currency
//! and interval still match the catalogue. Otherwise it creates one — on the plan's product,
//! found by `metadata[tollgate_plan]` or created — and, when an outdated price held the lookup
//! key, moves the key to the new price (`transfer_lookup_key`). Every create carries an
//! `Idempotency-Key` derived from what is created, so a retried run cannot make two. A plan
//! whose `[[plans]]` entry names a Stripe price for a cycle keeps it: configuration wins.
//! A run that finds everything in place changes nothing, in Stripe or in the database.

use super::idem_key;
use crate::providers::stripe::client::StripeError;
use crate::providers::stripe::{wire, Stripe};
use crate::state::AppState;
use crate::store::StoreError;
use serde_json::{json, Value};
use tollgate_protocol::plans::{Cycle, Plan};

/// What happened to one plan and cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// `[[plans]]` names the price; nothing to do.
    Configured,
    /// The cycle costs nothing; Stripe needs no price for it.
    Free,
    /// Found by lookup key, matching the catalogue.
    Found,
    /// Created (no price held the lookup key).
    Created,
    /// Created because the price holding the lookup key no longer matches the catalogue; the
    /// key moved to the new price.
    Replaced,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Configured => "configured",
            Action::Free => "free",
            Action::Found => "found",
            Action::Created => "created",
            Action::Replaced => "replaced",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Line {
    pub plan: String,
    pub cycle: Cycle,
    pub lookup_key: String,
    pub action: Action,
    pub price_id: Option<String>,
    pub product_id: Option<String>,
    /// Whether `stripe_prices` changed.
    pub recorded: bool,
}

#[derive(Debug)]
pub enum SyncError {
    Stripe(StripeError),
    Store(StoreError),
    /// Stripe answered something we cannot use (e.g. a price without an id).
    Unexpected(String),
}

impl std::fmt::Display for SyncError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncError::Stripe(e) => write!(f, "stripe: {e}"),
            SyncError::Store(e) => write!(f, "database: {e}"),
            SyncError::Unexpected(m) => write!(f, "stripe: {m}"),
        }
    }
}

impl From<StripeError> for SyncError {
    fn from(e: StripeError) -> SyncError {
        SyncError::Stripe(e)
    }
}
impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> SyncError {
        SyncError::Store(e)
    }
}

pub fn lookup_key(plan: &str, cycle: Cycle) -> String {
    format!("tollgate_{plan}_{}", cycle.as_str())
}

fn interval(cycle: Cycle) -> &'static str {
    match cycle {
        Cycle::Monthly => "month",
        Cycle::Yearly => "year",
    }
}

/// Whether a Stripe price still sells `plan` for `cycle` as the catalogue says.
fn matches(price: &Value, plan: &Plan, cycle: Cycle) -> bool {
    let want = plan.price(cycle);
    price["active"] != json!(false)
        && price["unit_amount"].as_i64() == Some(want.minor)
        && price["currency"]
            .as_str()
            .is_some_and(|c| c.eq_ignore_ascii_case(want.currency.as_str()))
        && price["recurring"]["interval"].as_str() == Some(interval(cycle))
        && price["recurring"]["interval_count"]
            .as_i64()
            .is_none_or(|n| n == 1)
}

fn id_of(v: &Value, what: &str) -> Result<String, SyncError> {
    v["id"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| SyncError::Unexpected(format!("{what} without an id")))
}

/// Every page of a list endpoint.
async fn list_all(stripe: &Stripe, path: &str, query: Value) -> Result<Vec<Value>, SyncError> {
    let mut out: Vec<Value> = Vec::new();
    let mut query = query;
    // Stripe's lists are at most 100 per page; 100 pages is far beyond any catalogue.
    for _ in 0..100 {
        let page: wire::List<Value> = stripe.client.get(path, &query).await?;
        let more = page.has_more;
        let last = page
            .data
            .last()
            .and_then(|v| v["id"].as_str().map(str::to_string));
        out.extend(page.data);
        match (more, last) {
            (true, Some(last)) => query["starting_after"] = json!(last),
            _ => return Ok(out),
        }
    }
    Err(SyncError::Unexpected(format!("{path}: too many pages")))
}

/// The plan's product: found by `metadata[tollgate_plan]`, else created.
async fn product_for(
    stripe: &Stripe,
    products: &mut Option<Vec<Value>>,
    plan: &Plan,
) -> Result<(String, bool), SyncError> {
    if products.is_none() {
        *products = Some(
            list_all(
                stripe,
                "/v1/products",
                json!({"active": true, "limit": 100}),
            )
            .await?,
        );
    }
    let known = products.as_deref().unwrap_or_default();
    if let Some(p) = known
        .iter()
        .find(|p| p["metadata"]["tollgate_plan"].as_str() == Some(plan.id.as_str()))
    {
        return Ok((id_of(p, "product")?, false));
    }
    let created: Value = stripe
        .client
        .post(
            "/v1/products",
            &json!({"name": plan.name, "metadata": {"tollgate_plan": plan.id}}),
            &idem_key("product", &[&plan.id, &plan.name]),
        )
        .await?;
    let id = id_of(&created, "product")?;
    if let Some(list) = products.as_mut() {
        list.push(created);
    }
    Ok((id, true))
}

/// Brings Stripe's products and prices in line with the catalogue and records the prices.
pub async fn sync(state: &AppState, stripe: &Stripe) -> Result<Vec<Line>, SyncError> {
    let mut lines = Vec::new();
    let mut products: Option<Vec<Value>> = None;
    let cycles = [Cycle::Monthly, Cycle::Yearly];
    for plan in state.catalogue().all().iter().filter(|p| p.is_paid()) {
        let configured = |c: Cycle| {
            plan.provider_prices
                .get(&format!("stripe_{}", c.as_str()))
                .cloned()
        };
        let wanted: Vec<Cycle> = cycles
            .into_iter()
            .filter(|c| configured(*c).is_none() && plan.price(*c).minor > 0)
            .collect();
        // One look-up for both cycles of the plan; inactive prices are not reused.
        let existing = if wanted.is_empty() {
            Vec::new()
        } else {
            let keys: Vec<String> = wanted.iter().map(|c| lookup_key(&plan.id, *c)).collect();
            list_all(
                stripe,
                "/v1/prices",
                json!({"lookup_keys": keys, "active": true, "limit": 100}),
            )
            .await?
        };
        for cycle in cycles {
            let key = lookup_key(&plan.id, cycle);
            let mut line = Line {
                plan: plan.id.clone(),
                cycle,
                lookup_key: key.clone(),
                action: Action::Found,
                price_id: None,
                product_id: None,
                recorded: false,
            };
            if let Some(p) = configured(cycle) {
                line.action = Action::Configured;
                line.price_id = Some(p);
                lines.push(line);
                continue;
            }
            let money = plan.price(cycle);
            if money.minor <= 0 {
                line.action = Action::Free;
                lines.push(line);
                continue;
            }
            let holder = existing
                .iter()
                .find(|p| p["lookup_key"].as_str() == Some(key.as_str()));
            let price_id = match holder {
                Some(p) if matches(p, plan, cycle) => {
                    line.product_id = p["product"].as_str().map(str::to_string);
                    id_of(p, "price")?
                }
                _ => {
                    let (product, _) = product_for(stripe, &mut products, plan).await?;
                    let currency = money.currency.as_str().to_ascii_lowercase();
                    let amount = money.minor.to_string();
                    let params = json!({
                        "product": product,
                        "unit_amount": money.minor,
                        "currency": currency,
                        "recurring": {"interval": interval(cycle)},
                        "lookup_key": key,
                        "transfer_lookup_key": holder.is_some(),
                        "nickname": format!("{} {}", plan.name, cycle.as_str()),
                        "metadata": {"tollgate_plan": plan.id, "tollgate_cycle": cycle.as_str()},
                    });
                    let created: Value = stripe
                        .client
                        .post(
                            "/v1/prices",
                            &params,
                            &idem_key(
                                "price",
                                &[&plan.id, cycle.as_str(), &amount, &currency, &product],
                            ),
                        )
                        .await?;
                    line.action = if holder.is_some() {
                        Action::Replaced
                    } else {
                        Action::Created
                    };
                    line.product_id = Some(product);
                    id_of(&created, "price")?
                }
            };
            line.recorded = state
                .store()
                .stripe_record_price(&plan.id, cycle.as_str(), &price_id, state.now())
                .await?;
            line.price_id = Some(price_id);
            lines.push(line);
        }
    }
    Ok(lines)
}

/// The plan and cycle a price sells according to the metadata `stripe sync` wrote on it, read
/// from Stripe: for subscriptions still on a price that a later sync replaced (Stripe goes on
/// renewing them at the old amount). Only for following subscriptions that exist — new
/// purchases use the prices in force ([`super::plan_for_price`]). `None` for a price sync did
/// not make, or whose metadata names no paid plan of the catalogue with a matching interval.
pub async fn synced_plan_of(
    state: &AppState,
    stripe: &Stripe,
    price_id: &str,
) -> Result<Option<(String, Cycle)>, StripeError> {
    if !super::is_stripe_id(price_id, "price_") {
        return Ok(None);
    }
    let price: Value = match stripe
        .client
        .get(&format!("/v1/prices/{price_id}"), &json!({}))
        .await
    {
        Ok(p) => p,
        Err(StripeError::Invalid { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let plan = price["metadata"]["tollgate_plan"].as_str().unwrap_or("");
    let Some(cycle) = price["metadata"]["tollgate_cycle"]
        .as_str()
        .and_then(Cycle::parse)
    else {
        return Ok(None);
    };
    Ok(state
        .catalogue()
        .get(plan)
        .filter(|p| p.is_paid())
        .filter(|_| price["recurring"]["interval"].as_str() == Some(interval(cycle)))
        .map(|p| (p.id.clone(), cycle)))
}

/// The report `stripe sync` prints.
pub fn report(lines: &[Line]) -> Value {
    let count = |a: Action| lines.iter().filter(|l| l.action == a).count();
    let recorded = lines.iter().filter(|l| l.recorded).count();
    json!({
        "prices": lines.iter().map(|l| json!({
            "plan": l.plan,
            "cycle": l.cycle.as_str(),
            "lookup_key": l.lookup_key,
            "action": l.action.as_str(),
            "price_id": l.price_id,
            "product_id": l.product_id,
            "recorded": l.recorded,
        })).collect::<Vec<_>>(),
        "created": count(Action::Created) + count(Action::Replaced),
        "found": count(Action::Found),
        "recorded": recorded,
        "changed": count(Action::Created) + count(Action::Replaced) + recorded > 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::money::Currency;

    fn pro() -> Plan {
        serde_json::from_value(json!({
            "id": "pro", "name": "Pro", "price_monthly_minor": 2900, "price_yearly_minor": 29000,
            "rate_limit_per_minute": 100, "daily_limit": 5000, "max_keys_per_user": 10,
        }))
        .expect("plan")
    }

    #[test]
    fn a_price_matches_only_the_catalogue_terms() {
        let p = pro();
        assert_eq!(p.currency, Currency::EUR);
        let price = json!({"id": "price_1", "active": true, "unit_amount": 2900, "currency": "eur",
            "recurring": {"interval": "month", "interval_count": 1}});
        assert!(matches(&price, &p, Cycle::Monthly));
        assert!(!matches(&price, &p, Cycle::Yearly), "wrong interval");
        let mut cheaper = price.clone();
        cheaper["unit_amount"] = json!(1900);
        assert!(!matches(&cheaper, &p, Cycle::Monthly), "amount changed");
        let mut usd = price.clone();
        usd["currency"] = json!("usd");
        assert!(!matches(&usd, &p, Cycle::Monthly), "currency changed");
        let mut quarterly = price.clone();
        quarterly["recurring"]["interval_count"] = json!(3);
        assert!(!matches(&quarterly, &p, Cycle::Monthly), "every 3 months");
        let mut archived = price;
        archived["active"] = json!(false);
        assert!(!matches(&archived, &p, Cycle::Monthly), "archived");
    }

    #[test]
    fn the_report_says_whether_anything_changed() {
        let line = |action, recorded| Line {
            plan: "pro".into(),
            cycle: Cycle::Monthly,
            lookup_key: lookup_key("pro", Cycle::Monthly),
            action,
            price_id: Some("price_1".into()),
            product_id: None,
            recorded,
        };
        assert_eq!(lookup_key("pro", Cycle::Yearly), "tollgate_pro_yearly");
        let quiet = report(&[line(Action::Found, false), line(Action::Configured, false)]);
        assert_eq!(quiet["changed"], json!(false));
        assert_eq!(quiet["found"], json!(1));
        let busy = report(&[line(Action::Created, true), line(Action::Replaced, true)]);
        assert_eq!(
            (
                busy["changed"].clone(),
                busy["created"].clone(),
                busy["recorded"].clone()
            ),
            (json!(true), json!(2), json!(2))
        );
        // Found in Stripe but not yet recorded here (a new database): still a change.
        assert_eq!(report(&[line(Action::Found, true)])["changed"], json!(true));
    }
}
