//! The command line against a real firedrill with real upstreams: the
//! real binary runs `trigger`, `lift`, `events`, `status`, `watch` and
//! `report`, with `--json`, tokens, https and mutual TLS, and exits 1 for
//! an API error, 2 for a usage mistake and 3 when nothing answers.

mod support;
use support::cli::{cli, code, http_admin};
use support::pki::Pki;
use support::*;

use firedrill::admin::api;
use firedrill::Running;
use http::{Method, StatusCode};

/// Two data centers with one http service each, and a scenario for each.
async fn drill(admin: &str) -> Running {
    PlanText::with_admin(admin, &["pangyo", "ansan"])
        .http("talk", "pangyo", http_upstream("talk").await)
        .http("maps", "ansan", http_upstream("maps").await)
        .scenario_with(
            "pangyo-fire",
            "max_duration = '30m'",
            &["datacenter = 'pangyo'; action = 'error'; status = 503"],
        )
        .scenario(
            "ansan-slow",
            &["datacenter = 'ansan'; action = 'delay'; latency = '20ms'"],
        )
        .start()
        .await
}

async fn talk_status(running: &Running) -> StatusCode {
    get(addr(running, "talk"), "/x").await.0
}

#[tokio::test]
async fn trigger_lift_and_events_drive_a_real_firedrill() {
    let running = drill("").await;
    let admin = http_admin(&running);
    assert_eq!(talk_status(&running).await, StatusCode::OK);

    let ran = cli(&admin, None, &["trigger", "pangyo-fire", "--for", "5m"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    assert!(
        ran.stdout.starts_with("pangyo-fire activated until "),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("\n  error 503 on talk in pangyo from "),
        "{}",
        ran.stdout
    );
    assert_eq!(talk_status(&running).await, StatusCode::SERVICE_UNAVAILABLE);
    let (_, faults) = admin_call(&running, Method::GET, "/faults").await;
    assert_eq!(faults["active"][0]["scenario"], "pangyo-fire", "{faults}");

    let ran = cli(&admin, None, &["lift", "pangyo-fire"]).await;
    assert_eq!(
        (code(&ran), ran.stdout.as_str()),
        (0, "pangyo-fire lifted\n")
    );
    assert_eq!(talk_status(&running).await, StatusCode::OK);
    let ran = cli(&admin, None, &["lift", "pangyo-fire"]).await;
    assert_eq!(
        (code(&ran), ran.stdout.as_str()),
        (0, "pangyo-fire was not active; nothing to lift\n")
    );

    let ran = cli(&admin, None, &["events", "--limit", "1"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert!(lines[0].starts_with("STARTED "), "{}", ran.stdout);
    assert!(
        lines[1].contains(" pangyo-fire ")
            && lines[1].contains(" lifted ")
            && lines[1].contains("by 127.0.0.1:"),
        "{}",
        ran.stdout
    );
}

async fn admin_call(
    running: &Running,
    method: Method,
    path: &str,
) -> (StatusCode, serde_json::Value) {
    admin(running, method, path, "").await
}

#[tokio::test]
async fn json_prints_the_apis_own_answers() {
    let running = drill("").await;
    let admin = http_admin(&running);
    let ran = cli(
        &admin,
        None,
        &["trigger", "pangyo-fire", "--for", "90s", "--json"],
    )
    .await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    let answer: api::ActivateAnswer = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(answer.status, "activated");
    assert_eq!(answer.requested_duration.as_deref(), Some("1m 30s"));
    assert_eq!(answer.activation.scenario, "pangyo-fire");

    let ran = cli(&admin, None, &["trigger", "ansan-slow"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    let ran = cli(&admin, None, &["events", "--json", "--limit", "1"]).await;
    let events: api::EventList = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(events.events.len(), 1, "{}", ran.stdout);
    assert_eq!(events.events[0].scenario, "ansan-slow");
    // The API's own answer, every field of it, only its list cut.
    let (_, mut expected) = admin_call(&running, Method::GET, "/events").await;
    let cut: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    expected["events"]
        .as_array_mut()
        .expect("a list")
        .truncate(1);
    assert_eq!(cut, expected);
    let ran = cli(&admin, None, &["events", "--json"]).await;
    let (_, whole) = admin_call(&running, Method::GET, "/events").await;
    let all: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(all, whole);

    let ran = cli(&admin, None, &["lift", "--all", "--json"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    let mut halted: api::HaltAnswer = serde_json::from_str(&ran.stdout).expect("JSON");
    halted.lifted.sort();
    assert_eq!(halted.lifted, ["ansan-slow", "pangyo-fire"]);
    let ran = cli(&admin, None, &["lift", "--all"]).await;
    assert_eq!(
        (code(&ran), ran.stdout.as_str()),
        (0, "Nothing was active; nothing to lift.\n")
    );
    let ran = cli(&admin, None, &["lift", "ansan-slow", "--json"]).await;
    let lifted: api::LiftAnswer = serde_json::from_str(&ran.stdout).expect("JSON");
    assert!(!lifted.lifted);
}

#[tokio::test]
async fn an_unknown_scenario_exits_1_and_lists_the_known_ones() {
    let running = drill("").await;
    let admin = http_admin(&running);
    let ran = cli(&admin, None, &["trigger", "pangyo-flood"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert_eq!(ran.stdout, "");
    assert_eq!(
        ran.stderr,
        "error: unknown scenario `pangyo-flood`; known: pangyo-fire, ansan-slow\n\
         known scenarios:\n  pangyo-fire\n  ansan-slow\n"
    );
    // Scripts get the API's error body.
    let ran = cli(&admin, None, &["lift", "pangyo-flood", "--json"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    let body: api::ErrorBody = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(body.known.unwrap(), ["pangyo-fire", "ansan-slow"]);
    // An unknown report is the API's 404, whatever it says.
    let ran = cli(&admin, None, &["report", "no-such-report"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert!(ran.stderr.starts_with("error: "), "{}", ran.stderr);
}

#[tokio::test]
async fn usage_mistakes_exit_2_saying_what_to_fix() {
    let running = drill("").await;
    let admin = http_admin(&running);
    let pki = Pki::new();
    let missing = pki.path("missing.pem");
    let cases: [(&[&str], &str); 8] = [
        (&["trigger"], "SCENARIO"),
        (&["trigger", "pangyo-fire", "--for", "soon"], "--for"),
        (&["lift"], "--all"),
        (&["lift", "pangyo-fire", "--all"], "cannot be used with"),
        (&["events", "--limit", "many"], "--limit"),
        (
            &["status", "--admin", "127.0.0.1 9090"],
            "the admin URL `127.0.0.1 9090` (--admin or FIREDRILL_ADMIN) is not a URL",
        ),
        (
            &["status", "--admin", "ftp://127.0.0.1:9090"],
            "must start with http:// or https://",
        ),
        (&["events", "--cert", "client.pem"], "--key"),
    ];
    for (args, says) in cases {
        let ran = cli(&admin, None, args).await;
        assert_eq!(code(&ran), 2, "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
    }
    let https = format!("https://{}", running.admin_addr());
    let ran = cli(&https, None, &["events", "--cacert", &missing]).await;
    assert_eq!(code(&ran), 2, "{ran:?}");
    assert!(
        ran.stderr
            .contains(&format!("cannot read --cacert file {missing}")),
        "{}",
        ran.stderr
    );
    let ran = cli(&admin, None, &["events", "--cacert", &pki.path("ca.pem")]).await;
    assert_eq!(code(&ran), 2, "{ran:?}");
    assert!(
        ran.stderr.contains("need an https:// admin URL"),
        "{}",
        ran.stderr
    );
}

#[tokio::test]
async fn a_firedrill_that_is_not_there_exits_3_and_says_where_it_tried() {
    let (nothing, _socket) = unreachable_upstream();
    let admin = format!("http://{nothing}");
    for args in [
        &["trigger", "pangyo-fire"][..],
        &["lift", "--all"],
        &["status"],
        &["watch"],
        &["events", "--json"],
        &["report"],
    ] {
        let ran = cli(&admin, None, args).await;
        assert_eq!(code(&ran), 3, "{args:?}: {ran:?}");
        assert!(
            ran.stderr.starts_with(&format!(
                "error: firedrill is not reachable at {admin}: Connection refused"
            )),
            "{args:?}: {}",
            ran.stderr
        );
        assert_eq!(ran.stdout, "", "{args:?}");
    }
}

const LEAD: &str = "lead-7f3a9c21e4b8d605";
const TOKENS: &str = "tokens = [{ name = 'gameday-lead', value = 'lead-7f3a9c21e4b8d605' }]";

#[tokio::test]
async fn the_token_comes_from_firedrill_token() {
    let running = drill(TOKENS).await;
    let admin = http_admin(&running);
    let ran = cli(&admin, None, &["trigger", "pangyo-fire"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert!(
        ran.stderr
            .starts_with("error: this endpoint needs a token: ")
            && ran
                .stderr
                .ends_with("hint: set FIREDRILL_TOKEN to a token from the plan's [admin] tokens\n"),
        "{}",
        ran.stderr
    );
    let ran = cli(&admin, Some("not-the-token"), &["trigger", "pangyo-fire"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert_eq!(
        ran.stderr,
        "error: the token presented is not one of [admin] tokens\n"
    );
    let ran = cli(&admin, Some(LEAD), &["trigger", "pangyo-fire"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    assert!(
        ran.stdout.contains(", by gameday-lead (127.0.0.1:"),
        "{}",
        ran.stdout
    );
    let ran = cli(&admin, Some(LEAD), &["events"]).await;
    assert!(ran.stdout.contains("gameday-lead"), "{}", ran.stdout);
    assert!(!ran.stdout.contains(LEAD) && !ran.stderr.contains(LEAD));
}

/// firedrill with an admin API over TLS (mutual when `mutual`), its plan
/// beside the PEM files of `pki`.
async fn tls_drill(pki: &Pki, mutual: bool) -> Running {
    let plan = PlanText::with_admin(&format!("{TOKENS}; {}", pki.admin_tls(mutual)), &["pangyo"])
        .http("talk", "pangyo", http_upstream("talk").await)
        .scenario("pangyo-fire", &["datacenter = 'pangyo'; action = 'drop'"]);
    let path = pki.dir.path().join("plan.toml");
    std::fs::write(&path, plan.toml()).unwrap();
    let plan = firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    firedrill::start(plan).await.expect("firedrill starts")
}

#[tokio::test]
async fn https_needs_the_cacert_that_signed_the_admin_certificate() {
    let pki = Pki::new();
    let running = tls_drill(&pki, false).await;
    let https = format!("https://127.0.0.1:{}", running.admin_addr().port());
    let ca = pki.path("ca.pem");
    let ran = cli(
        &https,
        Some(LEAD),
        &["trigger", "pangyo-fire", "--cacert", &ca],
    )
    .await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    assert!(ran.stdout.starts_with("pangyo-fire activated"), "{ran:?}");
    // The system's roots do not know the test CA.
    let ran = cli(&https, Some(LEAD), &["events"]).await;
    assert_eq!(code(&ran), 3, "{ran:?}");
    assert!(
        ran.stderr.contains("the TLS handshake failed") && ran.stderr.contains("certificate"),
        "{}",
        ran.stderr
    );
    // Plain HTTP to a TLS port gets no answer, and a hint.
    let http = format!("http://{}", running.admin_addr());
    let ran = cli(&http, Some(LEAD), &["events"]).await;
    assert_eq!(code(&ran), 3, "{ran:?}");
    assert!(ran.stderr.contains("use an https:// URL"), "{}", ran.stderr);
}

#[tokio::test]
async fn mutual_tls_takes_the_client_certificate_from_cert_and_key() {
    let pki = Pki::new();
    let running = tls_drill(&pki, true).await;
    let https = format!("https://127.0.0.1:{}", running.admin_addr().port());
    let ca = pki.path("ca.pem");
    let (cert, key) = (pki.path("client.pem"), pki.path("client.key"));
    let trigger = ["trigger", "pangyo-fire", "--cacert", &ca];
    let ran = cli(
        &https,
        Some(LEAD),
        &[&trigger[..], &["--cert", &cert, "--key", &key]].concat(),
    )
    .await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    assert!(ran.stdout.contains("CN=runbook"), "{}", ran.stdout);
    let ran = cli(&https, Some(LEAD), &trigger).await;
    assert_eq!(code(&ran), 3, "without a client certificate: {ran:?}");
    let (cert, key) = (pki.path("stranger.pem"), pki.path("stranger.key"));
    let ran = cli(
        &https,
        Some(LEAD),
        &[&trigger[..], &["--cert", &cert, "--key", &key]].concat(),
    )
    .await;
    assert_eq!(code(&ran), 3, "with a stranger's certificate: {ran:?}");
}
