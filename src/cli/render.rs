//! What the commands print for a person, as pure functions of the admin
//! API's answers: the status table, the event list, and one-line outcomes
//! of trigger and lift. `--json` bypasses all of this.

use super::table::{Cell, Colour, Table};
use crate::admin::api;

/// The `firedrill status` table: each data center, then its services
/// indented, then the active scenarios with time left and their guards.
pub fn status(status: &api::Status, colour: bool) -> String {
    let mut table = Table::new(&[
        "DATA CENTER / SERVICE",
        "STATE",
        "RATE",
        "ERRORS",
        "P99",
        "FAULTS",
    ]);
    for dc in &status.datacenters {
        table.row(vec![
            Cell::left(&dc.name),
            state(&dc.state),
            Cell::right(format!("{:.1} req/s", dc.requests_per_second)),
            Cell::right(ratio(dc.error_ratio)),
            Cell::right(seconds(dc.p99_seconds)),
        ]);
        for service in &dc.services {
            let rate = if service.protocol == "tcp" {
                format!("{:.1} conn/s", service.connections_per_second)
            } else {
                format!("{:.1} req/s", service.requests_per_second)
            };
            let mut faults: Vec<String> = (service.faults.iter())
                .map(|f| format!("{} ({})", action(&f.action), f.scenario))
                .collect();
            if service.protocol == "tcp" {
                faults.push(format!("{} open", service.connections_open));
            }
            table.row(vec![
                Cell::left(format!("  {} ({})", service.name, service.protocol)),
                state(&service.state),
                Cell::right(rate),
                Cell::right(ratio(service.error_ratio)),
                Cell::right(seconds(service.p99_seconds)),
                Cell::left(faults.join("; ")),
            ]);
        }
    }
    let mut out = format!("at {}, over the last {}\n\n", status.at, status.window);
    out += &table.render(colour);
    out += "\n";
    out += &active(&status.active, colour);
    out
}

/// The active scenarios with time left, who started them, and each
/// guard's state and value.
pub fn active(active: &[api::Activation], colour: bool) -> String {
    if active.is_empty() {
        return "No scenario is active.\n".to_owned();
    }
    let mut table = Table::new(&["ACTIVE / GUARD", "STATE", "VALUE", "ABOVE", "DETAIL"]);
    for activation in active {
        table.row(vec![
            Cell::left(&activation.scenario),
            Cell::left("active").colour(Colour::Yellow),
            Cell::left(""),
            Cell::left(""),
            Cell::left(format!(
                "{} left, until {}, by {}",
                activation.remaining, activation.expires_at, activation.activated_by
            )),
        ]);
        for guard in &activation.guards {
            let colour = match guard.state.as_str() {
                "ok" => Colour::Green,
                "pending" => Colour::Yellow,
                _ => Colour::Red,
            };
            let detail = match &guard.pending_for {
                Some(held) => format!("held {held} of {}; {}", guard.hold, guard.detail),
                None => guard.detail.clone(),
            };
            table.row(vec![
                Cell::left(format!("  guard {}", guard.name)),
                Cell::left(&guard.state).colour(colour),
                Cell::right(
                    guard
                        .value
                        .map_or("-".to_owned(), |v| value(&guard.kind, v)),
                ),
                Cell::right(value(&guard.kind, guard.above)),
                Cell::left(detail),
            ]);
        }
    }
    table.render(colour)
}

/// `GET /events` as a table, newest first, at most `limit` rows.
pub fn events(events: &[api::EventRecord]) -> String {
    if events.is_empty() {
        return "No activation yet.\n".to_owned();
    }
    let mut table = Table::new(&["STARTED", "SCENARIO", "BY", "ENDED", "ENDED AT", "WHY"]);
    for event in events {
        let why = match (&event.stopped_by, &event.ended_by) {
            (Some(stop), _) => match stop.value {
                Some(value) => format!(
                    "guard {}: {} above {} ({})",
                    stop.guard,
                    number(value),
                    number(stop.above),
                    stop.detail
                ),
                None => format!("guard {}: could not read ({})", stop.guard, stop.detail),
            },
            (None, Some(by)) => format!("by {by}"),
            (None, None) if event.ended.is_none() => format!("until {}", event.expires_at),
            (None, None) => String::new(),
        };
        let ended = event.ended.as_deref().unwrap_or("active");
        table.row(vec![
            Cell::left(&event.started_at),
            Cell::left(&event.scenario),
            Cell::left(&event.activated_by),
            Cell::left(ended).colour(if event.ended.is_none() {
                Colour::Yellow
            } else {
                Colour::Dim
            }),
            Cell::left(event.ended_at.as_deref().unwrap_or("-")),
            Cell::left(why),
        ]);
    }
    table.render(false)
}

/// What `POST /faults/{scenario}` did, and each fault's window.
pub fn triggered(answer: &api::ActivateAnswer) -> String {
    let a = &answer.activation;
    let until = format!("until {} ({} left)", a.expires_at, a.remaining);
    let previous = answer.previous_expires_at.as_deref().unwrap_or("?");
    let mut out = match answer.status.as_str() {
        "activated" => format!("{} activated {until}, by {}\n", a.scenario, a.activated_by),
        "already_active" => format!("{} was already active, {until}\n", a.scenario),
        "lifted" => format!(
            "{} lifted: it had already run longer than {}\n",
            a.scenario,
            answer.requested_duration.as_deref().unwrap_or("asked")
        ),
        other => format!(
            "{} {other}: now {until}; it was to end at {previous}\n",
            a.scenario
        ),
    };
    if answer.capped {
        out += &format!(
            "  capped: the scenario's max_duration is shorter than {}\n",
            answer.requested_duration.as_deref().unwrap_or("asked")
        );
    }
    if answer.status != "lifted" {
        for fault in &a.faults {
            let when = match (&fault.starts_at, &fault.ends_at) {
                (Some(from), Some(until)) => format!(" from {from} until {until}"),
                _ => String::new(),
            };
            out += &format!(
                "  {} on {} in {}{when}: {}\n",
                action(&fault.action),
                list(&fault.services),
                list(&fault.datacenters),
                fault.state
            );
        }
    }
    out
}

/// What `DELETE /faults/{scenario}` did.
pub fn lifted(answer: &api::LiftAnswer) -> String {
    if answer.lifted {
        format!("{} lifted\n", answer.scenario)
    } else {
        format!("{} was not active; nothing to lift\n", answer.scenario)
    }
}

/// What `DELETE /faults` did.
pub fn halted(answer: &api::HaltAnswer) -> String {
    if answer.lifted.is_empty() {
        "Nothing was active; nothing to lift.\n".to_owned()
    } else {
        format!("lifted {}\n", answer.lifted.join(", "))
    }
}

/// An action as the plan writes it: `delay 200ms ±50ms`, `error 503`,
/// `drop`, with its probability when below 1.
pub fn action(action: &api::Action) -> String {
    let mut text = action.action.clone();
    if let Some(latency) = &action.latency {
        text += &format!(" {latency}");
    }
    if let Some(jitter) = &action.jitter {
        text += &format!(" ±{jitter}");
    }
    if let Some(direction) = action.direction.as_deref().filter(|d| *d != "both") {
        text += &format!(" {direction}");
    }
    if let Some(status) = action.status {
        text += &format!(" {status}");
    }
    if action.probability < 1.0 {
        text += &format!(" p={}", number(action.probability));
    }
    text
}

fn state(state: &str) -> Cell {
    let colour = match state {
        "healthy" => Colour::Green,
        "degraded" => Colour::Yellow,
        _ => Colour::Red,
    };
    Cell::left(state).colour(colour)
}

/// A ratio as a percentage; `-` without requests.
fn ratio(ratio: Option<f64>) -> String {
    match ratio {
        None => "-".to_owned(),
        Some(r) if r > 0.0 && r < 0.0005 => "<0.1%".to_owned(),
        Some(r) => format!("{:.1}%", r * 100.0),
    }
}

/// A latency in seconds as `12ms` or `1.25s`; `-` without answers.
fn seconds(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => format!("{:.0}ms", s * 1000.0),
        Some(s) => format!("{s:.2}s"),
    }
}

/// A guard's value in its kind's unit.
fn value(kind: &str, v: f64) -> String {
    match kind {
        "error_ratio" => ratio(Some(v)),
        "p99_latency" => seconds(Some(v)),
        _ => number(v),
    }
}

/// A number with at most three decimals, without trailing zeros.
fn number(v: f64) -> String {
    let text = format!("{v:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    text.to_owned()
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_owned()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests;
