//! The plan catalogue. `[[plans]]` in the TOML replaces it; without any, the original three.

use crate::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One plan as configured. Prices are integer minor units of `currency`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    pub name: String,
    #[serde(default = "eur")]
    pub currency: Currency,
    pub price_monthly_minor: i64,
    pub price_yearly_minor: i64,
    pub rate_limit_per_minute: u64,
    pub daily_limit: u64,
    #[serde(default)]
    pub features: Vec<String>,
    pub max_keys_per_user: u32,
    /// Per-provider price ids, e.g. `stripe_monthly = "price_..."`.
    #[serde(default)]
    pub provider_prices: BTreeMap<String, String>,
}

fn eur() -> Currency {
    Currency::EUR
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Cycle {
    Monthly,
    Yearly,
}

impl Cycle {
    pub fn parse(s: &str) -> Option<Cycle> {
        match s {
            "monthly" => Some(Cycle::Monthly),
            "yearly" => Some(Cycle::Yearly),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Cycle::Monthly => "monthly",
            Cycle::Yearly => "yearly",
        }
    }

    pub fn months(&self) -> i64 {
        match self {
            Cycle::Monthly => 1,
            Cycle::Yearly => 12,
        }
    }
}

impl Plan {
    pub fn price(&self, cycle: Cycle) -> Money {
        let minor = match cycle {
            Cycle::Monthly => self.price_monthly_minor,
            Cycle::Yearly => self.price_yearly_minor,
        };
        Money::new(minor, self.currency)
    }

    pub fn is_paid(&self) -> bool {
        self.price_monthly_minor > 0 || self.price_yearly_minor > 0
    }

    pub fn limits(&self) -> Limits {
        Limits {
            per_minute: self.rate_limit_per_minute,
            per_day: self.daily_limit,
        }
    }
}

/// The quota pair every key carries.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Limits {
    pub per_minute: u64,
    pub per_day: u64,
}

/// `(monthly, yearly)` prices in minor units and `(per_minute, per_day)` limits.
fn plan(
    id: &str,
    name: &str,
    (monthly, yearly): (i64, i64),
    (per_minute, per_day): (u64, u64),
    features: &[&str],
    max_keys: u32,
) -> Plan {
    Plan {
        id: id.to_string(),
        name: name.to_string(),
        currency: Currency::EUR,
        price_monthly_minor: monthly,
        price_yearly_minor: yearly,
        rate_limit_per_minute: per_minute,
        daily_limit: per_day,
        features: features.iter().map(|f| f.to_string()).collect(),
        max_keys_per_user: max_keys,
        provider_prices: BTreeMap::new(),
    }
}

/// The three plans a catalogue starts with: free (10/min, 50/day, 2 keys), pro (EUR 29.00 a month or
/// 290.00 a year, 100/min, 5,000/day, 10 keys) and enterprise (EUR 199.00 / 1,990.00, 1,000/min,
/// 50,000/day, 50 keys).
pub fn default_plans() -> Vec<Plan> {
    vec![
        plan(
            "free",
            "Free",
            (0, 0),
            (10, 50),
            &[
                "50 API calls/day",
                "Basic endpoints",
                "Community support",
                "Public documentation",
            ],
            2,
        ),
        plan(
            "pro",
            "Pro",
            (2900, 29000),
            (100, 5000),
            &[
                "5,000 API calls/day",
                "All endpoints",
                "Priority support",
                "Webhooks",
                "Analytics dashboard",
            ],
            10,
        ),
        plan(
            "enterprise",
            "Enterprise",
            (19900, 199000),
            (1000, 50000),
            &[
                "50,000 API calls/day",
                "All endpoints + Beta",
                "Dedicated support",
                "Custom integrations",
                "SLA guarantee",
                "On-premise option",
            ],
            50,
        ),
    ]
}

/// The validated catalogue: ids unique and well-formed, a `free` plan present (the fallback tier).
#[derive(Clone, Debug)]
pub struct Catalogue {
    plans: Vec<Plan>,
}

pub const FREE: &str = "free";

impl Catalogue {
    /// Validates `plans` (or the defaults when empty). Each error names the setting.
    pub fn new(plans: Vec<Plan>) -> Result<Catalogue, Vec<String>> {
        let plans = if plans.is_empty() {
            default_plans()
        } else {
            plans
        };
        let mut errors = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            let at = format!("plans[{i}]");
            if !valid_plan_id(&p.id) {
                errors.push(format!(
                    "{at}.id: {:?} must be 1-32 chars of a-z, 0-9 and '-'",
                    p.id
                ));
            }
            if plans.iter().filter(|q| q.id == p.id).count() > 1 {
                errors.push(format!("{at}.id: plan id {:?} is defined twice", p.id));
            }
            if p.price_monthly_minor < 0 || p.price_yearly_minor < 0 {
                errors.push(format!("{at}: prices must not be negative"));
            }
            if p.rate_limit_per_minute == 0 || p.daily_limit == 0 {
                errors.push(format!(
                    "{at}: rate_limit_per_minute and daily_limit must be at least 1"
                ));
            }
            if p.max_keys_per_user == 0 {
                errors.push(format!("{at}.max_keys_per_user must be at least 1"));
            }
        }
        if !plans.iter().any(|p| p.id == FREE) {
            errors.push(
                "plans: a plan with id \"free\" is required (keys fall back to it)".to_string(),
            );
        }
        if errors.is_empty() {
            Ok(Catalogue { plans })
        } else {
            Err(errors)
        }
    }

    pub fn defaults() -> Catalogue {
        Catalogue {
            plans: default_plans(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.id == id)
    }

    pub fn free(&self) -> &Plan {
        // `new` guarantees a free plan; fall back to the first plan defensively.
        self.get(FREE).unwrap_or(&self.plans[0])
    }

    pub fn all(&self) -> &[Plan] {
        &self.plans
    }

    pub fn ids(&self) -> Vec<&str> {
        self.plans.iter().map(|p| p.id.as_str()).collect()
    }

    /// The catalogue's currency (of the first paid plan, else EUR).
    pub fn currency(&self) -> Currency {
        self.plans
            .iter()
            .find(|p| p.is_paid())
            .map(|p| p.currency)
            .unwrap_or(Currency::EUR)
    }
}

/// Plan ids appear inside keys (`cli_<plan>_...`), so they are restricted to a URL- and key-safe set.
pub fn valid_plan_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_spec_table() {
        let c = Catalogue::defaults();
        let pro = c.get("pro").cloned();
        assert_eq!(
            pro.as_ref().map(|p| p.price(Cycle::Monthly).minor),
            Some(2900)
        );
        assert_eq!(
            pro.as_ref().map(|p| p.price(Cycle::Yearly).minor),
            Some(29000)
        );
        assert_eq!(
            pro.as_ref().map(|p| p.limits()),
            Some(Limits {
                per_minute: 100,
                per_day: 5000
            })
        );
        assert_eq!(
            c.free().limits(),
            Limits {
                per_minute: 10,
                per_day: 50
            }
        );
        assert_eq!(c.get("enterprise").map(|p| p.max_keys_per_user), Some(50));
    }

    #[test]
    fn rejects_bad_catalogues() {
        let mut p = default_plans();
        p[0].id = "Free!".into();
        p[1].rate_limit_per_minute = 0;
        let errs = Catalogue::new(p).err().unwrap_or_default();
        assert!(errs.iter().any(|e| e.contains("plans[0].id")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("plans[1]")), "{errs:?}");
        assert!(
            errs.iter().any(|e| e.contains("\"free\" is required")),
            "{errs:?}"
        );
    }
}
