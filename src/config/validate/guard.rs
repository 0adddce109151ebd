//! Checks of a scenario's `stop_when` guards: one measure each, selectors
//! that resolve to HTTP services, a threshold of the measure's kind, a
//! Prometheus URL firedrill can reach. What runs, but not as meant, is a
//! warning (see `warn`).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

use super::super::raw::{self, Threshold};
use super::Report;
use crate::config::{Guard, Measure, OnError, Scope};
use crate::topology::{Protocol, Topology};

mod warn;
pub(super) use warn::warnings;

const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// The names the plan defines and the ones whose tables did not parse
/// (treated as defined, so one typo does not cascade).
pub(super) struct Names<'a> {
    pub topology: &'a Topology,
    pub broken: &'a HashSet<String>,
}

/// The guards of scenario `scenario`, each problem reported at the value
/// to fix.
pub(super) fn guards(
    scenario: &str,
    raw: &[Option<Spanned<raw::StopWhen>>],
    names: &Names<'_>,
    report: Report<'_>,
) -> Vec<Guard> {
    let mut seen = HashSet::new();
    let mut guards = Vec::new();
    for stop in raw.iter().flatten() {
        let name = &stop.get_ref().name;
        super::check_name("guard", name, report);
        if !seen.insert(name.get_ref().clone()) {
            report(
                name.span(),
                format!(
                    "scenario `{scenario}` has two guards named `{}`; give each its own name",
                    name.get_ref()
                ),
            );
        }
        let mut check = GuardCheck {
            prefix: format!("scenario `{scenario}` guard `{}`: ", name.get_ref()),
            span: stop.span(),
            report: &mut *report,
        };
        if let Some(guard) = check.guard(stop.get_ref(), names) {
            guards.push(guard);
        }
    }
    guards
}

struct GuardCheck<'r> {
    prefix: String,
    /// The guard's table, for problems no single field causes.
    span: Range<usize>,
    report: Report<'r>,
}

impl GuardCheck<'_> {
    fn problem(&mut self, span: Option<Range<usize>>, message: String) {
        let span = span.unwrap_or_else(|| self.span.clone());
        (self.report)(span, format!("{}{message}", self.prefix));
    }

    fn guard(&mut self, raw: &raw::StopWhen, names: &Names<'_>) -> Option<Guard> {
        let mut measures = Vec::new();
        if let Some(v) = &raw.error_ratio {
            measures.push(("error_ratio", v.span()));
        }
        if let Some(v) = &raw.p99_latency {
            measures.push(("p99_latency", v.span()));
        }
        if let Some(v) = &raw.prometheus {
            measures.push(("prometheus", v.span()));
        }
        if let [(first, _), (second, span), ..] = measures.as_slice() {
            self.problem(
                Some(span.clone()),
                format!("has both `{first}` and `{second}`; a guard measures one thing, so give each its own [[stop_when]] table"),
            );
            return None;
        }
        let window = raw
            .window
            .as_ref()
            .map_or(DEFAULT_WINDOW, |w| w.get_ref().0);
        if let Some(w) = &raw.window {
            self.window(w);
        }
        let measure = if let Some(selector) = &raw.error_ratio {
            self.prometheus_only(raw);
            Measure::ErrorRatio {
                scope: self.scope("error_ratio", selector, names)?,
                window,
            }
        } else if let Some(selector) = &raw.p99_latency {
            self.prometheus_only(raw);
            Measure::P99Latency {
                scope: self.scope("p99_latency", selector, names)?,
                window,
            }
        } else if let Some(url) = &raw.prometheus {
            if let Some(w) = &raw.window {
                self.problem(
                    Some(w.span()),
                    "`window` applies to error_ratio and p99_latency; a prometheus query sets its own range, like [1m]".to_owned(),
                );
            }
            self.prometheus(url, raw)?
        } else {
            self.problem(
                None,
                "measures nothing; add error_ratio = { outside = true }, p99_latency = { service = \"...\" }, or prometheus = \"http://...\" with a query".to_owned(),
            );
            return None;
        };
        let above = self.above(&measure, raw.above.as_ref())?;
        Some(Guard {
            name: Arc::from(raw.name.get_ref().as_str()),
            measure,
            above,
            hold: raw.hold.as_ref().map_or(Duration::ZERO, |h| h.get_ref().0),
        })
    }

    fn window(&mut self, window: &Spanned<raw::HumanDuration>) {
        let value = window.get_ref().0;
        let most = crate::stats::HISTORY;
        let human = humantime::format_duration;
        if value.is_zero() {
            self.problem(
                Some(window.span()),
                "`window` must be positive, like \"30s\"".to_owned(),
            );
        } else if value > most {
            self.problem(
                Some(window.span()),
                format!(
                    "`window` {} reaches past the {} of history firedrill keeps; use at most \"{}\"",
                    human(value),
                    human(most),
                    human(most)
                ),
            );
        }
    }

    /// Complains about the fields only a prometheus guard takes.
    fn prometheus_only(&mut self, raw: &raw::StopWhen) {
        let fields = [
            ("query", raw.query.as_ref().map(|q| q.span())),
            ("on_error", raw.on_error.as_ref().map(|o| o.span())),
        ];
        for (field, span) in fields {
            if let Some(span) = span {
                self.problem(
                    Some(span),
                    format!("`{field}` only applies to a prometheus guard"),
                );
            }
        }
    }

    fn scope(
        &mut self,
        kind: &str,
        selector: &Spanned<raw::BuiltIn>,
        names: &Names<'_>,
    ) -> Option<Scope> {
        let raw = selector.get_ref();
        let given: Vec<(&str, Range<usize>)> = [
            ("outside", raw.outside.as_ref().map(|v| v.span())),
            ("datacenter", raw.datacenter.as_ref().map(|v| v.span())),
            ("service", raw.service.as_ref().map(|v| v.span())),
        ]
        .into_iter()
        .filter_map(|(name, span)| Some((name, span?)))
        .collect();
        match given.as_slice() {
            [] => {
                self.problem(
                    Some(selector.span()),
                    format!("`{kind}` needs one of outside = true, datacenter = \"...\" or service = \"...\""),
                );
                return None;
            }
            [(first, _), (second, span), ..] => {
                self.problem(
                    Some(span.clone()),
                    format!("`{kind}` reads one of outside, datacenter or service, not both `{first}` and `{second}`"),
                );
                return None;
            }
            [_] => {}
        }
        let topology = names.topology;
        if let Some(outside) = &raw.outside {
            if !*outside.get_ref() {
                self.problem(
                    Some(outside.span()),
                    "outside = false selects nothing; write outside = true, or name a datacenter or service".to_owned(),
                );
                return None;
            }
            return Some(Scope::Outside);
        }
        if let Some(dc) = &raw.datacenter {
            let name = dc.get_ref();
            if !topology.datacenters.iter().any(|d| &*d.name == name) {
                if !names.broken.contains(name) {
                    let known: Vec<&str> = topology.datacenters.iter().map(|d| &*d.name).collect();
                    self.problem(
                        Some(dc.span()),
                        format!(
                            "names unknown datacenter `{name}`; known: {}",
                            known.join(", ")
                        ),
                    );
                }
                return None;
            }
            return Some(Scope::DataCenter(Arc::from(name.as_str())));
        }
        let service = raw.service.as_ref()?;
        let name = service.get_ref();
        match topology.services.iter().find(|s| &*s.name == name) {
            Some(found) if found.protocol == Protocol::Tcp => {
                self.problem(
                    Some(service.span()),
                    format!("service `{name}` is tcp, and `{kind}` reads HTTP requests; guard an http service or a datacenter"),
                );
                None
            }
            Some(_) => Some(Scope::Service(Arc::from(name.as_str()))),
            None => {
                if !names.broken.contains(name) {
                    let known: Vec<&str> = topology.services.iter().map(|s| &*s.name).collect();
                    self.problem(
                        Some(service.span()),
                        format!(
                            "names unknown service `{name}`; known: {}",
                            known.join(", ")
                        ),
                    );
                }
                None
            }
        }
    }

    fn prometheus(&mut self, url: &Spanned<String>, raw: &raw::StopWhen) -> Option<Measure> {
        let text = url.get_ref();
        let parsed = text.parse::<http::Uri>().ok().filter(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.host().is_some_and(|h| !h.is_empty())
                && uri.query().is_none()
        });
        let Some(parsed) = parsed else {
            self.problem(
                Some(url.span()),
                format!("`prometheus` must be the server's http:// or https:// URL, like \"http://127.0.0.1:9090\", not \"{text}\""),
            );
            return None;
        };
        let query = raw
            .query
            .as_ref()
            .filter(|q| !q.get_ref().trim().is_empty());
        let Some(query) = query else {
            let span = raw.query.as_ref().map(|q| q.span());
            self.problem(
                span,
                "a prometheus guard needs `query`, the PromQL it evaluates, like query = 'sum(rate(http_requests_total{code=~\"5..\"}[1m]))'".to_owned(),
            );
            return None;
        };
        let on_error = match raw.on_error.as_ref().map(|o| *o.get_ref()) {
            None | Some(raw::OnError::Stop) => OnError::Stop,
            Some(raw::OnError::Continue) => OnError::Continue,
        };
        Some(Measure::Prometheus {
            url: parsed,
            query: query.get_ref().clone(),
            on_error,
        })
    }

    /// The threshold in the measure's unit: a ratio from 0 to 1, a latency
    /// in seconds, or a PromQL value.
    fn above(&mut self, measure: &Measure, above: Option<&Spanned<Threshold>>) -> Option<f64> {
        let kind = measure.kind();
        let Some(above) = above else {
            let example = match measure {
                Measure::ErrorRatio { .. } => "above = 0.05",
                Measure::P99Latency { .. } => "above = \"750ms\"",
                Measure::Prometheus { .. } => "above = 1",
            };
            self.problem(
                None,
                format!("needs `above`, the threshold it trips over, like {example}"),
            );
            return None;
        };
        let span = Some(above.span());
        match (measure, *above.get_ref()) {
            (Measure::ErrorRatio { .. }, Threshold::Number(n)) if (0.0..1.0).contains(&n) => {
                Some(n)
            }
            (Measure::ErrorRatio { .. }, Threshold::Number(n)) => {
                self.problem(
                    span,
                    format!("`above` of error_ratio is a ratio from 0 up to 1, like 0.05, not {n}"),
                );
                None
            }
            (Measure::ErrorRatio { .. }, Threshold::Duration(_)) => {
                self.problem(
                    span,
                    "`above` of error_ratio is a ratio like 0.05, not a duration".to_owned(),
                );
                None
            }
            (Measure::P99Latency { .. }, Threshold::Duration(d)) => Some(d.0.as_secs_f64()),
            (Measure::P99Latency { .. }, Threshold::Number(n)) => {
                self.problem(
                    span,
                    format!(
                        "`above` of p99_latency is a duration with a unit, like \"800ms\", not {n}"
                    ),
                );
                None
            }
            (Measure::Prometheus { .. }, Threshold::Number(n)) => Some(n),
            (Measure::Prometheus { .. }, Threshold::Duration(_)) => {
                self.problem(
                    span,
                    format!("`above` of {kind} is the number its query's value is compared with, like 1, not a duration"),
                );
                None
            }
        }
    }
}
