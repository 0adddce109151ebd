//! A guard task against a real engine: only the set of tasks that owns an
//! activation's guards (its generation) may record a reading or stop the
//! activation; one a reload superseded during its read does neither.

use std::sync::Arc;

use super::*;
use crate::engine::Activated;
use crate::live::{Live, Rules};

/// A plan whose scenario `fire` drops `service`'s traffic and has one
/// guard of `lines`.
fn plan_with(service: &str, lines: &str) -> Arc<crate::config::Plan> {
    let text = format!(
        r#"
[datacenters.pangyo]
[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9001"
[services.mail]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9002"

[scenarios.fire]
[[scenarios.fire.faults]]
service = "{service}"
action = "drop"

[[scenarios.fire.stop_when]]
name = "g"
{lines}
"#
    );
    Arc::new(crate::config::parse(&text, "guard.toml").unwrap_or_else(|e| panic!("{e}")))
}

/// A plan whose guard reads a Prometheus at `url`, and trips at once
/// when it cannot.
fn plan(url: &str) -> Arc<crate::config::Plan> {
    plan_with(
        "talk",
        &format!("prometheus = \"{url}\"\nquery = \"up\"\nabove = 1"),
    )
}

/// `fire` active under `plan`.
fn active(plan: Arc<crate::config::Plan>) -> (Engine, Activation) {
    let live = Arc::new(Live::new(Rules::empty(plan.topology.services.len())));
    let engine = Engine::new(plan, live);
    let Ok(Activated::New(activation)) = engine.activate("fire", None, "test") else {
        panic!("fire activates");
    };
    (engine, activation)
}

/// `activation` as a reload to `plan` leaves it.
fn reloaded(activation: &Activation, plan: Arc<crate::config::Plan>) -> Activation {
    let mut reloaded = activation.clone();
    reloaded.scenario = Arc::clone(&plan.scenarios[0]);
    reloaded.plan = plan;
    reloaded
}

#[test]
fn a_reload_carries_a_guard_only_while_it_measures_the_same_thing() {
    let outside = "error_ratio = { outside = true }\nabove = 0.05\nfor = \"20s\"";
    let (_, before) = active(plan_with("talk", outside));
    let carried = |service: &str, lines: &str| {
        let after = reloaded(&before, plan_with(service, lines));
        unchanged(Some(&before), &after, &after.scenario.stop_when[0])
    };
    assert_eq!(carried("talk", outside), Some(0), "the same plan again");
    let stricter = outside.replace("0.05", "0.01");
    assert_eq!(carried("talk", &stricter), None, "a new threshold");
    // The same words, but "outside" is now another set of services.
    assert_eq!(carried("mail", outside), None, "another scenario's outside");
    let datacenter = "error_ratio = { datacenter = \"pangyo\" }\nabove = 0.05";
    let (_, before) = active(plan_with("talk", datacenter));
    let after = reloaded(&before, plan_with("mail", datacenter));
    let guard = &after.scenario.stop_when[0];
    assert_eq!(unchanged(Some(&before), &after, guard), Some(0));
    assert_eq!(unchanged(None, &after, guard), None, "a new activation");
}

/// A task of `generation` for the first guard of `activation`.
fn watch(guards: &Guards, engine: &Engine, activation: &Activation, generation: u64) -> Watch {
    Watch {
        guards: guards.clone(),
        engine: engine.clone(),
        stats: Stats::default(),
        activation: activation.clone(),
        index: 0,
        generation,
        failures: LogLimit::new(WARN_EVERY),
    }
}

#[tokio::test]
async fn a_superseded_guard_task_neither_records_nor_stops() {
    // Bound but not listening: every connection is refused at once.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    let (engine, activation) = active(plan(&url));
    let guards = Guards::default();
    let first = activation
        .scenario
        .stop_when
        .iter()
        .map(Slot::first)
        .collect();
    guards.lock().insert(
        activation.id,
        Watched {
            generation: 2,
            slots: first,
        },
    );
    let limit = PROMETHEUS_TIMEOUT * 5;
    // Generation 1 reads, finds itself superseded, and ends.
    let stale = watch(&guards, &engine, &activation, 1);
    tokio::time::timeout(limit, stale.run(CancellationToken::new()))
        .await
        .expect("a superseded task ends after its read");
    assert_eq!(engine.active().len(), 1, "a superseded task stopped fire");
    let untouched = &guards.readings(&activation)[0];
    assert_eq!(untouched.detail, "not evaluated yet", "{untouched:?}");
    // Generation 2 owns the slot: its failed read trips the guard.
    let current = watch(&guards, &engine, &activation, 2);
    tokio::time::timeout(limit, current.run(CancellationToken::new()))
        .await
        .expect("the current task trips");
    assert!(engine.active().is_empty(), "fire is still active");
    let tripped = &guards.readings(&activation)[0];
    assert_eq!(tripped.state, State::Tripped, "{tripped:?}");
}
