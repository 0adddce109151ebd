//! Impact reports: for every activation that ends (lifted, expired,
//! completed, halted or stopped by a guard), the numbers of each data
//! center and service before, during and after it, the faults it injected,
//! how long each service took to answer again, and who started and ended
//! it. [`collect`](collect::spawn) folds the engine's events and the stats
//! into [`Report`]s; [`Reports`] keeps the last [`KEEP`]; `markdown.rs`
//! writes one for a retro, with a text chart from `chart.rs`.

mod build;
mod chart;
mod collect;
mod markdown;

pub use collect::{spawn, RECOVERY_POLL};
pub use markdown::markdown;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::engine::{Origin, Stop};

/// How many reports are kept in memory; the oldest goes first.
pub const KEEP: usize = 50;

/// One activation's impact (`GET /reports/{id}`). Times are RFC 3339,
/// durations human-readable, latencies and ratios plain numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The activation's id, unique within this run of firedrill.
    pub id: String,
    pub scenario: String,
    pub description: String,
    pub activated_by: String,
    pub origin: Origin,
    pub started_at: String,
    pub ended_at: String,
    /// How long it was active.
    pub duration: String,
    /// `lifted`, `expired`, `completed`, `halted` or `stopped`.
    pub ended: String,
    /// The caller who lifted or halted it, or `guard NAME`; `null` for an
    /// expiry or a completion.
    pub ended_by: Option<String>,
    /// The guard that stopped it, when `ended` is `stopped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<Stop>,
    /// `false` while the time after the activation is still measured:
    /// `after` phases are then `null` and recoveries `pending`.
    pub complete: bool,
    /// How long before the start the `before` phase reaches (less when
    /// firedrill had not run that long: each phase says its own span).
    pub before: String,
    /// How long after the end the `after` phase and recoveries are
    /// measured (`[reports] after`).
    pub after: String,
    /// How often recovery is looked for: each recovery time is late by
    /// at most this much.
    pub recovery_precision: String,
    pub datacenters: Vec<DataCenterImpact>,
    /// The error ratio of each data center over the activation.
    pub chart: Chart,
}

/// One data center: its services summed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataCenterImpact {
    pub name: String,
    pub before: Phase,
    pub during: Phase,
    pub after: Option<Phase>,
    /// Connections and requests the scenario's `drop` and `blackhole`
    /// faults cut or froze during the activation.
    pub connections_cut: u64,
    /// The scenario's faults applied during the activation, by action.
    pub faults: Vec<FaultCount>,
    pub services: Vec<ServiceImpact>,
}

/// One service of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceImpact {
    pub name: String,
    /// `http` or `tcp`.
    pub protocol: String,
    pub before: Phase,
    pub during: Phase,
    pub after: Option<Phase>,
    pub connections_cut: u64,
    pub faults: Vec<FaultCount>,
    pub recovery: Recovery,
}

/// What happened over one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// The time it covers.
    pub span: String,
    /// HTTP requests whose fate was decided.
    pub requests: u64,
    /// Of those, failed: dropped, blackholed, an injected or upstream
    /// error, or any 5xx answer.
    pub failed: u64,
    /// `failed / requests`; `null` without requests.
    pub error_ratio: Option<f64>,
    /// Client-observed latency quantiles in seconds; `null` without
    /// answers.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Client connections accepted (tcp and http).
    pub connections: u64,
}

/// Faults of one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCount {
    pub action: String,
    pub count: u64,
}

/// How long a service took, from the activation's end, to count a request
/// that did not fail (for tcp, a connection forwarded to its upstream).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// `recovered`; `pending` while still measured; `not_recovered` when
    /// requests (or connections) came within `after` but every one
    /// failed; `no_requests` when none came.
    pub state: String,
    /// For `recovered`: seconds from the end to the first successful
    /// request, late by at most `recovery_precision`.
    pub seconds: Option<f64>,
}

/// The per-second error ratio of each data center over an activation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chart {
    /// Seconds each point covers: 1, or more for a long activation, which
    /// is charted in at most 60 points.
    pub seconds_per_point: u64,
    pub datacenters: Vec<ChartSeries>,
}

/// One data center's points: `null` where it had no request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChartSeries {
    pub name: String,
    pub error_ratio: Vec<Option<f64>>,
}

/// The kept reports, the last [`KEEP`]. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<VecDeque<Report>>>);

impl Reports {
    /// `each` of every kept report, newest first.
    pub fn newest_first<T>(&self, each: impl FnMut(&Report) -> T) -> Vec<T> {
        self.lock().iter().rev().map(each).collect()
    }

    /// The report `id`, if it is kept.
    pub fn get(&self, id: &str) -> Option<Report> {
        self.lock().iter().find(|r| r.id == id).cloned()
    }

    /// Keeps `report`, replacing the one with its id (an incomplete one
    /// made complete), or else as the newest, dropping the oldest past
    /// [`KEEP`].
    pub(crate) fn keep(&self, report: Report) {
        let mut reports = self.lock();
        if let Some(kept) = reports.iter_mut().find(|r| r.id == report.id) {
            *kept = report;
            return;
        }
        if reports.len() == KEEP {
            reports.pop_front();
        }
        reports.push_back(report);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Report>> {
        // A std mutex: held only to copy or swap a report, never across
        // an await; each change is one insert or replace, so a poisoned
        // lock is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
