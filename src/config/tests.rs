use std::time::Duration;

use super::*;
use crate::fault::Action;
use crate::topology::Protocol;

const MINIMAL: &str = r#"
[datacenters.pangyo]
[datacenters.ansan]

[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:8001"
upstream = "http://127.0.0.1:9001"

[services.cache]
datacenter = "ansan"
protocol = "tcp"
listen = "127.0.0.1:16379"
upstream = "127.0.0.1:6379"
"#;

fn errors(source: &str) -> Vec<Diagnostic> {
    match parse(source, "plan.toml") {
        Ok(_) => panic!("plan should be rejected"),
        Err(Error::Invalid(diagnostics)) => diagnostics,
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn one_error(source: &str) -> (usize, usize, String) {
    let errors = errors(source);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    (errors[0].line, errors[0].column, errors[0].message.clone())
}

#[test]
fn the_shipped_plan_is_valid() {
    let plan = parse(
        include_str!("../../config/kakao-staging.toml"),
        "kakao-staging.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = plan.scenarios.iter().map(|s| &*s.name).collect();
    for wanted in [
        "pangyo-fire",
        "pangyo-recovery",
        "login-outage",
        "flaky-link",
    ] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    assert_eq!(plan.topology.datacenters.len(), 4);
    let pangyo = &plan.topology.datacenters[0];
    assert_eq!(&*pangyo.name, "pangyo");
    assert!(pangyo.services.len() * 2 > plan.topology.services.len());
}

#[test]
fn defaults_fill_in_what_the_plan_leaves_out() {
    let source = format!(
        "{MINIMAL}\n[scenarios.fire]\n[[scenarios.fire.faults]]\ndatacenter = \"pangyo\"\naction = \"drop\"\n"
    );
    let plan = parse(&source, "plan.toml").unwrap();
    assert_eq!(plan.admin.listen.to_string(), DEFAULT_ADMIN_LISTEN);
    let fire = plan.scenario("fire").unwrap();
    assert_eq!(fire.max_duration, Duration::from_secs(15 * 60));
    let fault = &fire.faults[0];
    assert_eq!(fault.probability, 1.0);
    assert_eq!(fault.after, Duration::ZERO);
    assert_eq!(fault.duration, None);
    assert!(matches!(fault.action, Action::Drop));
    assert_eq!(fault.targets.len(), 1);
    let talk = plan.topology.service("talk").unwrap();
    assert_eq!(talk.protocol, Protocol::Http);
    assert_eq!(talk.upstream.authority, "127.0.0.1:9001");
}

#[test]
fn unknown_datacenter_names_the_known_ones() {
    let source = MINIMAL.replace("datacenter = \"ansan\"", "datacenter = \"pangyo2\"");
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (12, 14));
    assert_eq!(
        message,
        "service `cache` names unknown datacenter `pangyo2`; known: pangyo, ansan"
    );
}

#[test]
fn unknown_fields_are_errors_at_their_line() {
    let source = MINIMAL.replace("protocol = \"tcp\"", "protocl = \"tcp\"");
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (13, 1));
    assert!(message.starts_with("unknown field `protocl`"), "{message}");
}

#[test]
fn bad_values_point_at_the_value() {
    let source = format!(
        "{MINIMAL}\n[scenarios.s]\nmax_duration = \"soon\"\n[[scenarios.s.faults]]\nservice = \"talk\"\naction = \"drop\"\n"
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (18, 16));
    assert!(message.contains("invalid duration `soon`"), "{message}");

    let source = format!(
        "{MINIMAL}\n[scenarios.s]\n[[scenarios.s.faults]]\nservice = \"talk\"\naction = \"drop\"\nprobability = 1.5\n"
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 21);
    assert!(message.contains("between 0 and 1"), "{message}");

    let source = format!(
        "{MINIMAL}\n[scenarios.s]\n[[scenarios.s.faults]]\nservice = \"talk\"\naction = \"explode\"\n"
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 20);
    assert!(message.contains("unknown variant `explode`"), "{message}");
}

#[test]
fn a_bad_value_does_not_hide_problems_in_other_tables() {
    let source = format!(
        r#"{MINIMAL}
[services.mail]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:8007"
upstream = "127.0.0.1"

[services.gift]
datacenter = "pangyo2"
protocol = "smtp"
listen = "127.0.0.1:8006"
upstream = "127.0.0.1:9006"

[scenarios.s]
max_duration = "soon"
[[scenarios.s.faults]]
service = "mail"
action = "drop"

[scenarios.t]
[[scenarios.t.faults]]
service = "gift"
action = "drop"
[[scenarios.t.faults]]
service = "nope"
action = "drop"
"#
    );
    let errors = errors(&source);
    let found: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    // mail and gift failed to parse, so faults naming them are not also
    // reported as naming unknown services; `nope` is.
    assert_eq!(found.len(), 4, "{found:#?}");
    assert_eq!(found[0].0, 21);
    assert!(found[0].1.contains("needs a host and a port"), "{found:#?}");
    assert_eq!(found[1].0, 25);
    assert!(found[1].1.contains("unknown variant `smtp`"), "{found:#?}");
    assert_eq!(found[2].0, 30);
    assert!(found[2].1.contains("invalid duration `soon`"), "{found:#?}");
    assert_eq!(
        found[3],
        (
            40,
            "scenario `t` fault #2: names unknown service `nope`; known: talk, cache"
        )
    );
}

#[test]
fn every_syntax_error_is_reported() {
    let errors = errors("[admin\nlisten = \n[services.a]\nx = \"unterminated\n");
    assert!(errors.len() >= 2, "{errors:#?}");
    assert_eq!(errors[0].line, 1);
}

#[test]
fn unknown_top_level_tables_are_errors() {
    let (line, _, message) = one_error(&format!(
        "{MINIMAL}
[servics.x]
"
    ));
    assert_eq!(line, 17);
    assert!(message.starts_with("unknown table `servics`"), "{message}");
}

#[test]
fn cross_checks_collect_every_problem_with_its_line() {
    let source = format!(
        r#"{MINIMAL}
[services.mail]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:8001"
upstream = "127.0.0.1:9007"

[scenarios.s]
[[scenarios.s.faults]]
service = "cache"
action = "error"
status = 503
[[scenarios.s.faults]]
service = "nope"
action = "blackhole"
latency = "1s"
"#
    );
    let errors = errors(&source);
    let found: Vec<(usize, &str)> = errors
        .iter()
        .map(|e| (e.line, e.message.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (20, "service `mail` listens on 127.0.0.1:8001, which service `talk` already uses; give each listener its own port"),
            (24, "scenario `s` fault #1: the selector matches no service; method, path_prefix and action = \"error\" apply to http services only"),
            (29, "scenario `s` fault #2: names unknown service `nope`; known: talk, cache, mail"),
            (31, "scenario `s` fault #2: `latency` only applies to action = \"delay\", not \"blackhole\""),
        ]
    );
}

#[test]
fn diagnostics_show_file_line_column_and_the_source_line() {
    let source = MINIMAL.replace("datacenter = \"ansan\"", "datacenter = \"pangyo2\"");
    let text = parse(&source, "config/plan.toml").unwrap_err().to_string();
    assert!(
        text.starts_with("config/plan.toml:12:14: service `cache`"),
        "{text}"
    );
    assert!(text.contains("12 | datacenter = \"pangyo2\""), "{text}");
    assert!(text.contains("^^^^^^^^^"), "{text}");
    assert!(text.ends_with("1 error in plan"), "{text}");
}

#[test]
fn a_fault_needs_a_selector_that_matches() {
    let source = format!(
        "{MINIMAL}\n[scenarios.s]\n[[scenarios.s.faults]]\naction = \"drop\"\n[[scenarios.s.faults]]\ndatacenter = \"ansan\"\nservice = \"talk\"\naction = \"drop\"\n"
    );
    let errors = errors(&source);
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].message.contains("needs a selector"));
    assert!(errors[1].message.contains("not in that datacenter"));
}

#[test]
fn an_error_fault_may_not_set_framing_headers() {
    let source = format!(
        "{MINIMAL}\n[scenarios.s]\n[[scenarios.s.faults]]\nservice = \"talk\"\naction = \"error\"\nstatus = 503\nheaders = {{ \"content-length\" = \"2\" }}\n"
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 22);
    assert!(
        message.contains("header `content-length` is set by firedrill itself"),
        "{message}"
    );
}

#[test]
fn durations_longer_than_thirty_days_are_rejected() {
    let source = format!(
        "{MINIMAL}\n[scenarios.s]\nmax_duration = \"300000000000years\"\n[[scenarios.s.faults]]\nservice = \"talk\"\naction = \"drop\"\n"
    );
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 18);
    assert!(message.contains("longer than the 30 days"), "{message}");
}

#[test]
fn upstreams_must_be_usable_authorities() {
    let source = MINIMAL.replace("\"127.0.0.1:6379\"", "\"::1:6379\"");
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 15);
    assert!(message.contains("`[::1]:9001`"), "{message}");
    let ipv6 = MINIMAL.replace("\"127.0.0.1:6379\"", "\"[::1]:6379\"");
    assert!(parse(&ipv6, "plan.toml").is_ok());
}

#[test]
fn a_service_may_not_forward_to_itself() {
    let source = MINIMAL.replace("\"127.0.0.1:6379\"", "\"127.0.0.1:16379\"");
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 15);
    assert!(
        message.contains("forwards to its own listen address"),
        "{message}"
    );
}

/// MINIMAL with `lines` added to the http service `talk` (from line 10)
/// and `tcp_lines` to the tcp service `cache` (from line 16 plus the
/// number of `lines`).
fn with_limits(lines: &str, tcp_lines: &str) -> String {
    MINIMAL
        .replace(
            "upstream = \"http://127.0.0.1:9001\"\n",
            &format!("upstream = \"http://127.0.0.1:9001\"\n{lines}"),
        )
        .replace(
            "upstream = \"127.0.0.1:6379\"\n",
            &format!("upstream = \"127.0.0.1:6379\"\n{tcp_lines}"),
        )
}

#[test]
fn limits_default_per_protocol() {
    let plan = parse(MINIMAL, "plan.toml").unwrap();
    let talk = plan.topology.service("talk").unwrap().limits;
    assert_eq!(talk.max_connections, 10_000);
    assert_eq!(talk.max_header_bytes, 64 * 1024);
    assert_eq!(talk.max_headers, 100);
    assert_eq!(talk.idle_timeout, Duration::from_secs(60));
    assert_eq!(talk.upstream_idle_timeout, Duration::from_secs(60));
    let cache = plan.topology.service("cache").unwrap().limits;
    assert_eq!(cache.max_connections, 10_000);
    assert_eq!(cache.idle_timeout, Duration::from_secs(3600));
}

#[test]
fn limits_given_in_the_plan_are_used() {
    let source = with_limits(
        "max_connections = 50\nmax_header_bytes = 8192\nmax_headers = 20\nidle_timeout = \"300ms\"\nupstream_idle_timeout = \"2s\"\n",
        "max_connections = 3\nidle_timeout = \"10m\"\n",
    );
    let plan = parse(&source, "plan.toml").unwrap_or_else(|e| panic!("{e}"));
    let talk = plan.topology.service("talk").unwrap().limits;
    assert_eq!(talk.max_connections, 50);
    assert_eq!(talk.max_header_bytes, 8192);
    assert_eq!(talk.max_headers, 20);
    assert_eq!(talk.idle_timeout, Duration::from_millis(300));
    assert_eq!(talk.upstream_idle_timeout, Duration::from_secs(2));
    let cache = plan.topology.service("cache").unwrap().limits;
    assert_eq!(cache.max_connections, 3);
    assert_eq!(cache.idle_timeout, Duration::from_secs(600));
}

#[test]
fn limits_out_of_range_are_reported_at_their_values() {
    let source = with_limits(
        "max_connections = 0\nmax_header_bytes = 4096\nmax_headers = 0\nidle_timeout = \"0s\"\nupstream_idle_timeout = \"0ms\"\n",
        "",
    );
    let found: Vec<(usize, usize, String)> = errors(&source)
        .into_iter()
        .map(|d| (d.line, d.column, d.message))
        .collect();
    let expected = [
        (10, 19, "service `talk` has max_connections 0; allow at least 1 connection"),
        (11, 20, "service `talk` has max_header_bytes 4096; give 8192 (8 KiB, the least the HTTP parser accepts) to 16777216 (16 MiB)"),
        (12, 15, "service `talk` has max_headers 0; give 1 to 10000"),
        (13, 16, "service `talk` has idle_timeout 0; give it a positive duration like \"60s\""),
        (14, 25, "service `talk` has upstream_idle_timeout 0; give it a positive duration like \"60s\""),
    ];
    let expected: Vec<(usize, usize, String)> = expected
        .into_iter()
        .map(|(line, column, message)| (line, column, message.to_owned()))
        .collect();
    assert_eq!(found, expected);
}

#[test]
fn http_limits_on_a_tcp_service_are_errors() {
    let source = with_limits(
        "",
        "max_header_bytes = 65536\nmax_headers = 10\nupstream_idle_timeout = \"5s\"\n",
    );
    let found: Vec<(usize, String)> = errors(&source)
        .into_iter()
        .map(|d| (d.line, d.message))
        .collect();
    assert_eq!(
        found,
        [
            (16, "service `cache` is tcp; `max_header_bytes` applies to http services only, remove it".to_owned()),
            (17, "service `cache` is tcp; `max_headers` applies to http services only, remove it".to_owned()),
            (18, "service `cache` is tcp; `upstream_idle_timeout` applies to http services only, remove it".to_owned()),
        ]
    );
}

#[test]
fn a_negative_connection_cap_is_a_type_error_at_the_value() {
    let (line, column, message) = one_error(&with_limits("max_connections = -1\n", ""));
    assert_eq!((line, column), (10, 19));
    assert!(message.contains("-1"), "{message}");
}

#[test]
fn a_wildcard_listener_conflicts_with_every_address_on_its_port() {
    let wildcard = MINIMAL.replace("listen = \"127.0.0.1:16379\"", "listen = \"0.0.0.0:8001\"");
    let (line, column, message) = one_error(&wildcard);
    assert_eq!((line, column), (14, 10));
    assert_eq!(
        message,
        "service `cache` listens on 0.0.0.0:8001, which service `talk` already uses as 127.0.0.1:8001; give each listener its own port"
    );
    // `[::]` takes IPv4 too; another port or another address is fine.
    let v6 = MINIMAL.replace("listen = \"127.0.0.1:16379\"", "listen = \"[::]:8001\"");
    assert_eq!(one_error(&v6).0, 14);
    for fine in ["127.0.0.2:8001", "0.0.0.0:8002", "[::1]:8001"] {
        let text = MINIMAL.replace("127.0.0.1:16379", fine);
        parse(&text, "plan.toml").unwrap_or_else(|e| panic!("{fine}: {e}"));
    }
}

/// MINIMAL with one scenario of `max_duration` (default when empty) and
/// one fault on talk with the given extra lines.
fn staged(max_duration: &str, fault: &str) -> String {
    format!(
        "{MINIMAL}\n[scenarios.drill]\n{max_duration}\n[[scenarios.drill.faults]]\nservice = \"talk\"\naction = \"drop\"\n{fault}\n"
    )
}

fn warnings(source: &str) -> Vec<Diagnostic> {
    parse(source, "plan.toml")
        .unwrap_or_else(|e| panic!("a plan with warnings still loads: {e}"))
        .warnings
}

#[test]
fn a_fault_that_outlasts_its_scenario_is_a_warning_at_its_duration() {
    let text = staged(
        "max_duration = \"10m\"",
        "after = \"5m\"\nduration = \"1h\"",
    );
    let found = warnings(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    let warning = &found[0];
    assert_eq!((warning.line, warning.column), (23, 12));
    assert_eq!(warning.severity, Severity::Warning);
    assert_eq!(
        warning.message,
        "scenario `drill` fault #1: ends 1h 5m after activation (after 5m + duration 1h), past the scenario's max_duration of 10m, so it is cut short there; shorten the fault or raise max_duration"
    );
    assert_eq!(
        warning.to_string(),
        format!(
            "plan.toml:23:12: warning: {}\n   |\n23 | duration = \"1h\"\n   |            ^^^^",
            warning.message
        )
    );
}

#[test]
fn a_fault_within_its_scenario_gives_no_warning() {
    for (max_duration, fault) in [
        (
            "max_duration = \"10m\"",
            "after = \"5m\"\nduration = \"5m\"",
        ),
        ("max_duration = \"10m\"", "after = \"5m\""),
        ("", "duration = \"15m\""),
    ] {
        let found = warnings(&staged(max_duration, fault));
        assert!(found.is_empty(), "{max_duration} {fault}: {found:#?}");
    }
    // The default max_duration, 15m, applies too.
    assert_eq!(warnings(&staged("", "duration = \"16m\"")).len(), 1);
}

#[test]
fn a_fault_that_starts_after_its_scenario_is_an_error_not_also_a_warning() {
    let text = staged(
        "max_duration = \"10m\"",
        "after = \"10m\"\nduration = \"1m\"",
    );
    let (_, _, message) = one_error(&text);
    assert!(message.contains("it would never run"), "{message}");
}

#[test]
fn a_host_name_as_listen_address_asks_for_an_ip_address() {
    let source = MINIMAL.replace("127.0.0.1:8001", "localhost:26397");
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (8, 10));
    assert_eq!(
        message,
        "listen address \"localhost:26397\" needs an IP address, not the host name `localhost`; write \"127.0.0.1:26397\""
    );

    let source = format!("[admin]\nlisten = \"staging.example:9090\"\n{MINIMAL}");
    let (line, _, message) = one_error(&source);
    assert_eq!(line, 2);
    assert_eq!(
        message,
        "listen address \"staging.example:9090\" needs an IP address, not the host name `staging.example`; \
         write \"127.0.0.1:9090\" for loopback or \"0.0.0.0:9090\" for every interface"
    );

    let source = MINIMAL.replace("127.0.0.1:8001", "::1:8001");
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "listen address \"::1:8001\" needs brackets around its IPv6 address; write \"[::1]:8001\""
    );

    let source = MINIMAL.replace("127.0.0.1:8001", "8001");
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "listen address \"8001\" is not an IP address and port; write it like \"127.0.0.1:8001\""
    );
}

#[test]
fn a_misspelled_faults_table_hears_that_faults_is_expected() {
    let source = format!(
        "{MINIMAL}\n[scenarios.x]\n[[scenarios.x.fault]]\ndatacenter = \"pangyo\"\naction = \"drop\"\n"
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (18, 15));
    assert_eq!(
        message,
        "unknown field `fault`, expected one of `description`, `max_duration`, `faults`, `stop_when`"
    );
}

#[test]
fn a_duration_without_unit_asks_for_a_string_like_300ms() {
    let source = format!(
        "{MINIMAL}\n[scenarios.x]\n[[scenarios.x.faults]]\ndatacenter = \"pangyo\"\naction = \"delay\"\nlatency = 300\n"
    );
    let (line, column, message) = one_error(&source);
    assert_eq!((line, column), (21, 11));
    assert_eq!(
        message,
        "a duration is a string with a unit: write \"300ms\" or \"300s\", not 300"
    );

    let source = format!("{MINIMAL}\n[scenarios.x]\nmax_duration = 1.5\n");
    let (_, _, message) = one_error(&source);
    assert_eq!(
        message,
        "a duration is a string with a unit: write \"1.5s\", not 1.5"
    );
}
mod guards;
