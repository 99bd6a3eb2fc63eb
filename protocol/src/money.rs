//! Money as integer minor units plus an ISO 4217 currency. Decimal text is parsed exactly
//! ("29.00" → 2900 for EUR; "29.001" is refused, never rounded) and printed exactly.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 alphabetic code (three uppercase ASCII letters) with its minor-unit exponent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");

    /// Parses a currency code, accepting lower case ("eur") as Stripe sends it.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        let b = code.as_bytes();
        if b.len() != 3 || !b.iter().all(|c| c.is_ascii_alphabetic()) {
            return Err(MoneyError::BadCurrency(code.chars().take(16).collect()));
        }
        let up = [
            b[0].to_ascii_uppercase(),
            b[1].to_ascii_uppercase(),
            b[2].to_ascii_uppercase(),
        ];
        let c = Currency(up);
        if !KNOWN.contains(&c.as_str()) {
            return Err(MoneyError::BadCurrency(c.as_str().to_string()));
        }
        Ok(c)
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// Number of decimals of the minor unit (ISO 4217 exponent).
    pub fn exponent(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "ISK" | "CLP" | "VND" | "XAF" | "XOF" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
            _ => 2,
        }
    }
}

/// Codes accepted on input. A closed list so a typo ("EUU") is a 4xx, not a silently new currency.
const KNOWN: &[&str] = &[
    "EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF", "RON", "BGN", "ISK",
    "JPY", "CAD", "AUD", "NZD", "SGD", "HKD", "KRW", "CNY", "INR", "BRL", "MXN", "ZAR", "TRY",
    "ILS", "AED", "SAR", "BHD", "KWD", "OMR", "JOD", "TND", "CLP", "VND", "XAF", "XOF",
];

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    BadCurrency(String),
    BadAmount(String),
    TooPrecise { text: String, decimals: u32 },
    Negative(String),
    Overflow,
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MoneyError::BadCurrency(c) => write!(
                f,
                "unknown currency code {c:?} (expected ISO 4217, e.g. \"EUR\")"
            ),
            MoneyError::BadAmount(t) => write!(f, "amount {t:?} is not a decimal number"),
            MoneyError::TooPrecise { text, decimals } => {
                write!(
                    f,
                    "amount {text:?} has more than {decimals} decimal places for this currency"
                )
            }
            MoneyError::Negative(t) => write!(f, "amount {t:?} must not be negative"),
            MoneyError::Overflow => f.write_str("amount is too large"),
        }
    }
}

impl std::error::Error for MoneyError {}

/// Largest amount accepted anywhere (10^12 minor units), far above any plan price, far below i64.
pub const MAX_MINOR: i64 = 1_000_000_000_000;

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Money {
        Money { minor, currency }
    }

    /// Parses a non-negative decimal ("29", "29.5", "29.00") exactly into minor units.
    pub fn parse_decimal(text: &str, currency: Currency) -> Result<Money, MoneyError> {
        let t = text.trim();
        if t.starts_with('-') {
            return Err(MoneyError::Negative(t.to_string()));
        }
        let (int, frac) = match t.split_once('.') {
            Some((i, f)) => (i, f),
            None => (t, ""),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(int) || (t.contains('.') && !digits(frac)) {
            return Err(MoneyError::BadAmount(t.chars().take(40).collect()));
        }
        let exp = currency.exponent();
        let frac_trim = frac.trim_end_matches('0');
        if frac_trim.len() > exp as usize {
            return Err(MoneyError::TooPrecise {
                text: t.chars().take(40).collect(),
                decimals: exp,
            });
        }
        let int_v: i64 = int.parse().map_err(|_| MoneyError::Overflow)?;
        let mut frac_v: i64 = 0;
        for i in 0..exp as usize {
            let d = frac_trim
                .as_bytes()
                .get(i)
                .map(|c| i64::from(c - b'0'))
                .unwrap_or(0);
            frac_v = frac_v * 10 + d;
        }
        let minor = int_v
            .checked_mul(10_i64.pow(exp))
            .and_then(|v| v.checked_add(frac_v))
            .filter(|v| *v <= MAX_MINOR)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money { minor, currency })
    }

    /// Parses a JSON number amount (`29`, `29.5`) exactly, using its textual form.
    pub fn from_json_number(
        n: &serde_json::Number,
        currency: Currency,
    ) -> Result<Money, MoneyError> {
        let text = n.to_string();
        if text.contains(['e', 'E']) {
            return Err(MoneyError::BadAmount(text));
        }
        Money::parse_decimal(&text, currency)
    }

    /// The decimal text with exactly the currency's decimals ("29.00"), as PayPal and SEPA want it.
    pub fn decimal_string(&self) -> String {
        let exp = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exp == 0 {
            return format!("{sign}{abs}");
        }
        let scale = 10_u64.pow(exp);
        format!(
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }

    /// The amount as a JSON number in major units, exactly (29 for 2900 EUR minor, 28.57 for 2857).
    /// Built from the exact decimal text, so no float rounding is involved in producing it.
    pub fn json_major(&self) -> serde_json::Value {
        let text = self.decimal_string();
        let trimmed = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            text
        };
        serde_json::from_str::<serde_json::Number>(&trimmed)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::String(trimmed))
    }

    /// Applies a discount given in basis points (150 = 1.5 %), rounding half up to the minor unit.
    pub fn discounted_bps(&self, bps: u32) -> Result<Money, MoneyError> {
        let keep = 10_000_i128 - i128::from(bps);
        let num = i128::from(self.minor) * keep;
        let rounded = (num + 5_000).div_euclid(10_000);
        let minor = i64::try_from(rounded).map_err(|_| MoneyError::Overflow)?;
        Ok(Money {
            minor,
            currency: self.currency,
        })
    }

    pub fn checked_add(&self, other: Money) -> Option<Money> {
        if self.currency != other.currency {
            return None;
        }
        self.minor.checked_add(other.minor).map(|minor| Money {
            minor,
            currency: self.currency,
        })
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal_string(), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(t: &str) -> Result<Money, MoneyError> {
        Money::parse_decimal(t, Currency::EUR)
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(eur("29").map(|m| m.minor), Ok(2900));
        assert_eq!(eur("29.5").map(|m| m.minor), Ok(2950));
        assert_eq!(eur("29.00").map(|m| m.minor), Ok(2900));
        assert_eq!(eur("0.01").map(|m| m.minor), Ok(1));
        assert_eq!(eur("28.570").map(|m| m.minor), Ok(2857));
        assert!(matches!(eur("29.001"), Err(MoneyError::TooPrecise { .. })));
        assert!(matches!(eur("-1"), Err(MoneyError::Negative(_))));
        assert!(matches!(eur("1e3"), Err(MoneyError::BadAmount(_))));
        assert!(matches!(eur(".5"), Err(MoneyError::BadAmount(_))));
        assert!(matches!(eur("5."), Err(MoneyError::BadAmount(_))));
        assert!(matches!(
            eur("99999999999999999999"),
            Err(MoneyError::Overflow)
        ));
        let jpy = Currency::parse("jpy").map(|c| Money::parse_decimal("500", c));
        assert_eq!(jpy.map(|m| m.map(|m| m.minor)), Ok(Ok(500)));
    }

    #[test]
    fn sepa_discount_half_up() {
        let pro = Money::new(2900, Currency::EUR);
        assert_eq!(pro.discounted_bps(150).map(|m| m.minor), Ok(2857)); // 2856.5 → 2857
        assert_eq!(
            Money::new(29000, Currency::EUR)
                .discounted_bps(150)
                .map(|m| m.minor),
            Ok(28565)
        );
        assert_eq!(
            pro.discounted_bps(150).map(|m| m.to_string()).as_deref(),
            Ok("28.57 EUR")
        );
    }

    #[test]
    fn prints() {
        assert_eq!(Money::new(2900, Currency::EUR).decimal_string(), "29.00");
        assert_eq!(
            Money::new(2900, Currency::EUR).json_major(),
            serde_json::json!(29)
        );
        assert_eq!(
            Money::new(2857, Currency::EUR).json_major(),
            serde_json::json!(28.57)
        );
        assert!(Currency::parse("EUU").is_err());
        assert!(Currency::parse("EU").is_err());
    }

    proptest::proptest! {
        #[test]
        fn decimal_roundtrip(minor in 0i64..MAX_MINOR) {
            let m = Money::new(minor, Currency::EUR);
            proptest::prop_assert_eq!(eur(&m.decimal_string()), Ok(m));
        }
    }
}
