//! `GET /status` over real sockets with traffic flowing through real
//! upstreams: a data center goes dark under a blackout and recovers after
//! it is lifted, while the others stay healthy; the endpoint follows the
//! admin API's tokens.

mod support;
use gameday::Traffic;
use support::*;

#[path = "support/gameday.rs"]
mod gameday;

use std::time::Duration;

use firedrill::admin::api;
use firedrill::Running;
use http::{Method, StatusCode};
use tokio::time::Instant;

async fn status(running: &Running) -> api::Status {
    let (code, body) = admin(running, Method::GET, "/status", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_value(body.clone()).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Each data center's state and its services', in order, to read in a
/// failure: `pangyo dark (talk dark, maps dark); ansan healthy (...)`.
fn states(status: &api::Status) -> String {
    let datacenter = |dc: &api::DataCenterStatus| {
        let services: Vec<String> = (dc.services.iter())
            .map(|s| format!("{} {}", s.name, s.state))
            .collect();
        format!("{} {} ({})", dc.name, dc.state, services.join(", "))
    };
    let all: Vec<String> = status.datacenters.iter().map(datacenter).collect();
    all.join("; ")
}

/// Polls `GET /status` until `wanted` holds, for at most `limit`.
async fn wait_for(
    running: &Running,
    limit: Duration,
    what: &str,
    wanted: impl Fn(&api::Status) -> bool,
) -> api::Status {
    let deadline = Instant::now() + limit;
    loop {
        let now = status(running).await;
        if wanted(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {limit:?}: {}",
            states(&now)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn state_of<'s>(status: &'s api::Status, datacenter: &str) -> &'s str {
    let dc = status.datacenters.iter().find(|dc| dc.name == datacenter);
    &dc.unwrap_or_else(|| panic!("no {datacenter}")).state
}

#[tokio::test]
async fn a_blacked_out_datacenter_reads_dark_and_recovers_after_the_lift() {
    let running = gameday::plan("").await.start().await;
    let _traffic = Traffic::start(&running);
    let busy = wait_for(&running, STEP, "traffic in every data center", |s| {
        s.datacenters.iter().all(|dc| dc.requests_per_second > 0.0)
    })
    .await;
    assert_eq!(busy.window, "5s");
    assert!(busy.active.is_empty());
    for dc in &busy.datacenters {
        assert_eq!(dc.state, "healthy", "{}", states(&busy));
        assert_eq!(dc.error_ratio, Some(0.0));
        assert!(dc.p99_seconds.is_some());
    }

    activate(&running, "pangyo-fire").await;
    let dark = wait_for(&running, Duration::from_secs(3), "pangyo dark", |s| {
        state_of(s, "pangyo") == "dark"
    })
    .await;
    assert_eq!(state_of(&dark, "ansan"), "healthy", "{}", states(&dark));
    let pangyo = &dark.datacenters[0];
    assert!(pangyo.services.iter().all(|s| s.state == "dark"));
    assert_eq!(pangyo.services[0].faults[0].action.action, "blackhole");
    assert_eq!(pangyo.services[0].faults[0].scenario, "pangyo-fire");
    let scenarios: Vec<&str> = dark.active.iter().map(|a| &*a.scenario).collect();
    assert_eq!(scenarios, ["pangyo-fire"]);

    // While the blackout lasts, pangyo's requests fail and ansan's do not.
    let failing = wait_for(&running, STEP, "pangyo's requests failing", |s| {
        s.datacenters[0].error_ratio.is_some_and(|r| r > 0.5)
    })
    .await;
    assert_eq!(failing.datacenters[1].error_ratio, Some(0.0));
    assert_eq!(state_of(&failing, "ansan"), "healthy");

    lift(&running, "pangyo-fire").await;
    // Failed requests stay in the window for a few seconds after the lift.
    let recovered = wait_for(&running, Duration::from_secs(20), "pangyo healthy", |s| {
        s.datacenters.iter().all(|dc| dc.state == "healthy")
    })
    .await;
    assert!(recovered.active.is_empty());
    assert!(recovered.datacenters[0].requests_per_second > 0.0);
}

#[tokio::test]
async fn status_needs_a_token_when_the_plan_has_tokens() {
    let tokens = "tokens = [{ name = 'lead', value = 's3cret-lead' }]";
    let running = gameday::plan(tokens).await.start().await;
    let (code, body) = admin(&running, Method::GET, "/status", "").await;
    assert_eq!(code, StatusCode::UNAUTHORIZED, "{body}");
    let url = format!("http://{}/status", running.admin_addr());
    let request = http::Request::get(url)
        .header("authorization", "Bearer s3cret-lead")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = within(STEP, client().request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let open = format!("{tokens}; open_reads = true");
    let running = gameday::plan(&open).await.start().await;
    let status = status(&running).await;
    assert_eq!(status.datacenters.len(), 2);
}
