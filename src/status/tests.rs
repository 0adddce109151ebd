//! The state rules, and the data centers read from a parsed plan, a rule
//! snapshot and counters, without a socket.

use std::time::Duration;

use super::*;
use crate::config;
use crate::stats::Outcome;

/// A plan with `talk` and `maps` in pangyo, `mail` in ansan, and the
/// scenario `fire` whose faults are `faults` (TOML lines per fault).
fn plan(faults: &[&str]) -> Arc<crate::config::Plan> {
    let mut text = String::from(
        "[admin]\nlisten = '127.0.0.1:0'\n[datacenters.pangyo]\n[datacenters.ansan]\n",
    );
    for (name, dc) in [("talk", "pangyo"), ("maps", "pangyo"), ("mail", "ansan")] {
        text += &format!(
            "[services.{name}]\ndatacenter = '{dc}'\nprotocol = 'http'\nlisten = '127.0.0.1:0'\nupstream = '127.0.0.1:9'\n"
        );
    }
    text += "[scenarios.fire]\n";
    for fault in faults {
        text += &format!("[[scenarios.fire.faults]]\n{fault}\n");
    }
    Arc::new(config::parse(&text, "plan.toml").unwrap_or_else(|e| panic!("{e}")))
}

/// The first fault of a plan whose scenario has `fault`.
fn fault(fault: &str) -> Arc<Fault> {
    let plan = plan(&[fault]);
    let scenario = plan.scenario("fire").expect("fire");
    Arc::clone(&scenario.faults[0])
}

#[test]
fn a_fault_fails_all_traffic_only_when_it_always_fails_every_request() {
    for action in ["'blackhole'", "'drop'", "'error'\nstatus = 503"] {
        assert!(
            fails_all(&fault(&format!("service = 'talk'\naction = {action}"))),
            "{action}"
        );
    }
    let partial = fault("service = 'talk'\naction = 'drop'\nprobability = 0.5");
    assert!(!fails_all(&partial));
    let delay = fault("service = 'talk'\naction = 'delay'\nlatency = '5s'");
    assert!(!fails_all(&delay));
    let narrowed = fault("service = 'talk'\naction = 'blackhole'\nmethod = 'POST'");
    assert!(!fails_all(&narrowed));
    let narrowed = fault("service = 'talk'\naction = 'error'\nstatus = 503\npath_prefix = '/api'");
    assert!(!fails_all(&narrowed));
}

#[test]
fn a_service_is_dark_under_a_fault_that_fails_all_or_when_nearly_all_failed() {
    let blackhole = fault("service = 'talk'\naction = 'blackhole'");
    assert_eq!(service_state(&[blackhole], 0, 0), State::Dark);
    // No fault at all, but 95 of 100 requests failed: the upstream is gone.
    assert_eq!(service_state(&[], 100, 95), State::Dark);
    assert_eq!(service_state(&[], 100, 94), State::Degraded);
}

#[test]
fn a_service_is_degraded_under_any_fault_or_with_any_failure() {
    let delay = fault("service = 'talk'\naction = 'delay'\nlatency = '1s'");
    assert_eq!(service_state(&[delay], 100, 0), State::Degraded);
    let half = fault("service = 'talk'\naction = 'drop'\nprobability = 0.5");
    assert_eq!(service_state(&[half], 0, 0), State::Degraded);
    assert_eq!(service_state(&[], 1000, 1), State::Degraded);
}

#[test]
fn a_service_without_faults_or_failures_is_healthy_even_without_traffic() {
    assert_eq!(service_state(&[], 0, 0), State::Healthy);
    assert_eq!(service_state(&[], 500, 0), State::Healthy);
}

#[test]
fn a_datacenter_is_dark_only_when_every_service_is() {
    use State::*;
    assert_eq!(datacenter_state([Dark, Dark]), Dark);
    assert_eq!(datacenter_state([Dark, Healthy]), Degraded);
    assert_eq!(datacenter_state([Healthy, Degraded]), Degraded);
    assert_eq!(datacenter_state([Healthy, Healthy]), Healthy);
    assert_eq!(datacenter_state([]), Healthy, "no service running");
}

fn describe(fault: &Fault) -> api::ServiceFault {
    api::ServiceFault {
        action: api::Action {
            action: fault.action.name().to_owned(),
            probability: fault.probability,
            latency: None,
            jitter: None,
            direction: None,
            status: None,
        },
        scenario: fault.scenario.to_string(),
        index: fault.index,
    }
}

/// The model of `plan` as started, each service on a made-up port.
fn model(plan: &Arc<crate::config::Plan>) -> Model {
    let bound: Vec<std::net::SocketAddr> = (0..plan.topology.services.len())
        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 40000 + i as u16)))
        .collect();
    Model::new(Arc::clone(plan), &bound)
}

#[test]
fn datacenters_read_faults_in_force_and_counted_requests() {
    let plan = plan(&["datacenter = 'pangyo'\naction = 'blackhole'"]);
    let model = model(&plan);
    let mut rules = Rules::empty(3);
    for fault in &plan.scenario("fire").expect("fire").faults {
        rules.add(fault, &model.slots());
    }
    let stats = Stats::default();
    let mail = stats.register("mail", "ansan");
    for _ in 0..8 {
        mail.request(Outcome::Forwarded, 2, Duration::from_millis(3));
    }
    let talk = stats.register("talk", "pangyo");
    talk.request(Outcome::Blackholed, 0, Duration::from_secs(1));

    let datacenters = datacenters(&model, &rules, &stats, WINDOW, describe);
    let names: Vec<&str> = datacenters.iter().map(|dc| &*dc.name).collect();
    assert_eq!(names, ["pangyo", "ansan"]);
    let (pangyo, ansan) = (&datacenters[0], &datacenters[1]);
    assert_eq!(pangyo.state, "dark");
    assert!(pangyo.services.iter().all(|s| s.state == "dark"));
    assert_eq!(pangyo.services[0].faults[0].action.action, "blackhole");
    assert_eq!(pangyo.error_ratio, Some(1.0));
    assert_eq!(ansan.state, "healthy");
    assert_eq!(ansan.services[0].name, "mail");
    assert_eq!(ansan.error_ratio, Some(0.0));
    assert!(ansan.requests_per_second > 0.0);
    assert!(ansan.p99_seconds.is_some_and(|p| p > 0.0025 && p <= 0.005));
    assert!(ansan.services[0].faults.is_empty());
}

#[test]
fn a_datacenter_with_one_failing_service_is_degraded() {
    // The scenario is not active: its fault is in no rule.
    let plan = plan(&["service = 'talk'\naction = 'drop'"]);
    let model = model(&plan);
    let stats = Stats::default();
    let maps = stats.register("maps", "pangyo");
    for _ in 0..20 {
        maps.request(Outcome::Forwarded, 5, Duration::from_millis(1));
    }
    let datacenters = datacenters(&model, &Rules::empty(3), &stats, WINDOW, describe);
    let pangyo = &datacenters[0];
    let states: Vec<(&str, &str)> = (pangyo.services.iter())
        .map(|s| (&*s.name, &*s.state))
        .collect();
    assert_eq!(states, [("talk", "healthy"), ("maps", "dark")]);
    assert_eq!(pangyo.state, "degraded");
    assert_eq!(pangyo.error_ratio, Some(1.0));
    assert_eq!(datacenters[1].state, "healthy");
    assert_eq!(datacenters[1].error_ratio, None, "no requests");
}
