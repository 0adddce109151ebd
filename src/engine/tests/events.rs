//! The broadcast events, their order, and reads that never publish.

use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::error::TryRecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use super::*;

/// Every event received so far, each as a short line.
pub(super) fn drain(events: &mut Receiver<Event>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match events.try_recv() {
            Ok(event) => lines.push(line(&event)),
            Err(TryRecvError::Empty) => return lines,
            Err(error) => panic!("no event lost here: {error:?}"),
        }
    }
}

fn line(event: &Event) -> String {
    let name = event.scenario().unwrap_or("-");
    match &event.what {
        Happened::Activated { by, .. } => format!("activated {name} by {by}"),
        Happened::Rescheduled { by, .. } => format!("rescheduled {name} by {by}"),
        Happened::StageStarted { fault, .. } => format!("stage {fault} of {name} started"),
        Happened::StageEnded { fault, .. } => format!("stage {fault} of {name} ended"),
        Happened::Lifted { by, .. } => format!("lifted {name} by {by}"),
        Happened::Expired { .. } => format!("expired {name}"),
        Happened::Completed { .. } => format!("completed {name}"),
        Happened::Stopped { stop, .. } => format!("stopped {name} by {}", stop.guard),
        Happened::Halted { by, lifted } => {
            let names: Vec<&str> = lifted.iter().map(|s| &*s.scenario).collect();
            format!("halted {} by {by}", names.join(" "))
        }
        Happened::Reloaded { by, lifted } => {
            let names: Vec<&str> = lifted.iter().map(|s| &*s.scenario).collect();
            format!("reloaded by {by}, lifting {}", names.join(" "))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn each_step_of_an_activation_is_broadcast_when_it_happens() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    let mut events = engine.subscribe();
    engine.activate("recovery", None, "lead").unwrap();
    assert_eq!(
        drain(&mut events),
        [
            "activated recovery by lead",
            "stage 0 of recovery started",
            "stage 1 of recovery started",
        ]
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(drain(&mut events), ["stage 0 of recovery ended"]);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        drain(&mut events),
        ["stage 1 of recovery ended", "stage 2 of recovery started"]
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        drain(&mut events),
        ["completed recovery", "stage 2 of recovery ended"]
    );

    engine.activate("fire", None, "lead").unwrap();
    engine
        .activate("fire", Some(Duration::from_secs(60)), "ops")
        .unwrap();
    engine.lift("fire", "ops").unwrap();
    engine.activate("fire", None, "lead").unwrap();
    engine.activate("recovery", None, "lead").unwrap();
    drain(&mut events);
    engine.lift_all("chief");
    assert_eq!(
        drain(&mut events),
        [
            "halted fire recovery by chief",
            "stage 0 of fire ended",
            "stage 0 of recovery ended",
            "stage 1 of recovery ended",
        ]
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_new_duration_and_a_lift_are_broadcast_with_the_caller() {
    let engine = engine();
    let mut events = engine.subscribe();
    engine.activate("fire", None, "lead").unwrap();
    engine
        .activate("fire", Some(Duration::from_secs(60)), "ops")
        .unwrap();
    engine.lift("fire", "chief").unwrap();
    assert_eq!(
        drain(&mut events),
        [
            "activated fire by lead",
            "stage 0 of fire started",
            "rescheduled fire by ops",
            "lifted fire by chief",
            "stage 0 of fire ended",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_is_broadcast_with_the_scenarios_it_lifted() {
    let engine = engine();
    engine.activate("fire", None, "lead").unwrap();
    engine.activate("recovery", None, "lead").unwrap();
    let mut events = engine.subscribe();
    let text = PLAN.split("[scenarios.recovery]").next().unwrap();
    let plan = config::parse(text, "engine.toml").unwrap();
    let slots = crate::topology::Slots::in_order(plan.topology.services.len());
    engine.replace_plan(Arc::new(plan), slots, "SIGHUP");
    assert_eq!(
        drain(&mut events),
        [
            "reloaded by SIGHUP, lifting recovery",
            "stage 0 of recovery ended",
            "stage 1 of recovery ended",
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_falls_behind_loses_events_and_never_holds_up_the_engine() {
    let engine = engine();
    let mut slow = engine.subscribe();
    // Four events a round: activated, stage started, lifted, stage ended.
    let rounds = EVENT_BACKLOG / 4 + 10;
    for _ in 0..rounds {
        engine.activate("fire", None, "t").unwrap();
        engine.lift("fire", "t").unwrap();
    }
    assert_eq!(
        engine.history()[0].ended.as_ref().unwrap().1,
        Ending::Lifted
    );
    let missed = rounds * 4 - EVENT_BACKLOG;
    assert_eq!(slow.try_recv(), Err(TryRecvError::Lagged(missed as u64)));
    assert!(matches!(
        slow.recv().await.map(|e| e.what),
        Ok(Happened::Activated { .. })
    ));
    drop(slow);
    assert!(matches!(
        engine.subscribe().try_recv(),
        Err(TryRecvError::Empty)
    ));
}

#[tokio::test(start_paused = true)]
async fn reads_compute_from_state_and_never_publish() {
    let engine = engine();
    engine
        .activate("fire", Some(Duration::from_secs(60)), "t")
        .unwrap();
    let mut changes = engine.live().subscribe();
    changes.mark_unchanged();
    let generation = engine.live().load().generation();
    let mut events = engine.subscribe();
    // Past its end, before the timer (not running here) gets to it.
    tokio::time::advance(Duration::from_secs(61)).await;

    assert!(engine.active().is_empty(), "past its end: not active");
    let history = engine.history();
    assert!(matches!(history[0].ended, Some((_, Ending::Expired, None))));

    assert!(!changes.has_changed().unwrap(), "a read woke connections");
    assert_eq!(engine.live().load().generation(), generation);
    assert_eq!(drain(&mut events), Vec::<String>::new());
    // The rules still hold it until the timer publishes.
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
}

#[test]
fn stages_that_end_are_told_before_stages_that_start() {
    let fire: Arc<str> = Arc::from("fire");
    let before = [((1, 0), Arc::clone(&fire)), ((1, 1), Arc::clone(&fire))];
    let after = [((1, 1), Arc::clone(&fire)), ((2, 0), Arc::clone(&fire))];
    let told: Vec<String> = event::stages(&before.into(), &after.into())
        .into_iter()
        .map(|what| {
            line(&Event {
                at: SystemTime::UNIX_EPOCH,
                what,
            })
        })
        .collect();
    assert_eq!(told, ["stage 0 of fire ended", "stage 0 of fire started"]);
}

#[test]
fn the_history_is_the_fold_of_the_events() {
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
    let subject = |id: u64, scenario: &str| Subject {
        id,
        scenario: Arc::from(scenario),
    };
    let activated = |id: u64, scenario: &str| Happened::Activated {
        subject: subject(id, scenario),
        by: "lead".to_owned(),
        origin: Origin::Local,
        started_at: at(id),
        expires_at: at(600),
    };
    let mut history = history::History::default();
    for (second, what) in [
        (1, activated(1, "fire")),
        (2, activated(2, "flood")),
        (3, activated(3, "quake")),
        (
            4,
            Happened::StageStarted {
                subject: subject(1, "fire"),
                fault: 0,
            },
        ),
        (
            5,
            Happened::Rescheduled {
                subject: subject(1, "fire"),
                expires_at: at(60),
                by: "ops".to_owned(),
            },
        ),
        (
            60,
            Happened::Expired {
                subject: subject(1, "fire"),
            },
        ),
        (
            70,
            Happened::Reloaded {
                by: "SIGHUP".to_owned(),
                lifted: vec![subject(2, "flood")],
            },
        ),
        (
            80,
            Happened::Halted {
                by: "chief".to_owned(),
                lifted: vec![subject(3, "quake")],
            },
        ),
    ] {
        history.apply(&Event {
            at: at(second),
            what,
        });
    }
    let records = history.newest_first();
    let summary: Vec<_> = records
        .iter()
        .map(|r| (&*r.scenario, r.expires_at, r.ended.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (
                "quake",
                at(600),
                Some((at(80), Ending::Halted, Some("chief".to_owned())))
            ),
            (
                "flood",
                at(600),
                Some((at(70), Ending::Lifted, Some("SIGHUP".to_owned())))
            ),
            ("fire", at(60), Some((at(60), Ending::Expired, None))),
        ]
    );
}
