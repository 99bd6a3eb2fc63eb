//! ISO 11649 structured creditor references ("RF references").
//!
//! A reference is `RF` + two check digits + a payload of 1–21 letters and digits. The check
//! digits are `98 − mod97(numeric(payload + "RF00"))`; a reference is valid when
//! `mod97(numeric(payload + "RF" + check))` is 1 (the first four characters moved to the end).
//!
//! Mod 97 catches every single substitution that keeps the character class (digit for digit,
//! letter for letter). A digit replaced by a letter (or the reverse) changes the length of the
//! numeric string and passes about once in 97; the payload allows both classes, so such a change
//! can be another valid reference, and only the lookup of known references catches it.
//!
//! Finding a reference in free text (a bank's unstructured remittance line) is done on the text
//! with white space removed, because payers type the printed form `RF18 5390 0754 7034`. With the
//! spaces gone the next word glues on (`RF18539007547034DANKE`), so every payload length from 1 to
//! 21 is tried and only candidates that pass mod 97 are kept; those that end where a word ended in
//! the original text are preferred. See [`candidates_in_text`] and [`find_in_text`].

use serde::{Deserialize, Serialize};
use std::fmt;

use super::iban::{group4, mod97};

/// A valid creditor reference in compact upper-case form ("RF18539007547034").
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreditorReference(String);

/// Longest payload after `RF` and the check digits.
pub const MAX_PAYLOAD: usize = 21;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RfError {
    /// Nothing but spaces.
    Empty,
    /// A character other than A–Z, 0–9 or a space; `position` is 1-based, spaces not counted.
    InvalidCharacter { position: usize, found: char },
    /// The reference does not start with "RF".
    MissingPrefix { found: String },
    /// Characters 3–4 are not digits.
    CheckDigitsNotDigits { found: String },
    /// Check digits 00, 01 and 99 never occur (valid ones are 02–98).
    CheckDigitsOutOfRange { found: String },
    /// No payload after `RF` and the check digits, or an empty payload to generate from.
    PayloadEmpty,
    /// The payload has more than 21 characters.
    PayloadTooLong { length: usize },
    /// The mod-97 check fails: the remainder is not 1.
    Checksum { remainder: u32 },
}

impl fmt::Display for RfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RfError::Empty => f.write_str("creditor reference is empty"),
            RfError::InvalidCharacter { position, found } => write!(
                f,
                "creditor reference character {position} is {found:?}; only letters A-Z and digits are allowed"
            ),
            RfError::MissingPrefix { found } => write!(
                f,
                "creditor reference must start with \"RF\", not {found:?}"
            ),
            RfError::CheckDigitsNotDigits { found } => write!(
                f,
                "creditor reference characters 3-4 must be check digits, not {found:?}"
            ),
            RfError::CheckDigitsOutOfRange { found } => write!(
                f,
                "creditor reference check digits {found:?} cannot occur (valid check digits are 02-98)"
            ),
            RfError::PayloadEmpty => {
                f.write_str("creditor reference needs 1 to 21 letters or digits after RF and the check digits")
            }
            RfError::PayloadTooLong { length } => write!(
                f,
                "creditor reference payload has {length} characters, at most {MAX_PAYLOAD} are allowed"
            ),
            RfError::Checksum { remainder } => write!(
                f,
                "creditor reference check digits do not match: mod 97 gives {remainder}, must be 1 (typing error?)"
            ),
        }
    }
}

impl std::error::Error for RfError {}

/// Upper-cases `input` without spaces, refusing anything but ASCII letters and digits.
fn compact(input: &str) -> Result<String, RfError> {
    let mut out = String::new();
    for (i, c) in input.chars().filter(|c| *c != ' ').enumerate() {
        if !c.is_ascii_alphanumeric() {
            return Err(RfError::InvalidCharacter {
                position: i + 1,
                found: c,
            });
        }
        out.push(c.to_ascii_uppercase());
    }
    Ok(out)
}

impl CreditorReference {
    /// Generates the reference for a payload of 1–21 letters and digits (lower case is
    /// upper-cased; no spaces): `INV2026000123` → `RF98INV2026000123`.
    pub fn from_payload(payload: &str) -> Result<CreditorReference, RfError> {
        if payload.contains(' ') {
            let position = payload.chars().position(|c| c == ' ').unwrap_or(0) + 1;
            return Err(RfError::InvalidCharacter {
                position,
                found: ' ',
            });
        }
        let payload = compact(payload)?;
        match payload.len() {
            0 => return Err(RfError::PayloadEmpty),
            n if n > MAX_PAYLOAD => return Err(RfError::PayloadTooLong { length: n }),
            _ => {}
        }
        let check = 98 - mod97(payload.bytes().chain(*b"RF00"));
        Ok(CreditorReference(format!("RF{check:02}{payload}")))
    }

    /// Parses and validates a reference in electronic or printed form (spaces ignored, lower
    /// case accepted): `rf18 5390 0754 7034` → `RF18539007547034`.
    pub fn parse(input: &str) -> Result<CreditorReference, RfError> {
        let s = compact(input.trim())?;
        if s.is_empty() {
            return Err(RfError::Empty);
        }
        if !s.starts_with("RF") {
            return Err(RfError::MissingPrefix {
                found: s.chars().take(2).collect(),
            });
        }
        let check = s.get(2..4).unwrap_or(&s[2..]);
        if check.len() < 2 || !check.bytes().all(|c| c.is_ascii_digit()) {
            return Err(RfError::CheckDigitsNotDigits {
                found: check.to_string(),
            });
        }
        if matches!(check, "00" | "01" | "99") {
            return Err(RfError::CheckDigitsOutOfRange {
                found: check.to_string(),
            });
        }
        match s.len() - 4 {
            0 => return Err(RfError::PayloadEmpty),
            n if n > MAX_PAYLOAD => return Err(RfError::PayloadTooLong { length: n }),
            _ => {}
        }
        let remainder = mod97(s[4..].bytes().chain(s[..4].bytes()));
        if remainder != 1 {
            return Err(RfError::Checksum { remainder });
        }
        Ok(CreditorReference(s))
    }

    /// The compact form ("RF18539007547034"), as written into payment files and QR codes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The two check digits ("18").
    pub fn check_digits(&self) -> &str {
        &self.0[2..4]
    }

    /// The payload after the check digits ("539007547034").
    pub fn payload(&self) -> &str {
        &self.0[4..]
    }

    /// The printed form in groups of four ("RF18 5390 0754 7034"), for people to copy.
    pub fn grouped(&self) -> String {
        group4(&self.0)
    }
}

impl fmt::Display for CreditorReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CreditorReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CreditorReference({})", self.0)
    }
}

impl std::str::FromStr for CreditorReference {
    type Err = RfError;
    fn from_str(s: &str) -> Result<CreditorReference, RfError> {
        CreditorReference::parse(s)
    }
}

impl Serialize for CreditorReference {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for CreditorReference {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CreditorReference::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A reference found in free text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextCandidate {
    pub reference: CreditorReference,
    /// The candidate ends where a word ended in the original text (white space, punctuation or
    /// the end of the text follows), as a reference typed by a person does. A candidate that
    /// ends inside a word only passed mod 97 by also taking letters of the next word, or the
    /// payer glued the reference to the next word.
    pub at_word_end: bool,
}

/// One character of the text with white space removed.
struct Glyph {
    /// Upper-cased ASCII letter or digit, or `None` for anything else (punctuation, non-ASCII),
    /// which ends a candidate.
    alnum: Option<u8>,
    /// White space followed this character in the original text.
    space_after: bool,
}

/// Every valid RF reference in `text` once white space is removed, in order of appearance,
/// without repeats. Case is ignored. Several candidates can start at the same `RF` (see the
/// module doc); [`find_in_text`] picks one only when that is unambiguous, and a caller that knows
/// which references it issued can instead keep the candidates it knows.
pub fn candidates_in_text(text: &str) -> Vec<TextCandidate> {
    let mut glyphs: Vec<Glyph> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() {
            if let Some(last) = glyphs.last_mut() {
                last.space_after = true;
            }
            continue;
        }
        let alnum = u8::try_from(c)
            .ok()
            .filter(u8::is_ascii_alphanumeric)
            .map(|b| b.to_ascii_uppercase());
        glyphs.push(Glyph {
            alnum,
            space_after: false,
        });
    }
    let at = |i: usize| glyphs.get(i).and_then(|g| g.alnum);
    let mut found: Vec<TextCandidate> = Vec::new();
    for start in 0..glyphs.len() {
        let is_rf = at(start) == Some(b'R')
            && at(start + 1) == Some(b'F')
            && at(start + 2).is_some_and(|c| c.is_ascii_digit())
            && at(start + 3).is_some_and(|c| c.is_ascii_digit());
        if !is_rf {
            continue;
        }
        let mut text = String::with_capacity(4 + MAX_PAYLOAD);
        text.extend(
            glyphs[start..start + 4]
                .iter()
                .filter_map(|g| g.alnum)
                .map(char::from),
        );
        let payload = glyphs.iter().enumerate().skip(start + 4).take(MAX_PAYLOAD);
        for (end, glyph) in payload {
            let Some(c) = glyph.alnum else { break };
            text.push(char::from(c));
            let Ok(reference) = CreditorReference::parse(&text) else {
                continue;
            };
            let at_word_end = glyph.space_after || at(end + 1).is_none();
            match found.iter_mut().find(|f| f.reference == reference) {
                Some(seen) => seen.at_word_end |= at_word_end,
                None => found.push(TextCandidate {
                    reference,
                    at_word_end,
                }),
            }
        }
    }
    found
}

/// The RF reference in `text`, if there is exactly one plausible one: the only valid candidate
/// ending at a word end, or else the only valid candidate at all. `None` when there is none or
/// the text is ambiguous (never a guess).
pub fn find_in_text(text: &str) -> Option<CreditorReference> {
    pick(candidates_in_text(text))
}

/// The unambiguous choice among candidates, by the rule of [`find_in_text`].
pub(crate) fn pick(candidates: Vec<TextCandidate>) -> Option<CreditorReference> {
    let mut at_end = candidates.iter().filter(|c| c.at_word_end);
    match (at_end.next(), at_end.next()) {
        (Some(only), None) => Some(only.reference.clone()),
        (Some(_), Some(_)) => None,
        (None, _) => {
            let mut all = candidates.into_iter();
            match (all.next(), all.next()) {
                (Some(only), None) => Some(only.reference),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rf(s: &str) -> CreditorReference {
        CreditorReference(s.to_string())
    }

    #[test]
    fn known_examples() {
        assert_eq!(
            CreditorReference::parse("RF18539007547034")
                .map(|r| r.to_string())
                .as_deref(),
            Ok("RF18539007547034")
        );
        assert_eq!(
            CreditorReference::from_payload("INV2026000123")
                .map(|r| r.to_string())
                .as_deref(),
            Ok("RF98INV2026000123")
        );
        assert_eq!(
            CreditorReference::from_payload("539007547034")
                .map(|r| r.to_string())
                .as_deref(),
            Ok("RF18539007547034")
        );
    }

    #[test]
    fn parts_and_printed_form() -> Result<(), RfError> {
        let r = CreditorReference::parse("rf18 5390 0754 7034")?;
        assert_eq!(r.as_str(), "RF18539007547034");
        assert_eq!(r.check_digits(), "18");
        assert_eq!(r.payload(), "539007547034");
        assert_eq!(r.grouped(), "RF18 5390 0754 7034");
        assert_eq!(CreditorReference::parse(&r.grouped())?, r);
        assert_eq!(format!("{r:?}"), "CreditorReference(RF18539007547034)");
        assert_eq!(
            CreditorReference::from_payload("inv2026000123")?.as_str(),
            "RF98INV2026000123"
        );
        Ok(())
    }

    #[test]
    fn errors_are_precise() {
        use CreditorReference as R;
        assert_eq!(R::parse("  "), Err(RfError::Empty));
        assert_eq!(
            R::parse("RF18-5390"),
            Err(RfError::InvalidCharacter {
                position: 5,
                found: '-'
            })
        );
        assert_eq!(
            R::parse("XX18539007547034"),
            Err(RfError::MissingPrefix { found: "XX".into() })
        );
        assert_eq!(
            R::parse("RF1"),
            Err(RfError::CheckDigitsNotDigits { found: "1".into() })
        );
        assert_eq!(
            R::parse("RFA8539007547034"),
            Err(RfError::CheckDigitsNotDigits { found: "A8".into() })
        );
        assert_eq!(
            R::parse("RF01539007547034"),
            Err(RfError::CheckDigitsOutOfRange { found: "01".into() })
        );
        assert_eq!(R::parse("RF18"), Err(RfError::PayloadEmpty));
        assert_eq!(
            R::parse("RF181234567890123456789012"),
            Err(RfError::PayloadTooLong { length: 22 })
        );
        assert_eq!(
            R::parse("RF19539007547034"),
            Err(RfError::Checksum { remainder: 2 })
        );
        assert_eq!(R::from_payload(""), Err(RfError::PayloadEmpty));
        assert_eq!(
            R::from_payload("INV 1"),
            Err(RfError::InvalidCharacter {
                position: 4,
                found: ' '
            })
        );
        assert_eq!(
            R::from_payload("INV/1"),
            Err(RfError::InvalidCharacter {
                position: 4,
                found: '/'
            })
        );
        assert_eq!(
            R::from_payload(&"9".repeat(22)),
            Err(RfError::PayloadTooLong { length: 22 })
        );
        assert!(R::from_payload(&"9".repeat(21)).is_ok());
        assert_eq!(
            RfError::Checksum { remainder: 2 }.to_string(),
            "creditor reference check digits do not match: mod 97 gives 2, must be 1 (typing error?)"
        );
    }

    #[test]
    fn finds_reference_typed_with_spaces() {
        let r = rf("RF18539007547034");
        assert_eq!(find_in_text("RF18 5390 0754 7034"), Some(r.clone()));
        assert_eq!(
            find_in_text("Rechnung rf18 5390 0754 7034 vielen Dank"),
            Some(r.clone())
        );
        assert_eq!(
            find_in_text("Ref: RF18539007547034, Kunde 42"),
            Some(r.clone())
        );
        assert_eq!(find_in_text("RF18 5390\n0754 7034"), Some(r.clone()));
        assert_eq!(
            find_in_text("EREF+RF18539007547034 SVWZ+Danke"),
            Some(r.clone())
        );
        assert_eq!(find_in_text("RF18\u{a0}5390\u{a0}0754\u{a0}7034"), Some(r));
    }

    #[test]
    fn finds_reference_glued_to_the_next_word() {
        // No white space after the reference: the only valid candidate ends inside a word.
        let c = candidates_in_text("RF18539007547034DANKE");
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(!c[0].at_word_end);
        assert_eq!(
            find_in_text("RF18539007547034DANKE"),
            Some(rf("RF18539007547034"))
        );
    }

    #[test]
    fn nothing_found() {
        assert_eq!(find_in_text(""), None);
        assert_eq!(find_in_text("Rechnung 2026-000123"), None);
        assert_eq!(
            find_in_text("RF19 5390 0754 7034"),
            None,
            "wrong check digits"
        );
        assert_eq!(
            find_in_text("RF 18 5390 0754 7034"),
            Some(rf("RF18539007547034"))
        );
        assert_eq!(find_in_text("RFXX5390"), None);
        assert_eq!(find_in_text("RF18"), None);
    }

    /// A word that, appended to `reference` without a space, gives another valid reference.
    fn colliding_suffix(reference: &CreditorReference) -> Option<String> {
        (0..10_000)
            .map(|n| format!("{n:04}"))
            .find(|w| CreditorReference::parse(&format!("{reference}{w}")).is_ok())
    }

    #[test]
    fn ambiguous_text_yields_no_reference() -> Result<(), RfError> {
        // "RF18 5390 0754 7034 <w>" where RF18…7034<w> is valid too: both end at a word end, so
        // the text alone cannot tell which was meant.
        let r = CreditorReference::parse("RF18539007547034")?;
        let w = colliding_suffix(&r).unwrap_or_default();
        assert_eq!(w.len(), 4);
        let text = format!("{} {w}", r.grouped());
        let c = candidates_in_text(&text);
        let refs: Vec<&str> = c.iter().map(|c| c.reference.as_str()).collect();
        let longer = format!("{r}{w}");
        assert_eq!(refs, vec![r.as_str(), longer.as_str()]);
        assert!(c.iter().all(|c| c.at_word_end));
        assert_eq!(find_in_text(&text), None);
        // Glued without a space, only the longer one ends at a word end: that one is taken.
        assert_eq!(
            find_in_text(&format!("{r}{w}")),
            Some(CreditorReference::parse(&longer)?)
        );
        Ok(())
    }

    #[test]
    fn two_different_references_in_one_text_are_ambiguous() {
        let text = "RF18 5390 0754 7034 und RF98 INV2026000123";
        assert_eq!(candidates_in_text(text).len(), 2);
        assert_eq!(find_in_text(text), None);
        // The same reference twice is one candidate.
        assert_eq!(
            find_in_text("RF18539007547034 RF18 5390 0754 7034"),
            Some(rf("RF18539007547034"))
        );
    }

    #[test]
    fn cross_class_change_can_give_another_valid_reference() {
        // Why the property below is about same-class changes: a digit turned into a letter (or
        // the reverse) in the payload can give another valid reference.
        let mut found = Vec::new();
        for payload in ["INV2026000123", "539007547034", "2026000123"] {
            let Ok(r) = CreditorReference::from_payload(payload) else {
                continue;
            };
            for (pos, changed) in substitutions(r.as_str()) {
                let from = r.as_str().as_bytes()[pos];
                let to = changed.as_bytes()[pos];
                if pos >= 4
                    && from.is_ascii_digit() != to.is_ascii_digit()
                    && CreditorReference::parse(&changed).is_ok()
                {
                    found.push(changed);
                }
            }
        }
        assert!(!found.is_empty());
    }

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    fn substitutions(s: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for pos in 0..s.len() {
            for c in ALPHABET.iter().filter(|c| **c != s.as_bytes()[pos]) {
                let mut b = s.as_bytes().to_vec();
                b[pos] = *c;
                out.push((pos, String::from_utf8_lossy(&b).into_owned()));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn generated_references_pass_mod97(payload in "[A-Z0-9]{1,21}") {
            let r = CreditorReference::from_payload(&payload);
            prop_assert!(r.is_ok());
            if let Ok(r) = r {
                let s = r.as_str();
                prop_assert_eq!(mod97(s[4..].bytes().chain(s[..4].bytes())), 1);
                prop_assert_eq!(r.payload(), payload.as_str());
                prop_assert_eq!(CreditorReference::parse(s), Ok(r.clone()));
                prop_assert_eq!(CreditorReference::parse(&r.grouped().to_lowercase()), Ok(r.clone()));
                // Found, unless the following word makes the text ambiguous; never another one.
                let picked = find_in_text(&format!("Zahlung {} danke", r.grouped()));
                prop_assert!(picked.is_none() || picked.as_ref() == Some(&r), "{:?}", picked);
            }
        }

        #[test]
        fn every_same_class_change_fails(payload in "[A-Z0-9]{1,21}") {
            let r = CreditorReference::from_payload(&payload);
            prop_assert!(r.is_ok());
            let r = r.map(|r| r.to_string()).unwrap_or_default();
            for (pos, changed) in substitutions(&r) {
                let same_class = r.as_bytes()[pos].is_ascii_digit() == changed.as_bytes()[pos].is_ascii_digit();
                // Any change of "RF" or of a check digit into a letter breaks the shape; any
                // same-class change breaks mod 97.
                if pos < 4 || same_class {
                    prop_assert!(CreditorReference::parse(&changed).is_err(), "{} → {}", r, changed);
                }
            }
        }

        #[test]
        fn found_in_text_when_followed_by_words(payload in "[A-Z0-9]{1,21}", tail in "[a-z ]{0,30}") {
            let r = CreditorReference::from_payload(&payload);
            prop_assert!(r.is_ok());
            if let Ok(r) = r {
                let text = format!("Rechnung {} {tail}", r.grouped());
                let c = candidates_in_text(&text);
                prop_assert!(c.iter().any(|c| c.reference == r && c.at_word_end), "{:?}", c);
                let picked = find_in_text(&text);
                // Either the right one or none (ambiguous), never another reference.
                prop_assert!(picked.is_none() || picked.as_ref() == Some(&r), "{:?}", picked);
            }
        }
    }
}
