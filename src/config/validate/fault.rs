//! Checks of one fault: its selector resolves and matches a service, its
//! fields fit its action, and it can run within its scenario.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use toml::Spanned;

use super::super::raw::{self, ActionKind};
use super::Report;
use crate::fault::{Action, Delay, Direction, ErrorResponse, Fault, Selector};
use crate::topology::{Protocol, ServiceId, Topology};

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

/// Checks the faults of one scenario, reporting each problem once.
pub(super) struct FaultCheck<'a, 'r> {
    pub scenario: &'a str,
    /// The fault's position in its scenario.
    pub index: usize,
    /// The fault's table, for problems no single field causes.
    pub span: Range<usize>,
    /// Names whose tables failed to parse; not reported again as unknown.
    pub broken: &'a HashSet<String>,
    pub report: Report<'r>,
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

    pub(super) fn fault(
        &mut self,
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
            uid: fault_uid(self.scenario, self.index),
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

/// A fault's identity: its scenario's name and its place in it, so a
/// reload that adds or reorders scenarios leaves the probability rolls of
/// open connections as they were. `DefaultHasher::new()` has fixed keys,
/// so the id is the same for every plan this process loads.
fn fault_uid(scenario: &str, index: usize) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    (scenario, index).hash(&mut hasher);
    hasher.finish()
}
