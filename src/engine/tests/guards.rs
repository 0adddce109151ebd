//! A guard stopping an activation, and the `[safety]` lever refusing one.

use super::*;

fn stop(guard: &str) -> Stop {
    Stop {
        guard: guard.to_owned(),
        value: Some(0.5),
        above: 0.05,
        detail: "error ratio 0.5 outside the scenario over 30s".to_owned(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_guard_stops_its_activation_and_the_history_says_why() {
    let engine = engine();
    let mut events = engine.subscribe();
    let Activated::New(activation) = engine.activate("fire", None, "lead").unwrap() else {
        panic!("fire was not active");
    };
    let stopped = engine.stop(activation.id, stop("ansan-stays-up"));
    assert_eq!(stopped.map(|a| a.id), Some(activation.id));
    assert!(engine.active().is_empty());
    assert!(actions(&engine, TALK).is_empty());
    let record = &engine.history()[0];
    let (_, ending, by) = record.ended.clone().expect("it ended");
    assert_eq!(ending, Ending::Stopped);
    assert_eq!(by.as_deref(), Some("guard ansan-stays-up"));
    assert_eq!(record.stopped_by, Some(stop("ansan-stays-up")));
    let mut found = false;
    while let Ok(event) = events.try_recv() {
        if let Happened::Stopped { subject, stop: why } = event.what {
            assert_eq!(subject.id, activation.id);
            assert_eq!(why.guard, "ansan-stays-up");
            found = true;
        }
    }
    assert!(found, "no Stopped event was broadcast");
}

#[tokio::test(start_paused = true)]
async fn a_stop_for_an_activation_no_longer_active_changes_nothing() {
    let engine = engine();
    let Activated::New(first) = engine.activate("fire", None, "lead").unwrap() else {
        panic!("fire was not active");
    };
    engine.lift("fire", "lead").unwrap();
    engine.activate("fire", None, "lead").unwrap();
    // The guard read the first activation; the second is not its to stop.
    assert!(engine.stop(first.id, stop("late")).is_none());
    assert_eq!(engine.active().len(), 1);
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
}

fn engine_with(safety: &str) -> Engine {
    let plan = format!("{PLAN}\n[safety]\n{safety}\n");
    let plan = Arc::new(config::parse(&plan, "engine.toml").unwrap_or_else(|e| panic!("{e}")));
    let live = Arc::new(Live::new(Rules::empty(plan.topology.services.len())));
    Engine::new(plan, live)
}

#[tokio::test(start_paused = true)]
async fn max_active_refuses_one_more_and_names_the_active_ones() {
    let engine = engine_with("max_active = 1");
    engine.activate("fire", None, "lead").unwrap();
    // Asking again for one already active is not one more.
    engine
        .activate("fire", Some(Duration::from_secs(60)), "lead")
        .unwrap();
    let error = engine.activate("recovery", None, "ops").unwrap_err();
    let ActivateError::Refused(refused) = error else {
        panic!("{error:?}");
    };
    assert_eq!(
        refused.to_string(),
        "[safety] max_active is 1 and one is already active (fire); lift one first"
    );
    assert!(actions(&engine, MAIL).iter().all(|a| *a == "blackhole"));
    assert_eq!(engine.active().len(), 1);
    engine.lift("fire", "lead").unwrap();
    engine.activate("recovery", None, "ops").unwrap();
}

#[tokio::test(start_paused = true)]
async fn allow_datacenters_refuses_a_scenario_reaching_outside() {
    let engine = engine_with("allow_datacenters = ['ansan']");
    let error = engine.activate("fire", None, "lead").unwrap_err();
    assert_eq!(
        error.to_string(),
        "[safety] allow_datacenters does not include `pangyo`, which scenario `fire` would touch; allowed: ansan"
    );
    assert!(engine.active().is_empty());
    assert!(actions(&engine, TALK).is_empty());
    assert!(engine.history().is_empty());
}
