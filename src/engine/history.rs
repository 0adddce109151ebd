//! The recent activations and how each ended, newest first, for `GET
//! /events` (and Grafana annotations): the fold of the engine's broadcast
//! [`Event`]s into one [`Record`] per activation. Bounded: the oldest
//! records go.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use super::event::{Event, Happened, Stop, Subject};

/// How many activations the history keeps.
pub const CAPACITY: usize = 200;

/// How an activation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `DELETE /faults/{scenario}`, or a reload without the scenario.
    Lifted,
    /// Its duration ran out.
    Expired,
    /// Its last fault ended: every fault has a `duration`.
    Completed,
    /// `DELETE /faults`, the big red button.
    Halted,
    /// A guard of its `stop_when` tripped.
    Stopped,
}

impl Ending {
    pub fn name(self) -> &'static str {
        match self {
            Ending::Lifted => "lifted",
            Ending::Expired => "expired",
            Ending::Completed => "completed",
            Ending::Halted => "halted",
            Ending::Stopped => "stopped",
        }
    }
}

/// The record of one activation, from start to end (the broadcast
/// [`Event`]s are its steps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub scenario: Arc<str>,
    pub activated_by: String,
    pub started_at: SystemTime,
    pub expires_at: SystemTime,
    /// When, how and by whom it ended; `None` while it is active.
    pub ended: Option<(SystemTime, Ending, Option<String>)>,
    /// The guard that stopped it, for [`Ending::Stopped`].
    pub stopped_by: Option<Stop>,
}

/// The bounded list of recent activations, oldest first inside.
#[derive(Debug, Default)]
pub struct History {
    records: VecDeque<Record>,
}

impl History {
    /// Applies one event: the only way the history changes.
    pub fn apply(&mut self, event: &Event) {
        let at = event.at;
        match &event.what {
            Happened::Activated {
                subject,
                by,
                started_at,
                expires_at,
                ..
            } => {
                if self.records.len() == CAPACITY {
                    self.records.pop_front();
                }
                self.records.push_back(Record {
                    id: subject.id,
                    scenario: Arc::clone(&subject.scenario),
                    activated_by: by.clone(),
                    started_at: *started_at,
                    expires_at: *expires_at,
                    ended: None,
                    stopped_by: None,
                });
            }
            Happened::Rescheduled {
                subject,
                expires_at,
                ..
            } => {
                if let Some(record) = self.find(subject) {
                    record.expires_at = *expires_at;
                }
            }
            Happened::StageStarted { .. } | Happened::StageEnded { .. } => {}
            Happened::Lifted { subject, by } => self.end(subject, at, Ending::Lifted, Some(by)),
            Happened::Expired { subject } => self.end(subject, at, Ending::Expired, None),
            Happened::Completed { subject } => self.end(subject, at, Ending::Completed, None),
            Happened::Stopped { subject, stop } => {
                let by = format!("guard {}", stop.guard);
                self.end(subject, at, Ending::Stopped, Some(&by));
                if let Some(record) = self.find(subject) {
                    record.stopped_by = Some(stop.clone());
                }
            }
            Happened::Halted { by, lifted } => {
                for subject in lifted {
                    self.end(subject, at, Ending::Halted, Some(by));
                }
            }
            Happened::Reloaded { by, lifted } => {
                for subject in lifted {
                    self.end(subject, at, Ending::Lifted, Some(by));
                }
            }
        }
    }

    fn find(&mut self, subject: &Subject) -> Option<&mut Record> {
        // Newest first: an activation still running is near the back.
        self.records.iter_mut().rev().find(|r| r.id == subject.id)
    }

    fn end(&mut self, subject: &Subject, at: SystemTime, how: Ending, by: Option<&str>) {
        if let Some(record) = self.find(subject) {
            record.ended = Some((at, how, by.map(str::to_owned)));
        }
    }

    /// The records, newest first.
    pub fn newest_first(&self) -> Vec<Record> {
        self.records.iter().rev().cloned().collect()
    }
}
