//! PayPal REST wire structs (Orders v2, Payments v2 captures and refunds, OAuth2, errors,
//! webhook events) and the exhaustive mapping of PayPal statuses onto ours.
//!
//! Money crosses the wire as `{currency_code, value}` with `value` a decimal string that has
//! exactly the currency's decimals ("29.00" EUR, "500" JPY). Conversion to and from
//! [`Money`] happens only here, exactly, never through floats.

use serde::{Deserialize, Serialize};
use tollgate_protocol::money::{Currency, Money, MoneyError};

/// `{currency_code, value}` as PayPal sends and receives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = PayPalAmount)]
pub struct Amount {
    pub currency_code: String,
    pub value: String,
}

impl Amount {
    /// Our money as PayPal wants it: the value with exactly the currency's decimals.
    pub fn from_money(m: Money) -> Amount {
        Amount {
            currency_code: m.currency.as_str().to_string(),
            value: m.decimal_string(),
        }
    }

    /// PayPal's amount as money, parsed exactly ("29.00" EUR → 2900). PayPal always sends
    /// upper-case codes; anything else is not an amount we asked for.
    pub fn to_money(&self) -> Result<Money, MoneyError> {
        if self.currency_code.bytes().any(|b| b.is_ascii_lowercase()) {
            return Err(MoneyError::BadCurrency(self.currency_code.clone()));
        }
        let currency = Currency::parse(&self.currency_code)?;
        Money::parse_decimal(&self.value, currency)
    }
}

/// `POST /v2/checkout/orders` body.
#[derive(Debug, Serialize)]
pub struct CreateOrder {
    pub intent: &'static str,
    pub purchase_units: Vec<PurchaseUnitRequest>,
    pub payment_source: PaymentSource,
}

#[derive(Debug, Serialize)]
pub struct PurchaseUnitRequest {
    pub reference_id: String,
    /// Our payment id: ties captures, webhooks and refunds back to our record.
    pub custom_id: String,
    /// Our payment id again: unique per payment, shown to the buyer and in PayPal reports.
    pub invoice_id: String,
    pub description: String,
    pub amount: Amount,
}

#[derive(Debug, Serialize)]
pub struct PaymentSource {
    pub paypal: PayPalSource,
}

#[derive(Debug, Serialize)]
pub struct PayPalSource {
    pub experience_context: ExperienceContext,
}

#[derive(Debug, Serialize)]
pub struct ExperienceContext {
    pub return_url: String,
    pub cancel_url: String,
    /// `PAY_NOW`: the buyer pays on PayPal's page; we capture when they return.
    pub user_action: &'static str,
    /// Nothing is shipped: an API plan.
    pub shipping_preference: &'static str,
}

/// An order as `create`, `get` and `capture` return it (the fields we use).
#[derive(Clone, Debug, Deserialize)]
pub struct Order {
    pub id: String,
    pub status: OrderStatus,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default)]
    pub purchase_units: Vec<PurchaseUnit>,
}

impl Order {
    /// The captures of the order's purchase units, in order.
    pub fn captures(&self) -> impl Iterator<Item = &Capture> {
        self.purchase_units
            .iter()
            .filter_map(|u| u.payments.as_ref())
            .flat_map(|p| p.captures.iter())
    }

    /// Where to send the buyer: `approve`, or `payer-action` when a payment source was given.
    pub fn approve_link(&self) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.rel == "approve")
            .or_else(|| self.links.iter().find(|l| l.rel == "payer-action"))
            .map(|l| l.href.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Link {
    pub href: String,
    pub rel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PurchaseUnit {
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub invoice_id: Option<String>,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub payments: Option<Payments>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Payments {
    #[serde(default)]
    pub captures: Vec<Capture>,
}

/// A capture (Payments v2), inside an order or as a webhook resource.
#[derive(Clone, Debug, Deserialize)]
pub struct Capture {
    pub id: String,
    pub status: CaptureStatus,
    pub amount: Amount,
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub invoice_id: Option<String>,
    #[serde(default)]
    pub seller_receivable_breakdown: Option<Breakdown>,
    #[serde(default)]
    pub supplementary_data: Option<Supplementary>,
    #[serde(default)]
    pub links: Vec<Link>,
}

impl Capture {
    /// The order this capture belongs to, when PayPal says so.
    pub fn order_id(&self) -> Option<&str> {
        self.supplementary_data
            .as_ref()
            .and_then(|s| s.related_ids.as_ref())
            .and_then(|r| r.order_id.as_deref())
    }

    /// PayPal's fee in minor units, when reported in the payment's currency.
    pub fn fee(&self, currency: Currency) -> Option<i64> {
        let fee = self
            .seller_receivable_breakdown
            .as_ref()?
            .paypal_fee
            .as_ref()?;
        let m = fee.to_money().ok()?;
        (m.currency == currency).then_some(m.minor)
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Breakdown {
    #[serde(default)]
    pub paypal_fee: Option<Amount>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Supplementary {
    #[serde(default)]
    pub related_ids: Option<RelatedIds>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RelatedIds {
    #[serde(default)]
    pub order_id: Option<String>,
}

/// A refund (Payments v2), the resource of `PAYMENT.CAPTURE.REFUNDED`.
#[derive(Clone, Debug, Deserialize)]
pub struct Refund {
    pub id: String,
    pub status: RefundStatus,
    #[serde(default)]
    pub amount: Option<Amount>,
    #[serde(default)]
    pub custom_id: Option<String>,
    #[serde(default)]
    pub invoice_id: Option<String>,
    #[serde(default)]
    pub links: Vec<Link>,
}

impl Refund {
    /// The refunded capture's id, from the `up` link (`.../v2/payments/captures/{id}`).
    pub fn capture_id(&self) -> Option<&str> {
        let up = self.links.iter().find(|l| l.rel == "up")?;
        let (_, rest) = up.href.split_once("/v2/payments/captures/")?;
        let id = rest.split(['/', '?']).next()?;
        valid_resource_id(id).then_some(id)
    }
}

/// A webhook event envelope; `resource` is parsed per `event_type`.
#[derive(Clone, Debug, Deserialize)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    #[serde(default)]
    pub resource: serde_json::Value,
}

/// `POST /v1/oauth2/token` answer.
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
}

/// PayPal's error body: `{name, message, debug_id, details:[{issue, description}]}`, or the
/// OAuth form `{error, error_description}`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub debug_id: Option<String>,
    #[serde(default)]
    pub details: Vec<ErrorDetail>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ErrorDetail {
    pub issue: String,
}

impl ErrorBody {
    pub fn has_issue(&self, issue: &str) -> bool {
        self.details.iter().any(|d| d.issue == issue)
    }

    /// The first issue code, else the error name (stable PayPal codes, never secrets).
    pub fn code(&self) -> String {
        self.details
            .first()
            .map(|d| d.issue.clone())
            .or_else(|| self.name.clone())
            .or_else(|| self.error.clone())
            .unwrap_or_else(|| "UNKNOWN".to_string())
    }
}

/// Order statuses (Orders v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OrderStatus {
    Created,
    Saved,
    Approved,
    Voided,
    Completed,
    PayerActionRequired,
    /// A status PayPal added after this code was written: nothing is granted on it.
    #[serde(other)]
    Unrecognized,
}

impl OrderStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            OrderStatus::Created => "CREATED",
            OrderStatus::Saved => "SAVED",
            OrderStatus::Approved => "APPROVED",
            OrderStatus::Voided => "VOIDED",
            OrderStatus::Completed => "COMPLETED",
            OrderStatus::PayerActionRequired => "PAYER_ACTION_REQUIRED",
            OrderStatus::Unrecognized => "UNRECOGNIZED",
        }
    }
}

/// Capture statuses (Payments v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureStatus {
    Completed,
    Declined,
    PartiallyRefunded,
    Pending,
    Refunded,
    Failed,
    #[serde(other)]
    Unrecognized,
}

impl CaptureStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            CaptureStatus::Completed => "COMPLETED",
            CaptureStatus::Declined => "DECLINED",
            CaptureStatus::PartiallyRefunded => "PARTIALLY_REFUNDED",
            CaptureStatus::Pending => "PENDING",
            CaptureStatus::Refunded => "REFUNDED",
            CaptureStatus::Failed => "FAILED",
            CaptureStatus::Unrecognized => "UNRECOGNIZED",
        }
    }
}

/// Refund statuses (Payments v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RefundStatus {
    Cancelled,
    Failed,
    Pending,
    Completed,
    #[serde(other)]
    Unrecognized,
}

/// What a capture status means for our payment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureOutcome {
    /// The money arrived: the payment succeeds (and buys its period).
    Paid,
    /// Not decided yet (e.g. eCheck, review): the payment stays pending until the webhook.
    Waiting,
    /// No money: the payment fails.
    Failed,
    /// The money went back in full.
    Refunded,
}

/// The mapping, written out for every status (no catch-all).
pub fn capture_outcome(status: CaptureStatus) -> CaptureOutcome {
    match status {
        CaptureStatus::Completed => CaptureOutcome::Paid,
        // Part of the money went back; the capture itself was paid. A partial refund keeps the
        // period (the operator decides), a full one arrives as REFUNDED.
        CaptureStatus::PartiallyRefunded => CaptureOutcome::Paid,
        CaptureStatus::Pending => CaptureOutcome::Waiting,
        CaptureStatus::Declined => CaptureOutcome::Failed,
        CaptureStatus::Failed => CaptureOutcome::Failed,
        CaptureStatus::Refunded => CaptureOutcome::Refunded,
        // Unknown: grant nothing, change nothing; a webhook or a later capture call decides.
        CaptureStatus::Unrecognized => CaptureOutcome::Waiting,
    }
}

/// Whether a refund status means the money went back.
pub fn refund_done(status: RefundStatus) -> bool {
    match status {
        RefundStatus::Completed => true,
        RefundStatus::Pending => false,
        RefundStatus::Failed => false,
        RefundStatus::Cancelled => false,
        RefundStatus::Unrecognized => false,
    }
}

/// PayPal resource ids (orders, captures): `^[A-Z0-9]{1,36}$`.
pub fn valid_resource_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 36
        && id
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_have_the_currency_decimals() {
        let eur = |minor| Amount::from_money(Money::new(minor, Currency::EUR)).value;
        assert_eq!(eur(2900), "29.00");
        assert_eq!(eur(29000), "290.00");
        assert_eq!(eur(5), "0.05");
        assert_eq!(eur(2857), "28.57");
        let jpy = Currency::parse("JPY").unwrap_or(Currency::EUR);
        assert_eq!(Amount::from_money(Money::new(500, jpy)).value, "500");
        let kwd = Currency::parse("KWD").unwrap_or(Currency::EUR);
        assert_eq!(Amount::from_money(Money::new(1234, kwd)).value, "1.234");
        let a = Amount::from_money(Money::new(19900, Currency::EUR));
        assert_eq!(a.currency_code, "EUR");
        assert_eq!(a.to_money(), Ok(Money::new(19900, Currency::EUR)));
    }

    #[test]
    fn wire_amounts_parse_exactly() {
        let a = |c: &str, v: &str| {
            Amount {
                currency_code: c.into(),
                value: v.into(),
            }
            .to_money()
        };
        assert_eq!(a("EUR", "29.00"), Ok(Money::new(2900, Currency::EUR)));
        assert_eq!(a("EUR", "29"), Ok(Money::new(2900, Currency::EUR)));
        assert!(a("EUR", "29.001").is_err());
        assert!(a("EUR", "-29.00").is_err());
        assert!(a("EUR", "2.9e1").is_err());
        assert!(a("eur", "29.00").is_err());
        assert!(a("XYZ", "29.00").is_err());
        assert_ne!(a("EUR", "28.99"), Ok(Money::new(2900, Currency::EUR)));
    }

    #[test]
    fn capture_statuses_map_explicitly() {
        let parse = |s: &str| {
            serde_json::from_value::<CaptureStatus>(serde_json::json!(s))
                .unwrap_or(CaptureStatus::Failed)
        };
        assert_eq!(capture_outcome(parse("COMPLETED")), CaptureOutcome::Paid);
        assert_eq!(capture_outcome(parse("PENDING")), CaptureOutcome::Waiting);
        assert_eq!(capture_outcome(parse("DECLINED")), CaptureOutcome::Failed);
        assert_eq!(capture_outcome(parse("FAILED")), CaptureOutcome::Failed);
        assert_eq!(capture_outcome(parse("REFUNDED")), CaptureOutcome::Refunded);
        assert_eq!(
            capture_outcome(parse("PARTIALLY_REFUNDED")),
            CaptureOutcome::Paid
        );
        assert_eq!(parse("SOMETHING_NEW"), CaptureStatus::Unrecognized);
        assert_eq!(
            capture_outcome(parse("SOMETHING_NEW")),
            CaptureOutcome::Waiting
        );
        for s in [
            "COMPLETED",
            "DECLINED",
            "PARTIALLY_REFUNDED",
            "PENDING",
            "REFUNDED",
            "FAILED",
        ] {
            assert_eq!(parse(s).as_str(), s);
        }
        let order = |s: &str| {
            serde_json::from_value::<OrderStatus>(serde_json::json!(s))
                .unwrap_or(OrderStatus::Voided)
        };
        for s in [
            "CREATED",
            "SAVED",
            "APPROVED",
            "VOIDED",
            "COMPLETED",
            "PAYER_ACTION_REQUIRED",
        ] {
            assert_eq!(order(s).as_str(), s);
        }
        assert_eq!(order("NEW_ONE"), OrderStatus::Unrecognized);
        let refund = |s: &str| {
            serde_json::from_value::<RefundStatus>(serde_json::json!(s))
                .unwrap_or(RefundStatus::Unrecognized)
        };
        assert!(refund_done(refund("COMPLETED")));
        assert!(!refund_done(refund("PENDING")));
        assert!(!refund_done(refund("CANCELLED")));
        assert!(!refund_done(refund("FAILED")));
    }

    #[test]
    fn links_and_ids() {
        let order: Order = serde_json::from_value(serde_json::json!({
            "id": "5O190127TN364715T", "status": "PAYER_ACTION_REQUIRED",
            "links": [{"href": "https://api-m.paypal.com/v2/checkout/orders/5O190127TN364715T", "rel": "self", "method": "GET"},
                      {"href": "https://www.paypal.com/checkoutnow?token=5O190127TN364715T", "rel": "payer-action", "method": "GET"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            order.approve_link(),
            Some("https://www.paypal.com/checkoutnow?token=5O190127TN364715T")
        );
        let refund: Refund = serde_json::from_value(serde_json::json!({
            "id": "1JU08902781691411", "status": "COMPLETED",
            "amount": {"currency_code": "EUR", "value": "29.00"},
            "links": [{"href": "https://api-m.paypal.com/v2/payments/refunds/1JU08902781691411", "rel": "self"},
                      {"href": "https://api-m.paypal.com/v2/payments/captures/2GG279541U471931P", "rel": "up"}]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refund.capture_id(), Some("2GG279541U471931P"));
        assert!(valid_resource_id("5O190127TN364715T"));
        assert!(!valid_resource_id("5o190127"));
        assert!(!valid_resource_id("../x"));
        assert!(!valid_resource_id(""));
        assert!(!valid_resource_id(&"A".repeat(37)));
    }
}
