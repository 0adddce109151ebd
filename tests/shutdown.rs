//! Graceful shutdown: stop accepting, let in-flight work finish within the
//! grace period, then cut what is left.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::*;

fn plan(http_upstream: std::net::SocketAddr, echo: std::net::SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[datacenters.pangyo]
[services.web]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "{http_upstream}"
[services.cache]
datacenter = "pangyo"
protocol = "tcp"
listen = "127.0.0.1:0"
upstream = "{echo}"
"#
    )
}

#[tokio::test]
async fn an_in_flight_request_finishes_during_shutdown_and_new_connections_are_refused() {
    let running = start(&plan(http_upstream("web").await, echo_upstream().await)).await;
    let web = running.service_addr("web").unwrap();
    let slow = tokio::spawn(async move { get(web, "/sleep/600").await });
    // Let the request reach the upstream before shutdown starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let refused = within(STEP, TcpStream::connect(web)).await;
    assert!(
        refused.is_err(),
        "the listener still accepts during shutdown"
    );

    let (status, body) = within(STEP, slow).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "web slept 600ms\n");
    let cut = within(STEP, shutdown).await.unwrap();
    assert_eq!(cut, 0, "nothing had to be cut");
}

#[tokio::test]
async fn open_tcp_connections_keep_working_until_the_drain_deadline_then_close() {
    let running = start(&plan(http_upstream("web").await, echo_upstream().await)).await;
    let cache = running.service_addr("cache").unwrap();
    let mut stream = within(STEP, TcpStream::connect(cache)).await.unwrap();
    assert_eq!(
        echo_round_trip(&mut stream, b"before").await.unwrap(),
        b"before"
    );

    let started = Instant::now();
    let grace = Duration::from_millis(800);
    let shutdown = tokio::spawn(running.shutdown(grace));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = within(STEP, echo_round_trip(&mut stream, b"during")).await;
    assert_eq!(
        during.unwrap(),
        b"during",
        "open connections work while draining"
    );

    let cut = within(STEP, shutdown).await.unwrap();
    assert!(
        started.elapsed() >= grace,
        "the deadline was not waited for"
    );
    assert!(cut >= 1, "the open connection was not counted as cut");
    let end = closed_within(&mut stream, STEP).await;
    assert!(
        matches!(end, Some(Ok(0)) | Some(Err(_))),
        "the connection is closed after the deadline, got {end:?}"
    );
}

#[tokio::test]
async fn faults_can_still_be_lifted_while_connections_drain() {
    let plan = format!(
        "{}\n[scenarios.slow]\n[[scenarios.slow.faults]]\nservice = \"web\"\naction = \"delay\"\nlatency = \"60s\"\n",
        plan(http_upstream("web").await, echo_upstream().await)
    );
    let running = start(&plan).await;
    let web = running.service_addr("web").unwrap();
    let admin_addr = running.admin_addr();
    let (status, _) = admin(&running, http::Method::POST, "/faults/slow", "").await;
    assert_eq!(status, StatusCode::CREATED);
    let delayed = tokio::spawn(async move { get(web, "/after-the-delay").await });
    let injected = [("scenario", "slow"), ("action", "delay")];
    wait_for_sample(&running, "firedrill_faults_injected_total", &injected, 1.0).await;

    // A drain that would wait 60 s for the delayed request...
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(60)));
    let refused = within(STEP, async {
        while TcpStream::connect(web).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    refused.await;
    // ...ends early once the fault is lifted through the still-running API.
    let url = format!("http://{admin_addr}/faults");
    let (status, _) = send(&client(), http::Method::DELETE, &url, "")
        .await
        .expect("the admin API answers while draining");
    assert_eq!(status, StatusCode::OK);
    let (status, body) = within(STEP, delayed).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "web answered GET /after-the-delay\n");
    let cut = within(STEP, shutdown).await.unwrap();
    assert_eq!(cut, 0);
}

/// The real binary under SIGTERM while a blackout holds an http request
/// and a tcp connection, and an ordinary request is under way upstream.
#[tokio::test]
async fn sigterm_closes_what_a_blackhole_holds_at_once_and_exits_once_the_rest_drained() {
    let (web, mut arrived) = announcing_upstream().await;
    let scratch = TempDir::new("shutdown-blackout");
    let path = scratch.path().join("plan.toml");
    let plan = format!(
        "{}\n[scenarios.fire]\n\
         [[scenarios.fire.faults]]\nservice = \"cache\"\naction = \"blackhole\"\n\
         [[scenarios.fire.faults]]\nservice = \"web\"\naction = \"blackhole\"\npath_prefix = \"/held\"\n",
        plan(web, echo_upstream().await)
    );
    std::fs::write(&path, plan).unwrap();
    let grace = Duration::from_secs(10);
    let mut firedrill = Binary::run(&path, &["--grace", "10s"]);
    let (status, _) = firedrill
        .admin(http::Method::POST, "/faults/fire", "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED);

    let mut held_tcp = connect(firedrill.service("cache")).await;
    let mut held_http = connect(firedrill.service("web")).await;
    held_http
        .write_all(b"GET /held HTTP/1.1\r\nhost: web\r\n\r\n")
        .await
        .unwrap();
    // Both are held once each has counted its blackhole.
    let held =
        poll_binary_sample(&firedrill, "firedrill_faults_injected_total", |v| v >= 2.0).await;
    assert_eq!(held, 2.0, "the blackhole holds both connections");
    let slow = tokio::spawn(get(firedrill.service("web"), "/sleep/1500"));
    within(STEP, arrived.recv())
        .await
        .expect("the slow request reaches the upstream");

    let signalled = Instant::now();
    firedrill.process.signal("TERM");
    // Well before the grace period: a blackhole's connections can never finish.
    let prompt = Duration::from_secs(3);
    for (what, stream) in [("http", &mut held_http), ("tcp", &mut held_tcp)] {
        let end = closed_within(stream, prompt).await;
        assert!(
            matches!(end, Some(Ok(0)) | Some(Err(_))),
            "the held {what} connection is closed at once on SIGTERM, got {end:?} after {:?}",
            signalled.elapsed()
        );
    }
    let (status, body) = within(STEP, slow).await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight finishes");
    assert_eq!(body, "web slept 1500ms\n");
    let exited = firedrill.process.wait_within(grace + STEP);
    let took = signalled.elapsed();
    assert!(
        exited.is_some_and(|s| s.success()),
        "exit {exited:?}:\n{}",
        firedrill.log()
    );
    eprintln!("exited {took:?} after SIGTERM (grace {grace:?})");
    assert!(
        took < grace,
        "nothing needed the grace period, yet exiting took {took:?}:\n{}",
        firedrill.log()
    );
}

/// Past the grace period the binary exits within a small margin, even with
/// a request still waiting on its upstream.
#[tokio::test]
async fn sigterm_exits_within_the_grace_period_and_a_small_margin() {
    let (web, mut arrived) = announcing_upstream().await;
    let scratch = TempDir::new("shutdown-deadline");
    let path = scratch.path().join("plan.toml");
    std::fs::write(&path, plan(web, echo_upstream().await)).unwrap();
    let grace = Duration::from_secs(1);
    let mut firedrill = Binary::run(&path, &["--grace", "1s"]);
    let web = firedrill.service("web");
    let stuck = tokio::spawn(async move {
        let mut stream = connect(web).await;
        stream
            .write_all(b"GET /sleep/60000 HTTP/1.1\r\nhost: web\r\n\r\n")
            .await
            .unwrap();
        closed_within(&mut stream, 2 * STEP).await
    });
    within(STEP, arrived.recv())
        .await
        .expect("the request reaches the upstream");

    let signalled = Instant::now();
    firedrill.process.signal("TERM");
    let exited = firedrill.process.wait_within(grace + STEP);
    let took = signalled.elapsed();
    eprintln!("exited {took:?} after SIGTERM (grace {grace:?})");
    assert!(
        exited.is_some_and(|s| s.success()),
        "exit {exited:?}:\n{}",
        firedrill.log()
    );
    assert!(
        took >= grace,
        "the in-flight request was not given its grace"
    );
    let margin = Duration::from_millis(1500);
    assert!(
        took <= grace + margin,
        "exiting took {took:?}, more than the grace period and {margin:?}:\n{}",
        firedrill.log()
    );
    let end = within(2 * STEP, stuck).await.unwrap();
    assert!(
        matches!(end, Some(Ok(0)) | Some(Err(_))),
        "the stuck request's connection is closed, got {end:?}"
    );
}

/// An http upstream that says when each request arrives; `/sleep/MS`
/// answers after MS milliseconds.
async fn announcing_upstream() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (arrived, arrivals) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let _ = arrived.send(());
                        async move {
                            let ms = request.uri().path().trim_start_matches("/sleep/");
                            let ms: u64 = ms.parse().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            let body = format!("web slept {ms}ms\n");
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, arrivals)
}

/// Polls the binary's `/metrics` until the sum of `name` makes `done` true,
/// for at most [`STEP`]; returns the last value read.
async fn poll_binary_sample(firedrill: &Binary, name: &str, done: impl Fn(f64) -> bool) -> f64 {
    let mut last = f64::NAN;
    let _ = tokio::time::timeout(STEP, async {
        loop {
            let (_, text) = get(firedrill.admin, "/metrics").await;
            last = sample(&text, name, &[]);
            if done(last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    last
}
