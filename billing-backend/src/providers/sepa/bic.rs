//! Business Identifier Codes (ISO 9362): `^[A-Z0-9]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?$`.
//!
//! The party prefix (first four characters) may contain digits since the 2022 edition, so only
//! the country code (characters 5–6) must be letters. A BIC is optional for SEPA credit transfers
//! within the EEA; where one is configured it is checked at start-up. Spaces are ignored and
//! lower case is accepted on input; the stored form is compact upper case.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A BIC of 8 or 11 characters in upper case ("DEUTDEFF", "DEUTDEFF500").
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bic(String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BicError {
    Empty,
    /// A BIC has 8 or 11 characters (spaces not counted).
    WrongLength {
        found: usize,
    },
    /// Not a letter A–Z or a digit; `position` is 1-based, spaces not counted.
    InvalidCharacter {
        position: usize,
        found: char,
    },
    /// Characters 5–6 are the ISO 3166 country code and must be letters.
    CountryCodeNotLetters {
        found: String,
    },
}

impl fmt::Display for BicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BicError::Empty => f.write_str("BIC is empty"),
            BicError::WrongLength { found } => {
                write!(f, "BIC must have 8 or 11 characters, this one has {found}")
            }
            BicError::InvalidCharacter { position, found } => write!(
                f,
                "BIC character {position} is {found:?}; only letters A-Z and digits are allowed"
            ),
            BicError::CountryCodeNotLetters { found } => write!(
                f,
                "BIC characters 5-6 must be a two-letter country code, not {found:?}"
            ),
        }
    }
}

impl std::error::Error for BicError {}

impl Bic {
    pub fn parse(input: &str) -> Result<Bic, BicError> {
        let mut compact = String::with_capacity(11);
        for (i, c) in input.trim().chars().filter(|c| *c != ' ').enumerate() {
            if !c.is_ascii_alphanumeric() {
                return Err(BicError::InvalidCharacter {
                    position: i + 1,
                    found: c,
                });
            }
            compact.push(c.to_ascii_uppercase());
        }
        match compact.len() {
            0 => return Err(BicError::Empty),
            8 | 11 => {}
            found => return Err(BicError::WrongLength { found }),
        }
        let country = &compact[4..6];
        if !country.bytes().all(|c| c.is_ascii_uppercase()) {
            return Err(BicError::CountryCodeNotLetters {
                found: country.to_string(),
            });
        }
        Ok(Bic(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Characters 1–4: the party prefix (formerly "bank code").
    pub fn party_prefix(&self) -> &str {
        &self.0[..4]
    }

    /// Characters 5–6: the country code.
    pub fn country_code(&self) -> &str {
        &self.0[4..6]
    }

    /// Characters 7–8: the party suffix (formerly "location code").
    pub fn party_suffix(&self) -> &str {
        &self.0[6..8]
    }

    /// Characters 9–11, if present: the branch code.
    pub fn branch(&self) -> Option<&str> {
        self.0.get(8..).filter(|b| !b.is_empty())
    }
}

impl fmt::Display for Bic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Bic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bic({})", self.0)
    }
}

impl std::str::FromStr for Bic {
    type Err = BicError;
    fn from_str(s: &str) -> Result<Bic, BicError> {
        Bic::parse(s)
    }
}

impl Serialize for Bic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Bic::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_8_and_11_characters() -> Result<(), BicError> {
        let b = Bic::parse("DEUTDEFF")?;
        assert_eq!(
            (b.party_prefix(), b.country_code(), b.party_suffix()),
            ("DEUT", "DE", "FF")
        );
        assert_eq!(b.branch(), None);
        let b = Bic::parse(" deutdeff500\n")?;
        assert_eq!(b.as_str(), "DEUTDEFF500");
        assert_eq!(b.branch(), Some("500"));
        assert_eq!(Bic::parse("COBA DE FF XXX")?.to_string(), "COBADEFFXXX");
        // Digits in the party prefix are allowed since ISO 9362:2022.
        assert_eq!(Bic::parse("1BANDEFF")?.party_prefix(), "1BAN");
        assert_eq!(Bic::parse("BANKDE1X")?.party_suffix(), "1X");
        Ok(())
    }

    #[test]
    fn errors_are_precise() {
        assert_eq!(Bic::parse(" "), Err(BicError::Empty));
        assert_eq!(
            Bic::parse("DEUTDEF"),
            Err(BicError::WrongLength { found: 7 })
        );
        assert_eq!(
            Bic::parse("DEUTDEFF50"),
            Err(BicError::WrongLength { found: 10 })
        );
        assert_eq!(
            Bic::parse("DEUTDEFF5000"),
            Err(BicError::WrongLength { found: 12 })
        );
        assert_eq!(
            Bic::parse("DEUT-DEFF"),
            Err(BicError::InvalidCharacter {
                position: 5,
                found: '-'
            })
        );
        assert_eq!(
            Bic::parse("DEUTD3FF"),
            Err(BicError::CountryCodeNotLetters { found: "D3".into() })
        );
        assert_eq!(
            BicError::WrongLength { found: 7 }.to_string(),
            "BIC must have 8 or 11 characters, this one has 7"
        );
    }

    /// The regex of the specification, written out by hand.
    fn matches_spec(s: &str) -> bool {
        let b = s.as_bytes();
        let alnum = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit();
        (b.len() == 8 || b.len() == 11)
            && b[..4].iter().all(alnum)
            && b[4..6].iter().all(u8::is_ascii_uppercase)
            && b[6..].iter().all(alnum)
    }

    proptest! {
        #[test]
        fn agrees_with_the_spec_regex(s in "[A-Z0-9]{6,12}") {
            prop_assert_eq!(Bic::parse(&s).is_ok(), matches_spec(&s));
        }
    }
}
