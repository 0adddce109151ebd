use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::*;

fn fault(uid: u64, action: Action) -> Arc<Fault> {
    Arc::new(Fault {
        uid,
        scenario: Arc::from("test"),
        index: uid as usize,
        selector: Selector {
            service: Some(Arc::from("talk")),
            ..Selector::default()
        },
        targets: Vec::new(),
        action,
        probability: 1.0,
        after: Duration::ZERO,
        duration: None,
    })
}

fn delay(ms: u64, jitter: u64, direction: Direction) -> Action {
    Action::Delay(Delay {
        latency: Duration::from_millis(ms),
        jitter: Duration::from_millis(jitter),
        direction,
    })
}

fn error(status: u16) -> Action {
    Action::Error(ErrorResponse {
        status: StatusCode::from_u16(status).unwrap(),
        body: Bytes::new(),
        headers: HeaderMap::new(),
    })
}

const GET_ROOT: RequestInfo<'static> = RequestInfo {
    method: &Method::GET,
    path: "/",
};

fn always(_: &Fault) -> f64 {
    0.0
}

#[test]
fn no_faults_forward_without_delay() {
    let decision = decide(&[], Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Forward));
    assert!(decision.delay.is_zero());
    assert!(decision.applied.is_empty());
}

#[test]
fn blackhole_beats_drop_beats_error() {
    let faults = [
        fault(1, error(503)),
        fault(2, Action::Drop),
        fault(3, Action::Blackhole),
    ];
    let decision = decide(&faults, Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Blackhole));
    assert_eq!(decision.applied[0].uid, 3);

    let decision = decide(&faults[..2], Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Drop));

    let decision = decide(&faults[..1], Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Error(e) if e.status == 503));
}

#[test]
fn the_first_error_in_plan_order_wins() {
    let faults = [fault(1, error(503)), fault(2, error(500))];
    let decision = decide(&faults, Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Error(e) if e.status == 503));
}

#[test]
fn delays_add_up_per_direction() {
    let faults = [
        fault(1, delay(100, 10, Direction::Both)),
        fault(2, delay(50, 0, Direction::Upstream)),
        fault(3, delay(20, 0, Direction::Downstream)),
    ];
    let decision = decide(&faults, None, always);
    assert_eq!(decision.delay.base, Duration::from_millis(170));
    assert_eq!(decision.delay.jitter, Duration::from_millis(10));
    assert_eq!(decision.upstream.base, Duration::from_millis(150));
    assert_eq!(decision.downstream.base, Duration::from_millis(120));
    assert_eq!(decision.applied.len(), 3);
}

#[test]
fn delay_still_applies_before_an_error() {
    let faults = [
        fault(1, delay(100, 0, Direction::Both)),
        fault(2, error(503)),
    ];
    let decision = decide(&faults, Some(GET_ROOT), always);
    assert!(matches!(decision.verdict, Verdict::Error(_)));
    assert_eq!(decision.delay.base, Duration::from_millis(100));
    let uids: Vec<u64> = decision.applied.iter().map(|f| f.uid).collect();
    assert_eq!(uids, [2, 1]);
}

#[test]
fn error_faults_do_not_touch_tcp_connections() {
    let faults = [fault(1, error(503))];
    let decision = decide(&faults, None, always);
    assert!(matches!(decision.verdict, Verdict::Forward));
    assert!(decision.applied.is_empty());
}

#[test]
fn method_and_path_selectors_match_only_their_requests() {
    let mut only_post_pay = fault(1, Action::Drop);
    let selector = &mut Arc::get_mut(&mut only_post_pay).unwrap().selector;
    selector.method = Some(Method::POST);
    selector.path_prefix = Some("/pay".to_owned());
    let faults = [only_post_pay];
    let hit = |method: &Method, path: &str| {
        matches!(
            decide(&faults, Some(RequestInfo { method, path }), always).verdict,
            Verdict::Drop
        )
    };
    assert!(hit(&Method::POST, "/pay/checkout"));
    assert!(!hit(&Method::GET, "/pay/checkout"));
    assert!(!hit(&Method::POST, "/login"));
    // A raw TCP connection has no method or path, so such a fault skips it.
    assert!(matches!(
        decide(&faults, None, always).verdict,
        Verdict::Forward
    ));
}

#[test]
fn probability_compares_the_roll() {
    let mut flaky = fault(1, Action::Drop);
    Arc::get_mut(&mut flaky).unwrap().probability = 0.3;
    let faults = [flaky];
    assert!(matches!(
        decide(&faults, None, |_| 0.29).verdict,
        Verdict::Drop
    ));
    assert!(matches!(
        decide(&faults, None, |_| 0.3).verdict,
        Verdict::Forward
    ));
}

#[test]
fn connection_rolls_are_stable_and_spread_evenly() {
    let flaky = fault(7, Action::Drop);
    assert_eq!(connection_roll(42, &flaky), connection_roll(42, &flaky));
    let below = (0..10_000u64)
        .filter(|seed| connection_roll(*seed, &flaky) < 0.25)
        .count();
    assert!(
        (2_200..2_800).contains(&below),
        "{below} of 10000 below 0.25"
    );
    let other = fault(8, Action::Drop);
    assert_ne!(connection_roll(42, &flaky), connection_roll(42, &other));
}

#[test]
fn latency_samples_stay_within_base_and_jitter() {
    let latency = Latency {
        base: Duration::from_millis(100),
        jitter: Duration::from_millis(50),
    };
    assert_eq!(latency.sample(0.0), Duration::from_millis(100));
    assert_eq!(latency.sample(1.0), Duration::from_millis(150));
    assert_eq!(latency.sample(7.0), Duration::from_millis(150));
}
