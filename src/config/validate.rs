//! Cross-field checks that turn the raw TOML model into a [`Plan`]: names
//! resolve, listeners are unique, each fault's fields fit its action. Every
//! problem is reported with the span of the value to fix.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

mod admin;
mod fault;
mod guard;
mod limits;
mod reports;
mod safety;
mod tls;

use super::raw;
use super::Plan;
use crate::fault::Scenario;
use crate::topology::{DataCenter, Protocol, Scheme, Service, ServiceId, Topology};
use fault::FaultCheck;

const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(15 * 60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) type Report<'r> = &'r mut dyn FnMut(Range<usize>, String);

pub(super) fn validate(raw: raw::Plan, base: &Path, report: Report<'_>) -> Plan {
    let admin = admin::admin(&raw.admin, base, report);
    let topology = topology(&raw, base, report);
    let mut listeners: Vec<(SocketAddr, String)> = vec![(admin.listen, "the admin API".to_owned())];
    for (name, service) in &raw.services {
        let addr = *service.listen.get_ref();
        if addr.port() == 0 {
            continue;
        }
        if let Some((taken, owner)) = listeners.iter().find(|(other, _)| overlaps(addr, *other)) {
            let name = name.get_ref();
            let detail = if *taken == addr {
                String::new()
            } else {
                format!(" as {taken}")
            };
            report(
                service.listen.span(),
                format!(
                    "service `{name}` listens on {addr}, which {owner} already uses{detail}; give each listener its own port"
                ),
            );
        }
        listeners.push((addr, format!("service `{}`", name.get_ref())));
    }
    // A service whose table did not parse has its own error already.
    if raw.services.is_empty() && raw.broken.is_empty() {
        report(
            0..0,
            "the plan defines no services; add a [services.NAME] table".to_owned(),
        );
    }
    let scenarios = raw
        .scenarios
        .iter()
        .map(|(name, scenario)| {
            Arc::new(self::scenario(
                name,
                scenario,
                &topology,
                &raw.broken,
                report,
            ))
        })
        .collect();
    let names = guard::Names {
        topology: &topology,
        broken: &raw.broken,
    };
    let safety = safety::safety(&raw.safety, &names, report);
    Plan {
        admin,
        topology,
        scenarios,
        reports: reports::reports(&raw.reports, base, report),
        safety,
        warnings: Vec::new(),
    }
}

/// Reports what runs, but not as written: a fault whose `after + duration`
/// passes its scenario's `max_duration` is cut short there. Located at the
/// fault's `duration`.
pub(super) fn warnings(raw: &raw::Plan, warn: Report<'_>) {
    let human = humantime::format_duration;
    for (name, scenario) in &raw.scenarios {
        let max_duration = scenario.max_duration.map_or(DEFAULT_MAX_DURATION, |d| d.0);
        guard::warnings(name.get_ref(), scenario, max_duration, warn);
        let faults = scenario.faults.iter().enumerate();
        for (i, fault) in faults.filter_map(|(i, f)| Some((i, f.as_ref()?.get_ref()))) {
            let Some(duration) = &fault.duration else {
                continue;
            };
            let after = fault.after.map_or(Duration::ZERO, |d| d.0);
            let end = after + duration.get_ref().0;
            // A fault that starts too late is an error of its own.
            if end > max_duration && after < max_duration {
                warn(
                    duration.span(),
                    format!(
                        "scenario `{}` fault #{}: ends {} after activation (after {} + duration {}), past the scenario's max_duration of {}, so it is cut short there; shorten the fault or raise max_duration",
                        name.get_ref(),
                        i + 1,
                        human(end),
                        human(after),
                        human(duration.get_ref().0),
                        human(max_duration),
                    ),
                );
            }
        }
    }
}

/// Whether two listen addresses cannot both be bound: the same port on the
/// same address, or on the wildcard address of the family (`0.0.0.0`
/// takes every IPv4 address; `[::]` every address, IPv4 included, as Linux
/// binds it by default).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() != b.port() || a.port() == 0 {
        return false;
    }
    let wild =
        |x: SocketAddr, y: SocketAddr| x.ip().is_unspecified() && (x.is_ipv6() || y.is_ipv4());
    a.ip() == b.ip() || wild(a, b) || wild(b, a)
}

/// A path from the plan: relative paths start at the plan file's directory.
pub(super) fn resolve(base: &Path, path: &str) -> PathBuf {
    base.join(path)
}

fn check_name(kind: &str, name: &Spanned<String>, report: Report<'_>) {
    let valid = !name.get_ref().is_empty()
        && name
            .get_ref()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        report(
            name.span(),
            format!(
                "{kind} name `{}` may only use letters, digits, `-`, `_` and `.`",
                name.get_ref()
            ),
        );
    }
}

fn topology(raw: &raw::Plan, base: &Path, report: Report<'_>) -> Topology {
    let mut datacenters: Vec<DataCenter> = raw
        .datacenters
        .iter()
        .map(|(name, dc)| {
            check_name("datacenter", name, report);
            DataCenter {
                name: Arc::from(name.get_ref().as_str()),
                description: dc.description.clone(),
                services: Vec::new(),
            }
        })
        .collect();
    let known = known(raw.datacenters.keys());
    let mut services = Vec::new();
    for (i, (name, service)) in raw.services.iter().enumerate() {
        check_name("service", name, report);
        let id = ServiceId(i);
        let dc_name = service.datacenter.get_ref();
        match datacenters.iter_mut().find(|dc| &*dc.name == dc_name) {
            Some(dc) => dc.services.push(id),
            None if raw.broken.contains(dc_name) => {}
            None => report(
                service.datacenter.span(),
                format!(
                    "service `{}` names unknown datacenter `{dc_name}`; known: {known}",
                    name.get_ref()
                ),
            ),
        }
        if service.upstream.get_ref().authority == service.listen.get_ref().to_string() {
            report(
                service.upstream.span(),
                format!(
                    "service `{}` forwards to its own listen address; point upstream at the real service",
                    name.get_ref()
                ),
            );
        }
        if service.protocol == Protocol::Tcp {
            let scheme = service.upstream.get_ref().scheme;
            let fix = match scheme {
                Scheme::Bare => None,
                Scheme::Http => Some("its upstream is plain `host:port` without `http://`"),
                Scheme::Https => Some(
                    "it passes TLS through untouched: write the upstream as plain `host:port` and terminate TLS there",
                ),
            };
            if let Some(fix) = fix {
                report(
                    service.upstream.span(),
                    format!("service `{}` is tcp, so {fix}", name.get_ref()),
                );
            }
        }
        let tls = tls::service_tls(name.get_ref(), service, base, report);
        services.push(Service {
            id,
            name: Arc::from(name.get_ref().as_str()),
            description: service.description.clone(),
            datacenter: Arc::from(dc_name.as_str()),
            protocol: service.protocol,
            listen: *service.listen.get_ref(),
            upstream: service.upstream.get_ref().clone(),
            connect_timeout: service
                .connect_timeout
                .map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
            timeout: service.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
            tls: tls.listener,
            upstream_tls: tls.upstream,
            limits: limits::limits(name.get_ref(), service, report),
        });
    }
    Topology {
        datacenters,
        services,
    }
}

fn known<'a>(names: impl Iterator<Item = &'a Spanned<String>>) -> String {
    let names: Vec<&str> = names.map(|n| n.get_ref().as_str()).collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

fn scenario(
    name: &Spanned<String>,
    raw: &raw::Scenario,
    topology: &Topology,
    broken: &HashSet<String>,
    report: Report<'_>,
) -> Scenario {
    check_name("scenario", name, report);
    let scenario_name: Arc<str> = Arc::from(name.get_ref().as_str());
    let max_duration = raw.max_duration.map_or(DEFAULT_MAX_DURATION, |d| d.0);
    if max_duration.is_zero() {
        report(
            name.span(),
            format!("scenario `{scenario_name}` has max_duration 0; give it a positive duration"),
        );
    }
    if raw.faults.is_empty() {
        report(
            name.span(),
            format!(
                "scenario `{scenario_name}` has no faults; add [[scenarios.{scenario_name}.faults]] tables"
            ),
        );
    }
    let faults = raw
        .faults
        .iter()
        .enumerate()
        .filter_map(|(i, fault)| Some((i, fault.as_ref()?)))
        .map(|(i, fault)| {
            let mut check = FaultCheck {
                scenario: &scenario_name,
                index: i,
                span: fault.span(),
                broken,
                report: &mut *report,
            };
            Arc::new(check.fault(fault.get_ref(), max_duration, topology))
        })
        .collect();
    let names = guard::Names { topology, broken };
    let stop_when = guard::guards(&scenario_name, &raw.stop_when, &names, report);
    Scenario {
        name: scenario_name,
        description: raw.description.clone(),
        max_duration,
        faults,
        stop_when,
    }
}
