//! The admin API's request and answer bodies as typed structs: the server
//! writes them, a client (a CLI, a fleet peer) reads them with the same
//! types. Times are RFC 3339 with milliseconds and durations human-readable
//! ("1m 30s"), as the plan writes them. A client should ignore fields it
//! does not know: answers may gain some. `#[serde(flatten)]` shares an
//! action's fields between the three kinds of fault; it is only used on
//! answers, whose unknown fields a reader ignores anyway.

use serde::{Deserialize, Serialize};

pub use crate::engine::{Origin, Stop};

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"`.
    pub status: String,
}

/// The optional body of `POST /faults/{scenario}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// How long the activation lasts from its start ("10m"), capped at the
    /// scenario's `max_duration`; on an active scenario, its new length.
    pub duration: Option<String>,
}

/// A fault's action and its parameters, as the plan writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// `delay`, `error`, `blackhole` or `drop`.
    pub action: String,
    pub probability: f64,
    /// `delay` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// `delay` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<String>,
    /// `delay` only: `both`, `upstream` or `downstream`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `error` only: the HTTP status answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

/// One fault of an activation, with when it is in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationFault {
    #[serde(flatten)]
    pub action: Action,
    /// Its position within the scenario.
    pub index: usize,
    /// The data centers and services it hits, in plan order.
    pub datacenters: Vec<String>,
    pub services: Vec<String>,
    /// Absent when the activation ends before the fault's `after`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    /// `pending`, `active`, `ended`, or `never`.
    pub state: String,
}

/// One activation of a scenario (`GET /faults`, `POST /faults/{scenario}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Activation {
    pub scenario: String,
    pub description: String,
    pub started_at: String,
    pub expires_at: String,
    /// Whole seconds left, human-readable.
    pub remaining: String,
    pub activated_by: String,
    /// `"local"`, or `{"peer": "NAME"}` for one adopted from a peer.
    pub origin: Origin,
    pub faults: Vec<ActivationFault>,
    /// The scenario's `stop_when` guards and what each reads now.
    #[serde(default)]
    pub guards: Vec<Guard>,
}

/// One guard of an active scenario, as last evaluated (about once a
/// second).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    pub name: String,
    /// `error_ratio`, `p99_latency` or `prometheus`.
    pub kind: String,
    /// `ok`, `pending` (the condition holds, not yet for `for`),
    /// `tripped`, or `error` (it could not be read: `detail` says why).
    pub state: String,
    /// The value last read (latencies in seconds); `null` before the first
    /// evaluation, without traffic, or on an error.
    pub value: Option<f64>,
    /// The threshold (latencies in seconds).
    pub above: f64,
    /// The `for` the condition must hold, human-readable.
    #[serde(rename = "for")]
    pub hold: String,
    /// While `pending`: how long the condition has held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_for: Option<String>,
    /// What it reads, or why it could not.
    pub detail: String,
}

/// The answer to `POST /faults/{scenario}`: the activation and what the
/// request did to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivateAnswer {
    #[serde(flatten)]
    pub activation: Activation,
    /// `activated`, `already_active`, `extended`, `shortened`, `unchanged`
    /// or `lifted`.
    pub status: String,
    /// When it was to end before a new duration moved its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<String>,
    pub already_active: bool,
    /// Whether `max_duration` cut the duration asked for.
    pub capped: bool,
    pub requested_duration: Option<String>,
}

/// `GET /faults`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultList {
    pub active: Vec<Activation>,
}

/// `DELETE /faults/{scenario}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiftAnswer {
    pub scenario: String,
    /// `false` when it was not active.
    pub lifted: bool,
}

/// `DELETE /faults`: the scenarios lifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaltAnswer {
    pub lifted: Vec<String>,
}

/// One recent activation in `GET /events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub scenario: String,
    pub activated_by: String,
    pub started_at: String,
    pub expires_at: String,
    /// The rest is `null` while it is active.
    pub ended_at: Option<String>,
    /// `lifted`, `expired`, `completed`, `halted` or `stopped`.
    pub ended: Option<String>,
    /// The caller; `null` for an expiry or a completion.
    pub ended_by: Option<String>,
    /// The start in Unix milliseconds, for annotation sources.
    pub time: u64,
    pub time_end: Option<u64>,
    /// The guard that stopped it, when `ended` is `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<Stop>,
}

/// `GET /events`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventList {
    pub events: Vec<EventRecord>,
}

/// One fault of a scenario in the catalogue, as the plan defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioFault {
    #[serde(flatten)]
    pub action: Action,
    pub index: usize,
    /// The selector; `null` where the plan gives none.
    pub datacenter: Option<String>,
    pub service: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub after: String,
    pub duration: Option<String>,
    /// What the selector hits, in plan order.
    pub datacenters: Vec<String>,
    pub services: Vec<String>,
}

/// One scenario of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub max_duration: String,
    pub active: bool,
    pub faults: Vec<ScenarioFault>,
}

/// `GET /scenarios`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioList {
    pub scenarios: Vec<Scenario>,
}

/// A fault in force on a service now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceFault {
    #[serde(flatten)]
    pub action: Action,
    pub scenario: String,
    pub index: usize,
}

/// One service and the faults in force on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub description: String,
    /// `http` or `tcp`.
    pub protocol: String,
    pub listen: String,
    pub upstream: String,
    pub upstream_skip_verify: bool,
    pub faults: Vec<ServiceFault>,
}

/// One data center and its services.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCenter {
    pub name: String,
    pub description: String,
    pub services: Vec<Service>,
}

/// `GET /topology`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    pub datacenters: Vec<DataCenter>,
}

/// What `POST /reload` did, service by service: the control's own report.
pub use crate::control::Reloaded;

/// `POST /reload` when it worked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub reloaded: Reloaded,
}

/// One located problem of a refused plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every failure: `{"error": "..."}`, with the plan's scenarios for an
/// unknown one and the located errors for a refused plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<PlanError>>,
}

impl ErrorBody {
    /// An error with nothing more than its message.
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            known: None,
            errors: None,
        }
    }
}

/// `GET /status` (and each update of `GET /stream`): every data center and
/// its services as the status page and `firedrill status` show them, over
/// the last [`Status::window`], and the scenarios active now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When it was computed.
    pub at: String,
    /// The window rates, ratios and quantiles cover ("5s").
    pub window: String,
    pub datacenters: Vec<DataCenterStatus>,
    pub active: Vec<Activation>,
}

/// One data center now: `dark` when every service is dark, `degraded` when
/// any is not healthy, else `healthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCenterStatus {
    pub name: String,
    pub description: String,
    /// `healthy`, `degraded` or `dark`.
    pub state: String,
    pub requests_per_second: f64,
    /// Failed over all HTTP requests; `null` without requests.
    pub error_ratio: Option<f64>,
    /// Client-observed p99 latency in seconds; `null` without answers.
    pub p99_seconds: Option<f64>,
    pub services: Vec<ServiceStatus>,
}

/// One service now. `dark`: a fault in force fails all its traffic, or
/// nearly every request in the window failed; `degraded`: a fault is in
/// force on it, or some requests failed; else `healthy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// `http` or `tcp`.
    pub protocol: String,
    /// `healthy`, `degraded` or `dark`.
    pub state: String,
    pub requests_per_second: f64,
    pub connections_per_second: f64,
    pub connections_open: i64,
    pub error_ratio: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// The faults in force on it now.
    pub faults: Vec<ServiceFault>,
}

/// One kept impact report in `GET /reports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSummary {
    /// What `GET /reports/{id}` and `firedrill report ID` take.
    pub id: String,
    pub scenario: String,
    pub started_at: String,
    pub ended_at: String,
    /// `lifted`, `expired`, `completed`, `halted` or `stopped`.
    pub ended: String,
    /// `false` while the minute after the activation is still being
    /// measured.
    pub complete: bool,
}

/// `GET /reports`, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportList {
    pub reports: Vec<ReportSummary>,
}

/// `GET /reports/{id}`: one impact report, with its data centers,
/// services, phases, faults, recoveries and chart.
pub use crate::report::{
    Chart, ChartSeries, DataCenterImpact, FaultCount, Phase, Recovery, Report, ServiceImpact,
};
/// One thing that happened in the engine, as `GET /stream` pushes it
/// (`event: engine`) the moment it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveEvent {
    pub at: String,
    /// `activated`, `rescheduled`, `stage_started`, `stage_ended`,
    /// `lifted`, `expired`, `completed`, `stopped`, `halted` or
    /// `reloaded`.
    pub kind: String,
    /// The scenarios it concerns (none for a reload that lifted nothing).
    pub scenarios: Vec<String>,
    /// The caller, where one caused it.
    pub by: Option<String>,
    /// The guard that stopped it, for `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<Stop>,
    /// A line for a person: "pangyo-fire activated by lead (127.0.0.1:5000)".
    pub text: String,
}
