//! Cross-field checks that turn the raw TOML model into a [`Plan`]: names
//! resolve, listeners are unique, each fault's fields fit its action. Every
//! problem is reported with the span of the value to fix.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use toml::Spanned;

use super::raw::{self, ActionKind};
use super::{Admin, Plan, DEFAULT_ADMIN_LISTEN};
use crate::fault::{Action, Delay, Direction, ErrorResponse, Fault, Scenario, Selector};
use crate::topology::{DataCenter, Protocol, Service, ServiceId, Topology};

const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(15 * 60);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Headers that frame or route a response: an `error` fault may not set
/// them, or the response it injects would be malformed.
const FRAMING: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

type Report<'r> = &'r mut dyn FnMut(Range<usize>, String);

pub(super) fn validate(raw: raw::Plan, report: Report<'_>) -> Plan {
    let admin = Admin {
        listen: raw.admin.listen.as_ref().map_or_else(
            || {
                DEFAULT_ADMIN_LISTEN
                    .parse()
                    .expect("default admin address parses")
            },
            |l| *l.get_ref(),
        ),
    };
    let topology = topology(&raw, report);
    let mut listeners: HashMap<SocketAddr, String> = HashMap::new();
    listeners.insert(admin.listen, "the admin API".to_owned());
    for (name, service) in &raw.services {
        let addr = *service.listen.get_ref();
        if addr.port() == 0 {
            continue;
        }
        if let Some(owner) = listeners.insert(addr, format!("service `{}`", name.get_ref())) {
            report(
                service.listen.span(),
                format!(
                    "service `{}` listens on {addr}, which {owner} already uses; give each listener its own port",
                    name.get_ref()
                ),
            );
        }
    }
    if raw.services.is_empty() {
        report(
            0..0,
            "the plan defines no services; add a [services.NAME] table".to_owned(),
        );
    }
    let scenarios = raw
        .scenarios
        .iter()
        .enumerate()
        .map(|(i, (name, scenario))| {
            Arc::new(self::scenario(
                i,
                name,
                scenario,
                &topology,
                &raw.broken,
                report,
            ))
        })
        .collect();
    Plan {
        admin,
        topology,
        scenarios,
    }
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

fn topology(raw: &raw::Plan, report: Report<'_>) -> Topology {
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
        if service.protocol == Protocol::Tcp && service.upstream.get_ref().has_scheme {
            report(
                service.upstream.span(),
                format!(
                    "service `{}` is tcp, so its upstream is plain `host:port` without `http://`",
                    name.get_ref()
                ),
            );
        }
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
    index: usize,
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
            Arc::new(check.fault(index, fault.get_ref(), max_duration, topology))
        })
        .collect();
    Scenario {
        name: scenario_name,
        description: raw.description.clone(),
        max_duration,
        faults,
    }
}

struct FaultCheck<'a, 'r> {
    scenario: &'a str,
    index: usize,
    span: Range<usize>,
    /// Names whose tables failed to parse; not reported again as unknown.
    broken: &'a HashSet<String>,
    report: Report<'r>,
}

impl FaultCheck<'_, '_> {
    fn problem(&mut self, span: Option<Range<usize>>, message: String) {
        let prefix = format!("scenario `{}` fault #{}: ", self.scenario, self.index + 1);
        (self.report)(span.unwrap_or_else(|| self.span.clone()), prefix + &message);
    }

    /// Complains about a field that the fault's action does not use.
    fn unused<T>(
        &mut self,
        field: &Option<Spanned<T>>,
        name: &str,
        action: ActionKind,
        owner: &str,
    ) {
        if let Some(value) = field {
            self.problem(
                Some(value.span()),
                format!(
                    "`{name}` only applies to action = \"{owner}\", not \"{}\"",
                    action.name()
                ),
            );
        }
    }

    fn fault(
        &mut self,
        scenario_index: usize,
        raw: &raw::Fault,
        max_duration: Duration,
        topology: &Topology,
    ) -> Fault {
        let selector = self.selector(raw, topology);
        let action = self.action(raw);
        let mut targets: Vec<ServiceId> = topology
            .services
            .iter()
            .filter(|s| {
                selector
                    .datacenter
                    .as_deref()
                    .is_none_or(|dc| *dc == *s.datacenter)
            })
            .filter(|s| {
                selector
                    .service
                    .as_deref()
                    .is_none_or(|name| *name == *s.name)
            })
            .map(|s| s.id)
            .collect();
        let http_only = selector.method.is_some()
            || selector.path_prefix.is_some()
            || matches!(action, Action::Error(_));
        if http_only {
            targets.retain(|id| topology.services[id.index()].protocol == Protocol::Http);
        }
        let resolved = selector
            .datacenter
            .as_ref()
            .is_none_or(|dc| topology.datacenters.iter().any(|d| d.name == *dc))
            && selector
                .service
                .as_ref()
                .is_none_or(|s| topology.service(s).is_some());
        if targets.is_empty()
            && resolved
            && (selector.datacenter.is_some() || selector.service.is_some())
        {
            let why = if http_only {
                "; method, path_prefix and action = \"error\" apply to http services only"
            } else if selector.datacenter.is_some() && selector.service.is_some() {
                "; the service is not in that datacenter"
            } else {
                ""
            };
            self.problem(None, format!("the selector matches no service{why}"));
        }
        let after = raw.after.map_or(Duration::ZERO, |d| d.0);
        if after >= max_duration {
            self.problem(
                None,
                format!(
                    "starts after {} but the scenario ends after {} (max_duration); it would never run",
                    humantime::format_duration(after),
                    humantime::format_duration(max_duration)
                ),
            );
        }
        if let Some(duration) = &raw.duration {
            if duration.get_ref().0.is_zero() {
                self.problem(
                    Some(duration.span()),
                    "duration must be positive".to_owned(),
                );
            }
        }
        Fault {
            uid: ((scenario_index as u64) << 32) | self.index as u64,
            scenario: Arc::from(self.scenario),
            index: self.index,
            selector,
            targets,
            action,
            probability: raw.probability.map_or(1.0, |p| p.0),
            after,
            duration: raw.duration.as_ref().map(|d| d.get_ref().0),
        }
    }

    fn selector(&mut self, raw: &raw::Fault, topology: &Topology) -> Selector {
        let broken = self.broken;
        if let Some(dc) = &raw.datacenter {
            if !topology
                .datacenters
                .iter()
                .any(|d| *d.name == **dc.get_ref())
            {
                let known: Vec<&str> = topology.datacenters.iter().map(|d| &*d.name).collect();
                self.problem(
                    Some(dc.span()),
                    format!(
                        "names unknown datacenter `{}`; known: {}",
                        dc.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
        if let Some(service) = &raw.service {
            if topology.service(service.get_ref()).is_none() && !broken.contains(service.get_ref())
            {
                let known: Vec<&str> = topology.services.iter().map(|s| &*s.name).collect();
                self.problem(
                    Some(service.span()),
                    format!(
                        "names unknown service `{}`; known: {}",
                        service.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
        if raw.datacenter.is_none() && raw.service.is_none() {
            self.problem(
                None,
                "a fault needs a selector: set `datacenter`, `service` or both".to_owned(),
            );
        }
        let method = raw.method.as_ref().and_then(|m| {
            match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(method) => Some(method),
                Err(_) => {
                    self.problem(
                        Some(m.span()),
                        format!("`{}` is not an HTTP method", m.get_ref()),
                    );
                    None
                }
            }
        });
        if let Some(prefix) = &raw.path_prefix {
            if !prefix.get_ref().starts_with('/') {
                self.problem(
                    Some(prefix.span()),
                    format!("path_prefix `{}` must start with `/`", prefix.get_ref()),
                );
            }
        }
        Selector {
            datacenter: raw
                .datacenter
                .as_ref()
                .map(|d| Arc::from(d.get_ref().as_str())),
            service: raw
                .service
                .as_ref()
                .map(|s| Arc::from(s.get_ref().as_str())),
            method,
            path_prefix: raw.path_prefix.as_ref().map(|p| p.get_ref().clone()),
        }
    }

    fn action(&mut self, raw: &raw::Fault) -> Action {
        let kind = raw.action;
        if kind != ActionKind::Delay {
            self.unused(&raw.latency, "latency", kind, "delay");
            self.unused(&raw.jitter, "jitter", kind, "delay");
            self.unused(&raw.direction, "direction", kind, "delay");
        }
        if kind != ActionKind::Error {
            self.unused(&raw.status, "status", kind, "error");
            self.unused(&raw.body, "body", kind, "error");
            self.unused(&raw.headers, "headers", kind, "error");
        }
        match kind {
            ActionKind::Blackhole => Action::Blackhole,
            ActionKind::Drop => Action::Drop,
            ActionKind::Delay => {
                if raw.latency.is_none() && raw.jitter.is_none() {
                    self.problem(
                        None,
                        "action = \"delay\" needs `latency` (and optionally `jitter`), like latency = \"200ms\"".to_owned(),
                    );
                }
                Action::Delay(Delay {
                    latency: raw
                        .latency
                        .as_ref()
                        .map_or(Duration::ZERO, |d| d.get_ref().0),
                    jitter: raw
                        .jitter
                        .as_ref()
                        .map_or(Duration::ZERO, |d| d.get_ref().0),
                    direction: raw
                        .direction
                        .as_ref()
                        .map_or(Direction::Both, |d| *d.get_ref()),
                })
            }
            ActionKind::Error => Action::Error(self.error_response(raw)),
        }
    }

    fn error_response(&mut self, raw: &raw::Fault) -> ErrorResponse {
        let status = match &raw.status {
            None => {
                self.problem(
                    None,
                    "action = \"error\" needs `status`, like status = 503".to_owned(),
                );
                StatusCode::SERVICE_UNAVAILABLE
            }
            Some(status) => match StatusCode::from_u16(*status.get_ref()) {
                Ok(code) if (200..=599).contains(&code.as_u16()) => code,
                _ => {
                    self.problem(
                        Some(status.span()),
                        format!(
                            "status {} is not an HTTP status between 200 and 599",
                            status.get_ref()
                        ),
                    );
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        };
        let mut headers = HeaderMap::new();
        if let Some(raw_headers) = &raw.headers {
            for (name, value) in raw_headers.get_ref() {
                match (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    (Ok(name), _) if FRAMING.contains(&name.as_str()) => self.problem(
                        Some(raw_headers.span()),
                        format!(
                            "header `{name}` is set by firedrill itself and cannot be injected"
                        ),
                    ),
                    (Ok(name), Ok(value)) => {
                        headers.append(name, value);
                    }
                    (Err(_), _) => self.problem(
                        Some(raw_headers.span()),
                        format!("`{name}` is not a valid header name"),
                    ),
                    (_, Err(_)) => self.problem(
                        Some(raw_headers.span()),
                        format!("the value of header `{name}` is not a valid header value"),
                    ),
                }
            }
        }
        let body = raw.body.as_ref().map_or_else(
            || {
                Bytes::from(format!(
                    "firedrill: injected {} by scenario `{}`\n",
                    status.as_u16(),
                    self.scenario
                ))
            },
            |b| Bytes::from(b.get_ref().clone()),
        );
        ErrorResponse {
            status,
            body,
            headers,
        }
    }
}
