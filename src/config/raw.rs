//! The plan exactly as written in TOML. Every struct denies unknown fields;
//! values that can be checked alone (durations, probabilities, addresses)
//! are checked while parsing so toml points at the offending value.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

use super::Secret;
use crate::fault::Direction;
use crate::topology::{Protocol, Upstream};
pub use guard::{BuiltIn, OnError, Safety, StopWhen, Threshold};

mod guard;

/// The whole plan. Parsed table by table (see [`parse`]) so that one bad
/// value does not hide the problems in every other table.
#[derive(Debug, Default)]
pub struct Plan {
    pub admin: Admin,
    pub datacenters: IndexMap<Spanned<String>, DataCenter>,
    pub services: IndexMap<Spanned<String>, Service>,
    pub scenarios: IndexMap<Spanned<String>, Scenario>,
    pub reports: Reports,
    pub safety: Safety,
    /// Names whose tables failed to parse: cross-checks treat them as
    /// defined, so one typo does not cascade into "unknown name" errors.
    pub broken: HashSet<String>,
}

/// Parses plan text, reporting every syntax error, or else every table that
/// does not fit the schema. `None` when the TOML itself is broken.
pub fn parse(source: &str, report: &mut dyn FnMut(Range<usize>, String)) -> Option<Plan> {
    let (root, syntax_errors) = DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        for e in syntax_errors {
            report(e.span().unwrap_or(0..0), e.message().trim_end().to_owned());
        }
        return None;
    }
    let mut plan = Plan::default();
    for (key, value) in root.get_ref() {
        match key.get_ref().as_ref() {
            "admin" => {
                if let Some(admin) = item(value, report) {
                    plan.admin = admin;
                }
            }
            "reports" => {
                if let Some(reports) = item(value, report) {
                    plan.reports = reports;
                }
            }
            "safety" => {
                if let Some(safety) = item(value, report) {
                    plan.safety = safety;
                }
            }
            "datacenters" => table(value, &mut plan.datacenters, &mut plan.broken, report),
            "services" => table(value, &mut plan.services, &mut plan.broken, report),
            "scenarios" => {
                let DeValue::Table(entries) = value.get_ref() else {
                    report(value.span(), format!("expected a table, found {}", value.get_ref().type_str()));
                    continue;
                };
                for (name, entry) in entries {
                    let key = Spanned::new(name.span(), name.get_ref().to_string());
                    match scenario(entry, report) {
                        Some(parsed) => {
                            plan.scenarios.insert(key, parsed);
                        }
                        None => {
                            plan.broken.insert(key.into_inner());
                        }
                    }
                }
            }
            other => report(
                key.span(),
                format!("unknown table `{other}`, expected one of `admin`, `datacenters`, `services`, `scenarios`, `reports`, `safety`"),
            ),
        }
    }
    Some(plan)
}

/// Deserializes one value, reporting its error at the offending span.
fn item<T: for<'de> Deserialize<'de>>(
    value: &Spanned<DeValue<'_>>,
    report: &mut dyn FnMut(Range<usize>, String),
) -> Option<T> {
    T::deserialize(ValueDeserializer::from(value.clone()))
        .map_err(|e| {
            report(
                e.span().unwrap_or(value.span()),
                e.message().trim_end().to_owned(),
            )
        })
        .ok()
}

/// Deserializes a scenario, then each of its faults and guards on its own,
/// so one bad table does not hide the problems of the others.
fn scenario(
    value: &Spanned<DeValue<'_>>,
    report: &mut dyn FnMut(Range<usize>, String),
) -> Option<Scenario> {
    let DeValue::Table(entries) = value.get_ref() else {
        report(
            value.span(),
            format!("expected a table, found {}", value.get_ref().type_str()),
        );
        return None;
    };
    let mut header = DeTable::new();
    let mut faults = Vec::new();
    let mut stop_when = Vec::new();
    for (key, entry) in entries {
        if key.get_ref() == "stop_when" {
            stop_when = one_by_one(entry, "stop_when", report);
            continue;
        }
        if key.get_ref() != "faults" {
            header.insert(key.clone(), entry.clone());
            continue;
        }
        match entry.get_ref() {
            DeValue::Array(items) => {
                faults = items
                    .iter()
                    .map(|fault| {
                        item::<Fault>(fault, report).map(|f| Spanned::new(fault.span(), f))
                    })
                    .collect();
            }
            other => report(
                entry.span(),
                format!(
                    "`faults` must be a list of tables ([[scenarios.NAME.faults]]), found {}",
                    other.type_str()
                ),
            ),
        }
    }
    let header = Spanned::new(value.span(), DeValue::Table(header));
    let mut scenario: Scenario = item(&header, report)?;
    scenario.faults = faults;
    scenario.stop_when = stop_when;
    Some(scenario)
}

/// Deserializes each table of the array of tables `entry`, called `name`.
fn one_by_one<T: for<'de> Deserialize<'de>>(
    entry: &Spanned<DeValue<'_>>,
    name: &str,
    report: &mut dyn FnMut(Range<usize>, String),
) -> Vec<Option<Spanned<T>>> {
    match entry.get_ref() {
        DeValue::Array(items) => items
            .iter()
            .map(|one| item::<T>(one, report).map(|t| Spanned::new(one.span(), t)))
            .collect(),
        other => {
            report(
                entry.span(),
                format!(
                    "`{name}` must be a list of tables ([[scenarios.NAME.{name}]]), found {}",
                    other.type_str()
                ),
            );
            Vec::new()
        }
    }
}

/// Deserializes each entry of a `[kind.NAME]` table on its own.
fn table<T: for<'de> Deserialize<'de>>(
    value: &Spanned<DeValue<'_>>,
    into: &mut IndexMap<Spanned<String>, T>,
    broken: &mut HashSet<String>,
    report: &mut dyn FnMut(Range<usize>, String),
) {
    let DeValue::Table(entries) = value.get_ref() else {
        report(
            value.span(),
            format!("expected a table, found {}", value.get_ref().type_str()),
        );
        return;
    };
    for (name, entry) in entries {
        let key = Spanned::new(name.span(), name.get_ref().to_string());
        match item(entry, report) {
            Some(parsed) => {
                into.insert(key, parsed);
            }
            None => {
                broken.insert(key.into_inner());
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    #[serde(default, deserialize_with = "optional_listen_address")]
    pub listen: Option<Spanned<SocketAddr>>,
    #[serde(default)]
    pub tokens: Vec<Spanned<Token>>,
    #[serde(default)]
    pub open_reads: bool,
    pub tls: Option<Spanned<AdminTls>>,
}

/// One of `[admin] tokens`: a name and exactly one source of its value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: Spanned<String>,
    pub value_env: Option<Spanned<String>>,
    pub value_file: Option<Spanned<String>>,
    pub value: Option<Spanned<Secret>>,
}

/// `[admin] tls`: PEM files, relative to the plan's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
}

/// `[reports]`: where impact reports are written, and how long before
/// and after an activation they measure.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reports {
    pub dir: Option<Spanned<String>>,
    pub before: Option<Spanned<HumanDuration>>,
    pub after: Option<HumanDuration>,
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
    #[serde(deserialize_with = "listen_address")]
    pub listen: Spanned<SocketAddr>,
    pub upstream: Spanned<Upstream>,
    #[serde(default)]
    pub description: String,
    pub connect_timeout: Option<HumanDuration>,
    pub timeout: Option<HumanDuration>,
    pub tls: Option<Spanned<TlsFiles>>,
    pub upstream_ca: Option<Spanned<String>>,
    pub upstream_server_name: Option<Spanned<String>>,
    pub upstream_skip_verify: Option<Spanned<bool>>,
    pub max_connections: Option<Spanned<u32>>,
    pub max_header_bytes: Option<Spanned<u32>>,
    pub max_headers: Option<Spanned<u32>>,
    pub idle_timeout: Option<Spanned<HumanDuration>>,
    pub upstream_idle_timeout: Option<Spanned<HumanDuration>>,
}

/// `tls = { cert = "...", key = "..." }`: PEM files, relative to the plan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub description: String,
    pub max_duration: Option<HumanDuration>,
    /// Parsed one by one (see [`scenario`]); `None` for a fault whose table
    /// did not parse, so the others keep their numbers. A field serde knows
    /// of (not `skip`), so a misspelled `[[scenarios.NAME.fault]]` hears
    /// that `faults` is expected.
    #[serde(default, deserialize_with = "parsed_one_by_one")]
    pub faults: Vec<Option<Spanned<Fault>>>,
    /// The guards, parsed one by one like `faults`.
    #[serde(default, deserialize_with = "parsed_one_by_one")]
    pub stop_when: Vec<Option<Spanned<StopWhen>>>,
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

/// Faults and guards are parsed one by one by [`scenario`], not here.
fn parsed_one_by_one<'de, D: Deserializer<'de>, T>(
    deserializer: D,
) -> Result<Vec<Option<Spanned<T>>>, D::Error> {
    de::IgnoredAny::deserialize(deserializer)?;
    Ok(Vec::new())
}

/// A listen address: an IP address and a port. A host name is refused
/// with the address to write instead.
fn listen_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Spanned<SocketAddr>, D::Error> {
    let text = Spanned::<String>::deserialize(deserializer)?;
    let span = text.span();
    parse_listen(text.get_ref())
        .map(|addr| Spanned::new(span, addr))
        .map_err(de::Error::custom)
}

fn optional_listen_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Spanned<SocketAddr>>, D::Error> {
    listen_address(deserializer).map(Some)
}

fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let Some((host, port)) = text
        .rsplit_once(':')
        .filter(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
    else {
        return Err(format!(
            "listen address \"{text}\" is not an IP address and port; write it like \"127.0.0.1:8001\""
        ));
    };
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "listen address \"{text}\" needs brackets around its IPv6 address; write \"[{host}]:{port}\""
        ));
    }
    if host.eq_ignore_ascii_case("localhost") {
        return Err(format!(
            "listen address \"{text}\" needs an IP address, not the host name `{host}`; write \"127.0.0.1:{port}\""
        ));
    }
    Err(format!(
        "listen address \"{text}\" needs an IP address, not the host name `{host}`; write \"127.0.0.1:{port}\" \
         for loopback or \"0.0.0.0:{port}\" for every interface"
    ))
}

/// A duration written for humans: "250ms", "30s", "5m", "1h 30m".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HumanDurationVisitor)
    }
}

/// Reads a duration string; a bare number is refused with the string to
/// write, since `300` alone could mean milliseconds or seconds.
struct HumanDurationVisitor;

impl Visitor<'_> for HumanDurationVisitor {
    type Value = HumanDuration;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a duration string like \"300ms\" or \"30s\"")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<HumanDuration, E> {
        HumanDuration::try_from(value.to_owned()).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<HumanDuration, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit: write \"{value}ms\" or \"{value}s\", not {value}"
        )))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<HumanDuration, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit: write \"{value}ms\" or \"{value}s\", not {value}"
        )))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<HumanDuration, E> {
        Err(E::custom(format!(
            "a duration is a string with a unit: write \"{value}s\", not {value}"
        )))
    }
}

impl TryFrom<String> for HumanDuration {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let duration = humantime::parse_duration(&value).map_err(|e| {
            format!("invalid duration `{value}` ({e}); write it like \"250ms\", \"30s\" or \"5m\"")
        })?;
        if duration > MAX_DURATION {
            return Err(format!(
                "duration `{value}` is longer than the 30 days firedrill allows"
            ));
        }
        Ok(HumanDuration(duration))
    }
}

/// No duration in a plan may exceed this: a game day is not a month, and a
/// bound keeps every deadline computation far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

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
