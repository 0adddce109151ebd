//! `GET /stream`: server-sent events for the status page and `watch`. The
//! status (`event: status`, as `GET /status` answers it) every second and
//! right after each engine event, and every engine event (`event: engine`,
//! an [`api::LiveEvent`]) as it happens. It reads the engine's broadcast
//! and the counters; it never changes anything. It ends when shutdown
//! starts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event as Sent, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

use super::{api, status, AdminState};
use crate::engine::event::{Event, Happened, Subject};

/// How often the status is pushed without an engine event.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);

/// How soon a browser reconnects a dropped stream (sent as `retry:`).
const RECONNECT: Duration = Duration::from_secs(1);

pub(super) async fn stream(
    State(state): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Sent, Infallible>>> {
    let mut every = tokio::time::interval(STATUS_EVERY);
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        events: state.engine.subscribe(),
        changes: state.engine.live().subscribe(),
        state,
        every,
        queue: VecDeque::new(),
        first: true,
    };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let sent = feed.next().await?;
        Some((Ok(sent), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// What one open stream reads from, and what it has yet to send.
struct Feed {
    state: AdminState,
    events: broadcast::Receiver<Event>,
    /// Rule changes, to end the stream when shutdown starts rather than
    /// hold the admin API's drain.
    changes: watch::Receiver<u64>,
    every: Interval,
    queue: VecDeque<Sent>,
    first: bool,
}

impl Feed {
    /// The next message; `None` once shutdown has started.
    async fn next(&mut self) -> Option<Sent> {
        if let Some(sent) = self.queue.pop_front() {
            return Some(sent);
        }
        if self.state.engine.live().load().draining() {
            return None;
        }
        tokio::select! {
            _ = self.every.tick() => {}
            changed = self.changes.changed() => {
                if changed.is_err() || self.state.engine.live().load().draining() {
                    return None;
                }
            }
            received = self.events.recv() => match received {
                Ok(event) => {
                    let live = live_event(&event);
                    self.queue.push_back(json("engine", &live));
                }
                // Missed events are in the status that follows, and in
                // `GET /events`.
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "a status stream fell behind the engine's events");
                }
                Err(RecvError::Closed) => return None,
            },
        }
        let status = status::snapshot(&self.state).await;
        let mut sent = json("status", &status);
        if std::mem::take(&mut self.first) {
            sent = sent.retry(RECONNECT);
        }
        self.queue.push_back(sent);
        self.queue.pop_front()
    }
}

fn json(name: &str, body: &impl serde::Serialize) -> Sent {
    let sent = Sent::default().event(name);
    match sent.json_data(body) {
        Ok(sent) => sent,
        // Our own bodies always serialize; say so rather than go quiet.
        Err(e) => Sent::default().comment(format!("cannot write {name}: {e}")),
    }
}

/// An engine event as the stream and the page's timeline show it.
pub(super) fn live_event(event: &Event) -> api::LiveEvent {
    let names = |subjects: &[Subject]| -> Vec<String> {
        subjects.iter().map(|s| s.scenario.to_string()).collect()
    };
    let one = |subject: &Subject| vec![subject.scenario.to_string()];
    let (kind, scenarios, by, stopped_by) = match &event.what {
        Happened::Activated { subject, by, .. } => ("activated", one(subject), Some(by), None),
        Happened::Rescheduled { subject, by, .. } => ("rescheduled", one(subject), Some(by), None),
        Happened::StageStarted { subject, .. } => ("stage_started", one(subject), None, None),
        Happened::StageEnded { subject, .. } => ("stage_ended", one(subject), None, None),
        Happened::Lifted { subject, by } => ("lifted", one(subject), Some(by), None),
        Happened::Expired { subject } => ("expired", one(subject), None, None),
        Happened::Completed { subject } => ("completed", one(subject), None, None),
        Happened::Stopped { subject, stop } => ("stopped", one(subject), None, Some(stop)),
        Happened::Halted { by, lifted } => ("halted", names(lifted), Some(by), None),
        Happened::Reloaded { by, lifted } => ("reloaded", names(lifted), Some(by), None),
    };
    let list = scenarios.join(", ");
    let text = match &event.what {
        Happened::Activated { expires_at, .. } => format!(
            "{list} activated by {}, until {}",
            by.map_or("", |b| b),
            super::timestamp(*expires_at)
        ),
        Happened::Rescheduled { expires_at, .. } => format!(
            "{list} now ends at {} ({})",
            super::timestamp(*expires_at),
            by.map_or("", |b| b)
        ),
        // Numbered from 1, as `firedrill check` numbers a scenario's faults.
        Happened::StageStarted { fault, .. } => format!("{list}: fault #{} in force", fault + 1),
        Happened::StageEnded { fault, .. } => format!("{list}: fault #{} ended", fault + 1),
        Happened::Stopped { stop, .. } => {
            let read = match stop.value {
                Some(value) => format!("value {value}"),
                None => "could not read a value".to_owned(),
            };
            format!(
                "{list} stopped by guard {}: {} ({read}, above {})",
                stop.guard, stop.detail, stop.above
            )
        }
        Happened::Halted { .. } if scenarios.is_empty() => {
            format!("halt by {}: nothing was active", by.map_or("", |b| b))
        }
        Happened::Reloaded { .. } if scenarios.is_empty() => {
            format!("plan reloaded by {}", by.map_or("", |b| b))
        }
        Happened::Reloaded { .. } => {
            format!("plan reloaded by {}; lifted {list}", by.map_or("", |b| b))
        }
        _ => match by {
            Some(by) => format!("{list} {kind} by {by}"),
            None => format!("{list} {kind}"),
        },
    };
    api::LiveEvent {
        at: super::timestamp(event.at),
        kind: kind.to_owned(),
        scenarios,
        by: by.cloned(),
        stopped_by: stopped_by.cloned(),
        text,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use super::*;
    use crate::engine::Stop;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn subject(scenario: &str) -> Subject {
        Subject {
            id: 1,
            scenario: Arc::from(scenario),
        }
    }

    fn event(what: Happened) -> api::LiveEvent {
        live_event(&Event { at: now(), what })
    }

    #[test]
    fn an_activation_names_its_caller_and_end() {
        let live = event(Happened::Activated {
            subject: subject("pangyo-fire"),
            by: "lead (127.0.0.1:5000)".to_owned(),
            origin: crate::engine::Origin::Local,
            started_at: now(),
            expires_at: now() + Duration::from_secs(600),
        });
        assert_eq!(live.kind, "activated");
        assert_eq!(live.scenarios, ["pangyo-fire"]);
        assert_eq!(live.by.as_deref(), Some("lead (127.0.0.1:5000)"));
        assert_eq!(
            live.text,
            "pangyo-fire activated by lead (127.0.0.1:5000), until 2027-01-15T08:10:00.000Z"
        );
        assert_eq!(live.at, "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn a_stop_names_its_guard_and_what_it_read() {
        let stop = Stop {
            guard: "ansan-stays-up".to_owned(),
            value: Some(0.31),
            above: 0.05,
            detail: "error ratio 0.31 outside the scenario over 30s".to_owned(),
        };
        let live = event(Happened::Stopped {
            subject: subject("pangyo-fire"),
            stop: stop.clone(),
        });
        assert_eq!(live.kind, "stopped");
        assert_eq!(live.by, None);
        assert_eq!(live.stopped_by, Some(stop));
        assert_eq!(
            live.text,
            "pangyo-fire stopped by guard ansan-stays-up: error ratio 0.31 outside the scenario over 30s (value 0.31, above 0.05)"
        );
    }

    #[test]
    fn a_stop_without_a_reading_says_it_could_not_read() {
        let stop = Stop {
            guard: "slo".to_owned(),
            value: None,
            above: 1.0,
            detail: "prometheus at http://127.0.0.1:9091/ could not be read: connection refused (on_error = \"stop\")".to_owned(),
        };
        let live = event(Happened::Stopped {
            subject: subject("pangyo-fire"),
            stop,
        });
        assert!(
            live.text
                .ends_with("(on_error = \"stop\") (could not read a value, above 1)"),
            "{}",
            live.text
        );
        assert!(!live.text.contains("value 0"), "{}", live.text);
    }

    #[test]
    fn a_halt_lists_what_it_lifted_and_a_lift_who_did_it() {
        let live = event(Happened::Halted {
            by: "lead".to_owned(),
            lifted: vec![subject("pangyo-fire"), subject("flaky-link")],
        });
        assert_eq!(live.scenarios, ["pangyo-fire", "flaky-link"]);
        assert_eq!(live.text, "pangyo-fire, flaky-link halted by lead");
        let empty = event(Happened::Halted {
            by: "lead".to_owned(),
            lifted: Vec::new(),
        });
        assert_eq!(empty.text, "halt by lead: nothing was active");
        let lifted = event(Happened::Lifted {
            subject: subject("pangyo-fire"),
            by: "lead".to_owned(),
        });
        assert_eq!(lifted.text, "pangyo-fire lifted by lead");
        let expired = event(Happened::Expired {
            subject: subject("pangyo-fire"),
        });
        assert_eq!(expired.text, "pangyo-fire expired");
        let stage = event(Happened::StageStarted {
            subject: subject("pangyo-recovery"),
            fault: 0,
        });
        assert_eq!(stage.kind, "stage_started");
        assert_eq!(stage.text, "pangyo-recovery: fault #1 in force");
    }
}
