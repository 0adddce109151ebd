//! The HTTP data plane against real servers on loopback: pass-through,
//! hop-by-hop fields, every fault action, selectors, probability, how
//! faults of several scenarios combine, upstream failures, upgraded
//! connections and the request metrics. Each test writes its own plan and
//! drives the admin API over real HTTP.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use firedrill::Running;
use support::*;

/// How long a request must go unanswered to count as held by a blackhole.
const HOLD: Duration = Duration::from_millis(300);

const REQUESTS: &str = "firedrill_requests_total";
const INJECTED: &str = "firedrill_faults_injected_total";

// --- Pass-through -----------------------------------------------------------

#[tokio::test]
async fn get_and_post_pass_through_with_status_and_body_intact() {
    let talk = unique("talk");
    let upstream = http_upstream("talk-upstream").await;
    let running = serve(&talk, upstream, &[]).await;

    let (status, body) = get(addr(&running, &talk), "/chats?room=7").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "talk-upstream answered GET /chats\n");

    let echo = url(&running, &talk, "/echo");
    let (status, body) = send(&client(), Method::POST, &echo, r#"{"text":"hello"}"#)
        .await
        .expect("POST is answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, r#"{"text":"hello"}"#);

    let (status, body) = get(addr(&running, &talk), "/status/418").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(body, "talk-upstream status 418\n");
}

#[tokio::test]
async fn a_large_body_comes_back_byte_identical() {
    let files = unique("files");
    let upstream = http_upstream("files-upstream").await;
    let running = serve(&files, upstream, &[]).await;
    let payload: Bytes = (0..8 * 1024 * 1024)
        .map(|i: usize| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();

    let request = Request::post(url(&running, &files, "/echo"))
        .body(Full::new(payload.clone()))
        .unwrap();
    let response = fetch(&client(), request).await.expect("POST is answered");

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body().len(), payload.len());
    assert!(
        *response.body() == payload,
        "the echoed body differs from the one sent"
    );
    let text = metrics(&running).await;
    for direction in ["upstream", "downstream"] {
        let labels = [("service", files.as_str()), ("direction", direction)];
        let bytes = sample(&text, "firedrill_bytes_total", &labels);
        assert!(
            bytes >= payload.len() as f64,
            "{direction} bytes counted: {bytes}"
        );
    }
}

#[tokio::test]
async fn bodies_stream_both_ways_before_the_request_body_ends() {
    let stream = unique("stream");
    let upstream = http_upstream("stream-upstream").await;
    let running = serve(&stream, upstream, &[]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ChannelBody>();
    let (chunks, body) = channel_body();

    chunks
        .send(Bytes::from_static(b"first chunk;"))
        .await
        .unwrap();
    let request = Request::post(url(&running, &stream, "/echo"))
        .body(body)
        .unwrap();
    // A proxy that buffered either body would answer only after the
    // request body ends, which is not before the echo of the first chunk.
    let response = within(STEP, client.request(request))
        .await
        .expect("response head arrives while the request body is open");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = read_at_least(&mut body, b"first chunk;".len()).await;
    assert_eq!(first, b"first chunk;");

    chunks
        .send(Bytes::from_static(b"second chunk"))
        .await
        .unwrap();
    drop(chunks);
    let rest = within(STEP, body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second chunk"));
}

#[tokio::test]
async fn many_requests_share_one_kept_alive_client_connection() {
    let search = unique("search");
    let upstream = http_upstream("search-upstream").await;
    let running = serve(&search, upstream, &[]).await;
    let client = client();

    for i in 0..50 {
        let url = url(&running, &search, &format!("/q/{i}"));
        let (status, body) = send(&client, Method::GET, &url, "")
            .await
            .expect("request is answered");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("search-upstream answered GET /q/{i}\n"));
    }

    let text = metrics(&running).await;
    let accepted = by_outcome(&search, "accepted");
    assert_eq!(
        sample(&text, "firedrill_connections_total", &accepted),
        1.0,
        "50 requests on a pooled client use one connection"
    );
    let forwarded = by_outcome(&search, "forwarded");
    assert_eq!(sample(&text, "firedrill_requests_total", &forwarded), 50.0);
}

#[tokio::test]
async fn h2c_clients_with_prior_knowledge_are_proxied() {
    let maps = unique("maps");
    let upstream = http_upstream("maps-upstream").await;
    let running = serve(&maps, upstream, &[]).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();

    let response = fetch_get(&client, &url(&running, &maps, "/route?from=a")).await;
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "maps-upstream answered GET /route\n");

    let request = Request::post(url(&running, &maps, "/echo"))
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = fetch(&client, request).await.expect("h2 POST is answered");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "over h2");

    // The upstream speaks HTTP/1.1 and needs Host, which h2 sends as :authority.
    let response = fetch_get(&client, &url(&running, &maps, "/headers")).await;
    let seen = header_lines(response.body());
    let host = format!("host: {}", addr(&running, &maps));
    assert!(seen.contains(&host), "upstream saw: {seen:?}");
}

#[tokio::test]
async fn cookie_fields_of_an_h2_client_reach_an_http1_upstream_as_one() {
    let maps = unique("maps");
    let upstream = http_upstream("maps-upstream").await;
    let running = serve(&maps, upstream, &[]).await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();

    // RFC 9113 section 8.2.3: h2 clients may send one field per cookie.
    let request = Request::get(url(&running, &maps, "/headers"))
        .header(header::COOKIE, "session=7")
        .header(header::COOKIE, "theme=dark")
        .header(header::COOKIE, "lang=ko")
        .body(Full::default())
        .unwrap();
    let response = fetch(&client, request).await.expect("h2 GET is answered");

    let seen = header_lines(response.body());
    let cookies: Vec<_> = seen.iter().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(
        cookies,
        ["cookie: session=7; theme=dark; lang=ko"],
        "upstream saw: {seen:?}"
    );
}

// --- Hop-by-hop fields --------------------------------------------------------

#[tokio::test]
async fn hop_by_hop_request_fields_do_not_reach_the_upstream() {
    let (status, seen) = fields_seen_upstream(&[
        ("connection", "x-custom"),
        ("x-custom", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-kept", "yes"),
    ])
    .await;
    assert_eq!(status, StatusCode::OK);

    assert_not_seen(
        &seen,
        &["connection", "x-custom", "keep-alive", "proxy-connection"],
    );
    assert!(seen.contains(&"x-kept: yes".to_owned()), "{seen:?}");
    assert!(
        seen.contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
        "{seen:?}"
    );
}

#[tokio::test]
async fn fields_named_by_every_connection_header_line_are_removed() {
    // RFC 9110 section 5.3: a list field may be split over several lines.
    let (_, seen) = fields_seen_upstream(&[
        ("connection", "x-first"),
        ("connection", "x-second, x-third"),
        ("x-first", "1"),
        ("x-second", "2"),
        ("x-third", "3"),
        ("x-kept", "yes"),
    ])
    .await;

    assert_not_seen(&seen, &["connection", "x-first", "x-second", "x-third"]);
    assert!(seen.contains(&"x-kept: yes".to_owned()), "{seen:?}");
}

#[tokio::test]
async fn x_forwarded_for_adds_the_client_to_the_addresses_it_sent_in_one_field() {
    let (_, seen) = fields_seen_upstream(&[
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.2, 10.0.0.1"),
    ])
    .await;

    let forwarded: Vec<_> = seen
        .iter()
        .filter(|l| l.starts_with("x-forwarded-for:"))
        .collect();
    assert_eq!(
        forwarded,
        ["x-forwarded-for: 203.0.113.7, 198.51.100.2, 10.0.0.1, 127.0.0.1"],
        "upstream saw: {seen:?}"
    );
}

#[tokio::test]
async fn hop_by_hop_response_fields_do_not_reach_the_client() {
    let mail = unique("mail");
    let upstream = upgrade_upstream().await;
    let running = serve(&mail, upstream, &[]).await;

    let response = fetch_get(&client(), &url(&running, &mail, "/plain")).await;

    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers();
    for gone in ["x-hop", "keep-alive"] {
        assert!(
            !headers.contains_key(gone),
            "client saw `{gone}`: {headers:?}"
        );
    }
    assert_eq!(headers["x-kept"], "yes");
}

// --- Fault actions ----------------------------------------------------------

#[tokio::test]
async fn error_fault_answers_without_contacting_the_upstream() {
    let (login, outage) = (unique("login"), unique("login-outage"));
    // Nothing listens there: contacting it would answer 502.
    let (upstream, _reserved) = unreachable_upstream();
    let error = concat!(
        "action = 'error'; status = 503; ",
        r#"body = '{"error":"login temporarily unavailable"}'; "#,
        r#"headers = { "content-type" = "application/json", "retry-after" = "60" }"#,
    );
    let running = serve(&login, upstream, &[(&outage, error)]).await;
    let (status, _) = get(addr(&running, &login), "/oauth/token").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "the upstream is down");

    activate(&running, &outage).await;
    let response = fetch_get(&client(), &url(&running, &login, "/oauth/token")).await;

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.body(),
        r#"{"error":"login temporarily unavailable"}"#
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["retry-after"], "60");
}

#[tokio::test]
async fn drop_fault_closes_the_connection_without_a_response() {
    let (pay, cut) = (unique("pay"), unique("cut"));
    let upstream = http_upstream("pay-upstream").await;
    let running = serve(&pay, upstream, &[(&cut, "action = 'drop'")]).await;
    activate(&running, &cut).await;

    assert_dropped(&client(), &url(&running, &pay, "/charge")).await;

    let mut stream = raw_get(addr(&running, &pay), "/charge").await;
    assert_closed_without_answer(&mut stream).await;
}

#[tokio::test]
async fn blackhole_fault_leaves_requests_unanswered() {
    let (taxi, hole) = (unique("taxi"), unique("hole"));
    let upstream = http_upstream("taxi-upstream").await;
    let running = serve(&taxi, upstream, &[(&hole, "action = 'blackhole'")]).await;
    activate(&running, &hole).await;

    assert_unanswered(&client(), &url(&running, &taxi, "/ride")).await;

    let mut stream = raw_get(addr(&running, &taxi), "/ride").await;
    assert_held(&mut stream, "a blackholed connection answered").await;
}

#[tokio::test]
async fn blackhole_reaches_kept_alive_connections_on_their_next_request() {
    let (gift, hole) = (unique("gift"), unique("hole"));
    let upstream = http_upstream("gift-upstream").await;
    let running = serve(&gift, upstream, &[(&hole, "action = 'blackhole'")]).await;
    let client = client();
    let (status, _) = send(&client, Method::GET, &url(&running, &gift, "/a"), "")
        .await
        .expect("request before the fault is answered");
    assert_eq!(status, StatusCode::OK);

    activate(&running, &hole).await;
    assert_unanswered(&client, &url(&running, &gift, "/b")).await;

    let text = metrics(&running).await;
    let accepted = by_outcome(&gift, "accepted");
    assert_eq!(
        sample(&text, "firedrill_connections_total", &accepted),
        1.0,
        "the held request used the kept-alive connection"
    );
}

#[tokio::test]
async fn when_a_blackhole_ends_held_connections_close_and_new_requests_pass() {
    let (search, hole) = (unique("search"), unique("hole"));
    let upstream = http_upstream("search-upstream").await;
    let running = serve(&search, upstream, &[(&hole, "action = 'blackhole'")]).await;
    activate(&running, &hole).await;
    let mut held = raw_get(addr(&running, &search), "/q").await;
    assert_held(&mut held, "a blackholed connection answered").await;

    lift(&running, &hole).await;

    assert_closed_without_answer(&mut held).await;
    let (status, body) = get(addr(&running, &search), "/q").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "search-upstream answered GET /q\n");
}

/// A streaming response under way when a fault starts: returns the
/// firedrill, the chunk sender and the response body after its first chunk.
async fn streaming(
    service: &str,
    faults: &[(&str, &str)],
) -> (Running, mpsc::Sender<Bytes>, Incoming) {
    let upstream = http_upstream("stream-upstream").await;
    let running = serve(service, upstream, faults).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<ChannelBody>();
    let (chunks, body) = channel_body();
    chunks.send(Bytes::from_static(b"first;")).await.unwrap();
    let request = Request::post(url(&running, service, "/echo"))
        .body(body)
        .unwrap();
    let response = within(STEP, client.request(request)).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(read_at_least(&mut body, 6).await, b"first;");
    (running, chunks, body)
}

#[tokio::test]
async fn drop_fault_cuts_a_response_that_is_streaming() {
    let service = unique("cut");
    let (running, chunks, mut body) = streaming(&service, &[("cut", "action = 'drop'")]).await;
    activate(&running, "cut").await;
    // Cut at once, not at the next chunk: nothing more is sent.
    let ended = within(STEP, body.frame()).await;
    assert!(
        matches!(ended, Some(Err(_)) | None),
        "the response is cut: {ended:?}"
    );
    drop(chunks);
    let text = metrics(&running).await;
    assert_eq!(
        sample(&text, INJECTED, &by_fault(&service, "cut", "drop")),
        1.0
    );
}

#[tokio::test]
async fn blackhole_holds_a_streaming_response_and_cuts_it_when_lifted() {
    let service = unique("hold");
    let faults = [("dark", "action = 'blackhole'")];
    let (running, chunks, mut body) = streaming(&service, &faults).await;
    activate(&running, "dark").await;
    chunks.send(Bytes::from_static(b"second;")).await.unwrap();
    let held = tokio::time::timeout(HOLD, body.frame()).await;
    assert!(held.is_err(), "nothing reaches the client: {held:?}");
    lift(&running, "dark").await;
    // Like a held tcp connection, it closes when the blackhole ends.
    let ended = within(STEP, body.frame()).await;
    assert!(
        matches!(ended, Some(Err(_)) | None),
        "the response is cut: {ended:?}"
    );
    drop(chunks);
    let text = metrics(&running).await;
    assert_eq!(
        sample(&text, INJECTED, &by_fault(&service, "dark", "blackhole")),
        1.0
    );
}

#[tokio::test]
async fn delay_fault_adds_latency_before_forwarding() {
    let (maps, slow) = (unique("maps"), unique("slow"));
    let upstream = http_upstream("maps-upstream").await;
    let delay = "action = 'delay'; latency = '200ms'";
    let running = serve(&maps, upstream, &[(&slow, delay)]).await;
    activate(&running, &slow).await;

    let started = Instant::now();
    let (status, body) = get(addr(&running, &maps), "/tiles").await;

    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "maps-upstream answered GET /tiles\n");
}

// --- Rule changes during a delay ------------------------------------------------

#[tokio::test]
async fn lifting_everything_ends_a_delay_and_the_drop_that_was_to_follow() {
    let pay = unique("pay");
    let (slow, cut) = (unique("slow"), unique("cut"));
    let upstream = http_upstream("pay-upstream").await;
    let faults: [(&str, &str); 2] = [
        (&slow, "action = 'delay'; latency = '30s'"),
        (&cut, "action = 'drop'"),
    ];
    let running = serve(&pay, upstream, &faults).await;
    activate(&running, &slow).await;
    activate(&running, &cut).await;
    let waiting = tokio::spawn(get(addr(&running, &pay), "/charge"));
    wait_for_sample(&running, INJECTED, &by_fault(&pay, &slow, "delay"), 1.0).await;

    let mut lifted = lift_all(&running).await;
    lifted.sort();

    // `get` gives up after STEP, well before the 30s delay would end.
    let (status, body) = within(STEP, waiting)
        .await
        .expect("the request is answered");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "pay-upstream answered GET /charge\n");
    let mut expected = [slow.clone(), cut.clone()];
    expected.sort();
    assert_eq!(lifted, expected);
    let text = metrics(&running).await;
    assert_eq!(sample(&text, REQUESTS, &by_outcome(&pay, "delayed")), 1.0);
    assert_eq!(sample(&text, REQUESTS, &by_outcome(&pay, "dropped")), 0.0);
    for (scenario, action) in [(&slow, "delay"), (&cut, "drop")] {
        let labels = by_fault(&pay, scenario, action);
        assert_eq!(
            sample(&text, INJECTED, &labels),
            1.0,
            "{action} counted once"
        );
    }
}

#[tokio::test]
async fn lifting_one_of_two_delays_leaves_the_other_counted_from_the_request_start() {
    let maps = unique("maps");
    let (link, disk) = (unique("slow-link"), unique("slow-disk"));
    let upstream = http_upstream("maps-upstream").await;
    let faults: [(&str, &str); 2] = [
        (&link, "action = 'delay'; latency = '30s'"),
        (&disk, "action = 'delay'; latency = '400ms'"),
    ];
    let running = serve(&maps, upstream, &faults).await;
    activate(&running, &link).await;
    activate(&running, &disk).await;
    let started = Instant::now();
    let waiting = tokio::spawn(get(addr(&running, &maps), "/tiles"));
    wait_for_sample(&running, INJECTED, &by_fault(&maps, &link, "delay"), 1.0).await;

    lift(&running, &link).await;

    let (status, _) = within(STEP, waiting)
        .await
        .expect("the request is answered");
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the remaining delay still applies: answered after {:?}",
        started.elapsed()
    );
    let text = metrics(&running).await;
    for scenario in [&link, &disk] {
        let labels = by_fault(&maps, scenario, "delay");
        assert_eq!(
            sample(&text, INJECTED, &labels),
            1.0,
            "{scenario} counted once"
        );
    }
}

#[tokio::test]
async fn a_fault_that_starts_during_a_delay_decides_what_follows_it() {
    let login = unique("login");
    let (slow, outage) = (unique("slow"), unique("outage"));
    let upstream = http_upstream("login-upstream").await;
    let faults: [(&str, &str); 2] = [
        (&slow, "action = 'delay'; latency = '400ms'"),
        (&outage, "action = 'error'; status = 503"),
    ];
    let running = serve(&login, upstream, &faults).await;
    activate(&running, &slow).await;
    let started = Instant::now();
    let waiting = tokio::spawn(get(addr(&running, &login), "/oauth/token"));
    wait_for_sample(&running, INJECTED, &by_fault(&login, &slow, "delay"), 1.0).await;

    activate(&running, &outage).await;

    let (status, _) = within(STEP, waiting)
        .await
        .expect("the request is answered");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() >= Duration::from_millis(400));
    let text = metrics(&running).await;
    assert_eq!(sample(&text, REQUESTS, &by_outcome(&login, "error")), 1.0);
    for (scenario, action) in [(&slow, "delay"), (&outage, "error")] {
        let labels = by_fault(&login, scenario, action);
        assert_eq!(
            sample(&text, INJECTED, &labels),
            1.0,
            "{action} counted once"
        );
    }
}

// --- Selectors ----------------------------------------------------------------

#[tokio::test]
async fn datacenter_selector_hits_only_services_in_that_datacenter() {
    let talk = unique("talk");
    let standby = unique("talk-standby");
    let fire = unique("pangyo-fire");
    let upstream = http_upstream("talk-upstream").await;
    let running = PlanText::new(&["pangyo", "ansan"])
        .http(&talk, "pangyo", upstream)
        .http(&standby, "ansan", upstream)
        .scenario(
            &fire,
            &["datacenter = 'pangyo'; action = 'error'; status = 503"],
        )
        .start()
        .await;
    activate(&running, &fire).await;

    let (status, _) = get(addr(&running, &talk), "/send").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) = get(addr(&running, &standby), "/send").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "talk-upstream answered GET /send\n");
}

#[tokio::test]
async fn service_selector_hits_only_that_service() {
    let pay = unique("pay");
    let gift = unique("gift");
    let outage = unique("pay-outage");
    let upstream = http_upstream("shop-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .http(&pay, "pangyo", upstream)
        .http(&gift, "pangyo", upstream)
        .fault(&outage, &pay, "action = 'error'; status = 500")
        .start()
        .await;
    activate(&running, &outage).await;

    let (status, _) = get(addr(&running, &pay), "/charge").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, body) = get(addr(&running, &gift), "/charge").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "shop-upstream answered GET /charge\n");
}

#[tokio::test]
async fn method_and_path_prefix_hit_only_matching_requests() {
    let (pay, writes) = (unique("pay"), unique("no-writes"));
    let upstream = http_upstream("pay-upstream").await;
    let error = "method = 'POST'; path_prefix = '/v1/charges'; action = 'error'; status = 503";
    let running = serve(&pay, upstream, &[(&writes, error)]).await;
    activate(&running, &writes).await;
    let client = client();
    let status_of = |method: Method, path: &str| {
        let url = url(&running, &pay, path);
        let client = &client;
        async move {
            send(client, method, &url, "{}")
                .await
                .expect("request is answered")
                .0
        }
    };

    assert_eq!(
        status_of(Method::POST, "/v1/charges").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status_of(Method::POST, "/v1/charges/42/refund").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(status_of(Method::GET, "/v1/charges").await, StatusCode::OK);
    assert_eq!(status_of(Method::PUT, "/v1/charges").await, StatusCode::OK);
    assert_eq!(status_of(Method::POST, "/v1/refunds").await, StatusCode::OK);
    assert_eq!(status_of(Method::POST, "/v2/charges").await, StatusCode::OK);
}

// --- Probability --------------------------------------------------------------

#[tokio::test]
async fn probability_hits_about_that_share_of_requests() {
    let (maps, flaky) = (unique("maps"), unique("flaky"));
    let upstream = http_upstream("maps-upstream").await;
    let error = "action = 'error'; status = 503; probability = 0.5";
    let running = serve(&maps, upstream, &[(&flaky, error)]).await;
    activate(&running, &flaky).await;
    let client = client();

    let mut hit = 0;
    for _ in 0..200 {
        let (status, _) = send(&client, Method::GET, &url(&running, &maps, "/tiles"), "")
            .await
            .expect("request is answered");
        match status {
            StatusCode::SERVICE_UNAVAILABLE => hit += 1,
            StatusCode::OK => {}
            other => panic!("unexpected status {other}"),
        }
    }

    // Binomial(200, 0.5): 50..=150 is more than 7 standard deviations wide.
    assert!((50..=150).contains(&hit), "{hit} of 200 requests were hit");
    let text = metrics(&running).await;
    let labels = by_fault(&maps, &flaky, "error");
    let count = sample(&text, "firedrill_faults_injected_total", &labels);
    assert_eq!(count, f64::from(hit));
}

// --- Several scenarios at once ------------------------------------------------

#[tokio::test]
async fn stronger_faults_win_blackhole_then_drop_then_error_then_delay() {
    let talk = unique("talk");
    let [slow, fail, cut, hole] = ["slow", "fail", "cut", "hole"].map(unique);
    let upstream = http_upstream("talk-upstream").await;
    let faults: [(&str, &str); 4] = [
        (&slow, "action = 'delay'; latency = '100ms'"),
        (&fail, "action = 'error'; status = 503"),
        (&cut, "action = 'drop'"),
        (&hole, "action = 'blackhole'"),
    ];
    let running = serve(&talk, upstream, &faults).await;
    let talk_url = url(&running, &talk, "/send");
    for scenario in [&slow, &fail, &cut, &hole] {
        activate(&running, scenario).await;
    }

    // Blackhole beats the rest.
    assert_unanswered(&client(), &talk_url).await;

    lift(&running, &hole).await;
    // Drop beats error and delay.
    assert_dropped(&client(), &talk_url).await;

    lift(&running, &cut).await;
    let started = Instant::now();
    let (status, _) = get(addr(&running, &talk), "/send").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "error beats delay");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "the delay still applies before the error"
    );

    lift(&running, &fail).await;
    let started = Instant::now();
    let (status, _) = get(addr(&running, &talk), "/send").await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn delays_from_two_scenarios_add_up() {
    let maps = unique("maps");
    let (link, disk) = (unique("slow-link"), unique("slow-disk"));
    let upstream = http_upstream("maps-upstream").await;
    let delay = "action = 'delay'; latency = '150ms'";
    let running = serve(&maps, upstream, &[(&link, delay), (&disk, delay)]).await;
    activate(&running, &link).await;
    activate(&running, &disk).await;

    let started = Instant::now();
    let (status, _) = get(addr(&running, &maps), "/tiles").await;

    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "took {:?}",
        started.elapsed()
    );
}

// --- Upstream failures --------------------------------------------------------

#[tokio::test]
async fn unreachable_upstream_answers_502_naming_the_service() {
    let archive = unique("archive");
    let (upstream, _reserved) = unreachable_upstream();
    let running = serve(&archive, upstream, &[]).await;

    let (status, body) = get(addr(&running, &archive), "/mail/1").await;

    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains(&format!("service `{archive}`")), "{body}");
    assert!(body.contains(&upstream.to_string()), "{body}");
    assert!(body.contains("unreachable"), "{body}");
}

#[tokio::test]
async fn upstream_slower_than_the_service_timeout_answers_504() {
    let search = unique("search");
    let upstream = http_upstream("search-upstream").await;
    let running = PlanText::new(&["pangyo"])
        .service(&search, "pangyo", "http", upstream, "timeout = '200ms'")
        .start()
        .await;

    let started = Instant::now();
    let (status, body) = get(addr(&running, &search), "/sleep/2000").await;

    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(body.contains(&format!("service `{search}`")), "{body}");
    assert!(body.contains("200ms"), "{body}");
}

#[tokio::test]
async fn an_upstream_that_does_not_accept_connections_answers_504_to_upgrades_too() {
    let archive = unique("archive");
    let (upstream, _queue) = unresponsive_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(
            &archive,
            "pangyo",
            "http",
            upstream,
            "connect_timeout = '200ms'",
        )
        .start()
        .await;

    let started = Instant::now();
    let (status, body) = get(addr(&running, &archive), "/mail/1").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        body.contains("did not accept a connection within 200ms"),
        "{body}"
    );

    let mut stream = raw_request(
        addr(&running, &archive),
        "GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
}

#[tokio::test]
async fn upstream_connections_left_idle_for_the_pool_timeout_are_closed() {
    let search = unique("search");
    let (upstream, _, mut closed) = counting_upstream().await;
    let running = serve(&search, upstream, &[]).await;
    let (status, _) = get(addr(&running, &search), "/q").await;
    assert_eq!(status, StatusCode::OK);

    // The pool closes connections idle for 60s; its check runs every 60s,
    // so 125s is enough. A paused clock jumps there at once.
    tokio::time::pause();
    tokio::time::sleep(Duration::from_secs(125)).await;

    within(STEP, closed.recv())
        .await
        .expect("the idle upstream connection was closed");
}

#[tokio::test]
async fn clients_that_connect_per_request_share_upstream_connections_that_soon_expire() {
    let name = unique("percall");
    let (upstream, accepted, mut closed) = counting_upstream().await;
    let running = serve(&name, upstream, &[]).await;
    clients_one_request_each(addr(&running, &name), 20).await;
    let opened = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=5).contains(&opened),
        "20 clients needed {opened} upstream connections"
    );
    // Spares do not linger: the upstream sees them closed soon after.
    within(STEP, closed.recv())
        .await
        .expect("an idle spare upstream connection was closed");
}

#[tokio::test]
async fn a_kept_alive_client_survives_an_upstream_that_closes_after_every_answer() {
    let maps = unique("maps");
    let upstream = one_answer_upstream().await;
    let running = serve(&maps, upstream, &[]).await;
    let client = client();
    let url = url(&running, &maps, "/tile");
    // One client connection; behind it, the upstream closes its end after
    // each answer, so every request needs a new upstream connection, and
    // some find the old one closed only as they are sent.
    for i in 0..30 {
        let (status, body) = send(&client, Method::GET, &url, "")
            .await
            .expect("answered");
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "once\n"),
            "request {i}"
        );
    }
    let text = metrics(&running).await;
    let forwarded = sample(&text, REQUESTS, &by_outcome(&maps, "forwarded"));
    assert_eq!(forwarded, 30.0);
}

// --- Upgraded connections -----------------------------------------------------

#[tokio::test]
async fn upgraded_connection_echoes_until_a_blackhole_stops_its_bytes() {
    let (chat, hole) = (unique("chat"), unique("hole"));
    let upstream = upgrade_upstream().await;
    let running = serve(&chat, upstream, &[(&hole, "action = 'blackhole'")]).await;
    let mut stream = upgrade(addr(&running, &chat)).await;
    carry_echo(&mut stream, b"ping").await;

    activate(&running, &hole).await;
    // The open connection counts the fault when it re-reads the rules.
    let labels = by_fault(&chat, &hole, "blackhole");
    wait_for_sample(&running, "firedrill_faults_injected_total", &labels, 1.0).await;
    within(STEP, stream.write_all(b"lost")).await.unwrap();
    assert_held(&mut stream, "bytes flowed through a blackhole").await;

    lift(&running, &hole).await;
    assert_closed_without_answer(&mut stream).await;
}

#[tokio::test]
async fn drop_fault_cuts_an_open_upgraded_connection() {
    let (chat, cut) = (unique("chat"), unique("cut"));
    let upstream = upgrade_upstream().await;
    let running = serve(&chat, upstream, &[(&cut, "action = 'drop'")]).await;
    let mut stream = upgrade(addr(&running, &chat)).await;
    carry_echo(&mut stream, b"ping").await;

    activate(&running, &cut).await;

    assert_closed_without_answer(&mut stream).await;
}

#[tokio::test]
async fn delay_fault_delays_an_upgrade_and_the_bytes_on_it() {
    let (chat, slow) = (unique("chat"), unique("slow"));
    let upstream = upgrade_upstream().await;
    let delay = "action = 'delay'; latency = '100ms'";
    let running = serve(&chat, upstream, &[(&slow, delay)]).await;
    activate(&running, &slow).await;

    let started = Instant::now();
    let mut stream = upgrade(addr(&running, &chat)).await;
    assert!(started.elapsed() >= Duration::from_millis(100));
    let round_trip = carry_echo(&mut stream, b"ping").await;
    // Both directions are delayed, like a tcp stream's.
    assert!(round_trip >= Duration::from_millis(200));

    let text = metrics(&running).await;
    let delayed = by_outcome(&chat, "delayed");
    assert_eq!(sample(&text, "firedrill_requests_total", &delayed), 1.0);
}

#[tokio::test]
async fn an_upgrade_the_upstream_declines_gets_an_ordinary_response() {
    let chat = unique("chat");
    let upstream = upgrade_upstream().await;
    let running = serve(&chat, upstream, &[]).await;

    let mut stream = raw_request(
        addr(&running, &chat),
        "GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: other\r\n\r\n",
    )
    .await;
    let head = read_head(&mut stream).await.to_ascii_lowercase();

    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("x-kept: yes"), "{head}");
    for gone in ["x-hop:", "keep-alive:", "upgrade:"] {
        assert!(!head.contains(gone), "client saw `{gone}`: {head}");
    }
}

#[tokio::test]
async fn an_upgraded_connection_counts_as_active_while_it_is_open() {
    let chat = unique("chat");
    let upstream = upgrade_upstream().await;
    let running = serve(&chat, upstream, &[]).await;
    let labels = [("service", chat.as_str())];

    let mut stream = upgrade(addr(&running, &chat)).await;
    carry_echo(&mut stream, b"ping").await;
    let text = metrics(&running).await;
    assert_eq!(sample(&text, "firedrill_connections_active", &labels), 1.0);

    drop(stream);
    wait_for_sample(&running, "firedrill_connections_active", &labels, 0.0).await;
}

/// An upgraded connection keeps its place under `max_connections` while it
/// is open, and gives it back when it closes.
#[tokio::test]
async fn an_upgraded_connection_holds_its_place_under_max_connections() {
    let chat = unique("chat");
    let upstream = upgrade_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .service(&chat, "pangyo", "http", upstream, "max_connections = 1")
        .start()
        .await;
    let proxy = addr(&running, &chat);
    let labels = [("service", chat.as_str())];

    let mut upgraded = upgrade(proxy).await;
    carry_echo(&mut upgraded, b"ping").await;
    let mut refused = raw_get(proxy, "/x").await;
    let answer = read_to_close(&mut refused).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    carry_echo(&mut upgraded, b"still open").await;

    drop(upgraded);
    wait_for_sample(&running, "firedrill_connections_active", &labels, 0.0).await;
    let (status, _) = get(proxy, "/x").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn an_upgrade_reaches_the_upstream_in_origin_form_with_its_host() {
    let chat = unique("chat");
    let upstream = upgrade_upstream().await;
    let running = serve(&chat, upstream, &[]).await;

    let mut stream = raw_request(
        addr(&running, &chat),
        "GET /chat?room=7 HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let head = read_head(&mut stream).await.to_ascii_lowercase();

    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("x-seen-target: /chat?room=7\r\n"), "{head}");
    assert!(head.contains("x-seen-host: chat.example\r\n"), "{head}");
    carry_echo(&mut stream, b"ping").await;
}

// --- Metrics ------------------------------------------------------------------

#[tokio::test]
async fn request_metrics_count_every_outcome_and_injected_fault() {
    let talk = unique("talk");
    let dead = unique("dead");
    let [slow, fail, cut, hole] = ["slow", "fail", "cut", "hole"].map(unique);
    let upstream = http_upstream("talk-upstream").await;
    let (dead_upstream, _reserved) = unreachable_upstream();
    let running = PlanText::new(&["pangyo"])
        .http(&talk, "pangyo", upstream)
        .http(&dead, "pangyo", dead_upstream)
        .fault(&slow, &talk, "action = 'delay'; latency = '50ms'")
        .fault(&fail, &talk, "action = 'error'; status = 503")
        .fault(&cut, &talk, "action = 'drop'")
        .fault(&hole, &talk, "action = 'blackhole'")
        .start()
        .await;
    let talk_addr = addr(&running, &talk);

    assert_eq!(get(talk_addr, "/a").await.0, StatusCode::OK);
    activate(&running, &slow).await;
    assert_eq!(get(talk_addr, "/b").await.0, StatusCode::OK);
    lift(&running, &slow).await;
    activate(&running, &fail).await;
    assert_eq!(
        get(talk_addr, "/c").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    lift(&running, &fail).await;
    activate(&running, &cut).await;
    assert_dropped(&client(), &url(&running, &talk, "/d")).await;
    lift(&running, &cut).await;
    activate(&running, &hole).await;
    let mut held = raw_get(talk_addr, "/e").await;
    assert_held(&mut held, "held").await;
    lift(&running, &hole).await;
    assert_closed_without_answer(&mut held).await;
    assert_eq!(
        get(addr(&running, &dead), "/f").await.0,
        StatusCode::BAD_GATEWAY
    );

    let text = metrics(&running).await;
    for outcome in ["forwarded", "delayed", "error", "dropped", "blackholed"] {
        let labels = by_outcome(&talk, outcome);
        let count = sample(&text, "firedrill_requests_total", &labels);
        assert_eq!(count, 1.0, "{outcome} requests of {talk}");
    }
    let upstream_error = by_outcome(&dead, "upstream_error");
    assert_eq!(
        sample(&text, "firedrill_requests_total", &upstream_error),
        1.0
    );
    let labels = [("service", talk.as_str())];
    let durations = sample(&text, "firedrill_request_duration_seconds_count", &labels);
    // Dropped and blackholed requests never get headers, so no duration.
    assert_eq!(durations, 3.0);
    for (scenario, action) in [
        (&slow, "delay"),
        (&fail, "error"),
        (&cut, "drop"),
        (&hole, "blackhole"),
    ] {
        let labels = by_fault(&talk, scenario, action);
        let count = sample(&text, "firedrill_faults_injected_total", &labels);
        assert_eq!(count, 1.0, "{action} faults injected by {scenario}");
    }
}

#[tokio::test]
async fn requests_whose_clients_give_up_while_held_are_still_counted() {
    let taxi = unique("taxi");
    let (hole, slow) = (unique("hole"), unique("slow"));
    let upstream = http_upstream("taxi-upstream").await;
    let faults: [(&str, &str); 2] = [
        (&hole, "action = 'blackhole'"),
        (&slow, "action = 'delay'; latency = '1m'"),
    ];
    let running = serve(&taxi, upstream, &faults).await;
    let taxi_url = url(&running, &taxi, "/ride");

    activate(&running, &hole).await;
    assert_unanswered(&client(), &taxi_url).await;
    // Counted while the blackhole still holds: clients rarely wait it out.
    let blackholed = by_outcome(&taxi, "blackholed");
    wait_for_sample(&running, "firedrill_requests_total", &blackholed, 1.0).await;
    lift(&running, &hole).await;

    activate(&running, &slow).await;
    assert_unanswered(&client(), &taxi_url).await;
    let delayed = by_outcome(&taxi, "delayed");
    wait_for_sample(&running, "firedrill_requests_total", &delayed, 1.0).await;

    let text = metrics(&running).await;
    let labels = [("service", taxi.as_str())];
    let durations = sample(&text, "firedrill_request_duration_seconds_count", &labels);
    // Neither was answered, so neither has a duration.
    assert_eq!(durations, 0.0);
}

#[tokio::test]
async fn a_blackholed_request_is_counted_while_its_patient_client_is_still_held() {
    let taxi = unique("taxi");
    let hole = unique("hole");
    let upstream = http_upstream("taxi-upstream").await;
    let running = serve(&taxi, upstream, &[(&hole, "action = 'blackhole'")]).await;

    activate(&running, &hole).await;
    let mut held = raw_get(addr(&running, &taxi), "/ride").await;
    let blackholed = by_outcome(&taxi, "blackholed");
    wait_for_sample(&running, REQUESTS, &blackholed, 1.0).await;
    assert_held(&mut held, "a request already counted as blackholed").await;
    lift(&running, &hole).await;
    assert_closed_without_answer(&mut held).await;

    // Counted once, when it was decided, and never given a duration.
    let text = metrics(&running).await;
    assert_eq!(sample(&text, REQUESTS, &blackholed), 1.0);
    let labels = [("service", taxi.as_str())];
    let durations = sample(&text, "firedrill_request_duration_seconds_count", &labels);
    assert_eq!(durations, 0.0);
}

#[tokio::test]
async fn requests_are_counted_by_the_class_of_the_status_they_were_answered() {
    let pay = unique("pay");
    let dead = unique("dead");
    let (fail, hole) = (unique("fail"), unique("hole"));
    let upstream = http_upstream("pay-upstream").await;
    let (dead_upstream, _reserved) = unreachable_upstream();
    let running = PlanText::new(&["pangyo"])
        .http(&pay, "pangyo", upstream)
        .http(&dead, "pangyo", dead_upstream)
        .fault(&fail, &pay, "action = 'error'; status = 429")
        .fault(&hole, &pay, "action = 'blackhole'")
        .start()
        .await;
    let pay_addr = addr(&running, &pay);

    for path in ["/a", "/b", "/status/503", "/status/404"] {
        get(pay_addr, path).await;
    }
    activate(&running, &fail).await;
    assert_eq!(get(pay_addr, "/c").await.0, StatusCode::TOO_MANY_REQUESTS);
    lift(&running, &fail).await;
    activate(&running, &hole).await;
    let _held = raw_get(pay_addr, "/d").await;
    let blackholed = by_outcome(&pay, "blackholed");
    wait_for_sample(&running, REQUESTS, &blackholed, 1.0).await;
    assert_eq!(
        get(addr(&running, &dead), "/e").await.0,
        StatusCode::BAD_GATEWAY
    );

    let text = metrics(&running).await;
    let count = |service: &str, outcome: &str, code: &str| {
        let labels = [("service", service), ("outcome", outcome), ("code", code)];
        sample(&text, REQUESTS, &labels)
    };
    assert_eq!(count(&pay, "forwarded", "2xx"), 2.0);
    assert_eq!(count(&pay, "forwarded", "5xx"), 1.0);
    assert_eq!(count(&pay, "forwarded", "4xx"), 1.0);
    assert_eq!(count(&pay, "error", "4xx"), 1.0);
    assert_eq!(count(&dead, "upstream_error", "5xx"), 1.0);
    // A request that got no response has no `code` label.
    let unanswered: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(REQUESTS) && line.contains(&format!("\"{pay}\"")))
        .filter(|line| {
            line.contains("outcome=\"blackholed\"") || line.contains("outcome=\"dropped\"")
        })
        .collect();
    assert!(
        !unanswered.is_empty() && unanswered.iter().all(|line| !line.contains("code=")),
        "{unanswered:?}"
    );
}

#[tokio::test]
async fn metrics_come_sorted_and_the_same_on_every_scrape() {
    let (talk, pay, cache) = (unique("talk"), unique("pay"), unique("cache"));
    let running = PlanText::new(&["pangyo", "ansan"])
        .http(&talk, "pangyo", http_upstream("talk-upstream").await)
        .http(&pay, "ansan", http_upstream("pay-upstream").await)
        .tcp(&cache, "pangyo", echo_upstream().await)
        .start()
        .await;
    for path in ["/a", "/status/503", "/status/404"] {
        get(addr(&running, &talk), path).await;
        get(addr(&running, &pay), path).await;
    }
    carry_echo(&mut connect(addr(&running, &cache)).await, b"ping").await;
    // Other tests in this process move their own series between scrapes.
    let mine = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| {
                [&talk, &pay, &cache]
                    .iter()
                    .any(|s| line.contains(&format!("\"{s}\"")))
            })
            .map(str::to_owned)
            .collect()
    };
    let first = metrics(&running).await;
    let second = metrics(&running).await;
    assert!(mine(&first).len() > 20, "{first}");
    assert_eq!(mine(&first), mine(&second));

    // Families by name; each family's series by labels; a histogram's
    // buckets (in `le` order), `_sum` and `_count` together per label set.
    let names: Vec<&str> = second
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .collect();
    assert!(names.is_sorted(), "families out of order: {names:?}");
    for family in second.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let series: Vec<(&str, &str)> = family
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .map(|(series, _)| series.split_once('{').unwrap_or((series, "")))
            .collect();
        let histogram = family.contains(" histogram\n");
        let keys: Vec<(&str, u8, f64)> = series
            .iter()
            .map(|(name, labels)| {
                let (labels, le) = match labels.rsplit_once(",le=\"") {
                    Some((labels, le)) if histogram => {
                        (labels, le.trim_end_matches("\"}").parse().unwrap())
                    }
                    _ => (labels.trim_end_matches('}'), 0.0),
                };
                let part = if name.ends_with("_sum") {
                    1
                } else if name.ends_with("_count") {
                    2
                } else {
                    0
                };
                (labels, part, le)
            })
            .collect();
        assert!(
            keys.is_sorted_by(
                |a, b| (a.0, a.1) < (b.0, b.1) || (a.0, a.1) == (b.0, b.1) && a.2 < b.2
            ),
            "series out of order:\n{family}"
        );
    }
}

// --- Helpers ------------------------------------------------------------------

/// Starts firedrill with one http service in `pangyo` in front of
/// `upstream` and, per `(scenario, lines)`, a scenario with one fault that
/// selects the service and has those lines (see [`PlanText`]).
async fn serve(service: &str, upstream: SocketAddr, faults: &[(&str, &str)]) -> Running {
    PlanText::new(&["pangyo"])
        .http(service, "pangyo", upstream)
        .faults(service, faults)
        .start()
        .await
}

/// The labels of a request or connection count of `service` by `outcome`.
fn by_outcome<'a>(service: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 2] {
    [("service", service), ("outcome", outcome)]
}

/// The labels of `firedrill_faults_injected_total` for one fault.
fn by_fault<'a>(service: &'a str, scenario: &'a str, action: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("service", service),
        ("scenario", scenario),
        ("action", action),
    ]
}

/// Sends a GET to `url` and asserts that no response arrives within [`HOLD`].
async fn assert_unanswered(client: &Client<HttpConnector, Full<Bytes>>, url: &str) {
    let request = Request::get(url).body(Full::default()).unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(HOLD, client.request(request)).await;
    assert!(answer.is_err(), "GET {url} was answered: {answer:?}");
    assert!(started.elapsed() >= HOLD);
}

/// Asserts that nothing arrives on `stream`, not even a close, within [`HOLD`].
async fn assert_held(stream: &mut TcpStream, what: &str) {
    let read = closed_within(stream, HOLD).await;
    assert!(read.is_none(), "{what}: {read:?}");
}

/// Sends a request and collects the whole response body.
async fn fetch(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<Response<Bytes>, hyper_util::client::legacy::Error> {
    let response = within(STEP, client.request(request)).await?;
    let (parts, body) = response.into_parts();
    let body = within(STEP, body.collect())
        .await
        .expect("response body")
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// Sends a GET to `url` and collects the whole response; panics on
/// transport errors.
async fn fetch_get(client: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Response<Bytes> {
    let request = Request::get(url).body(Full::default()).unwrap();
    fetch(client, request).await.expect("GET is answered")
}

/// The `name: value` lines of the upstream's `/headers` answer.
fn header_lines(body: &Bytes) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Sends `GET /headers` with `fields` (each added, none replaced) through
/// a fresh http service; returns the status and the `/headers` lines, the
/// fields the upstream received.
async fn fields_seen_upstream(fields: &[(&str, &str)]) -> (StatusCode, Vec<String>) {
    let mail = unique("mail");
    let upstream = http_upstream("mail-upstream").await;
    let running = serve(&mail, upstream, &[]).await;
    let mut request = Request::get(url(&running, &mail, "/headers"));
    for (name, value) in fields {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::default()).unwrap();
    let response = fetch(&client(), request)
        .await
        .expect("request is answered");
    (response.status(), header_lines(response.body()))
}

/// Asserts that no field named in `gone` is among the `/headers` lines `seen`.
fn assert_not_seen(seen: &[String], gone: &[&str]) {
    for gone in gone {
        assert!(
            !seen
                .iter()
                .any(|line| line.starts_with(&format!("{gone}:"))),
            "upstream saw `{gone}`: {seen:?}"
        );
    }
}

/// Whether a client error says the connection closed before a response.
fn closed_before_response(error: &hyper_util::client::legacy::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Sends a GET to `url` and asserts that its connection closes without a response.
async fn assert_dropped(client: &Client<HttpConnector, Full<Bytes>>, url: &str) {
    let request = Request::get(url).body(Full::default()).unwrap();
    let error = fetch(client, request)
        .await
        .expect_err("a dropped request gets no response");
    assert!(
        closed_before_response(&error),
        "GET {url} failed otherwise: {error:?}"
    );
}

/// Opens a connection to `addr` upgraded to the `echo` protocol.
async fn upgrade(addr: SocketAddr) -> TcpStream {
    let mut stream = raw_request(
        addr,
        "GET /chat HTTP/1.1\r\nHost: chat\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    stream
}

/// An HTTP/1.1 upstream that answers `Upgrade: echo` requests with 101 and
/// then echoes bytes on the upgraded stream; the 101 says the request
/// target and Host it saw in `X-Seen-Target` and `X-Seen-Host`. Other
/// requests get 200 with
/// hop-by-hop response fields (`Connection: x-hop`, `X-Hop`, `Keep-Alive`)
/// and `X-Kept: yes`.
async fn upgrade_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    Ok::<_, Infallible>(upgrade_answer(request))
                });
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn upgrade_answer(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_echo = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"echo"));
    if !wants_echo {
        return Response::builder()
            .header(header::CONNECTION, "x-hop")
            .header("x-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("x-kept", "yes")
            .body(Full::new(Bytes::from_static(b"no upgrade\n")))
            .unwrap();
    }
    let target = request.uri().to_string();
    let host = request.headers().get(header::HOST).cloned();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = upgrade.await {
            let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = write.shutdown().await;
        }
    });
    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .header("x-seen-target", target)
        .body(Full::default())
        .unwrap();
    if let Some(host) = host {
        response.headers_mut().insert("x-seen-host", host);
    }
    response
}

/// An HTTP/1.1 upstream that answers one request per connection, then
/// closes it.
async fn one_answer_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"once\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A request body whose chunks the test sends one at a time.
struct ChannelBody(mpsc::Receiver<Bytes>);

fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (sender, receiver) = mpsc::channel(4);
    (sender, ChannelBody(receiver))
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// Reads data frames until at least `n` bytes have arrived.
async fn read_at_least(body: &mut Incoming, n: usize) -> Vec<u8> {
    let mut data = Vec::new();
    while data.len() < n {
        let frame = within(STEP, body.frame())
            .await
            .expect("the body ended early")
            .expect("the body failed");
        if let Some(chunk) = frame.data_ref() {
            data.extend_from_slice(chunk);
        }
    }
    data
}
