//! Limits and timeouts against real loopback servers: the per-service
//! connection cap (tcp reset, http 503, the refused counter, slots given
//! back), header size and count limits, idle timeouts for http and tcp,
//! upstreams that hang or stall, and the plan checks for bad values.
//! Timing checks are lower bounds; upper bounds are "did not hang" limits.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

const CONNECTIONS: &str = "firedrill_connections_total";
const ACTIVE: &str = "firedrill_connections_active";
/// The idle timeouts the tests set: short, so tests stay short.
const IDLE: Duration = Duration::from_millis(300);

// --- Connection cap ---------------------------------------------------------

#[tokio::test]
async fn tcp_connections_over_the_cap_are_reset_and_a_closed_one_frees_its_slot() {
    let cache = unique("cache");
    let upstream = echo_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(&cache, "pangyo", "tcp", upstream, "max_connections = 3")
        .start()
        .await;
    let refused = [("service", cache.as_str()), ("outcome", "refused")];
    assert!(
        has_series(&metrics(&running).await, CONNECTIONS, &refused),
        "the refused series is exported from start-up"
    );

    let mut open = Vec::new();
    for i in 0..3u8 {
        let mut stream = connect(addr(&running, &cache)).await;
        carry_echo(&mut stream, &[b'a' + i; 10]).await;
        open.push(stream);
    }
    let mut fourth = connect(addr(&running, &cache)).await;
    let _ = fourth.write_all(b"let me in").await;
    let end = closed_within(&mut fourth, STEP).await;
    assert!(
        matches!(end, Some(Ok(0) | Err(_))),
        "the fourth connection is cut: {end:?}"
    );
    wait_for_sample(&running, CONNECTIONS, &refused, 1.0).await;
    for stream in &mut open {
        carry_echo(stream, b"still relaying").await;
    }

    drop(open.pop());
    wait_for_sample(&running, ACTIVE, &[("service", &cache)], 2.0).await;
    let mut fresh = connect(addr(&running, &cache)).await;
    carry_echo(&mut fresh, b"a slot came free").await;
    let text = metrics(&running).await;
    assert_eq!(sample(&text, CONNECTIONS, &refused), 1.0);
}

#[tokio::test]
async fn http_connections_over_the_cap_get_a_503_and_are_closed() {
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "max_connections = 1")
        .start()
        .await;
    let proxy = addr(&running, &talk);
    let mut holder = raw_get(proxy, "/first").await;
    let (head, _) = read_response(&mut holder).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let mut refused = raw_get(proxy, "/second").await;
    let answer = read_to_close(&mut refused).await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with(&format!(
            "firedrill: service `{talk}` is at max_connections (1)\n"
        )),
        "{answer}"
    );

    // curl, a real client, reads the same answer.
    if programs_present(&["curl"], "apt-get install curl") {
        let url = format!("http://{proxy}/third");
        let ran = tokio::task::spawn_blocking(move || {
            run_captured(
                Command::new("curl").args(["-s", "-m", "5", "-w", "\n%{http_code}", &url]),
                STEP,
            )
        })
        .await
        .unwrap();
        assert!(
            ran.stdout.ends_with("max_connections (1)\n\n503"),
            "{ran:?}"
        );
    }
    let labels = [("service", talk.as_str()), ("outcome", "refused")];
    wait_for_sample(&running, CONNECTIONS, &labels, 2.0).await;

    // The connection holding the slot keeps working; once it closes, a
    // new client is served.
    write_get(&mut holder, "/again", false).await;
    let (head, _) = read_response(&mut holder).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(holder);
    wait_for_sample(&running, ACTIVE, &[("service", &talk)], 0.0).await;
    let (status, body) = get(proxy, "/after").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "talk-upstream answered GET /after\n")
    );
}

// --- Header limits ------------------------------------------------------------

#[tokio::test]
async fn request_headers_over_max_header_bytes_get_431_and_the_connection_closes() {
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "max_header_bytes = 8192")
        .start()
        .await;
    let proxy = addr(&running, &talk);

    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: talk\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(6000)
    );
    let mut stream = raw_request(proxy, &fits).await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "talk-upstream answered GET /fits\n");

    let big = format!(
        "GET /big HTTP/1.1\r\nHost: talk\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    let mut stream = raw_request(proxy, &big).await;
    let answer = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn requests_with_more_than_max_headers_get_431() {
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "max_headers = 10")
        .start()
        .await;
    let proxy = addr(&running, &talk);
    let request = |count: usize| {
        let fields: String = (0..count)
            .map(|i| format!("X-Field-{i}: {i}\r\n"))
            .collect();
        format!("GET /h HTTP/1.1\r\nHost: talk\r\n{fields}\r\n")
    };

    let mut stream = raw_request(proxy, &request(9)).await;
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "ten headers pass: {head}");

    let mut stream = raw_request(proxy, &request(20)).await;
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[tokio::test]
async fn h2_header_lists_over_max_header_bytes_get_431() {
    if !programs_present(&["curl"], "apt-get install curl") {
        return;
    }
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "max_header_bytes = 8192")
        .start()
        .await;
    let url = url(&running, &talk, "/h2");
    let curl = move |pad: usize| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let header = format!("X-Pad: {}", "a".repeat(pad));
            run_captured(
                Command::new("curl").args([
                    "-s",
                    "-m",
                    "5",
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_version} %{http_code}",
                    "-H",
                    &header,
                    &url,
                ]),
                STEP,
            )
        })
    };
    let ran = curl(100).await.unwrap();
    assert_eq!(ran.stdout, "2 200", "{ran:?}");
    let ran = curl(9000).await.unwrap();
    assert_eq!(ran.stdout, "2 431", "{ran:?}");
}

#[tokio::test]
async fn upstream_response_heads_over_the_limits_give_502() {
    let talk = unique("talk");
    let upstream = padded_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(
            &talk,
            "pangyo",
            "http",
            upstream,
            "max_header_bytes = 8192; max_headers = 10",
        )
        .start()
        .await;
    let proxy = addr(&running, &talk);
    let (status, body) = get(proxy, "/small").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "padded\n"));
    let (status, body) = get(proxy, "/big").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains(&format!("service `{talk}`")), "{body}");
    let (status, body) = get(proxy, "/many").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    // h2 clients' requests go through the pooled upstream client.
    if programs_present(&["curl"], "apt-get install curl") {
        for path in ["/small", "/big", "/many"] {
            let url = format!("http://{proxy}{path}");
            let ran = tokio::task::spawn_blocking(move || {
                run_captured(
                    Command::new("curl").args([
                        "-s",
                        "-m",
                        "5",
                        "--http2-prior-knowledge",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        &url,
                    ]),
                    STEP,
                )
            })
            .await
            .unwrap();
            let expected = if path == "/small" { "200" } else { "502" };
            assert_eq!(ran.stdout, expected, "h2 {path}: {ran:?}");
        }
    }
}

// --- Idle timeouts --------------------------------------------------------------

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_idle_timeout() {
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "idle_timeout = '300ms'")
        .start()
        .await;
    let proxy = addr(&running, &talk);

    // A request in flight for longer than the idle timeout is not cut.
    let mut stream = raw_get(proxy, "/sleep/700").await;
    let (head, body) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "talk-upstream slept 700ms\n");
    // Then, with nothing in flight, the connection is closed.
    let answered = Instant::now();
    let end = closed_within(&mut stream, STEP).await;
    assert!(matches!(end, Some(Ok(0))), "closed with a FIN: {end:?}");
    assert!(answered.elapsed() >= IDLE - Duration::from_millis(20));

    // So is a connection that never sends a request.
    let mut silent = connect(proxy).await;
    let opened = Instant::now();
    let end = closed_within(&mut silent, STEP).await;
    assert!(matches!(end, Some(Ok(0))), "{end:?}");
    assert!(opened.elapsed() >= IDLE - Duration::from_millis(20));
    wait_for_sample(&running, ACTIVE, &[("service", &talk)], 0.0).await;
}

#[tokio::test]
async fn a_tcp_connection_that_moves_no_bytes_for_idle_timeout_is_closed() {
    let cache = unique("cache");
    let upstream = echo_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(&cache, "pangyo", "tcp", upstream, "idle_timeout = '300ms'")
        .start()
        .await;
    let mut stream = connect(addr(&running, &cache)).await;
    // Traffic more often than the timeout keeps it open well past it.
    for _ in 0..8 {
        carry_echo(&mut stream, b"ping").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    carry_echo(&mut stream, b"last").await;
    let quiet = Instant::now();
    let end = closed_within(&mut stream, STEP).await;
    assert!(matches!(end, Some(Ok(0))), "closed with a FIN: {end:?}");
    assert!(quiet.elapsed() >= IDLE - Duration::from_millis(20));
    wait_for_sample(&running, ACTIVE, &[("service", &cache)], 0.0).await;
}

#[tokio::test]
async fn a_blackholed_tcp_connection_outlives_idle_timeout() {
    let cache = unique("cache");
    let fire = unique("fire");
    let upstream = echo_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(&cache, "pangyo", "tcp", upstream, "idle_timeout = '300ms'")
        .fault(&fire, &cache, "action = 'blackhole'")
        .start()
        .await;
    let mut held = connect(addr(&running, &cache)).await;
    carry_echo(&mut held, b"before").await;
    activate(&running, &fire).await;
    let mut fresh = connect(addr(&running, &cache)).await;
    // Held for many idle timeouts: a dead data center does not hang up.
    tokio::time::sleep(IDLE * 4).await;
    let moment = Duration::from_millis(50);
    assert!(
        closed_within(&mut held, moment).await.is_none(),
        "the open connection was closed"
    );
    assert!(
        closed_within(&mut fresh, moment).await.is_none(),
        "the new connection was closed"
    );
    lift(&running, &fire).await;
    assert!(closed_within(&mut held, STEP).await.is_some());
}

// --- Upstreams that hang or stall ---------------------------------------------

#[tokio::test]
async fn an_upstream_that_accepts_and_never_answers_gives_504_after_timeout() {
    let talk = unique("talk");
    let upstream = silent_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(&talk, "pangyo", "http", upstream, "timeout = '300ms'")
        .start()
        .await;
    let started = Instant::now();
    let (status, body) = get(addr(&running, &talk), "/never").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() >= IDLE);
    assert!(
        body.contains("did not send response headers within 300ms"),
        "{body}"
    );
}

#[tokio::test]
async fn an_upstream_that_stalls_mid_body_ends_the_client_connection() {
    let talk = unique("talk");
    let upstream = stalling_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(
            &talk,
            "pangyo",
            "http",
            upstream,
            "upstream_idle_timeout = '300ms'",
        )
        .start()
        .await;
    let mut stream = raw_get(addr(&running, &talk), "/download").await;
    let started = Instant::now();
    let answer = read_to_close(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("first part"),
        "only what was sent: {answer}"
    );
    assert!(started.elapsed() >= IDLE);
}

#[tokio::test]
async fn a_tcp_upstream_that_never_accepts_closes_the_client_after_connect_timeout() {
    let cache = unique("cache");
    let (upstream, _queue) = unresponsive_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(
            &cache,
            "pangyo",
            "tcp",
            upstream,
            "connect_timeout = '300ms'",
        )
        .start()
        .await;
    let mut stream = connect(addr(&running, &cache)).await;
    let started = Instant::now();
    let _ = stream.write_all(b"hello?").await;
    let end = closed_within(&mut stream, STEP).await;
    assert!(matches!(end, Some(Ok(0) | Err(_))), "{end:?}");
    assert!(started.elapsed() >= IDLE - Duration::from_millis(20));
    let labels = [("service", cache.as_str()), ("outcome", "upstream_error")];
    wait_for_sample(&running, CONNECTIONS, &labels, 1.0).await;
}

// --- Plan checks ----------------------------------------------------------------

#[tokio::test]
async fn the_plan_rejects_bad_limits_with_their_line_and_column() {
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let plan = PlanText::new(&["pangyo"])
        .service(
            "talk",
            "pangyo",
            "http",
            upstream,
            "max_connections = 0; max_header_bytes = 1024",
        )
        .service(
            "cache",
            "pangyo",
            "tcp",
            upstream,
            "idle_timeout = '0s'; max_headers = 5",
        );
    let text = plan.toml();
    let line_of = |needle: &str| text.lines().position(|l| l.starts_with(needle)).unwrap() + 1;
    let error = match firedrill::config::parse(text, "limits.toml") {
        Ok(_) => panic!("the plan should be rejected"),
        Err(e) => e.to_string(),
    };
    for (needle, column, message) in [
        (
            "max_connections",
            19,
            "service `talk` has max_connections 0; allow at least 1 connection",
        ),
        (
            "max_header_bytes",
            20,
            "service `talk` has max_header_bytes 1024; give 8192",
        ),
        (
            "idle_timeout",
            16,
            "service `cache` has idle_timeout 0; give it a positive duration",
        ),
        (
            "max_headers",
            15,
            "service `cache` is tcp; `max_headers` applies to http services only",
        ),
    ] {
        let at = format!("limits.toml:{}:{column}: {message}", line_of(needle));
        assert!(error.contains(&at), "missing `{at}` in:\n{error}");
    }
    assert!(error.ends_with("4 errors in plan"), "{error}");
}

// --- Helpers --------------------------------------------------------------------

/// Whether `text` has a sample line of `name` with every label in `labels`.
fn has_series(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    text.lines().any(|line| {
        line.starts_with(&format!("{name}{{"))
            && labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
    })
}

/// Writes a GET of `path` on `stream` (with `Connection: close` if `close`).
async fn write_get(stream: &mut TcpStream, path: &str, close: bool) {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{connection}\r\n");
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
}

/// An upstream that accepts connections, reads what comes and never answers.
async fn silent_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        let mut sink = [0u8; 1024];
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await
}

/// An HTTP upstream that answers each request with the head of a 100-byte
/// response and its first 10 bytes, then sends nothing more.
async fn stalling_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        if read_request_head(&mut stream).await.is_none() {
            return;
        }
        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst part";
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        // Hold the connection open until the proxy lets go.
        let mut buf = [0u8; 1024];
        while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await
}

/// An HTTP upstream whose response heads are small for `/small`, 10 KB for
/// `/big` and 20 fields for `/many`; one request per connection.
async fn padded_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        let Some(head) = read_request_head(&mut stream).await else {
            return;
        };
        let head = String::from_utf8_lossy(&head);
        let extra = if head.contains("/big HTTP/1.1") {
            format!("x-pad: {}\r\n", "a".repeat(10_000))
        } else if head.contains("/many HTTP/1.1") {
            (0..20).map(|i| format!("x-field-{i}: {i}\r\n")).collect()
        } else {
            String::new()
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\n{extra}content-length: 7\r\nconnection: close\r\n\r\npadded\n"
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await
}
