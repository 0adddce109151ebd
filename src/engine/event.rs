//! What the engine broadcasts: one [`Event`] for each thing that happens to
//! the active scenarios, in the order it happened. The bounded history of
//! `GET /events` is the fold of these events ([`History::apply`]); a live
//! page or a fleet follower subscribes to the same channel.
//!
//! [`History::apply`]: super::history::History::apply

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::Origin;

/// Something that happened in the engine, at a wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened; for an expiry or a completion, the activation's
    /// end, which the timer applies on time.
    pub at: SystemTime,
    pub what: Happened,
}

/// Why a guard stopped an activation: the guard, the value it read and
/// the threshold it crossed. Latencies are in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    /// The guard's `name` in the scenario's `stop_when`.
    pub guard: String,
    /// What the guard read; `None` (JSON `null`) when it could not read
    /// at all (a Prometheus that did not answer, under `on_error =
    /// "stop"`): `detail` says why.
    pub value: Option<f64>,
    pub above: f64,
    /// What was read, for a person: "error ratio 0.31 of services outside
    /// the scenario over 30s".
    pub detail: String,
}

// A guard's value is never NaN: a read without a number carries `None`.
impl Eq for Stop {}

/// Which activation an event is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    /// [`Activation::id`](super::Activation::id): unique within this process.
    pub id: u64,
    pub scenario: Arc<str>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A scenario became active, made here or adopted from a peer.
    Activated {
        subject: Subject,
        by: String,
        origin: Origin,
        started_at: SystemTime,
        expires_at: SystemTime,
    },
    /// An active scenario got a new end (a new duration, an adopted end,
    /// or a reload that cut it short).
    Rescheduled {
        subject: Subject,
        expires_at: SystemTime,
        by: String,
    },
    /// A fault of an active scenario came into force; `fault` is its
    /// index within the scenario.
    StageStarted { subject: Subject, fault: usize },
    /// A fault of an active scenario went out of force: its own end, or its
    /// scenario's.
    StageEnded { subject: Subject, fault: usize },
    /// One scenario was lifted by a caller.
    Lifted { subject: Subject, by: String },
    /// Its duration ran out.
    Expired { subject: Subject },
    /// Its last fault ended: every fault has a `duration`.
    Completed { subject: Subject },
    /// A guard of the scenario tripped and lifted it.
    Stopped { subject: Subject, stop: Stop },
    /// Every active scenario was lifted at once (`DELETE /faults`).
    Halted { by: String, lifted: Vec<Subject> },
    /// A new plan is in force; `lifted` are the active scenarios it no
    /// longer has.
    Reloaded { by: String, lifted: Vec<Subject> },
}

impl Event {
    /// The activation this event is about; `None` for a halt or a reload,
    /// which may concern several.
    pub fn subject(&self) -> Option<&Subject> {
        match &self.what {
            Happened::Activated { subject, .. }
            | Happened::Rescheduled { subject, .. }
            | Happened::StageStarted { subject, .. }
            | Happened::StageEnded { subject, .. }
            | Happened::Lifted { subject, .. }
            | Happened::Expired { subject }
            | Happened::Completed { subject }
            | Happened::Stopped { subject, .. } => Some(subject),
            Happened::Halted { .. } | Happened::Reloaded { .. } => None,
        }
    }

    /// The scenario this event is about, where it has one.
    pub fn scenario(&self) -> Option<&str> {
        self.subject().map(|s| &*s.scenario)
    }
}

/// The stages that ended and started between two sets of faults in force,
/// keyed by activation id and fault index: ended first, then started.
pub(super) fn stages(
    before: &BTreeMap<(u64, usize), Arc<str>>,
    after: &BTreeMap<(u64, usize), Arc<str>>,
) -> Vec<Happened> {
    let subject = |&(id, _): &(u64, usize), scenario: &Arc<str>| Subject {
        id,
        scenario: Arc::clone(scenario),
    };
    let ended = (before.iter())
        .filter(|(key, _)| !after.contains_key(key))
        .map(|(key, scenario)| Happened::StageEnded {
            subject: subject(key, scenario),
            fault: key.1,
        });
    let started = (after.iter())
        .filter(|(key, _)| !before.contains_key(key))
        .map(|(key, scenario)| Happened::StageStarted {
            subject: subject(key, scenario),
            fault: key.1,
        });
    ended.chain(started).collect()
}
