//! What an HTTP request looks like when it reaches the upstream, and what
//! the client gets when the request or the upstream's answer is malformed:
//! origin form and the client's Host (checked against a real nginx with
//! name-based virtual hosts), CONNECT and duplicate Host refused, upload
//! time kept apart from `timeout`, the client's framing errors blamed on
//! the client, a 101 nobody asked for, trailers, and upstream connections
//! reset with a 504.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use support::*;

/// Sends `request` on a new connection and reads the whole answer until
/// the connection closes (the request should say `Connection: close`).
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = connect(addr).await;
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(STEP, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// An h2c (prior knowledge) connection to `addr`.
async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect(addr).await;
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

async fn serve(name: &str, upstream: SocketAddr, lines: &str) -> firedrill::Running {
    PlanText::new(&["pangyo"])
        .service(name, "pangyo", "http", upstream, lines)
        .start()
        .await
}

fn outcome<'a>(service: &'a str, outcome: &'a str) -> [(&'a str, &'a str); 2] {
    [("service", service), ("outcome", outcome)]
}

/// An upstream that reads each request's whole body before it answers
/// 200 with the number of bytes it read.
async fn collecting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let body = request.into_body().collect().await;
                    let text = match body {
                        Ok(body) => format!("{}\n", body.to_bytes().len()),
                        Err(e) => format!("failed: {e}\n"),
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A body whose frames the test sends one at a time.
struct Piped(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

fn piped() -> (tokio::sync::mpsc::Sender<Frame<Bytes>>, Piped) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    (sender, Piped(receiver))
}

impl hyper::body::Body for Piped {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

// --- Origin form and Host, against nginx ---------------------------------------

#[tokio::test]
async fn nginx_sees_origin_form_and_the_clients_host_from_every_kind_of_client() {
    let Some(nginx) = Nginx::start().await else {
        return;
    };
    let web = unique("web");
    let running = serve(&web, nginx.addr, "").await;
    let proxy = addr(&running, &web);

    // Straight to nginx, the vhost answers: the check below is meaningful.
    let direct = exchange(
        nginx.addr,
        "GET /direct HTTP/1.1\r\nHost: myapp.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(direct.ends_with("myapp.example\n"), "{direct}");

    let answer = exchange(
        proxy,
        "GET /h1?q=1 HTTP/1.1\r\nHost: myapp.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("myapp.example\n"), "{answer}");
    assert_eq!(nginx.logged("GET /h1?q=1 HTTP/1.1").await, "myapp.example");

    // Absolute form names the host, whatever Host says (RFC 9112 3.2.2).
    let answer = exchange(
        proxy,
        "GET http://myapp.example/abs HTTP/1.1\r\nHost: elsewhere.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("myapp.example\n"), "{answer}");
    assert_eq!(nginx.logged("GET /abs HTTP/1.1").await, "myapp.example");

    // A second request on a kept-alive connection, over the same upstream
    // connection.
    let mut stream = connect(proxy).await;
    for path in ["/kept1", "/kept2"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: myapp.example\r\n\r\n");
        within(STEP, stream.write_all(request.as_bytes()))
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut body = [0u8; 14];
        within(STEP, stream.read_exact(&mut body)).await.unwrap();
        assert_eq!(&body, b"myapp.example\n");
        let line = format!("GET {path} HTTP/1.1");
        assert_eq!(nginx.logged(&line).await, "myapp.example");
    }

    // h2c: the host comes as :authority.
    let mut sender = h2c::<Empty<Bytes>>(proxy).await;
    let request = Request::builder()
        .uri("http://myapp.example/h2")
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "myapp.example\n");
    assert_eq!(nginx.logged("GET /h2 HTTP/1.1").await, "myapp.example");

    // OPTIONS * stays `*` (nginx refuses it before reading the Host:
    // `options_star_reaches_the_upstream_as_a_star_with_its_host` checks that).
    let answer = exchange(
        proxy,
        "OPTIONS * HTTP/1.1\r\nHost: myapp.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 "), "{answer}");
    nginx.logged("OPTIONS * HTTP/1.1").await;

    // An upgrade request goes on a connection of its own; nginx declines.
    let mut stream = connect(proxy).await;
    let request = "GET /ws HTTP/1.1\r\nHost: myapp.example\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(nginx.logged("GET /ws HTTP/1.1").await, "myapp.example");
}

#[tokio::test]
async fn nginx_over_tls_sees_origin_form_and_the_clients_host() {
    let folder = TempDir::new("nginx-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (
        folder.path().join("cert.pem"),
        folder.path().join("key.pem"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let Some(nginx) = Nginx::start_tls((&cert, &key)).await else {
        return;
    };
    let web = unique("web");
    let upstream = format!("https://{}", nginx.tls_addr.unwrap());
    let running = PlanText::new(&["pangyo"])
        .service_to(
            &web,
            "pangyo",
            "http",
            &upstream,
            "upstream_skip_verify = true",
        )
        .start()
        .await;
    let proxy = addr(&running, &web);

    // HTTP/1.1 clients, over their own upstream connection.
    let answer = exchange(
        proxy,
        "GET /tls-h1 HTTP/1.1\r\nHost: myapp.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("myapp.example\n"), "{answer}");
    assert_eq!(nginx.logged("GET /tls-h1 HTTP/1.1").await, "myapp.example");

    // h2c clients, over the pooled client.
    let mut sender = h2c::<Empty<Bytes>>(proxy).await;
    let request = Request::builder()
        .uri("http://myapp.example/tls-h2")
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    assert_eq!(body.to_bytes(), "myapp.example\n");
    assert_eq!(nginx.logged("GET /tls-h2 HTTP/1.1").await, "myapp.example");
}

#[tokio::test]
async fn an_h2c_client_without_a_host_reaches_the_upstream_with_its_authority() {
    let upstream = http_upstream("kakao").await;
    let talk = unique("talk");
    let running = serve(&talk, upstream, "").await;

    let mut sender = h2c::<Empty<Bytes>>(addr(&running, &talk)).await;
    let request = Request::builder()
        .uri("http://talk.example/headers")
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    let text = String::from_utf8(body.to_bytes().to_vec()).unwrap();
    assert!(text.contains("host: talk.example\n"), "{text}");
    assert_eq!(text.matches("host:").count(), 1, "{text}");
}

/// An upstream that answers each connection's first request with its
/// head, as received, for the body, and closes.
async fn recording_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        let Some(head) = read_request_head(&mut stream).await else {
            return;
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            head.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.write_all(&head).await;
    })
    .await
}

#[tokio::test]
async fn options_star_reaches_the_upstream_as_a_star_with_its_host() {
    let upstream = recording_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;
    let proxy = addr(&running, &web);

    let answer = exchange(
        proxy,
        "OPTIONS * HTTP/1.1\r\nHost: myapp.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(
        answer.contains("\r\n\r\noptions * http/1.1\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nhost: myapp.example\r\n"), "{answer}");

    let mut sender = h2c::<Empty<Bytes>>(proxy).await;
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some("myapp.example".parse().unwrap());
    parts.path_and_query = Some("*".parse().unwrap());
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri(http::Uri::from_parts(parts).unwrap())
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    let head = String::from_utf8(body.to_bytes().to_vec())
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("options * http/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nhost: myapp.example\r\n"), "{head}");
}

// --- Requests refused as the client's ------------------------------------------

#[tokio::test]
async fn connect_is_answered_405_without_reaching_the_upstream() {
    let (upstream, accepted, _closed) = counting_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;

    let answer = exchange(
        addr(&running, &web),
        "CONNECT db.example:5432 HTTP/1.1\r\nHost: db.example:5432\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nallow: "),
        "{answer}"
    );
    assert!(answer.contains("CONNECT is not supported"), "{answer}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 0);
    wait_for_sample(
        &running,
        "firedrill_requests_total",
        &outcome(&web, "client_error"),
        1.0,
    )
    .await;
}

#[tokio::test]
async fn two_host_fields_or_none_are_answered_400_and_counted_as_client_errors() {
    let (upstream, accepted, _closed) = counting_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;
    let proxy = addr(&running, &web);

    let two = exchange(
        proxy,
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(two.starts_with("HTTP/1.1 400"), "{two}");
    assert!(two.contains("more than one Host"), "{two}");
    let none = exchange(proxy, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(none.starts_with("HTTP/1.1 400"), "{none}");
    // HTTP/1.0 needs no Host.
    let old = exchange(proxy, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(old.starts_with("HTTP/1.0 200"), "{old}");

    assert_eq!(accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    wait_for_sample(
        &running,
        "firedrill_requests_total",
        &outcome(&web, "client_error"),
        2.0,
    )
    .await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_answered_400_and_counted_as_the_clients() {
    let upstream = collecting_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;

    let answer = exchange(
        addr(&running, &web),
        "POST /upload HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request body"), "{answer}");
    let text = metrics(&running).await;
    let client = sample(
        &text,
        "firedrill_requests_total",
        &outcome(&web, "client_error"),
    );
    let upstream = sample(
        &text,
        "firedrill_requests_total",
        &outcome(&web, "upstream_error"),
    );
    assert_eq!((client, upstream), (1.0, 0.0));
}

// --- timeout and uploads ---------------------------------------------------------

#[tokio::test]
async fn a_slow_upload_is_not_counted_against_the_timeout() {
    let upstream = collecting_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "timeout = '500ms'").await;
    let proxy = addr(&running, &web);
    let chunk = vec![b'x'; 10_000];

    // HTTP/1.1: six chunks, 300 ms apart, well over the timeout in all.
    let mut stream = connect(proxy).await;
    let head = "POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 60000\r\n\r\n";
    within(STEP, stream.write_all(head.as_bytes()))
        .await
        .unwrap();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        within(STEP, stream.write_all(&chunk)).await.unwrap();
    }
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // h2c: the same through the pooled upstream client.
    let (body, channel) = piped();
    let mut sender = h2c(proxy).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{proxy}/upload"))
        .body(channel)
        .unwrap();
    let response = tokio::spawn(sender.send_request(request));
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let data = Frame::data(Bytes::from(chunk.clone()));
        within(STEP, body.send(data)).await.unwrap();
    }
    drop(body);
    let response = within(STEP, response).await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = within(STEP, response.into_body().collect()).await.unwrap();
    assert_eq!(text.to_bytes(), "60000\n");
}

/// An upstream that accepts connections and never reads from them; its
/// receive buffer is small, so it soon takes no more. Hands each accepted
/// connection to the test.
async fn unreading_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(16).unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = accepted.send(stream);
        }
    });
    (addr, receiver)
}

/// Waits until the peer of `stream` has reset it, without reading what it
/// sent (a peer that merely closed would queue its FIN behind bytes this
/// side never reads); fails the test after `limit`.
async fn assert_reset(stream: &TcpStream, limit: Duration) {
    let reset = tokio::time::timeout(limit, async {
        loop {
            match stream.take_error() {
                Ok(Some(error)) => return error,
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(error) => return error,
            }
        }
    })
    .await;
    let reset = reset.unwrap_or_else(|_| panic!("the upstream connection is open after {limit:?}"));
    assert_eq!(reset.kind(), std::io::ErrorKind::ConnectionReset, "{reset}");
}

#[tokio::test]
async fn an_upstream_that_stops_taking_a_body_gets_a_504_and_its_connection_reset() {
    let (upstream, mut accepted) = unreading_upstream().await;
    let web = unique("web");
    let running = serve(
        &web,
        upstream,
        "timeout = '1s'; upstream_idle_timeout = '1s'",
    )
    .await;
    let size = 8 << 20;

    let stream = connect(addr(&running, &web)).await;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        let head = format!("POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: {size}\r\n\r\n");
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b'x'; size]).await
    });
    let mut answer = vec![0u8; 12];
    within(STEP, read.read_exact(&mut answer)).await.unwrap();
    assert_eq!(&answer, b"HTTP/1.1 504");
    writer.abort();

    let upstream_side = within(STEP, accepted.recv()).await.unwrap();
    assert_reset(&upstream_side, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_a_body_gets_a_504_and_its_connection_reset() {
    let (upstream, mut accepted) = unreading_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "timeout = '500ms'").await;

    // h2c, through the pooled client: a small body fits in the buffers.
    let mut sender = h2c(addr(&running, &web)).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("http://web.example/upload")
        .body(Full::new(Bytes::from(vec![b'x'; 100_000])))
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);

    let upstream_side = within(STEP, accepted.recv()).await.unwrap();
    assert_reset(&upstream_side, Duration::from_secs(5)).await;
}

// --- What comes back -----------------------------------------------------------

/// An upstream that answers every request with `101 Switching Protocols`.
async fn switching_upstream() -> SocketAddr {
    raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let answer = "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nraw bytes";
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.read(&mut buf).await;
    })
    .await
}

#[tokio::test]
async fn a_101_to_a_request_that_asked_for_no_upgrade_answers_502() {
    let upstream = switching_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;

    let answer = exchange(
        addr(&running, &web),
        "GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("asked for no upgrade"), "{answer}");
}

/// An upstream that answers with a chunked body and a `x-checksum`
/// trailer, to requests that take trailers.
async fn trailer_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_: Request<Incoming>| async move {
                    let (sender, body) = piped();
                    tokio::spawn(async move {
                        let _ = sender
                            .send(Frame::data(Bytes::from_static(b"payload")))
                            .await;
                        let mut trailers = HeaderMap::new();
                        trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
                        let _ = sender.send(Frame::trailers(trailers)).await;
                    });
                    let mut response = Response::new(body);
                    response
                        .headers_mut()
                        .insert("trailer", HeaderValue::from_static("x-checksum"));
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_trailers_reach_chunked_http1_and_h2_clients() {
    let upstream = trailer_upstream().await;
    let web = unique("web");
    let running = serve(&web, upstream, "").await;
    let proxy = addr(&running, &web);

    let answer = exchange(
        proxy,
        "GET / HTTP/1.1\r\nHost: web\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("payload"), "{answer}");
    assert!(
        answer.ends_with("0\r\nx-checksum: abc123\r\n\r\n"),
        "{answer:?}"
    );

    let mut sender = h2c::<Empty<Bytes>>(proxy).await;
    let request = Request::builder()
        .uri(format!("http://{proxy}/"))
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request)).await.unwrap();
    let body = within(STEP, response.into_body().collect()).await.unwrap();
    let trailers = body
        .trailers()
        .cloned()
        .expect("trailers reach the h2 client");
    assert_eq!(trailers["x-checksum"], "abc123");
    assert_eq!(body.to_bytes(), "payload");
}
