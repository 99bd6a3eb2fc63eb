//! ISO 20022 bank-to-customer statements (camt.053) and debit/credit notifications (camt.054).
//!
//! Both carry the same `Ntry` structure: camt.053 under `Document/BkToCstmrStmt/Stmt/Ntry`,
//! camt.054 under `Document/BkToCstmrDbtCdtNtfctn/Ntfctn/Ntry`. Elements are matched by their
//! local names only, because banks send every namespace version from `camt.053.001.02` to
//! `.001.13` and the parts we read kept their names; where a version moved a field, both places
//! are read (`Sts` as text up to .08, `Sts/Cd` from .09; `Dbtr/Nm` up to .07, `Dbtr/Pty/Nm` from
//! .08; `TxDtls/Amt` from .03, `TxDtls/AmtDtls/TxAmt/Amt` before).
//!
//! [`parse`] turns a document into one [`BankTransaction`] per transaction: an entry with several
//! `NtryDtls/TxDtls` (a batch) gives one per `TxDtls`. Amounts are parsed exactly into minor
//! units. Nothing here decides whether money was paid: [`importable`] says which transactions are
//! booked, unreversed credits, [`reference_of`] finds their RF reference, and
//! `super::reconcile` compares them with what is expected.
//!
//! Malformed input gives a [`CamtError`] that says where and what, never a panic. DTDs are
//! refused (no entity expansion) and the node count is capped; the caller caps the size
//! ([`MAX_INPUT_BYTES`] is checked here too).

use roxmltree::{Document, Node, ParsingOptions};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;

use super::money::{Currency, Money, MoneyError};
use super::rf::{self, CreditorReference, TextCandidate};

/// Largest document accepted, in bytes.
pub const MAX_INPUT_BYTES: usize = 10 * 1024 * 1024;
/// Largest number of XML nodes: a real entry has about 40, so this is ~25 000 entries.
const MAX_NODES: u32 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// Bank-to-customer statement (`BkToCstmrStmt`).
    Camt053,
    /// Bank-to-customer debit/credit notification (`BkToCstmrDbtCdtNtfctn`).
    Camt054,
}

/// A parsed camt.053 or camt.054 document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BankDocument {
    pub kind: MessageKind,
    /// The message identifier from the namespace, e.g. `camt.053.001.08`, if it has one.
    pub message_version: Option<String>,
    pub transactions: Vec<BankTransaction>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// `CRDT`: money came in.
    Credit,
    /// `DBIT`: money went out.
    Debit,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryStatus {
    /// `BOOK`: on the account.
    Booked,
    /// `PDNG`: announced, may still change or disappear.
    Pending,
    /// `INFO`: for information only.
    Information,
    /// `FUTR`: expected in the future.
    Future,
    /// Anything else (another code, or a proprietary `Sts/Prtry`).
    Other(String),
}

impl EntryStatus {
    fn from_code(code: &str) -> EntryStatus {
        match code {
            "BOOK" => EntryStatus::Booked,
            "PDNG" => EntryStatus::Pending,
            "INFO" => EntryStatus::Information,
            "FUTR" => EntryStatus::Future,
            other => EntryStatus::Other(other.to_string()),
        }
    }
}

impl fmt::Display for EntryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryStatus::Booked => "BOOK",
            EntryStatus::Pending => "PDNG",
            EntryStatus::Information => "INFO",
            EntryStatus::Future => "FUTR",
            EntryStatus::Other(s) => s,
        })
    }
}

/// A calendar date as the bank gave it (`Dt`, or the date part of `DtTm`), without time zone
/// conversion: the bank's own business day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BankDate {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl BankDate {
    /// Parses `YYYY-MM-DD`, optionally followed by a time or time zone (`T10:00:00+02:00`,
    /// `+01:00`, `Z`), checking that the day exists.
    pub fn parse(text: &str) -> Option<BankDate> {
        let b = text.as_bytes();
        if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
            return None;
        }
        if b.len() > 10 && !matches!(b[10], b'T' | b'+' | b'-' | b'Z') {
            return None;
        }
        let num = |r: std::ops::Range<usize>| -> Option<u16> {
            let s = text.get(r)?;
            s.bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| s.parse().ok())?
        };
        let year = num(0..4)?;
        let month = u8::try_from(num(5..7)?).ok()?;
        let day = u8::try_from(num(8..10)?).ok()?;
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let days = match month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return None,
        };
        (1..=days)
            .contains(&day)
            .then_some(BankDate { year, month, day })
    }
}

impl fmt::Display for BankDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl Serialize for BankDate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One transaction of a statement or notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BankTransaction {
    /// Key to recognise this transaction in a later import: the entry's `AcctSvcrRef`, or
    /// `h:` + a hash of the entry's content when the bank gave none; `#n` is appended for the
    /// n-th transaction of a batch (`2026040100012#2`).
    pub entry_key: String,
    /// Position of the `Ntry` in the document, from 1 (for messages to people).
    pub entry_number: usize,
    /// Position of the `TxDtls` within a batched entry, from 1; `None` when not batched.
    pub batch_index: Option<usize>,
    /// The statement's account (`Acct/Id/IBAN`), compact upper case, as the bank wrote it.
    pub account_iban: Option<String>,
    /// `Stmt/Id` or `Ntfctn/Id`.
    pub statement_id: Option<String>,
    /// Exact amount: from `TxDtls` when it has one, else the entry's.
    pub amount: Money,
    pub direction: Direction,
    pub status: EntryStatus,
    /// `RvslInd` is true: this entry undoes an earlier one.
    pub reversal: bool,
    pub booking_date: Option<BankDate>,
    pub value_date: Option<BankDate>,
    /// `Refs/EndToEndId`, unless it is `NOTPROVIDED`.
    pub end_to_end_id: Option<String>,
    pub debtor_name: Option<String>,
    /// `RltdPties/DbtrAcct/Id/IBAN`, compact upper case, as the bank wrote it (not validated:
    /// informative only).
    pub debtor_iban: Option<String>,
    /// `RmtInf/Strd/CdtrRefInf/Ref` as written (may be a non-RF reference).
    pub structured_reference: Option<String>,
    /// `RmtInf/Ustrd`, one string per element.
    pub unstructured: Vec<String>,
    /// `TxDtls/AddtlTxInf`, or for an entry that is not a batch, `Ntry/AddtlNtryInf`.
    pub additional_info: Option<String>,
}

/// What is wrong with one entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryProblem {
    /// A required element or attribute is missing (path relative to `Ntry`).
    Missing { path: &'static str },
    /// An amount or its currency cannot be read exactly.
    Amount {
        path: &'static str,
        text: String,
        error: MoneyError,
    },
    /// A code has a value outside its list (`CdtDbtInd`, `RvslInd`).
    BadValue { path: &'static str, found: String },
    /// A date is not `YYYY-MM-DD` or does not exist.
    BadDate { path: &'static str, found: String },
    /// A batched entry's n-th `TxDtls` has no amount, so it cannot be told apart.
    BatchWithoutAmount { detail: usize },
}

impl fmt::Display for EntryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryProblem::Missing { path } => write!(f, "{path} is missing"),
            EntryProblem::Amount { path, text, error } => write!(f, "{path} {text:?}: {error}"),
            EntryProblem::BadValue { path, found } => {
                write!(f, "{path} has unknown value {found:?}")
            }
            EntryProblem::BadDate { path, found } => {
                write!(f, "{path} {found:?} is not a valid date (YYYY-MM-DD)")
            }
            EntryProblem::BatchWithoutAmount { detail } => write!(
                f,
                "batched entry: TxDtls number {detail} has no amount (Amt or AmtDtls/TxAmt/Amt)"
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CamtError {
    /// The input is larger than [`MAX_INPUT_BYTES`].
    TooLarge { bytes: usize, limit: usize },
    /// The input is not UTF-8 (ISO 20022 XML always is).
    NotUtf8 { valid_up_to: usize },
    /// The input is not well-formed XML (the detail has line and column), has a DTD, or has
    /// too many nodes.
    Xml { detail: String },
    /// Well-formed XML, but not a camt.053 or camt.054 document. `root` is the root element's
    /// local name; `message` the first element inside `Document`.
    NotCamt {
        root: String,
        message: Option<String>,
    },
    /// An entry cannot be read. `entry` counts `Ntry` elements from 1 across the document;
    /// `reference` is its `AcctSvcrRef`, if any.
    Entry {
        entry: usize,
        reference: Option<String>,
        problem: EntryProblem,
    },
}

impl fmt::Display for CamtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CamtError::TooLarge { bytes, limit } => {
                write!(f, "statement file has {bytes} bytes, at most {limit} are accepted")
            }
            CamtError::NotUtf8 { valid_up_to } => write!(
                f,
                "statement file is not UTF-8 (invalid byte after the first {valid_up_to} bytes)"
            ),
            CamtError::Xml { detail } => write!(f, "statement file is not well-formed XML: {detail}"),
            CamtError::NotCamt { root, message } => match (root.as_str(), message.as_deref()) {
                ("Document", Some("BkToCstmrAcctRpt")) => f.write_str(
                    "camt.052 account reports are not supported: expected a camt.053 statement or a camt.054 notification",
                ),
                ("Document", Some(m)) => write!(
                    f,
                    "not a camt.053 or camt.054 document: Document holds {m}, expected BkToCstmrStmt or BkToCstmrDbtCdtNtfctn"
                ),
                ("Document", None) => f.write_str("not a camt.053 or camt.054 document: Document is empty"),
                (r, _) => write!(
                    f,
                    "not an ISO 20022 document: the root element is {r}, expected Document"
                ),
            },
            CamtError::Entry { entry, reference, problem } => match reference {
                Some(r) => write!(f, "entry {entry} (AcctSvcrRef {r}): {problem}"),
                None => write!(f, "entry {entry}: {problem}"),
            },
        }
    }
}

impl std::error::Error for CamtError {}

// ---------------------------------------------------------------------------------------------
// Tree helpers: everything by local name.

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |n| n.is_element() && n.tag_name().name() == name)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> Option<Node<'a, 'i>> {
    children(node, name).next()
}

fn path<'a, 'i>(node: Node<'a, 'i>, names: &[&'static str]) -> Option<Node<'a, 'i>> {
    names.iter().try_fold(node, |n, name| child(n, name))
}

/// The trimmed text of an element, `None` when absent or blank.
fn text(node: Option<Node<'_, '_>>) -> Option<String> {
    let t = node?.text()?.trim();
    (!t.is_empty()).then(|| t.to_string())
}

/// Text without any white space, upper case (for IBANs).
fn compact_upper(s: Option<String>) -> Option<String> {
    s.map(|s| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_uppercase()
    })
    .filter(|s| !s.is_empty())
}

/// Placeholders banks write where there is no reference.
fn real_reference(s: Option<String>) -> Option<String> {
    s.filter(|s| {
        !matches!(
            s.to_ascii_uppercase().as_str(),
            "NOTPROVIDED" | "NONREF" | "NONE"
        )
    })
}

// ---------------------------------------------------------------------------------------------

/// Parses a camt.053 or camt.054 document (UTF-8, optional byte-order mark).
pub fn parse(input: &[u8]) -> Result<BankDocument, CamtError> {
    if input.len() > MAX_INPUT_BYTES {
        return Err(CamtError::TooLarge {
            bytes: input.len(),
            limit: MAX_INPUT_BYTES,
        });
    }
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let xml = std::str::from_utf8(input).map_err(|e| CamtError::NotUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(xml, options).map_err(|e| CamtError::Xml {
        detail: e.to_string(),
    })?;

    let root = doc.root_element();
    let message = root.children().find(Node::is_element);
    let not_camt = || CamtError::NotCamt {
        root: root.tag_name().name().to_string(),
        message: message.map(|m| m.tag_name().name().to_string()),
    };
    if root.tag_name().name() != "Document" {
        return Err(not_camt());
    }
    let message = message.ok_or_else(not_camt)?;
    let (kind, report_name) = match message.tag_name().name() {
        "BkToCstmrStmt" => (MessageKind::Camt053, "Stmt"),
        "BkToCstmrDbtCdtNtfctn" => (MessageKind::Camt054, "Ntfctn"),
        _ => return Err(not_camt()),
    };
    let message_version = root
        .tag_name()
        .namespace()
        .and_then(|ns| ns.find("camt.").map(|i| ns[i..].to_string()));

    let mut transactions = Vec::new();
    let mut entry_number = 0;
    let mut hashes_seen: HashMap<u64, usize> = HashMap::new();
    for report in children(message, report_name) {
        let account_iban = compact_upper(text(path(report, &["Acct", "Id", "IBAN"])));
        let statement_id = text(child(report, "Id"));
        for ntry in children(report, "Ntry") {
            entry_number += 1;
            let reference = real_reference(text(child(ntry, "AcctSvcrRef")));
            let base_key = match &reference {
                Some(r) => r.clone(),
                None => {
                    let h = entry_hash(ntry, account_iban.as_deref());
                    let n = hashes_seen.entry(h).or_insert(0);
                    *n += 1;
                    // Identical entries in one document stay distinct, and keep their keys when
                    // the same document is imported again.
                    match *n {
                        1 => format!("h:{h:016x}"),
                        k => format!("h:{h:016x}~{k}"),
                    }
                }
            };
            let ctx = EntryContext {
                entry_number,
                base_key,
                account_iban: account_iban.clone(),
                statement_id: statement_id.clone(),
            };
            read_entry(ntry, &ctx, &mut transactions).map_err(|problem| CamtError::Entry {
                entry: entry_number,
                reference: reference.clone(),
                problem,
            })?;
        }
    }
    Ok(BankDocument {
        kind,
        message_version,
        transactions,
    })
}

struct EntryContext {
    entry_number: usize,
    base_key: String,
    account_iban: Option<String>,
    statement_id: Option<String>,
}

fn read_amount(
    node: Option<Node<'_, '_>>,
    path: &'static str,
) -> Result<Option<Money>, EntryProblem> {
    let Some(node) = node else { return Ok(None) };
    let ccy = node.attribute("Ccy").unwrap_or("").trim();
    let currency = Currency::parse(ccy).map_err(|error| EntryProblem::Amount {
        path,
        text: format!("Ccy={ccy}"),
        error,
    })?;
    let text = node.text().unwrap_or("").trim();
    Money::parse_decimal(text, currency)
        .map(Some)
        .map_err(|error| EntryProblem::Amount {
            path,
            text: text.to_string(),
            error,
        })
}

fn read_direction(
    node: Option<Node<'_, '_>>,
    path: &'static str,
) -> Result<Option<Direction>, EntryProblem> {
    match text(node).as_deref() {
        None => Ok(None),
        Some("CRDT") => Ok(Some(Direction::Credit)),
        Some("DBIT") => Ok(Some(Direction::Debit)),
        Some(other) => Err(EntryProblem::BadValue {
            path,
            found: other.to_string(),
        }),
    }
}

fn read_date(
    node: Option<Node<'_, '_>>,
    path: &'static str,
) -> Result<Option<BankDate>, EntryProblem> {
    let Some(node) = node else { return Ok(None) };
    let Some(t) = text(child(node, "Dt").or_else(|| child(node, "DtTm"))) else {
        return Ok(None);
    };
    BankDate::parse(&t)
        .map(Some)
        .ok_or(EntryProblem::BadDate { path, found: t })
}

fn read_status(ntry: Node<'_, '_>) -> Result<EntryStatus, EntryProblem> {
    let sts = child(ntry, "Sts").ok_or(EntryProblem::Missing { path: "Sts" })?;
    if let Some(code) = text(child(sts, "Cd")) {
        return Ok(EntryStatus::from_code(&code));
    }
    if let Some(prtry) = text(child(sts, "Prtry")) {
        return Ok(EntryStatus::Other(prtry));
    }
    text(Some(sts))
        .map(|code| EntryStatus::from_code(&code))
        .ok_or(EntryProblem::Missing { path: "Sts" })
}

fn read_entry(
    ntry: Node<'_, '_>,
    ctx: &EntryContext,
    out: &mut Vec<BankTransaction>,
) -> Result<(), EntryProblem> {
    let amount =
        read_amount(child(ntry, "Amt"), "Amt")?.ok_or(EntryProblem::Missing { path: "Amt" })?;
    let direction = read_direction(child(ntry, "CdtDbtInd"), "CdtDbtInd")?
        .ok_or(EntryProblem::Missing { path: "CdtDbtInd" })?;
    let status = read_status(ntry)?;
    let reversal = match text(child(ntry, "RvslInd")).as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(other) => {
            return Err(EntryProblem::BadValue {
                path: "RvslInd",
                found: other.to_string(),
            })
        }
    };
    let booking_date = read_date(child(ntry, "BookgDt"), "BookgDt")?;
    let value_date = read_date(child(ntry, "ValDt"), "ValDt")?;
    let details: Vec<Node<'_, '_>> = children(ntry, "NtryDtls")
        .flat_map(|d| children(d, "TxDtls"))
        .collect();
    let batched = details.len() > 1;

    let base = BankTransaction {
        entry_key: ctx.base_key.clone(),
        entry_number: ctx.entry_number,
        batch_index: None,
        account_iban: ctx.account_iban.clone(),
        statement_id: ctx.statement_id.clone(),
        amount,
        direction,
        status,
        reversal,
        booking_date,
        value_date,
        end_to_end_id: None,
        debtor_name: None,
        debtor_iban: None,
        structured_reference: None,
        unstructured: Vec::new(),
        additional_info: if batched {
            None
        } else {
            text(child(ntry, "AddtlNtryInf"))
        },
    };
    if details.is_empty() {
        out.push(base);
        return Ok(());
    }
    for (i, tx) in details.into_iter().enumerate() {
        let n = i + 1;
        let own_amount = match read_amount(child(tx, "Amt"), "NtryDtls/TxDtls/Amt")? {
            Some(a) => Some(a),
            None => read_amount(
                path(tx, &["AmtDtls", "TxAmt", "Amt"]),
                "NtryDtls/TxDtls/AmtDtls/TxAmt/Amt",
            )?,
        };
        let amount = match own_amount {
            Some(a) => a,
            None if batched => return Err(EntryProblem::BatchWithoutAmount { detail: n }),
            None => base.amount,
        };
        let direction = read_direction(child(tx, "CdtDbtInd"), "NtryDtls/TxDtls/CdtDbtInd")?
            .unwrap_or(base.direction);
        let parties = child(tx, "RltdPties");
        let debtor = parties.and_then(|p| child(p, "Dbtr"));
        let debtor_name = text(debtor.and_then(|d| child(d, "Nm")))
            .or_else(|| text(debtor.and_then(|d| path(d, &["Pty", "Nm"]))));
        let debtor_iban = compact_upper(text(
            parties.and_then(|p| path(p, &["DbtrAcct", "Id", "IBAN"])),
        ));
        let rmt = child(tx, "RmtInf");
        let structured_reference = rmt
            .and_then(|r| children(r, "Strd").find_map(|s| text(path(s, &["CdtrRefInf", "Ref"]))));
        let unstructured = rmt
            .map(|r| children(r, "Ustrd").filter_map(|u| text(Some(u))).collect())
            .unwrap_or_default();
        out.push(BankTransaction {
            entry_key: if batched {
                format!("{}#{n}", ctx.base_key)
            } else {
                ctx.base_key.clone()
            },
            batch_index: batched.then_some(n),
            amount,
            direction,
            end_to_end_id: real_reference(text(path(tx, &["Refs", "EndToEndId"]))),
            debtor_name,
            debtor_iban,
            structured_reference,
            unstructured,
            additional_info: text(child(tx, "AddtlTxInf")).or_else(|| base.additional_info.clone()),
            ..base.clone()
        });
    }
    Ok(())
}

/// FNV-1a over the entry's element names, texts and attributes in document order, plus the
/// account: stable across runs and releases (unlike `std`'s hasher) and blind to namespace
/// prefixes and indentation.
fn entry_hash(ntry: Node<'_, '_>, account: Option<&str>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0x1f]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(account.unwrap_or(""));
    for n in ntry.descendants().filter(Node::is_element) {
        eat(n.tag_name().name());
        for a in n.attributes() {
            eat(a.name());
            eat(a.value());
        }
        // Absent and blank text hash alike, so indentation does not change the key.
        eat(n.text().map_or("", str::trim));
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Classification the importer needs.

/// Why a transaction is not a customer payment to import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoreReason {
    /// `RvslInd` is true: it undoes an earlier entry (e.g. a returned transfer).
    Reversed,
    /// Money went out.
    Debit,
    /// Not (yet) booked: pending, information or future.
    NotBooked { status: EntryStatus },
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::Reversed => f.write_str("reversal of an earlier entry"),
            IgnoreReason::Debit => f.write_str("debit, not a credit"),
            IgnoreReason::NotBooked { status } => write!(f, "not booked (status {status})"),
        }
    }
}

/// `Ok` for a booked, unreversed credit (`CRDT`, `BOOK`, `RvslInd` not true); otherwise why not.
pub fn importable(tx: &BankTransaction) -> Result<(), IgnoreReason> {
    if tx.reversal {
        return Err(IgnoreReason::Reversed);
    }
    if tx.direction != Direction::Credit {
        return Err(IgnoreReason::Debit);
    }
    if tx.status != EntryStatus::Booked {
        return Err(IgnoreReason::NotBooked {
            status: tx.status.clone(),
        });
    }
    Ok(())
}

/// Whether the transaction is a booked, unreversed credit.
pub fn is_importable_credit(tx: &BankTransaction) -> bool {
    importable(tx).is_ok()
}

/// Every RF reference the transaction may carry, best first: the structured one if it is a valid
/// RF reference, else the valid candidates found in the free text (`Ustrd` lines joined, then
/// `AddtlTxInf`/`AddtlNtryInf`), white space removed and checked mod 97.
pub fn reference_candidates(tx: &BankTransaction) -> Vec<TextCandidate> {
    if let Some(r) = tx
        .structured_reference
        .as_deref()
        .and_then(|s| CreditorReference::parse(s).ok())
    {
        return vec![TextCandidate {
            reference: r,
            at_word_end: true,
        }];
    }
    let mut text = tx.unstructured.join(" ");
    if let Some(s) = &tx.structured_reference {
        // A structured reference that is not RF may still hold one (a misfiled payer entry).
        text = format!("{s} {text}");
    }
    let found = rf::candidates_in_text(&text);
    if !found.is_empty() {
        return found;
    }
    tx.additional_info
        .as_deref()
        .map(rf::candidates_in_text)
        .unwrap_or_default()
}

/// The transaction's RF reference: the structured one when it is a valid RF reference, else the
/// one found unambiguously in the free text. `None` when there is none or the text is ambiguous.
pub fn reference_of(tx: &BankTransaction) -> Option<CreditorReference> {
    rf::pick(reference_candidates(tx))
}

#[cfg(test)]
mod tests;
