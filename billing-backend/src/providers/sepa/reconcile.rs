//! Matching imported bank transactions against the SEPA payments we expect.
//!
//! Pure and synchronous so the importer can run it inside its database transaction:
//! 1. [`references_to_look_up`] lists every RF reference the transactions may carry;
//! 2. the caller loads those expected payments (reference → amount and status) and the set of
//!    entry keys imported before;
//! 3. [`reconcile`] classifies each transaction. Only [`Outcome::Matched`] (the exact amount and
//!    currency for a reference whose payment is pending) may activate a plan; every other
//!    outcome waits for an operator, never a guess.
//!
//! The caller then records the entry key of every transaction that was not
//! [`Outcome::Ignored`], so importing the same file again reports each as
//! [`Outcome::Duplicate`] and changes nothing.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;

use super::camt::{self, BankTransaction, IgnoreReason};
use super::iban::Iban;
use super::money::Money;
use super::rf::CreditorReference;

/// State of an expected payment, as far as matching cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    /// Waiting for the transfer.
    Pending,
    /// The instruction expired unpaid.
    Expired,
    /// Already paid (by an earlier import or an operator's confirmation).
    Succeeded,
}

/// What we expect for one reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ExpectedPayment {
    pub amount: Money,
    pub status: PaymentStatus,
}

/// Where [`reconcile`] looks up references: a map loaded by the caller, or a closure.
pub trait ExpectedPayments {
    fn expected(&self, reference: &CreditorReference) -> Option<ExpectedPayment>;
}

impl<S: BuildHasher> ExpectedPayments for HashMap<CreditorReference, ExpectedPayment, S> {
    fn expected(&self, reference: &CreditorReference) -> Option<ExpectedPayment> {
        self.get(reference).copied()
    }
}

impl ExpectedPayments for BTreeMap<CreditorReference, ExpectedPayment> {
    fn expected(&self, reference: &CreditorReference) -> Option<ExpectedPayment> {
        self.get(reference).copied()
    }
}

impl<F: Fn(&CreditorReference) -> Option<ExpectedPayment>> ExpectedPayments for F {
    fn expected(&self, reference: &CreditorReference) -> Option<ExpectedPayment> {
        self(reference)
    }
}

/// Why a credit could not be tied to an expected payment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedReason {
    /// No valid RF reference, structured or in the text.
    NoReference,
    /// Valid RF references, none of them ours (usually one; several when the text is ambiguous).
    UnknownReference { references: Vec<CreditorReference> },
    /// The text holds several references we issued: an operator must split or decide.
    SeveralKnownReferences { references: Vec<CreditorReference> },
}

/// The verdict on one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Exact amount and currency for a pending payment: activate.
    Matched {
        reference: CreditorReference,
        amount: Money,
    },
    /// Less than expected, same currency.
    UnderPaid {
        reference: CreditorReference,
        expected: Money,
        received: Money,
    },
    /// More than expected, same currency.
    OverPaid {
        reference: CreditorReference,
        expected: Money,
        received: Money,
    },
    /// Another currency than expected.
    WrongCurrency {
        reference: CreditorReference,
        expected: Money,
        received: Money,
    },
    /// A credit we cannot tie to a payment.
    Unmatched {
        reason: UnmatchedReason,
        received: Money,
    },
    /// For a payment whose instruction expired: reported, not lost.
    AfterExpiry {
        reference: CreditorReference,
        expected: Money,
        received: Money,
    },
    /// For a payment that is already paid (earlier, or by an earlier line of this import).
    AlreadyPaid {
        reference: CreditorReference,
        received: Money,
    },
    /// This entry was imported before (or appears twice in this import).
    Duplicate { entry_key: String },
    /// Not a customer payment to us.
    Ignored { reason: Ignore },
}

/// Why a transaction was ignored: the statement-level reasons plus a foreign account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ignore {
    Entry(IgnoreReason),
    /// The statement is for another account than ours.
    OtherAccount {
        account: String,
    },
}

impl Outcome {
    /// Stable code for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Matched { .. } => "matched",
            Outcome::UnderPaid { .. } => "under_paid",
            Outcome::OverPaid { .. } => "over_paid",
            Outcome::WrongCurrency { .. } => "wrong_currency",
            Outcome::Unmatched { .. } => "unmatched",
            Outcome::AfterExpiry { .. } => "after_expiry",
            Outcome::AlreadyPaid { .. } => "already_paid",
            Outcome::Duplicate { .. } => "duplicate",
            Outcome::Ignored { .. } => "ignored",
        }
    }

    /// Whether this outcome marks the payment paid and activates the plan. Only an exact match.
    pub fn activates(&self) -> bool {
        matches!(self, Outcome::Matched { .. })
    }

    /// Whether the importer records the entry key (everything but ignored lines), so that a
    /// second import of the same file reports duplicates.
    pub fn records_entry(&self) -> bool {
        !matches!(self, Outcome::Ignored { .. } | Outcome::Duplicate { .. })
    }

    /// Whether an operator should look at it (money arrived that did not match exactly).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Outcome::UnderPaid { .. }
                | Outcome::OverPaid { .. }
                | Outcome::WrongCurrency { .. }
                | Outcome::Unmatched { .. }
                | Outcome::AfterExpiry { .. }
                | Outcome::AlreadyPaid { .. }
        )
    }
}

/// One transaction with its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reconciled<'a> {
    pub transaction: &'a BankTransaction,
    pub outcome: Outcome,
}

/// Every valid RF reference any transaction may carry (structured, or candidates in its text),
/// for the caller to load the expected payments in one query. Only importable credits count.
pub fn references_to_look_up(transactions: &[BankTransaction]) -> BTreeSet<CreditorReference> {
    transactions
        .iter()
        .filter(|tx| camt::is_importable_credit(tx))
        .flat_map(camt::reference_candidates)
        .map(|c| c.reference)
        .collect()
}

/// Classifies each transaction, in order; see the module doc.
///
/// `account` is our receiving account: transactions of a statement for another account are
/// ignored (a statement without an account IBAN is taken as ours). `already_imported` holds the
/// entry keys recorded by earlier imports. Within one call, an entry key seen twice is a
/// duplicate the second time, and a reference matched once is already paid for later lines.
pub fn reconcile<'a, E: ExpectedPayments + ?Sized>(
    transactions: &'a [BankTransaction],
    account: Option<&Iban>,
    expected: &E,
    already_imported: &HashSet<String>,
) -> Vec<Reconciled<'a>> {
    let mut keys_now: HashSet<&str> = HashSet::new();
    let mut paid_now: HashSet<CreditorReference> = HashSet::new();
    transactions
        .iter()
        .map(|tx| {
            let outcome = classify(
                tx,
                account,
                expected,
                already_imported,
                &mut keys_now,
                &mut paid_now,
            );
            Reconciled {
                transaction: tx,
                outcome,
            }
        })
        .collect()
}

fn classify<'a, E: ExpectedPayments + ?Sized>(
    tx: &'a BankTransaction,
    account: Option<&Iban>,
    expected: &E,
    already_imported: &HashSet<String>,
    keys_now: &mut HashSet<&'a str>,
    paid_now: &mut HashSet<CreditorReference>,
) -> Outcome {
    if let Err(reason) = camt::importable(tx) {
        return Outcome::Ignored {
            reason: Ignore::Entry(reason),
        };
    }
    if let (Some(ours), Some(theirs)) = (account, tx.account_iban.as_deref()) {
        if ours.as_str() != theirs {
            return Outcome::Ignored {
                reason: Ignore::OtherAccount {
                    account: theirs.to_string(),
                },
            };
        }
    }
    if already_imported.contains(&tx.entry_key) || !keys_now.insert(&tx.entry_key) {
        return Outcome::Duplicate {
            entry_key: tx.entry_key.clone(),
        };
    }
    let received = tx.amount;
    let candidates = camt::reference_candidates(tx);
    if candidates.is_empty() {
        return Outcome::Unmatched {
            reason: UnmatchedReason::NoReference,
            received,
        };
    }
    let mut known: Vec<(CreditorReference, ExpectedPayment)> = candidates
        .iter()
        .filter_map(|c| {
            expected
                .expected(&c.reference)
                .map(|e| (c.reference.clone(), e))
        })
        .collect();
    let (reference, payment) = match known.len() {
        0 => {
            let references = candidates.into_iter().map(|c| c.reference).collect();
            return Outcome::Unmatched {
                reason: UnmatchedReason::UnknownReference { references },
                received,
            };
        }
        1 => known.remove(0),
        _ => {
            let references = known.into_iter().map(|(r, _)| r).collect();
            return Outcome::Unmatched {
                reason: UnmatchedReason::SeveralKnownReferences { references },
                received,
            };
        }
    };
    let expected_amount = payment.amount;
    match payment.status {
        PaymentStatus::Succeeded => Outcome::AlreadyPaid {
            reference,
            received,
        },
        _ if paid_now.contains(&reference) => Outcome::AlreadyPaid {
            reference,
            received,
        },
        PaymentStatus::Expired => Outcome::AfterExpiry {
            reference,
            expected: expected_amount,
            received,
        },
        PaymentStatus::Pending if received.currency != expected_amount.currency => {
            Outcome::WrongCurrency {
                reference,
                expected: expected_amount,
                received,
            }
        }
        PaymentStatus::Pending => match received.minor.cmp(&expected_amount.minor) {
            std::cmp::Ordering::Less => Outcome::UnderPaid {
                reference,
                expected: expected_amount,
                received,
            },
            std::cmp::Ordering::Greater => Outcome::OverPaid {
                reference,
                expected: expected_amount,
                received,
            },
            std::cmp::Ordering::Equal => {
                paid_now.insert(reference.clone());
                Outcome::Matched {
                    reference,
                    amount: received,
                }
            }
        },
    }
}

/// Counts per outcome, for the import report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub matched: usize,
    pub under_paid: usize,
    pub over_paid: usize,
    pub wrong_currency: usize,
    pub unmatched: usize,
    pub after_expiry: usize,
    pub already_paid: usize,
    pub duplicate: usize,
    pub ignored: usize,
}

pub fn summarize(lines: &[Reconciled<'_>]) -> Summary {
    let mut s = Summary::default();
    for line in lines {
        let slot = match line.outcome {
            Outcome::Matched { .. } => &mut s.matched,
            Outcome::UnderPaid { .. } => &mut s.under_paid,
            Outcome::OverPaid { .. } => &mut s.over_paid,
            Outcome::WrongCurrency { .. } => &mut s.wrong_currency,
            Outcome::Unmatched { .. } => &mut s.unmatched,
            Outcome::AfterExpiry { .. } => &mut s.after_expiry,
            Outcome::AlreadyPaid { .. } => &mut s.already_paid,
            Outcome::Duplicate { .. } => &mut s.duplicate,
            Outcome::Ignored { .. } => &mut s.ignored,
        };
        *slot += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::money::Currency;
    use super::camt::{BankDate, Direction, EntryStatus};
    use super::*;

    fn rf(s: &str) -> CreditorReference {
        CreditorReference::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    const PRO: &str = "RF18539007547034";
    const OLD: &str = "RF98INV2026000123";

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::EUR)
    }

    fn usd(minor: i64) -> Money {
        Money::new(
            minor,
            Currency::parse("USD").unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// A booked credit of `amount` to our account with `reference` as structured remittance.
    fn credit(key: &str, amount: Money, reference: Option<&str>) -> BankTransaction {
        BankTransaction {
            entry_key: key.into(),
            entry_number: 1,
            batch_index: None,
            account_iban: Some("DE89370400440532013000".into()),
            statement_id: Some("S1".into()),
            amount,
            direction: Direction::Credit,
            status: EntryStatus::Booked,
            reversal: false,
            booking_date: BankDate::parse("2026-04-01"),
            value_date: BankDate::parse("2026-04-01"),
            end_to_end_id: None,
            debtor_name: Some("Erika Mustermann".into()),
            debtor_iban: None,
            structured_reference: reference.map(str::to_string),
            unstructured: Vec::new(),
            additional_info: None,
        }
    }

    fn expected() -> HashMap<CreditorReference, ExpectedPayment> {
        let mut m = HashMap::new();
        m.insert(
            rf(PRO),
            ExpectedPayment {
                amount: eur(2857),
                status: PaymentStatus::Pending,
            },
        );
        m.insert(
            rf(OLD),
            ExpectedPayment {
                amount: eur(4900),
                status: PaymentStatus::Expired,
            },
        );
        let paid = CreditorReference::from_payload("PAID1").unwrap_or_else(|e| panic!("{e}"));
        m.insert(
            paid,
            ExpectedPayment {
                amount: eur(2900),
                status: PaymentStatus::Succeeded,
            },
        );
        m
    }

    fn our_iban() -> Iban {
        Iban::parse("DE89370400440532013000").unwrap_or_else(|e| panic!("{e}"))
    }

    fn one(tx: BankTransaction) -> Outcome {
        one_with(tx, &HashSet::new())
    }

    fn one_with(tx: BankTransaction, seen: &HashSet<String>) -> Outcome {
        let txs = [tx];
        let iban = our_iban();
        let out = reconcile(&txs, Some(&iban), &expected(), seen);
        out.into_iter()
            .map(|r| r.outcome)
            .next()
            .unwrap_or_else(|| panic!("no outcome"))
    }

    #[test]
    fn exact_amount_currency_and_reference_match() {
        let o = one(credit("A", eur(2857), Some(PRO)));
        assert_eq!(
            o,
            Outcome::Matched {
                reference: rf(PRO),
                amount: eur(2857)
            }
        );
        assert!(o.activates() && o.records_entry() && !o.needs_operator());
        assert_eq!(o.code(), "matched");
    }

    #[test]
    fn reference_in_free_text_matches_too() {
        let mut tx = credit("A", eur(2857), None);
        tx.unstructured = vec!["Tollgate RF18 5390 0754 7034 Danke".into()];
        assert_eq!(
            one(tx),
            Outcome::Matched {
                reference: rf(PRO),
                amount: eur(2857)
            }
        );
    }

    #[test]
    fn ambiguous_text_is_resolved_by_the_known_reference() {
        // "RF18 5390 0754 7034 <w>" where RF18…7034<w> is valid too: the text alone is
        // ambiguous, but only one of the two is a reference we issued.
        let w = (0..10_000)
            .map(|n| format!("{n:04}"))
            .find(|w| CreditorReference::parse(&format!("{PRO}{w}")).is_ok())
            .unwrap_or_default();
        let mut tx = credit("A", eur(2857), None);
        tx.unstructured = vec![format!("RF18 5390 0754 7034 {w}")];
        assert_eq!(camt::reference_of(&tx), None);
        assert_eq!(
            one(tx.clone()),
            Outcome::Matched {
                reference: rf(PRO),
                amount: eur(2857)
            }
        );
        // If both were ours, an operator decides.
        let mut both = expected();
        let longer = rf(&format!("{PRO}{w}"));
        both.insert(
            longer.clone(),
            ExpectedPayment {
                amount: eur(2857),
                status: PaymentStatus::Pending,
            },
        );
        let txs = [tx];
        let out = reconcile(&txs, None, &both, &HashSet::new());
        assert_eq!(
            out[0].outcome,
            Outcome::Unmatched {
                reason: UnmatchedReason::SeveralKnownReferences {
                    references: vec![rf(PRO), longer]
                },
                received: eur(2857)
            }
        );
    }

    #[test]
    fn under_and_over_payments() {
        assert_eq!(
            one(credit("A", eur(2850), Some(PRO))),
            Outcome::UnderPaid {
                reference: rf(PRO),
                expected: eur(2857),
                received: eur(2850)
            }
        );
        let over = one(credit("A", eur(2900), Some(PRO)));
        assert_eq!(
            over,
            Outcome::OverPaid {
                reference: rf(PRO),
                expected: eur(2857),
                received: eur(2900)
            }
        );
        assert!(!over.activates() && over.needs_operator());
    }

    #[test]
    fn wrong_currency_even_with_the_same_number() {
        assert_eq!(
            one(credit("A", usd(2857), Some(PRO))),
            Outcome::WrongCurrency {
                reference: rf(PRO),
                expected: eur(2857),
                received: usd(2857)
            }
        );
    }

    #[test]
    fn unmatched_without_or_with_unknown_reference() {
        assert_eq!(
            one(credit("A", eur(2857), None)),
            Outcome::Unmatched {
                reason: UnmatchedReason::NoReference,
                received: eur(2857)
            }
        );
        let other =
            CreditorReference::from_payload("SOMEONEELSE").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            one(credit("A", eur(2857), Some(other.as_str()))),
            Outcome::Unmatched {
                reason: UnmatchedReason::UnknownReference {
                    references: vec![other]
                },
                received: eur(2857)
            }
        );
        // A structured reference with a typo (bad check digits) is no reference.
        assert_eq!(
            one(credit("A", eur(2857), Some("RF19539007547034"))),
            Outcome::Unmatched {
                reason: UnmatchedReason::NoReference,
                received: eur(2857)
            }
        );
    }

    #[test]
    fn after_expiry_is_reported_whatever_the_amount() {
        for amount in [eur(4900), eur(100)] {
            let o = one(credit("A", amount, Some(OLD)));
            assert_eq!(
                o,
                Outcome::AfterExpiry {
                    reference: rf(OLD),
                    expected: eur(4900),
                    received: amount
                }
            );
            assert!(!o.activates() && o.needs_operator());
        }
    }

    #[test]
    fn already_paid() {
        let paid = CreditorReference::from_payload("PAID1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            one(credit("A", eur(2900), Some(paid.as_str()))),
            Outcome::AlreadyPaid {
                reference: paid,
                received: eur(2900)
            }
        );
    }

    #[test]
    fn second_payment_of_the_same_reference_in_one_file_is_already_paid() {
        let txs = [
            credit("A", eur(2857), Some(PRO)),
            credit("B", eur(2857), Some(PRO)),
        ];
        let out = reconcile(&txs, None, &expected(), &HashSet::new());
        assert!(out[0].outcome.activates());
        assert_eq!(
            out[1].outcome,
            Outcome::AlreadyPaid {
                reference: rf(PRO),
                received: eur(2857)
            }
        );
    }

    #[test]
    fn duplicates_from_earlier_imports_and_within_the_file() {
        let seen: HashSet<String> = ["A".to_string()].into();
        assert_eq!(
            one_with(credit("A", eur(2857), Some(PRO)), &seen),
            Outcome::Duplicate {
                entry_key: "A".into()
            }
        );
        let txs = [credit("B", eur(1), None), credit("B", eur(1), None)];
        let out = reconcile(&txs, None, &expected(), &HashSet::new());
        assert_eq!(
            out[1].outcome,
            Outcome::Duplicate {
                entry_key: "B".into()
            }
        );
        assert!(!out[1].outcome.records_entry());
    }

    #[test]
    fn importing_the_same_transactions_twice_changes_nothing() {
        let txs = [
            credit("A", eur(2857), Some(PRO)),
            credit("B", eur(10), None),
            BankTransaction {
                direction: Direction::Debit,
                ..credit("C", eur(5), None)
            },
        ];
        let first = reconcile(&txs, None, &expected(), &HashSet::new());
        let recorded: HashSet<String> = first
            .iter()
            .filter(|r| r.outcome.records_entry())
            .map(|r| r.transaction.entry_key.clone())
            .collect();
        assert_eq!(recorded.len(), 2);
        let second = reconcile(&txs, None, &expected(), &recorded);
        let codes: Vec<&str> = second.iter().map(|r| r.outcome.code()).collect();
        assert_eq!(codes, ["duplicate", "duplicate", "ignored"]);
        assert!(second.iter().all(|r| !r.outcome.activates()));
    }

    #[test]
    fn ignored_with_reason() {
        let debit = BankTransaction {
            direction: Direction::Debit,
            ..credit("A", eur(2857), Some(PRO))
        };
        assert_eq!(
            one(debit),
            Outcome::Ignored {
                reason: Ignore::Entry(IgnoreReason::Debit)
            }
        );
        let pending = BankTransaction {
            status: EntryStatus::Pending,
            ..credit("A", eur(2857), Some(PRO))
        };
        assert_eq!(
            one(pending),
            Outcome::Ignored {
                reason: Ignore::Entry(IgnoreReason::NotBooked {
                    status: EntryStatus::Pending
                })
            }
        );
        let reversed = BankTransaction {
            reversal: true,
            ..credit("A", eur(2857), Some(PRO))
        };
        assert_eq!(
            one(reversed),
            Outcome::Ignored {
                reason: Ignore::Entry(IgnoreReason::Reversed)
            }
        );
        let foreign = BankTransaction {
            account_iban: Some("DE02120300000000202051".into()),
            ..credit("A", eur(2857), Some(PRO))
        };
        assert_eq!(
            one(foreign),
            Outcome::Ignored {
                reason: Ignore::OtherAccount {
                    account: "DE02120300000000202051".into()
                }
            }
        );
        // Ignored lines are not recorded: a pending entry that is booked later still counts.
        let seen: HashSet<String> = HashSet::new();
        let pending = BankTransaction {
            status: EntryStatus::Pending,
            ..credit("A", eur(2857), Some(PRO))
        };
        assert!(!one_with(pending, &seen).records_entry());
    }

    #[test]
    fn lookup_keys_cover_structured_and_text_references() {
        let mut text = credit("B", eur(1), None);
        text.unstructured = vec!["RF98 INV2 0260 0012 3".into()];
        let debit = BankTransaction {
            direction: Direction::Debit,
            ..credit("C", eur(1), Some("RF3312345"))
        };
        let keys = references_to_look_up(&[
            credit("A", eur(1), Some(PRO)),
            text,
            debit,
            credit("D", eur(1), None),
        ]);
        assert_eq!(keys.into_iter().collect::<Vec<_>>(), vec![rf(PRO), rf(OLD)]);
    }

    #[test]
    fn closures_and_btree_maps_work_as_lookups() {
        let txs = [credit("A", eur(2857), Some(PRO))];
        let lookup = |r: &CreditorReference| {
            (r.as_str() == PRO).then_some(ExpectedPayment {
                amount: eur(2857),
                status: PaymentStatus::Pending,
            })
        };
        assert!(reconcile(&txs, None, &lookup, &HashSet::new())[0]
            .outcome
            .activates());
        let tree: BTreeMap<_, _> = expected().into_iter().collect();
        assert!(reconcile(&txs, None, &tree, &HashSet::new())[0]
            .outcome
            .activates());
    }

    #[test]
    fn summary_counts_each_class() {
        let paid = CreditorReference::from_payload("PAID1").unwrap_or_else(|e| panic!("{e}"));
        let txs = [
            credit("1", eur(2857), Some(PRO)),
            credit("2", eur(2857), Some(PRO)),
            credit("3", eur(1), Some(OLD)),
            credit("4", eur(1), Some(paid.as_str())),
            credit("5", eur(1), None),
            credit("5", eur(1), None),
            BankTransaction {
                direction: Direction::Debit,
                ..credit("6", eur(1), None)
            },
        ];
        let out = reconcile(&txs, None, &expected(), &HashSet::new());
        assert_eq!(
            summarize(&out),
            Summary {
                matched: 1,
                already_paid: 2,
                after_expiry: 1,
                unmatched: 1,
                duplicate: 1,
                ignored: 1,
                ..Summary::default()
            }
        );
    }

    #[test]
    fn end_to_end_from_a_statement_file() {
        let xml = include_str!("camt/sample_camt053_de.xml");
        let doc = camt::parse(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let wanted = references_to_look_up(&doc.transactions);
        assert_eq!(wanted.len(), 2);
        let iban = our_iban();
        let out = reconcile(&doc.transactions, Some(&iban), &expected(), &HashSet::new());
        let codes: Vec<&str> = out.iter().map(|r| r.outcome.code()).collect();
        // 28.57 for the pending Pro payment; 29.00 for the expired one; a fee; an unrelated credit.
        assert_eq!(codes, ["matched", "after_expiry", "ignored", "unmatched"]);
        let keys: HashSet<String> = out
            .iter()
            .filter(|r| r.outcome.records_entry())
            .map(|r| r.transaction.entry_key.clone())
            .collect();
        let again = reconcile(&doc.transactions, Some(&iban), &expected(), &keys);
        let codes: Vec<&str> = again.iter().map(|r| r.outcome.code()).collect();
        assert_eq!(codes, ["duplicate", "duplicate", "ignored", "duplicate"]);
    }
}
