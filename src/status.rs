//! What `GET /status`, `GET /stream` and `firedrill status` show: each data
//! center and its services as `healthy`, `degraded` or `dark`, with rates,
//! error ratio and p99 over the last [`WINDOW`]. The state rules
//! ([`service_state`], [`datacenter_state`]) are pure; [`datacenters`] reads
//! the running model, the rules in force and the counters the proxy
//! already keeps, and writes nothing.

use std::sync::Arc;
use std::time::Duration;

use crate::admin::api;
use crate::fault::{Action, Fault};
use crate::live::Rules;
use crate::model::{Model, RunningService};
use crate::stats::{Stats, Window};

/// The window rates, ratios and quantiles cover: long enough to hold a few
/// samples, short enough that a recovery shows within seconds.
pub const WINDOW: Duration = Duration::from_secs(5);

/// The share of failed requests in the window from which a service reads
/// `dark` even without a fault that fails all its traffic (an upstream
/// that went away, say).
pub const DARK_RATIO: f64 = 0.95;

/// How a service or data center is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Healthy,
    Degraded,
    Dark,
}

impl State {
    /// The name the API and the page use.
    pub fn name(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Dark => "dark",
        }
    }
}

/// Whether `fault`, in force on a service, fails every request or
/// connection it gets: a drop, blackhole or injected error that always
/// hits (probability 1) and is not narrowed to a method or path.
pub fn fails_all(fault: &Fault) -> bool {
    let fails = matches!(
        fault.action,
        Action::Drop | Action::Blackhole | Action::Error(_)
    );
    let narrowed = fault.selector.method.is_some() || fault.selector.path_prefix.is_some();
    fails && fault.probability >= 1.0 && !narrowed
}

/// A service's state from the faults in force on it and its requests in
/// the window: `dark` when a fault fails all its traffic or at least
/// [`DARK_RATIO`] of its requests failed; `degraded` when any fault is in
/// force or any request failed; else `healthy`. `requests` and `failed`
/// count HTTP requests; a TCP service has none.
pub fn service_state(faults: &[Arc<Fault>], requests: u64, failed: u64) -> State {
    let ratio = (requests > 0).then(|| failed as f64 / requests as f64);
    if faults.iter().any(|f| fails_all(f)) || ratio.is_some_and(|r| r >= DARK_RATIO) {
        State::Dark
    } else if !faults.is_empty() || failed > 0 {
        State::Degraded
    } else {
        State::Healthy
    }
}

/// A data center's state from its services': `dark` when every one is
/// dark, `degraded` when any is not healthy, else `healthy` (also with no
/// service running).
pub fn datacenter_state(services: impl IntoIterator<Item = State>) -> State {
    let (mut any, mut all_dark, mut worst) = (false, true, State::Healthy);
    for state in services {
        any = true;
        all_dark &= state == State::Dark;
        worst = worst.max(state);
    }
    match worst {
        State::Dark if any && all_dark => State::Dark,
        State::Healthy => State::Healthy,
        State::Degraded | State::Dark => State::Degraded,
    }
}

/// Every data center now, the plan's in its order and then any only a
/// running service names, over the last `over`. `describe` gives a fault
/// in force as the API shows it.
pub fn datacenters(
    model: &Model,
    rules: &Rules,
    stats: &Stats,
    over: Duration,
    describe: impl Fn(&Fault) -> api::ServiceFault,
) -> Vec<api::DataCenterStatus> {
    let mut names: Vec<(&str, &str)> = (model.plan().topology.datacenters.iter())
        .map(|dc| (&*dc.name, dc.description.as_str()))
        .collect();
    for running in model.services() {
        let name = &*running.service.datacenter;
        if !names.iter().any(|(known, _)| *known == name) {
            names.push((name, ""));
        }
    }
    names
        .into_iter()
        .map(|(name, description)| {
            let running: Vec<&RunningService> = (model.services().iter())
                .filter(|s| &*s.service.datacenter == name)
                .collect();
            let (states, services): (Vec<State>, Vec<api::ServiceStatus>) = (running.iter())
                .map(|s| service(s, rules, stats, over, &describe))
                .unzip();
            // Counters are kept by name and data center; a service a
            // reload removed keeps its own but no longer counts here.
            let window = stats.window_of(over, |counted| {
                counted.datacenter() == name
                    && running.iter().any(|s| *s.service.name == *counted.name())
            });
            api::DataCenterStatus {
                name: name.to_owned(),
                description: description.to_owned(),
                state: datacenter_state(states).name().to_owned(),
                requests_per_second: window.requests_per_second(),
                error_ratio: window.failed_ratio(),
                p99_seconds: window.p99().map(|d| d.as_secs_f64()),
                services,
            }
        })
        .collect()
}

fn service(
    running: &RunningService,
    rules: &Rules,
    stats: &Stats,
    over: Duration,
    describe: &impl Fn(&Fault) -> api::ServiceFault,
) -> (State, api::ServiceStatus) {
    let service = &running.service;
    let window: Window = stats.window_of(over, |counted| {
        *counted.name() == *service.name && *counted.datacenter() == *service.datacenter
    });
    let faults = rules.slot(running.slot);
    let state = service_state(faults, window.requests(), window.failed());
    let status = api::ServiceStatus {
        name: service.name.to_string(),
        protocol: service.protocol.name().to_owned(),
        state: state.name().to_owned(),
        requests_per_second: window.requests_per_second(),
        connections_per_second: window.connections_per_second(),
        connections_open: window.connections_open(),
        error_ratio: window.failed_ratio(),
        p99_seconds: window.p99().map(|d| d.as_secs_f64()),
        faults: faults.iter().map(|f| describe(f)).collect(),
    };
    (state, status)
}

#[cfg(test)]
mod tests;
