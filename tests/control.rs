//! The control handle: the one path by which the running proxy changes.
//! A service added while running, not from a plan file, serves real
//! traffic, obeys a scenario, and goes away when removed; a change that
//! does not fit changes nothing.

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use tokio::net::TcpStream;

use firedrill::model::Change;
use firedrill::topology::Service;
use support::*;

/// The service `name` as a plan `text` declares it: what another source
/// (an API creating proxies, a fleet) hands to the control handle.
fn declared(text: &str, name: &str) -> (Arc<firedrill::config::Plan>, Arc<Service>) {
    let plan = firedrill::config::parse(text, "runtime.toml").unwrap_or_else(|e| panic!("{e}"));
    let service = plan.topology.service(name).expect("declared").clone();
    (Arc::new(plan), Arc::new(service))
}

#[tokio::test]
async fn a_service_added_at_runtime_serves_obeys_a_scenario_and_goes_away_when_removed() {
    let web = http_upstream("web").await;
    let extra_web = http_upstream("extra-web").await;
    let base = PlanText::new(&["pangyo"]).http("talk", "pangyo", web);
    let running = base.start().await;
    let control = running.control();
    let talk = addr(&running, "talk");
    let with_extra = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", web)
        .http("extra", "pangyo", extra_web)
        .fault("extra-down", "extra", "action = 'error'; status = 503");
    let (scenarios, _) = declared(with_extra.toml(), "extra");
    // Declared on its own, so it is the first service there and the
    // second in the plan the scenarios come from.
    let alone = PlanText::new(&["pangyo"]).http("extra", "pangyo", extra_web);
    let (_, extra) = declared(alone.toml(), "extra");

    assert!(running.service_addr("extra").is_none());
    let lifted = within(STEP, control.apply(vec![Change::Add(extra)], "test"))
        .await
        .expect("the service is added");
    assert!(lifted.is_empty());
    let at = running.service_addr("extra").expect("it listens");
    let (status, body) = get(at, "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "extra-web answered GET /hello\n")
    );
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    let services = &topology["datacenters"][0]["services"];
    assert_eq!(services[1]["name"], "extra", "{topology}");
    assert_eq!(services[1]["listen"], at.to_string(), "{topology}");

    // A scenario that names it, applied the same way, reaches it.
    within(
        STEP,
        control.apply(vec![Change::Scenarios(scenarios)], "test"),
    )
    .await
    .expect("the scenarios apply");
    activate(&running, "extra-down").await;
    let (status, _) = get(at, "/hello").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let injected = [("service", "extra"), ("scenario", "extra-down")];
    wait_for_sample(&running, "firedrill_faults_injected_total", &injected, 1.0).await;
    let (status, _) = get(talk, "/hello").await;
    assert_eq!(status, StatusCode::OK, "talk is not in the scenario");

    let mut open = connect(at).await;
    within(
        STEP,
        control.apply(vec![Change::Remove("extra".into())], "test"),
    )
    .await
    .expect("the service is removed");
    assert!(running.service_addr("extra").is_none());
    let refused = within(STEP, TcpStream::connect(at)).await;
    assert!(refused.is_err(), "its listener is closed: {refused:?}");
    let closed = closed_within(&mut open, STEP).await;
    assert!(
        matches!(closed, Some(Ok(0)) | Some(Err(_))),
        "its open connection is closed: {closed:?}"
    );
    let (status, body) = get(talk, "/hello").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web answered GET /hello\n")
    );
}

#[tokio::test]
async fn a_change_on_a_taken_port_or_an_unknown_service_changes_nothing() {
    let web = http_upstream("web").await;
    let running = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", web)
        .start()
        .await;
    let control = running.control();
    let talk = addr(&running, "talk");
    // A new service on the port talk listens on cannot bind.
    let text = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", web)
        .http("mail", "pangyo", web)
        .toml()
        .replacen("[services.mail]", "[services.mail]\nlisten = 'PORT'", 1);
    let text = remove_second_listen(&text, "mail").replace("PORT", &talk.to_string());
    let (_, mail) = declared(&text, "mail");
    let remove_talk = Change::Remove("talk".into());
    let taken = within(
        STEP,
        control.apply(vec![remove_talk, Change::Add(mail)], "test"),
    )
    .await;
    let error = taken.expect_err("the port is taken").to_string();
    assert!(
        error.contains("service `mail`") && error.contains("nothing changed"),
        "{error}"
    );
    let unknown = within(
        STEP,
        control.apply(vec![Change::Remove("maps".into())], "test"),
    )
    .await;
    let error = unknown.expect_err("no such service").to_string();
    assert!(error.contains("no service `maps` runs"), "{error}");
    // Talk was not removed along the way.
    assert_eq!(running.service_addr("talk"), Some(talk));
    let (status, _) = get(talk, "/x").await;
    assert_eq!(status, StatusCode::OK);
}

/// `text` without the `listen = '127.0.0.1:0'` line [`PlanText`] wrote for
/// service `name`, whose first `listen` line is the one to keep.
fn remove_second_listen(text: &str, name: &str) -> String {
    let header = format!("[services.{name}]");
    let at = text.find(&header).expect("the service is declared");
    let (before, after) = text.split_at(at);
    format!(
        "{before}{}",
        after.replacen("listen = '127.0.0.1:0'\n", "", 1)
    )
}
