//! The operator view, behind an operator hand-off (`POST /portal/api/operator-handoff` with the
//! service token): measured stats, active keys by plan, recent payments, pending SEPA transfers
//! with confirm / reject, and the report of the last statement import.

use super::csrf::checked_form;
use super::html::{count, esc, html, page as layout, when, Header, PortalError};
use super::internal;
use super::{notice_text, see_other, Operator};
use crate::state::AppState;
use crate::store::{PayStatus, Payment};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::HashMap;
use tollgate_protocol::money::{Currency, Money};

fn money(p: &Payment) -> String {
    Currency::parse(&p.currency)
        .map(|c| Money::new(p.amount_minor, c).to_string())
        .unwrap_or_else(|_| format!("{} {}", p.amount_minor, p.currency))
}

fn csrf_field(csrf: &str) -> String {
    format!(r#"<input type="hidden" name="csrf" value="{}">"#, esc(csrf))
}

fn pending_rows(pending: &[&Payment], csrf: &str) -> String {
    if pending.is_empty() {
        return r#"<p class="empty">No transfers are waiting.</p>"#.to_string();
    }
    let rows: String = pending
        .iter()
        .map(|p| {
            format!(
                r#"<tr class="pending-transfer" data-payment="{id}" data-user="{user}"><td><code>{id}</code></td><td>{user}</td><td>{what}</td><td>{amount}</td><td><code>{reference}</code></td><td>{created}</td>
<td class="actions"><form method="post" action="/portal/operator/payments/{id}/confirm" class="inline">{csrf}<button type="submit" data-action="confirm">Confirm received</button></form>
<form method="post" action="/portal/operator/payments/{id}/reject" class="inline">{csrf}<button type="submit" class="danger" data-action="reject">Reject</button></form></td></tr>"#,
                id = esc(&p.id),
                user = esc(&p.user_id),
                what = esc(&p.description),
                amount = esc(&money(p)),
                reference = esc(p.reference.as_deref().unwrap_or("")),
                created = when(p.created_at),
                csrf = csrf_field(csrf),
            )
        })
        .collect();
    format!(
        r#"<table><thead><tr><th>Payment</th><th>User</th><th>For</th><th>Amount</th><th>Reference</th><th>Created</th><th></th></tr></thead><tbody>{rows}</tbody></table>"#
    )
}

fn payment_rows(payments: &[Payment]) -> String {
    if payments.is_empty() {
        return r#"<p class="empty">No payments yet.</p>"#.to_string();
    }
    let rows: String = payments
        .iter()
        .map(|p| {
            format!(
                r#"<tr data-payment="{id}" data-status="{status}"><td><code>{id}</code></td><td>{user}</td><td>{method}</td><td>{amount}</td><td>{plan}</td><td>{status}</td><td>{updated}</td></tr>"#,
                id = esc(&p.id),
                user = esc(&p.user_id),
                method = esc(&p.method),
                amount = esc(&money(p)),
                plan = esc(&format!(
                    "{} {}",
                    p.plan.as_deref().unwrap_or("—"),
                    p.cycle.as_deref().unwrap_or("")
                )),
                status = esc(p.status.as_str()),
                updated = when(p.updated_at),
            )
        })
        .collect();
    format!(
        r#"<table><thead><tr><th>Payment</th><th>User</th><th>Method</th><th>Amount</th><th>Plan</th><th>Status</th><th>Updated</th></tr></thead><tbody>{rows}</tbody></table>"#
    )
}

fn import_block(report: Option<(String, String, Value)>) -> String {
    let Some((file, at, report)) = report else {
        return r#"<p class="empty">No statement has been imported yet (<code>POST /billing/sepa/import</code> or <code>tollgate-backend sepa import FILE</code>).</p>"#.to_string();
    };
    let summary = report["summary"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("<li>{}: {}</li>", esc(k), esc(&v.to_string())))
                .collect::<String>()
        })
        .unwrap_or_default();
    let lines: String = report["lines"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .map(|l| {
                    let s = |k: &str| l[k].as_str().unwrap_or("—").to_string();
                    format!(
                        r#"<tr data-outcome="{outcome}"><td><code>{entry}</code></td><td>{outcome}{flag}</td><td>{amount}</td><td><code>{reference}</code></td><td>{payment}</td><td>{debtor}</td></tr>"#,
                        entry = esc(&s("entry")),
                        outcome = esc(&s("outcome")),
                        flag = if l["needs_operator"].as_bool() == Some(true) { " ⚠ needs a decision" } else { "" },
                        amount = esc(&s("amount")),
                        reference = esc(&s("reference")),
                        payment = esc(&s("payment_id")),
                        debtor = esc(&s("debtor")),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        r#"<p>File <strong>{file}</strong>, imported {at}; {activated} payment(s) activated.</p><ul class="summary">{summary}</ul>
<table><thead><tr><th>Entry</th><th>Outcome</th><th>Amount</th><th>Reference</th><th>Payment</th><th>Debtor</th></tr></thead><tbody>{lines}</tbody></table>"#,
        file = esc(&file),
        at = esc(&at),
        activated = report["activated"].as_u64().unwrap_or(0),
    )
}

/// `GET /portal/operator`.
/// The operator view: stats, keys by plan, payments, pending SEPA transfers, last import.
#[utoipa::path(
    get,
    path = "/portal/operator",
    tag = "portal",
    operation_id = "operator_page",
    security(("portalSession" = [])),
    params(("notice" = Option<String>, Query, description = "A fixed notice to show")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"))
)]
pub async fn page(
    o: Operator,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, PortalError> {
    let now = state.now();
    let stats = state.store().key_stats(now).await?;
    let payments = state.store().list_payments(None, None, 25).await?;
    let pending_all = state
        .store()
        .list_payments(None, Some(PayStatus::Pending), 100)
        .await?;
    let pending: Vec<&Payment> = pending_all.iter().filter(|p| p.method == "sepa").collect();
    let last_import = state
        .store()
        .list_imports(1)
        .await?
        .into_iter()
        .next()
        .map(|r| {
            let report: Value = serde_json::from_str(&r.report).unwrap_or(Value::Null);
            (r.file_name, when(r.created_at), report)
        });
    let by_plan: String = stats
        .by_plan
        .iter()
        .map(|(plan, n)| {
            format!(
                r#"<tr data-plan="{p}"><td>{p}</td><td class="num">{n}</td></tr>"#,
                p = esc(plan),
                n = count(*n)
            )
        })
        .collect();
    let notice = notice_text(q.get("notice").map(String::as_str))
        .map(|t| format!(r#"<p class="notice" role="status">{}</p>"#, esc(t)))
        .unwrap_or_default();
    let body = format!(
        r#"{notice}<h1>Operator</h1>
<section class="card" id="stats"><h2>Stats</h2><dl class="stats">
<dt>Keys</dt><dd id="stat-keys">{total}</dd><dt>Active keys</dt><dd id="stat-active">{active}</dd>
<dt>Users</dt><dd>{users}</dd><dt>Requests (all time)</dt><dd id="stat-requests">{requests}</dd>
<dt>Uptime</dt><dd>{uptime}</dd><dt>Storage</dt><dd>{storage}</dd></dl></section>
<section class="card" id="by-plan"><h2>Active keys by plan</h2><table><tbody>{by_plan}</tbody></table></section>
<section class="card" id="pending-sepa"><h2>Pending SEPA transfers</h2>{pending}</section>
<section class="card" id="payments"><h2>Recent payments</h2>{payments}</section>
<section class="card" id="last-import"><h2>Last statement import</h2>{import}</section>"#,
        total = count(stats.total_keys),
        active = count(stats.active_keys),
        users = count(stats.users),
        requests = count(stats.total_requests),
        uptime = esc(&crate::stats::uptime_text(
            state.started().elapsed().as_secs()
        )),
        storage = esc(state.store().kind()),
        pending = pending_rows(&pending, &o.session.csrf),
        payments = payment_rows(&payments),
        import = import_block(last_import),
    );
    Ok(html(
        StatusCode::OK,
        layout(
            "Operator",
            Some(&Header {
                who: "operator",
                csrf: &o.session.csrf,
            }),
            &body,
        ),
    ))
}

async fn decide(
    o: Operator,
    state: AppState,
    payment_id: String,
    body: &[u8],
    verb: &str,
) -> Result<Response, PortalError> {
    checked_form(&o.session, body)?;
    if payment_id.is_empty()
        || payment_id.len() > 64
        || !payment_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(PortalError::not_found(format!(
            "There is no payment {payment_id}."
        )));
    }
    let token = state.portal().token().clone();
    internal::post(
        &state,
        &token,
        &format!("/billing/sepa/{payment_id}/{verb}"),
        &json!({"note": format!("{verb}ed in the operator portal")}),
    )
    .await
    .map_err(|r| PortalError::new(r.status, "Not possible", r.message))?;
    Ok(see_other(&format!("/portal/operator?notice={verb}ed")))
}

/// `POST /portal/operator/payments/{payment_id}/confirm`: the transfer arrived; the payment
/// succeeds and buys its plan period.
#[utoipa::path(
    post,
    path = "/portal/operator/payments/{payment_id}/confirm",
    tag = "portal",
    operation_id = "operator_confirm",
    security(("portalSession" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    request_body(content = super::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Confirmed: back to the operator view"))
)]
pub async fn confirm(
    o: Operator,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    decide(o, state, payment_id, &body, "confirm").await
}

/// `POST /portal/operator/payments/{payment_id}/reject`.
#[utoipa::path(
    post,
    path = "/portal/operator/payments/{payment_id}/reject",
    tag = "portal",
    operation_id = "operator_reject",
    security(("portalSession" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    request_body(content = super::CsrfForm, content_type = "application/x-www-form-urlencoded"),
    responses((status = 303, description = "Rejected: back to the operator view"))
)]
pub async fn reject(
    o: Operator,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, PortalError> {
    decide(o, state, payment_id, &body, "reject").await
}
