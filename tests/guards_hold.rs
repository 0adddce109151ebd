//! A guard's `for` end to end: firedrill in process with a real upstream
//! switched to failing at a known moment and real traffic to it. The
//! guard goes pending, trips once the condition has held for `for` (never
//! before), and the scenario is recorded as stopped; reloading the same
//! plan over the admin API while the guard is pending keeps how long its
//! condition has held, so frequent reloads cannot keep it from tripping.

mod support;
use support::*;

#[path = "support/guards.rs"]
mod drill;
use drill::*;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use firedrill::engine::{Happened, Stop};
use http::{Method, StatusCode};

/// How long a test waits for a guard to trip before it fails: a bound
/// against hanging, not a measure of speed.
const PATIENCE: Duration = Duration::from_secs(30);

/// The next stop among `events`.
async fn next_stop(events: &mut EngineEvents) -> Stop {
    loop {
        match events.recv().await {
            Ok(event) => {
                if let Happened::Stopped { stop, .. } = event.what {
                    return stop;
                }
            }
            Err(error) => panic!("engine events stopped: {error}"),
        }
    }
}

#[tokio::test]
async fn a_guard_with_for_trips_once_its_condition_has_held_that_long() {
    let (maps, status) = switchable_upstream().await;
    let guard = "name = 'ansan'; error_ratio = { datacenter = 'ansan' }; above = 0.5; for = '2s'; window = '1s'";
    let running = start(&plan(maps, "action = 'drop'", &[guard])).await;
    let load = traffic(&running, &["maps"]);
    activate(&running, "fire").await;
    wait_for_guard(&running, STEP, |g| {
        g["state"] == "ok" && g["value"].is_number()
    })
    .await;
    let mut events = engine_events(&running);
    // The condition cannot hold before maps starts failing.
    let started = Instant::now();
    status.store(503, Ordering::Relaxed);
    let pending = wait_for_guard(&running, STEP, |g| g["state"] == "pending").await;
    assert_eq!(pending["for"], "2s", "{pending}");
    let stop = wait_for_stop(&mut events, PATIENCE).await;
    let held = started.elapsed();
    eprintln!("maps failing to lifted with for = 2s: {held:?}");
    assert!(held >= Duration::from_secs(2), "tripped after {held:?}");
    assert_eq!(stop.guard, "ansan");
    assert!(stop.value.is_some_and(|v| v > 0.5), "{stop:?}");
    let event = last_event(&running).await;
    assert_eq!(event["ended"], "stopped", "{event}");
    assert_eq!(event["ended_by"], "guard ansan", "{event}");
    assert!(event["stopped_by"]["value"].is_number(), "{event}");
    assert!(
        guards(&running, "fire").await.is_none(),
        "fire is still active"
    );
    load.abort();
}

#[tokio::test]
async fn reloading_the_same_plan_keeps_a_pending_guards_hold() {
    let (maps, status) = switchable_upstream().await;
    let guard = "name = 'ansan'; error_ratio = { datacenter = 'ansan' }; above = 0.5; for = '4s'; window = '1s'";
    let dir = TempDir::new("firedrill-guard-reload");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan(maps, "action = 'drop'", &[guard])).unwrap();
    let loaded = firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let running = firedrill::start_reloadable(loaded, path.clone())
        .await
        .expect("firedrill starts");
    let load = traffic(&running, &["maps"]);
    activate(&running, "fire").await;
    wait_for_guard(&running, STEP, |g| {
        g["state"] == "ok" && g["value"].is_number()
    })
    .await;
    let mut events = engine_events(&running);
    let started = Instant::now();
    status.store(503, Ordering::Relaxed);
    wait_for_guard(&running, STEP, |g| g["state"] == "pending").await;
    // A tool that reloads the unchanged plan far more often than `for`.
    let mut reloads = 0;
    let stop = within(PATIENCE, async {
        loop {
            let (code, answer) = admin(&running, Method::POST, "/reload", "").await;
            assert_eq!(code, StatusCode::OK, "{answer}");
            reloads += 1;
            tokio::select! {
                stop = next_stop(&mut events) => return stop,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    })
    .await;
    let held = started.elapsed();
    eprintln!("tripped after {held:?} and {reloads} reloads");
    assert!(held >= Duration::from_secs(4), "tripped after {held:?}");
    assert!(reloads >= 2, "only {reloads} reloads before it tripped");
    assert_eq!(stop.guard, "ansan");
    let event = last_event(&running).await;
    assert_eq!(event["ended"], "stopped", "{event}");
    assert_eq!(event["ended_by"], "guard ansan", "{event}");
    load.abort();
}
