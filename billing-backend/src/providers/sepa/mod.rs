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
//!
//! A payment flows through them like this: `POST /billing/create` makes a
//! [`rf::CreditorReference`] and an [`epc_qr::EpcTransfer`] for the configured
//! [`iban::Iban`]; later a statement upload goes through [`camt::parse`],
//! [`reconcile::references_to_look_up`] (one query for the expected payments) and
//! [`reconcile::reconcile`]; only `Matched` activates a plan.
//!
//! Everything here is pure: no I/O, no clock, no database.

use tollgate_protocol::money;

pub mod api;
pub mod bic;
pub mod camt;
pub mod epc_qr;
pub mod iban;
pub mod reconcile;
pub mod rf;
