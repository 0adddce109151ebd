//! Shared helpers for the integration tests: real upstream servers on
//! 127.0.0.1:0, a started firedrill, and small clients. Every network wait
//! goes through [`within`] so no test can hang.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use firedrill::Running;

/// The longest any single network step may take in a test.
pub const STEP: Duration = Duration::from_secs(10);

/// Runs `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

/// A name no other test in this process uses (metrics are process-wide).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Parses a plan and starts firedrill on it.
pub async fn start(plan: &str) -> Running {
    let plan = firedrill::config::parse(plan, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    firedrill::start(plan).await.expect("firedrill starts")
}

/// A TCP echo server on an ephemeral loopback port.
pub async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// An HTTP/1.1 + h2c upstream that answers with `name` and understands:
/// - `/echo`: streams the request body back;
/// - `/headers`: lists the request headers it received, one `name: value` a line;
/// - `/sleep/MS`: answers after MS milliseconds;
/// - `/status/CODE`: answers with that status;
/// - anything else: `NAME answered METHOD PATH`.
pub async fn http_upstream(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(answer(&name, request).await) }
                });
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

async fn answer(name: &str, request: Request<Incoming>) -> Response<UpstreamBody> {
    let path = request.uri().path().to_owned();
    let text = |s: String| Full::new(Bytes::from(s)).map_err(|e| match e {}).boxed();
    if path == "/echo" {
        return Response::new(request.into_body().boxed());
    }
    if path == "/headers" {
        let mut lines = String::new();
        for (k, v) in request.headers() {
            lines += &format!("{}: {}\n", k, v.to_str().unwrap_or("?"));
        }
        return Response::new(text(lines));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Response::new(text(format!("{name} slept {ms}ms\n")));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let mut response = Response::new(text(format!("{name} status {code}\n")));
        *response.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
        return response;
    }
    Response::new(text(format!(
        "{name} answered {} {path}\n",
        request.method()
    )))
}

/// An HTTP/1.1 keep-alive client (pooled) for talking to the proxy.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request and collects the response (status, body as text).
pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    body: &str,
) -> Result<(StatusCode, String), hyper_util::client::legacy::Error> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = within(STEP, client.request(request)).await?;
    let status = response.status();
    let body = within(STEP, response.into_body().collect())
        .await
        .expect("response body")
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// GET `path` on `addr` with a fresh client; panics on transport errors.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    send(&client(), Method::GET, &format!("http://{addr}{path}"), "")
        .await
        .expect("request succeeds")
}

/// Calls the admin API and parses the JSON answer.
pub async fn admin(
    running: &Running,
    method: Method,
    path: &str,
    body: &str,
) -> (StatusCode, serde_json::Value) {
    let url = format!("http://{}{path}", running.admin_addr());
    let (status, text) = send(&client(), method, &url, body)
        .await
        .expect("admin API answers");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("admin answer is not JSON ({e}): {text}"));
    (status, json)
}

/// The Prometheus text from `/metrics`.
pub async fn metrics(running: &Running) -> String {
    let (status, text) = get(running.admin_addr(), "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    text
}

/// The value of one sample in Prometheus text, matching every `label="value"`
/// given; 0 when absent.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Writes `data` and reads back exactly as many bytes (through an echo).
pub async fn echo_round_trip(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(data).await?;
    let mut back = vec![0u8; data.len()];
    stream.read_exact(&mut back).await?;
    Ok(back)
}

/// Whether the peer has reset or closed the connection, waiting up to `limit`.
pub async fn closed_within(
    stream: &mut TcpStream,
    limit: Duration,
) -> Option<std::io::Result<usize>> {
    let mut buf = [0u8; 64];
    tokio::time::timeout(limit, stream.read(&mut buf))
        .await
        .ok()
}
