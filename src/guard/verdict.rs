//! What one evaluation of a guard means: its value against the threshold,
//! how long the condition has held against `for`, and whether it trips.
//! Pure: the caller passes the clock.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{Guard, Measure, OnError};

/// What one evaluation read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Read {
    /// A value (`None`: nothing to measure, like a window without
    /// traffic), with what it is for a person.
    Value(Option<f64>, String),
    /// The value could not be read (a Prometheus that does not answer).
    Failed(String),
}

/// A guard's state, as `GET /faults` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    /// The condition holds, for this long so far, not yet for `for`.
    Pending(Duration),
    Tripped,
    /// The value could not be read.
    Error,
}

impl State {
    /// `ok`, `pending`, `tripped` or `error`.
    pub fn name(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Pending(_) => "pending",
            State::Tripped => "tripped",
            State::Error => "error",
        }
    }
}

/// One guard as last evaluated.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub name: Arc<str>,
    /// `error_ratio`, `p99_latency` or `prometheus`.
    pub kind: &'static str,
    pub state: State,
    /// The value last read (latencies in seconds); `None` before the first
    /// evaluation, without traffic, or on an error.
    pub value: Option<f64>,
    /// The threshold (latencies in seconds).
    pub above: f64,
    /// How long the condition must hold (`for`).
    pub hold: Duration,
    /// What it reads, or why it could not.
    pub detail: String,
}

impl Reading {
    /// A guard not evaluated yet.
    pub(super) fn first(guard: &Guard) -> Reading {
        Reading {
            name: Arc::clone(&guard.name),
            kind: guard.measure.kind(),
            state: State::Ok,
            value: None,
            above: guard.above,
            hold: guard.hold,
            detail: "not evaluated yet".to_owned(),
        }
    }
}

/// Judges `read` for `guard` at `now`; `since` is when the condition
/// began to hold, kept between evaluations. A failed read holds the
/// condition under `on_error = "stop"` (so `for` applies to it too) and
/// never under `"continue"`; nothing to measure never holds it.
pub(super) fn judge(
    guard: &Guard,
    read: Read,
    since: &mut Option<Instant>,
    now: Instant,
) -> Reading {
    let (value, detail, failed) = match read {
        Read::Value(value, detail) => (value, detail, false),
        Read::Failed(why) => (None, why, true),
    };
    let holds = if failed {
        match &guard.measure {
            Measure::Prometheus { on_error, .. } => *on_error == OnError::Stop,
            _ => true,
        }
    } else {
        value.is_some_and(|v| v > guard.above)
    };
    let state = if holds {
        let held = now.saturating_duration_since(*since.get_or_insert(now));
        if held >= guard.hold {
            State::Tripped
        } else if failed {
            State::Error
        } else {
            State::Pending(held)
        }
    } else {
        *since = None;
        if failed {
            State::Error
        } else {
            State::Ok
        }
    };
    Reading {
        state,
        value,
        detail,
        ..Reading::first(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scope;

    fn guard(hold: u64, measure: Measure) -> Guard {
        Guard {
            name: "g".into(),
            measure,
            above: 0.05,
            hold: Duration::from_secs(hold),
        }
    }

    fn ratio(hold: u64) -> Guard {
        let window = Duration::from_secs(30);
        guard(
            hold,
            Measure::ErrorRatio {
                scope: Scope::Outside,
                window,
            },
        )
    }

    fn prometheus(on_error: OnError) -> Guard {
        let url = "http://127.0.0.1:9".parse().unwrap();
        guard(
            0,
            Measure::Prometheus {
                url,
                query: "up".to_owned(),
                on_error,
            },
        )
    }

    fn value(v: Option<f64>) -> Read {
        Read::Value(v, String::new())
    }

    #[test]
    fn a_value_over_the_threshold_trips_at_once_without_for() {
        let (mut since, now) = (None, Instant::now());
        let reading = judge(&ratio(0), value(Some(0.04)), &mut since, now);
        assert_eq!(reading.state, State::Ok);
        let reading = judge(&ratio(0), value(Some(0.06)), &mut since, now);
        assert_eq!(reading.state, State::Tripped);
        assert_eq!(reading.value, Some(0.06));
    }

    #[test]
    fn with_for_the_condition_goes_pending_and_back_to_ok() {
        let guard = ratio(20);
        let (mut since, start) = (None, Instant::now());
        let at = |s: u64| start + Duration::from_secs(s);
        let state = |since: &mut _, v, s| judge(&guard, value(v), since, at(s)).state;
        assert_eq!(
            state(&mut since, Some(0.5), 0),
            State::Pending(Duration::ZERO)
        );
        assert_eq!(
            state(&mut since, Some(0.5), 5),
            State::Pending(Duration::from_secs(5))
        );
        assert_eq!(state(&mut since, Some(0.01), 6), State::Ok);
        // Held again: counted from its new start.
        assert_eq!(
            state(&mut since, Some(0.5), 7),
            State::Pending(Duration::ZERO)
        );
        assert_eq!(
            state(&mut since, Some(0.5), 26),
            State::Pending(Duration::from_secs(19))
        );
        assert_eq!(state(&mut since, Some(0.5), 27), State::Tripped);
    }

    #[test]
    fn no_traffic_never_trips_and_resets_the_hold() {
        let guard = ratio(1);
        let (mut since, start) = (None, Instant::now());
        assert!(matches!(
            judge(&guard, value(Some(0.9)), &mut since, start).state,
            State::Pending(_)
        ));
        let later = start + Duration::from_secs(5);
        assert_eq!(
            judge(&guard, value(None), &mut since, later).state,
            State::Ok
        );
        assert_eq!(since, None);
    }

    #[test]
    fn a_failed_read_trips_under_stop_and_shows_error_under_continue() {
        let (mut since, now) = (None, Instant::now());
        let failed = || Read::Failed("no answer within 2s".to_owned());
        let reading = judge(&prometheus(OnError::Stop), failed(), &mut since, now);
        assert_eq!((reading.state, reading.value), (State::Tripped, None));
        let mut since = None;
        let reading = judge(&prometheus(OnError::Continue), failed(), &mut since, now);
        assert_eq!(reading.state, State::Error);
        assert_eq!(reading.detail, "no answer within 2s");
        assert_eq!(since, None);
    }
}
