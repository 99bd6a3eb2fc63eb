//! International Bank Account Numbers (ISO 13616).
//!
//! An [`Iban`] is parsed once at the edge (configuration, API input) and passed inward; it holds
//! the compact upper-case form. Parsing checks, in this order, so the error names the first thing
//! that is wrong: characters, country code, check-digit shape, the country's length, the
//! country's BBAN structure (where a digit or a letter is required), then the mod-97 checksum.
//!
//! Why the BBAN structure is checked too: mod 97 detects every single substitution that keeps a
//! character's class (digit for digit, letter for letter), but a digit replaced by a letter
//! changes the length of the numeric string, and such a change passes mod 97 about once in 97.
//! Where the registry fixes the class of a position (`n` or `a`), the structure check rejects
//! those changes; at positions the registry leaves alphanumeric (`c`) no checker can, because the
//! result is itself a well-formed IBAN (see the test `cross_class_change_at_c_position...`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest IBAN of any country (ISO 13616 allows 34; the longest in use is 33).
const MAX_LEN: usize = 34;

/// A valid IBAN in compact upper-case form ("DE89370400440532013000").
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iban(String);

/// Class of a BBAN character, as the IBAN registry writes it (`n`, `a`, `c`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CharClass {
    /// `n`: a digit.
    Digit,
    /// `a`: an upper-case letter.
    Letter,
    /// `c`: a digit or a letter.
    Alphanumeric,
}

impl CharClass {
    fn admits(self, c: u8) -> bool {
        match self {
            CharClass::Digit => c.is_ascii_digit(),
            CharClass::Letter => c.is_ascii_uppercase(),
            CharClass::Alphanumeric => c.is_ascii_digit() || c.is_ascii_uppercase(),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CharClass::Digit => "a digit",
            CharClass::Letter => "a letter",
            CharClass::Alphanumeric => "a letter or digit",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IbanError {
    /// Nothing but spaces.
    Empty,
    /// Longer than any IBAN can be (34 characters without spaces).
    TooLong { length: usize },
    /// Shorter than country code plus check digits.
    TooShort { length: usize },
    /// A character other than A–Z, 0–9 (or spaces, which are ignored). `position` is 1-based in
    /// the compact form.
    InvalidCharacter { position: usize, found: char },
    /// The first two characters are not letters.
    CountryCodeNotLetters { found: String },
    /// Characters 3 and 4 are not digits.
    CheckDigitsNotDigits { found: String },
    /// Check digits 00, 01 and 99 never occur (valid ones are 02–98).
    CheckDigitsOutOfRange { found: String },
    /// The country code has no IBAN format in the registry.
    UnknownCountry { country: String },
    /// The length does not fit the country.
    WrongLength {
        country: String,
        expected: usize,
        found: usize,
    },
    /// A character does not fit the country's BBAN structure. `position` is 1-based in the
    /// compact IBAN.
    BbanStructure {
        country: String,
        position: usize,
        expected: CharClass,
        found: char,
    },
    /// The mod-97 check fails: the remainder is not 1.
    Checksum { remainder: u32 },
}

impl fmt::Display for IbanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IbanError::Empty => f.write_str("IBAN is empty"),
            IbanError::TooLong { length } => write!(
                f,
                "IBAN has {length} characters; no IBAN is longer than {MAX_LEN}"
            ),
            IbanError::TooShort { length } => write!(
                f,
                "IBAN has {length} characters; it needs at least a country code, two check digits and an account number"
            ),
            IbanError::InvalidCharacter { position, found } => write!(
                f,
                "IBAN character {position} is {found:?}; only letters A-Z, digits and spaces are allowed"
            ),
            IbanError::CountryCodeNotLetters { found } => {
                write!(f, "IBAN must start with a two-letter country code, not {found:?}")
            }
            IbanError::CheckDigitsNotDigits { found } => {
                write!(f, "IBAN characters 3-4 must be check digits, not {found:?}")
            }
            IbanError::CheckDigitsOutOfRange { found } => write!(
                f,
                "IBAN check digits {found:?} cannot occur (valid check digits are 02-98)"
            ),
            IbanError::UnknownCountry { country } => {
                write!(f, "IBAN country code {country:?} has no IBAN format")
            }
            IbanError::WrongLength { country, expected, found } => write!(
                f,
                "IBAN for country {country} must have {expected} characters, this one has {found}"
            ),
            IbanError::BbanStructure { country, position, expected, found } => write!(
                f,
                "IBAN character {position} is {found:?} but must be {} for country {country}",
                expected.describe()
            ),
            IbanError::Checksum { remainder } => write!(
                f,
                "IBAN check digits do not match: mod 97 gives {remainder}, must be 1 (typing error?)"
            ),
        }
    }
}

impl std::error::Error for IbanError {}

/// BBAN structure per country, in the IBAN registry's notation (`8!n10!n` = 8 digits then 10
/// digits). The IBAN length is 4 plus the BBAN length. Countries whose territories share a code
/// (e.g. FR for GF/GP/MQ/RE, GB for JE/GG/IM, FI for AX) are covered by that code.
const REGISTRY: &[(&str, &str)] = &[
    ("AD", "4!n4!n12!c"),
    ("AE", "3!n16!n"),
    ("AL", "8!n16!c"),
    ("AT", "5!n11!n"),
    ("AZ", "4!a20!c"),
    ("BA", "3!n3!n8!n2!n"),
    ("BE", "3!n7!n2!n"),
    ("BG", "4!a4!n2!n8!c"),
    ("BH", "4!a14!c"),
    ("BI", "5!n5!n11!n2!n"),
    ("BR", "8!n5!n10!n1!a1!c"),
    ("BY", "4!c4!n16!c"),
    ("CH", "5!n12!c"),
    ("CR", "4!n14!n"),
    ("CY", "3!n5!n16!c"),
    ("CZ", "4!n6!n10!n"),
    ("DE", "8!n10!n"),
    ("DJ", "5!n5!n11!n2!n"),
    ("DK", "4!n9!n1!n"),
    ("DO", "4!c20!n"),
    ("EE", "2!n14!n"),
    ("EG", "4!n4!n17!n"),
    ("ES", "4!n4!n1!n1!n10!n"),
    ("FI", "3!n11!n"),
    ("FK", "2!a12!n"),
    ("FO", "4!n9!n1!n"),
    ("FR", "5!n5!n11!c2!n"),
    ("GB", "4!a6!n8!n"),
    ("GE", "2!a16!n"),
    ("GI", "4!a15!c"),
    ("GL", "4!n9!n1!n"),
    ("GR", "3!n4!n16!c"),
    ("GT", "4!c20!c"),
    ("HN", "4!a20!n"),
    ("HR", "7!n10!n"),
    ("HU", "3!n4!n1!n15!n1!n"),
    ("IE", "4!a6!n8!n"),
    ("IL", "3!n3!n13!n"),
    ("IQ", "4!a3!n12!n"),
    ("IS", "4!n2!n6!n10!n"),
    ("IT", "1!a5!n5!n12!c"),
    ("JO", "4!a4!n18!c"),
    ("KW", "4!a22!c"),
    ("KZ", "3!n13!c"),
    ("LB", "4!n20!c"),
    ("LC", "4!a24!c"),
    ("LI", "5!n12!c"),
    ("LT", "5!n11!n"),
    ("LU", "3!n13!c"),
    ("LV", "4!a13!c"),
    ("LY", "3!n3!n15!n"),
    ("MC", "5!n5!n11!c2!n"),
    ("MD", "2!c18!c"),
    ("ME", "3!n13!n2!n"),
    ("MK", "3!n10!c2!n"),
    ("MN", "4!n12!n"),
    ("MR", "5!n5!n11!n2!n"),
    ("MT", "4!a5!n18!c"),
    ("MU", "4!a2!n2!n12!n3!n3!a"),
    ("NI", "4!a20!n"),
    ("NL", "4!a10!n"),
    ("NO", "4!n6!n1!n"),
    ("OM", "3!n16!c"),
    ("PK", "4!a16!c"),
    ("PL", "8!n16!n"),
    ("PS", "4!a21!c"),
    ("PT", "4!n4!n11!n2!n"),
    ("QA", "4!a21!c"),
    ("RO", "4!a16!c"),
    ("RS", "3!n13!n2!n"),
    ("RU", "9!n5!n15!c"),
    ("SA", "2!n18!c"),
    ("SC", "4!a2!n2!n16!n3!a"),
    ("SD", "2!n12!n"),
    ("SE", "3!n16!n1!n"),
    ("SI", "5!n8!n2!n"),
    ("SK", "4!n6!n10!n"),
    ("SM", "1!a5!n5!n12!c"),
    ("SO", "4!n3!n12!n"),
    ("ST", "4!n4!n11!n2!n"),
    ("SV", "4!a20!n"),
    ("TL", "3!n14!n2!n"),
    ("TN", "2!n3!n13!n2!n"),
    ("TR", "5!n1!n16!c"),
    ("UA", "6!n19!c"),
    ("VA", "3!n15!n"),
    ("VG", "4!a16!n"),
    ("XK", "4!n10!n2!n"),
    ("YE", "4!a4!n18!c"),
];

/// The registry entry of a country: its BBAN structure string.
fn structure_of(country: &str) -> Option<&'static str> {
    REGISTRY
        .iter()
        .find(|(cc, _)| *cc == country)
        .map(|(_, s)| *s)
}

/// Expands a structure like `4!a6!n8!n` into (count, class) segments.
fn segments(structure: &str) -> impl Iterator<Item = (usize, CharClass)> + '_ {
    structure
        .split_terminator(['n', 'a', 'c'])
        .scan(0usize, move |pos, part| {
            // `part` is like "4!" (possibly preceded by nothing); the class letter follows it.
            let start = *pos + part.len();
            *pos = start + 1;
            let count = part.trim_end_matches('!').parse::<usize>().ok()?;
            let class = match structure.as_bytes().get(start)? {
                b'n' => CharClass::Digit,
                b'a' => CharClass::Letter,
                _ => CharClass::Alphanumeric,
            };
            Some((count, class))
        })
}

/// The class each BBAN position of `country` must have, or `None` for an unknown country.
pub fn bban_classes(country: &str) -> Option<Vec<CharClass>> {
    let structure = structure_of(country)?;
    Some(
        segments(structure)
            .flat_map(|(n, class)| std::iter::repeat_n(class, n))
            .collect(),
    )
}

/// Total IBAN length for a country code ("DE" → 22), or `None` if the country has no IBAN.
pub fn expected_length(country: &str) -> Option<usize> {
    structure_of(country).map(|s| 4 + segments(s).map(|(n, _)| n).sum::<usize>())
}

/// All country codes with an IBAN format, in alphabetical order.
pub fn countries() -> impl Iterator<Item = &'static str> {
    REGISTRY.iter().map(|(cc, _)| *cc)
}

/// The ISO 7064 MOD 97-10 remainder of an upper-case alphanumeric string, letters counting as
/// two digits (A = 10 … Z = 35). Computed digit by digit so no big integers are needed.
pub(crate) fn mod97(chars: impl IntoIterator<Item = u8>) -> u32 {
    chars.into_iter().fold(0u32, |rem, c| {
        if c.is_ascii_digit() {
            (rem * 10 + u32::from(c - b'0')) % 97
        } else {
            (rem * 100 + u32::from(c - b'A') + 10) % 97
        }
    })
}

impl Iban {
    /// Parses an IBAN in electronic or printed form: spaces are ignored (and white space around
    /// it, such as a trailing newline from a file), lower case is accepted.
    pub fn parse(input: &str) -> Result<Iban, IbanError> {
        let mut compact = String::with_capacity(MAX_LEN);
        let mut length = 0usize;
        for c in input.trim().chars().filter(|c| *c != ' ') {
            length += 1;
            if !c.is_ascii_alphanumeric() {
                return Err(IbanError::InvalidCharacter {
                    position: length,
                    found: c,
                });
            }
            if length <= MAX_LEN {
                compact.push(c.to_ascii_uppercase());
            }
        }
        if length == 0 {
            return Err(IbanError::Empty);
        }
        if length > MAX_LEN {
            return Err(IbanError::TooLong { length });
        }
        if length < 5 {
            return Err(IbanError::TooShort { length });
        }
        let b = compact.as_bytes();
        let country = &compact[..2];
        if !b[..2].iter().all(u8::is_ascii_uppercase) {
            return Err(IbanError::CountryCodeNotLetters {
                found: country.to_string(),
            });
        }
        let check = &compact[2..4];
        if !b[2..4].iter().all(u8::is_ascii_digit) {
            return Err(IbanError::CheckDigitsNotDigits {
                found: check.to_string(),
            });
        }
        if matches!(check, "00" | "01" | "99") {
            return Err(IbanError::CheckDigitsOutOfRange {
                found: check.to_string(),
            });
        }
        let classes = bban_classes(country).ok_or_else(|| IbanError::UnknownCountry {
            country: country.to_string(),
        })?;
        let expected = classes.len() + 4;
        if length != expected {
            return Err(IbanError::WrongLength {
                country: country.to_string(),
                expected,
                found: length,
            });
        }
        for (i, (class, c)) in classes.iter().zip(&b[4..]).enumerate() {
            if !class.admits(*c) {
                return Err(IbanError::BbanStructure {
                    country: country.to_string(),
                    position: i + 5,
                    expected: *class,
                    found: char::from(*c),
                });
            }
        }
        let remainder = mod97(b[4..].iter().chain(&b[..4]).copied());
        if remainder != 1 {
            return Err(IbanError::Checksum { remainder });
        }
        Ok(Iban(compact))
    }

    /// Builds the IBAN of a country and BBAN, computing the check digits
    /// (`98 − mod97(BBAN + country + "00")`), then validates it like [`Iban::parse`].
    pub fn from_bban(country: &str, bban: &str) -> Result<Iban, IbanError> {
        let country = country.to_ascii_uppercase();
        let bban: String = bban
            .chars()
            .filter(|c| *c != ' ')
            .collect::<String>()
            .to_ascii_uppercase();
        if !bban.bytes().all(|c| c.is_ascii_alphanumeric())
            || !country.bytes().all(|c| c.is_ascii_alphabetic())
        {
            // Let `parse` name the offending character.
            return Iban::parse(&format!("{country}00{bban}"));
        }
        let check = 98 - mod97(bban.bytes().chain(country.bytes()).chain(*b"00"));
        Iban::parse(&format!("{country}{check:02}{bban}"))
    }

    /// The compact form ("DE89370400440532013000"), as used in files and QR codes.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ISO 3166 country code ("DE").
    pub fn country_code(&self) -> &str {
        &self.0[..2]
    }

    /// The two check digits ("89").
    pub fn check_digits(&self) -> &str {
        &self.0[2..4]
    }

    /// The national part after country code and check digits.
    pub fn bban(&self) -> &str {
        &self.0[4..]
    }

    /// The printed form in groups of four ("DE89 3704 0044 0532 0130 00").
    pub fn grouped(&self) -> String {
        group4(&self.0)
    }
}

/// Groups an ASCII string in blocks of four separated by single spaces.
pub(crate) fn group4(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 4);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

impl fmt::Display for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Iban {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Iban({})", self.0)
    }
}

impl std::str::FromStr for Iban {
    type Err = IbanError;
    fn from_str(s: &str) -> Result<Iban, IbanError> {
        Iban::parse(s)
    }
}

impl Serialize for Iban {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Iban {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Iban::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Registry examples and other published sample IBANs, one or more per structure kind.
    const VALID: &[&str] = &[
        "DE89370400440532013000",
        "AL47212110090000000235698741",
        "GB29NWBK60161331926819",
        "FR1420041010050500013M02606",
        "NL91ABNA0417164300",
        "BE68539007547034",
        "AT611904300234573201",
        "CH9300762011623852957",
        "ES9121000418450200051332",
        "IT60X0542811101000000123456",
        "NO9386011117947",
        "MT84MALT011000012345MTLCAST001S",
        "PL61109010140000071219812874",
        "SE4550000000058398257466",
        "DK5000400440116243",
        "FI2112345600000785",
        "IE29AIBK93115212345678",
        "LU280019400644750000",
        "PT50000201231234567890154",
    ];

    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    #[test]
    fn accepts_known_valid_ibans() {
        for s in VALID {
            assert_eq!(
                Iban::parse(s).map(|i| i.to_string()).as_deref(),
                Ok(*s),
                "{s}"
            );
        }
    }

    #[test]
    fn accepts_printed_form_and_lower_case() {
        let iban = Iban::parse(" de89 3704 0044 0532 0130 00\n").map(|i| i.to_string());
        assert_eq!(iban.as_deref(), Ok("DE89370400440532013000"));
    }

    #[test]
    fn parts_and_grouping() -> Result<(), IbanError> {
        let iban = Iban::parse("DE89370400440532013000")?;
        assert_eq!(iban.country_code(), "DE");
        assert_eq!(iban.check_digits(), "89");
        assert_eq!(iban.bban(), "370400440532013000");
        assert_eq!(iban.grouped(), "DE89 3704 0044 0532 0130 00");
        assert_eq!(iban.as_str(), "DE89370400440532013000");
        assert_eq!(format!("{iban:?}"), "Iban(DE89370400440532013000)");
        let al = Iban::parse("AL47212110090000000235698741")?;
        assert_eq!(al.grouped(), "AL47 2121 1009 0000 0002 3569 8741");
        Ok(())
    }

    #[test]
    fn placeholder_albanian_iban_is_rejected_for_its_length() {
        // 25 characters where AL needs 28 (and its mod 97 is 28, not 1).
        assert_eq!(
            Iban::parse("AL90202110080000001234567"),
            Err(IbanError::WrongLength {
                country: "AL".into(),
                expected: 28,
                found: 25
            })
        );
        assert_eq!(mod97(b"202110080000001234567AL90".iter().copied()), 28);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(Iban::parse("   "), Err(IbanError::Empty));
        assert_eq!(
            Iban::parse("DE89-3704"),
            Err(IbanError::InvalidCharacter {
                position: 5,
                found: '-'
            })
        );
        assert_eq!(
            Iban::parse("DE89 3704 0044 0532 0130 0Ä"),
            Err(IbanError::InvalidCharacter {
                position: 22,
                found: 'Ä'
            })
        );
        assert_eq!(Iban::parse("DE89"), Err(IbanError::TooShort { length: 4 }));
        assert_eq!(
            Iban::parse(&"DE".repeat(20)),
            Err(IbanError::TooLong { length: 40 })
        );
        assert_eq!(
            Iban::parse("1289370400440532013000"),
            Err(IbanError::CountryCodeNotLetters { found: "12".into() })
        );
        assert_eq!(
            Iban::parse("DEX9370400440532013000"),
            Err(IbanError::CheckDigitsNotDigits { found: "X9".into() })
        );
        assert_eq!(
            Iban::parse("DE99370400440532013000"),
            Err(IbanError::CheckDigitsOutOfRange { found: "99".into() })
        );
        assert_eq!(
            Iban::parse("ZZ89370400440532013000"),
            Err(IbanError::UnknownCountry {
                country: "ZZ".into()
            })
        );
        assert_eq!(
            Iban::parse("DE8937040044053201300"),
            Err(IbanError::WrongLength {
                country: "DE".into(),
                expected: 22,
                found: 21
            })
        );
        assert_eq!(
            Iban::parse("DE89370400440532O13000"),
            Err(IbanError::BbanStructure {
                country: "DE".into(),
                position: 17,
                expected: CharClass::Digit,
                found: 'O'
            })
        );
        assert_eq!(
            Iban::parse("DE88370400440532013000"),
            Err(IbanError::Checksum { remainder: 0 })
        );
        let msg = Iban::parse("AL90202110080000001234567")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            msg,
            "IBAN for country AL must have 28 characters, this one has 25"
        );
        let msg = Iban::parse("DE88370400440532013000")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("mod 97 gives 0, must be 1"), "{msg}");
    }

    #[test]
    fn length_table() {
        let lengths = [
            ("DE", 22),
            ("FR", 27),
            ("NL", 18),
            ("AL", 28),
            ("GB", 22),
            ("BE", 16),
            ("NO", 15),
            ("MT", 31),
            ("RU", 33),
            ("LC", 32),
            ("CH", 21),
            ("AT", 20),
            ("ES", 24),
            ("IT", 27),
            ("PL", 28),
            ("SE", 24),
        ];
        for (cc, len) in lengths {
            assert_eq!(expected_length(cc), Some(len), "{cc}");
        }
        assert_eq!(expected_length("US"), None);
        // Every structure parses into segments that cover it exactly, and every length is legal.
        for cc in countries() {
            let s = structure_of(cc).unwrap_or_default();
            let rebuilt: String = segments(s)
                .map(|(n, c)| {
                    let l = match c {
                        CharClass::Digit => 'n',
                        CharClass::Letter => 'a',
                        CharClass::Alphanumeric => 'c',
                    };
                    format!("{n}!{l}")
                })
                .collect();
            assert_eq!(rebuilt, s, "{cc}");
            let len = expected_length(cc).unwrap_or_default();
            assert!((15..=MAX_LEN).contains(&len), "{cc} {len}");
        }
        let mut sorted: Vec<_> = countries().collect();
        sorted.dedup();
        assert!(
            sorted.windows(2).all(|w| w[0] < w[1]),
            "registry sorted, unique"
        );
    }

    #[test]
    fn from_bban_computes_check_digits() {
        let iban = Iban::from_bban("DE", "370400440532013000").map(|i| i.to_string());
        assert_eq!(iban.as_deref(), Ok("DE89370400440532013000"));
        let iban = Iban::from_bban("al", "212110090000000235698741").map(|i| i.to_string());
        assert_eq!(iban.as_deref(), Ok("AL47212110090000000235698741"));
        assert!(matches!(
            Iban::from_bban("DE", "3704"),
            Err(IbanError::WrongLength { .. })
        ));
    }

    /// All single-character substitutions of `iban`.
    fn substitutions(iban: &str) -> impl Iterator<Item = (usize, String)> + '_ {
        (0..iban.len()).flat_map(move |pos| {
            ALPHABET
                .iter()
                .filter(move |c| **c != iban.as_bytes()[pos])
                .map(move |c| {
                    let mut b = iban.as_bytes().to_vec();
                    b[pos] = *c;
                    (pos, String::from_utf8_lossy(&b).into_owned())
                })
        })
    }

    /// Whether a change at `pos` to `to` is one no checker can catch: a class change (digit ↔
    /// letter) at a position the country leaves alphanumeric.
    fn undetectable_in_principle(iban: &str, pos: usize, to: u8) -> bool {
        let from = iban.as_bytes()[pos];
        let class_changes = from.is_ascii_digit() != to.is_ascii_digit();
        pos >= 4
            && class_changes
            && bban_classes(&iban[..2]).and_then(|c| c.get(pos - 4).copied())
                == Some(CharClass::Alphanumeric)
    }

    #[test]
    fn every_single_change_of_known_ibans_is_rejected() {
        let mut checked = 0;
        for iban in VALID {
            for (pos, changed) in substitutions(iban) {
                if undetectable_in_principle(iban, pos, changed.as_bytes()[pos]) {
                    continue;
                }
                checked += 1;
                assert!(
                    Iban::parse(&changed).is_err(),
                    "{iban} → {changed} accepted"
                );
            }
        }
        assert!(checked > 10_000, "{checked}");
    }

    #[test]
    fn every_single_change_of_all_digit_ibans_is_rejected_without_exception() {
        for iban in [
            "DE89370400440532013000",
            "BE68539007547034",
            "PL61109010140000071219812874",
        ] {
            for (_, changed) in substitutions(iban) {
                assert!(
                    Iban::parse(&changed).is_err(),
                    "{iban} → {changed} accepted"
                );
            }
        }
    }

    #[test]
    fn cross_class_change_at_c_position_can_be_another_valid_iban() {
        // Why the property above exempts `c` positions: replacing a digit by a letter where the
        // registry allows both can give another well-formed IBAN. Here in the French 11!c field.
        let base = "FR1420041010050500013M02606";
        let found: Vec<String> = substitutions(base)
            .filter(|(pos, s)| undetectable_in_principle(base, *pos, s.as_bytes()[*pos]))
            .filter(|(_, s)| Iban::parse(s).is_ok())
            .map(|(_, s)| s)
            .collect();
        assert!(!found.is_empty());
        // …while same-class changes at those positions are always caught.
        for (pos, s) in substitutions(base) {
            let same_class =
                base.as_bytes()[pos].is_ascii_digit() == s.as_bytes()[pos].is_ascii_digit();
            if same_class {
                assert!(Iban::parse(&s).is_err(), "{s}");
            }
        }
    }

    /// A valid IBAN of a random registry country with a random BBAN fitting its structure.
    fn arb_iban() -> impl Strategy<Value = String> {
        let countries: Vec<&'static str> = countries().collect();
        (
            proptest::sample::select(countries),
            proptest::collection::vec(any::<u8>(), MAX_LEN),
        )
            .prop_map(|(cc, seed)| {
                let classes = bban_classes(cc).unwrap_or_default();
                let bban: String = classes
                    .iter()
                    .zip(seed)
                    .map(|(class, r)| match class {
                        CharClass::Digit => char::from(b'0' + r % 10),
                        CharClass::Letter => char::from(b'A' + r % 26),
                        CharClass::Alphanumeric => char::from(ALPHABET[usize::from(r % 36)]),
                    })
                    .collect();
                Iban::from_bban(cc, &bban)
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            })
    }

    proptest! {
        #[test]
        fn generated_ibans_are_valid(iban in arb_iban()) {
            prop_assert!(Iban::parse(&iban).is_ok(), "{}", iban);
            prop_assert_eq!(mod97(iban[4..].bytes().chain(iban[..4].bytes())), 1);
        }

        #[test]
        fn single_changes_of_generated_ibans_are_rejected(
            iban in arb_iban(),
            pos_seed in any::<usize>(),
            char_seed in 0usize..35,
        ) {
            let pos = pos_seed % iban.len();
            let alternatives: Vec<u8> =
                ALPHABET.iter().copied().filter(|c| *c != iban.as_bytes()[pos]).collect();
            let to = alternatives[char_seed % alternatives.len()];
            let mut b = iban.clone().into_bytes();
            b[pos] = to;
            let changed = String::from_utf8_lossy(&b).into_owned();
            if !undetectable_in_principle(&iban, pos, to) {
                prop_assert!(Iban::parse(&changed).is_err(), "{} → {} accepted", iban, changed);
            }
        }

        #[test]
        fn grouped_form_parses_back(iban in arb_iban()) {
            let parsed = Iban::parse(&iban);
            prop_assert!(parsed.is_ok());
            if let Ok(p) = parsed {
                prop_assert_eq!(Iban::parse(&p.grouped().to_lowercase()), Ok(p));
            }
        }
    }
}
