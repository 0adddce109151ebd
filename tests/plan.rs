//! Plans through the real binary: `firedrill check` on good and bad plans
//! (every error as `FILE:LINE:COL: message`), `firedrill run` on a missing
//! plan and on a good one until SIGTERM; plus parse-level checks through
//! `firedrill::config::parse`.

mod support;
use support::*;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use firedrill::config;

const BIN: &str = env!("CARGO_BIN_EXE_firedrill");
const EXIT_BAD_PLAN: i32 = 64;

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("firedrill-plan-test"));
        std::fs::create_dir_all(&path).expect("creating a temp dir");
        TempDir(path)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("writing a plan");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn firedrill(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs firedrill to its end, bounded in time.
fn run_to_end(args: &[&str]) -> Finished {
    let limit = Duration::from_secs(30);
    let ran = run_captured(&mut firedrill(args), limit);
    let status = ran.status.unwrap_or_else(|| {
        panic!(
            "firedrill {args:?} did not exit within {limit:?}; stderr:\n{}",
            ran.stderr
        )
    });
    Finished {
        status,
        stdout: ran.stdout,
        stderr: ran.stderr,
    }
}

fn check(path: &Path) -> Finished {
    run_to_end(&["check", path.to_str().unwrap()])
}

/// The 1-based line and column where `needle` first starts in `text`.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` is not in the plan"));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    (
        text[..at].matches('\n').count() + 1,
        text[line_start..at].chars().count() + 1,
    )
}

/// Asserts that `check` rejects `text` with exit code 64 and reports, for
/// each `(needle, message)`, an error `FILE:LINE:COL: ...message...` at the
/// position where `needle` starts.
fn assert_rejected(text: &str, expected: &[(&str, &str)]) {
    let dir = TempDir::new();
    let path = dir.write("plan.toml", text);
    let result = check(&path);
    assert_eq!(
        result.status.code(),
        Some(EXIT_BAD_PLAN),
        "stderr:\n{}",
        result.stderr
    );
    let file = path.display().to_string();
    let mut missing = Vec::new();
    for (needle, message) in expected {
        let (line, column) = locate(text, needle);
        let prefix = format!("{file}:{line}:{column}: ");
        let found = result.stderr.lines().any(|l| {
            l.strip_prefix(&prefix)
                .is_some_and(|rest| rest.contains(message))
        });
        if !found {
            missing.push(format!("{line}:{column}: {message}"));
        }
    }
    assert!(
        missing.is_empty(),
        "these errors were not reported:\n  {}\nstderr was:\n{}",
        missing.join("\n  "),
        result.stderr
    );
}

/// A valid plan that each bad plan changes in one place (or all of them).
const BASE: &str = r#"[admin]
listen = "127.0.0.1:0"

[datacenters.pangyo]
[datacenters.ansan]

[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:18001"
upstream = "127.0.0.1:9001"

[services.maps]
datacenter = "ansan"
protocol = "http"
listen = "127.0.0.1:18004"
upstream = "127.0.0.1:9004"

[services.ledger]
datacenter = "ansan"
protocol = "tcp"
listen = "127.0.0.1:15432"
upstream = "127.0.0.1:9432"

[services.cdn]
datacenter = "ansan"
protocol = "http"
listen = "127.0.0.1:18021"
upstream = "127.0.0.1:9021"

[scenarios.fire]
max_duration = "5m"
[[scenarios.fire.faults]]
datacenter = "pangyo"
action = "blackhole"

[scenarios.flaky]
[[scenarios.flaky.faults]]
datacenter = "ansan"
action = "drop"
probability = 0.2

[scenarios.cut]
[[scenarios.cut.faults]]
datacenter = "ansan"
action = "drop"

[scenarios.login-down]
[[scenarios.login-down.faults]]
service = "maps"
action = "error"
status = 503
"#;

/// One mistake: what to replace in [`BASE`], where the error must point,
/// and what it must say.
struct Mistake {
    from: &'static str,
    to: &'static str,
    at: &'static str,
    message: &'static str,
}

const UNKNOWN_DATACENTER: Mistake = Mistake {
    from: "datacenter = \"pangyo\"\nprotocol",
    to: "datacenter = \"pangyo2\"\nprotocol",
    at: "\"pangyo2\"",
    message: "service `talk` names unknown datacenter `pangyo2`; known: pangyo, ansan",
};
const DUPLICATE_LISTEN: Mistake = Mistake {
    from: "listen = \"127.0.0.1:18004\"",
    to: "listen = \"127.0.0.1:18001\"",
    at: "\"127.0.0.1:18001\"\nupstream = \"127.0.0.1:9004\"",
    message: "service `maps` listens on 127.0.0.1:18001, which service `talk` already uses",
};
const UNKNOWN_FIELD: Mistake = Mistake {
    from: "protocol = \"tcp\"",
    to: "protocl = \"tcp\"",
    at: "protocl",
    message: "unknown field `protocl`",
};
const BAD_DURATION: Mistake = Mistake {
    from: "max_duration = \"5m\"",
    to: "max_duration = \"five minutes\"",
    at: "\"five minutes\"",
    message: "invalid duration `five minutes`",
};
const BAD_PROBABILITY: Mistake = Mistake {
    from: "probability = 0.2",
    to: "probability = 1.5",
    at: "1.5",
    message: "probability must be between 0 and 1, got 1.5",
};
const STATUS_ON_DROP: Mistake = Mistake {
    from: "action = \"drop\"\n\n[scenarios.login-down]",
    to: "action = \"drop\"\nstatus = 502\n\n[scenarios.login-down]",
    at: "502",
    message: "scenario `cut` fault #1: `status` only applies to action = \"error\", not \"drop\"",
};
const ERROR_WITHOUT_STATUS: Mistake = Mistake {
    from: "action = \"error\"\nstatus = 503\n",
    to: "action = \"error\"\n",
    at: "[[scenarios.login-down.faults]]",
    message: "scenario `login-down` fault #1: action = \"error\" needs `status`",
};
const UNKNOWN_SERVICE: Mistake = Mistake {
    from: "service = \"maps\"",
    to: "service = \"tlak\"",
    at: "\"tlak\"",
    message: "scenario `login-down` fault #1: names unknown service `tlak`; known: talk, maps",
};
const UPSTREAM_WITHOUT_PORT: Mistake = Mistake {
    from: "upstream = \"127.0.0.1:9021\"",
    to: "upstream = \"127.0.0.1\"",
    at: "\"127.0.0.1\"",
    message: "upstream `127.0.0.1` needs a host and a port",
};
const HOST_NAME_LISTEN: Mistake = Mistake {
    from: "listen = \"127.0.0.1:18001\"",
    to: "listen = \"localhost:18001\"",
    at: "\"localhost:18001\"",
    message:
        "listen address \"localhost:18001\" needs an IP address, not the host name `localhost`; \
              write \"127.0.0.1:18001\"",
};
const FAULT_TABLE_MISSPELLED: Mistake = Mistake {
    from: "[[scenarios.cut.faults]]",
    to: "[[scenarios.cut.fault]]",
    at: "fault]]",
    message: "unknown field `fault`, expected one of `description`, `max_duration`, `faults`",
};
const DURATION_WITHOUT_UNIT: Mistake = Mistake {
    from: "action = \"blackhole\"",
    to: "action = \"delay\"\nlatency = 300",
    at: "300",
    message: "a duration is a string with a unit: write \"300ms\" or \"300s\", not 300",
};

fn with(mistakes: &[&Mistake]) -> String {
    let mut text = BASE.to_owned();
    for mistake in mistakes {
        assert_eq!(
            text.matches(mistake.from).count(),
            1,
            "`{}` must occur once",
            mistake.from
        );
        text = text.replace(mistake.from, mistake.to);
    }
    text
}

fn assert_only_mistake(mistake: &Mistake) {
    assert_rejected(&with(&[mistake]), &[(mistake.at, mistake.message)]);
}

#[test]
fn check_accepts_the_shipped_plan() {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kakao-staging.toml");
    let result = check(&shipped);
    assert_eq!(result.status.code(), Some(0), "stderr:\n{}", result.stderr);
    assert!(
        result
            .stdout
            .contains("ok (4 datacenters, 13 services, 4 scenarios)"),
        "{}",
        result.stdout
    );
}

#[test]
fn check_accepts_the_base_plan_these_tests_break() {
    let dir = TempDir::new();
    let result = check(&dir.write("base.toml", BASE));
    assert_eq!(result.status.code(), Some(0), "stderr:\n{}", result.stderr);
}

#[test]
fn check_reports_every_error_of_a_plan_at_once() {
    let all = [
        &UNKNOWN_DATACENTER,
        &DUPLICATE_LISTEN,
        &UNKNOWN_FIELD,
        &BAD_DURATION,
        &BAD_PROBABILITY,
        &STATUS_ON_DROP,
        &ERROR_WITHOUT_STATUS,
        &UNKNOWN_SERVICE,
        &UPSTREAM_WITHOUT_PORT,
    ];
    let expected: Vec<(&str, &str)> = all.iter().map(|m| (m.at, m.message)).collect();
    assert_rejected(&with(&all), &expected);
}

#[test]
fn check_reports_the_errors_of_every_fault_in_one_scenario() {
    // A long staged scenario (like pangyo-recovery) with a slip in two faults.
    let text = BASE.replace(
        "probability = 0.2\n",
        "probability = 1.5\n[[scenarios.flaky.faults]]\nservice = \"tlak\"\naction = \"blackhole\"\n",
    );
    assert_rejected(
        &text,
        &[
            (BAD_PROBABILITY.at, BAD_PROBABILITY.message),
            (
                "\"tlak\"",
                "scenario `flaky` fault #2: names unknown service `tlak`",
            ),
        ],
    );
}

#[test]
fn check_reports_several_cross_field_errors_at_once() {
    let all = [
        &UNKNOWN_DATACENTER,
        &DUPLICATE_LISTEN,
        &STATUS_ON_DROP,
        &ERROR_WITHOUT_STATUS,
        &UNKNOWN_SERVICE,
    ];
    let expected: Vec<(&str, &str)> = all.iter().map(|m| (m.at, m.message)).collect();
    assert_rejected(&with(&all), &expected);
}

#[test]
fn check_points_at_an_unknown_datacenter_and_lists_the_known_ones() {
    assert_only_mistake(&UNKNOWN_DATACENTER);
}

#[test]
fn check_points_at_a_listen_address_used_twice() {
    assert_only_mistake(&DUPLICATE_LISTEN);
}

#[test]
fn check_points_at_a_misspelled_field() {
    assert_only_mistake(&UNKNOWN_FIELD);
}

#[test]
fn check_points_at_a_duration_it_cannot_read() {
    assert_only_mistake(&BAD_DURATION);
}

#[test]
fn check_points_at_a_probability_above_1() {
    assert_only_mistake(&BAD_PROBABILITY);
}

#[test]
fn check_points_at_status_on_a_fault_that_is_not_an_error() {
    assert_only_mistake(&STATUS_ON_DROP);
}

#[test]
fn check_points_at_an_error_fault_without_status() {
    assert_only_mistake(&ERROR_WITHOUT_STATUS);
}

#[test]
fn check_points_at_an_unknown_service_in_a_fault_selector() {
    assert_only_mistake(&UNKNOWN_SERVICE);
}

#[test]
fn check_points_at_an_upstream_without_a_port() {
    assert_only_mistake(&UPSTREAM_WITHOUT_PORT);
}

#[test]
fn check_asks_for_an_ip_address_where_a_listen_address_has_a_host_name() {
    assert_only_mistake(&HOST_NAME_LISTEN);
}

#[test]
fn check_names_faults_among_the_keys_of_a_scenario() {
    assert_only_mistake(&FAULT_TABLE_MISSPELLED);
}

#[test]
fn check_asks_for_a_duration_string_where_a_bare_number_is_written() {
    assert_only_mistake(&DURATION_WITHOUT_UNIT);
}

#[test]
fn check_fails_if_any_of_several_plans_is_bad_and_names_each() {
    let dir = TempDir::new();
    let good = dir.write("good.toml", BASE);
    let bad = dir.write("bad.toml", &with(&[&UNKNOWN_SERVICE]));
    let result = run_to_end(&["check", good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(EXIT_BAD_PLAN));
    assert!(result.stdout.contains(&format!("{}: ok", good.display())));
    assert!(result.stderr.contains(&format!("{}:", bad.display())));
}

#[test]
fn run_with_a_missing_plan_exits_64_and_says_which_file() {
    let dir = TempDir::new();
    let missing = dir.0.join("missing.toml");
    let result = run_to_end(&["run", "--config", missing.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(EXIT_BAD_PLAN));
    let stderr = result.stderr.trim();
    assert!(
        stderr.starts_with(&format!("cannot read plan {}: ", missing.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn run_with_a_bad_plan_exits_64_with_the_errors() {
    let dir = TempDir::new();
    let path = dir.write("bad.toml", &with(&[&UNKNOWN_DATACENTER]));
    let result = run_to_end(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(result.status.code(), Some(EXIT_BAD_PLAN));
    assert!(result.stderr.contains(UNKNOWN_DATACENTER.message));
}

/// The value of `key=` in a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_logs_where_it_listens_and_exits_0_on_sigterm() {
    let web = http_upstream("web").await;
    let echo = echo_upstream().await;
    let dir = TempDir::new();
    let plan = PlanText::new(&["pangyo"])
        .http("web", "pangyo", web)
        .tcp("cache", "pangyo", echo)
        .scenario("fire", &["datacenter = 'pangyo'; action = 'blackhole'"]);
    let path = dir.write("run.toml", plan.toml());
    let mut child = Process(
        firedrill(&["run", "--config", path.to_str().unwrap(), "--grace", "2s"])
            .spawn()
            .expect("starting firedrill"),
    );
    let stdout = collect(child.0.stdout.take().unwrap());
    let received = lines(child.0.stderr.take().unwrap());
    let mut log = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log
        .iter()
        .any(|l: &String| l.contains("starts in pass-through"))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match received.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(e) => panic!("firedrill did not finish starting ({e}); log so far:\n{log:#?}"),
        }
    }
    let text = log.join("\n");
    assert!(
        !text.contains('\x1b'),
        "a log that is not a terminal has no colour codes:\n{text}"
    );
    let listen = |what: &str| -> std::net::SocketAddr {
        log.iter()
            .find(|l| l.contains(what))
            .and_then(|l| field(l, "listen"))
            .unwrap_or_else(|| panic!("no `{what}` line with listen= in:\n{text}"))
            .parse()
            .expect("listen= is an address")
    };
    let web_addr = listen("service=web");
    let cache_addr = listen("service=cache");
    let admin_addr = listen("admin API listening");
    for addr in [web_addr, cache_addr, admin_addr] {
        assert_ne!(addr.port(), 0, "the log names the bound port:\n{text}");
    }
    // What the log says is where things really are.
    let (status, body) = get(admin_addr, "/healthz").await;
    assert_eq!(status, http::StatusCode::OK, "{body}");
    let (status, body) = get(web_addr, "/hi").await;
    assert_eq!(status, http::StatusCode::OK);
    assert_eq!(body, "web answered GET /hi\n");
    let mut stream = connect(cache_addr).await;
    carry_echo(&mut stream, b"ping").await;
    drop(stream);

    child.signal("TERM");
    let status = child.wait_within(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "log:\n{text}");
    // The reader thread may still be forwarding the last lines; it hangs
    // up at the end of the output.
    while let Ok(line) = received.recv_timeout(Duration::from_secs(5)) {
        log.push(line);
    }
    assert!(
        log.iter().any(|l| l.contains("SIGTERM received")),
        "{log:#?}"
    );
    // Stdout has one machine-readable line with the same addresses.
    let stdout = stdout.join().unwrap();
    let ready = format!(
        "firedrill ready admin={admin_addr} service.web={web_addr} service.cache={cache_addr}"
    );
    assert_eq!(stdout.lines().collect::<Vec<_>>(), [ready.as_str()]);
}

fn diagnostics(text: &str) -> Vec<config::Diagnostic> {
    match config::parse(text, "inline.toml") {
        Ok(_) => panic!("the plan parsed:\n{text}"),
        Err(config::Error::Invalid(diagnostics)) => diagnostics,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

#[test]
fn parse_gives_each_problem_its_file_line_and_column() {
    let text = with(&[&UNKNOWN_DATACENTER, &UNKNOWN_SERVICE]);
    let found = diagnostics(&text);
    let positions: Vec<(usize, usize)> = found.iter().map(|d| (d.line, d.column)).collect();
    let expected = [
        locate(&text, UNKNOWN_DATACENTER.at),
        locate(&text, "[[scenarios.fire.faults]]"),
        locate(&text, UNKNOWN_SERVICE.at),
    ];
    assert_eq!(positions, expected, "{found:#?}");
    assert!(found.iter().all(|d| d.file == "inline.toml"));
    assert_eq!(found[0].message, UNKNOWN_DATACENTER.message);
    // With talk gone from pangyo, the pangyo fault selects nothing.
    assert!(found[1].message.contains("the selector matches no service"));
    assert!(found[2].message.starts_with(UNKNOWN_SERVICE.message));
}

#[test]
fn parse_error_text_underlines_the_value_and_counts_the_errors() {
    let text = with(&[&BAD_PROBABILITY]);
    let error = config::parse(&text, "inline.toml").unwrap_err().to_string();
    let (line, column) = locate(&text, BAD_PROBABILITY.at);
    assert!(
        error.starts_with(&format!("inline.toml:{line}:{column}: ")),
        "{error}"
    );
    assert!(
        error.contains(&format!("{line} | probability = 1.5")),
        "{error}"
    );
    assert!(error.contains("^^^"), "{error}");
    assert!(error.ends_with("1 error in plan"), "{error}");
}

#[test]
fn parse_fills_in_the_documented_defaults() {
    let text = r#"
[datacenters.pangyo]
[services.web]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "http://127.0.0.1:9001/"
[scenarios.fire]
[[scenarios.fire.faults]]
datacenter = "pangyo"
action = "blackhole"
"#;
    let plan = config::parse(text, "inline.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plan.admin.listen.to_string(), config::DEFAULT_ADMIN_LISTEN);
    let web = &plan.topology.services[0];
    assert_eq!(web.connect_timeout, Duration::from_secs(5));
    assert_eq!(web.timeout, Duration::from_secs(30));
    assert_eq!(web.upstream.authority, "127.0.0.1:9001");
    let fire = plan.scenario("fire").unwrap();
    assert_eq!(fire.max_duration, Duration::from_secs(15 * 60));
    let fault = &fire.faults[0];
    assert_eq!(fault.probability, 1.0);
    assert_eq!(fault.after, Duration::ZERO);
    assert_eq!(fault.duration, None);
}

#[test]
fn parse_aims_an_error_fault_at_the_http_services_only() {
    let text = BASE.replace("service = \"maps\"", "datacenter = \"ansan\"");
    let plan = config::parse(&text, "inline.toml").unwrap_or_else(|e| panic!("{e}"));
    let names = |scenario: &str| -> Vec<&str> {
        plan.scenario(scenario).unwrap().faults[0]
            .targets
            .iter()
            .map(|id| &*plan.topology.services[id.index()].name)
            .collect()
    };
    assert_eq!(names("login-down"), ["maps", "cdn"]);
    assert_eq!(names("cut"), ["maps", "ledger", "cdn"]);
}

#[test]
fn parse_keeps_the_shipped_plan_in_its_written_order() {
    let shipped = include_str!("../config/kakao-staging.toml");
    let plan = config::parse(shipped, "kakao-staging.toml").unwrap_or_else(|e| panic!("{e}"));
    let datacenters: Vec<&str> = plan.topology.datacenters.iter().map(|d| &*d.name).collect();
    assert_eq!(datacenters, ["pangyo", "ansan", "seoul", "busan"]);
    let scenarios: Vec<&str> = plan.scenarios.iter().map(|s| &*s.name).collect();
    assert_eq!(
        scenarios,
        [
            "pangyo-fire",
            "pangyo-recovery",
            "login-outage",
            "flaky-link"
        ]
    );
    let fire = plan.scenario("pangyo-fire").unwrap();
    assert_eq!(fire.faults[0].targets.len(), 8, "all of pangyo goes dark");
}

#[test]
fn check_warns_at_a_fault_that_outlasts_its_scenario_and_still_passes() {
    // `fire` lasts at most 5m; this fault would run from 4m to 6m.
    let from = "datacenter = \"pangyo\"\naction = \"blackhole\"\n";
    assert_eq!(BASE.matches(from).count(), 1);
    let text = BASE.replace(from, &format!("{from}after = \"4m\"\nduration = \"2m\"\n"));
    let dir = TempDir::new();
    let path = dir.write("plan.toml", &text);
    let result = check(&path);
    assert_eq!(result.status.code(), Some(0), "stderr:\n{}", result.stderr);
    let (line, column) = locate(&text, "\"2m\"");
    let header = format!(
        "{}:{line}:{column}: warning: scenario `fire` fault #1: ends 6m after activation (after 4m + duration 2m), past the scenario's max_duration of 5m",
        path.display()
    );
    let lines: Vec<&str> = result.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with(&header))
        .unwrap_or_else(|| panic!("no `{header}` in:\n{}", result.stderr));
    // Underlined like an error.
    assert_eq!(lines[at + 2], format!("{line} | duration = \"2m\""));
    assert!(lines[at + 3].ends_with(&format!("{}^^^^", " ".repeat(column))));
    assert!(
        result.stdout.contains(": ok (") && result.stdout.contains("1 warning"),
        "{}",
        result.stdout
    );
    // The plan loads as it is.
    let plan = config::parse(&text, "plan.toml").expect("a plan with warnings loads");
    assert_eq!(plan.warnings.len(), 1);
}
