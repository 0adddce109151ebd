//! The raw `[[scenarios.NAME.stop_when]]` guards and the plan-wide
//! `[safety]` table, as written. Cross-field checks (one measure per guard,
//! a threshold of the measure's kind, names that resolve) are in
//! `validate/guard.rs`.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::HumanDuration;

/// One `[[scenarios.NAME.stop_when]]` table: exactly one measure
/// (`error_ratio`, `p99_latency` or `prometheus`) and its threshold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopWhen {
    pub name: Spanned<String>,
    pub error_ratio: Option<Spanned<BuiltIn>>,
    pub p99_latency: Option<Spanned<BuiltIn>>,
    pub prometheus: Option<Spanned<String>>,
    pub query: Option<Spanned<String>>,
    pub above: Option<Spanned<Threshold>>,
    #[serde(rename = "for")]
    pub hold: Option<Spanned<HumanDuration>>,
    pub window: Option<Spanned<HumanDuration>>,
    pub on_error: Option<Spanned<OnError>>,
}

/// What a built-in guard reads: `{ outside = true }`, `{ datacenter =
/// "..." }` or `{ service = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltIn {
    pub outside: Option<Spanned<bool>>,
    pub datacenter: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
}

/// `above`: a number (a ratio, a PromQL value) or a duration string (a
/// latency); which one a guard needs is checked with its measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    Number(f64),
    Duration(HumanDuration),
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ThresholdVisitor)
    }
}

struct ThresholdVisitor;

impl Visitor<'_> for ThresholdVisitor {
    type Value = Threshold;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a number like 0.05, or a duration string like \"800ms\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Threshold, E> {
        HumanDuration::try_from(value.to_owned())
            .map(Threshold::Duration)
            .map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Threshold, E> {
        Ok(Threshold::Number(value as f64))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Threshold, E> {
        Ok(Threshold::Number(value as f64))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Threshold, E> {
        if value.is_finite() {
            Ok(Threshold::Number(value))
        } else {
            Err(E::custom(format!(
                "`above` must be a finite number, not {value}"
            )))
        }
    }
}

/// What a `prometheus` guard does when its query cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    Stop,
    Continue,
}

/// `[safety]`: limits on what may be activated at all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Safety {
    pub max_active: Option<Spanned<u32>>,
    pub allow_datacenters: Option<Spanned<Vec<Spanned<String>>>>,
}
