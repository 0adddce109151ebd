//! The admin API's bodies are the typed structs of `firedrill::admin::api`:
//! every answer reads back into its type and writes out the same JSON, so a
//! client can share them. And reading never publishes rules.

mod support;
use support::*;

use std::time::Duration;

use firedrill::admin::api;
use firedrill::Running;
use http::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// `web` (http) and `cache` (tcp) in pangyo, `maps` (http) in ansan;
/// `fire` blacks out pangyo, `maps-slow` delays maps, errors it after a
/// minute, and drops half its
/// connections after 6m, which an activation of 5m never reaches.
async fn stack() -> Running {
    PlanText::new(&[])
        .datacenter("pangyo", "description = 'most of the fleet'")
        .datacenter("ansan", "")
        .http("web", "pangyo", http_upstream("web").await)
        .tcp("cache", "pangyo", echo_upstream().await)
        .http("maps", "ansan", http_upstream("maps").await)
        .scenario_with(
            "fire",
            "description = 'pangyo goes dark'",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        )
        .scenario_with(
            "maps-slow",
            "max_duration = '10m'",
            &[
                "service = 'maps'; action = 'delay'; latency = '200ms'; jitter = '10ms'",
                "service = 'maps'; method = 'GET'; path_prefix = '/api'; action = 'error'; status = 503; after = '1m'; duration = '2m'",
                "service = 'maps'; action = 'drop'; probability = 0.5; after = '6m'",
            ],
        )
        .start()
        .await
}

/// Reads `answer` as a `T` and asserts that `T` writes it out unchanged:
/// no field the server sends is missing from the type, none is renamed.
fn typed<T: DeserializeOwned + Serialize>(answer: &Value) -> T {
    let body: T = serde_json::from_value(answer.clone())
        .unwrap_or_else(|e| panic!("{answer} is not a {}: {e}", std::any::type_name::<T>()));
    let again = serde_json::to_value(&body).unwrap();
    assert_eq!(
        &again,
        answer,
        "{} loses or changes fields",
        std::any::type_name::<T>()
    );
    body
}

async fn call(
    running: &Running,
    method: Method,
    path: &str,
    body: &str,
    status: StatusCode,
) -> Value {
    let (got, answer) = admin(running, method.clone(), path, body).await;
    assert_eq!(got, status, "{method} {path}: {answer}");
    answer
}

#[tokio::test]
async fn every_answer_reads_back_into_its_typed_body() {
    let running = stack().await;
    let ok = StatusCode::OK;
    let health: api::Health = typed(&call(&running, Method::GET, "/healthz", "", ok).await);
    assert_eq!(health.status, "ok");

    let five = r#"{"duration": "5m"}"#;
    let activated = call(
        &running,
        Method::POST,
        "/faults/maps-slow",
        five,
        StatusCode::CREATED,
    )
    .await;
    let activated: api::ActivateAnswer = typed(&activated);
    assert_eq!(activated.status, "activated");
    assert_eq!(activated.activation.origin, api::Origin::Local);
    let states: Vec<&str> = activated
        .activation
        .faults
        .iter()
        .map(|f| f.state.as_str())
        .collect();
    assert_eq!(states, ["active", "pending", "never"]);
    assert_eq!(
        activated.activation.faults[0].action.latency.as_deref(),
        Some("200ms")
    );
    assert_eq!(activated.activation.faults[1].action.status, Some(503));
    assert_eq!(activated.activation.faults[2].starts_at, None);
    let request = serde_json::to_string(&api::ActivateRequest {
        duration: Some("4m".to_owned()),
    })
    .unwrap();
    let changed = call(&running, Method::POST, "/faults/maps-slow", &request, ok).await;
    let changed: api::ActivateAnswer = typed(&changed);
    assert_eq!(changed.status, "shortened");
    assert!(changed.previous_expires_at.is_some());
    call(
        &running,
        Method::POST,
        "/faults/fire",
        "",
        StatusCode::CREATED,
    )
    .await;

    let list: api::FaultList = typed(&call(&running, Method::GET, "/faults", "", ok).await);
    assert_eq!(list.active.len(), 2);
    let scenarios: api::ScenarioList =
        typed(&call(&running, Method::GET, "/scenarios", "", ok).await);
    assert_eq!(
        scenarios.scenarios[1].faults[1].method.as_deref(),
        Some("GET")
    );
    let topology: api::Topology = typed(&call(&running, Method::GET, "/topology", "", ok).await);
    assert_eq!(topology.datacenters.len(), 2);

    let lifted: api::LiftAnswer =
        typed(&call(&running, Method::DELETE, "/faults/fire", "", ok).await);
    assert!(lifted.lifted);
    let halted: api::HaltAnswer = typed(&call(&running, Method::DELETE, "/faults", "", ok).await);
    assert_eq!(halted.lifted, ["maps-slow"]);
    let events: api::EventList = typed(&call(&running, Method::GET, "/events", "", ok).await);
    let endings: Vec<Option<&str>> = events.events.iter().map(|e| e.ended.as_deref()).collect();
    assert_eq!(endings, [Some("lifted"), Some("halted")]);

    let unknown = call(
        &running,
        Method::POST,
        "/faults/flood",
        "",
        StatusCode::NOT_FOUND,
    )
    .await;
    let unknown: api::ErrorBody = typed(&unknown);
    assert_eq!(
        unknown.known,
        Some(vec!["fire".to_owned(), "maps-slow".to_owned()])
    );
    // Started from a plan without a file: nothing to re-read.
    let refused = call(&running, Method::POST, "/reload", "", StatusCode::CONFLICT).await;
    let refused: api::ErrorBody = typed(&refused);
    assert_eq!((refused.known, refused.errors), (None, None));
}

#[tokio::test]
async fn reading_the_api_never_wakes_open_connections() {
    let running = stack().await;
    call(
        &running,
        Method::POST,
        "/faults/maps-slow",
        "",
        StatusCode::CREATED,
    )
    .await;
    let live = running.engine().live();
    let mut changes = live.subscribe();
    changes.mark_unchanged();
    let generation = live.load().generation();
    for path in [
        "/faults",
        "/events",
        "/scenarios",
        "/topology",
        "/healthz",
        "/metrics",
    ] {
        let url = format!("http://{}{path}", running.admin_addr());
        let (status, _) = send(&client(), Method::GET, &url, "").await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    assert!(!changes.has_changed().unwrap(), "a GET published new rules");
    assert_eq!(live.load().generation(), generation);
    // The next stage, in a minute, is what publishes next.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), changes.changed())
            .await
            .is_err()
    );
}

/// The field names of a JSON object, sorted.
fn keys(value: &Value) -> Vec<&str> {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

#[tokio::test]
async fn answers_keep_the_fields_they_had_before_they_were_typed() {
    let running = stack().await;
    let ok = StatusCode::OK;
    let five = r#"{"duration": "5m"}"#;
    let (created, activated) = admin(&running, Method::POST, "/faults/maps-slow", five).await;
    assert_eq!(created, StatusCode::CREATED, "{activated}");
    let activation = [
        "activated_by",
        "description",
        "expires_at",
        "faults",
        "guards",
        "origin",
        "remaining",
        "scenario",
        "started_at",
    ];
    let answer = ["already_active", "capped", "requested_duration", "status"];
    let mut expected = [&activation[..], &answer[..]].concat();
    expected.sort_unstable();
    assert_eq!(keys(&activated), expected);
    let faults = &activated["faults"];
    let window = [
        "datacenters",
        "ends_at",
        "index",
        "services",
        "starts_at",
        "state",
    ];
    let delay = ["action", "direction", "jitter", "latency", "probability"];
    let mut expected = [&delay[..], &window[..]].concat();
    expected.sort_unstable();
    assert_eq!(keys(&faults[0]), expected);
    let mut expected = [&["action", "probability", "status"][..], &window[..]].concat();
    expected.sort_unstable();
    assert_eq!(keys(&faults[1]), expected);
    assert_eq!(
        keys(&faults[2]),
        [
            "action",
            "datacenters",
            "index",
            "probability",
            "services",
            "state"
        ]
    );

    let (_, changed) = admin(&running, Method::POST, "/faults/maps-slow", five).await;
    assert!(keys(&changed).contains(&"previous_expires_at"), "{changed}");
    let (_, list) = admin(&running, Method::GET, "/faults", "").await;
    assert_eq!(keys(&list["active"][0]), activation);

    let (_, scenarios) = admin(&running, Method::GET, "/scenarios", "").await;
    let scenario = &scenarios["scenarios"][1];
    assert_eq!(
        keys(scenario),
        ["active", "description", "faults", "max_duration", "name"]
    );
    let selector = [
        "after",
        "datacenter",
        "datacenters",
        "duration",
        "index",
        "method",
        "path_prefix",
        "service",
        "services",
    ];
    let mut expected = [&["action", "probability", "status"][..], &selector[..]].concat();
    expected.sort_unstable();
    assert_eq!(keys(&scenario["faults"][1]), expected);

    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    let ansan = &topology["datacenters"][1];
    assert_eq!(keys(ansan), ["description", "name", "services"]);
    let maps = &ansan["services"][0];
    assert_eq!(
        keys(maps),
        [
            "description",
            "faults",
            "listen",
            "name",
            "protocol",
            "upstream",
            "upstream_skip_verify"
        ]
    );
    let mut expected = [&delay[..], &["index", "scenario"][..]].concat();
    expected.sort_unstable();
    assert_eq!(keys(&maps["faults"][0]), expected);

    let (_, lifted) = admin(&running, Method::DELETE, "/faults/maps-slow", "").await;
    assert_eq!(keys(&lifted), ["lifted", "scenario"]);
    let (status, events) = admin(&running, Method::GET, "/events", "").await;
    assert_eq!(status, ok);
    assert_eq!(
        keys(&events["events"][0]),
        [
            "activated_by",
            "ended",
            "ended_at",
            "ended_by",
            "expires_at",
            "scenario",
            "started_at",
            "time",
            "time_end"
        ]
    );
    let (_, unknown) = admin(&running, Method::DELETE, "/faults/flood", "").await;
    assert_eq!(keys(&unknown), ["error", "known"]);
}
