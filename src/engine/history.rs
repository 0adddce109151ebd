//! The recent activations and how each ended, newest first, for `GET
//! /events` (and Grafana annotations). Bounded: the oldest records go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use super::Activation;

/// How many activations the history keeps.
pub const CAPACITY: usize = 200;

/// How an activation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `DELETE /faults/{scenario}`.
    Lifted,
    /// Its duration ran out.
    Expired,
    /// Its last fault ended: every fault has a `duration`.
    Completed,
    /// `DELETE /faults`, the big red button.
    Halted,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Lifted => "lifted",
            Ending::Expired => "expired",
            Ending::Completed => "completed",
            Ending::Halted => "halted",
        }
    }
}

/// One activation, from start to end.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub scenario: Arc<str>,
    pub activated_by: String,
    pub started_at: SystemTime,
    pub expires_at: SystemTime,
    /// When, how and by whom it ended; `None` while it is active.
    pub ended: Option<(SystemTime, Ending, Option<String>)>,
}

/// The bounded list of recent activations, oldest first inside.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<Event>,
}

impl History {
    pub fn started(&mut self, activation: &Activation) {
        if self.events.len() == CAPACITY {
            self.events.pop_front();
        }
        self.events.push_back(Event {
            id: activation.id,
            scenario: Arc::clone(&activation.scenario.name),
            activated_by: activation.by.clone(),
            started_at: activation.started_at,
            expires_at: activation.expires_at(),
            ended: None,
        });
    }

    /// Records a new end of a running activation.
    pub fn rescheduled(&mut self, activation: &Activation) {
        if let Some(event) = self.events.iter_mut().rev().find(|e| e.id == activation.id) {
            event.expires_at = activation.expires_at();
        }
    }

    /// Records how an activation ended; `by` is `None` for expiry and
    /// completion.
    pub fn ended(
        &mut self,
        activation: &Activation,
        at: SystemTime,
        how: Ending,
        by: Option<&str>,
    ) {
        // Newest first: an activation still running is near the back.
        if let Some(event) = self.events.iter_mut().rev().find(|e| e.id == activation.id) {
            event.ended = Some((at, how, by.map(str::to_owned)));
        }
    }

    /// The records, newest first.
    pub fn newest_first(&self) -> Vec<Event> {
        self.events.iter().rev().cloned().collect()
    }
}
