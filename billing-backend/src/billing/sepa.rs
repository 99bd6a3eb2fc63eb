//! The SEPA bank-transfer flow over HTTP: `POST /billing/create` issues instructions (discounted
//! amount, unique RF reference, EPC QR), an operator confirms or rejects, and camt.053/.054
//! statement imports reconcile transfers against them. Only an exact match (reference, amount,
//! currency, pending) activates a plan; everything else is reported for an operator decision.

use crate::auth::ServiceAuth;
use crate::billing::settle;
use crate::error::ApiError;
use crate::error::ErrorDoc;
use crate::keys::{rfc3339, valid_user_id};
use crate::providers::sepa::epc_qr::{self, EpcTransfer, Remittance};
use crate::providers::sepa::reconcile::{self, ExpectedPayment, Outcome, PaymentStatus};
use crate::providers::sepa::rf::CreditorReference;
use crate::providers::sepa::{camt, SepaConfig};
use crate::state::AppState;
use crate::store::sepa::{ImportRecord, RecordedEntry};
use crate::store::{Cause, PayStatus, Payment, Settled, StoreError};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tollgate_protocol::money::{Currency, Money};
use utoipa::{IntoParams, ToSchema};

/// Largest statement accepted (also the camt parser's own cap).
pub const MAX_STATEMENT_BYTES: usize = camt::MAX_INPUT_BYTES;

fn config(state: &AppState) -> Result<&SepaConfig, ApiError> {
    state.providers().sepa.as_ref().ok_or_else(|| {
        crate::providers::not_configured("SEPA", "SEPA_HOLDER, SEPA_IBAN and SEPA_BIC")
    })
}

/// A fresh reference: `RF` + check digits + `TG` + 12 random characters of 0-9A-Z.
fn new_reference() -> Result<CreditorReference, ApiError> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let payload: String = std::iter::once("TG".to_string())
        .chain(
            crate::ids::random_bytes(12)
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]).to_string()),
        )
        .collect();
    CreditorReference::from_payload(&payload)
        .map_err(|e| ApiError::internal(format!("reference generation: {e}")))
}

/// `{user_id, plan, cycle, method: "sepa"}` (priced by the server, SEPA discount applied) or
/// `{user_id, amount, currency: "EUR", description?}`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Required.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    user_id: Option<String>,
    /// A paid plan of the catalogue.
    #[serde(default)]
    plan: Option<String>,
    /// `monthly` (default) or `yearly`; only with a plan.
    #[serde(default)]
    #[schema(pattern = "^(monthly|yearly)$")]
    cycle: Option<String>,
    /// `sepa` (default, any case).
    #[serde(default)]
    #[schema(pattern = "^[sS][eE][pP][aA]$")]
    method: Option<String>,
    /// Only without a plan: a decimal number or string, such as `28.57` or `"28.57"`, from 0.01
    /// to 999999999.99.
    #[serde(default)]
    #[schema(value_type = Option<String>, pattern = "^[0-9]{1,9}(\\.[0-9]{1,2})?$")]
    amount: Option<Value>,
    /// `EUR` (SEPA credit transfers are in euros).
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z]{3}$")]
    currency: Option<String>,
    /// At most 140 characters, no control characters (only without a plan).
    #[serde(default)]
    #[schema(max_length = 140)]
    description: Option<String>,
}

fn parse_amount(v: &Value, currency: Currency) -> Result<Money, ApiError> {
    let m = match v {
        Value::Number(n) => Money::from_json_number(n, currency),
        Value::String(s) => Money::parse_decimal(s, currency),
        _ => {
            return Err(ApiError::bad(
                "invalid_amount",
                "amount must be a decimal number such as 28.57 or \"28.57\"",
            ))
        }
    }
    .map_err(|e| ApiError::bad("invalid_amount", e.to_string()))?;
    if m.minor < epc_qr::MIN_AMOUNT_MINOR || m.minor > epc_qr::MAX_AMOUNT_MINOR {
        return Err(ApiError::bad(
            "invalid_amount",
            "a SEPA transfer amount must be between 0.01 and 999999999.99",
        ));
    }
    Ok(m)
}

/// Transfer instructions. Answers in this module list their fields in alphabetical order: the
/// `json!` maps they replaced wrote them so, and the bytes on the wire stayed the same.
#[derive(Serialize, ToSchema)]
pub struct Instructions {
    /// `28.57 EUR`.
    amount: String,
    amount_minor: i64,
    bic: Option<String>,
    currency: String,
    /// Grouped by four.
    iban: String,
    iban_compact: String,
    /// Path of the EPC QR code (PNG).
    qr_png: String,
    /// Path of the EPC QR code (SVG).
    qr_svg: String,
    recipient_name: String,
    /// The ISO 11649 creditor reference (`RF..`) the transfer must carry.
    reference: Option<String>,
}

fn instructions(cfg: &SepaConfig, p: &Payment) -> Instructions {
    let amount = Currency::parse(&p.currency)
        .map(|c| Money::new(p.amount_minor, c).to_string())
        .unwrap_or_default();
    Instructions {
        amount,
        amount_minor: p.amount_minor,
        bic: cfg.bic.as_ref().map(|b| b.as_str().to_string()),
        currency: p.currency.clone(),
        iban: cfg.iban.grouped(),
        iban_compact: cfg.iban.as_str().to_string(),
        qr_png: format!("/billing/sepa/{}/qr.png", p.id),
        qr_svg: format!("/billing/sepa/{}/qr.svg", p.id),
        recipient_name: cfg.holder.clone(),
        reference: p.reference.clone(),
    }
}

#[derive(Serialize, ToSchema)]
pub struct Created {
    cycle: Option<String>,
    /// Unpaid instructions expire then.
    expires_at: Option<String>,
    instructions: Instructions,
    /// `SEPA Bank Transfer`.
    method: &'static str,
    payment_id: String,
    plan: Option<String>,
    /// `PENDING`.
    status: &'static str,
    success: bool,
}

/// SEPA transfer instructions: the (discounted) amount, an RF creditor reference, the EPC QR.
#[utoipa::path(
    post,
    path = "/billing/create",
    tag = "sepa",
    security(("serviceToken" = [])),
    request_body = CreateRequest,
    responses(
        (status = 200, description = "Pending instructions", body = Created),
        (status = 400, description = "`invalid_json`, `invalid_body`, `unsupported_method`, `invalid_user_id`, `amount_not_allowed`, `unknown_plan`, `unknown_cycle`, `invalid_plan`, `invalid_currency`, `unsupported_currency`, `invalid_amount`", body = ErrorDoc),
    )
)]
async fn create(
    _: ServiceAuth,
    State(state): State<AppState>,
    body: axum::body::Bytes,
) -> Result<Json<Created>, ApiError> {
    if body.len() > state.cfg().max_body_bytes {
        return Err(ApiError::PayloadTooLarge(state.cfg().max_body_bytes));
    }
    let req: CreateRequest = crate::extract::parse_json(&body)?;
    let method = req.method.clone().unwrap_or_else(|| "sepa".to_string());
    if !method.eq_ignore_ascii_case("sepa") {
        return Err(ApiError::bad(
            "unsupported_method",
            format!("method {method:?} is not handled here: use \"sepa\" (card payments: /api/v1/billing/checkout, PayPal: /billing/paypal/order)"),
        ));
    }
    let cfg = config(&state)?;
    let user_id = req
        .user_id
        .clone()
        .ok_or_else(|| ApiError::bad("invalid_body", "user_id is required"))?;
    valid_user_id(&user_id)?;
    let (amount, plan, cycle, description) = match &req.plan {
        Some(plan_id) => {
            if req.amount.is_some() || req.currency.is_some() {
                return Err(ApiError::bad(
                    "amount_not_allowed",
                    "the amount of a plan is decided by the server; send plan and cycle only",
                ));
            }
            let (plan, cycle) = crate::plans::paid(&state, plan_id, req.cycle.as_deref())?;
            let price = plan
                .price(cycle)
                .discounted_bps(state.cfg().sepa_discount_bps)
                .map_err(|e| ApiError::internal(e.to_string()))?;
            if price.currency != Currency::EUR {
                return Err(ApiError::bad(
                    "unsupported_currency",
                    "SEPA credit transfers are in EUR; this plan is priced in another currency",
                ));
            }
            (
                price,
                Some(plan.id.clone()),
                Some(cycle.as_str().to_string()),
                format!("{} ({}) by SEPA transfer", plan.name, cycle.as_str()),
            )
        }
        None => {
            if req.cycle.is_some() {
                return Err(ApiError::bad("invalid_body", "cycle needs a plan"));
            }
            let currency = Currency::parse(req.currency.as_deref().unwrap_or("EUR"))
                .map_err(|e| ApiError::bad("invalid_currency", e.to_string()))?;
            if currency != Currency::EUR {
                return Err(ApiError::bad(
                    "unsupported_currency",
                    "SEPA credit transfers are in EUR",
                ));
            }
            let amount = parse_amount(
                req.amount.as_ref().ok_or_else(|| {
                    ApiError::bad(
                        "invalid_body",
                        "give plan and cycle, or amount and currency",
                    )
                })?,
                currency,
            )?;
            let description = req
                .description
                .clone()
                .unwrap_or_else(|| "Payment by SEPA transfer".to_string());
            if description.chars().count() > 140 || description.chars().any(char::is_control) {
                return Err(ApiError::bad(
                    "invalid_body",
                    "description must be at most 140 characters without control characters",
                ));
            }
            (amount, None, None, description)
        }
    };
    let now = state.now();
    let mut last_err = None;
    // References are random; on the (astronomically unlikely) collision, draw again.
    for _ in 0..3 {
        let reference = new_reference()?;
        let payment = Payment {
            id: crate::ids::prefixed("pay"),
            user_id: user_id.clone(),
            amount_minor: amount.minor,
            currency: amount.currency.to_string(),
            method: "sepa".to_string(),
            status: PayStatus::Pending,
            provider_ref: None,
            reference: Some(reference.as_str().to_string()),
            fee_minor: Some(0),
            plan: plan.clone(),
            cycle: cycle.clone(),
            subscription_id: None,
            description: description.clone(),
            created_at: now,
            updated_at: now,
            expires_at: Some(now + i64::from(cfg.expiry_days) * 86_400),
            period_start: None,
            period_end: None,
        };
        match state
            .store()
            .create_payment(&payment, &Cause::new("api", "POST /billing/create"))
            .await
        {
            Ok(()) => {
                return Ok(Json(Created {
                    cycle: payment.cycle.clone(),
                    expires_at: payment.expires_at.map(rfc3339),
                    instructions: instructions(cfg, &payment),
                    method: "SEPA Bank Transfer",
                    payment_id: payment.id.clone(),
                    plan: payment.plan.clone(),
                    status: "PENDING",
                    success: true,
                }))
            }
            Err(StoreError::Conflict(e)) => last_err = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::internal(format!(
        "could not draw a unique reference: {}",
        last_err.unwrap_or_default()
    )))
}

async fn pending_payment(state: &AppState, payment_id: &str) -> Result<Payment, ApiError> {
    let p = state
        .store()
        .get_payment(payment_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found(
                "payment_not_found",
                format!("payment {payment_id:?} not found"),
            ),
            other => other.into(),
        })?;
    if p.method != "sepa" {
        return Err(ApiError::not_found(
            "payment_not_found",
            format!("payment {payment_id:?} is not a SEPA transfer"),
        ));
    }
    Ok(p)
}

fn epc_payload(cfg: &SepaConfig, p: &Payment) -> Result<epc_qr::EpcPayload, ApiError> {
    let reference = p
        .reference
        .as_deref()
        .and_then(|r| CreditorReference::parse(r).ok());
    let amount = Money::new(
        p.amount_minor,
        Currency::parse(&p.currency).map_err(|e| ApiError::internal(e.to_string()))?,
    );
    let transfer = EpcTransfer {
        bic: cfg.bic.clone(),
        beneficiary_name: cfg.holder.clone(),
        iban: cfg.iban.clone(),
        amount,
        purpose: None,
        remittance: reference
            .map(Remittance::Structured)
            .unwrap_or(Remittance::None),
        note: None,
    };
    transfer
        .payload()
        .map_err(|e| ApiError::internal(format!("EPC payload: {e}")))
}

/// The QR code of pending instructions. Public: the payment id (96 random bits) is the
/// capability, and the image shows nothing the instructions do not (so the portal can embed it).
async fn qr_image(state: &AppState, payment_id: &str, png: bool) -> Result<Response, ApiError> {
    let cfg = config(state)?;
    let p = pending_payment(state, payment_id).await?;
    if p.status != PayStatus::Pending {
        return Err(ApiError::conflict(
            "payment_not_pending",
            format!(
                "payment {} is {}; its transfer instructions are no longer valid",
                p.id,
                p.status.as_str()
            ),
        ));
    }
    let payload = epc_payload(cfg, &p)?;
    let no_store = (header::CACHE_CONTROL, "no-store");
    if png {
        let bytes = payload
            .to_png(8)
            .map_err(|e| ApiError::internal(format!("QR PNG: {e}")))?;
        Ok(([(header::CONTENT_TYPE, "image/png"), no_store], bytes).into_response())
    } else {
        let svg = payload
            .to_svg(8)
            .map_err(|e| ApiError::internal(format!("QR SVG: {e}")))?;
        Ok(([(header::CONTENT_TYPE, "image/svg+xml"), no_store], svg).into_response())
    }
}

/// EPC069-12 QR code of pending instructions (SVG). Public: the payment id is the capability.
#[utoipa::path(
    get,
    path = "/billing/sepa/{payment_id}/qr.svg",
    tag = "sepa",
    params(("payment_id" = String, Path, description = "`pay_...`")),
    responses(
        (status = 200, description = "The QR code", body = String, content_type = "image/svg+xml"),
        (status = 404, description = "`payment_not_found`", body = ErrorDoc),
        (status = 409, description = "`payment_not_pending`", body = ErrorDoc),
    )
)]
async fn qr_svg(
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    qr_image(&state, &payment_id, false).await
}

/// EPC069-12 QR code of pending instructions (PNG). Public: the payment id is the capability.
#[utoipa::path(
    get,
    path = "/billing/sepa/{payment_id}/qr.png",
    tag = "sepa",
    params(("payment_id" = String, Path, description = "`pay_...`")),
    responses(
        (status = 200, description = "The QR code", body = Vec<u8>, content_type = "image/png"),
        (status = 404, description = "`payment_not_found`", body = ErrorDoc),
        (status = 409, description = "`payment_not_pending`", body = ErrorDoc),
    )
)]
async fn qr_png(
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    qr_image(&state, &payment_id, true).await
}

/// A payment of any method.
#[derive(Serialize, ToSchema)]
pub struct PaymentView {
    /// `28.57 EUR`.
    amount: String,
    amount_minor: i64,
    created_at: String,
    currency: String,
    cycle: Option<String>,
    expires_at: Option<String>,
    /// `stripe`, `paypal`, `sepa`, `manual`.
    method: String,
    payment_id: String,
    period_end: Option<String>,
    period_start: Option<String>,
    plan: Option<String>,
    /// The SEPA creditor reference.
    reference: Option<String>,
    /// `pending`, `succeeded`, `failed`, `refunded`, `expired`.
    status: &'static str,
    subscription_id: Option<String>,
    user_id: String,
}

pub fn payment_view(p: &Payment) -> PaymentView {
    PaymentView {
        amount: Currency::parse(&p.currency)
            .map(|c| Money::new(p.amount_minor, c).to_string())
            .unwrap_or_default(),
        amount_minor: p.amount_minor,
        created_at: rfc3339(p.created_at),
        currency: p.currency.clone(),
        cycle: p.cycle.clone(),
        expires_at: p.expires_at.map(rfc3339),
        method: p.method.clone(),
        payment_id: p.id.clone(),
        period_end: p.period_end.map(rfc3339),
        period_start: p.period_start.map(rfc3339),
        plan: p.plan.clone(),
        reference: p.reference.clone(),
        status: p.status.as_str(),
        subscription_id: p.subscription_id.clone(),
        user_id: p.user_id.clone(),
    }
}

/// `POST /billing/sepa/{payment_id}/confirm|reject`; the body may be empty.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionRequest {
    /// At most 500 characters; recorded in the ledger.
    #[serde(default)]
    #[schema(max_length = 500)]
    note: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Decided {
    /// False when the payment already had this status.
    changed: bool,
    payment: PaymentView,
    success: bool,
}

async fn decide(
    state: &AppState,
    payment_id: &str,
    body: &[u8],
    to: PayStatus,
) -> Result<Json<Decided>, ApiError> {
    config(state)?;
    let req: DecisionRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DecisionRequest::default()
    } else {
        crate::extract::parse_json(body)?
    };
    if req.note.as_ref().is_some_and(|n| n.chars().count() > 500) {
        return Err(ApiError::bad(
            "invalid_body",
            "note must be at most 500 characters",
        ));
    }
    let p = pending_payment(state, payment_id).await?;
    let verb = if to == PayStatus::Succeeded {
        "confirm"
    } else {
        "reject"
    };
    let cause = Cause::new(
        "api",
        format!(
            "POST /billing/sepa/{}/{verb} {}",
            p.id,
            req.note.unwrap_or_default()
        )
        .trim()
        .to_string(),
    );
    match settle(
        state,
        &p.id,
        &[PayStatus::Pending, PayStatus::Expired],
        to,
        None,
        &cause,
    )
    .await?
    {
        Settled::Applied { payment, .. } => Ok(Json(Decided {
            changed: true,
            payment: payment_view(&payment),
            success: true,
        })),
        Settled::Unchanged(payment) if payment.status == to => Ok(Json(Decided {
            changed: false,
            payment: payment_view(&payment),
            success: true,
        })),
        Settled::Unchanged(payment) => Err(ApiError::conflict(
            "payment_already_decided",
            format!(
                "payment {} is already {}; it cannot be {verb}ed",
                payment.id,
                payment.status.as_str()
            ),
        )),
    }
}

/// An operator confirms a transfer: the payment succeeds and buys its period.
#[utoipa::path(
    post,
    path = "/billing/sepa/{payment_id}/confirm",
    tag = "sepa",
    operation_id = "sepa_confirm",
    security(("serviceToken" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    request_body(content = Option<DecisionRequest>, description = "Optional"),
    responses(
        (status = 200, description = "Confirmed", body = Decided),
        (status = 404, description = "`payment_not_found`", body = ErrorDoc),
        (status = 409, description = "`payment_already_decided`", body = ErrorDoc),
    )
)]
async fn confirm(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(&state, &payment_id, &body, PayStatus::Succeeded).await
}

/// An operator rejects a transfer.
#[utoipa::path(
    post,
    path = "/billing/sepa/{payment_id}/reject",
    tag = "sepa",
    operation_id = "sepa_reject",
    security(("serviceToken" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    request_body(content = Option<DecisionRequest>, description = "Optional"),
    responses(
        (status = 200, description = "Rejected", body = Decided),
        (status = 404, description = "`payment_not_found`", body = ErrorDoc),
        (status = 409, description = "`payment_already_decided`", body = ErrorDoc),
    )
)]
async fn reject(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Decided>, ApiError> {
    decide(&state, &payment_id, &body, PayStatus::Failed).await
}

fn expected_status(s: PayStatus) -> PaymentStatus {
    match s {
        PayStatus::Pending => PaymentStatus::Pending,
        PayStatus::Succeeded => PaymentStatus::Succeeded,
        // An operator rejected it, or it lapsed: a transfer for it is reported, never applied.
        PayStatus::Expired | PayStatus::Failed | PayStatus::Refunded => PaymentStatus::Expired,
    }
}

/// Imports a camt.053/.054 statement and returns its report (HTTP upload and CLI).
pub async fn import_statement(
    state: &AppState,
    file_name: &str,
    bytes: &[u8],
) -> Result<Value, ApiError> {
    let cfg = config(state)?;
    let doc = camt::parse(bytes).map_err(|e| ApiError::bad("invalid_statement", e.to_string()))?;
    let mut payments: HashMap<String, Payment> = HashMap::new();
    for r in reconcile::references_to_look_up(&doc.transactions) {
        if let Some(p) = state.store().payment_by_reference(r.as_str()).await? {
            payments.insert(r.as_str().to_string(), p);
        }
    }
    let expected = |r: &CreditorReference| -> Option<ExpectedPayment> {
        let p = payments.get(r.as_str())?;
        let currency = Currency::parse(&p.currency).ok()?;
        Some(ExpectedPayment {
            amount: Money::new(p.amount_minor, currency),
            status: expected_status(p.status),
        })
    };
    let keys: Vec<String> = doc
        .transactions
        .iter()
        .map(|t| t.entry_key.clone())
        .collect();
    let known = state.store().known_entries(&keys).await?;
    let lines = reconcile::reconcile(&doc.transactions, Some(&cfg.iban), &expected, &known);
    let import_id = crate::ids::prefixed("imp");
    let now = state.now();
    let mut report_lines = Vec::with_capacity(lines.len());
    let mut activated = 0usize;
    for line in &lines {
        let tx = line.transaction;
        let reference = match &line.outcome {
            Outcome::Matched { reference, .. }
            | Outcome::UnderPaid { reference, .. }
            | Outcome::OverPaid { reference, .. }
            | Outcome::WrongCurrency { reference, .. }
            | Outcome::AfterExpiry { reference, .. }
            | Outcome::AlreadyPaid { reference, .. } => Some(reference.as_str().to_string()),
            Outcome::Unmatched { .. } | Outcome::Duplicate { .. } | Outcome::Ignored { .. } => None,
        };
        let payment = reference.as_deref().and_then(|r| payments.get(r));
        let mut code = line.outcome.code().to_string();
        if let (true, Some(p)) = (line.outcome.activates(), payment) {
            let cause = Cause::new(
                "statement",
                format!("{file_name} entry {} (import {import_id})", tx.entry_key),
            );
            match settle(
                state,
                &p.id,
                &[PayStatus::Pending],
                PayStatus::Succeeded,
                Some(0),
                &cause,
            )
            .await?
            {
                Settled::Applied { .. } => activated += 1,
                // Paid meanwhile (an operator, or a concurrent import): report it as such.
                Settled::Unchanged(_) => code = "already_paid".to_string(),
            }
        }
        if line.outcome.records_entry() {
            let recorded = state
                .store()
                .record_entry(&RecordedEntry {
                    entry_ref: tx.entry_key.clone(),
                    import_id: import_id.clone(),
                    payment_id: payment.map(|p| p.id.clone()),
                    amount_minor: tx.amount.minor,
                    currency: tx.amount.currency.to_string(),
                    reference: reference.clone(),
                    debtor: tx.debtor_name.clone(),
                    outcome: code.clone(),
                    created_at: now,
                })
                .await?;
            if !recorded {
                code = "duplicate".to_string();
            }
        }
        report_lines.push(json!({
            "entry": tx.entry_key,
            "outcome": code,
            "needs_operator": line.outcome.needs_operator(),
            "amount": tx.amount.to_string(),
            "reference": reference,
            "payment_id": payment.map(|p| p.id.clone()),
            "debtor": tx.debtor_name,
            "booking_date": tx.booking_date.as_ref().map(|d| d.to_string()),
            "detail": line.outcome,
        }));
    }
    let summary = reconcile::summarize(&lines);
    let report = json!({
        "import_id": import_id,
        "file_name": file_name,
        "message": format!("{:?}", doc.kind),
        "imported_at": rfc3339(now),
        "activated": activated,
        "summary": summary,
        "lines": report_lines,
    });
    state
        .store()
        .save_import(&ImportRecord {
            id: import_id,
            file_name: file_name.to_string(),
            file_sha256: hex::encode(Sha256::digest(bytes)),
            report: report.to_string(),
            created_at: now,
        })
        .await?;
    Ok(report)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ImportQuery {
    /// The statement's file name, at most 200 characters (default `upload.xml`).
    #[serde(default)]
    name: Option<String>,
}

/// Import a camt.053/camt.054 statement: entries are matched on reference, amount and
/// currency; under-, over- and unmatched payments are reported, not guessed.
#[utoipa::path(
    post,
    path = "/billing/sepa/import",
    tag = "sepa",
    security(("serviceToken" = [])),
    params(ImportQuery),
    request_body(content = String, content_type = "application/xml", description = "The statement's XML"),
    responses(
        (status = 200, description = "The reconciliation report", body = Object),
        (status = 400, description = "`invalid_statement`, `invalid_query`, `bad_request` (a query that does not parse)", body = ErrorDoc),
        (status = 413, description = "`body_too_large`: larger than 16 MiB", body = ErrorDoc),
    )
)]
async fn import(
    _: ServiceAuth,
    State(state): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad(
            "invalid_statement",
            "send the camt.053 or camt.054 XML as the request body",
        ));
    }
    let name = q.name.unwrap_or_else(|| "upload.xml".to_string());
    if name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_query",
            "name must be at most 200 characters",
        ));
    }
    import_statement(&state, &name, &body).await.map(Json)
}

/// One statement import's report.
#[utoipa::path(
    get,
    path = "/billing/sepa/imports/{import_id}",
    tag = "sepa",
    security(("serviceToken" = [])),
    params(("import_id" = String, Path, description = "The import's id")),
    responses(
        (status = 200, description = "The reconciliation report", body = Object),
        (status = 404, description = "`import_not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn get_import(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = state.store().get_import(&id).await.map_err(|e| match e {
        StoreError::NotFound(_) => ApiError::not_found(
            "import_not_found",
            format!("statement import {id:?} not found"),
        ),
        other => other.into(),
    })?;
    Ok(Json(
        serde_json::from_str(&rec.report).unwrap_or(Value::Null),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct ImportItem {
    file_name: String,
    import_id: String,
    imported_at: String,
    sha256: String,
    /// The report's summary (counts and amounts).
    #[schema(value_type = Object)]
    summary: Value,
}

#[derive(Serialize, ToSchema)]
pub struct Imports {
    /// The last 50, newest first.
    imports: Vec<ImportItem>,
}

/// Recent statement imports.
#[utoipa::path(
    get,
    path = "/billing/sepa/imports",
    tag = "sepa",
    security(("serviceToken" = [])),
    responses(
        (status = 200, description = "The imports", body = Imports),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn list_imports(
    _: ServiceAuth,
    State(state): State<AppState>,
) -> Result<Json<Imports>, ApiError> {
    let list = state.store().list_imports(50).await?;
    let imports = list
        .iter()
        .map(|r| {
            let report: Value = serde_json::from_str(&r.report).unwrap_or(Value::Null);
            ImportItem {
                file_name: r.file_name.clone(),
                import_id: r.id.clone(),
                imported_at: rfc3339(r.created_at),
                sha256: r.file_sha256.clone(),
                summary: report["summary"].clone(),
            }
        })
        .collect();
    Ok(Json(Imports { imports }))
}

/// A payment of any method and its status.
#[utoipa::path(
    get,
    path = "/billing/payments/{payment_id}",
    tag = "sepa",
    security(("serviceToken" = [])),
    params(("payment_id" = String, Path, description = "`pay_...`")),
    responses(
        (status = 200, description = "The payment", body = PaymentView),
        (status = 404, description = "`payment_not_found`", body = ErrorDoc),
        (status = 503, description = "`store_unavailable`: the database cannot be reached", body = ErrorDoc),
    )
)]
async fn get_payment(
    _: ServiceAuth,
    State(state): State<AppState>,
    Path(payment_id): Path<String>,
) -> Result<Json<PaymentView>, ApiError> {
    let p = state
        .store()
        .get_payment(&payment_id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => ApiError::not_found(
                "payment_not_found",
                format!("payment {payment_id:?} not found"),
            ),
            other => other.into(),
        })?;
    Ok(Json(payment_view(&p)))
}

/// The SEPA endpoints; the OpenAPI document (`openapi.rs`) adds 503 (`provider_not_configured`,
/// `store_unavailable`) to those tagged `sepa` that need SEPA configured.
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    create,
    get_payment,
    qr_svg,
    qr_png,
    confirm,
    reject,
    import,
    list_imports,
    get_import
))]
pub struct Api;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/billing/create", post(create))
        .route("/billing/payments/{payment_id}", get(get_payment))
        .route("/billing/sepa/{payment_id}/qr.svg", get(qr_svg))
        .route("/billing/sepa/{payment_id}/qr.png", get(qr_png))
        .route("/billing/sepa/{payment_id}/confirm", post(confirm))
        .route("/billing/sepa/{payment_id}/reject", post(reject))
        .route(
            "/billing/sepa/import",
            post(import).layer(axum::extract::DefaultBodyLimit::max(MAX_STATEMENT_BYTES)),
        )
        .route("/billing/sepa/imports", get(list_imports))
        .route("/billing/sepa/imports/{import_id}", get(get_import))
}
