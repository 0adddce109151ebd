//! The plan exactly as written in TOML. Every struct denies unknown fields;
//! values that can be checked alone (durations, probabilities, addresses)
//! are checked while parsing so toml points at the offending value.

use std::net::SocketAddr;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use toml::Spanned;

use crate::fault::Direction;
use crate::topology::{Protocol, Upstream};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub datacenters: IndexMap<Spanned<String>, DataCenter>,
    #[serde(default)]
    pub services: IndexMap<Spanned<String>, Service>,
    #[serde(default)]
    pub scenarios: IndexMap<Spanned<String>, Scenario>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub listen: Option<Spanned<SocketAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataCenter {
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub datacenter: Spanned<String>,
    pub protocol: Protocol,
    pub listen: Spanned<SocketAddr>,
    pub upstream: Spanned<Upstream>,
    #[serde(default)]
    pub description: String,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    pub max_duration: Option<HumanDuration>,
    #[serde(default)]
    pub faults: Vec<Spanned<Fault>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub datacenter: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub action: ActionKind,
    pub probability: Option<Probability>,
    pub after: Option<HumanDuration>,
    pub duration: Option<Spanned<HumanDuration>>,
    pub latency: Option<Spanned<HumanDuration>>,
    pub jitter: Option<Spanned<HumanDuration>>,
    pub direction: Option<Spanned<Direction>>,
    pub status: Option<Spanned<u16>>,
    pub body: Option<Spanned<String>>,
    pub headers: Option<Spanned<IndexMap<String, String>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Blackhole,
    Drop,
    Delay,
    Error,
}

impl ActionKind {
    pub fn name(self) -> &'static str {
        match self {
            ActionKind::Blackhole => "blackhole",
            ActionKind::Drop => "drop",
            ActionKind::Delay => "delay",
            ActionKind::Error => "error",
        }
    }
}

/// A duration written for humans: "250ms", "30s", "5m", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        humantime::parse_duration(&value)
            .map(HumanDuration)
            .map_err(|e| {
                format!(
                    "invalid duration `{value}` ({e}); write it like \"250ms\", \"30s\" or \"5m\""
                )
            })
    }
}

/// A probability in `0..=1`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(try_from = "f64")]
pub struct Probability(pub f64);

impl TryFrom<f64> for Probability {
    type Error = String;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        if (0.0..=1.0).contains(&value) {
            Ok(Probability(value))
        } else {
            Err(format!("probability must be between 0 and 1, got {value}"))
        }
    }
}
