//! The plan-wide safety lever over the real admin API: `[safety]
//! max_active` answers 409 naming the scenarios active, and
//! `allow_datacenters` answers 403 naming the data center a scenario
//! would touch; a refused activation changes nothing on the data plane.

mod support;
use support::*;

use http::{Method, StatusCode};

/// pangyo runs talk, ansan runs maps; scenarios `talk-down` and
/// `talk-slow` hit talk, `maps-down` hits maps; then `safety` lines.
async fn plan(safety: &str) -> firedrill::Running {
    let talk = http_upstream("talk").await;
    let maps = http_upstream("maps").await;
    let mut text = PlanText::new(&["pangyo", "ansan"])
        .http("talk", "pangyo", talk)
        .http("maps", "ansan", maps)
        .fault("talk-down", "talk", "action = 'error'; status = 503")
        .fault("talk-slow", "talk", "action = 'delay'; latency = '10ms'")
        .fault("maps-down", "maps", "action = 'error'; status = 503")
        .toml()
        .to_owned();
    text += &format!("\n[safety]\n{}\n", safety.replace("; ", "\n"));
    start(&text).await
}

async fn post(running: &firedrill::Running, scenario: &str) -> (StatusCode, serde_json::Value) {
    admin(running, Method::POST, &format!("/faults/{scenario}"), "").await
}

#[tokio::test]
async fn max_active_refuses_one_more_with_409_naming_the_active_ones() {
    let running = plan("max_active = 2").await;
    activate(&running, "talk-down").await;
    activate(&running, "talk-slow").await;
    let (status, body) = post(&running, "maps-down").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"],
        "[safety] max_active is 2 and 2 are already active (talk-down, talk-slow); lift one first"
    );
    // Refused means nothing changed: maps still answers.
    let (code, text) = get(addr(&running, "maps"), "/").await;
    assert_eq!(
        (code, text.as_str()),
        (StatusCode::OK, "maps answered GET /\n")
    );
    // Asking again for an active one is not one more.
    let (status, body) = post(&running, "talk-down").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    lift(&running, "talk-slow").await;
    activate(&running, "maps-down").await;
    let (code, _) = get(addr(&running, "maps"), "/").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn allow_datacenters_refuses_a_scenario_reaching_outside_with_403() {
    let running = plan("allow_datacenters = ['ansan']").await;
    let (status, body) = post(&running, "talk-down").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        body["error"],
        "[safety] allow_datacenters does not include `pangyo`, which scenario `talk-down` would touch; allowed: ansan"
    );
    let (code, _) = get(addr(&running, "talk"), "/").await;
    assert_eq!(code, StatusCode::OK);
    let (_, events) = admin(&running, Method::GET, "/events", "").await;
    assert_eq!(events["events"], serde_json::json!([]), "{events}");
    activate(&running, "maps-down").await;
    let (code, _) = get(addr(&running, "maps"), "/").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
}
