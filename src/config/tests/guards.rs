//! Plans with `stop_when` guards and a `[safety]` table: what they parse
//! into, and the exact, located error for each kind of mistake.

use std::time::Duration;

use super::{errors, one_error, MINIMAL};
use crate::config::{parse, Measure, OnError, Scope};

/// MINIMAL with a scenario `fire` dropping talk's traffic, then `extra`.
fn plan(extra: &str) -> String {
    format!("{MINIMAL}\n[scenarios.fire]\n[[scenarios.fire.faults]]\nservice = \"talk\"\naction = \"drop\"\n{extra}")
}

/// The first line of `extra` in [`plan`].
const FIRST: usize = 21;

#[test]
fn guards_parse_with_their_defaults() {
    let source = plan(
        r#"[[scenarios.fire.stop_when]]
name = "ansan-stays-up"
error_ratio = { outside = true }
above = 0.05
for = "20s"
[[scenarios.fire.stop_when]]
name = "talk-latency"
p99_latency = { service = "talk" }
above = "800ms"
[[scenarios.fire.stop_when]]
name = "slo"
prometheus = "https://127.0.0.1:9091/prom"
query = 'sum(up)'
above = 1
on_error = "continue"
[safety]
max_active = 2
allow_datacenters = ["pangyo"]
"#,
    );
    let plan = parse(&source, "plan.toml").unwrap_or_else(|e| panic!("{e}"));
    let guards = &plan.scenario("fire").unwrap().stop_when;
    assert_eq!(guards.len(), 3);
    assert_eq!(&*guards[0].name, "ansan-stays-up");
    assert_eq!(
        guards[0].measure,
        Measure::ErrorRatio {
            scope: Scope::Outside,
            window: Duration::from_secs(30)
        }
    );
    assert_eq!(guards[0].above, 0.05);
    assert_eq!(guards[0].hold, Duration::from_secs(20));
    assert_eq!(guards[1].above, 0.8);
    assert_eq!(guards[1].hold, Duration::ZERO);
    assert_eq!(
        guards[1].measure,
        Measure::P99Latency {
            scope: Scope::Service("talk".into()),
            window: Duration::from_secs(30)
        }
    );
    let Measure::Prometheus {
        url,
        query,
        on_error,
    } = &guards[2].measure
    else {
        panic!("{:?}", guards[2].measure);
    };
    assert_eq!(url.to_string(), "https://127.0.0.1:9091/prom");
    assert_eq!(query, "sum(up)");
    assert_eq!(*on_error, OnError::Continue);
    assert_eq!(plan.safety.max_active, Some(2));
    assert_eq!(plan.safety.allow_datacenters, Some(vec!["pangyo".into()]));
}

#[test]
fn a_guard_on_an_unknown_service_names_the_known_ones() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { service = \"mpas\" }\nabove = 0.1\n",
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (FIRST + 2, 27));
    assert_eq!(
        message,
        "scenario `fire` guard `g`: names unknown service `mpas`; known: talk, cache"
    );
}

#[test]
fn a_guard_on_an_unknown_datacenter_names_the_known_ones() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { datacenter = \"busan\" }\nabove = 0.1\n",
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, FIRST + 2);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: names unknown datacenter `busan`; known: pangyo, ansan"
    );
}

#[test]
fn a_threshold_of_the_wrong_kind_points_at_above() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\np99_latency = { service = \"talk\" }\nabove = 0.8\n",
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (FIRST + 3, 9));
    assert_eq!(
        message,
        "scenario `fire` guard `g`: `above` of p99_latency is a duration with a unit, like \"800ms\", not 0.8"
    );

    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = \"5s\"\n",
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, FIRST + 3);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: `above` of error_ratio is a ratio like 0.05, not a duration"
    );

    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = 5\n",
    );
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: `above` of error_ratio is a ratio from 0 up to 1, like 0.05, not 5"
    );
}

#[test]
fn a_bad_prometheus_url_is_located() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"slo\"\nprometheus = \"127.0.0.1:9091\"\nquery = 'up'\nabove = 1\n",
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (FIRST + 2, 14));
    assert_eq!(
        message,
        "scenario `fire` guard `slo`: `prometheus` must be the server's http:// or https:// URL, like \"http://127.0.0.1:9090\", not \"127.0.0.1:9091\""
    );
}

#[test]
fn a_prometheus_guard_needs_a_query_and_no_window() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"slo\"\nprometheus = \"http://127.0.0.1:9091\"\nabove = 1\nwindow = \"1m\"\n",
    );
    let found: Vec<(usize, String)> = errors(&source)
        .into_iter()
        .map(|e| (e.line, e.message))
        .collect();
    assert_eq!(
        found,
        [
            (FIRST, "scenario `fire` guard `slo`: a prometheus guard needs `query`, the PromQL it evaluates, like query = 'sum(rate(http_requests_total{code=~\"5..\"}[1m]))'".to_owned()),
            (FIRST + 4, "scenario `fire` guard `slo`: `window` applies to error_ratio and p99_latency; a prometheus query sets its own range, like [1m]".to_owned()),
        ]
    );
}

#[test]
fn a_guard_measures_exactly_one_thing() {
    let source = plan("[[scenarios.fire.stop_when]]\nname = \"g\"\nabove = 1\n");
    let (line, _, message) = one_error(&source);
    assert_eq!(line, FIRST);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: measures nothing; add error_ratio = { outside = true }, p99_latency = { service = \"...\" }, or prometheus = \"http://...\" with a query"
    );

    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\np99_latency = { service = \"talk\" }\nabove = 1\n",
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, FIRST + 3);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: has both `error_ratio` and `p99_latency`; a guard measures one thing, so give each its own [[stop_when]] table"
    );

    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true, service = \"talk\" }\nabove = 0.1\n",
    );
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: `error_ratio` reads one of outside, datacenter or service, not both `outside` and `service`"
    );
}

#[test]
fn built_in_guards_read_http_services_only() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { service = \"cache\" }\nabove = 0.1\n",
    );
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "scenario `fire` guard `g`: service `cache` is tcp, and `error_ratio` reads HTTP requests; guard an http service or a datacenter"
    );
}

#[test]
fn guard_names_are_required_and_unique() {
    let guard = "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = 0.1\n";
    let (line, _, message) = one_error(&plan(&format!("{guard}{guard}")));
    assert_eq!(line, FIRST + 5);
    assert_eq!(
        message,
        "scenario `fire` has two guards named `g`; give each its own name"
    );

    let (line, _, message) = one_error(&plan(
        "[[scenarios.fire.stop_when]]\nerror_ratio = { outside = true }\nabove = 0.1\n",
    ));
    assert_eq!(line, FIRST);
    assert!(message.starts_with("missing field `name`"), "{message}");
}

#[test]
fn a_window_longer_than_the_history_is_refused() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = 0.1\nwindow = \"10m\"\n",
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (FIRST + 4, 10));
    assert_eq!(
        message,
        "scenario `fire` guard `g`: `window` 10m reaches past the 5m of history firedrill keeps; use at most \"5m\""
    );
}

#[test]
fn a_for_as_long_as_the_scenario_runs_is_a_warning() {
    let source = plan(
        "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = 0.1\nfor = \"15m\"\n",
    );
    let plan = parse(&source, "plan.toml").unwrap_or_else(|e| panic!("{e}"));
    let warnings: Vec<(usize, &str)> = (plan.warnings.iter())
        .map(|w| (w.line, w.message.as_str()))
        .collect();
    assert_eq!(
        warnings,
        [(FIRST + 4, "scenario `fire` guard `g`: `for` 15m is not shorter than the scenario's max_duration of 15m, so it can never trip; shorten it")]
    );
}

/// The warnings of `plan(extra)`, each with its line and column.
fn located_warnings(extra: &str) -> Vec<(usize, usize, String)> {
    let plan = parse(&plan(extra), "plan.toml").unwrap_or_else(|e| panic!("{e}"));
    (plan.warnings.iter())
        .map(|w| (w.line, w.column, w.message.clone()))
        .collect()
}

fn p99_above(above: &str) -> String {
    format!("[[scenarios.fire.stop_when]]\nname = \"g\"\np99_latency = {{ service = \"talk\" }}\nabove = {above}\n")
}

#[test]
fn a_p99_threshold_inside_a_latency_bucket_is_a_warning_at_above() {
    let found = located_warnings(&p99_above("\"3s\""));
    assert_eq!(
        found,
        [(
            FIRST + 3,
            9,
            "scenario `fire` guard `g`: `above` 3s falls inside the latency bucket from 2s 500ms to 5s, and a p99 there is interpolated between the bounds: requests that all took just over 2s 500ms read as a p99 near 5s, and trip it; use a bucket bound, 2s 500ms or 5s, where it trips exactly when more than 1 % of requests took longer than that".to_owned()
        )]
    );
    // Whatever the buckets around it, 800ms is not one of their bounds.
    let found = located_warnings(&p99_above("\"800ms\""));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].2.starts_with(
            "scenario `fire` guard `g`: `above` 800ms falls inside the latency bucket from "
        ),
        "{found:?}"
    );
}

#[test]
fn a_p99_threshold_on_a_bucket_bound_gives_no_warning() {
    for bound in crate::stats::LATENCY_BUCKETS {
        let above = format!(
            "\"{}\"",
            humantime::format_duration(Duration::from_secs_f64(bound))
        );
        assert_eq!(located_warnings(&p99_above(&above)), [], "{above}");
    }
    // A ratio's threshold is not a latency.
    let ratio = "[[scenarios.fire.stop_when]]\nname = \"g\"\nerror_ratio = { outside = true }\nabove = 0.07\n";
    assert_eq!(located_warnings(ratio), []);
}

#[test]
fn a_p99_threshold_past_the_highest_bucket_can_never_trip() {
    let highest = *crate::stats::LATENCY_BUCKETS.last().unwrap();
    let highest = humantime::format_duration(Duration::from_secs_f64(highest));
    let found = located_warnings(&p99_above("\"1h\""));
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].2,
        format!("scenario `fire` guard `g`: `above` 1h is past the highest latency bucket bound, {highest}, and a p99 never reads more than that, so this guard can never trip; use at most {highest}")
    );
}

#[test]
fn safety_names_must_exist_and_max_active_be_positive() {
    let found: Vec<(usize, String)> = errors(&plan(
        "[safety]\nmax_active = 0\nallow_datacenters = [\"ansan\", \"busan\"]\n",
    ))
    .into_iter()
    .map(|e| (e.line, e.message))
    .collect();
    assert_eq!(
        found,
        [
            (FIRST + 1, "[safety] max_active = 0 would refuse every activation; give at least 1, or remove it for no limit".to_owned()),
            (FIRST + 2, "[safety] allow_datacenters names unknown datacenter `busan`; known: pangyo, ansan".to_owned()),
        ]
    );
    let (line, _, message) = one_error(&plan("[safety]\nmax_actve = 1\n"));
    assert_eq!(line, FIRST + 1);
    assert!(
        message.starts_with("unknown field `max_actve`"),
        "{message}"
    );
}
