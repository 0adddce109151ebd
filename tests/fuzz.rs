//! Property tests over untrusted input: arbitrary text and mutated copies of
//! the shipped plan into the plan parser, and random methods, paths,
//! content types and bodies against every admin endpoint. Nothing may
//! panic or hang; every rejection must be a clear error (a located
//! diagnostic for plans, a JSON `{"error": ...}` for the API).
//!
//! 256 cases per property by default; `PROPTEST_CASES=100000 cargo test
//! --release --test fuzz` runs longer (see README, Development).

mod support;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use proptest::test_runner::Config;

use support::*;

/// The shipped plan, the seed of the structured mutations.
const SHIPPED: &str = include_str!("../config/kakao-staging.toml");

/// The longest one case may take before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(10);

/// proptest's defaults (256 cases, or `PROPTEST_CASES`), without writing
/// regression files into the source tree: a failure prints its input.
fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

// --- The plan parser ------------------------------------------------------------

/// Parses `source` on a thread of its own, failing the case if that hangs
/// or panics; checks that a rejection is a list of located diagnostics
/// whose lines lie within the source.
fn check_plan(source: String) -> Result<(), TestCaseError> {
    let (done, result) = mpsc::channel();
    let text = source.clone();
    std::thread::spawn(move || {
        let parsed =
            std::panic::catch_unwind(|| firedrill::config::parse(&text, "fuzz.toml").map(|_| ()));
        let _ = done.send(parsed);
    });
    let parsed = match result.recv_timeout(CASE_LIMIT) {
        Ok(Ok(parsed)) => parsed,
        Ok(Err(_)) => return Err(TestCaseError::fail(format!("parse panicked on {source:?}"))),
        Err(_) => return Err(TestCaseError::fail(format!("parse hung on {source:?}"))),
    };
    let Err(error) = parsed else {
        return Ok(());
    };
    let firedrill::config::Error::Invalid(diagnostics) = &error else {
        return Err(TestCaseError::fail(format!(
            "not a plan diagnostic: {error}"
        )));
    };
    prop_assert!(!diagnostics.is_empty(), "an empty rejection");
    let lines = source.lines().count().max(1) + 1;
    let text = error.to_string();
    for d in diagnostics {
        prop_assert!(
            (1..=lines).contains(&d.line) && d.column >= 1,
            "{}:{} outside the source: {text}",
            d.line,
            d.column
        );
        prop_assert!(!d.message.trim().is_empty(), "an empty message: {text}");
        let located = format!("fuzz.toml:{}:{}: {}", d.line, d.column, d.message);
        prop_assert!(text.contains(&located), "no `{located}` in: {text}");
    }
    Ok(())
}

/// Text shaped like TOML: brackets, quotes, equals signs, dots, digits,
/// duration units and newlines, so the parser gets past its first byte.
fn tomlish() -> impl Strategy<Value = String> {
    "([\\[\\]{}=\".,'#a-z0-9 _-]|\n|ms|[smhd]|\"\"\"|true|services|faults|scenarios|datacenters|action|listen|127\\.0\\.0\\.1:0){0,200}"
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_parser_survives_arbitrary_text(source in any::<String>()) {
        check_plan(source)?;
    }

    #[test]
    fn the_parser_survives_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_plan(String::from_utf8_lossy(&bytes).into_owned())?;
    }

    #[test]
    fn the_parser_survives_toml_shaped_text(source in tomlish()) {
        check_plan(source)?;
    }

    #[test]
    fn the_parser_survives_mutations_of_the_shipped_plan(edits in prop::collection::vec(edit(), 1..8)) {
        let mut lines: Vec<String> = SHIPPED.lines().map(str::to_owned).collect();
        for edit in edits {
            edit.apply(&mut lines);
        }
        check_plan(lines.join("\n"))?;
    }
}

/// One change to a plan's lines; indices wrap around the line count.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    /// Replaces a line with another line of text.
    Replace(usize, String),
    /// Keeps a `key = value` line's key and gives it another value.
    Value(usize, String),
    /// Keeps a `key = value` line's value and gives it another key.
    Key(usize, String),
    /// Inserts a table header.
    Table(usize, String),
}

impl Edit {
    fn apply(self, lines: &mut Vec<String>) {
        if lines.is_empty() {
            lines.push(String::new());
        }
        let at = |i: usize| i % lines.len();
        match self {
            Edit::Delete(i) => {
                lines.remove(at(i));
            }
            Edit::Duplicate(i) => {
                let i = at(i);
                lines.insert(i, lines[i].clone());
            }
            Edit::Replace(i, line) => {
                let i = at(i);
                lines[i] = line;
            }
            Edit::Value(i, value) => {
                let i = at(i);
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {value}");
                }
            }
            Edit::Key(i, key) => {
                let i = at(i);
                if let Some((_, value)) = lines[i].split_once('=') {
                    lines[i] = format!("{key} ={value}");
                }
            }
            Edit::Table(i, header) => {
                let i = at(i);
                lines.insert(i, header);
            }
        }
    }
}

/// Values of every kind a plan field could be given.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        "[0-9]{0,25}(ns|us|ms|s|m|h|d|w|y|x)?( [0-9]{1,3}(ms|s|m))?"
            .prop_map(|d| format!("\"{d}\"")),
        "-?[0-9]{1,4}(\\.[0-9]{0,3})?".prop_map(|n| n.to_string()),
        any::<String>().prop_map(|s| format!("{s:?}")),
        "[a-z0-9:./\\[\\]-]{0,30}".prop_map(|s| format!("\"{s}\"")),
        Just("\"blackhole\"".to_owned()),
        Just("\"error\"".to_owned()),
        Just("\"delay\"".to_owned()),
        Just("\"drop\"".to_owned()),
        Just("\"tcp\"".to_owned()),
        Just("\"http\"".to_owned()),
        Just("\"pangyo\"".to_owned()),
        Just("\"talk\"".to_owned()),
        Just("\"127.0.0.1:0\"".to_owned()),
        Just("\"[::1]:6379\"".to_owned()),
        Just("\"http://127.0.0.1:9001\"".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        Just("{ \"content-length\" = \"1\" }".to_owned()),
        Just("[1, \"a\", { x = 1 }]".to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
    ]
}

/// Keys the plan knows, and some it does not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "listen",
            "upstream",
            "datacenter",
            "service",
            "protocol",
            "description",
            "connect_timeout",
            "timeout",
            "max_duration",
            "action",
            "probability",
            "after",
            "duration",
            "latency",
            "jitter",
            "direction",
            "status",
            "body",
            "headers",
            "method",
            "path_prefix",
            "faults",
        ])
        .prop_map(str::to_owned),
        "[a-z_.\"]{1,12}",
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let line = prop_oneof![
        (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        tomlish(),
        any::<String>(),
    ];
    let header = prop_oneof![
        "(datacenters|services|scenarios|admin)(\\.[a-z0-9_.-]{0,10}){0,2}"
            .prop_map(|t| format!("[{t}]")),
        "[a-z0-9_-]{1,10}".prop_map(|s| format!("[[scenarios.{s}.faults]]")),
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), line).prop_map(|(i, l)| Edit::Replace(i, l)),
        (any::<usize>(), value()).prop_map(|(i, v)| Edit::Value(i, v)),
        (any::<usize>(), key()).prop_map(|(i, k)| Edit::Key(i, k)),
        (any::<usize>(), header).prop_map(|(i, h)| Edit::Table(i, h)),
    ]
}

// --- The admin API ----------------------------------------------------------------

/// One firedrill shared by every admin case, on a runtime of its own that
/// outlives the cases.
fn admin() -> &'static (tokio::runtime::Runtime, SocketAddr) {
    static ADMIN: OnceLock<(tokio::runtime::Runtime, SocketAddr)> = OnceLock::new();
    ADMIN.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let addr = runtime.block_on(async {
            let running = PlanText::new(&["pangyo", "ansan"])
                .http("web", "pangyo", http_upstream("web").await)
                .tcp("cache", "ansan", echo_upstream().await)
                .scenario_with(
                    "fire",
                    "max_duration = '2s'",
                    &["datacenter = 'pangyo'; action = 'blackhole'"],
                )
                .scenario_with(
                    "slow",
                    "max_duration = '2s'",
                    &["service = 'cache'; action = 'delay'; latency = '5ms'"],
                )
                .start()
                .await;
            let addr = running.admin_addr();
            // Kept running for the life of the test process.
            std::mem::forget(running);
            addr
        });
        (runtime, addr)
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        prop::sample::select(vec![
            Method::GET,
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
            Method::HEAD,
            Method::OPTIONS,
        ]),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).expect("a token")),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        prop::sample::select(vec!["fire", "slow", "nope", "", ".", "..", "fire/extra"])
            .prop_map(str::to_owned),
        "([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2}){0,40}",
    ];
    prop_oneof![
        prop::sample::select(vec![
            "/healthz",
            "/topology",
            "/scenarios",
            "/faults",
            "/events",
            "/metrics",
            "/status",
            "/reports",
            "/",
            "/faults/",
            "//faults",
        ])
        .prop_map(str::to_owned),
        name.clone().prop_map(|n| format!("/faults/{n}")),
        name.clone().prop_map(|n| format!("/reports/{n}")),
        "(/([A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2}){0,12}){1,4}",
        (name, "[A-Za-z0-9=&%]{0,20}").prop_map(|(n, q)| format!("/faults/{n}?{q}")),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    let json_value = prop_oneof![
        "[0-9]{0,20}(ns|us|ms|s|m|h|d|w|y|x)?( [0-9]{1,3}m)?".prop_map(|d| format!("{d:?}")),
        any::<String>().prop_map(|s| format!("{s:?}")),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("null".to_owned()),
        Just("[]".to_owned()),
        Just("{\"duration\": \"1s\"}".to_owned()),
        Just("1e400".to_owned()),
        Just("\"18446744073709551616s\"".to_owned()),
        Just("\"9999999999999999y\"".to_owned()),
    ];
    let json_key = prop_oneof![
        Just("duration".to_owned()),
        Just("scenario".to_owned()),
        "[a-z\\\\\"]{0,10}",
    ];
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec((json_key, json_value), 0..4).prop_map(|fields| {
            let fields: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("{k:?}: {v}"))
                .collect();
            format!("{{{}}}", fields.join(", ")).into_bytes()
        }),
        "[\\[\\]{}\":, 0-9a-z\\\\]{0,60}".prop_map(String::into_bytes),
    ]
}

/// Sends one request; checks that the answer is no 5xx, that every 4xx
/// carries `{"error": "..."}`, and that the API stays healthy.
async fn check_admin(
    addr: SocketAddr,
    method: Method,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
) -> Result<(), TestCaseError> {
    let uri = format!("http://{addr}{path}");
    let mut request = Request::builder().method(method.clone()).uri(&uri);
    if let Some(content_type) = &content_type {
        request = request.header("content-type", content_type.as_str());
    }
    let Ok(request) = request.body(Full::new(Bytes::from(body.clone()))) else {
        // Not a request a client could send (an invalid header value, say).
        return Ok(());
    };
    let client = client();
    let response = client
        .request(request)
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer to {method} {path}: {e}")))?;
    let status = response.status();
    let text = response
        .into_body()
        .collect()
        .await
        .map_err(|e| TestCaseError::fail(format!("body of {method} {path}: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    let shown = String::from_utf8_lossy(&body);
    prop_assert!(
        !status.is_server_error(),
        "{status} for {method} {path} ({content_type:?}) {shown:?}: {text}"
    );
    if status.is_client_error() && method != Method::HEAD {
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            TestCaseError::fail(format!(
                "{status} for {method} {path} is not JSON ({e}): {text}"
            ))
        })?;
        prop_assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{status} for {method} {path} has no `error`: {text}"
        );
    }
    let (status, health) = send(&client, Method::GET, &format!("http://{addr}/healthz"), "")
        .await
        .map_err(|e| TestCaseError::fail(format!("unhealthy after {method} {path}: {e}")))?;
    prop_assert_eq!(status, StatusCode::OK, "{}", health);
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_admin_endpoint_answers_random_requests_with_json_errors(
        method in method(),
        path in path(),
        content_type in content_type(),
        body in body(),
    ) {
        let (runtime, addr) = admin();
        let checked = runtime.block_on(async {
            tokio::time::timeout(CASE_LIMIT, check_admin(*addr, method, path, content_type, body)).await
        });
        match checked {
            Ok(result) => result?,
            Err(_) => return Err(TestCaseError::fail("an admin request hung")),
        }
    }
}

#[test]
fn an_oversized_admin_body_is_refused_with_a_json_error() {
    let (runtime, addr) = admin();
    let answer = runtime.block_on(async {
        let url = format!("http://{addr}/faults/fire");
        let body = format!("{{\"duration\": \"{}\"}}", "1".repeat(3 * 1024 * 1024));
        within(STEP, send(&client(), Method::POST, &url, &body)).await
    });
    let (status, text) = answer.expect("an answer");
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).expect("a JSON error");
    assert!(json["error"].as_str().is_some(), "{text}");
}
