use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config;
use crate::live::Rules;
use crate::topology::ServiceId;
use history::Ending;

const PLAN: &str = r#"
[datacenters.pangyo]
[datacenters.ansan]
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
[services.maps]
datacenter = "ansan"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9003"

[scenarios.fire]
max_duration = "10m"
[[scenarios.fire.faults]]
datacenter = "pangyo"
action = "blackhole"

[scenarios.recovery]
max_duration = "10m"
[[scenarios.recovery.faults]]
service = "talk"
action = "blackhole"
duration = "1m"
[[scenarios.recovery.faults]]
service = "mail"
action = "blackhole"
duration = "3m"
[[scenarios.recovery.faults]]
service = "mail"
action = "delay"
latency = "1s"
after = "3m"
duration = "2m"
"#;

const TALK: ServiceId = ServiceId(0);
const MAIL: ServiceId = ServiceId(1);
const MAPS: ServiceId = ServiceId(2);

fn engine() -> Engine {
    let plan = Arc::new(config::parse(PLAN, "engine.toml").unwrap());
    let live = Arc::new(Live::new(Rules::empty(plan.topology.services.len())));
    Engine::new(plan, live)
}

fn actions(engine: &Engine, service: ServiceId) -> Vec<&'static str> {
    engine
        .live()
        .load()
        .slot(service.index())
        .iter()
        .map(|f| f.action.name())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn activation_publishes_rules_for_the_selected_datacenter_only() {
    let engine = engine();
    engine.activate("fire", None, "test").unwrap();
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
    assert_eq!(actions(&engine, MAIL), ["blackhole"]);
    assert!(actions(&engine, MAPS).is_empty());
    engine.lift("fire", "test").unwrap();
    assert!(actions(&engine, TALK).is_empty());
}

#[tokio::test(start_paused = true)]
async fn activating_twice_is_idempotent() {
    let engine = engine();
    let Activated::New(first) = engine.activate("fire", None, "a").unwrap() else {
        panic!("first activation is new");
    };
    tokio::time::advance(Duration::from_secs(5)).await;
    let Activated::Existing(second) = engine.activate("fire", None, "b").unwrap() else {
        panic!("second activation finds the first");
    };
    assert_eq!(first.started, second.started);
    assert_eq!(first.expires, second.expires);
    assert_eq!(engine.active().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn requested_duration_is_capped_at_max_duration() {
    let engine = engine();
    let Activated::New(activation) = engine
        .activate("fire", Some(Duration::from_secs(3600)), "t")
        .unwrap()
    else {
        panic!("new activation");
    };
    assert_eq!(
        activation.expires - activation.started,
        Duration::from_secs(600)
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_scenarios_name_the_known_ones() {
    let engine = engine();
    let ActivateError::Unknown(error) = engine.activate("flood", None, "t").unwrap_err() else {
        panic!("flood is not in the plan");
    };
    assert_eq!(error.known, ["fire", "recovery"]);
    assert_eq!(
        error.to_string(),
        "unknown scenario `flood`; known: fire, recovery"
    );
}

#[tokio::test(start_paused = true)]
async fn stages_start_and_end_on_time_and_activations_expire() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    engine
        .activate("recovery", Some(Duration::from_secs(300)), "t")
        .unwrap();
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
    assert_eq!(actions(&engine, MAIL), ["blackhole"]);

    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(actions(&engine, TALK).is_empty(), "talk is back after 1m");
    assert_eq!(actions(&engine, MAIL), ["blackhole"]);

    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(actions(&engine, MAIL), ["delay"], "mail is slow after 3m");

    // The activation lasts 5m, so the delay stage is cut short with it.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(actions(&engine, MAIL).is_empty());
    assert!(engine.active().is_empty());
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn rules_at_reports_the_next_boundary() {
    let engine = engine();
    let Activated::New(activation) = engine.activate("recovery", None, "t").unwrap() else {
        panic!("new activation");
    };
    let start = activation.started;
    let slots = crate::topology::Slots::in_order(engine.plan().topology.services.len());
    let (rules, next) = rules_at(&slots, [&activation].into_iter(), start);
    assert_eq!(rules.slot(TALK.index()).len(), 1);
    assert_eq!(next, Some(start + Duration::from_secs(60)));
    let (rules, next) = rules_at(
        &slots,
        [&activation].into_iter(),
        start + Duration::from_secs(180),
    );
    assert_eq!(rules.slot(MAIL.index())[0].action.name(), "delay");
    assert_eq!(next, Some(start + Duration::from_secs(300)));
    let late = Instant::now() + Duration::from_secs(3600);
    let (rules, next) = rules_at(&slots, [&activation].into_iter(), late);
    assert!(rules.slot(MAIL.index()).is_empty());
    assert_eq!(next, None);
}

#[tokio::test(start_paused = true)]
async fn lift_all_clears_every_scenario() {
    let engine = engine();
    engine.activate("fire", None, "t").unwrap();
    engine.activate("recovery", None, "t").unwrap();
    assert_eq!(actions(&engine, TALK).len(), 2);
    let lifted = engine.lift_all("t");
    assert_eq!(lifted.len(), 2);
    assert!(actions(&engine, TALK).is_empty());
    assert!(actions(&engine, MAIL).is_empty());
    assert!(engine.lift("fire", "t").unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn one_change_publishes_one_snapshot() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let changes = engine.live().subscribe();
    let before = *changes.borrow();
    engine.activate("fire", None, "t").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(
        *changes.borrow(),
        before + 1,
        "activation woke connections more than once"
    );
    engine.lift("fire", "t").unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(*changes.borrow(), before + 2);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn events_say_who_started_each_activation_and_how_it_ended() {
    let engine = engine();
    engine.activate("fire", None, "lead").unwrap();
    engine.lift("fire", "lead").unwrap();
    engine
        .activate("recovery", Some(Duration::from_secs(60)), "ops")
        .unwrap();
    engine.activate("fire", None, "ops").unwrap();
    tokio::time::advance(Duration::from_secs(61)).await;
    engine.lift_all("chief");

    let events = engine.history();
    let summary: Vec<(&str, &str, Option<history::Ending>, Option<&str>)> = events
        .iter()
        .map(|e| {
            let (how, by) = e
                .ended
                .as_ref()
                .map_or((None, None), |(_, how, by)| (Some(*how), by.as_deref()));
            (&*e.scenario, e.activated_by.as_str(), how, by)
        })
        .collect();
    use history::Ending::*;
    assert_eq!(
        summary,
        [
            ("fire", "ops", Some(Halted), Some("chief")),
            ("recovery", "ops", Some(Expired), None),
            ("fire", "lead", Some(Lifted), Some("lead")),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn the_history_keeps_only_the_newest_activations() {
    let engine = engine();
    for _ in 0..history::CAPACITY + 10 {
        engine.activate("fire", None, "t").unwrap();
        engine.lift("fire", "t").unwrap();
    }
    let events = engine.history();
    assert_eq!(events.len(), history::CAPACITY);
    assert!(events[0].id > events[1].id, "newest first");
}

#[tokio::test(start_paused = true)]
async fn a_reloaded_plan_keeps_its_scenarios_active_and_lifts_the_missing() {
    let engine = engine();
    engine.activate("fire", None, "lead").unwrap();
    engine.activate("recovery", None, "lead").unwrap();
    // `recovery` is gone; `fire` now covers ansan too and may last 1 minute;
    // maps moved to slot 7, as a reload that replaced it would.
    let text = PLAN
        .split("[scenarios.recovery]")
        .next()
        .unwrap()
        .to_owned()
        + "[[scenarios.fire.faults]]\ndatacenter = \"ansan\"\naction = \"blackhole\"\n";
    let text = text.replace("max_duration = \"10m\"", "max_duration = \"1m\"");
    let plan = config::parse(&text, "engine.toml").unwrap();
    let slots = crate::topology::Slots::new(vec![Some(0), Some(1), Some(7)]);
    let lifted = engine.replace_plan(Arc::new(plan), slots, "reload");
    assert_eq!(lifted, ["recovery"]);
    let active = engine.active();
    assert_eq!(active.len(), 1);
    assert_eq!(&*active[0].scenario.name, "fire");
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
    assert!(actions(&engine, MAPS).is_empty(), "maps left its old slot");
    let on_slot_7: Vec<_> = engine
        .live()
        .load()
        .slot(7)
        .iter()
        .map(|f| f.action.name())
        .collect();
    assert_eq!(on_slot_7, ["blackhole"]);
    let events = engine.history();
    let recovery = events.iter().find(|e| &*e.scenario == "recovery").unwrap();
    assert!(matches!(&recovery.ended, Some((_, Ending::Lifted, Some(by))) if by == "reload"));
    // The new max_duration cuts the activation short.
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(engine.active().is_empty());
}

/// How the newest activation of `scenario` ended, from the history.
/// Asserts that `fire` still blackholes talk `hold` from now, and that
/// its timer has expired it a little later, without a request.
async fn fire_holds_then_expires(engine: &Engine, hold: Duration) {
    tokio::time::sleep(hold).await;
    assert_eq!(actions(engine, TALK), ["blackhole"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(actions(engine, TALK).is_empty());
    assert_eq!(ending_of(engine, "fire"), Some((Ending::Expired, None)));
}

fn ending_of(engine: &Engine, scenario: &str) -> Option<(Ending, Option<String>)> {
    let events = engine.history();
    let event = events.iter().find(|e| &*e.scenario == scenario).unwrap();
    event.ended.as_ref().map(|(_, how, by)| (*how, by.clone()))
}

#[tokio::test(start_paused = true)]
async fn a_scenario_whose_faults_all_have_a_duration_completes_when_the_last_ends() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    let Activated::New(first) = engine.activate("recovery", None, "t").unwrap() else {
        panic!("new activation");
    };
    // Its last fault, mail's delay, ends at 3m + 2m, before max_duration (10m).
    assert_eq!(first.expires - first.started, Duration::from_secs(300));
    tokio::time::sleep(Duration::from_secs(299)).await;
    assert_eq!(actions(&engine, MAIL), ["delay"]);
    assert_eq!(ending_of(&engine, "recovery"), None, "still running");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(actions(&engine, MAIL).is_empty());
    assert_eq!(
        ending_of(&engine, "recovery"),
        Some((Ending::Completed, None))
    );
    assert!(engine.active().is_empty());
    // The sequence can be started again.
    let Activated::New(second) = engine.activate("recovery", None, "t").unwrap() else {
        panic!("a completed scenario starts again");
    };
    assert_ne!(first.id, second.id);
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_scenario_with_a_fault_without_duration_runs_until_its_deadline() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    engine.activate("fire", None, "t").unwrap();
    fire_holds_then_expires(&engine, Duration::from_secs(599)).await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_new_duration_moves_the_end_of_an_active_scenario_and_the_timer_follows() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let Activated::New(first) = engine.activate("fire", Some(minutes(2)), "a").unwrap() else {
        panic!("new activation");
    };
    tokio::time::sleep(minutes(1)).await;

    let Activated::Changed {
        activation,
        previous,
        ended,
    } = engine.activate("fire", Some(minutes(5)), "b").unwrap()
    else {
        panic!("a duration on an active scenario changes it");
    };
    assert_eq!((previous, ended), (first.expires, false));
    assert_eq!(activation.id, first.id, "the same activation");
    assert_eq!(activation.started, first.started);
    assert_eq!(activation.expires, first.started + minutes(5));
    assert_eq!(engine.history()[0].expires_at, activation.expires_at());
    // Past the old end, the timer that was due then lifts nothing.
    tokio::time::sleep(minutes(2)).await;
    assert_eq!(actions(&engine, TALK), ["blackhole"]);

    // Shortened to 4m: the timer lifts it then, without a request.
    let Activated::Changed { activation, .. } =
        engine.activate("fire", Some(minutes(4)), "c").unwrap()
    else {
        panic!("a duration on an active scenario changes it");
    };
    assert_eq!(activation.expires, first.started + minutes(4));
    fire_holds_then_expires(&engine, Duration::from_secs(59)).await;
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_new_duration_is_capped_at_max_duration_from_the_start() {
    let engine = engine();
    let Activated::New(first) = engine
        .activate("fire", Some(Duration::from_secs(60)), "a")
        .unwrap()
    else {
        panic!("new activation");
    };
    tokio::time::advance(Duration::from_secs(30)).await;
    let Activated::Changed { activation, .. } = engine
        .activate("fire", Some(Duration::from_secs(3600)), "b")
        .unwrap()
    else {
        panic!("a duration on an active scenario changes it");
    };
    assert_eq!(activation.expires, first.started + Duration::from_secs(600));
}

#[tokio::test(start_paused = true)]
async fn a_new_duration_that_has_already_passed_lifts_the_scenario_now() {
    let engine = engine();
    engine.activate("fire", None, "a").unwrap();
    tokio::time::advance(Duration::from_secs(120)).await;
    let Activated::Changed {
        activation, ended, ..
    } = engine
        .activate("fire", Some(Duration::from_secs(60)), "b")
        .unwrap()
    else {
        panic!("a duration on an active scenario changes it");
    };
    assert!(ended);
    assert_eq!(activation.expires, Instant::now());
    assert!(actions(&engine, TALK).is_empty());
    assert!(engine.active().is_empty());
    assert_eq!(
        ending_of(&engine, "fire"),
        Some((Ending::Lifted, Some("b".to_owned())))
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_gives_every_fault_a_duration_ends_the_activation_with_its_last() {
    let engine = engine();
    engine.activate("fire", None, "lead").unwrap();
    let text = PLAN.replace(
        "datacenter = \"pangyo\"\naction = \"blackhole\"\n",
        "datacenter = \"pangyo\"\naction = \"blackhole\"\nduration = \"1m\"\n",
    );
    let plan = config::parse(&text, "engine.toml").unwrap();
    let slots = crate::topology::Slots::in_order(plan.topology.services.len());
    assert!(engine
        .replace_plan(Arc::new(plan), slots, "reload")
        .is_empty());
    let active = engine.active();
    assert_eq!(
        active[0].expires - active[0].started,
        Duration::from_secs(60)
    );
    assert_eq!(engine.history()[0].expires_at, active[0].expires_at());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(engine.active().is_empty());
    assert_eq!(ending_of(&engine, "fire"), Some((Ending::Completed, None)));
}

mod adopt;
mod events;
mod guards;
