//! Impact reports with real traffic: a real firedrill in front of real
//! upstreams, requests sent and counted phase by phase, then the report
//! read back from `GET /reports/{id}` as JSON and Markdown, and from the
//! files `[reports] dir` names.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use firedrill::engine::{Happened, Stop};
use firedrill::Running;
use support::*;

/// pangyo (talk, and cache over tcp) and ansan (maps) in front of real
/// upstreams; `pangyo-fire` drops everything to pangyo, `ansan-slow`
/// delays maps; reports measure
/// `after` after the end and are written to `dir` when given.
async fn drill(after: &str, dir: Option<&std::path::Path>) -> Running {
    let plan = PlanText::new(&["pangyo", "ansan"])
        .http("talk", "pangyo", http_upstream("talk").await)
        .http("maps", "ansan", http_upstream("maps").await)
        .tcp("cache", "pangyo", echo_upstream().await)
        .scenario_with(
            "pangyo-fire",
            "description = 'pangyo goes dark'",
            &["datacenter = 'pangyo'; action = 'drop'"],
        )
        .fault("ansan-slow", "maps", "action = 'delay'; latency = '5ms'");
    let mut text = format!("{}\n[reports]\nafter = '{after}'\n", plan.toml());
    if let Some(dir) = dir {
        text += &format!("dir = '{}'\n", dir.display());
    }
    start(&text).await
}

/// Sends `n` GETs to `service` one after another, each on its own
/// connection; returns how many were answered 200.
async fn requests(running: &Running, service: &str, n: usize) -> usize {
    let mut answered = 0;
    for _ in 0..n {
        let url = url(running, service, "/x");
        if let Ok((StatusCode::OK, _)) = send(&client(), Method::GET, &url, "").await {
            answered += 1;
        }
    }
    answered
}

/// `GET path` on the admin API with `accept`: status, content type, body.
async fn fetch(running: &Running, path: &str, accept: &str) -> (StatusCode, String, String) {
    let request = Request::get(format!("http://{}{path}", running.admin_addr()))
        .header("accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(STEP, client().request(request)).await.unwrap();
    let status = response.status();
    let kind = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    (
        status,
        kind,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    )
}

/// Waits for the report of `scenario` to be listed, and returns its id.
async fn listed(running: &Running, scenario: &str) -> (String, Value) {
    within(STEP, async {
        loop {
            let (_, list) = admin(running, Method::GET, "/reports", "").await;
            let found = list["reports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["scenario"] == scenario);
            if let Some(found) = found {
                return (found["id"].as_str().unwrap().to_owned(), found.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Waits for report `id` to be complete, and returns it.
async fn complete(running: &Running, id: &str) -> Value {
    within(STEP, async {
        loop {
            let (status, report) = admin(running, Method::GET, &format!("/reports/{id}"), "").await;
            assert_eq!(status, StatusCode::OK, "{report}");
            if report["complete"] == true {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn datacenter<'a>(report: &'a Value, name: &str) -> &'a Value {
    let all = report["datacenters"].as_array().unwrap();
    all.iter()
        .find(|dc| dc["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

fn service<'a>(report: &'a Value, dc: &str, name: &str) -> &'a Value {
    let all = datacenter(report, dc)["services"].as_array().unwrap();
    all.iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} in {report}"))
}

/// requests, failed and error ratio of one phase.
fn counts(phase: &Value) -> (u64, u64, Option<f64>) {
    (
        phase["requests"].as_u64().unwrap(),
        phase["failed"].as_u64().unwrap(),
        phase["error_ratio"].as_f64(),
    )
}

#[tokio::test]
async fn a_lifted_activation_reports_every_phase_its_faults_and_recovery() {
    let dir = TempDir::new("reports");
    let running = drill("3s", Some(dir.path())).await;
    // The minute before: 12 to talk, 8 to maps, all answered.
    assert_eq!(requests(&running, "talk", 12).await, 12);
    assert_eq!(requests(&running, "maps", 8).await, 8);
    let mut events = engine_events(&running);
    activate(&running, "pangyo-fire").await;
    wait_for_event(&mut events, |e| {
        matches!(e.what, Happened::Activated { .. })
    })
    .await;
    // During: every request to talk dropped, maps untouched.
    assert_eq!(requests(&running, "talk", 10).await, 0);
    assert_eq!(requests(&running, "maps", 6).await, 6);
    // Three tcp connections to cache, each cut at once.
    for _ in 0..3 {
        let mut cut = connect(addr(&running, "cache")).await;
        assert!(closed_within(&mut cut, STEP).await.is_some());
    }
    lift(&running, "pangyo-fire").await;
    let (id, summary) = listed(&running, "pangyo-fire").await;
    assert_eq!(summary["ended"], "lifted");
    assert_eq!(
        summary["complete"], false,
        "the 2s after is still measured: {summary}"
    );
    // After: both answer again.
    assert_eq!(requests(&running, "talk", 5).await, 5);
    assert_eq!(requests(&running, "maps", 4).await, 4);
    let mut cache = connect(addr(&running, "cache")).await;
    carry_echo(&mut cache, b"back").await;
    let report = complete(&running, &id).await;

    assert_eq!(report["scenario"], "pangyo-fire");
    assert_eq!(report["description"], "pangyo goes dark");
    assert_eq!(report["ended"], "lifted");
    assert!(
        report["activated_by"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{report}"
    );
    assert!(
        report["ended_by"].as_str().unwrap().contains("127.0.0.1"),
        "{report}"
    );
    assert_eq!(report["after"], "3s");
    assert_eq!(report["recovery_precision"], "100ms");
    let talk = service(&report, "pangyo", "talk");
    assert_eq!(counts(&talk["before"]), (12, 0, Some(0.0)));
    assert_eq!(counts(&talk["during"]), (10, 10, Some(1.0)));
    assert_eq!(counts(&talk["after"]), (5, 0, Some(0.0)));
    assert_eq!(
        talk["faults"],
        serde_json::json!([{"action": "drop", "count": 10}])
    );
    assert_eq!(talk["connections_cut"], 10);
    assert_eq!(talk["recovery"]["state"], "recovered", "{talk}");
    let recovered = talk["recovery"]["seconds"].as_f64().unwrap();
    assert!((0.0..3.2).contains(&recovered), "{talk}");
    assert!(
        talk["during"]["p99_seconds"].is_null(),
        "no answer during: {talk}"
    );
    assert!(
        talk["before"]["p99_seconds"].as_f64().unwrap() > 0.0,
        "{talk}"
    );
    let maps = service(&report, "ansan", "maps");
    assert_eq!(counts(&maps["before"]), (8, 0, Some(0.0)));
    assert_eq!(counts(&maps["during"]), (6, 0, Some(0.0)));
    assert_eq!(counts(&maps["after"]), (4, 0, Some(0.0)));
    assert_eq!(maps["faults"], serde_json::json!([]));
    assert_eq!(maps["recovery"]["state"], "recovered");
    let cache = service(&report, "pangyo", "cache");
    assert_eq!(cache["protocol"], "tcp");
    assert_eq!(cache["during"]["connections"], 3, "{cache}");
    assert_eq!(
        cache["faults"],
        serde_json::json!([{"action": "drop", "count": 3}])
    );
    assert_eq!(cache["connections_cut"], 3);
    assert_eq!(cache["recovery"]["state"], "recovered", "{cache}");
    let pangyo = datacenter(&report, "pangyo");
    assert_eq!(counts(&pangyo["during"]), (10, 10, Some(1.0)));
    assert_eq!(
        pangyo["faults"],
        serde_json::json!([{"action": "drop", "count": 13}])
    );
    assert_eq!(pangyo["connections_cut"], 13);
    let chart = &report["chart"]["datacenters"];
    assert_eq!(chart[0]["name"], "pangyo");
    let points = chart[0]["error_ratio"].as_array().unwrap();
    assert!(points.iter().any(|p| p.as_f64() == Some(1.0)), "{chart}");

    // The same report as Markdown.
    let path = format!("/reports/{id}");
    let (status, kind, md) = fetch(&running, &path, "text/markdown").await;
    assert_eq!(status, StatusCode::OK);
    assert!(kind.starts_with("text/markdown"), "{kind}");
    assert!(
        md.starts_with(&format!("# Impact report: pangyo-fire (#{id})\n")),
        "{md}"
    );
    assert!(md.contains("| pangyo / talk (http) | before |"), "{md}");
    assert!(md.contains("|  | during | "), "{md}");
    assert!(md.contains(" | 10 | 10 | 100.0 % | - | - | 10 |"), "{md}");
    assert!(md.contains("| pangyo / talk | drop 10 | 10 |"), "{md}");
    assert!(md.contains("| pangyo / cache | drop 3 | 3 |"), "{md}");
    assert!(
        md.contains("## Error ratio over the activation\n\n```text\npangyo  "),
        "{md}"
    );
    let (_, kind, json) = fetch(&running, &path, "application/json").await;
    assert!(kind.starts_with("application/json"), "{kind}");
    assert_eq!(serde_json::from_str::<Value>(&json).unwrap(), report);

    // And as files in `dir`.
    let files = within(STEP, async {
        loop {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            if names.len() == 2 {
                return names;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        files[0].ends_with(&format!("-pangyo-fire-{id}.json")),
        "{files:?}"
    );
    assert!(
        files[1].ends_with(&format!("-pangyo-fire-{id}.md")),
        "{files:?}"
    );
    // Written at the end, incomplete, then again once complete.
    let written = std::fs::read_to_string(dir.path().join(&files[0])).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&written).unwrap(), report);
    let written = std::fs::read_to_string(dir.path().join(&files[1])).unwrap();
    assert_eq!(written, md);
}

#[tokio::test]
async fn an_expired_a_halted_and_a_stopped_activation_are_reported_newest_first() {
    let running = drill("1s", None).await;
    let mut events = engine_events(&running);
    activate_with(&running, "ansan-slow", r#"{"duration": "1s"}"#).await;
    wait_for_end(&mut events, "ansan-slow").await;
    activate(&running, "pangyo-fire").await;
    assert_eq!(lift_all(&running).await, ["pangyo-fire"]);
    activate(&running, "ansan-slow").await;
    let active = running.engine().active();
    let stop = Stop {
        guard: "ansan-stays-up".to_owned(),
        value: Some(0.3),
        above: 0.05,
        detail: "error ratio 0.3 of ansan over 30s".to_owned(),
    };
    assert!(running.engine().stop(active[0].id, stop).is_some());
    let (stopped, _) = listed(&running, "ansan-slow").await;
    let stopped = complete(&running, &stopped).await;
    assert_eq!(stopped["ended"], "stopped");
    assert_eq!(stopped["ended_by"], "guard ansan-stays-up");
    assert_eq!(
        stopped["stopped_by"]["detail"],
        "error ratio 0.3 of ansan over 30s"
    );
    let (_, list) = admin(&running, Method::GET, "/reports", "").await;
    let list = list["reports"].as_array().unwrap();
    let endings: Vec<&str> = list.iter().map(|r| r["ended"].as_str().unwrap()).collect();
    assert_eq!(endings, ["stopped", "halted", "expired"], "{list:?}");
    let halted = complete(&running, list[1]["id"].as_str().unwrap()).await;
    assert_eq!(halted["scenario"], "pangyo-fire");
    assert!(
        halted["ended_by"].as_str().unwrap().contains("127.0.0.1"),
        "{halted}"
    );
    let expired = complete(&running, list[2]["id"].as_str().unwrap()).await;
    assert_eq!(expired["ended_by"], Value::Null);
    // Without traffic, no service had anything to recover from.
    let maps = service(&expired, "ansan", "maps");
    assert_eq!(maps["recovery"]["state"], "no_requests", "{maps}");
    assert_eq!(counts(&maps["during"]), (0, 0, None));
    let path = format!("/reports/{}", stopped["id"].as_str().unwrap());
    let (_, _, md) = fetch(&running, &path, "text/markdown").await;
    assert!(
        md.contains("stopped by guard `ansan-stays-up`: error ratio 0.3 of ansan over 30s (read 0.3, above 0.05)"),
        "{md}"
    );
}

#[tokio::test]
async fn an_unknown_report_is_a_404_that_says_where_to_look() {
    let running = drill("1s", None).await;
    let (status, body) = admin(&running, Method::GET, "/reports/12345", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body["error"],
        "no report `12345`; GET /reports lists the ones kept (the last 50)"
    );
    let (status, kind, body) = fetch(&running, "/reports/nope", "text/markdown").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(kind.starts_with("application/json"), "{kind}");
    assert!(body.contains("no report `nope`"), "{body}");
    let (status, list) = admin(&running, Method::GET, "/reports", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, serde_json::json!({"reports": []}));
}

#[tokio::test]
async fn a_scenario_a_reload_removes_is_reported_lifted_into_the_plans_own_folder() {
    let folder = TempDir::new("reports-reload");
    let path = folder.path().join("plan.toml");
    let upstream = http_upstream("talk").await;
    let base = PlanText::new(&["pangyo"]).http("talk", "pangyo", upstream);
    let reports = "\n[reports]\ndir = 'retro'\nafter = '1s'\n";
    let with_fire = base.fault("pangyo-fire", "talk", "action = 'drop'");
    std::fs::write(&path, format!("{}{reports}", with_fire.toml())).unwrap();
    let loaded = firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let running = firedrill::start_reloadable(loaded, path.clone())
        .await
        .expect("firedrill starts");
    activate(&running, "pangyo-fire").await;
    let without = PlanText::new(&["pangyo"]).http("talk", "pangyo", upstream);
    std::fs::write(&path, format!("{}{reports}", without.toml())).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (id, _) = listed(&running, "pangyo-fire").await;
    let report = complete(&running, &id).await;
    assert_eq!(report["ended"], "lifted");
    assert!(
        report["ended_by"].as_str().unwrap().contains("127.0.0.1"),
        "{report}"
    );
    let retro = folder.path().join("retro");
    let written = within(STEP, async {
        loop {
            let found = std::fs::read_dir(&retro)
                .ok()
                .map(|entries| entries.count());
            if found == Some(2) {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(written, Some(2));
}
