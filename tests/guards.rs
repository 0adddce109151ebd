//! Stop conditions end to end: firedrill in process with real upstreams
//! and real traffic; a scenario's built-in guards (error ratio outside the
//! scenario, p99 of a service) trip and lift it, a guard with `for` goes
//! pending and back to ok, and a real Prometheus scraping firedrill's
//! `/metrics` drives an external guard. A Prometheus that is unreachable
//! stops the drill under `on_error = "stop"`; one that hangs shows an
//! error under `"continue"` and the drill goes on. `firedrill check`
//! points at a bad guard.

mod support;
use support::*;

#[path = "support/guards.rs"]
mod drill;
use drill::*;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::prometheus::Prometheus;

use firedrill::engine::Happened;
use http::StatusCode;

const STOPS: &str = "firedrill_scenario_stops_total";

#[tokio::test]
async fn an_error_ratio_guard_outside_the_scenario_lifts_it_when_others_fail() {
    let (maps, status) = switchable_upstream().await;
    let guard =
        "name = 'ansan-stays-up'; error_ratio = { outside = true }; above = 0.2; window = '2s'";
    let running = start(&plan(maps, "action = 'drop'", &[guard])).await;
    let load = traffic(&running, &["maps", "talk"]);
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    // talk fails, as the scenario means it to; maps, outside it, does not.
    let ok = wait_for_guard(&running, STEP, |g| g["value"].is_number()).await;
    assert_eq!(ok["state"], "ok", "{ok}");
    assert_eq!(ok["kind"], "error_ratio");
    assert_eq!(ok["value"], 0.0, "{ok}");
    // Listed at 0 before any stop, for dashboards.
    let text = metrics(&running).await;
    let listed =
        (text.lines()).find(|l| l.starts_with(STOPS) && l.contains("guard=\"ansan-stays-up\""));
    assert!(listed.is_some_and(|l| l.ends_with(" 0")), "{listed:?}");
    let started = Instant::now();
    status.store(503, Ordering::Relaxed);
    let stop = wait_for_stop(&mut events, STEP).await;
    eprintln!(
        "reaction: maps failing to lifted in {:?}",
        started.elapsed()
    );
    assert_eq!(stop.guard, "ansan-stays-up");
    assert!(stop.value.is_some_and(|v| v > 0.2), "{stop:?}");
    assert_eq!(stop.above, 0.2);
    assert!(stop.detail.contains("outside the scenario"), "{stop:?}");
    let event = last_event(&running).await;
    assert_eq!(event["ended"], "stopped", "{event}");
    assert_eq!(event["ended_by"], "guard ansan-stays-up", "{event}");
    assert_eq!(event["stopped_by"]["guard"], "ansan-stays-up", "{event}");
    assert!(
        guards(&running, "fire").await.is_none(),
        "fire is still active"
    );
    let labels = [("scenario", "fire"), ("guard", "ansan-stays-up")];
    wait_for_sample(&running, STOPS, &labels, 1.0).await;
    // The drop is lifted: talk answers again.
    status.store(200, Ordering::Relaxed);
    let (code, _) = get(addr(&running, "talk"), "/").await;
    assert_eq!(code, StatusCode::OK);
    load.abort();
}

#[tokio::test]
async fn a_p99_guard_lifts_a_delay_that_makes_a_service_too_slow() {
    let (maps, _) = switchable_upstream().await;
    let guard =
        "name = 'talk-latency'; p99_latency = { service = 'talk' }; above = '250ms'; window = '3s'";
    let fault = "action = 'delay'; latency = '400ms'";
    let running = start(&plan(maps, &fault.replace("; ", "\n"), &[guard])).await;
    let load = traffic(&running, &["talk"]);
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    let stop = wait_for_stop(&mut events, STEP).await;
    assert_eq!(stop.guard, "talk-latency");
    assert!(stop.value.is_some_and(|v| v > 0.25), "{stop:?}");
    assert_eq!(stop.above, 0.25);
    assert!(stop.detail.starts_with("p99 latency"), "{stop:?}");
    let event = last_event(&running).await;
    assert_eq!(event["ended"], "stopped", "{event}");
    load.abort();
}

#[tokio::test]
async fn a_guard_with_for_goes_pending_and_back_to_ok_without_stopping() {
    let (maps, status) = switchable_upstream().await;
    let guard = "name = 'ansan'; error_ratio = { datacenter = 'ansan' }; above = 0.5; for = '5m'; window = '1s'";
    let running = start(&plan(maps, "action = 'drop'", &[guard])).await;
    let load = traffic(&running, &["maps"]);
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    wait_for_guard(&running, STEP, |g| {
        g["state"] == "ok" && g["value"].is_number()
    })
    .await;
    status.store(503, Ordering::Relaxed);
    let pending = wait_for_guard(&running, STEP, |g| g["state"] == "pending").await;
    assert!(pending["pending_for"].is_string(), "{pending}");
    assert_eq!(pending["for"], "5m");
    assert!(pending["value"].as_f64().unwrap() > 0.5, "{pending}");
    status.store(200, Ordering::Relaxed);
    let ok = wait_for_guard(&running, STEP, |g| g["state"] == "ok").await;
    assert!(ok.get("pending_for").is_none(), "{ok}");
    // Still active, and no guard stopped it.
    assert!(guards(&running, "fire").await.is_some());
    while let Ok(event) = events.try_recv() {
        assert!(!matches!(event.what, Happened::Stopped { .. }), "{event:?}");
    }
    lift(&running, "fire").await;
    load.abort();
}

#[tokio::test]
async fn an_unreachable_prometheus_stops_the_drill_by_default() {
    let (maps, _) = switchable_upstream().await;
    let (closed, _socket) = unreachable_upstream();
    let guard = format!("name = 'slo'; prometheus = 'http://{closed}'; query = 'up'; above = 1");
    let running = start(&plan(maps, "action = 'drop'", &[&guard])).await;
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    let stop = wait_for_stop(&mut events, STEP).await;
    assert_eq!(stop.guard, "slo");
    assert!(stop.detail.contains("could not be read"), "{stop:?}");
    assert!(stop.detail.contains("on_error = \"stop\""), "{stop:?}");
    // Nothing was read: no value, not a made-up 0.
    assert_eq!(stop.value, None, "{stop:?}");
    let event = last_event(&running).await;
    assert_eq!(event["ended"], "stopped", "{event}");
    assert_eq!(event["stopped_by"]["guard"], "slo", "{event}");
    assert!(event["stopped_by"]["value"].is_null(), "{event}");
}

#[tokio::test]
async fn a_hanging_prometheus_shows_an_error_and_the_drill_goes_on_under_continue() {
    let (maps, _) = switchable_upstream().await;
    let (hanging, _held) = unresponsive_upstream().await;
    let guard = format!(
        "name = 'slo'; prometheus = 'http://{hanging}'; query = 'up'; above = 1; on_error = 'continue'"
    );
    let running = start(&plan(maps, "action = 'drop'", &[&guard])).await;
    activate(&running, "fire").await;
    let error = wait_for_guard(&running, STEP, |g| g["state"] == "error").await;
    let detail = error["detail"].as_str().unwrap();
    assert!(detail.contains("no answer within 2s"), "{error}");
    assert!(error["value"].is_null(), "{error}");
    // The drill is still on, and the admin API answers (each call bounded)
    // while the guard's queries hang.
    assert!(guards(&running, "fire").await.is_some());
    lift(&running, "fire").await;
}

#[tokio::test]
async fn a_prometheus_guard_reads_a_real_prometheus_and_trips_on_its_query() {
    if !programs_present(&["prometheus"], "apt-get install prometheus") {
        return;
    }
    let (maps, status) = switchable_upstream().await;
    // Prometheus must know firedrill's admin address, and the plan its
    // Prometheus: the admin port is picked first, Prometheus scrapes it
    // (failing until firedrill is up), then firedrill starts on it.
    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let prometheus = Prometheus::start(admin_port, None).await;
    let query = "sum(rate(firedrill_requests_total{service=\"maps\",code=\"5xx\"}[5s]))";
    let guard = format!(
        "name = 'maps-5xx'; prometheus = 'http://{}'; query = '{query}'; above = 1",
        prometheus.addr
    );
    let text = plan(maps, "action = 'drop'", &[&guard]).replace(
        "listen = '127.0.0.1:0'\n\n[datacenters",
        &format!("listen = '{admin_port}'\n\n[datacenters"),
    );
    let running = start(&text).await;
    assert_eq!(running.admin_addr(), admin_port);
    let load = traffic(&running, &["maps"]);
    let mut events = engine_events(&running);
    activate(&running, "fire").await;
    let ok = wait_for_guard(&running, Duration::from_secs(30), |g| {
        g["value"].is_number()
    })
    .await;
    assert_eq!(ok["state"], "ok", "{ok}\n{}", prometheus.log());
    assert_eq!(ok["kind"], "prometheus");
    let started = Instant::now();
    status.store(503, Ordering::Relaxed);
    let stop = wait_for_stop(&mut events, Duration::from_secs(30)).await;
    eprintln!("reaction through prometheus: {:?}", started.elapsed());
    assert_eq!(stop.guard, "maps-5xx");
    assert!(stop.value.is_some_and(|v| v > 1.0), "{stop:?}");
    assert!(stop.detail.contains("sample"), "{stop:?}");
    let event = last_event(&running).await;
    assert_eq!(event["stopped_by"]["guard"], "maps-5xx", "{event}");
    load.abort();
}

#[test]
fn check_points_at_a_guard_on_an_unknown_service() {
    let dir = TempDir::new("firedrill-guard-check");
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = plan(
        upstream,
        "action = 'drop'",
        &["name = 'g'; p99_latency = { service = 'mpas' }; above = '800ms'"],
    );
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, &text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    command.arg("check").arg(&path).stdin(Stdio::null());
    let ran = run_captured(&mut command, Duration::from_secs(30));
    assert_eq!(
        ran.status.and_then(|s| s.code()),
        Some(64),
        "{}",
        ran.stderr
    );
    let line = text.lines().position(|l| l.contains("mpas")).unwrap() + 1;
    let column = text.lines().nth(line - 1).unwrap().find("'mpas'").unwrap() + 1;
    let expected = format!(
        "{}:{line}:{column}: scenario `fire` guard `g`: names unknown service `mpas`; known: maps, talk",
        path.display()
    );
    assert!(
        ran.stderr.contains(&expected),
        "expected {expected}\nstderr:\n{}",
        ran.stderr
    );
}

#[test]
fn check_warns_at_a_p99_threshold_inside_a_latency_bucket_and_still_passes() {
    let dir = TempDir::new("firedrill-guard-bucket");
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let text = plan(
        upstream,
        "action = 'drop'",
        &["name = 'g'; p99_latency = { service = 'maps' }; above = '800ms'"],
    );
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, &text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    command.arg("check").arg(&path).stdin(Stdio::null());
    let ran = run_captured(&mut command, Duration::from_secs(30));
    assert_eq!(ran.status.and_then(|s| s.code()), Some(0), "{}", ran.stderr);
    let line = text.lines().position(|l| l.contains("'800ms'")).unwrap() + 1;
    let column = text.lines().nth(line - 1).unwrap().find("'800ms'").unwrap() + 1;
    let expected = format!(
        "{}:{line}:{column}: warning: scenario `fire` guard `g`: `above` 800ms falls inside the latency bucket from ",
        path.display()
    );
    assert!(
        ran.stderr.contains(&expected)
            && ran.stderr.contains("more than 1 % of requests took longer"),
        "expected {expected}\nstderr:\n{}",
        ran.stderr
    );
}

#[tokio::test]
async fn a_reload_gives_an_active_scenario_its_new_guards() {
    let (maps, _) = switchable_upstream().await;
    let (closed, _socket) = unreachable_upstream();
    let calm = "name = 'calm'; error_ratio = { outside = true }; above = 0.5";
    let running = start(&plan(maps, "action = 'drop'", &[calm])).await;
    activate(&running, "fire").await;
    let first = wait_for_guard(&running, STEP, |g| g["detail"] != "not evaluated yet").await;
    assert_eq!(first["name"], "calm");
    let mut events = engine_events(&running);
    // The same plan with a guard that cannot read its Prometheus instead.
    let strict =
        format!("name = 'strict'; prometheus = 'http://{closed}'; query = 'up'; above = 1");
    let text = plan(maps, "action = 'drop'", &[&strict]);
    let reloaded =
        firedrill::config::parse(&text, "reloaded.toml").unwrap_or_else(|e| panic!("{e}"));
    running
        .control()
        .reload_plan(reloaded, "test")
        .await
        .expect("the plan reloads");
    let stop = wait_for_stop(&mut events, STEP).await;
    assert_eq!(stop.guard, "strict");
}
