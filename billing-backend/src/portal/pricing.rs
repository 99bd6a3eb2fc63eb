//! The public pricing page: one card per plan of the catalogue, prices per cycle (a monthly /
//! yearly toggle), limits, features and the price by SEPA transfer with its discount.

use super::html::{count, esc, html, page as layout, Header};
use crate::state::AppState;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::collections::HashMap;
use tollgate_protocol::money::Money;
use tollgate_protocol::plans::{Cycle, Plan};

/// `150` basis points → `"1.5 %"`.
pub fn percent(bps: u32) -> String {
    let whole = bps / 100;
    let frac = bps % 100;
    if frac == 0 {
        format!("{whole} %")
    } else {
        let f = format!("{frac:02}");
        format!("{whole}.{} %", f.trim_end_matches('0'))
    }
}

/// The SEPA price of a plan and cycle (the catalogue price less the discount, half-up).
pub fn sepa_price(plan: &Plan, cycle: Cycle, bps: u32) -> Money {
    let p = plan.price(cycle);
    p.discounted_bps(bps).unwrap_or(p)
}

/// Price lines for both cycles; the toggle shows one at a time (monthly without script).
pub fn price_block(plan: &Plan, bps: u32) -> String {
    let mut out = String::new();
    for cycle in [Cycle::Monthly, Cycle::Yearly] {
        let (per, hidden) = match cycle {
            Cycle::Monthly => ("month", ""),
            Cycle::Yearly => ("year", " hidden"),
        };
        let price = plan.price(cycle);
        let sepa = if plan.is_paid() {
            format!(
                r#"<p class="sepa-price">By SEPA bank transfer: <strong data-testid="sepa-{id}-{c}">{sepa}</strong> ({pct} off)</p>"#,
                id = esc(&plan.id),
                c = cycle.as_str(),
                sepa = esc(&sepa_price(plan, cycle, bps).to_string()),
                pct = esc(&percent(bps)),
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            r#"<div class="price" data-cycle-show="{c}"{hidden}><p><span class="amount" data-testid="price-{id}-{c}">{price}</span> <span class="per">/ {per}</span></p>{sepa}</div>"#,
            c = cycle.as_str(),
            id = esc(&plan.id),
            price = esc(&price.to_string()),
        ));
    }
    out
}

/// The monthly / yearly switch (script in `portal.js`; without it monthly shows).
pub fn cycle_toggle() -> &'static str {
    r#"<div class="cycle-toggle" role="group" aria-label="Billing cycle"><button type="button" data-cycle="monthly" aria-pressed="true">Monthly</button><button type="button" data-cycle="yearly" aria-pressed="false">Yearly <span class="save">2 months free</span></button></div>"#
}

fn card(plan: &Plan, bps: u32, signed_in: bool) -> String {
    let features: String = plan
        .features
        .iter()
        .map(|f| format!("<li>{}</li>", esc(f)))
        .collect();
    let cta = if signed_in {
        r#"<a class="button" href="/portal/dashboard#upgrade">Choose in your dashboard</a>"#
    } else {
        r#"<p class="hint">Sign in from the service you use to get keys and upgrade.</p>"#
    };
    format!(
        r#"<article class="card plan" data-plan="{id}">
<h2>{name}</h2>
{prices}
<p class="limits"><span>{per_minute} requests / minute</span> · <span>{per_day} / day</span> · up to {max_keys} keys</p>
<ul class="features">{features}</ul>
{cta}
</article>"#,
        id = esc(&plan.id),
        name = esc(&plan.name),
        prices = price_block(plan, bps),
        per_minute = count(plan.rate_limit_per_minute),
        per_day = count(plan.daily_limit),
        max_keys = plan.max_keys_per_user,
    )
}

/// `GET /portal/pricing`.
/// The pricing page: plans, monthly and yearly prices, the SEPA price with its discount.
#[utoipa::path(
    get,
    path = "/portal/pricing",
    tag = "portal",
    operation_id = "pricing_page",
    params(("notice" = Option<String>, Query, description = "A fixed notice to show, e.g. `signed_out`")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub async fn page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let session = super::current(&headers, &state);
    let bps = state.cfg().sepa_discount_bps;
    let cards: String = state
        .catalogue()
        .all()
        .iter()
        .map(|p| {
            card(
                p,
                bps,
                matches!(
                    session.as_ref().map(|s| &s.role),
                    Some(crate::session::Role::Customer(_))
                ),
            )
        })
        .collect();
    let notice = super::notice_text(q.get("notice").map(String::as_str))
        .map(|t| format!(r#"<p class="notice" role="status">{}</p>"#, esc(t)))
        .unwrap_or_default();
    let body = format!(
        r#"{notice}<section class="intro"><h1>Pricing</h1>
<p>Every plan includes API keys you manage yourself and usage you can see. Paid plans are billed per month or per year; paying by SEPA bank transfer saves {pct}.</p>
{toggle}</section>
<section class="plans">{cards}</section>"#,
        pct = esc(&percent(bps)),
        toggle = cycle_toggle(),
    );
    let header = session.as_ref().map(|s| Header {
        who: s.role.label(),
        csrf: &s.csrf,
    });
    html(StatusCode::OK, layout("Pricing", header.as_ref(), &body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_protocol::plans::Catalogue;

    #[test]
    fn percent_text() {
        assert_eq!(percent(150), "1.5 %");
        assert_eq!(percent(200), "2 %");
        assert_eq!(percent(125), "1.25 %");
        assert_eq!(percent(5), "0.05 %");
    }

    #[test]
    fn pro_card_shows_both_cycles_and_the_sepa_price() {
        let c = Catalogue::defaults();
        let pro = c.get("pro").unwrap_or_else(|| c.free());
        let html = card(pro, 150, false);
        assert!(
            html.contains(r#"data-testid="price-pro-monthly">29.00 EUR<"#),
            "{html}"
        );
        assert!(html.contains(r#"data-testid="price-pro-yearly">290.00 EUR<"#));
        assert!(html.contains(r#"data-testid="sepa-pro-monthly">28.57 EUR<"#));
        assert!(html.contains("100 requests / minute"));
        assert!(html.contains("5,000 / day"));
        assert!(html.contains("<li>Priority support</li>"));
    }
}
