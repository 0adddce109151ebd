//! One activation of a scenario: when it started, when it ends, when each
//! of its faults is in force, and where it was made. A scenario whose
//! faults all have a `duration` ends with its last fault, before its
//! deadline.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::event::Subject;
use super::history::Ending;
use crate::config::Plan;
use crate::fault::{Fault, Scenario};

/// One activation of a scenario.
#[derive(Debug, Clone)]
pub struct Activation {
    /// Unique within this process; ties the activation to its history record.
    pub id: u64,
    pub scenario: Arc<Scenario>,
    /// The plan `scenario` comes from, which names the services it hits.
    pub plan: Arc<Plan>,
    pub started: Instant,
    pub started_at: SystemTime,
    /// When it ends: at `deadline`, or earlier when its last fault ends.
    pub expires: Instant,
    /// The end asked for (or `max_duration`), capped at `max_duration`.
    pub deadline: Instant,
    /// Who asked for it (the admin client's address, or the caller a peer
    /// names).
    pub by: String,
    /// Made here, or adopted from a peer.
    pub origin: Origin,
}

/// Where an activation was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// Through this process's admin API.
    Local,
    /// Elsewhere (a fleet member, another API), named by the peer; applied
    /// here with [`Engine::adopt`](super::Engine::adopt).
    Peer(String),
}

/// An activation made elsewhere, for [`Engine::adopt`](super::Engine::adopt):
/// wall-clock times, since the peer's clock readings mean nothing here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub scenario: String,
    /// When it started there; its stages keep their `after` from this.
    pub started_at: SystemTime,
    /// When it ends there; here too, capped at `max_duration` from its start.
    pub expires_at: SystemTime,
    /// The peer's name.
    pub peer: String,
    /// Who asked for it there.
    pub by: String,
}

impl Activation {
    pub fn expires_at(&self) -> SystemTime {
        self.started_at + (self.expires - self.started)
    }

    /// When the last fault ends, for a scenario whose every fault has a
    /// `duration`; `None` when a fault lasts as long as the activation.
    pub fn completion(&self) -> Option<Instant> {
        let faults = &self.scenario.faults;
        let ends: Option<Vec<Duration>> = faults
            .iter()
            .map(|f| f.duration.map(|d| f.after + d))
            .collect();
        ends?.into_iter().max().map(|end| self.started + end)
    }

    /// Moves the deadline, capped at `max_duration` from the start, and
    /// with it the end.
    pub(super) fn ending_at(mut self, deadline: Instant) -> Activation {
        self.deadline = deadline.min(self.started + self.scenario.max_duration);
        self.expires = self
            .completion()
            .map_or(self.deadline, |c| c.min(self.deadline));
        self
    }

    /// What its events name it by.
    pub fn subject(&self) -> Subject {
        Subject {
            id: self.id,
            scenario: Arc::clone(&self.scenario.name),
        }
    }

    /// How it ends when it runs out: `Completed` when its last fault ended
    /// before its deadline, `Expired` otherwise.
    pub fn ending(&self) -> Ending {
        if self.completion().is_some_and(|c| c <= self.deadline) {
            Ending::Completed
        } else {
            Ending::Expired
        }
    }

    /// Whether `fault` is in force at `now`.
    pub fn in_force(&self, fault: &Fault, now: Instant) -> bool {
        self.window(fault)
            .is_some_and(|(from, until)| self.started + from <= now && now < self.started + until)
    }

    /// When `fault` starts and ends within this activation, as offsets from
    /// the start; `None` when the activation ends before the fault starts.
    pub fn window(&self, fault: &Fault) -> Option<(Duration, Duration)> {
        let total = self.expires - self.started;
        let end = fault
            .duration
            .map_or(total, |d| (fault.after + d).min(total));
        (fault.after < end).then_some((fault.after, end))
    }
}

/// What [`Engine::activate`] did.
#[derive(Debug, Clone)]
pub enum Activated {
    New(Activation),
    /// The scenario was already active and no duration was given; nothing
    /// changed.
    Existing(Activation),
    /// The scenario was already active and a new duration moved its
    /// deadline. `previous` is when it was to end before; `ended` says the
    /// new end had already passed, so it was lifted now.
    Changed {
        activation: Activation,
        previous: Instant,
        ended: bool,
    },
}

/// What [`Engine::adopt`](super::Engine::adopt) did.
#[derive(Debug, Clone)]
pub enum Adopted {
    /// Applied: a new activation, or a new end for the one active here.
    Applied(Activated),
    /// Its end (or `max_duration` from its start) has passed: nothing was
    /// applied.
    Over,
}
