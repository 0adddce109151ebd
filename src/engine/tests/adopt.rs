//! Adopting an activation made elsewhere: stage timing from its wall-clock
//! start, local expiry, the cap, and what is already over.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::events::drain;
use super::*;

const SECOND: Duration = Duration::from_secs(1);

/// An activation of `scenario` that `peer` started `ago` and that ends
/// `left` from now.
fn remote(scenario: &str, ago: Duration, left: Duration) -> Remote {
    let now = SystemTime::now();
    Remote {
        scenario: scenario.to_owned(),
        started_at: now - ago,
        expires_at: now + left,
        peer: "firedrill-ansan".to_owned(),
        by: "lead (10.0.0.7:53412)".to_owned(),
    }
}

fn applied(adopted: Adopted) -> Activated {
    match adopted {
        Adopted::Applied(activated) => activated,
        Adopted::Over => panic!("the adoption was applied"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_adopted_activation_keeps_the_stage_timing_of_its_wall_clock_start() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    // Started there 2m57s ago: talk's 1m blackhole is over, mail's 3m one
    // is in force, and mail's delay starts in 3 s.
    let ago = Duration::from_secs(177);
    let adoption = remote("recovery", ago, Duration::from_secs(3600));
    let Activated::New(activation) = applied(engine.adopt(&adoption).unwrap()) else {
        panic!("a new activation");
    };
    let now = Instant::now();
    assert!(activation.started <= now - ago && activation.started > now - ago - SECOND);
    assert_eq!(activation.started_at, adoption.started_at);
    assert_eq!(
        activation.origin,
        Origin::Peer("firedrill-ansan".to_owned())
    );
    assert_eq!(activation.by, "lead (10.0.0.7:53412)");
    assert!(
        actions(&engine, TALK).is_empty(),
        "talk's stage ended there"
    );
    assert_eq!(actions(&engine, MAIL), ["blackhole"]);

    tokio::time::sleep(Duration::from_millis(2900)).await;
    assert_eq!(actions(&engine, MAIL), ["blackhole"], "not yet 3 s");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        actions(&engine, MAIL),
        ["delay"],
        "the delay came after 3 s"
    );
    // It completes with its last fault, 5m after its start there.
    assert_eq!(
        activation.expires,
        activation.started + Duration::from_secs(300)
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_adopted_activation_expires_here_at_its_expiry_without_a_lift() {
    let engine = engine();
    let shutdown = CancellationToken::new();
    tokio::spawn(engine.clone().run(shutdown.clone()));
    let mut events = engine.subscribe();
    let adoption = remote("fire", Duration::from_secs(10), Duration::from_secs(20));
    applied(engine.adopt(&adoption).unwrap());
    assert_eq!(
        drain(&mut events),
        [
            "activated fire by lead (10.0.0.7:53412)",
            "stage 0 of fire started"
        ]
    );
    let record = &engine.history()[0];
    let gap = (record.expires_at.duration_since(adoption.expires_at))
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap();
    assert!(
        gap < SECOND,
        "it ends here when it ends there: {gap:?} apart"
    );

    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(actions(&engine, TALK), ["blackhole"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(actions(&engine, TALK).is_empty());
    assert!(engine.active().is_empty());
    assert_eq!(
        drain(&mut events),
        ["expired fire", "stage 0 of fire ended"]
    );
    shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_adopted_activation_is_capped_at_max_duration_from_its_start() {
    let engine = engine();
    // fire may last 10m; it started 9m ago and asks for another hour.
    let adoption = remote("fire", Duration::from_secs(540), Duration::from_secs(3600));
    let Activated::New(activation) = applied(engine.adopt(&adoption).unwrap()) else {
        panic!("a new activation");
    };
    assert_eq!(
        activation.expires - activation.started,
        Duration::from_secs(600)
    );
    assert_eq!(
        activation.expires_at(),
        adoption.started_at + Duration::from_secs(600)
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(engine.active().is_empty(), "over 10m after its start");
}

#[tokio::test(start_paused = true)]
async fn adopting_an_activation_that_is_over_applies_nothing_and_says_so() {
    let engine = engine();
    let mut events = engine.subscribe();
    let generation = engine.live().load().generation();
    let ended = Remote {
        expires_at: SystemTime::now() - SECOND,
        ..remote("fire", Duration::from_secs(60), Duration::ZERO)
    };
    // Its expiry is an hour away, but 10m from its start has passed.
    let too_old = remote("fire", Duration::from_secs(660), Duration::from_secs(3600));
    // Every fault of recovery has ended: it completed there.
    let completed = remote(
        "recovery",
        Duration::from_secs(301),
        Duration::from_secs(60),
    );
    for adoption in [ended, too_old, completed] {
        let adopted = engine.adopt(&adoption).unwrap();
        assert!(
            matches!(adopted, Adopted::Over),
            "{adoption:?}: {adopted:?}"
        );
    }
    assert!(engine.active().is_empty());
    assert!(engine.history().is_empty());
    assert_eq!(engine.live().load().generation(), generation);
    assert_eq!(drain(&mut events), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn adopting_an_activation_already_active_here_moves_its_end() {
    let engine = engine();
    let Activated::New(local) = engine.activate("fire", None, "lead").unwrap() else {
        panic!("a new activation");
    };
    let mut events = engine.subscribe();
    let adoption = remote("fire", Duration::ZERO, Duration::from_secs(120));
    let Activated::Changed {
        activation,
        previous,
        ended,
    } = applied(engine.adopt(&adoption).unwrap())
    else {
        panic!("an active scenario changes");
    };
    assert_eq!((previous, ended), (local.expires, false));
    assert_eq!(activation.id, local.id, "the same activation");
    assert_eq!(activation.started, local.started, "its start stays");
    assert_eq!(activation.origin, Origin::Local);
    let left = activation.expires - Instant::now();
    assert!(left <= Duration::from_secs(120) && left > Duration::from_secs(119));
    assert_eq!(engine.history()[0].expires_at, activation.expires_at());
    assert_eq!(
        drain(&mut events),
        ["rescheduled fire by lead (10.0.0.7:53412)"]
    );

    // An end that has passed there lifts it here, by that caller.
    let adoption = Remote {
        expires_at: SystemTime::now() - SECOND,
        ..adoption
    };
    let Activated::Changed { ended, .. } = applied(engine.adopt(&adoption).unwrap()) else {
        panic!("an active scenario changes");
    };
    assert!(ended);
    assert!(engine.active().is_empty());
    assert!(actions(&engine, TALK).is_empty());
}

#[tokio::test(start_paused = true)]
async fn adopting_an_unknown_scenario_names_the_known_ones() {
    let engine = engine();
    let error = engine
        .adopt(&remote("flood", Duration::ZERO, Duration::from_secs(60)))
        .unwrap_err();
    assert_eq!(error.known, ["fire", "recovery"]);
}
