//! The API's views of the engine's and the plan's values: an activation
//! with its faults' windows and its guards' readings, a scenario's faults
//! with what they hit, an action as the plan writes it, the history's
//! events, and durations and times as the API writes them.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::api;
use crate::config::Plan;
use crate::engine::history::Record;
use crate::engine::Activation;
use crate::fault::{Action, Fault};
use crate::guard::{Guards, Reading, State as GuardState};
use crate::topology::Service;

/// A duration as the API writes it: `1m 30s`.
pub(super) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A time as the API writes it: RFC 3339 in UTC, to the millisecond.
pub(super) fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The action and its parameters, as the plan would write them.
pub(super) fn action(fault: &Fault) -> api::Action {
    let mut action = api::Action {
        action: fault.action.name().to_owned(),
        probability: fault.probability,
        latency: None,
        jitter: None,
        direction: None,
        status: None,
    };
    match &fault.action {
        Action::Delay(delay) => {
            action.latency = Some(human(delay.latency));
            action.jitter = Some(human(delay.jitter));
            action.direction = Some(delay.direction.name().to_owned());
        }
        Action::Error(error) => action.status = Some(error.status.as_u16()),
        Action::Blackhole | Action::Drop => {}
    }
    action
}

/// The names of the data centers and services `fault` hits, in plan
/// order, so a drill need not cross-read `/scenarios` and `/topology`.
fn targets(fault: &Fault, plan: &Plan) -> (Vec<String>, Vec<String>) {
    let topology = &plan.topology;
    let services: Vec<&Service> = fault
        .targets
        .iter()
        .filter_map(|id| topology.services.get(id.index()))
        .collect();
    let datacenters = (topology.datacenters.iter())
        .filter(|dc| services.iter().any(|s| s.datacenter == dc.name))
        .map(|dc| dc.name.to_string())
        .collect();
    let services = services.iter().map(|s| s.name.to_string()).collect();
    (datacenters, services)
}

/// One fault of a scenario as `GET /scenarios` lists it: its action,
/// selector, window and what it hits.
pub(super) fn scenario_fault(fault: &Fault, plan: &Plan) -> api::ScenarioFault {
    let (datacenters, services) = targets(fault, plan);
    let selector = &fault.selector;
    api::ScenarioFault {
        action: action(fault),
        index: fault.index,
        datacenter: selector.datacenter.as_deref().map(str::to_owned),
        service: selector.service.as_deref().map(str::to_owned),
        method: selector.method.as_ref().map(|m| m.as_str().to_owned()),
        path_prefix: selector.path_prefix.clone(),
        after: human(fault.after),
        duration: fault.duration.map(human),
        datacenters,
        services,
    }
}

/// One activation of the engine's history as `GET /events` lists it:
/// who started it and when, and how it ended. `time` and `time_end` are
/// Unix milliseconds, as annotation sources want them.
pub(super) fn event(record: Record) -> api::EventRecord {
    let millis = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    };
    let stopped_by = record.stopped_by;
    let (ended_at, ending, ended_by) = match record.ended {
        Some((at, how, by)) => (Some(at), Some(how.name().to_owned()), by),
        None => (None, None, None),
    };
    api::EventRecord {
        scenario: record.scenario.to_string(),
        activated_by: record.activated_by,
        started_at: timestamp(record.started_at),
        expires_at: timestamp(record.expires_at),
        ended_at: ended_at.map(timestamp),
        ended: ending,
        ended_by,
        time: millis(record.started_at),
        time_end: ended_at.map(millis),
        stopped_by,
    }
}

/// One guard's last reading, as the API shows it.
fn guard_view(reading: Reading) -> api::Guard {
    let pending_for = match reading.state {
        GuardState::Pending(held) => Some(human(Duration::from_secs(held.as_secs()))),
        _ => None,
    };
    api::Guard {
        name: reading.name.to_string(),
        kind: reading.kind.to_owned(),
        state: reading.state.name().to_owned(),
        value: reading.value,
        above: reading.above,
        hold: human(reading.hold),
        pending_for,
        detail: reading.detail,
    }
}

/// An activation with each fault's window and state, and its guards' last
/// readings.
pub(super) fn activation_view(activation: &Activation, guards: &Guards) -> api::Activation {
    let now = Instant::now();
    let faults = (activation.scenario.faults.iter())
        .map(|fault| {
            let (datacenters, services) = targets(fault, &activation.plan);
            let mut view = api::ActivationFault {
                action: action(fault),
                index: fault.index,
                datacenters,
                services,
                starts_at: None,
                ends_at: None,
                state: "never".to_owned(),
            };
            if let Some((from, until)) = activation.window(fault) {
                let (start, end) = (activation.started + from, activation.started + until);
                let state = if now < start {
                    "pending"
                } else if now < end {
                    "active"
                } else {
                    "ended"
                };
                view.starts_at = Some(timestamp(activation.started_at + from));
                view.ends_at = Some(timestamp(activation.started_at + until));
                view.state = state.to_owned();
            }
            view
        })
        .collect();
    let remaining = activation.expires.saturating_duration_since(now).as_secs();
    api::Activation {
        scenario: activation.scenario.name.to_string(),
        description: activation.scenario.description.clone(),
        started_at: timestamp(activation.started_at),
        expires_at: timestamp(activation.expires_at()),
        remaining: human(Duration::from_secs(remaining)),
        activated_by: activation.by.clone(),
        origin: activation.origin.clone(),
        faults,
        guards: guards
            .readings(activation)
            .into_iter()
            .map(guard_view)
            .collect(),
    }
}
