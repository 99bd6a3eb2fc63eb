//! The customer's dashboard: keys (start only; a new or rotated secret appears once, in the
//! answer to the form that made it, and is never stored), revoke and rotate, usage per key per
//! day over 30 days with the current minute and day quotas, the subscription state, and upgrades
//! by Stripe Checkout, PayPal or SEPA transfer (instructions with the EPC QR code).
//!
//! Every form carries the session's CSRF token. Forms whose answer shows a secret also carry a
//! one-time nonce (one per rendered page), so reloading that answer creates nothing a second time. Other forms answer
//! with a redirect (post/redirect/get). A key or payment of another customer is answered with
//! 404, the same as one that does not exist.

use super::csrf::checked_form;
use super::html::{count, esc, html, page as layout, when, Header, PortalError};
use super::internal;
use super::pricing::{cycle_toggle, percent, price_block, sepa_price};
use super::{notice_text, see_other, Customer};
use crate::keys::{effective_limits, valid_key_id_or_404, GenerateRequest};
use crate::state::AppState;
use crate::store::{Cause, KeyRecord, PayStatus, Payment, StoreError, SubStatus, Subscription};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use std::collections::HashMap;
use tollgate_protocol::day::{day_index, format_day};
use tollgate_protocol::money::{Currency, Money};
use tollgate_protocol::plans::Cycle;

/// A secret to show once.
struct Reveal {
    key_id: String,
    api_key: String,
    rotated: bool,
}

fn money(minor: i64, currency: &str) -> String {
    Currency::parse(currency)
        .map(|c| Money::new(minor, c).to_string())
        .unwrap_or_else(|_| format!("{minor} (minor units) {currency}"))
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        r#"<input type="hidden" name="{}" value="{}">"#,
        esc(name),
        esc(value)
    )
}

fn subscription_block(subs: &[Subscription], plan: &str, now: i64) -> String {
    let mut items = String::new();
    for s in subs {
        let (status, text) = match s.status {
            SubStatus::Active if s.period_end <= now => continue,
            // A SEPA transfer or PayPal capture buys one period that does not renew by itself.
            SubStatus::Active if s.cancel_at_period_end && s.provider != "stripe" => (
                "active",
                format!(
                    "Active — paid up to {}; no automatic renewal, pay again to extend",
                    when(s.period_end)
                ),
            ),
            SubStatus::Active if s.cancel_at_period_end => (
                "cancel_at_period_end",
                format!("Active — cancels at the end of the period, {}", when(s.period_end)),
            ),
            SubStatus::Active => (
                "active",
                format!("Active — paid up to {}", when(s.period_end)),
            ),
            SubStatus::PastDue => (
                "past_due",
                match s.grace_until {
                    Some(g) if g > now => format!(
                        "Past due — the last payment failed; access continues until {} (grace period)",
                        when(g)
                    ),
                    _ => "Past due — the grace period has ended".to_string(),
                },
            ),
            SubStatus::Incomplete => ("incomplete", "Awaiting the first payment".to_string()),
            SubStatus::Canceled | SubStatus::Expired => continue,
        };
        items.push_str(&format!(
            r#"<li class="sub" data-status="{status}"><strong>{plan}</strong> ({cycle}, {provider}): {text}</li>"#,
            plan = esc(&s.plan),
            cycle = esc(&s.cycle),
            provider = esc(&s.provider),
            text = esc(&text),
        ));
    }
    if items.is_empty() {
        items = r#"<li class="sub" data-status="none">No paid subscription.</li>"#.to_string();
    }
    format!(
        r#"<section class="card" id="subscription"><h2>Plan</h2>
<p>Your plan: <span class="plan-badge" id="current-plan">{plan}</span></p>
<ul class="subs">{items}</ul></section>"#,
        plan = esc(plan)
    )
}

async fn key_rows(
    state: &AppState,
    keys: &[KeyRecord],
    csrf: &str,
    nonce: &str,
) -> Result<(String, String), PortalError> {
    let now = state.now();
    let today = day_index(now);
    let today_text = format_day(today);
    let mut rows = String::new();
    let mut charts = String::new();
    for k in keys {
        let limits = effective_limits(state, k);
        let active = k.is_active(now);
        let usage = state
            .store()
            .usage_of(
                &k.key_id,
                &today_text,
                u32::try_from(super::chart::DAYS).unwrap_or(30),
            )
            .await?;
        let minute = state.minute().current(&k.key_id, now);
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else if active {
            "active"
        } else {
            "expired"
        };
        let actions = if active {
            format!(
                r#"<form method="post" action="/portal/keys/{id}/rotate" class="inline">{csrf}{nonce}<button type="submit" class="secondary" data-action="rotate">Rotate</button></form>
<form method="post" action="/portal/keys/{id}/revoke" class="inline">{csrf}<button type="submit" class="danger" data-action="revoke">Revoke</button></form>"#,
                id = esc(&k.key_id),
                csrf = hidden("csrf", csrf),
                nonce = hidden("nonce", nonce),
            )
        } else {
            String::new()
        };
        rows.push_str(&format!(
            r#"<tr class="key" id="key-{id}" data-key="{id}" data-status="{status}">
<td>{name}</td><td><code class="start">{start}…</code></td><td class="key-plan">{plan}</td>
<td class="limits"><span class="limit-minute">{per_minute}/min</span> · <span class="limit-day">{per_day}/day</span></td>
<td>{status}</td><td>{created}<br><small>last used: {last_used}</small></td><td class="actions">{actions}</td></tr>"#,
            id = esc(&k.key_id),
            name = esc(&k.name),
            start = esc(&k.start),
            plan = esc(&k.plan),
            per_minute = count(limits.per_minute),
            per_day = count(limits.per_day),
            created = when(k.created_at),
            last_used = k.last_used.map(when).unwrap_or_else(|| "never".into()),
        ));
        if active {
            let series = super::chart::series(&usage.history, today);
            charts.push_str(&format!(
                r#"<article class="usage" data-key="{id}"><h3>{name} <code>{start}…</code></h3>
<p class="quotas"><span>This minute: <strong class="minute-used">{minute}</strong> of {per_minute}</span> <meter min="0" max="{per_minute_raw}" value="{minute_raw}"></meter>
<span>Today (UTC): <strong class="today-used">{today_used}</strong> of {per_day}</span> <meter min="0" max="{per_day_raw}" value="{today_raw}"></meter>
<span>All time: {total}</span></p>
{chart}</article>"#,
                id = esc(&k.key_id),
                name = esc(&k.name),
                start = esc(&k.start),
                minute = count(minute),
                per_minute = count(limits.per_minute),
                per_minute_raw = limits.per_minute,
                minute_raw = minute.min(limits.per_minute),
                today_used = count(usage.today),
                per_day = count(limits.per_day),
                per_day_raw = limits.per_day,
                today_raw = usage.today.min(limits.per_day),
                total = count(usage.total),
                chart = super::chart::svg(&k.key_id, &k.name, &series),
            ));
        }
    }
    Ok((rows, charts))
}

fn upgrade_block(state: &AppState, csrf: &str, plan: &str) -> String {
    let bps = state.cfg().sepa_discount_bps;
    let p = &state.providers();
    let providers = [
        ("stripe", "Card (Stripe Checkout)", p.stripe.is_some()),
        ("paypal", "PayPal", p.paypal.is_some()),
        ("sepa", "SEPA bank transfer", p.sepa.is_some()),
    ];
    let mut cards = String::new();
    for pl in state.catalogue().all().iter().filter(|pl| pl.is_paid()) {
        let buttons: String = providers
            .iter()
            .map(|(id, label, ok)| {
                if *ok {
                    let extra = if *id == "sepa" {
                        format!(" ({} off)", percent(bps))
                    } else {
                        String::new()
                    };
                    format!(
                        r#"<button type="submit" name="provider" value="{id}" data-provider="{id}">{label}{extra}</button>"#,
                        label = esc(label),
                        extra = esc(&extra),
                    )
                } else {
                    format!(
                        r#"<button type="submit" name="provider" value="{id}" data-provider="{id}" disabled>{label}</button><span class="na">not available</span>"#,
                        label = esc(label)
                    )
                }
            })
            .collect();
        let options: String = [Cycle::Monthly, Cycle::Yearly]
            .iter()
            .map(|c| {
                format!(
                    r#"<option value="{c}">{name}: {price} (SEPA {sepa})</option>"#,
                    c = c.as_str(),
                    name = if *c == Cycle::Monthly {
                        "Monthly"
                    } else {
                        "Yearly"
                    },
                    price = esc(&pl.price(*c).to_string()),
                    sepa = esc(&sepa_price(pl, *c, bps).to_string()),
                )
            })
            .collect();
        let verb = if pl.id == plan {
            "Extend"
        } else {
            "Upgrade to"
        };
        cards.push_str(&format!(
            r#"<article class="plan-upgrade" data-plan="{id}"><h3>{verb} {name}</h3>{prices}
<p class="limits">{per_minute} requests / minute · {per_day} / day</p>
<form method="post" action="/portal/upgrade">{csrf}{plan_field}
<label>Billing cycle <select name="cycle" class="cycle-select">{options}</select></label>
<div class="pay-buttons">{buttons}</div></form></article>"#,
            id = esc(&pl.id),
            name = esc(&pl.name),
            prices = price_block(pl, bps),
            per_minute = count(pl.rate_limit_per_minute),
            per_day = count(pl.daily_limit),
            csrf = hidden("csrf", csrf),
            plan_field = hidden("plan", &pl.id),
        ));
    }
    format!(
        r#"<section class="card" id="upgrade"><h2>Upgrade</h2>{toggle}<div class="upgrades">{cards}</div></section>"#,
        toggle = cycle_toggle()
    )
}

fn pending_block(payments: &[Payment]) -> String {
    if payments.is_empty() {
        return String::new();
    }
    let items: String = payments
        .iter()
        .map(|p| {
            format!(
                r#"<li><a href="/portal/payments/{id}">{what}</a> — {amount} by {method}, awaiting payment</li>"#,
                id = esc(&p.id),
                what = esc(&p.description),
                amount = esc(&money(p.amount_minor, &p.currency)),
                method = esc(&p.method),
            )
        })
        .collect();
    format!(
        r#"<section class="card" id="pending"><h2>Open payments</h2><ul>{items}</ul></section>"#
    )
}

async fn render(
    state: &AppState,
    c: &Customer,
    notice: Option<&str>,
    reveal: Option<&Reveal>,
) -> Result<String, PortalError> {
    let now = state.now();
    let plan = state.store().user_plan(&c.user_id).await?;
    let subs = state.store().subscriptions_of(&c.user_id).await?;
    let keys = state.store().keys_of_user(&c.user_id).await?;
    let pending: Vec<Payment> = state
        .store()
        .list_payments(Some(&c.user_id), Some(PayStatus::Pending), 10)
        .await?;
    let csrf = &c.session.csrf;
    let sessions = &state.portal().sessions;
    // One nonce per rendered page, shared by its forms that answer with a secret.
    let nonce = sessions.issue_nonce(&c.session.digest);
    let (rows, charts) = key_rows(state, &keys, csrf, &nonce).await?;
    let secret = reveal
        .map(|r| {
            format!(
                r#"<section class="card secret" id="new-secret" role="status" data-key="{id}">
<h2>{title}</h2>
<p>Copy it now: it is shown only this once and cannot be recovered. Send it in the <code>X-API-Key</code> header.</p>
<div class="secret-row"><code id="secret-value">{key}</code> <button type="button" class="copy" data-copy="secret-value">Copy</button></div>
</section>"#,
                id = esc(&r.key_id),
                title = if r.rotated { "Your key's new secret" } else { "Your new API key" },
                key = esc(&r.api_key),
            )
        })
        .unwrap_or_default();
    let notice = notice
        .map(|t| format!(r#"<p class="notice" role="status">{}</p>"#, esc(t)))
        .unwrap_or_default();
    let table = if keys.is_empty() {
        r#"<p class="empty">No keys yet.</p>"#.to_string()
    } else {
        format!(
            r#"<table class="keys"><thead><tr><th>Name</th><th>Key</th><th>Plan</th><th>Limits</th><th>Status</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    let body = format!(
        r#"{notice}{secret}<h1>Dashboard</h1>
{subscription}
<section class="card" id="keys"><h2>API keys</h2>{table}
<form method="post" action="/portal/keys" class="create-key">{csrf_field}{nonce_field}
<label>Name <input name="name" maxlength="100" required value="Default Key"></label> <button type="submit" id="create-key">Create key</button></form></section>
<section class="card" id="usage"><h2>Usage, last 30 days</h2>{charts_or_empty}</section>
{pending}
{upgrade}"#,
        subscription = subscription_block(&subs, &plan, now),
        csrf_field = hidden("csrf", csrf),
        nonce_field = hidden("nonce", &nonce),
        charts_or_empty = if charts.is_empty() {
            r#"<p class="empty">Create a key to see its usage here.</p>"#.to_string()
        } else {
            charts
        },
        pending = pending_block(&pending),
        upgrade = upgrade_block(state, csrf, &plan),
    );
    Ok(layout(
        "Dashboard",
        Some(&Header {
            who: &c.user_id,
            csrf,
        }),
        &body,
    ))
}

/// `GET /portal/dashboard`.
/// The customer's dashboard: keys, usage chart, quotas, subscription, upgrades.
#[utoipa::path(
    get,
    path = "/portal/dashboard",
    tag = "portal",
    operation_id = "dashboard_page",
    security(("portalSession" = [])),
    params(("notice" = Option<String>, Query, description = "A fixed notice to show, e.g. `revoked`")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub async fn page(
    c: Customer,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PortalError> {
    let notice = notice_text(q.get("notice").map(String::as_str));
    Ok(html(
        StatusCode::OK,
        render(&state, &c, notice, None).await?,
    ))
}

/// The customer's own key, or 404 (also for another customer's key: its existence is not told).
async fn own_key(state: &AppState, c: &Customer, key_id: &str) -> Result<KeyRecord, PortalError> {
    let missing = || {
        PortalError::not_found(format!(
            "There is no key {key_id} in your account. A key can only be managed by the account it belongs to."
        ))
    };
    valid_key_id_or_404(key_id).map_err(|_| missing())?;
    match state.store().get_key(key_id).await {
        Ok(k) if k.user_id == c.user_id => Ok(k),
        Ok(_) | Err(StoreError::NotFound(_)) => Err(missing()),
        Err(e) => Err(e.into()),
    }
}

/// `POST /portal/keys`: mints a key on the customer's plan and shows its secret once.
/// Create a key; the answer shows its secret once.
#[utoipa::path(
    post,
    path = "/portal/keys",
    tag = "portal",
    security(("portalSession" = [])),
    request_body(content = super::KeyForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The dashboard with the new secret", body = String, content_type = "text/html"),
        (status = 303, description = "The form was already submitted: back to the dashboard"),
    )
)]
pub async fn create_key(
    c: Customer,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    let form = checked_form(&c.session, &body)?;
    if !state
        .portal()
        .sessions
        .take_nonce(&c.session.digest, form.get("nonce").unwrap_or(""))
    {
        return Ok(see_other("/portal/dashboard?notice=resubmitted"));
    }
    let name = form
        .get("name")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .unwrap_or("Default Key");
    let plan = state.store().user_plan(&c.user_id).await?;
    let req = GenerateRequest {
        user_id: c.user_id.clone(),
        plan: Some(plan),
        name: Some(name.to_string()),
        expires_at: None,
        expires_in_days: None,
        metadata: None,
        rate_limit_per_minute: None,
        daily_limit: None,
    };
    let cause = Cause::new(
        "portal",
        format!("customer {} created a key in the portal", c.user_id),
    );
    let minted = crate::keys::mint(&state, req, &cause).await?;
    let reveal = Reveal {
        key_id: minted.record.key_id.clone(),
        api_key: minted.api_key,
        rotated: false,
    };
    Ok(html(
        StatusCode::OK,
        render(&state, &c, None, Some(&reveal)).await?,
    ))
}

/// `POST /portal/keys/{key_id}/rotate`: a new secret for the same key, shown once; the old
/// secret stops working.
#[utoipa::path(
    post,
    path = "/portal/keys/{key_id}/rotate",
    tag = "portal",
    security(("portalSession" = [])),
    params(("key_id" = String, Path, description = "One of the customer's keys")),
    request_body(content = super::KeyForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "The dashboard with the new secret", body = String, content_type = "text/html"),
        (status = 303, description = "The form was already submitted: back to the dashboard"),
    )
)]
pub async fn rotate_key(
    c: Customer,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    let form = checked_form(&c.session, &body)?;
    let key = own_key(&state, &c, &key_id).await?;
    if !state
        .portal()
        .sessions
        .take_nonce(&c.session.digest, form.get("nonce").unwrap_or(""))
    {
        return Ok(see_other("/portal/dashboard?notice=resubmitted"));
    }
    let cause = Cause::new(
        "portal",
        format!(
            "customer {} rotated {} in the portal",
            c.user_id, key.key_id
        ),
    );
    let minted = crate::keys::rotate(&state, &key.key_id, 0, &cause).await?;
    let reveal = Reveal {
        key_id: minted.record.key_id.clone(),
        api_key: minted.api_key,
        rotated: true,
    };
    Ok(html(
        StatusCode::OK,
        render(&state, &c, None, Some(&reveal)).await?,
    ))
}

/// `POST /portal/keys/{key_id}/revoke`.
/// Revoke one of the customer's keys.
#[utoipa::path(
    post,
    path = "/portal/keys/{key_id}/revoke",
    tag = "portal",
    security(("portalSession" = [])),
    params(("key_id" = String, Path, description = "One of the customer's keys")),
    request_body(content = super::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Revoked: back to the dashboard"))
)]
pub async fn revoke_key(
    c: Customer,
    State(state): State<AppState>,
    Path(key_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    checked_form(&c.session, &body)?;
    let key = own_key(&state, &c, &key_id).await?;
    let cause = Cause::new(
        "portal",
        format!(
            "customer {} revoked {} in the portal",
            c.user_id, key.key_id
        ),
    );
    let k = state
        .store()
        .revoke_key(&key.key_id, state.now(), &cause)
        .await?;
    state.hub().notify(k.seq);
    Ok(see_other("/portal/dashboard?notice=revoked"))
}

fn provider_refused(r: internal::Refused) -> PortalError {
    let title = if r.status == StatusCode::SERVICE_UNAVAILABLE {
        "Not available"
    } else {
        "Payment not started"
    };
    PortalError::new(r.status, title, r.message)
}

/// A provider's redirect target, accepted only as an absolute http(s) URL.
fn external(url: Option<&str>) -> Result<Response, PortalError> {
    match url {
        Some(u) if u.starts_with("https://") || u.starts_with("http://") => Ok(see_other(u)),
        _ => Err(PortalError::new(
            StatusCode::BAD_GATEWAY,
            "Payment not started",
            "The payment provider did not return a page to continue on; nothing was charged.",
        )),
    }
}

/// `POST /portal/upgrade` {plan, cycle, provider}: starts a payment. The server prices it
/// (the providers' own endpoints decide the amount); the customer chooses only what to buy.
#[utoipa::path(
    post,
    path = "/portal/upgrade",
    tag = "portal",
    security(("portalSession" = [])),
    request_body(content = super::UpgradeForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "To Stripe Checkout, PayPal's approval page, or the SEPA instructions"))
)]
pub async fn upgrade(
    c: Customer,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    let form = checked_form(&c.session, &body)?;
    let plan = form.get("plan").unwrap_or("");
    let cycle = form.get("cycle").unwrap_or("monthly");
    match state.catalogue().get(plan) {
        Some(p) if p.is_paid() => {}
        _ => {
            return Err(PortalError::bad(format!(
                "{plan:?} is not a paid plan of this service"
            )))
        }
    }
    if Cycle::parse(cycle).is_none() {
        return Err(PortalError::bad(
            "the billing cycle must be monthly or yearly",
        ));
    }
    let token = state.portal().token().clone();
    match form.get("provider").unwrap_or("") {
        "sepa" => {
            let answer = internal::post(
                &state,
                &token,
                "/billing/create",
                &json!({"user_id": c.user_id, "plan": plan, "cycle": cycle, "method": "sepa"}),
            )
            .await
            .map_err(provider_refused)?;
            let id = answer["payment_id"].as_str().unwrap_or("");
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(PortalError::from(crate::error::ApiError::internal(
                    "SEPA instructions came back without a payment id",
                )));
            }
            Ok(see_other(&format!("/portal/payments/{id}")))
        }
        "stripe" => {
            let base = state.origin();
            let answer = internal::post(
                &state,
                &token,
                "/api/v1/billing/checkout",
                &json!({
                    "user_id": c.user_id,
                    "plan": plan,
                    "cycle": cycle,
                    "success_url": format!("{base}/portal/dashboard?notice=checkout_done"),
                    "cancel_url": format!("{base}/portal/dashboard?notice=checkout_cancelled"),
                }),
            )
            .await
            .map_err(provider_refused)?;
            external(answer["url"].as_str())
        }
        "paypal" => {
            let answer = internal::post(
                &state,
                &token,
                "/billing/paypal/order",
                &json!({"user_id": c.user_id, "plan": plan, "cycle": cycle}),
            )
            .await
            .map_err(provider_refused)?;
            let approve = answer["links"]
                .as_array()
                .and_then(|links| links.iter().find(|l| l["rel"] == "approve"))
                .and_then(|l| l["href"].as_str())
                .or_else(|| answer["approve_url"].as_str());
            external(approve)
        }
        other => Err(PortalError::bad(format!(
            "{other:?} is not a payment method; choose stripe, paypal or sepa"
        ))),
    }
}

/// `GET /portal/payments/{payment_id}`: one of the customer's payments; for a pending SEPA
/// transfer, the instructions and the EPC QR code for banking apps.
/// One of the customer's payments; SEPA instructions with the EPC QR code.
#[utoipa::path(
    get,
    path = "/portal/payments/{payment_id}",
    tag = "portal",
    security(("portalSession" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub async fn payment_page(
    c: Customer,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Response, PortalError> {
    let missing =
        || PortalError::not_found(format!("There is no payment {payment_id} in your account."));
    let p = match state.store().get_payment(&payment_id).await {
        Ok(p) if p.user_id == c.user_id => p,
        Ok(_) | Err(StoreError::NotFound(_)) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let amount = money(p.amount_minor, &p.currency);
    let what = esc(&p.description);
    let body = match (p.method.as_str(), p.status, state.providers().sepa.as_ref()) {
        ("sepa", PayStatus::Pending, Some(cfg)) => format!(
            r#"<section class="card instructions" id="sepa-instructions" data-payment="{id}" data-status="pending">
<h1>Pay by SEPA bank transfer</h1>
<p>{what}. Transfer exactly the amount below with the reference, or scan the code with your banking app. Your plan changes as soon as the transfer is confirmed.</p>
<div class="sepa-grid"><dl>
<dt>Recipient</dt><dd id="sepa-holder">{holder}</dd>
<dt>IBAN</dt><dd><code id="sepa-iban">{iban}</code></dd>
<dt>BIC</dt><dd><code id="sepa-bic">{bic}</code></dd>
<dt>Amount</dt><dd><strong id="sepa-amount">{amount}</strong></dd>
<dt>Reference</dt><dd><code id="sepa-reference">{reference}</code> <button type="button" class="copy" data-copy="sepa-reference">Copy</button></dd>
<dt>Pay by</dt><dd>{expires}</dd>
</dl>
<figure class="qr"><img id="sepa-qr" src="/billing/sepa/{id}/qr.svg" width="240" height="240" alt="EPC QR code with these transfer details, for banking apps"><figcaption>Scan with your banking app</figcaption></figure></div>
<p><a href="/portal/dashboard">Back to your dashboard</a></p></section>"#,
            id = esc(&p.id),
            holder = esc(&cfg.holder),
            iban = esc(&cfg.iban.grouped()),
            bic = esc(cfg.bic.as_ref().map(|b| b.as_str()).unwrap_or("—")),
            amount = esc(&amount),
            reference = esc(p.reference.as_deref().unwrap_or("")),
            expires = p.expires_at.map(when).unwrap_or_else(|| "—".into()),
        ),
        (_, status, _) => {
            let text = match status {
                PayStatus::Succeeded => format!(
                    "Paid. {}",
                    p.period_end
                        .map(|e| format!("Your plan is paid up to {}.", when(e)))
                        .unwrap_or_default()
                ),
                PayStatus::Pending => "Awaiting payment.".to_string(),
                PayStatus::Failed => {
                    "This payment failed or was rejected; nothing changed.".to_string()
                }
                PayStatus::Expired => {
                    "These payment instructions expired; start a new payment from your dashboard."
                        .to_string()
                }
                PayStatus::Refunded => "This payment was refunded.".to_string(),
            };
            format!(
                r#"<section class="card" data-payment="{id}" data-status="{status}"><h1>Payment</h1><p>{what}: {amount}</p><p class="message">{text}</p><p><a href="/portal/dashboard">Back to your dashboard</a></p></section>"#,
                id = esc(&p.id),
                status = p.status.as_str(),
                amount = esc(&amount),
                text = esc(&text),
            )
        }
    };
    Ok(html(
        StatusCode::OK,
        layout(
            "Payment",
            Some(&Header {
                who: &c.user_id,
                csrf: &c.session.csrf,
            }),
            &body,
        ),
    ))
}
