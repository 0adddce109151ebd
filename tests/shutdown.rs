//! Graceful shutdown: stop accepting, let in-flight work finish within the
//! grace period, then cut what is left.

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
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
        "{}\n[scenarios.fire]\n[[scenarios.fire.faults]]\nservice = \"cache\"\naction = \"blackhole\"\n",
        plan(http_upstream("web").await, echo_upstream().await)
    );
    let running = start(&plan).await;
    let cache = running.service_addr("cache").unwrap();
    let admin_addr = running.admin_addr();
    let (status, _) = admin(&running, http::Method::POST, "/faults/fire", "").await;
    assert_eq!(status, StatusCode::CREATED);
    let mut held = within(STEP, TcpStream::connect(cache)).await.unwrap();

    // A drain that would wait 60 s for the blackholed connection...
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...ends early once the fault is lifted through the still-running API.
    let url = format!("http://{admin_addr}/faults");
    let (status, _) = send(&client(), http::Method::DELETE, &url, "")
        .await
        .expect("the admin API answers while draining");
    assert_eq!(status, StatusCode::OK);
    let end = closed_within(&mut held, STEP).await;
    assert!(
        matches!(end, Some(Ok(0)) | Some(Err(_))),
        "held connection closes, got {end:?}"
    );
    let cut = within(STEP, shutdown).await.unwrap();
    assert_eq!(cut, 0);
}
