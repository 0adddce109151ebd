//! A [`Report`] from what the collector gathered about one activation: the
//! captures at its phases' edges, the per-second totals for the chart, and
//! each service's recovery. Pure: no clock, no locks.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Plan;
use crate::engine::{Origin, Stop};
use crate::stats::{Capture, FaultTally, ServiceStats, Window};

use super::{chart, DataCenterImpact, FaultCount, Phase, Recovery, Report, ServiceImpact};

/// One activation from its start: who started it, and the numbers then.
#[derive(Debug)]
pub(super) struct Started {
    pub id: u64,
    pub scenario: Arc<str>,
    pub by: String,
    pub origin: Origin,
    pub started_at: SystemTime,
    /// The plan in force at the start: its services are the ones reported.
    pub plan: Arc<Plan>,
    /// The start of the `before` phase, from the history, and how far
    /// back it was asked to reach.
    pub before: Capture,
    pub before_asked: Duration,
    pub start: Capture,
    /// Each data center's cumulative (requests, failed) at each chart
    /// tick, in the plan's order of data centers.
    pub totals: Vec<Vec<(u64, u64)>>,
}

/// How an activation ended, as its end event says.
#[derive(Debug)]
pub(super) struct Ending {
    pub at: SystemTime,
    /// `lifted`, `expired`, `completed`, `halted` or `stopped`.
    pub how: &'static str,
    pub by: Option<String>,
    pub stop: Option<Stop>,
}

/// One ended activation, measured until its `after` runs out.
#[derive(Debug)]
pub(super) struct Ended {
    pub started: Started,
    pub ending: Ending,
    pub end: Capture,
    pub after_asked: Duration,
    /// Per plan service: its successful requests at the end, and how long
    /// after the end it first had one more.
    pub baseline: Vec<u64>,
    pub recovered: Vec<Option<Duration>>,
}

/// Whether `stats` are the numbers of the plan's service `index`.
pub(super) fn is_service(plan: &Plan, index: usize) -> impl Fn(&ServiceStats) -> bool + '_ {
    move |stats| {
        let service = &plan.topology.services[index];
        *stats.name() == *service.name && *stats.datacenter() == *service.datacenter
    }
}

/// Whether `stats` are the numbers of a plan service in data center `dc`.
pub(super) fn in_datacenter<'a>(
    plan: &'a Plan,
    dc: &'a str,
) -> impl Fn(&ServiceStats) -> bool + 'a {
    move |stats| {
        stats.datacenter() == dc
            && (plan.topology.services.iter())
                .any(|s| *s.name == *stats.name() && *s.datacenter == *dc)
    }
}

/// Each data center's cumulative (requests, failed) in `capture`, in the
/// plan's order.
pub(super) fn totals(plan: &Plan, capture: &Capture) -> Vec<(u64, u64)> {
    let since_ever = Capture::empty(capture.at());
    (plan.topology.datacenters.iter())
        .map(|dc| {
            let window = since_ever.window(capture, in_datacenter(plan, &dc.name));
            (window.requests(), window.failed())
        })
        .collect()
}

/// The report of `ended`; complete with the capture at the end of its
/// `after`, else with `after` phases still to come.
pub(super) fn report(ended: &Ended, after: Option<&Capture>, precision: Duration) -> Report {
    let started = &ended.started;
    let plan = &*started.plan;
    let human = |d: Duration| humantime::format_duration(d).to_string();
    let scenario = &*started.scenario;
    let phases = |select: &dyn Fn(&ServiceStats) -> bool| {
        (
            phase(&started.before.window(&started.start, select)),
            phase(&started.start.window(&ended.end, select)),
            after.map(|after| phase(&ended.end.window(after, select))),
            started.start.faults(&ended.end, scenario, select),
        )
    };
    let services: Vec<ServiceImpact> = (0..plan.topology.services.len())
        .map(|index| {
            let service = &plan.topology.services[index];
            let (before, during, after_phase, faults) = phases(&is_service(plan, index));
            ServiceImpact {
                name: service.name.to_string(),
                protocol: service.protocol.name().to_owned(),
                recovery: recovery(ended.recovered[index], after_phase.as_ref(), after),
                before,
                during,
                after: after_phase,
                connections_cut: faults.cut(),
                faults: counts(&faults),
            }
        })
        .collect();
    let datacenters = (plan.topology.datacenters.iter())
        .map(|dc| {
            let (before, during, after, faults) = phases(&in_datacenter(plan, &dc.name));
            DataCenterImpact {
                name: dc.name.to_string(),
                before,
                during,
                after,
                connections_cut: faults.cut(),
                faults: counts(&faults),
                services: (plan.topology.services.iter().zip(&services))
                    .filter(|(s, _)| s.datacenter == dc.name)
                    .map(|(_, impact)| impact.clone())
                    .collect(),
            }
        })
        .collect();
    let names: Vec<String> = (plan.topology.datacenters.iter())
        .map(|dc| dc.name.to_string())
        .collect();
    let ending = &ended.ending;
    let active = ending
        .at
        .duration_since(started.started_at)
        .unwrap_or_default();
    Report {
        id: started.id.to_string(),
        scenario: scenario.to_owned(),
        description: plan
            .scenario(scenario)
            .map(|s| s.description.clone())
            .unwrap_or_default(),
        activated_by: started.by.clone(),
        origin: started.origin.clone(),
        started_at: timestamp(started.started_at),
        ended_at: timestamp(ending.at),
        duration: human(Duration::from_millis(active.as_millis() as u64)),
        ended: ending.how.to_owned(),
        ended_by: ending.by.clone(),
        stopped_by: ending.stop.clone(),
        complete: after.is_some(),
        before: human(started.before_asked),
        after: human(ended.after_asked),
        recovery_precision: human(precision),
        datacenters,
        chart: chart::chart(&names, &started.totals),
    }
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn phase(window: &Window) -> Phase {
    let span = Duration::from_millis(window.span().as_millis() as u64);
    Phase {
        span: humantime::format_duration(span).to_string(),
        requests: window.requests(),
        failed: window.failed(),
        error_ratio: window.failed_ratio(),
        p50_seconds: window.p50().map(|d| d.as_secs_f64()),
        p99_seconds: window.p99().map(|d| d.as_secs_f64()),
        connections: window.connections(),
    }
}

fn counts(tally: &FaultTally) -> Vec<FaultCount> {
    (tally.by_action().iter())
        .map(|(action, count)| FaultCount {
            action: (*action).to_owned(),
            count: *count,
        })
        .collect()
}

fn recovery(
    found: Option<Duration>,
    after: Option<&Phase>,
    complete: Option<&Capture>,
) -> Recovery {
    let state = match (found, after) {
        (Some(_), _) => "recovered",
        (None, _) if complete.is_none() => "pending",
        (None, Some(after)) if after.requests + after.connections > 0 => "not_recovered",
        (None, _) => "no_requests",
    };
    Recovery {
        state: state.to_owned(),
        seconds: found.map(|d| d.as_secs_f64()),
    }
}
