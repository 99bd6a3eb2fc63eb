//! SEPA credit transfers: payment instructions with an RF reference and an EPC QR code, and
//! reconciliation of bank statements against them.
//!
//! # Layout
//!
//! - [`iban`], [`bic`]: the receiving account, validated once at start-up (`SEPA_IBAN`,
//!   `SEPA_BIC`): country length and BBAN structure, mod 97.
//! - [`rf`]: ISO 11649 creditor references: generated per payment, parsed from statements, and
//!   found in free text typed by payers.
//! - [`epc_qr`]: the EPC069-12 payload for a payment and its QR code as SVG and PNG.
//! - [`camt`]: camt.053 / camt.054 statements → one [`camt::BankTransaction`] per transaction,
//!   plus which of them are importable credits and which reference they carry.
//! - [`reconcile`]: transactions + the expected payments → one [`reconcile::Outcome`] each
//!   (matched, under/over-paid, wrong currency, unmatched, after expiry, already paid,
//!   duplicate, ignored).
//! - this file: [`SepaConfig`], the receiving account from `SEPA_*`.
//!
//! A payment flows through them like this (`billing::sepa` serves the endpoints):
//! `POST /billing/create` makes a [`rf::CreditorReference`] and an [`epc_qr::EpcTransfer`] for
//! the configured [`iban::Iban`]; later a statement upload goes through [`camt::parse`],
//! [`reconcile::references_to_look_up`] (one query for the expected payments) and
//! [`reconcile::reconcile`]; only `Matched` activates a plan.
//!
//! Everything here is pure: no I/O, no clock, no database (the settings are read through the
//! getter [`SepaConfig::from_env`] is given).

use tollgate_protocol::money;

pub mod bic;
pub mod camt;
pub mod epc_qr;
pub mod iban;
pub mod reconcile;
pub mod rf;

use bic::Bic;
use iban::Iban;

/// The receiving account, validated at start-up.
#[derive(Clone, Debug)]
pub struct SepaConfig {
    pub holder: String,
    pub iban: Iban,
    pub bic: Option<Bic>,
    pub expiry_days: u32,
}

pub const DEFAULT_EXPIRY_DAYS: u32 = 14;

impl SepaConfig {
    /// `SEPA_HOLDER`, `SEPA_IBAN`, `SEPA_BIC`, `SEPA_EXPIRY_DAYS`. SEPA is configured when
    /// `SEPA_IBAN` is set; a bad value is an error naming the variable.
    pub fn from_env(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<SepaConfig>, Vec<String>> {
        let Some(iban_text) = get("SEPA_IBAN") else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        let iban = Iban::parse(&iban_text)
            .map_err(|e| errors.push(format!("SEPA_IBAN: {e}")))
            .ok();
        let holder = get("SEPA_HOLDER").unwrap_or_default();
        if holder.trim().is_empty()
            || holder.chars().count() > 70
            || holder.chars().any(char::is_control)
        {
            errors.push("SEPA_HOLDER: the account holder's name is required with SEPA_IBAN (1-70 characters)".to_string());
        }
        let bic = match get("SEPA_BIC") {
            Some(b) => Bic::parse(&b)
                .map(Some)
                .map_err(|e| errors.push(format!("SEPA_BIC: {e}")))
                .unwrap_or(None),
            None => None,
        };
        let expiry_days = match get("SEPA_EXPIRY_DAYS") {
            None => DEFAULT_EXPIRY_DAYS,
            Some(d) => {
                match d.parse::<u32>() {
                    Ok(n) if (1..=365).contains(&n) => n,
                    _ => {
                        errors.push(format!("SEPA_EXPIRY_DAYS: {d:?} must be a whole number of days between 1 and 365"));
                        DEFAULT_EXPIRY_DAYS
                    }
                }
            }
        };
        match (iban, errors.is_empty()) {
            (Some(iban), true) => Ok(Some(SepaConfig {
                holder: holder.trim().to_string(),
                iban,
                bic,
                expiry_days,
            })),
            _ => Err(errors),
        }
    }
}
