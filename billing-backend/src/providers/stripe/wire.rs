//! Stripe's wire format: the objects we read (only the fields we use), the form encoding we
//! send, and the exhaustive mapping of Stripe statuses onto ours.
//!
//! Two API generations reach us: current Stripe (pinned `2026-09-30.endive`, basil shapes:
//! `items.data[].current_period_end`, `invoice.parent.subscription_details.subscription`) and
//! localstripe / old accounts (2017-era: `subscription.current_period_end`,
//! `invoice.subscription`). Every accessor here accepts both.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The `Stripe-Version` sent on every request (and to be set on the webhook endpoint).
pub const API_VERSION: &str = "2026-09-30.endive";

/// Stripe's error object: `{"error": {"type", "code", "decline_code", "message", "param"}}`.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub error: ErrorObject,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorObject {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub decline_code: Option<String>,
    #[serde(default)]
    pub param: Option<String>,
}

/// A field that is an id, or the expanded object carrying it.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IdOrObject {
    Id(String),
    Object(Box<Value>),
}

impl IdOrObject {
    pub fn id(&self) -> Option<&str> {
        match self {
            IdOrObject::Id(s) => Some(s),
            IdOrObject::Object(v) => v.get("id").and_then(Value::as_str),
        }
    }
    pub fn object(&self) -> Option<&Value> {
        match self {
            IdOrObject::Id(_) => None,
            IdOrObject::Object(v) => Some(v),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Customer {
    pub id: String,
}

/// Stripe's subscription statuses. `Unknown` holds a status a newer API version may add; the
/// webhook handler leaves the subscription alone for it (and says so in the event outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
    #[serde(other)]
    Unknown,
}

/// What a Stripe subscription status means for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapped {
    /// Paid up (or trialing): grants the plan until the period end.
    Active,
    /// A renewal failed: keeps the plan for the grace period.
    PastDue,
    /// No access, but Stripe may still collect and reactivate it.
    Expired,
    /// Ended for good.
    Canceled,
    /// Waiting for the first payment.
    Incomplete,
    /// A status we do not know: change nothing.
    Unknown,
}

impl SubscriptionStatus {
    /// Exhaustive: a new variant must be placed here by hand.
    pub fn mapped(self) -> Mapped {
        match self {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => Mapped::Active,
            SubscriptionStatus::PastDue => Mapped::PastDue,
            SubscriptionStatus::Unpaid | SubscriptionStatus::Paused => Mapped::Expired,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired => {
                Mapped::Canceled
            }
            SubscriptionStatus::Incomplete => Mapped::Incomplete,
            SubscriptionStatus::Unknown => Mapped::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct List<T> {
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub has_more: bool,
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List {
            data: Vec::new(),
            has_more: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct SubscriptionItem {
    #[serde(default)]
    pub price: Option<IdOrObject>,
    /// Legacy Plans API (localstripe): `plan` instead of `price`.
    #[serde(default)]
    pub plan: Option<IdOrObject>,
    /// basil and later.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub customer: IdOrObject,
    pub status: SubscriptionStatus,
    #[serde(default)]
    pub items: List<SubscriptionItem>,
    /// Before basil only.
    #[serde(default)]
    pub current_period_start: Option<i64>,
    #[serde(default)]
    pub current_period_end: Option<i64>,
    #[serde(default)]
    pub cancel_at_period_end: Option<bool>,
    #[serde(default)]
    pub ended_at: Option<i64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
    #[serde(default)]
    pub latest_invoice: Option<IdOrObject>,
}

impl Subscription {
    /// The Stripe price (or legacy plan) ids of the items.
    pub fn price_ids(&self) -> Vec<String> {
        self.items
            .data
            .iter()
            .filter_map(|i| {
                i.price
                    .as_ref()
                    .and_then(IdOrObject::id)
                    .or_else(|| i.plan.as_ref().and_then(IdOrObject::id))
                    .map(str::to_string)
            })
            .collect()
    }

    /// `(start, end)` of the current period: top-level before basil, per item since.
    pub fn period(&self) -> Option<(i64, i64)> {
        if let (Some(s), Some(e)) = (self.current_period_start, self.current_period_end) {
            return Some((s, e));
        }
        let end = self
            .items
            .data
            .iter()
            .filter_map(|i| i.current_period_end)
            .max()?;
        let start = self
            .items
            .data
            .iter()
            .filter_map(|i| i.current_period_start)
            .min()
            .unwrap_or(end);
        Some((start, end))
    }

    pub fn metadata_str(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    /// The client secret for confirming the first payment, when Stripe returned one:
    /// `latest_invoice.confirmation_secret` (basil+) or `latest_invoice.payment_intent` (older).
    pub fn client_secret(&self) -> Option<String> {
        let inv = self.latest_invoice.as_ref()?.object()?;
        inv.pointer("/confirmation_secret/client_secret")
            .or_else(|| inv.pointer("/payment_intent/client_secret"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Period {
    pub start: i64,
    pub end: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InvoiceLine {
    #[serde(default)]
    pub period: Option<Period>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Invoice {
    pub id: String,
    #[serde(default)]
    pub customer: Option<IdOrObject>,
    /// Before basil.
    #[serde(default)]
    pub subscription: Option<IdOrObject>,
    /// basil and later: `parent.subscription_details.subscription`.
    #[serde(default)]
    pub parent: Option<Value>,
    #[serde(default)]
    pub lines: List<InvoiceLine>,
    #[serde(default)]
    pub period_start: Option<i64>,
    #[serde(default)]
    pub period_end: Option<i64>,
}

impl Invoice {
    pub fn subscription_id(&self) -> Option<String> {
        if let Some(s) = self.subscription.as_ref().and_then(IdOrObject::id) {
            return Some(s.to_string());
        }
        let p = self
            .parent
            .as_ref()?
            .pointer("/subscription_details/subscription")?;
        match p {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("id").and_then(Value::as_str).map(str::to_string),
            _ => None,
        }
    }

    /// The service period this invoice pays for: the latest line period (for a subscription
    /// invoice the invoice's own `period_*` is the previous period), else the invoice's.
    pub fn paid_period(&self) -> Option<(i64, i64)> {
        let line = self
            .lines
            .data
            .iter()
            .filter_map(|l| l.period.as_ref())
            .max_by_key(|p| p.end);
        match line {
            Some(p) => Some((p.start, p.end)),
            None => match (self.period_start, self.period_end) {
                (Some(s), Some(e)) => Some((s, e)),
                _ => None,
            },
        }
    }
}

/// PaymentIntent statuses (exhaustive; `Unknown` for ones a newer version may add).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentIntentStatus {
    RequiresPaymentMethod,
    RequiresConfirmation,
    RequiresAction,
    Processing,
    RequiresCapture,
    Canceled,
    Succeeded,
    #[serde(other)]
    Unknown,
}

impl PaymentIntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentIntentStatus::RequiresPaymentMethod => "requires_payment_method",
            PaymentIntentStatus::RequiresConfirmation => "requires_confirmation",
            PaymentIntentStatus::RequiresAction => "requires_action",
            PaymentIntentStatus::Processing => "processing",
            PaymentIntentStatus::RequiresCapture => "requires_capture",
            PaymentIntentStatus::Canceled => "canceled",
            PaymentIntentStatus::Succeeded => "succeeded",
            PaymentIntentStatus::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentIntent {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentIntentStatus,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub amount_received: Option<i64>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CheckoutSession {
    pub id: String,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub payment_status: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub customer: Option<IdOrObject>,
    #[serde(default)]
    pub subscription: Option<IdOrObject>,
    #[serde(default)]
    pub client_reference_id: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

impl CheckoutSession {
    pub fn user_id(&self) -> Option<&str> {
        self.metadata
            .get("user_id")
            .and_then(Value::as_str)
            .or(self.client_reference_id.as_deref())
            .filter(|s| !s.is_empty())
    }
}

/// A webhook event; `data.object` is parsed per type by the handler.
#[derive(Debug, Clone, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub created: i64,
    pub data: EventData,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// Flattens a JSON object into Stripe's form encoding: nested objects as `a[b][c]`, arrays of
/// objects as `items[0][price]`, arrays of scalars as `expand[]`, booleans as `true`/`false`.
/// `null` is left out (an empty value would unset the field).
pub fn form_pairs(params: &Map<String, Value>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (k, v) in params {
        flatten(k.clone(), v, &mut out);
    }
    out
}

fn flatten(key: String, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Null => {}
        Value::Bool(b) => out.push((key, b.to_string())),
        Value::Number(n) => out.push((key, n.to_string())),
        Value::String(s) => out.push((key, s.clone())),
        Value::Object(m) => {
            for (k, v) in m {
                flatten(format!("{key}[{k}]"), v, out);
            }
        }
        Value::Array(a) => {
            let scalars = a.iter().all(|x| !x.is_object() && !x.is_array());
            for (i, x) in a.iter().enumerate() {
                let k = if scalars {
                    format!("{key}[]")
                } else {
                    format!("{key}[{i}]")
                };
                flatten(k, x, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_encoding_uses_brackets() {
        let p = json!({
            "customer": "cus_1",
            "items": [{"price": "price_1", "quantity": 2}],
            "metadata": {"user_id": "alice"},
            "expand": ["latest_invoice", "customer"],
            "automatic_payment_methods": {"enabled": true},
            "description": null,
        });
        let pairs = form_pairs(p.as_object().unwrap_or(&Map::new()));
        let got: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("automatic_payment_methods[enabled]", "true"),
                ("customer", "cus_1"),
                ("expand[]", "latest_invoice"),
                ("expand[]", "customer"),
                ("items[0][price]", "price_1"),
                ("items[0][quantity]", "2"),
                ("metadata[user_id]", "alice"),
            ]
        );
        // And the wire text, percent-encoded as reqwest sends it.
        let text = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        assert!(text.contains("items%5B0%5D%5Bprice%5D=price_1"), "{text}");
        assert!(text.contains("expand%5B%5D=latest_invoice"), "{text}");
    }

    #[test]
    fn status_mapping_is_exhaustive_and_right() {
        let cases = [
            ("active", Mapped::Active),
            ("trialing", Mapped::Active),
            ("past_due", Mapped::PastDue),
            ("unpaid", Mapped::Expired),
            ("paused", Mapped::Expired),
            ("canceled", Mapped::Canceled),
            ("incomplete_expired", Mapped::Canceled),
            ("incomplete", Mapped::Incomplete),
            ("something_new", Mapped::Unknown),
        ];
        for (text, want) in cases {
            let s: SubscriptionStatus =
                serde_json::from_value(json!(text)).unwrap_or(SubscriptionStatus::Unknown);
            assert_eq!(s.mapped(), want, "{text}");
            if want != Mapped::Unknown {
                assert_eq!(s.as_str(), text);
            }
        }
    }

    #[test]
    fn both_subscription_shapes() {
        let old: Subscription = serde_json::from_value(json!({
            "id": "sub_1", "customer": "cus_1", "status": "active",
            "current_period_start": 100, "current_period_end": 200,
            "items": {"data": [{"plan": {"id": "pro-monthly", "amount": 2900}}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.period(), Some((100, 200)));
        assert_eq!(old.price_ids(), vec!["pro-monthly".to_string()]);
        let basil: Subscription = serde_json::from_value(json!({
            "id": "sub_2", "customer": {"id": "cus_2"}, "status": "past_due",
            "items": {"object": "list", "data": [{"price": {"id": "price_9"}, "current_period_start": 300, "current_period_end": 400}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(basil.period(), Some((300, 400)));
        assert_eq!(basil.customer.id(), Some("cus_2"));
        assert_eq!(basil.price_ids(), vec!["price_9".to_string()]);
    }

    #[test]
    fn both_invoice_shapes() {
        let old: Invoice = serde_json::from_value(json!({
            "id": "in_1", "subscription": "sub_1", "period_start": 1, "period_end": 2,
            "lines": {"data": [{"period": {"start": 10, "end": 20}}]}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(old.subscription_id().as_deref(), Some("sub_1"));
        assert_eq!(old.paid_period(), Some((10, 20)));
        let basil: Invoice = serde_json::from_value(json!({
            "id": "in_2", "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_2"}},
            "period_start": 5, "period_end": 6
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(basil.subscription_id().as_deref(), Some("sub_2"));
        assert_eq!(basil.paid_period(), Some((5, 6)));
    }
}
