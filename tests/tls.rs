//! TLS on the data path against real servers on loopback, with a CA and
//! certificates made at test time: TLS listeners (h1 and h2 by ALPN),
//! https upstreams verified with `upstream_ca` or deliberately not, faults
//! on TLS connections, TLS passed through a tcp service, and the plan
//! errors `check` reports for TLS settings.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use firedrill::Running;
use support::*;

/// How long a request must go unanswered to count as held by a blackhole.
const HOLD: Duration = Duration::from_millis(300);

// --- Certificates -------------------------------------------------------------

/// A test CA in a scratch folder, issuing server certificates on request.
struct Pki {
    dir: TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = TempDir::new("firedrill-tls");
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "firedrill test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Issues a certificate for `names` (DNS names or IP addresses) and
    /// writes `FILE.pem` and `FILE.key`; returns their paths.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca)
            .unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A certificate nobody's CA signed, for `names`.
    fn self_signed(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_file = self.dir.path().join(format!("{file}.pem"));
        let key_file = self.dir.path().join(format!("{file}.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }

    /// A client trusting only this CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// `tls = { cert = '...', key = '...' }` for a plan.
fn tls_line((cert, key): &(PathBuf, PathBuf)) -> String {
    format!(
        "tls = {{ cert = '{}', key = '{}' }}",
        cert.display(),
        key.display()
    )
}

/// A server configuration from PEM files, offering `alpn`.
fn server(files: &(PathBuf, PathBuf), alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    firedrill::tls::server_config(&files.0, &files.1, alpn, None).expect("test certificate loads")
}

// --- Clients --------------------------------------------------------------------

/// A TLS connection to `addr`, verifying `name`.
async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let stream = connect(addr).await;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    within(STEP, TlsConnector::from(config).connect(name, stream)).await
}

/// The ALPN protocol a TLS client connection negotiated.
fn negotiated(stream: &TlsStream<TcpStream>) -> Option<String> {
    let protocol = stream.get_ref().1.alpn_protocol()?;
    Some(String::from_utf8_lossy(protocol).into_owned())
}

/// Sends GET `path` over an HTTP/1.1 connection on `io`; `Err` when the
/// connection ends without an answer.
async fn get_h1<S>(io: S, path: &str) -> Result<(StatusCode, String), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = within(
        STEP,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await?;
    collect(response).await
}

/// Sends GET `path` over an h2 connection on `io`.
async fn get_h2<S>(io: S, path: &str) -> Result<(StatusCode, String), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let handshake = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io));
    let (mut sender, connection) = within(STEP, handshake).await?;
    tokio::spawn(connection);
    let request = Request::get(format!("https://localhost{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await?;
    collect(response).await
}

async fn collect(
    response: http::Response<hyper::body::Incoming>,
) -> Result<(StatusCode, String), hyper::Error> {
    let status = response.status();
    let body = within(STEP, response.into_body().collect())
        .await?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A TLS echo server on loopback: the upstream of a tcp service.
async fn tls_echo_upstream(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(STEP, acceptor.accept(stream)).await
                else {
                    return;
                };
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Writes `data` over TLS and reads back as many bytes, within `limit`.
async fn tls_echo<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    data: &[u8],
    limit: Duration,
) -> Option<std::io::Result<Vec<u8>>> {
    let round_trip = async {
        stream.write_all(data).await?;
        stream.flush().await?;
        let mut back = vec![0u8; data.len()];
        stream.read_exact(&mut back).await?;
        Ok(back)
    };
    tokio::time::timeout(limit, round_trip).await.ok()
}

fn labels<'a>(service: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 2] {
    [("service", service), ("outcome", outcome)]
}

/// A firedrill with one http service `name` terminating TLS with a
/// certificate for localhost and 127.0.0.1, in front of a plain upstream,
/// plus the given fault scenarios on it.
async fn tls_listener(pki: &Pki, name: &str, faults: &[(&str, &str)]) -> Running {
    tls_listener_on(pki, name, faults, firedrill::Workers::current()).await
}

/// [`tls_listener`] with its client connections on `workers`.
async fn tls_listener_on(
    pki: &Pki,
    name: &str,
    faults: &[(&str, &str)],
    workers: firedrill::Workers,
) -> Running {
    let upstream = http_upstream("plain-upstream").await;
    let files = pki.issue("listener", &["localhost", "127.0.0.1"]);
    PlanText::new(&["pangyo"])
        .service(name, "pangyo", "http", upstream, &tls_line(&files))
        .faults(name, faults)
        .start_on(workers)
        .await
}

// --- Terminating TLS ------------------------------------------------------------

#[tokio::test]
async fn an_https_client_gets_http1_or_h2_by_alpn_through_a_tls_listener() {
    let pki = Pki::new();
    let talk = unique("talk");
    // On worker threads, as the binary serves: the handshake, h2's stream
    // tasks and the upstream connections all run there.
    let workers = firedrill::Workers::spawn(2).unwrap();
    let running = tls_listener_on(&pki, &talk, &[], workers).await;
    let proxy = addr(&running, &talk);

    let stream = tls_connect(proxy, pki.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("TLS handshake with the listener");
    assert_eq!(negotiated(&stream).as_deref(), Some("http/1.1"));
    let (status, body) = get_h1(stream, "/headers").await.expect("answered");
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("x-forwarded-proto: https\n"),
        "the upstream learns the client came over TLS: {body}"
    );

    let stream = tls_connect(proxy, pki.client(&[b"h2", b"http/1.1"]), "127.0.0.1")
        .await
        .expect("TLS handshake with the listener, by IP");
    assert_eq!(negotiated(&stream).as_deref(), Some("h2"));
    let (status, body) = get_h2(stream, "/hello").await.expect("answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "plain-upstream answered GET /hello\n");

    let text = metrics(&running).await;
    assert_eq!(
        sample(
            &text,
            "firedrill_connections_total",
            &labels(&talk, "accepted")
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "firedrill_requests_total",
            &labels(&talk, "forwarded")
        ),
        2.0
    );
}

#[tokio::test]
async fn a_silent_client_on_a_tls_listener_does_not_stop_others_being_served() {
    let pki = Pki::new();
    let talk = unique("talk");
    let running = tls_listener(&pki, &talk, &[]).await;
    let proxy = addr(&running, &talk);

    // Connects and never says a word: its handshake waits in its own task.
    let _silent = connect(proxy).await;
    let stream = tls_connect(proxy, pki.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("TLS handshake beside a silent client");
    let (status, _) = get_h1(stream, "/").await.expect("answered");
    assert_eq!(status, StatusCode::OK);

    // A client that speaks something else than TLS is counted and closed.
    let mut garbage = connect(proxy).await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut garbage, STEP).await;
    assert!(closed.is_some(), "a failed handshake closes the connection");
    wait_for_sample(
        &running,
        "firedrill_connections_total",
        &labels(&talk, "tls_error"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn a_tls_listener_over_its_cap_resets_instead_of_answering_in_plain_text() {
    let pki = Pki::new();
    let talk = unique("capped");
    let upstream = http_upstream("plain-upstream").await;
    let files = pki.issue("listener", &["localhost", "127.0.0.1"]);
    let lines = format!("{}; max_connections = 1", tls_line(&files));
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, &lines)
        .start()
        .await;
    let proxy = addr(&running, &talk);
    let first = tls_connect(proxy, pki.client(&[b"http/1.1"]), "localhost")
        .await
        .expect("the first client fits");
    let mut second = connect(proxy).await;
    let mut heard = Vec::new();
    let read = within(STEP, second.read_to_end(&mut heard)).await;
    // Reset (or closed) with no plain-text 503 a TLS client could not read.
    assert!(
        read.is_err() || heard.is_empty(),
        "refused without an answer: {read:?} {:?}",
        String::from_utf8_lossy(&heard)
    );
    wait_for_sample(
        &running,
        "firedrill_connections_total",
        &labels(&talk, "refused"),
        1.0,
    )
    .await;
    let (status, _) = get_h1(first, "/")
        .await
        .expect("the first client is served");
    assert_eq!(status, StatusCode::OK);
}

/// Sixty connections that never start a handshake, against a cap of 50:
/// handshakes under way are bounded apart (a quarter of the cap), so they
/// hold 12 places; connected clients keep being served; and a new client
/// gets in once the oldest silent one has waited a second, by taking its
/// place, instead of being locked out for the 10 s handshake limit.
#[tokio::test]
async fn connections_that_never_start_a_handshake_cannot_lock_out_tls_clients() {
    let pki = Pki::new();
    let talk = unique("crowded");
    let upstream = http_upstream("plain-upstream").await;
    let files = pki.issue("listener", &["localhost", "127.0.0.1"]);
    let lines = format!("{}; max_connections = 50", tls_line(&files));
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, &lines)
        .start()
        .await;
    let proxy = addr(&running, &talk);
    let client = pki.client(&[b"http/1.1"]);
    let mut established = Vec::new();
    for _ in 0..20 {
        let stream = tls_connect(proxy, Arc::clone(&client), "localhost").await;
        established.push(stream.expect("a client before the crowd"));
    }
    let accepted = labels(&talk, "accepted");
    wait_for_sample(&running, "firedrill_connections_total", &accepted, 20.0).await;

    let mut silent = Vec::new();
    for _ in 0..60 {
        // Those over the bound may be reset before connect returns.
        if let Ok(stream) = within(STEP, TcpStream::connect(proxy)).await {
            silent.push(stream);
        }
    }
    let refused = labels(&talk, "refused");
    wait_for_sample(&running, "firedrill_connections_total", &refused, 48.0).await;
    let active = [("service", talk.as_str())];
    wait_for_sample(&running, "firedrill_connections_active", &active, 32.0).await;

    let crowded = std::time::Instant::now();
    let status = loop {
        if let Ok(stream) = tls_connect(proxy, Arc::clone(&client), "localhost").await {
            if let Ok((status, _)) = get_h1(stream, "/").await {
                break status;
            }
        }
        // The usual handshake limit is 10 s; a newcomer waits far less.
        assert!(
            crowded.elapsed() < Duration::from_secs(5),
            "locked out by connections that never started a handshake"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, StatusCode::OK);
    let oldest = closed_within(&mut silent[0], STEP).await;
    assert!(oldest.is_some(), "the oldest silent connection made room");
    for stream in established {
        let (status, _) = get_h1(stream, "/").await.expect("still served");
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn faults_apply_to_requests_on_a_tls_listener() {
    let pki = Pki::new();
    let talk = unique("talk");
    let running = tls_listener(
        &pki,
        &talk,
        &[
            ("outage", "action = 'error'; status = 503; body = 'gone'"),
            ("cut", "action = 'drop'"),
            ("dark", "action = 'blackhole'"),
        ],
    )
    .await;
    let proxy = addr(&running, &talk);
    let client = || pki.client(&[b"http/1.1"]);

    activate(&running, "outage").await;
    let stream = tls_connect(proxy, client(), "localhost").await.unwrap();
    let (status, body) = get_h1(stream, "/").await.expect("answered");
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "gone")
    );
    lift(&running, "outage").await;

    activate(&running, "cut").await;
    let stream = tls_connect(proxy, client(), "localhost").await.unwrap();
    let dropped = get_h1(stream, "/").await;
    assert!(
        dropped.is_err(),
        "a dropped request gets no answer: {dropped:?}"
    );
    lift(&running, "cut").await;

    activate(&running, "dark").await;
    let stream = tls_connect(proxy, client(), "localhost").await.unwrap();
    let held = tokio::time::timeout(HOLD, get_h1(stream, "/")).await;
    assert!(
        held.is_err(),
        "a blackholed request is not answered: {held:?}"
    );
    lift(&running, "dark").await;

    let stream = tls_connect(proxy, client(), "localhost").await.unwrap();
    let (status, _) = get_h1(stream, "/").await.expect("answered once lifted");
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn curl_fetches_over_h2_through_a_tls_listener_trusting_the_test_ca() {
    if !programs_present(&["curl"], "apt-get install curl") {
        return;
    }
    let pki = Pki::new();
    let talk = unique("talk");
    let running = tls_listener(&pki, &talk, &[]).await;
    let port = addr(&running, &talk).port();
    let ca = pki.ca_file();
    let ran = tokio::task::spawn_blocking(move || {
        run_captured(
            Command::new("curl")
                .arg("--silent")
                .arg("--show-error")
                .arg("--http2")
                .arg("--cacert")
                .arg(&ca)
                .arg("--resolve")
                .arg(format!("localhost:{port}:127.0.0.1"))
                .arg("--write-out")
                .arg("|%{http_version}")
                .arg(format!("https://localhost:{port}/hello")),
            STEP,
        )
    })
    .await
    .unwrap();
    assert!(ran.succeeded(), "curl failed: {ran:?}");
    assert_eq!(ran.stdout, "plain-upstream answered GET /hello\n|2");
}

// --- Originating TLS ------------------------------------------------------------

/// A plain client (HTTP/1.1 and h2c) through firedrill to an https upstream.
async fn through_to_https(running: &Running, service: &str) -> [(StatusCode, String); 2] {
    let proxy = addr(running, service);
    let h1 = get_h1(connect(proxy).await, "/hello")
        .await
        .expect("h1 answered");
    let h2 = get_h2(connect(proxy).await, "/hello")
        .await
        .expect("h2c answered");
    [h1, h2]
}

#[tokio::test]
async fn a_plain_client_reaches_an_https_upstream_verified_with_upstream_ca() {
    let pki = Pki::new();
    let files = pki.issue("upstream", &["127.0.0.1", "api.internal"]);
    let upstream = https_upstream("secure-upstream", server(&files, &[b"http/1.1"])).await;
    let (by_ip, by_name) = (unique("by-ip"), unique("by-name"));
    let ca = format!("upstream_ca = '{}'", pki.ca_file().display());
    let running = PlanText::new(&["pangyo"])
        .service_to(
            &by_ip,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            &ca,
        )
        .service_to(
            &by_name,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            &format!("{ca}; upstream_server_name = 'api.internal'"),
        )
        .start()
        .await;

    for service in [&by_ip, &by_name] {
        for (status, body) in through_to_https(&running, service).await {
            assert_eq!(status, StatusCode::OK, "{service}: {body}");
            assert_eq!(body, "secure-upstream answered GET /hello\n");
        }
    }
}

#[tokio::test]
async fn an_upstream_certificate_for_another_name_answers_502_naming_the_reason() {
    let pki = Pki::new();
    let files = pki.issue("elsewhere", &["elsewhere.example"]);
    let upstream = https_upstream("wrong-upstream", server(&files, &[b"http/1.1"])).await;
    let pay = unique("pay");
    let running = PlanText::new(&["pangyo"])
        .service_to(
            &pay,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            &format!("upstream_ca = '{}'", pki.ca_file().display()),
        )
        .start()
        .await;

    for (status, body) in through_to_https(&running, &pay).await {
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(
            body.starts_with(&format!(
                "firedrill: service `{pay}` (pangyo): upstream https://{upstream} failed the TLS handshake: "
            )),
            "{body}"
        );
        assert!(body.contains("certificate not valid for name"), "{body}");
    }
    let text = metrics(&running).await;
    assert_eq!(
        sample(
            &text,
            "firedrill_requests_total",
            &labels(&pay, "upstream_error")
        ),
        2.0
    );
}

#[tokio::test]
async fn an_https_upstream_that_never_finishes_its_handshake_answers_504_after_connect_timeout() {
    // Connections complete in the kernel's queue; nobody ever answers the
    // TLS hello.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = silent.local_addr().unwrap();
    let vault = unique("vault");
    let running = PlanText::new(&["pangyo"])
        .service_to(
            &vault,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            "upstream_skip_verify = true; connect_timeout = '300ms'",
        )
        .start()
        .await;

    // HTTP/1.1 through the client's own connection, h2c through the pool.
    let started = tokio::time::Instant::now();
    for (status, body) in through_to_https(&running, &vault).await {
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert!(
            body.contains("did not accept a connection within 300ms"),
            "{body}"
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    drop(silent);
}

#[tokio::test]
async fn upstream_skip_verify_connects_to_an_upstream_nobody_vouches_for() {
    let pki = Pki::new();
    let files = pki.self_signed("stranger", &["stranger.example"]);
    let upstream = https_upstream("stranger-upstream", server(&files, &[b"http/1.1"])).await;
    let (trusting, careful) = (unique("trusting"), unique("careful"));
    let running = PlanText::new(&["pangyo"])
        .service_to(
            &trusting,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            "upstream_skip_verify = true",
        )
        .service_to(
            &careful,
            "pangyo",
            "http",
            &format!("https://{upstream}"),
            &format!("upstream_ca = '{}'", pki.ca_file().display()),
        )
        .start()
        .await;

    for (status, body) in through_to_https(&running, &trusting).await {
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, "stranger-upstream answered GET /hello\n");
    }
    for (status, body) in through_to_https(&running, &careful).await {
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains("TLS handshake"), "{body}");
    }
    let (_, topology) = admin(&running, Method::GET, "/topology", "").await;
    let services = topology["datacenters"][0]["services"].as_array().unwrap();
    let skips = |name: &str| {
        let service = services.iter().find(|s| s["name"] == name).unwrap();
        service["upstream_skip_verify"].clone()
    };
    assert_eq!(skips(&trusting), true);
    assert_eq!(skips(&careful), false);
}

// --- TLS through a tcp service --------------------------------------------------

#[tokio::test]
async fn a_tcp_service_passes_tls_through_and_its_faults_still_cut_it() {
    let pki = Pki::new();
    let files = pki.issue("vault", &["vault.internal"]);
    let upstream = tls_echo_upstream(server(&files, &[])).await;
    let vault = unique("vault");
    let running = PlanText::new(&["pangyo"])
        .tcp(&vault, "pangyo", upstream)
        .fault("dark", &vault, "action = 'blackhole'")
        .fault("cut", &vault, "action = 'drop'")
        .start()
        .await;
    let proxy = addr(&running, &vault);
    let client = || pki.client(&[]);

    // The client's handshake reaches the upstream: its certificate verifies
    // for the upstream's name, not firedrill's.
    let mut stream = tls_connect(proxy, client(), "vault.internal")
        .await
        .expect("TLS handshake with the upstream through firedrill");
    let back = tls_echo(&mut stream, b"secret", STEP).await;
    assert_eq!(back.expect("in time").expect("echoed"), b"secret");

    activate(&running, "dark").await;
    let held = tls_echo(&mut stream, b"anyone?", HOLD).await;
    assert!(
        held.is_none(),
        "a blackhole freezes the open TLS connection: {held:?}"
    );
    lift(&running, "dark").await;

    let mut stream = tls_connect(proxy, client(), "vault.internal")
        .await
        .expect("a new TLS connection once the blackhole is lifted");
    let back = tls_echo(&mut stream, b"again", STEP).await;
    assert_eq!(back.expect("in time").expect("echoed"), b"again");
    activate(&running, "cut").await;
    let mut buf = [0u8; 16];
    let cut = within(STEP, stream.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(0) | Err(_)),
        "a drop cuts the open TLS connection: {cut:?}"
    );
}

// --- Plan errors ----------------------------------------------------------------

/// The plan errors of `text`, as `check` prints them.
fn plan_errors(text: &str, file: &Path) -> String {
    match firedrill::config::parse(text, &file.display().to_string()) {
        Ok(_) => panic!("the plan should not load:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn check_reports_a_missing_certificate_file_at_the_tls_line() {
    let pki = Pki::new();
    let plan_file = pki.dir.path().join("plan.toml");
    let text = "[datacenters.pangyo]\n\
                [services.talk]\n\
                datacenter = 'pangyo'\n\
                protocol = 'http'\n\
                listen = '127.0.0.1:0'\n\
                upstream = '127.0.0.1:9001'\n\
                tls = { cert = 'missing.pem', key = 'missing.key' }\n";
    let errors = plan_errors(text, &plan_file);
    let missing = pki.dir.path().join("missing.pem");
    assert!(
        errors.starts_with(&format!(
            "{}:7:7: service `talk`: cannot read certificate file {}: ",
            plan_file.display(),
            missing.display()
        )),
        "{errors}"
    );
    assert!(errors.ends_with("1 error in plan"), "{errors}");
}

#[test]
fn check_reports_a_certificate_and_key_that_do_not_match() {
    let pki = Pki::new();
    let (cert, _) = pki.issue("one", &["localhost"]);
    let (_, key) = pki.issue("two", &["localhost"]);
    let plan_file = pki.dir.path().join("plan.toml");
    let text = format!(
        "[datacenters.pangyo]\n\
         [services.talk]\n\
         datacenter = 'pangyo'\n\
         protocol = 'http'\n\
         listen = '127.0.0.1:0'\n\
         upstream = '127.0.0.1:9001'\n\
         {}\n",
        tls_line(&(PathBuf::from("one.pem"), PathBuf::from("two.key")))
    );
    let errors = plan_errors(&text, &plan_file);
    assert!(
        errors.starts_with(&format!(
            "{}:7:7: service `talk`: certificate {} and key {} do not form a usable pair",
            plan_file.display(),
            cert.display(),
            key.display()
        )),
        "{errors}"
    );
}

#[test]
fn check_refuses_tls_settings_where_they_make_no_sense() {
    let dir = TempDir::new("firedrill-tls-plan");
    let plan_file = dir.path().join("plan.toml");
    let text = "[datacenters.pangyo]\n\
                [services.cache]\n\
                datacenter = 'pangyo'\n\
                protocol = 'tcp'\n\
                listen = '127.0.0.1:0'\n\
                upstream = '127.0.0.1:6379'\n\
                tls = { cert = 'a.pem', key = 'a.key' }\n\
                [services.talk]\n\
                datacenter = 'pangyo'\n\
                protocol = 'http'\n\
                listen = '127.0.0.1:0'\n\
                upstream = 'http://127.0.0.1:9001'\n\
                upstream_skip_verify = true\n\
                [services.vault]\n\
                datacenter = 'pangyo'\n\
                protocol = 'tcp'\n\
                listen = '127.0.0.1:0'\n\
                upstream = 'https://127.0.0.1:8200'\n";
    let errors = plan_errors(text, &plan_file);
    let file = plan_file.display();
    for expected in [
        format!(
            "{file}:7:7: service `cache` is tcp, and a tcp service passes TLS through untouched; \
             remove `tls` and terminate TLS at the upstream"
        ),
        format!(
            "{file}:13:24: service `talk` sets `upstream_skip_verify`, which only applies to an \
             https upstream; write `upstream = \"https://127.0.0.1:9001\"` or remove `upstream_skip_verify`"
        ),
        format!(
            "{file}:18:12: service `vault` is tcp, so it passes TLS through untouched: \
             write the upstream as plain `host:port` and terminate TLS there"
        ),
    ] {
        assert!(errors.contains(&expected), "missing {expected:?} in:\n{errors}");
    }
    assert!(errors.ends_with("3 errors in plan"), "{errors}");
}

/// Turning certificate checks back on is not "the same service": a reload
/// replaces it, so no open client keeps reaching the upstream unchecked.
#[tokio::test]
async fn a_reload_that_checks_the_upstream_again_replaces_the_service() {
    let pki = Pki::new();
    let files = pki.self_signed("stranger", &["stranger.example"]);
    let upstream = https_upstream("stranger-upstream", server(&files, &[b"http/1.1"])).await;
    let name = unique("rechecked");
    let plan = |line: &str| {
        PlanText::new(&["pangyo"])
            .service_to(
                &name,
                "pangyo",
                "http",
                &format!("https://{upstream}"),
                line,
            )
            .toml()
            .to_owned()
    };
    let dir = TempDir::new("recheck");
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan("upstream_skip_verify = true")).unwrap();
    let loaded = firedrill::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let running = firedrill::start_reloadable(loaded, path.clone())
        .await
        .unwrap();
    let (status, body) = through_to_https(&running, &name).await[0].clone();
    assert_eq!(status, StatusCode::OK, "{body}");

    std::fs::write(&path, plan("upstream_skip_verify = false")).unwrap();
    let (status, answer) = admin(&running, Method::POST, "/reload", "").await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        answer["reloaded"]["changed"],
        serde_json::json!([name]),
        "{answer}"
    );
    let (status, body) = through_to_https(&running, &name).await[0].clone();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "checked again: {body}");
}

#[tokio::test]
async fn the_probe_does_the_tls_handshake_with_the_services_trust() {
    let pki = Pki::new();
    let good = pki.issue("probed", &["127.0.0.1"]);
    let wrong = pki.issue("probed-elsewhere", &["elsewhere.example"]);
    let good = https_upstream("probed", server(&good, &[b"http/1.1"])).await;
    let wrong = https_upstream("probed-elsewhere", server(&wrong, &[b"http/1.1"])).await;
    let ca = format!("upstream_ca = '{}'", pki.ca_file().display());
    let plan = PlanText::new(&["pangyo"])
        .service_to("good", "pangyo", "http", &format!("https://{good}"), &ca)
        .service_to("wrong", "pangyo", "http", &format!("https://{wrong}"), &ca);
    let plan =
        firedrill::config::parse(plan.toml(), "probe.toml").unwrap_or_else(|e| panic!("{e}"));

    let probes = within(STEP, firedrill::probe::probe_all(&plan.topology)).await;
    assert_eq!(
        probes[0].result,
        Ok("reachable, HEAD / answered 200 OK".to_owned())
    );
    let failed = probes[1].result.as_ref().unwrap_err();
    assert!(
        failed.starts_with("TLS handshake failed: ")
            && failed.contains("certificate not valid for name"),
        "{failed}"
    );
}
