//! Admin API security over real sockets: bearer tokens on every endpoint,
//! open reads, token values from files and environment variables, plans
//! that would expose the API refused, an audit trail that names tokens but
//! never their values, and the admin API over TLS and mutual TLS.

mod support;
use support::pki::{authority, leaf};
use support::*;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use firedrill::config;
use firedrill::Running;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

const LEAD: &str = "lead-4b8e61f0c2d9a7";
const BOT: &str = "bot-93a0d7e5f1c2b8";
/// Two tokens, inline (the admin API listens on loopback).
const TOKENS: &str = "tokens = [{ name = 'gameday-lead', value = 'lead-4b8e61f0c2d9a7' }, { name = 'ci-bot', value = 'bot-93a0d7e5f1c2b8' }]";

const MUTATING: [(Method, &str); 3] = [
    (Method::POST, "/faults/fire"),
    (Method::DELETE, "/faults/fire"),
    (Method::DELETE, "/faults"),
];
const READS: [&str; 6] = [
    "/healthz",
    "/metrics",
    "/topology",
    "/scenarios",
    "/faults",
    "/events",
];

/// An admin API with `admin` settings in front of one http service, and a
/// scenario `fire` that blacks out its data center.
fn plan(admin: &str, web: SocketAddr) -> PlanText {
    PlanText::with_admin(admin, &["pangyo"])
        .http("web", "pangyo", web)
        .scenario("fire", &["datacenter = 'pangyo'; action = 'blackhole'"])
}

async fn stack(admin: &str) -> Running {
    plan(admin, http_upstream("web").await).start().await
}

/// One admin answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

/// Calls `url` with an optional `Authorization` header value.
async fn call<C: Connect + Clone + Send + Sync + 'static>(
    client: &Client<C, Full<Bytes>>,
    method: Method,
    url: &str,
    authorization: Option<&str>,
    body: &str,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = within(STEP, client.request(request)).await?;
    let (parts, body) = response.into_parts();
    let body = within(STEP, body.collect()).await.expect("body").to_bytes();
    let text = String::from_utf8_lossy(&body);
    let json =
        if parts.headers.get("content-type").map(|v| v.as_bytes()) == Some(b"application/json") {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        } else {
            Value::String(text.into_owned())
        };
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        json,
    })
}

/// Calls the plain-HTTP admin API at `addr` with `Bearer TOKEN` if given.
async fn admin_call(addr: SocketAddr, method: Method, path: &str, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    call(
        &client(),
        method,
        &format!("http://{addr}{path}"),
        bearer.as_deref(),
        "",
    )
    .await
    .expect("the admin API answers")
}

fn assert_unauthorized(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {}",
        answer.json
    );
    let challenge = answer
        .headers
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap());
    assert!(
        challenge.is_some_and(|c| c.starts_with("Bearer")),
        "{what}: {challenge:?}"
    );
    assert!(
        answer.json["error"]
            .as_str()
            .is_some_and(|e| e.contains("Bearer")),
        "{what}: {}",
        answer.json
    );
}

#[tokio::test]
async fn mutating_endpoints_refuse_calls_without_a_known_token() {
    let running = stack(TOKENS).await;
    let addr = running.admin_addr();
    for (method, path) in MUTATING {
        let what = format!("{method} {path}");
        assert_unauthorized(&admin_call(addr, method.clone(), path, None).await, &what);
        let basic = call(
            &client(),
            method.clone(),
            &format!("http://{addr}{path}"),
            Some("Basic bGVhZA=="),
            "",
        )
        .await
        .unwrap();
        assert_unauthorized(&basic, &format!("{what} with Basic"));
        let unknown = admin_call(addr, method.clone(), path, Some("lead-4b8e61f0c2d9a")).await;
        assert_eq!(
            unknown.status,
            StatusCode::FORBIDDEN,
            "{what}: {}",
            unknown.json
        );
        assert!(unknown.json["error"].is_string(), "{}", unknown.json);
    }
    let active = admin_call(addr, Method::GET, "/faults", Some(LEAD)).await;
    assert_eq!(
        active.json["active"],
        serde_json::json!([]),
        "a refused POST activated nothing"
    );
}

#[tokio::test]
async fn every_configured_token_may_call_every_mutating_endpoint() {
    let running = stack(TOKENS).await;
    let addr = running.admin_addr();
    for token in [LEAD, BOT] {
        let activated = admin_call(addr, Method::POST, "/faults/fire", Some(token)).await;
        assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
        let lifted = admin_call(addr, Method::DELETE, "/faults/fire", Some(token)).await;
        assert_eq!(lifted.status, StatusCode::OK, "{}", lifted.json);
        assert_eq!(lifted.json["lifted"], true);
        admin_call(addr, Method::POST, "/faults/fire", Some(token)).await;
        let all = admin_call(addr, Method::DELETE, "/faults", Some(token)).await;
        assert_eq!(all.status, StatusCode::OK, "{}", all.json);
        assert_eq!(all.json["lifted"], serde_json::json!(["fire"]));
    }
    let events = admin_call(addr, Method::GET, "/events", Some(BOT)).await;
    let by: Vec<&str> = events.json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["activated_by"].as_str().unwrap())
        .collect();
    assert_eq!(by.len(), 4, "{}", events.json);
    assert!(by[0].starts_with("ci-bot (127.0.0.1:"), "{by:?}");
    assert!(by[3].starts_with("gameday-lead (127.0.0.1:"), "{by:?}");
    let text = events.json.to_string();
    assert!(!text.contains(LEAD) && !text.contains(BOT), "{text}");
}

#[tokio::test]
async fn reads_need_a_token_unless_open_reads_is_set() {
    let closed = stack(TOKENS).await;
    let open = stack(&format!("{TOKENS}; open_reads = true")).await;
    for path in READS {
        let refused = admin_call(closed.admin_addr(), Method::GET, path, None).await;
        assert_unauthorized(&refused, path);
        let allowed = admin_call(closed.admin_addr(), Method::GET, path, Some(BOT)).await;
        assert_eq!(allowed.status, StatusCode::OK, "{path} with a token");
        let opened = admin_call(open.admin_addr(), Method::GET, path, None).await;
        assert_eq!(opened.status, StatusCode::OK, "{path} with open_reads");
    }
    // Open reads open nothing else.
    for (method, path) in MUTATING {
        let refused = admin_call(open.admin_addr(), method, path, None).await;
        assert_unauthorized(&refused, path);
    }
}

#[tokio::test]
async fn a_token_value_is_read_from_a_file_beside_the_plan() {
    let dir = TempDir::new("admin-token-file");
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/lead.token"), format!("{LEAD}\n")).unwrap();
    let admin = "tokens = [{ name = 'gameday-lead', value_file = 'secrets/lead.token' }]";
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan(admin, http_upstream("web").await).toml()).unwrap();
    let plan = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let running = firedrill::start(plan).await.expect("firedrill starts");
    let addr = running.admin_addr();
    // The file's trailing newline is not part of the value.
    let activated = admin_call(addr, Method::POST, "/faults/fire", Some(LEAD)).await;
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
}

// --- Plans that are refused ------------------------------------------------------

fn diagnostics(text: &str) -> Vec<config::Diagnostic> {
    match config::parse(text, "admin.toml") {
        Ok(_) => panic!("the plan parsed:\n{text}"),
        Err(config::Error::Invalid(diagnostics)) => diagnostics,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

/// The 1-based line of the first line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in:\n{text}"))
        + 1
}

fn upstream() -> SocketAddr {
    "127.0.0.1:9".parse().unwrap()
}

#[test]
fn a_non_loopback_admin_api_without_tokens_is_refused_at_its_listen_line() {
    let text =
        plan("", upstream())
            .toml()
            .replacen("listen = '127.0.0.1:0'", "listen = '0.0.0.0:0'", 1);
    let found = diagnostics(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].line, line_of(&text, "0.0.0.0"));
    let message = &found[0].message;
    assert!(message.contains("not loopback"), "{message}");
    assert!(message.contains("tokens = [{ name = "), "{message}");
    assert!(message.contains("listen on 127.0.0.1"), "{message}");
}

#[test]
fn an_inline_token_is_refused_when_the_admin_api_is_not_on_loopback() {
    let text = plan(TOKENS, upstream()).toml().replacen(
        "listen = '127.0.0.1:0'",
        "listen = '0.0.0.0:0'",
        1,
    );
    let found = diagnostics(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    for diagnostic in &found {
        assert_eq!(diagnostic.line, line_of(&text, "tokens = "));
        assert!(
            diagnostic.message.contains("use value_env"),
            "{}",
            diagnostic.message
        );
        assert!(!diagnostic.message.contains(LEAD) && !diagnostic.message.contains(BOT));
    }
}

#[test]
fn token_mistakes_are_plan_errors_that_say_what_to_fix() {
    let dir = TempDir::new("admin-token-mistakes");
    std::fs::write(dir.path().join("empty.token"), "\n").unwrap();
    let cases = [
        (
            "[{ name = 'a', value_env = 'FIREDRILL_TEST_NEVER_SET_7F3A' }]",
            "environment variable `FIREDRILL_TEST_NEVER_SET_7F3A` is not set",
        ),
        (
            "[{ name = 'a', value_file = 'missing.token' }]",
            "cannot read value_file",
        ),
        (
            "[{ name = 'a', value_file = 'empty.token' }]",
            "empty value",
        ),
        ("[{ name = 'a' }]", "has no value; add value_env"),
        (
            "[{ name = 'a', value = 'x1', value_env = 'HOME' }]",
            "more than one of value_env, value_file and value",
        ),
        (
            "[{ name = 'a', value = 'x1' }, { name = 'a', value = 'x2' }]",
            "token name `a` is used twice",
        ),
        (
            "[{ name = 'a', value = 'same1' }, { name = 'b', value = 'same1' }]",
            "token `b` has the same value as token `a`",
        ),
        ("[{ name = 'a', value = 'has space' }]", "printable ASCII"),
        (
            "[{ name = 'a b', value = 'x1' }]",
            "token name `a b` may only use",
        ),
    ];
    for (tokens, wanted) in cases {
        let text = plan(&format!("tokens = {tokens}"), upstream())
            .toml()
            .to_owned();
        let path = dir.path().join("plan.toml");
        std::fs::write(&path, &text).unwrap();
        let found = match config::load(&path) {
            Err(config::Error::Invalid(found)) => found,
            other => panic!("{tokens}: expected plan errors, got {other:?}"),
        };
        assert_eq!(found.len(), 1, "{tokens}: {found:#?}");
        assert!(
            found[0].message.contains(wanted),
            "{tokens}: {}",
            found[0].message
        );
        assert_eq!(found[0].line, line_of(&text, "tokens = "), "{tokens}");
        assert!(
            !found[0].message.contains("same1"),
            "a value is never printed"
        );
    }
}

#[test]
fn a_missing_admin_certificate_is_reported_at_its_setting() {
    let text = plan(
        "tls = { cert = 'nowhere/admin.pem', key = 'nowhere/admin.key' }",
        upstream(),
    )
    .toml()
    .to_owned();
    let found = diagnostics(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].line, line_of(&text, "tls = "));
    assert_eq!(
        found[0].column,
        text.lines()
            .nth(found[0].line - 1)
            .unwrap()
            .find("'nowhere/admin.pem'")
            .unwrap()
            + 1
    );
    assert!(
        found[0].message.contains("nowhere/admin.pem"),
        "{}",
        found[0].message
    );
}

// --- The real program --------------------------------------------------------------

fn firedrill(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_firedrill"));
    command.args(args);
    command
}

#[test]
fn check_reports_a_token_whose_environment_variable_is_unset() {
    let dir = TempDir::new("admin-check-env");
    let text = plan(
        "tokens = [{ name = 'gameday-lead', value_env = 'FIREDRILL_TEST_TOKEN' }]",
        upstream(),
    );
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, text.toml()).unwrap();
    let path = path.to_str().unwrap();
    let mut command = firedrill(&["check", path]);
    command.env_remove("FIREDRILL_TEST_TOKEN");
    let ran = run_captured(&mut command, STEP);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(64), "{ran:?}");
    let line = line_of(text.toml(), "tokens = ");
    assert!(
        ran.stderr.contains(&format!("{path}:{line}:")),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("`FIREDRILL_TEST_TOKEN` is not set"),
        "{}",
        ran.stderr
    );
    let mut command = firedrill(&["check", path]);
    command.env("FIREDRILL_TEST_TOKEN", LEAD);
    let ran = run_captured(&mut command, STEP);
    assert!(ran.succeeded(), "{ran:?}");
    assert!(!ran.stdout.contains(LEAD) && !ran.stderr.contains(LEAD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_and_events_name_the_token_but_never_its_value() {
    let dir = TempDir::new("admin-audit");
    let text = plan(
        "tokens = [{ name = 'gameday-lead', value_env = 'FIREDRILL_TEST_TOKEN' }]",
        http_upstream("web").await,
    );
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, text.toml()).unwrap();
    let mut command = firedrill(&["run", "--config", path.to_str().unwrap(), "--grace", "1s"]);
    command
        .env("FIREDRILL_TEST_TOKEN", LEAD)
        .env("RUST_LOG", "info,firedrill=trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Process(command.spawn().expect("starting firedrill"));
    let received = lines(child.0.stderr.take().unwrap());
    let mut log: Vec<String> = Vec::new();
    let admin: SocketAddr = loop {
        let line = received
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no `admin API listening` line ({e}): {log:#?}"));
        log.push(line);
        let line = log.last().unwrap();
        if line.contains("admin API listening") {
            assert!(line.contains("tokens=gameday-lead"), "{line}");
            assert!(
                line.contains("tls=off") && line.contains("reads=token"),
                "{line}"
            );
            let listen = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="));
            break listen.expect("listen=").parse().expect("an address");
        }
    };

    let activated = admin_call(admin, Method::POST, "/faults/fire", Some(LEAD)).await;
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
    let bearer = format!("Bearer {LEAD}");
    let url = format!("http://{admin}/faults/fire");
    let bad_body = call(
        &client(),
        Method::POST,
        &url,
        Some(&bearer),
        "{\"note-9c1d\": 1}",
    )
    .await
    .unwrap();
    assert_eq!(bad_body.status, StatusCode::BAD_REQUEST);
    let wrong = admin_call(admin, Method::DELETE, "/faults", Some("wrong-5e1f77")).await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let lifted = admin_call(admin, Method::DELETE, "/faults/fire", Some(LEAD)).await;
    assert_eq!(lifted.json["lifted"], true);
    let events = admin_call(admin, Method::GET, "/events", Some(LEAD)).await;
    let event = &events.json["events"][0];
    for key in ["activated_by", "ended_by"] {
        let by = event[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} in {event}"));
        assert!(
            by.starts_with("gameday-lead (127.0.0.1:") && by.ends_with(')'),
            "{key}: {by}"
        );
    }
    assert!(!events.json.to_string().contains(LEAD));

    child.signal("TERM");
    let status = child.wait_within(Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{log:#?}");
    // The reader thread ends at EOF, so every line is in the channel now.
    log.extend(received.iter());
    let text = log.join("\n");
    let activation = log
        .iter()
        .find(|l| l.contains("scenario activated"))
        .expect(&text);
    assert!(
        activation.contains("gameday-lead (127.0.0.1:"),
        "{activation}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("scenario lifted") && l.contains("gameday-lead")),
        "{text}"
    );
    for secret in [LEAD, "wrong-5e1f77", "note-9c1d"] {
        assert!(!text.contains(secret), "the log shows `{secret}`:\n{text}");
    }
}

// --- TLS ----------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 and a client certificate it
/// signed, and a client certificate from another CA, written as PEM files.
struct Pki {
    dir: TempDir,
    ca: String,
    client: (String, String),
    stranger: (String, String),
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("admin-pki");
        let (ca, issuer) = authority("firedrill test CA");
        let (_, other) = authority("some other CA");
        let server = leaf(
            &["127.0.0.1", "localhost"],
            "admin",
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client = leaf(
            &[],
            "gameday-laptop",
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        let stranger = leaf(&[], "stranger", ExtendedKeyUsagePurpose::ClientAuth, &other);
        for (name, pem) in [
            ("ca.pem", &ca),
            ("admin.pem", &server.0),
            ("admin.key", &server.1),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        Pki {
            dir,
            ca,
            client,
            stranger,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The `[admin]` lines for TLS, with tokens; mutual TLS when `mutual`.
    fn admin(&self, mutual: bool) -> String {
        let ca = if mutual { ", client_ca = 'ca.pem'" } else { "" };
        format!("{TOKENS}; tls = {{ cert = 'admin.pem', key = 'admin.key'{ca} }}")
    }

    /// Writes the plan beside the PEM files and starts firedrill on it.
    async fn start(&self, mutual: bool) -> Running {
        let path = self.path("plan.toml");
        std::fs::write(
            &path,
            plan(&self.admin(mutual), http_upstream("web").await).toml(),
        )
        .unwrap();
        let plan = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        firedrill::start(plan).await.expect("firedrill starts")
    }

    /// An HTTPS client trusting the CA, presenting `identity` if given.
    fn client(&self, identity: Option<&(String, String)>) -> HttpsClient {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.ca.as_bytes()).unwrap())
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_only()
            .enable_http1()
            .build();
        Client::builder(TokioExecutor::new()).build(connector)
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

#[tokio::test]
async fn the_admin_api_speaks_tls_with_the_plans_certificate() {
    let pki = Pki::new();
    let running = pki.start(false).await;
    let url = format!("https://127.0.0.1:{}", running.admin_addr().port());
    let https = pki.client(None);
    let health = call(
        &https,
        Method::GET,
        &format!("{url}/healthz"),
        Some(&format!("Bearer {LEAD}")),
        "",
    )
    .await
    .expect("TLS works");
    assert_eq!(health.status, StatusCode::OK, "{}", health.json);
    let refused = call(
        &https,
        Method::POST,
        &format!("{url}/faults/fire"),
        None,
        "",
    )
    .await
    .unwrap();
    assert_unauthorized(&refused, "POST over TLS without a token");
    let activated = call(
        &https,
        Method::POST,
        &format!("{url}/faults/fire"),
        Some(&format!("Bearer {BOT}")),
        "",
    )
    .await
    .unwrap();
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
    assert!(activated.json["activated_by"]
        .as_str()
        .unwrap()
        .starts_with("ci-bot (127.0.0.1:"));
    // Plain HTTP gets no admin answer from a TLS port.
    let plain_url = format!("http://{}/healthz", running.admin_addr());
    let plain = call(
        &client(),
        Method::GET,
        &plain_url,
        Some(&format!("Bearer {LEAD}")),
        "",
    )
    .await;
    assert!(plain.is_err(), "plain HTTP was answered");
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let running = pki.start(true).await;
    let url = format!(
        "https://127.0.0.1:{}/faults/fire",
        running.admin_addr().port()
    );
    let bearer = format!("Bearer {LEAD}");
    for (who, identity) in [
        ("no certificate", None),
        ("another CA's certificate", Some(&pki.stranger)),
    ] {
        let refused = call(&pki.client(identity), Method::POST, &url, Some(&bearer), "").await;
        assert!(
            refused.is_err(),
            "a client with {who} was answered: {}",
            refused.unwrap().status
        );
    }
    let activated = call(
        &pki.client(Some(&pki.client)),
        Method::POST,
        &url,
        Some(&bearer),
        "",
    )
    .await
    .expect("a CA-signed client gets through");
    assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
    let by = activated.json["activated_by"].as_str().unwrap();
    assert!(
        by.starts_with("gameday-lead (127.0.0.1:") && by.ends_with(", CN=gameday-laptop)"),
        "{by}"
    );
}

#[tokio::test]
async fn a_silent_client_does_not_hold_up_the_tls_admin_api() {
    let pki = Pki::new();
    let running = pki.start(false).await;
    // Connected, but never says hello.
    let _silent: Vec<_> = silent_connections(running.admin_addr(), 4).await;
    let url = format!("https://127.0.0.1:{}/faults", running.admin_addr().port());
    let answer = call(
        &pki.client(None),
        Method::GET,
        &url,
        Some(&format!("Bearer {LEAD}")),
        "",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
}

async fn silent_connections(addr: SocketAddr, count: usize) -> Vec<tokio::net::TcpStream> {
    let mut streams = Vec::new();
    for _ in 0..count {
        streams.push(connect(addr).await);
    }
    streams
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_calls_the_tls_admin_api_with_cacert_and_a_token() {
    if !programs_present(&["curl"], "apt-get install curl") {
        return;
    }
    let pki = Pki::new();
    let running = pki.start(false).await;
    let url = format!(
        "https://127.0.0.1:{}/faults/fire",
        running.admin_addr().port()
    );
    let ca = pki.path("ca.pem");
    let ran = tokio::task::spawn_blocking(move || {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "-X", "POST", "--cacert"]).arg(&ca).args([
            "-H",
            &format!("Authorization: Bearer {LEAD}"),
            "-w",
            "\n%{http_code}",
            &url,
        ]);
        run_captured(&mut curl, STEP)
    })
    .await
    .unwrap();
    assert!(ran.succeeded(), "{ran:?}");
    assert!(ran.stdout.ends_with("\n201"), "{}", ran.stdout);
    assert!(
        ran.stdout
            .contains("\"activated_by\":\"gameday-lead (127.0.0.1:"),
        "{}",
        ran.stdout
    );
}

/// Nobody holds admin connections open without sending requests: a client
/// that sends nothing, or trickles a request's headers, is closed after
/// the header timeout, while others are served meanwhile.
#[tokio::test]
async fn clients_that_send_no_whole_request_are_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let running = PlanText::new(&["pangyo"])
        .http("talk", "pangyo", http_upstream("web").await)
        .start()
        .await;
    let admin = running.admin_addr();
    let opened = std::time::Instant::now();
    let mut silent = connect(admin).await;
    let mut trickling = connect(admin).await;
    trickling
        .write_all(b"POST /faults/fire HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (status, _) = get(admin, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "others are served meanwhile");
    let limit = firedrill::admin::HEADER_TIMEOUT + STEP;
    for (what, stream) in [("silent", &mut silent), ("trickling", &mut trickling)] {
        let ended = closed_within(stream, limit).await;
        assert!(
            matches!(ended, Some(Ok(0)) | Some(Err(_))),
            "{what} client closed: {ended:?}"
        );
    }
    // Lower bound only: not before the timeout.
    assert!(opened.elapsed() >= firedrill::admin::HEADER_TIMEOUT - Duration::from_millis(100));
}

/// Reads what the server sends until it closes (or resets) the connection,
/// for at most `limit`; `None` when it is still open then.
async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Option<std::io::Result<String>> {
    use tokio::io::AsyncReadExt;
    let mut heard = Vec::new();
    let read = tokio::time::timeout(limit, stream.read_to_end(&mut heard)).await;
    Some(
        read.ok()?
            .map(|_| String::from_utf8_lossy(&heard).into_owned()),
    )
}

/// A request whose declared body never comes holds its connection no
/// longer than the header timeout, and activates nothing.
#[tokio::test]
async fn a_declared_body_that_never_comes_is_cut_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let running = stack("").await;
    let admin = running.admin_addr();
    let opened = std::time::Instant::now();
    let mut waiting = connect(admin).await;
    waiting
        .write_all(b"POST /faults/fire HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = get(admin, "/healthz").await;
    assert_eq!(status, StatusCode::OK, "others are served meanwhile");
    let limit = firedrill::admin::HEADER_TIMEOUT + STEP;
    let ended = read_until_closed(&mut waiting, limit).await;
    let answer = match ended {
        Some(Ok(answer)) => answer,
        Some(Err(_)) => String::new(),
        None => panic!("still open after {limit:?}"),
    };
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    // Lower bound only: not before the timeout.
    assert!(opened.elapsed() >= firedrill::admin::HEADER_TIMEOUT - Duration::from_millis(100));
    let faults = admin_call(admin, Method::GET, "/faults", None).await;
    assert_eq!(
        faults.json["active"],
        serde_json::json!([]),
        "{}",
        faults.json
    );
}

/// A body declared over the 2 MB limit is refused before any of it comes.
#[tokio::test]
async fn a_declared_body_over_the_limit_is_answered_413_at_once() {
    use tokio::io::AsyncWriteExt;
    let running = stack(TOKENS).await;
    let admin = running.admin_addr();
    // One byte over 2 MB.
    let too_long = 2 * 1024 * 1024 + 1;
    for token in [Some(LEAD), None] {
        let mut stream = connect(admin).await;
        let authorization =
            token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "POST /faults/fire HTTP/1.1\r\nHost: x\r\n{authorization}Content-Length: {too_long}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // Well within the header timeout, which a body that never comes gets.
        let answer = read_until_closed(&mut stream, firedrill::admin::HEADER_TIMEOUT / 2).await;
        let answer = answer.expect("answered and closed at once").expect("read");
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("\"error\""), "{answer}");
    }
}

/// With two `Authorization` headers, neither decides: 400.
#[tokio::test]
async fn two_authorization_headers_are_refused_whichever_comes_first() {
    let running = stack(TOKENS).await;
    let url = format!("http://{}/faults/fire", running.admin_addr());
    let lead = format!("Bearer {LEAD}");
    for pair in [
        [lead.as_str(), "Bearer wrong-0a1b"],
        ["Bearer wrong-0a1b", lead.as_str()],
    ] {
        let mut request = Request::builder().method(Method::POST).uri(&url);
        for value in pair {
            request = request.header("authorization", value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let response = within(STEP, client().request(request)).await.unwrap();
        let status = response.status();
        let body = within(STEP, response.into_body().collect()).await.unwrap();
        let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{pair:?}: {text}");
        assert!(text.contains("Authorization headers"), "{text}");
    }
    let faults = admin_call(running.admin_addr(), Method::GET, "/faults", Some(LEAD)).await;
    assert_eq!(
        faults.json["active"],
        serde_json::json!([]),
        "{}",
        faults.json
    );
}

/// A flood of wrong tokens from one address: the warning is logged a few
/// times, not once per request; after a burst the address is answered 429
/// with `Retry-After`; and a valid token is served meanwhile as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_tokens_is_slowed_and_logged_briefly_while_a_valid_token_gets_in() {
    let dir = TempDir::new("admin-flood");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan(TOKENS, http_upstream("web").await).toml()).unwrap();
    let firedrill = Binary::run(&path, &[]);
    let url = format!("http://{}/faults", firedrill.admin);
    let client = client();
    let wrong = "Bearer wrong-77c2e1";
    let lead = format!("Bearer {LEAD}");
    const FLOOD: usize = 1000;
    let mut statuses = std::collections::HashMap::<StatusCode, usize>::new();
    let mut retry_after = None;
    for i in 0..FLOOD {
        let answer = call(&client, Method::GET, &url, Some(wrong), "")
            .await
            .unwrap();
        *statuses.entry(answer.status).or_default() += 1;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = answer.headers.get("retry-after").cloned();
        }
        if i == FLOOD / 2 {
            // In the middle of the flood, from the same address.
            let valid = call(&client, Method::GET, &url, Some(&lead), "")
                .await
                .unwrap();
            assert_eq!(valid.status, StatusCode::OK, "{}", valid.json);
            let activated = call(
                &client,
                Method::POST,
                &format!("{url}/fire"),
                Some(&lead),
                "",
            )
            .await
            .unwrap();
            assert_eq!(activated.status, StatusCode::CREATED, "{}", activated.json);
        }
    }
    let throttled = statuses
        .get(&StatusCode::TOO_MANY_REQUESTS)
        .copied()
        .unwrap_or(0);
    assert!(throttled > FLOOD / 2, "{statuses:?}");
    let seconds: u64 = retry_after
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(seconds >= 1, "{seconds}");
    // Every answer so far is in the log's lines or in its next count.
    let log = firedrill.log();
    let warnings = log.lines().filter(|l| l.contains("unknown token")).count();
    assert!((1..=10).contains(&warnings), "{warnings} warnings:\n{log}");
    assert!(!log.contains("wrong-77c2e1"), "{log}");
}
