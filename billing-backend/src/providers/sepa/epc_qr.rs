//! EPC069-12 QR codes ("GiroCode", "SEPA QR"), version 002, for SEPA credit transfers.
//!
//! The payload is up to twelve LF-separated lines:
//!
//! | # | field | here |
//! |---|-------|------|
//! | 1 | service tag | `BCD` |
//! | 2 | version | `002` (the BIC may be empty) |
//! | 3 | character set | `1` (UTF-8) |
//! | 4 | identification | `SCT` |
//! | 5 | BIC of the beneficiary's bank | optional |
//! | 6 | beneficiary name | 1–70 characters |
//! | 7 | beneficiary IBAN | |
//! | 8 | amount | `EUR` + 0.01–999999999.99 with exactly two decimals |
//! | 9 | purpose code | optional, 4 letters |
//! | 10 | structured reference (RF) | either this… |
//! | 11 | unstructured remittance | …or this, ≤ 140 characters |
//! | 12 | note to the payer | optional, ≤ 70 characters |
//!
//! Trailing empty lines are left out; the whole payload is at most 331 bytes, encoded with error
//! correction level M in a QR code of version 13 at most (which is what 331 bytes fill).

use qrcode::{EcLevel, QrCode, Version};
use std::fmt;

use super::bic::Bic;
use super::iban::Iban;
use super::money::{Currency, Money};
use super::rf::CreditorReference;

/// Largest payload in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 331;
/// Largest QR version a conforming reader must handle.
pub const MAX_QR_VERSION: i16 = 13;
/// Smallest and largest amounts, in euro cents.
pub const MIN_AMOUNT_MINOR: i64 = 1;
pub const MAX_AMOUNT_MINOR: i64 = 99_999_999_999;
/// Light modules around the code, as ISO/IEC 18004 asks.
pub const QUIET_ZONE: usize = 4;

const MAX_NAME_CHARS: usize = 70;
const MAX_TEXT_CHARS: usize = 140;
const MAX_NOTE_CHARS: usize = 70;

/// What the payer's bank passes on to us so the transfer can be matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remittance {
    /// An ISO 11649 reference (line 10). What tollgate uses: it survives retyping.
    Structured(CreditorReference),
    /// Free text (line 11), at most 140 characters.
    Unstructured(String),
    /// Neither.
    None,
}

/// A SEPA credit transfer to put into a QR code. Build it, then call [`EpcTransfer::payload`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpcTransfer {
    pub bic: Option<Bic>,
    pub beneficiary_name: String,
    pub iban: Iban,
    pub amount: Money,
    /// ISO 20022 external purpose code, e.g. `GDDS`; usually absent.
    pub purpose: Option<String>,
    pub remittance: Remittance,
    /// Shown to the payer by the banking app, not transmitted.
    pub note: Option<String>,
}

/// Which field of the payload an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    BeneficiaryName,
    Amount,
    Purpose,
    Unstructured,
    Note,
    Payload,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::BeneficiaryName => "beneficiary name",
            Field::Amount => "amount",
            Field::Purpose => "purpose code",
            Field::Unstructured => "remittance text",
            Field::Note => "note to the payer",
            Field::Payload => "payload",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpcError {
    /// A required text is empty (or only white space).
    Empty { field: Field },
    /// A text is longer than the field allows (counted in characters).
    TooLong {
        field: Field,
        max: usize,
        found: usize,
    },
    /// A text contains a control character such as a line break, which would shift the lines.
    ControlCharacter { field: Field, position: usize },
    /// The amount is not in euro: EPC QR codes carry EUR only.
    NotEuro { currency: Currency },
    /// The amount is outside 0.01–999999999.99.
    AmountOutOfRange { minor: i64 },
    /// A purpose code is four upper-case letters.
    BadPurpose { found: String },
    /// The finished payload is longer than 331 bytes.
    PayloadTooLong { bytes: usize },
    /// The QR encoder refused the payload, or it needed a version above 13.
    QrEncoding { detail: String },
    /// A rendering parameter is out of range.
    BadScale { scale: u32 },
    /// The PNG encoder failed.
    Png { detail: String },
}

impl fmt::Display for EpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EpcError::Empty { field } => write!(f, "QR code {field} must not be empty"),
            EpcError::TooLong { field, max, found } => write!(
                f,
                "QR code {field} has {found} characters, at most {max} are allowed"
            ),
            EpcError::ControlCharacter { field, position } => write!(
                f,
                "QR code {field} has a control character (e.g. a line break) at position {position}"
            ),
            EpcError::NotEuro { currency } => {
                write!(f, "EPC QR codes carry euro amounts only, not {currency}")
            }
            EpcError::AmountOutOfRange { minor } => write!(
                f,
                "QR code amount {minor} cents is outside 0.01 to 999999999.99 EUR"
            ),
            EpcError::BadPurpose { found } => {
                write!(
                    f,
                    "QR code purpose code must be four letters A-Z, not {found:?}"
                )
            }
            EpcError::PayloadTooLong { bytes } => write!(
                f,
                "QR code payload has {bytes} bytes, at most {MAX_PAYLOAD_BYTES} are allowed"
            ),
            EpcError::QrEncoding { detail } => write!(f, "QR code cannot be encoded: {detail}"),
            EpcError::BadScale { scale } => {
                write!(
                    f,
                    "QR code scale {scale} is outside 1 to {MAX_SCALE} pixels per module"
                )
            }
            EpcError::Png { detail } => write!(f, "QR code PNG cannot be written: {detail}"),
        }
    }
}

impl std::error::Error for EpcError {}

/// Checks a text field: length in characters and no control characters.
fn check_text(field: Field, text: &str, max: usize, required: bool) -> Result<(), EpcError> {
    if required && text.trim().is_empty() {
        return Err(EpcError::Empty { field });
    }
    if let Some(i) = text.chars().position(char::is_control) {
        return Err(EpcError::ControlCharacter {
            field,
            position: i + 1,
        });
    }
    let found = text.chars().count();
    if found > max {
        return Err(EpcError::TooLong { field, max, found });
    }
    Ok(())
}

/// A validated EPC069-12 payload. Holds the text that goes into the QR code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpcPayload(String);

impl EpcTransfer {
    /// Validates every field and builds the payload text.
    pub fn payload(&self) -> Result<EpcPayload, EpcError> {
        check_text(
            Field::BeneficiaryName,
            self.beneficiary_name.trim(),
            MAX_NAME_CHARS,
            true,
        )?;
        if self.amount.currency != Currency::EUR {
            return Err(EpcError::NotEuro {
                currency: self.amount.currency,
            });
        }
        if !(MIN_AMOUNT_MINOR..=MAX_AMOUNT_MINOR).contains(&self.amount.minor) {
            return Err(EpcError::AmountOutOfRange {
                minor: self.amount.minor,
            });
        }
        if let Some(p) = &self.purpose {
            if p.len() != 4 || !p.bytes().all(|c| c.is_ascii_uppercase()) {
                return Err(EpcError::BadPurpose {
                    found: p.chars().take(10).collect(),
                });
            }
        }
        let (structured, unstructured) = match &self.remittance {
            Remittance::Structured(r) => (r.as_str(), ""),
            Remittance::Unstructured(t) => {
                check_text(Field::Unstructured, t, MAX_TEXT_CHARS, false)?;
                ("", t.as_str())
            }
            Remittance::None => ("", ""),
        };
        let note = self.note.as_deref().unwrap_or("");
        check_text(Field::Note, note, MAX_NOTE_CHARS, false)?;

        let amount = format!("EUR{}", self.amount.decimal_string());
        let lines = [
            "BCD",
            "002",
            "1",
            "SCT",
            self.bic.as_ref().map(Bic::as_str).unwrap_or(""),
            self.beneficiary_name.trim(),
            self.iban.as_str(),
            &amount,
            self.purpose.as_deref().unwrap_or(""),
            structured,
            unstructured,
            note,
        ];
        let used = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        let text = lines[..used].join("\n");
        if text.len() > MAX_PAYLOAD_BYTES {
            return Err(EpcError::PayloadTooLong { bytes: text.len() });
        }
        Ok(EpcPayload(text))
    }
}

/// Largest pixels-per-module factor for SVG and PNG output (a version-13 code is then 2464 px wide).
pub const MAX_SCALE: u32 = 32;

/// The modules of a QR code: `true` is dark. Row-major, `width × width`, without quiet zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QrMatrix {
    pub width: usize,
    pub version: i16,
    pub dark: Vec<bool>,
}

impl QrMatrix {
    pub fn is_dark(&self, x: usize, y: usize) -> bool {
        x < self.width && y < self.width && self.dark[y * self.width + x]
    }
}

impl EpcPayload {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Encodes the payload as a QR code with error correction level M, version ≤ 13.
    pub fn matrix(&self) -> Result<QrMatrix, EpcError> {
        let code =
            QrCode::with_error_correction_level(self.0.as_bytes(), EcLevel::M).map_err(|e| {
                EpcError::QrEncoding {
                    detail: e.to_string(),
                }
            })?;
        let version = match code.version() {
            Version::Normal(v) if v <= MAX_QR_VERSION => v,
            other => {
                return Err(EpcError::QrEncoding {
                    detail: format!("needs QR version {other:?}, at most {MAX_QR_VERSION} allowed"),
                })
            }
        };
        let width = code.width();
        let dark = code
            .to_colors()
            .into_iter()
            .map(|c| c == qrcode::Color::Dark)
            .collect();
        Ok(QrMatrix {
            width,
            version,
            dark,
        })
    }

    /// A standalone SVG document with a 4-module quiet zone: `scale` pixels per module (1–32)
    /// for the displayed size, so module edges fall on whole pixels; dark runs are merged into
    /// one path and `shape-rendering="crispEdges"` keeps edges sharp when it is scaled anyway.
    /// No external resources, no script.
    pub fn to_svg(&self, scale: u32) -> Result<String, EpcError> {
        if !(1..=MAX_SCALE).contains(&scale) {
            return Err(EpcError::BadScale { scale });
        }
        let m = self.matrix()?;
        Ok(render_svg(&m, scale))
    }

    /// A greyscale PNG (1 bit per pixel): `scale` pixels per module (1–32) and a 4-module quiet
    /// zone on every side.
    pub fn to_png(&self, scale: u32) -> Result<Vec<u8>, EpcError> {
        if !(1..=MAX_SCALE).contains(&scale) {
            return Err(EpcError::BadScale { scale });
        }
        let m = self.matrix()?;
        render_png(&m, scale)
    }
}

impl fmt::Display for EpcPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn render_svg(m: &QrMatrix, scale: u32) -> String {
    let full = m.width + 2 * QUIET_ZONE;
    let size_px = full.saturating_mul(usize::try_from(scale).unwrap_or(usize::MAX));
    let mut path = String::new();
    for y in 0..m.width {
        let mut x = 0;
        while x < m.width {
            if !m.is_dark(x, y) {
                x += 1;
                continue;
            }
            let start = x;
            while x < m.width && m.is_dark(x, y) {
                x += 1;
            }
            let len = x - start;
            path.push_str(&format!(
                "M{} {}h{len}v1h-{len}z",
                start + QUIET_ZONE,
                y + QUIET_ZONE
            ));
        }
    }
    format!(
        concat!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{size}" height="{size}" "#,
            r#"viewBox="0 0 {full} {full}" shape-rendering="crispEdges" role="img" aria-label="EPC QR code">"#,
            r##"<rect width="{full}" height="{full}" fill="#ffffff"/>"##,
            r##"<path fill="#000000" d="{path}"/></svg>"##
        ),
        size = size_px,
        full = full,
        path = path
    )
}

fn render_png(m: &QrMatrix, scale: u32) -> Result<Vec<u8>, EpcError> {
    let png_err = |e: png::EncodingError| EpcError::Png {
        detail: e.to_string(),
    };
    let scale_px = usize::try_from(scale).map_err(|_| EpcError::BadScale { scale })?;
    let side_modules = m.width + 2 * QUIET_ZONE;
    let side_px = side_modules * scale_px;
    let side = u32::try_from(side_px).map_err(|_| EpcError::BadScale { scale })?;
    // One bit per pixel, 1 = white; rows padded to whole bytes.
    let row_bytes = side_px.div_ceil(8);
    let mut data = vec![0u8; row_bytes * side_px];
    for py in 0..side_px {
        let my = (py / scale_px).checked_sub(QUIET_ZONE);
        for px in 0..side_px {
            let mx = (px / scale_px).checked_sub(QUIET_ZONE);
            let dark = matches!((mx, my), (Some(x), Some(y)) if m.is_dark(x, y));
            if !dark {
                data[py * row_bytes + px / 8] |= 0x80 >> (px % 8);
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    let mut writer = encoder.write_header().map_err(png_err)?;
    writer.write_image_data(&data).map_err(png_err)?;
    writer.finish().map_err(png_err)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iban() -> Iban {
        Iban::parse("DE89370400440532013000").unwrap_or_else(|e| panic!("{e}"))
    }

    fn reference() -> CreditorReference {
        CreditorReference::from_payload("INV2026000123").unwrap_or_else(|e| panic!("{e}"))
    }

    fn transfer() -> EpcTransfer {
        EpcTransfer {
            bic: None,
            beneficiary_name: "Example SaaS GmbH".into(),
            iban: iban(),
            amount: Money::new(4900, Currency::EUR),
            purpose: None,
            remittance: Remittance::Structured(reference()),
            note: None,
        }
    }

    fn payload(t: &EpcTransfer) -> String {
        t.payload()
            .map(|p| p.to_string())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn matches_the_documented_example() {
        assert_eq!(
            payload(&transfer()),
            "BCD\n002\n1\nSCT\n\nExample SaaS GmbH\nDE89370400440532013000\nEUR49.00\n\nRF98INV2026000123"
        );
    }

    #[test]
    fn fields_line_by_line() {
        let mut t = transfer();
        t.bic = Bic::parse("COBADEFFXXX").ok();
        t.amount = Money::new(2857, Currency::EUR);
        t.purpose = Some("GDDS".into());
        t.note = Some("Tollgate Pro, monthly".into());
        let text = payload(&t);
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 12);
        assert_eq!(lines[0], "BCD", "service tag");
        assert_eq!(lines[1], "002", "version");
        assert_eq!(lines[2], "1", "character set UTF-8");
        assert_eq!(lines[3], "SCT", "identification");
        assert_eq!(lines[4], "COBADEFFXXX", "BIC");
        assert_eq!(lines[5], "Example SaaS GmbH", "name");
        assert_eq!(lines[6], "DE89370400440532013000", "IBAN, compact");
        assert_eq!(lines[7], "EUR28.57", "amount with two decimals");
        assert_eq!(lines[8], "GDDS", "purpose");
        assert_eq!(lines[9], "RF98INV2026000123", "structured reference");
        assert_eq!(lines[10], "", "no unstructured text beside a reference");
        assert_eq!(lines[11], "Tollgate Pro, monthly", "note");
        assert!(!text.contains('\r') && !text.ends_with('\n'));
    }

    #[test]
    fn unstructured_text_goes_to_line_11() {
        let mut t = transfer();
        t.remittance = Remittance::Unstructured("Invoice 2026-123".into());
        let text = payload(&t);
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(lines.len(), 11);
        assert_eq!((lines[9], lines[10]), ("", "Invoice 2026-123"));
        t.remittance = Remittance::None;
        assert!(payload(&t).ends_with("\nEUR49.00"));
    }

    #[test]
    fn amounts_always_have_two_decimals() {
        let mut t = transfer();
        for (minor, line) in [
            (1, "EUR0.01"),
            (2850, "EUR28.50"),
            (99_999_999_999, "EUR999999999.99"),
        ] {
            t.amount = Money::new(minor, Currency::EUR);
            assert_eq!(payload(&t).split('\n').nth(7), Some(line));
        }
    }

    #[test]
    fn each_violation_has_its_error() {
        let check = |f: &dyn Fn(&mut EpcTransfer), want: EpcError| {
            let mut t = transfer();
            f(&mut t);
            assert_eq!(t.payload(), Err(want));
        };
        check(
            &|t| t.beneficiary_name = "  ".into(),
            EpcError::Empty {
                field: Field::BeneficiaryName,
            },
        );
        check(
            &|t| t.beneficiary_name = "x".repeat(71),
            EpcError::TooLong {
                field: Field::BeneficiaryName,
                max: 70,
                found: 71,
            },
        );
        check(
            &|t| t.beneficiary_name = "Evil\nEUR1.00".into(),
            EpcError::ControlCharacter {
                field: Field::BeneficiaryName,
                position: 5,
            },
        );
        check(
            &|t| t.amount = Money::new(100, Currency::parse("USD").unwrap_or(Currency::EUR)),
            EpcError::NotEuro {
                currency: Currency::parse("USD").unwrap_or(Currency::EUR),
            },
        );
        check(
            &|t| t.amount = Money::new(0, Currency::EUR),
            EpcError::AmountOutOfRange { minor: 0 },
        );
        check(
            &|t| t.amount = Money::new(100_000_000_000, Currency::EUR),
            EpcError::AmountOutOfRange {
                minor: 100_000_000_000,
            },
        );
        check(
            &|t| t.amount = Money::new(-5, Currency::EUR),
            EpcError::AmountOutOfRange { minor: -5 },
        );
        check(
            &|t| t.purpose = Some("gdds".into()),
            EpcError::BadPurpose {
                found: "gdds".into(),
            },
        );
        check(
            &|t| t.purpose = Some("GDDSX".into()),
            EpcError::BadPurpose {
                found: "GDDSX".into(),
            },
        );
        check(
            &|t| t.remittance = Remittance::Unstructured("y".repeat(141)),
            EpcError::TooLong {
                field: Field::Unstructured,
                max: 140,
                found: 141,
            },
        );
        check(
            &|t| t.remittance = Remittance::Unstructured("a\rb".into()),
            EpcError::ControlCharacter {
                field: Field::Unstructured,
                position: 2,
            },
        );
        check(
            &|t| t.note = Some("n".repeat(71)),
            EpcError::TooLong {
                field: Field::Note,
                max: 70,
                found: 71,
            },
        );
        // Characters, not bytes, are counted: 70 umlauts are 140 bytes and allowed.
        let mut t = transfer();
        t.beneficiary_name = "ä".repeat(70);
        assert!(t.payload().is_ok());
    }

    #[test]
    fn total_length_is_capped_at_331_bytes() {
        let mut t = transfer();
        t.bic = Bic::parse("COBADEFFXXX").ok();
        t.beneficiary_name = "Ä".repeat(70); // 140 bytes
        t.remittance = Remittance::Unstructured("Ü".repeat(60)); // 120 bytes
        t.note = Some("n".repeat(30));
        let Err(EpcError::PayloadTooLong { bytes }) = t.payload() else {
            panic!("expected PayloadTooLong, got {:?}", t.payload())
        };
        assert!(bytes > 331);
        t.note = None;
        let p = t.payload().unwrap_or_else(|e| panic!("{e}"));
        assert!(p.as_str().len() <= 331);
        // The longest allowed payload still fits in version 13, level M.
        let m = p.matrix().unwrap_or_else(|e| panic!("{e}"));
        assert!(m.version <= 13, "version {}", m.version);
    }

    #[test]
    fn largest_payload_fits_version_13() {
        // Exactly 331 bytes with multi-byte text, the worst case for the encoder.
        let mut t = transfer();
        t.bic = Bic::parse("COBADEFFXXX").ok();
        t.beneficiary_name = "Ä".repeat(40); // 80 bytes
        t.remittance = Remittance::Unstructured("ß".repeat(70)); // 140 bytes
        let base = payload(&t).len();
        t.note = Some("x".repeat(331 - base - 1));
        let p = t.payload().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.as_str().len(), 331);
        let m = p.matrix().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.version, 13);
        assert_eq!(m.width, 17 + 4 * 13);
        // One more byte is refused before any encoding is tried.
        t.note = Some("x".repeat(331 - base));
        assert_eq!(t.payload(), Err(EpcError::PayloadTooLong { bytes: 332 }));
    }

    fn decode_png(bytes: &[u8]) -> Vec<String> {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().unwrap_or_else(|e| panic!("{e}"));
        let size = reader
            .output_buffer_size()
            .unwrap_or_else(|| panic!("no size"));
        let mut buf = vec![0u8; size];
        let info = reader
            .next_frame(&mut buf)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, png::BitDepth::Eight, "expanded");
        let w = usize::try_from(info.width).unwrap_or_default();
        let h = usize::try_from(info.height).unwrap_or_default();
        let mut img =
            rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * info.line_size + x]);
        img.detect_grids()
            .into_iter()
            .map(|g| {
                g.decode()
                    .map(|(_, s)| s)
                    .unwrap_or_else(|e| panic!("{e:?}"))
            })
            .collect()
    }

    #[test]
    fn png_decodes_back_to_the_payload() {
        let mut t = transfer();
        t.beneficiary_name = "Müller & Söhne Software GmbH".into();
        t.amount = Money::new(2857, Currency::EUR);
        t.note = Some("Tollgate Pro – monatlich".into());
        let p = t.payload().unwrap_or_else(|e| panic!("{e}"));
        let png = p.to_png(4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(decode_png(&png), vec![p.as_str().to_string()]);
    }

    #[test]
    fn png_of_the_largest_payload_decodes_back() {
        let mut t = transfer();
        t.bic = Bic::parse("COBADEFFXXX").ok();
        t.remittance =
            Remittance::Unstructured("Rechnung 2026-000123 für Zeitraum April, Kunde 4711".into());
        t.note = Some("Bitte innerhalb von 14 Tagen überweisen. Danke!".into());
        t.beneficiary_name = "Tollgate Example Software GmbH & Co. KG, Abteilung Abrechnung".into();
        let p = t.payload().unwrap_or_else(|e| panic!("{e}"));
        let png = p.to_png(3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(decode_png(&png), vec![p.as_str().to_string()]);
    }

    #[test]
    fn png_geometry_and_quiet_zone() {
        let p = transfer().payload().unwrap_or_else(|e| panic!("{e}"));
        let m = p.matrix().unwrap_or_else(|e| panic!("{e}"));
        let png = p.to_png(2).unwrap_or_else(|e| panic!("{e}"));
        let mut reader = png::Decoder::new(std::io::Cursor::new(&png[..]))
            .read_info()
            .unwrap_or_else(|e| panic!("{e}"));
        let info = reader.info();
        let side = u32::try_from((m.width + 8) * 2).unwrap_or_default();
        assert_eq!((info.width, info.height), (side, side));
        assert_eq!(info.bit_depth, png::BitDepth::One);
        let mut buf = vec![0u8; reader.output_buffer_size().unwrap_or_default()];
        let info = reader
            .next_frame(&mut buf)
            .unwrap_or_else(|e| panic!("{e}"));
        // The first 8 rows (4 modules × 2 px) are all white.
        assert!(buf[..8 * info.line_size]
            .iter()
            .all(|b| *b == 0xff || !info.width.is_multiple_of(8)));
        assert!(matches!(p.to_png(0), Err(EpcError::BadScale { scale: 0 })));
        assert!(matches!(
            p.to_png(33),
            Err(EpcError::BadScale { scale: 33 })
        ));
    }

    /// Draws the SVG's path back into pixels (one per module) and decodes it with rqrr.
    fn decode_svg(svg: &str) -> Vec<String> {
        let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}"));
        let root = doc.root_element();
        let view: Vec<usize> = root
            .attribute("viewBox")
            .unwrap_or_default()
            .split(' ')
            .filter_map(|n| n.parse().ok())
            .collect();
        let side = view[2];
        let d = root
            .descendants()
            .find(|n| n.has_tag_name("path"))
            .and_then(|n| n.attribute("d"))
            .unwrap_or_default();
        let mut dark = vec![false; side * side];
        for run in d.split('z').filter(|r| !r.is_empty()) {
            // M{x} {y}h{len}v1h-{len}
            let rest = &run[1..];
            let (xy, tail) = rest.split_once('h').unwrap_or_default();
            let (x, y) = xy.split_once(' ').unwrap_or_default();
            let len: usize = tail
                .split('v')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(0);
            let (x, y): (usize, usize) = (x.parse().unwrap_or(0), y.parse().unwrap_or(0));
            for i in 0..len {
                dark[y * side + x + i] = true;
            }
        }
        let scale = 3;
        let mut img =
            rqrr::PreparedImage::prepare_from_greyscale(side * scale, side * scale, |x, y| {
                if dark[(y / scale) * side + x / scale] {
                    0
                } else {
                    255
                }
            });
        img.detect_grids()
            .into_iter()
            .map(|g| {
                g.decode()
                    .map(|(_, s)| s)
                    .unwrap_or_else(|e| panic!("{e:?}"))
            })
            .collect()
    }

    #[test]
    fn svg_is_self_contained_and_decodes_back() {
        let p = transfer().payload().unwrap_or_else(|e| panic!("{e}"));
        let svg = p.to_svg(5).unwrap_or_else(|e| panic!("{e}"));
        let m = p.matrix().unwrap_or_else(|e| panic!("{e}"));
        let full = m.width + 8;
        let px = full * 5;
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("shape-rendering=\"crispEdges\""));
        assert!(svg.contains(&format!("viewBox=\"0 0 {full} {full}\"")));
        assert!(svg.contains(&format!("width=\"{px}\" height=\"{px}\"")));
        assert!(matches!(p.to_svg(0), Err(EpcError::BadScale { scale: 0 })));
        assert_eq!(svg.matches("http").count(), 1, "only the namespace URI");
        assert!(!svg.contains("href") && !svg.contains("<image") && !svg.contains("<script"));
        // Nothing dark inside the quiet zone: every run starts at ≥ 4 and ends ≤ width + 4.
        assert!(!svg.contains("M0 ") && !svg.contains("M1 ") && !svg.contains("M3 "));
        assert_eq!(decode_svg(&svg), vec![p.as_str().to_string()]);
    }

    #[test]
    fn matrix_has_level_m_and_smallest_version() {
        let p = transfer().payload().unwrap_or_else(|e| panic!("{e}"));
        let m = p.matrix().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.width, 17 + 4 * usize::try_from(m.version).unwrap_or(0));
        assert!((1..=13).contains(&m.version));
        // Finder pattern corners are dark, the separator next to them light.
        assert!(m.is_dark(0, 0) && m.is_dark(6, 6) && !m.is_dark(7, 7));
        assert!(!m.is_dark(m.width, 0), "outside is light");
        let code = QrCode::with_error_correction_level(p.as_str(), EcLevel::M)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(code.error_correction_level(), EcLevel::M);
    }
}
