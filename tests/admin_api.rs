//! The admin API over real sockets: health, topology, the scenario
//! catalogue, activating and lifting faults, expiry, metrics, and staying
//! responsive while many held connections are released.

mod support;
use support::*;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use firedrill::Running;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

/// A small stack: `web` (http) and `cache` (tcp) in pangyo, `maps` (http)
/// in ansan, and three scenarios: `fire` blacks out pangyo, `maps-slow`
/// delays maps now and errors it later, `short` caps its length at 5m.
fn plan(web: SocketAddr, cache: SocketAddr, maps: SocketAddr, fire: &str) -> PlanText {
    PlanText::new(&[])
        .datacenter("pangyo", "description = 'most of the fleet'")
        .datacenter("ansan", "description = 'the standby'")
        .http("web", "pangyo", web)
        .tcp("cache", "pangyo", cache)
        .http("maps", "ansan", maps)
        .scenario_with(
            fire,
            "description = 'pangyo goes dark'; max_duration = '30m'",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        )
        .scenario_with(
            "maps-slow",
            "description = 'maps slows down, then fails'; max_duration = '10m'",
            &[
                "service = 'maps'; action = 'delay'; latency = '200ms'",
                "service = 'maps'; action = 'error'; status = 503; after = '1m'; duration = '2m'",
            ],
        )
        .scenario_with(
            "short",
            "max_duration = '5m'",
            &["service = 'web'; action = 'error'; status = 500"],
        )
}

/// Starts the stack of [`plan`] with real upstreams.
async fn stack(fire: &str) -> Running {
    let web = http_upstream("web").await;
    let cache = echo_upstream().await;
    let maps = http_upstream("maps").await;
    plan(web, cache, maps, fire).start().await
}

fn time(value: &Value) -> SystemTime {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {value}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
}

fn span(from: &Value, to: &Value) -> Duration {
    time(to)
        .duration_since(time(from))
        .unwrap_or_else(|_| panic!("{to} is before {from}"))
}

/// The effective faults /topology shows for one service.
fn faults_of(topology: &Value, service: &str) -> Vec<Value> {
    topology["datacenters"]
        .as_array()
        .expect("datacenters is a list")
        .iter()
        .flat_map(|dc| dc["services"].as_array().expect("services is a list"))
        .find(|s| s["name"] == service)
        .unwrap_or_else(|| panic!("no service `{service}` in {topology}"))["faults"]
        .as_array()
        .expect("faults is a list")
        .clone()
}

/// The scenario names in a `GET /faults` answer.
fn active_names(faults: &Value) -> Vec<String> {
    faults["active"]
        .as_array()
        .expect("active is a list")
        .iter()
        .map(|a| a["scenario"].as_str().expect("a scenario name").to_owned())
        .collect()
}

/// The scenarios `GET /faults` lists as active.
async fn active_scenarios(running: &Running) -> Vec<String> {
    let (status, faults) = admin(running, Method::GET, "/faults", "").await;
    assert_eq!(status, StatusCode::OK, "{faults}");
    active_names(&faults)
}

/// Asserts that each `(method, path)` is answered `status` with a JSON
/// error that names the path.
async fn assert_json_errors(running: &Running, status: StatusCode, requests: &[(Method, &str)]) {
    for (method, path) in requests {
        let (got, body) = admin(running, method.clone(), path, "").await;
        assert_eq!(got, status, "{method} {path}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(path), "{error}");
    }
}

#[tokio::test]
async fn healthz_answers_ok() {
    let running = stack("pangyo-fire").await;
    let (status, body) = admin(&running, Method::GET, "/healthz", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "status": "ok" }));
}

#[tokio::test]
async fn topology_lists_datacenters_with_their_services_in_plan_order() {
    let running = stack("pangyo-fire").await;
    let (status, topology) = admin(&running, Method::GET, "/topology", "").await;
    assert_eq!(status, StatusCode::OK);
    let datacenters = topology["datacenters"].as_array().unwrap();
    let names: Vec<&str> = datacenters
        .iter()
        .map(|dc| dc["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pangyo", "ansan"]);
    assert_eq!(datacenters[0]["description"], "most of the fleet");
    let services = |i: usize| -> Vec<(String, String)> {
        datacenters[i]["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_owned(),
                    s["protocol"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(
        services(0),
        [
            ("web".into(), "http".into()),
            ("cache".into(), "tcp".into())
        ]
    );
    assert_eq!(services(1), [("maps".into(), "http".into())]);
    for service in ["web", "cache", "maps"] {
        assert_eq!(faults_of(&topology, service), Vec::<Value>::new());
    }
}

#[tokio::test]
async fn topology_shows_where_each_service_really_listens() {
    let running = stack("pangyo-fire").await;
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    for dc in topology["datacenters"].as_array().unwrap() {
        for service in dc["services"].as_array().unwrap() {
            let name = service["name"].as_str().unwrap();
            let bound = running.service_addr(name).unwrap();
            assert_eq!(
                service["listen"],
                bound.to_string(),
                "the plan said port 0; /topology should show the bound address of `{name}`"
            );
        }
    }
}

#[tokio::test]
async fn topology_shows_a_fault_on_a_service_only_while_it_is_in_effect() {
    let running = stack("pangyo-fire").await;
    activate(&running, "pangyo-fire").await;
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    for service in ["web", "cache"] {
        let faults = faults_of(&topology, service);
        assert_eq!(faults.len(), 1, "{service}: {faults:?}");
        assert_eq!(faults[0]["action"], "blackhole");
        assert_eq!(faults[0]["scenario"], "pangyo-fire");
        assert_eq!(faults[0]["index"], 0);
        assert_eq!(faults[0]["probability"], 1.0);
    }
    assert!(faults_of(&topology, "maps").is_empty());

    // maps-slow's delay is in effect now, its error only after a minute.
    activate(&running, "maps-slow").await;
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    let faults = faults_of(&topology, "maps");
    assert_eq!(faults.len(), 1, "only the delay is in effect: {faults:?}");
    assert_eq!(faults[0]["action"], "delay");
    assert_eq!(faults[0]["latency"], "200ms");

    lift(&running, "pangyo-fire").await;
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    assert!(faults_of(&topology, "web").is_empty());
    assert!(faults_of(&topology, "cache").is_empty());
    assert_eq!(faults_of(&topology, "maps").len(), 1);
}

#[tokio::test]
async fn scenarios_lists_the_catalogue_with_each_fault_and_its_targets() {
    let running = stack("pangyo-fire").await;
    let (status, body) = admin(&running, Method::GET, "/scenarios", "").await;
    assert_eq!(status, StatusCode::OK);
    let scenarios = body["scenarios"].as_array().unwrap();
    let names: Vec<&str> = scenarios
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pangyo-fire", "maps-slow", "short"]);
    let fire = &scenarios[0];
    assert_eq!(fire["description"], "pangyo goes dark");
    assert_eq!(fire["max_duration"], "30m");
    assert_eq!(fire["active"], false);
    assert_eq!(fire["faults"][0]["action"], "blackhole");
    assert_eq!(fire["faults"][0]["datacenter"], "pangyo");
    assert_eq!(fire["faults"][0]["services"], json!(["web", "cache"]));
    let slow = &scenarios[1];
    assert_eq!(slow["faults"][1]["action"], "error");
    assert_eq!(slow["faults"][1]["status"], 503);
    assert_eq!(slow["faults"][1]["after"], "1m");
    assert_eq!(slow["faults"][1]["duration"], "2m");
    assert_eq!(slow["faults"][1]["services"], json!(["maps"]));

    activate(&running, "short").await;
    let (_, body) = admin(&running, Method::GET, "/scenarios", "").await;
    let active: Vec<bool> = body["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["active"].as_bool().unwrap())
        .collect();
    assert_eq!(active, [false, false, true]);
}

#[tokio::test]
async fn activating_a_scenario_answers_201_with_its_window_and_each_fault_state() {
    let running = stack("pangyo-fire").await;
    let body = activate_with(&running, "maps-slow", "").await;
    assert_eq!(body["scenario"], "maps-slow");
    assert_eq!(body["already_active"], false);
    let started = &body["started_at"];
    let expires = &body["expires_at"];
    assert_eq!(
        span(started, expires),
        Duration::from_secs(600),
        "no body means max_duration"
    );
    let now = SystemTime::now();
    assert!(
        time(started) <= now,
        "started_at {started} is in the future"
    );

    let faults = body["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    let delay = &faults[0];
    assert_eq!(delay["state"], "active");
    assert_eq!(delay["starts_at"], *started);
    assert_eq!(delay["ends_at"], *expires);
    let error = &faults[1];
    assert_eq!(error["state"], "pending");
    assert_eq!(span(started, &error["starts_at"]), Duration::from_secs(60));
    assert_eq!(span(started, &error["ends_at"]), Duration::from_secs(180));
}

#[tokio::test]
async fn a_fault_that_would_start_after_the_activation_ends_is_reported_as_never() {
    let running = stack("pangyo-fire").await;
    let body = activate_with(&running, "maps-slow", r#"{"duration":"30s"}"#).await;
    assert_eq!(
        span(&body["started_at"], &body["expires_at"]),
        Duration::from_secs(30)
    );
    assert_eq!(body["faults"][0]["state"], "active");
    assert_eq!(body["faults"][0]["ends_at"], body["expires_at"]);
    assert_eq!(body["faults"][1]["state"], "never");
    assert!(body["faults"][1].get("starts_at").is_none());
}

#[tokio::test]
async fn activating_an_active_scenario_changes_nothing_and_answers_200() {
    let running = stack("pangyo-fire").await;
    let first = activate_with(&running, "pangyo-fire", "").await;
    assert_eq!(first["already_active"], false);
    let (status, again) = admin(&running, Method::POST, "/faults/pangyo-fire", "").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["already_active"], true);
    assert_eq!(again["status"], "already_active");
    assert_eq!(again["started_at"], first["started_at"]);
    assert_eq!(
        again["expires_at"], first["expires_at"],
        "a second activation must not change the window"
    );
    assert_eq!(active_scenarios(&running).await, ["pangyo-fire"]);
}

#[tokio::test]
async fn a_requested_duration_is_capped_at_the_scenario_max_duration() {
    let running = stack("pangyo-fire").await;
    let body = activate_with(&running, "short", r#"{"duration":"10m"}"#).await;
    let length = span(&body["started_at"], &body["expires_at"]);
    assert!(length <= Duration::from_secs(300), "{length:?} > max 5m");
    assert_eq!(length, Duration::from_secs(300));

    // A shorter duration is taken as asked.
    let body = activate_with(&running, "pangyo-fire", r#"{"duration":"2m 30s"}"#).await;
    assert_eq!(
        span(&body["started_at"], &body["expires_at"]),
        Duration::from_secs(150)
    );
}

#[tokio::test]
async fn an_unknown_scenario_is_404_and_names_the_known_ones() {
    let running = stack("pangyo-fire").await;
    for method in [Method::POST, Method::DELETE] {
        let (status, body) = admin(&running, method.clone(), "/faults/ansan-fire", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}: {body}");
        assert_eq!(body["known"], json!(["pangyo-fire", "maps-slow", "short"]));
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("ansan-fire"), "{error}");
    }
    assert!(active_scenarios(&running).await.is_empty());
}

#[tokio::test]
async fn a_bad_activation_body_is_400_with_an_error_and_activates_nothing() {
    let running = stack("pangyo-fire").await;
    let cases = [
        (r#"{"duration": "10m""#, "invalid JSON"),
        (
            r#"{"duration": "10m", "force": true}"#,
            "unknown field `force`",
        ),
        (r#"{"duration": 600}"#, "invalid JSON"),
        (r#"{"duration": "soon"}"#, "invalid duration `soon`"),
        (r#"{"duration": "0s"}"#, "positive"),
        ("not json at all", "invalid JSON"),
    ];
    for (body, expected) in cases {
        let (status, answer) = admin(&running, Method::POST, "/faults/pangyo-fire", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}: no `error` in {answer}"));
        assert!(
            error.contains(expected),
            "{body}: `{error}` lacks `{expected}`"
        );
    }
    let active = active_scenarios(&running).await;
    assert!(active.is_empty(), "{active:?}");
    // Whitespace is no body at all.
    activate_with(&running, "pangyo-fire", " \n").await;
}

#[tokio::test]
async fn get_faults_lists_the_active_scenarios_in_plan_order() {
    let running = stack("pangyo-fire").await;
    let (status, faults) = admin(&running, Method::GET, "/faults", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults, json!({ "active": [] }));
    activate(&running, "short").await;
    activate(&running, "pangyo-fire").await;
    let (_, faults) = admin(&running, Method::GET, "/faults", "").await;
    assert_eq!(active_names(&faults), ["pangyo-fire", "short"]);
    let fire = &faults["active"][0];
    assert!(fire["started_at"].is_string() && fire["expires_at"].is_string());
    assert!(fire["activated_by"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(fire["faults"][0]["state"], "active");
}

#[tokio::test]
async fn lifting_one_scenario_leaves_the_others_active() {
    let running = stack("pangyo-fire").await;
    activate(&running, "pangyo-fire").await;
    activate(&running, "maps-slow").await;
    let (status, body) = admin(&running, Method::DELETE, "/faults/pangyo-fire", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "scenario": "pangyo-fire", "lifted": true }));
    assert_eq!(active_scenarios(&running).await, ["maps-slow"]);

    // Lifting it again is harmless and says nothing was lifted.
    let (status, body) = admin(&running, Method::DELETE, "/faults/pangyo-fire", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["lifted"], false);
}

#[tokio::test]
async fn lifting_all_faults_clears_every_scenario_and_traffic_flows_again() {
    let running = stack("pangyo-fire").await;
    activate(&running, "short").await;
    activate(&running, "maps-slow").await;
    let web = addr(&running, "web");
    let (status, _) = get(web, "/x").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "short is in effect"
    );

    let (status, body) = admin(&running, Method::DELETE, "/faults", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "lifted": ["maps-slow", "short"] }));
    assert!(active_scenarios(&running).await.is_empty());
    let (status, text) = get(web, "/x").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, "web answered GET /x\n");

    let (status, body) = admin(&running, Method::DELETE, "/faults", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "lifted": [] }));
}

#[tokio::test]
async fn an_unknown_endpoint_is_404_with_a_json_error() {
    let running = stack("pangyo-fire").await;
    let requests = [
        (Method::GET, "/nope"),
        (Method::POST, "/fault/pangyo-fire"),
        (Method::GET, "/faults/pangyo-fire/extra"),
    ];
    assert_json_errors(&running, StatusCode::NOT_FOUND, &requests).await;
}

#[tokio::test]
async fn a_wrong_method_on_a_known_path_is_405_with_a_json_error() {
    let running = stack("pangyo-fire").await;
    let requests = [
        (Method::PUT, "/faults"),
        (Method::GET, "/faults/pangyo-fire"),
        (Method::POST, "/healthz"),
    ];
    assert_json_errors(&running, StatusCode::METHOD_NOT_ALLOWED, &requests).await;
}

#[tokio::test]
async fn the_scenario_active_gauge_goes_to_1_on_activation_and_back_to_0() {
    let fire = unique("fire");
    let running = stack(&fire).await;
    let gauge = |text: &str| sample(text, "firedrill_scenario_active", &[("scenario", &fire)]);
    let text = metrics(&running).await;
    assert!(
        text.contains(&format!(
            "firedrill_scenario_active{{scenario=\"{fire}\"}} 0"
        )),
        "every scenario is exported as 0 from the start"
    );
    activate(&running, &fire).await;
    assert_eq!(gauge(&metrics(&running).await), 1.0);
    lift(&running, &fire).await;
    assert_eq!(gauge(&metrics(&running).await), 0.0);
    activate(&running, &fire).await;
    assert_eq!(gauge(&metrics(&running).await), 1.0);
    admin(&running, Method::DELETE, "/faults", "").await;
    assert_eq!(gauge(&metrics(&running).await), 0.0);
}

#[tokio::test]
async fn an_activation_expires_by_itself_after_its_duration() {
    let fire = unique("fire");
    let running = stack(&fire).await;
    let mut events = engine_events(&running);
    let asked = Instant::now();
    let body = activate_with(&running, &fire, r#"{"duration":"300ms"}"#).await;
    assert_eq!(
        span(&body["started_at"], &body["expires_at"]),
        Duration::from_millis(300)
    );
    let gauge = |text: &str| sample(text, "firedrill_scenario_active", &[("scenario", &fire)]);
    assert_eq!(gauge(&metrics(&running).await), 1.0);

    wait_for_end(&mut events, &fire).await;
    assert!(active_scenarios(&running).await.is_empty());
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "expired early, after {:?}",
        asked.elapsed()
    );
    // The timer expired it: the gauge and the rules follow without a request.
    assert_eq!(gauge(&metrics(&running).await), 0.0);
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    assert!(faults_of(&topology, "web").is_empty());
    let (status, _) = get(addr(&running, "web"), "/after").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_answers_while_lifting_faults_from_200_held_connections() {
    const HELD: usize = 200;
    let cache = unique("cache");
    let echo = echo_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .tcp(&cache, "pangyo", echo)
        .scenario(
            "pangyo-fire",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        )
        .start()
        .await;
    let cache_addr = addr(&running, &cache);
    let mut before = connect(cache_addr).await;
    carry_echo(&mut before, b"ping").await;

    activate(&running, "pangyo-fire").await;
    let mut held = vec![before];
    for _ in 0..HELD {
        let mut stream = connect(cache_addr).await;
        within(STEP, stream.write_all(b"hello")).await.unwrap();
        held.push(stream);
    }
    let labels = [("service", cache.as_str())];
    let all_held = |open: f64| open as usize >= held.len();
    let open = poll_sample(
        &running,
        "firedrill_connections_active",
        &labels,
        Duration::from_secs(20),
        all_held,
    )
    .await;
    assert!(all_held(open), "{open} of {} connections held", held.len());
    // Held, not answered: nothing comes back while the blackhole stands.
    assert!(
        closed_within(&mut held[HELD], Duration::from_millis(300))
            .await
            .is_none(),
        "a blackholed connection answered or closed"
    );

    // Poll the API from elsewhere while the lift wakes every connection.
    let admin_addr = running.admin_addr();
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..10 {
                    let (status, _) =
                        within(Duration::from_secs(5), get(admin_addr, "/faults")).await;
                    assert_eq!(status, StatusCode::OK);
                }
            })
        })
        .collect();
    let lifting = Instant::now();
    let (status, body) = within(
        Duration::from_secs(5),
        admin(&running, Method::DELETE, "/faults", ""),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "lifted": ["pangyo-fire"] }));
    assert!(lifting.elapsed() < Duration::from_secs(5));
    for poller in pollers {
        within(Duration::from_secs(60), poller)
            .await
            .expect("the admin API kept answering");
    }

    // Released from the blackhole, every held connection is closed.
    for (i, stream) in held.iter_mut().enumerate() {
        match closed_within(stream, STEP).await {
            None => panic!("held connection #{i} was not closed after the lift"),
            Some(Ok(n)) => assert_eq!(n, 0, "held connection #{i} got {n} bytes"),
            Some(Err(_)) => {}
        }
    }
    // New connections pass again.
    let mut after = connect(cache_addr).await;
    carry_echo(&mut after, b"back").await;
}

#[tokio::test]
async fn a_scenario_name_that_is_not_utf8_gets_a_json_error() {
    let running = stack("pangyo-fire").await;
    for method in [Method::POST, Method::DELETE] {
        let (status, body) = admin(&running, method.clone(), "/faults/%FF", "").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.starts_with("invalid scenario name in the path"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn events_list_activations_newest_first_with_who_and_how_they_ended() {
    let running = stack("pangyo-fire").await;
    let (_, empty) = admin(&running, Method::GET, "/events", "").await;
    assert_eq!(empty, json!({ "events": [] }));

    let mut events = engine_events(&running);
    activate(&running, "pangyo-fire").await;
    lift(&running, "pangyo-fire").await;
    activate_with(&running, "short", r#"{"duration": "200ms"}"#).await;
    activate(&running, "maps-slow").await;
    // `short` expires by itself.
    wait_for_end(&mut events, "short").await;
    assert!(!active_scenarios(&running)
        .await
        .contains(&"short".to_owned()));
    let (status, _) = admin(&running, Method::DELETE, "/faults", "").await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = admin(&running, Method::GET, "/events", "").await;
    assert_eq!(status, StatusCode::OK);
    let events = body["events"].as_array().unwrap();
    let summary: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["scenario"].as_str().unwrap(),
                e["ended"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("maps-slow", "halted"),
            ("short", "expired"),
            ("pangyo-fire", "lifted")
        ]
    );
    let expired = &events[1];
    assert_eq!(expired["ended_by"], Value::Null, "nobody ended an expiry");
    assert!(span(&expired["started_at"], &expired["ended_at"]) >= Duration::from_millis(200));
    for event in events {
        assert!(event["activated_by"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        let (start, end) = (
            event["time"].as_u64().unwrap(),
            event["time_end"].as_u64().unwrap(),
        );
        assert!(start <= end, "{event}");
    }
    assert!(events[0]["ended_by"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}

/// The `(datacenters, services)` each fault of an activation answer hits.
fn targets(activation: &Value) -> Vec<(Value, Value)> {
    activation["faults"]
        .as_array()
        .expect("faults is a list")
        .iter()
        .map(|f| (f["datacenters"].clone(), f["services"].clone()))
        .collect()
}

#[tokio::test]
async fn each_active_fault_names_the_datacenters_and_services_it_hits() {
    let running = stack("pangyo-fire").await;
    let fire = activate_with(&running, "pangyo-fire", "").await;
    assert_eq!(
        targets(&fire),
        [(json!(["pangyo"]), json!(["web", "cache"]))]
    );
    assert_eq!(fire["faults"][0]["index"], 0);
    assert_eq!(fire["faults"][0]["action"], "blackhole");
    let slow = activate_with(&running, "maps-slow", "").await;
    let maps = (json!(["ansan"]), json!(["maps"]));
    assert_eq!(targets(&slow), [maps.clone(), maps.clone()]);

    let (_, faults) = admin(&running, Method::GET, "/faults", "").await;
    let listed: Vec<Vec<(Value, Value)>> = faults["active"]
        .as_array()
        .unwrap()
        .iter()
        .map(targets)
        .collect();
    assert_eq!(listed, [targets(&fire), targets(&slow)]);
}

/// A stack whose `staged` scenario only has faults with a `duration`: web
/// fails for 800ms, maps for 700ms from 300ms on, so it ends after 1s.
async fn staged_stack(staged: &str) -> Running {
    PlanText::new(&["pangyo", "ansan"])
        .http("web", "pangyo", http_upstream("web").await)
        .http("maps", "ansan", http_upstream("maps").await)
        .scenario_with(
            staged,
            "max_duration = '30m'",
            &[
                "service = 'web'; action = 'error'; status = 500; duration = '800ms'",
                "service = 'maps'; action = 'error'; status = 503; after = '300ms'; duration = '700ms'",
            ],
        )
        .start()
        .await
}

/// The newest `/events` record, once the engine says `scenario` ended by
/// itself; `events` were subscribed before it was activated.
async fn until_ended(running: &Running, events: &mut EngineEvents, scenario: &str) -> Value {
    wait_for_end(events, scenario).await;
    let (_, body) = admin(running, Method::GET, "/events", "").await;
    let newest = body["events"][0].clone();
    assert!(!newest["ended"].is_null(), "{body}");
    newest
}

#[tokio::test]
async fn a_staged_scenario_completes_when_its_last_fault_ends_and_can_start_again() {
    let staged = unique("staged");
    let running = staged_stack(&staged).await;
    let gauge = |text: &str| sample(text, "firedrill_scenario_active", &[("scenario", &staged)]);
    let mut events = engine_events(&running);
    let body = activate_with(&running, &staged, "").await;
    assert_eq!(
        span(&body["started_at"], &body["expires_at"]),
        Duration::from_secs(1),
        "it ends with its last fault: {body}"
    );
    assert_eq!(gauge(&metrics(&running).await), 1.0);

    let event = until_ended(&running, &mut events, &staged).await;
    assert_eq!(event["scenario"], *staged);
    assert_eq!(event["ended"], "completed", "{event}");
    assert_eq!(event["ended_by"], Value::Null);
    assert!(span(&event["started_at"], &event["ended_at"]) >= Duration::from_secs(1));
    assert_eq!(gauge(&metrics(&running).await), 0.0);
    assert!(active_scenarios(&running).await.is_empty());
    let (status, _) = get(addr(&running, "maps"), "/x").await;
    assert_eq!(status, StatusCode::OK);

    // A new POST runs the sequence again.
    let again = activate_with(&running, &staged, "").await;
    assert_eq!(again["status"], "activated");
    assert!(time(&again["started_at"]) > time(&body["started_at"]));
}

#[tokio::test]
async fn a_capped_duration_says_so_with_the_duration_asked_for() {
    let running = stack("pangyo-fire").await;
    let body = activate_with(&running, "short", r#"{"duration":"1h"}"#).await;
    assert_eq!(body["status"], "activated");
    assert_eq!(body["capped"], true, "{body}");
    assert_eq!(body["requested_duration"], "1h");
    assert_eq!(
        span(&body["started_at"], &body["expires_at"]),
        Duration::from_secs(300)
    );

    let body = activate_with(&running, "pangyo-fire", r#"{"duration":"90s"}"#).await;
    assert_eq!(body["capped"], false, "{body}");
    assert_eq!(body["requested_duration"], "1m 30s");
    let body = activate_with(&running, "maps-slow", "").await;
    assert_eq!(body["capped"], false, "{body}");
    assert_eq!(body["requested_duration"], Value::Null);
}

#[tokio::test]
async fn a_duration_on_an_active_scenario_extends_or_shortens_it_from_its_start() {
    let running = stack("pangyo-fire").await;
    let first = activate_with(&running, "pangyo-fire", r#"{"duration":"5m"}"#).await;
    let post = |body: &'static str| admin(&running, Method::POST, "/faults/pangyo-fire", body);

    let (status, extended) = post(r#"{"duration":"20m"}"#).await;
    assert_eq!(status, StatusCode::OK, "{extended}");
    assert_eq!(extended["status"], "extended");
    assert_eq!(extended["already_active"], true);
    assert_eq!(extended["started_at"], first["started_at"]);
    assert_eq!(extended["previous_expires_at"], first["expires_at"]);
    assert_eq!(extended["capped"], false);
    assert_eq!(
        span(&first["started_at"], &extended["expires_at"]),
        Duration::from_secs(20 * 60)
    );

    let (status, capped) = post(r#"{"duration":"1h"}"#).await;
    assert_eq!(status, StatusCode::OK, "{capped}");
    assert_eq!(capped["status"], "extended");
    assert_eq!(
        (&capped["capped"], &capped["requested_duration"]),
        (&json!(true), &json!("1h"))
    );
    assert_eq!(
        span(&first["started_at"], &capped["expires_at"]),
        Duration::from_secs(30 * 60),
        "within max_duration from the start"
    );

    let (status, shortened) = post(r#"{"duration":"10m"}"#).await;
    assert_eq!(status, StatusCode::OK, "{shortened}");
    assert_eq!(shortened["status"], "shortened");
    assert_eq!(
        span(&first["started_at"], &shortened["expires_at"]),
        Duration::from_secs(10 * 60)
    );

    // Without a body nothing changes.
    let (status, again) = post("").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["status"], "already_active");
    assert_eq!(again["expires_at"], shortened["expires_at"]);

    let (_, faults) = admin(&running, Method::GET, "/faults", "").await;
    assert_eq!(faults["active"][0]["expires_at"], shortened["expires_at"]);
    let (_, events) = admin(&running, Method::GET, "/events", "").await;
    assert_eq!(events["events"][0]["expires_at"], shortened["expires_at"]);
    assert_eq!(
        events["events"].as_array().unwrap().len(),
        1,
        "one activation"
    );
}

#[tokio::test]
async fn a_shortened_scenario_ends_on_its_new_time_by_itself() {
    let fire = unique("fire");
    let running = stack(&fire).await;
    let web = addr(&running, "web");
    let mut events = engine_events(&running);
    let asked = Instant::now();
    activate(&running, &fire).await;
    let path = format!("/faults/{fire}");
    let (status, body) = admin(&running, Method::POST, &path, r#"{"duration":"500ms"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "shortened");

    let event = until_ended(&running, &mut events, &fire).await;
    assert_eq!(event["ended"], "expired", "{event}");
    assert!(asked.elapsed() >= Duration::from_millis(500));
    let gauge = sample(
        &metrics(&running).await,
        "firedrill_scenario_active",
        &[("scenario", &fire)],
    );
    assert_eq!(gauge, 0.0);
    let (status, _) = get(web, "/x").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_duration_shorter_than_the_time_already_run_lifts_the_scenario_at_once() {
    let running = stack("pangyo-fire").await;
    activate(&running, "short").await;
    let web = addr(&running, "web");
    let (status, _) = get(web, "/x").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "short is in effect"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;

    let (status, body) = admin(
        &running,
        Method::POST,
        "/faults/short",
        r#"{"duration":"10ms"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "lifted");
    assert_eq!(body["faults"][0]["state"], "ended");
    assert!(active_scenarios(&running).await.is_empty());
    let (status, _) = get(web, "/x").await;
    assert_eq!(status, StatusCode::OK);
    let (_, events) = admin(&running, Method::GET, "/events", "").await;
    let event = &events["events"][0];
    assert_eq!(event["ended"], "lifted");
    assert!(event["ended_by"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
}
