//! Shared helpers for the integration tests: plans written from short
//! specs, real upstream servers on 127.0.0.1:0, a started firedrill, small
//! clients, the admin calls and metric waits tests repeat, and child
//! processes that cannot outlive a test. Every network wait is bounded
//! (mostly through [`within`]) so no test can hang.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use firedrill::Running;

pub mod cli;
pub mod pki;
pub mod prometheus;
pub mod status;

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
    start_on(plan, firedrill::Workers::current()).await
}

/// Parses a plan and starts firedrill on it, its client connections on
/// `workers`.
pub async fn start_on(plan: &str, workers: firedrill::Workers) -> Running {
    let plan = firedrill::config::parse(plan, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    firedrill::start_with(plan, None, workers)
        .await
        .expect("firedrill starts")
}

// --- Plans --------------------------------------------------------------------

/// The TOML text of a plan, written from short specs: an admin API and every
/// service listen on 127.0.0.1:0. Where a method takes `lines`, they are the
/// `key = value` lines of one table joined with "; ", like
/// `"service = 'talk'; action = 'delay'; latency = '50ms'"`.
pub struct PlanText(String);

impl PlanText {
    /// An admin API and one datacenter, without settings, per name.
    pub fn new(datacenters: &[&str]) -> PlanText {
        let mut plan = PlanText("[admin]\nlisten = '127.0.0.1:0'\n".to_owned());
        for name in datacenters {
            plan = plan.datacenter(name, "");
        }
        plan
    }

    /// Like [`PlanText::new`], with further `[admin]` `lines` after its
    /// `listen` (like `"tokens = [{ name = 'lead', value = 'x' }]"`).
    pub fn with_admin(admin: &str, datacenters: &[&str]) -> PlanText {
        let mut plan = PlanText("[admin]\nlisten = '127.0.0.1:0'\n".to_owned()).lines(admin);
        for name in datacenters {
            plan = plan.datacenter(name, "");
        }
        plan
    }

    /// Adds `[datacenters.NAME]` with the given `lines` (may be empty).
    pub fn datacenter(self, name: &str, lines: &str) -> PlanText {
        self.table(&format!("[datacenters.{name}]"), lines)
    }

    /// Adds `[services.NAME]` for a `protocol` service in front of
    /// `upstream`, plus any further `lines` (may be empty).
    pub fn service(
        self,
        name: &str,
        datacenter: &str,
        protocol: &str,
        upstream: SocketAddr,
        lines: &str,
    ) -> PlanText {
        let required = format!(
            "datacenter = '{datacenter}'; protocol = '{protocol}'; \
             listen = '127.0.0.1:0'; upstream = '{upstream}'"
        );
        self.table(&format!("[services.{name}]"), &required)
            .lines(lines)
    }

    /// Like [`PlanText::service`], with the upstream written as given
    /// (like `"https://127.0.0.1:9001"`).
    pub fn service_to(
        self,
        name: &str,
        datacenter: &str,
        protocol: &str,
        upstream: &str,
        lines: &str,
    ) -> PlanText {
        let required = format!(
            "datacenter = '{datacenter}'; protocol = '{protocol}'; \
             listen = '127.0.0.1:0'; upstream = '{upstream}'"
        );
        self.table(&format!("[services.{name}]"), &required)
            .lines(lines)
    }

    /// Adds an http service in front of `upstream`.
    pub fn http(self, name: &str, datacenter: &str, upstream: SocketAddr) -> PlanText {
        self.service(name, datacenter, "http", upstream, "")
    }

    /// Adds a tcp service in front of `upstream`.
    pub fn tcp(self, name: &str, datacenter: &str, upstream: SocketAddr) -> PlanText {
        self.service(name, datacenter, "tcp", upstream, "")
    }

    /// Adds a scenario with one `[[faults]]` table per entry of `faults`,
    /// each written as its `lines`.
    pub fn scenario(self, name: &str, faults: &[&str]) -> PlanText {
        self.scenario_with(name, "", faults)
    }

    /// Like [`PlanText::scenario`], with the scenario's own `lines` first
    /// (like `"description = '...'; max_duration = '5m'"`).
    pub fn scenario_with(self, name: &str, lines: &str, faults: &[&str]) -> PlanText {
        let mut plan = self.table(&format!("[scenarios.{name}]"), lines);
        for fault in faults {
            plan = plan.table(&format!("[[scenarios.{name}.faults]]"), fault);
        }
        plan
    }

    /// Adds a scenario with one fault that selects `service` and has the
    /// further `lines` (like `"action = 'drop'"`).
    pub fn fault(self, scenario: &str, service: &str, lines: &str) -> PlanText {
        self.scenario(scenario, &[&format!("service = '{service}'; {lines}")])
    }

    /// The plan as TOML.
    pub fn toml(&self) -> &str {
        &self.0
    }

    /// Parses the plan and starts firedrill on it.
    pub async fn start(&self) -> Running {
        start(&self.0).await
    }

    /// Parses the plan and starts firedrill on it, its client connections
    /// on `workers`.
    pub async fn start_on(&self, workers: firedrill::Workers) -> Running {
        start_on(&self.0, workers).await
    }

    fn table(mut self, header: &str, lines: &str) -> PlanText {
        self.0 += &format!("\n{header}\n");
        self.lines(lines)
    }

    fn lines(mut self, lines: &str) -> PlanText {
        for line in lines.split("; ").filter(|line| !line.is_empty()) {
            self.0 += &format!("{line}\n");
        }
        self
    }
}

/// An HTTP/1.1 upstream that counts the connections it accepts and says
/// when one closes.
pub async fn counting_upstream() -> (
    SocketAddr,
    std::sync::Arc<AtomicUsize>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&accepted);
    let (closed, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let closed = closed.clone();
            tokio::spawn(async move {
                let service = service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
                let _ = closed.send(());
            });
        }
    });
    (addr, accepted, receiver)
}

/// `n` clients in turn, each connecting for one `GET` with `Connection:
/// close` that must answer 200, and leaving a moment before the next, so
/// its upstream connection can be handed over.
pub async fn clients_one_request_each(addr: SocketAddr, n: usize) {
    for _ in 0..n {
        let mut stream = connect(addr).await;
        stream
            .write_all(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        within(STEP, stream.read_to_end(&mut answer)).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Where `service` of a running firedrill listens.
pub fn addr(running: &Running, service: &str) -> SocketAddr {
    running
        .service_addr(service)
        .unwrap_or_else(|| panic!("service `{service}` is in the plan"))
}

/// An `http://` URL for `path` on `service`.
pub fn url(running: &Running, service: &str, path: &str) -> String {
    format!("http://{}{path}", addr(running, service))
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
            tokio::spawn(serve_answers(builder.clone(), name.clone(), stream));
        }
    });
    addr
}

/// Like [`http_upstream`], over TLS with `config` (its ALPN decides
/// between HTTP/1.1 and h2). A failed handshake just closes the connection.
pub async fn https_upstream(
    name: &str,
    config: std::sync::Arc<rustls::ServerConfig>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let name = name.clone();
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(Ok(stream)) = tokio::time::timeout(STEP, acceptor.accept(stream)).await
                else {
                    return;
                };
                serve_answers(builder, name, stream).await;
            });
        }
    });
    addr
}

/// Serves one connection of [`http_upstream`] or [`https_upstream`]
/// named `name`, HTTP/1.1 or h2, until it ends.
async fn serve_answers<S>(builder: auto::Builder<TokioExecutor>, name: String, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request: Request<Incoming>| {
        let name = name.clone();
        async move { Ok::<_, Infallible>(answer(&name, request).await) }
    });
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
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

/// Activates `scenario` with the JSON `body` (empty for none), asserts that
/// the admin API answers 201, and returns its answer.
pub async fn activate_with(running: &Running, scenario: &str, body: &str) -> serde_json::Value {
    let path = format!("/faults/{scenario}");
    let (status, answer) = admin(running, Method::POST, &path, body).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "activating {scenario}: {answer}"
    );
    answer
}

/// Activates `scenario` and asserts that the admin API answers 201.
pub async fn activate(running: &Running, scenario: &str) {
    activate_with(running, scenario, "").await;
}

/// Lifts `scenario` and asserts that the admin API says it lifted it.
pub async fn lift(running: &Running, scenario: &str) {
    let path = format!("/faults/{scenario}");
    let (status, body) = admin(running, Method::DELETE, &path, "").await;
    assert_eq!(status, StatusCode::OK, "lifting {scenario}: {body}");
    assert_eq!(body["lifted"], true, "lifting {scenario}: {body}");
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

/// Polls `/metrics` until the sample of `name` with `labels` makes `done`
/// true, for at most `limit`. Returns the last value read (NaN if none),
/// whether or not it got there.
pub async fn poll_sample(
    running: &Running,
    name: &str,
    labels: &[(&str, &str)],
    limit: Duration,
    done: impl Fn(f64) -> bool,
) -> f64 {
    let mut last = f64::NAN;
    let _ = tokio::time::timeout(limit, async {
        loop {
            last = sample(&metrics(running).await, name, labels);
            if done(last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    last
}

/// Waits until the sample of `name` with `labels` is `value`; fails the
/// test after [`STEP`].
pub async fn wait_for_sample(running: &Running, name: &str, labels: &[(&str, &str)], value: f64) {
    let last = poll_sample(running, name, labels, STEP, |v| v == value).await;
    assert_eq!(last, value, "{name} {labels:?} after waiting {STEP:?}");
}

/// Reads a response head up to its blank line, one byte at a time so that
/// nothing after it is consumed.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = within(STEP, stream.read(&mut byte)).await.unwrap();
        assert_eq!(
            n,
            1,
            "connection closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A connection to `addr`.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let stream = within(STEP, TcpStream::connect(addr)).await;
    stream.expect("the proxy accepts connections")
}

/// A loopback address that refuses connections: a socket bound there
/// without listening. No other test can take the port while it lives.
pub fn unreachable_upstream() -> (SocketAddr, TcpSocket) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (socket.local_addr().unwrap(), socket)
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

/// A round trip through an echo upstream: asserts that `data` comes back
/// and returns how long that took.
pub async fn carry_echo(stream: &mut TcpStream, data: &[u8]) -> Duration {
    let sent = Instant::now();
    let back = within(STEP, echo_round_trip(stream, data)).await;
    assert_eq!(back.expect("echo round trip"), data);
    sent.elapsed()
}

// --- Child processes ------------------------------------------------------------

/// A child process that is killed (by its PID) if the test lets go of it
/// while it still runs, whichever way the test ends.
pub struct Process(pub Child);

impl Process {
    /// Waits up to `limit` for the process to exit; kills it and returns
    /// `None` if it does not.
    pub fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("polling a child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` ("TERM", "HUP", ...) to the process by its PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.0.id().to_string();
        let sent = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        assert!(
            sent.as_ref().is_ok_and(|s| s.success()),
            "kill -{signal} {pid}: {sent:?}"
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads a pipe to its end on a thread of its own, so the child never blocks.
pub fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// How a program run to its end went.
#[derive(Debug)]
pub struct Ran {
    /// `None` when it hung and was killed at the limit.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `command` to its end with its output captured and no input,
/// killing it by PID if it outlives `limit`.
pub fn run_captured(command: &mut Command, limit: Duration) -> Ran {
    run(command, None, limit)
}

// --- More helpers -------------------------------------------------------------

/// Lifts every active scenario (`DELETE /faults`) and returns the names
/// the admin API says it lifted.
pub async fn lift_all(running: &Running) -> Vec<String> {
    let (status, body) = admin(running, Method::DELETE, "/faults", "").await;
    assert_eq!(status, StatusCode::OK, "lifting everything: {body}");
    body["lifted"]
        .as_array()
        .unwrap_or_else(|| panic!("`lifted` lists scenarios: {body}"))
        .iter()
        .map(|name| name.as_str().expect("a scenario name").to_owned())
        .collect()
}

/// A loopback address where connecting hangs: a listener that never
/// accepts, with its accept queue full, so the kernel ignores further
/// handshakes. Keep the second part (the listener and the queued
/// connections) while the address is in use.
pub async fn unresponsive_upstream() -> (SocketAddr, (TcpListener, Vec<TcpStream>)) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connecting to the unresponsive upstream: {e}"),
            // This handshake went unanswered: the queue is full.
            Err(_) => return (addr, (listener, queued)),
        }
    }
    panic!("the accept queue of {addr} did not fill up");
}

// --- Real programs and scratch folders ------------------------------------------

/// Whether every one of `programs` is on PATH. A missing one fails the test
/// on CI (CI=true) and otherwise skips it with a hint to run `install`.
pub fn programs_present(programs: &[&str], install: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|program| !std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{missing} missing on CI; install with `{install}`");
    }
    eprintln!("skipping: {missing} not installed; install with `{install}`");
    false
}

/// A fresh folder under the system temp dir, removed with everything in it
/// on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Like [`run_captured`], with `input` written to the program's stdin
/// (then closed).
pub fn run_with_input(command: &mut Command, input: &[u8], limit: Duration) -> Ran {
    run(command, Some(input), limit)
}

fn run(command: &mut Command, input: Option<&[u8]>, limit: Duration) -> Ran {
    use std::io::Write;
    let started = Instant::now();
    let child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {:?}: {e}", command.get_program()));
    let mut child = Process(child);
    let stdout = collect(child.0.stdout.take().unwrap());
    let stderr = collect(child.0.stderr.take().unwrap());
    // A program that stops reading early must not block the test.
    let writer = input.map(|input| {
        let mut stdin = child.0.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let status = child.wait_within(limit);
    let elapsed = started.elapsed();
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    Ran {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        elapsed,
    }
}

// --- The firedrill binary -------------------------------------------------------

/// The real firedrill binary running a plan, its stderr log collected as it
/// comes; killed by its PID when dropped.
pub struct Binary {
    pub process: Process,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    /// Where the admin API listens, from its ready line.
    pub admin: SocketAddr,
    /// Where each service listens, by name, from its ready line.
    pub services: std::collections::HashMap<String, SocketAddr>,
}

impl Binary {
    /// Runs `firedrill run --config PLAN` plus `args` and waits (up to
    /// [`STEP`]) for the line it prints on stdout once it serves, which
    /// says where everything listens; panics with its log if it exits or
    /// stays silent instead.
    pub fn run(plan: &std::path::Path, args: &[&str]) -> Binary {
        use std::io::BufRead;
        let child = Command::new(env!("CARGO_BIN_EXE_firedrill"))
            .arg("run")
            .arg("--config")
            .arg(plan)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting firedrill");
        let mut process = Process(child);
        let stdout = process.0.stdout.take().expect("piped stdout");
        let stderr = process.0.stderr.take().expect("piped stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shared = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = shared.lock().unwrap();
                *log += &line;
                *log += "\n";
            }
        });
        let printed = lines(stdout);
        let deadline = Instant::now() + STEP;
        let line = loop {
            if let Ok(line) = printed.recv_timeout(Duration::from_millis(50)) {
                if line.starts_with("firedrill ready ") {
                    break line;
                }
                continue;
            }
            let exited = process.0.try_wait().expect("polling firedrill").is_some();
            if exited || Instant::now() >= deadline {
                std::thread::sleep(Duration::from_millis(100));
                panic!("firedrill did not start:\n{}", log.lock().unwrap());
            }
        };
        let (admin, services) = ready_addresses(&line);
        Binary {
            process,
            log,
            admin: admin.unwrap_or_else(|| panic!("no admin address in `{line}`")),
            services,
        }
    }

    /// Its log (stderr) so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its log once it has `text`, waiting up to [`STEP`]: the log is read
    /// on a thread of its own, so a line just written may not be in
    /// [`Binary::log`] yet. After that, the log as it is.
    pub async fn log_with(&self, text: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let log = self.log();
            if log.contains(text) || Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Where `service` listens.
    pub fn service(&self, name: &str) -> SocketAddr {
        *self
            .services
            .get(name)
            .unwrap_or_else(|| panic!("no service `{name}` in {:?}", self.services))
    }

    /// Calls its admin API and parses the JSON answer.
    pub async fn admin(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let url = format!("http://{}{path}", self.admin);
        let (status, text) = send(&client(), method, &url, body)
            .await
            .map_err(|e| format!("admin API: {e}"))?;
        let json = serde_json::from_str(&text)
            .map_err(|e| format!("admin answer is not JSON ({e}): {text}"))?;
        Ok((status, json))
    }

    /// Its resident set size in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.0.id()));
        status
            .ok()?
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// Kills it with SIGKILL (by PID) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }
}

// --- nginx as a real upstream -----------------------------------------------------

/// nginx serving two name-based virtual hosts on a loopback port: the
/// default server answers `default server`, `server_name myapp.example`
/// answers `myapp.example`. Its access log records each request line and
/// Host as `REQUEST|HOST`. Runs with its own prefix in a temp folder (as
/// root or not) and is killed by its PID when dropped.
pub struct Nginx {
    pub addr: SocketAddr,
    /// The same servers over TLS, when started with a certificate.
    pub tls_addr: Option<SocketAddr>,
    folder: TempDir,
    _process: Process,
}

/// A free loopback port: the caller binds it right after.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    /// Starts nginx, or returns `None` (after [`programs_present`]'s hint)
    /// when it is not installed.
    pub async fn start() -> Option<Nginx> {
        Nginx::launch(None).await
    }

    /// Like [`Nginx::start`], also serving TLS with the PEM files
    /// `(certificate, key)`.
    pub async fn start_tls(files: (&std::path::Path, &std::path::Path)) -> Option<Nginx> {
        Nginx::launch(Some(files)).await
    }

    async fn launch(tls: Option<(&std::path::Path, &std::path::Path)>) -> Option<Nginx> {
        let program = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(std::path::PathBuf::from)
            .find(|path| path.is_file());
        let program = match program {
            Some(program) => program,
            None if programs_present(&["nginx"], "bash .ci/install-test-deps") => "nginx".into(),
            None => return None,
        };
        let folder = TempDir::new("nginx");
        let dir = folder.path().display().to_string();
        let port = free_port();
        let tls_port = tls.map(|_| free_port());
        let ssl = match (tls, tls_port) {
            (Some((cert, key)), Some(tls_port)) => format!(
                "listen 127.0.0.1:{tls_port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                cert.display(),
                key.display()
            ),
            _ => String::new(),
        };
        let config = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
             error_log stderr;\nevents {{ worker_connections 64; }}\nhttp {{\n\
             log_format seen '$request|$http_host';\naccess_log {dir}/access.log seen;\n\
             client_body_temp_path {dir}/body;\nproxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fastcgi;\nuwsgi_temp_path {dir}/uwsgi;\n\
             scgi_temp_path {dir}/scgi;\n\
             server {{ listen 127.0.0.1:{port} default_server; server_name _;\n\
             {ssl}\nlocation / {{ return 200 \"default server\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{port}; server_name myapp.example; {ssl}\n\
             location / {{ return 200 \"myapp.example\\n\"; }} }}\n}}\n"
        );
        let file = folder.path().join("nginx.conf");
        std::fs::write(&file, config).unwrap();
        let child = Command::new(program)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(folder.path())
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting nginx");
        let mut process = Process(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + STEP;
        while TcpStream::connect(addr).await.is_err() {
            let exited = process.0.try_wait().expect("polling nginx");
            assert!(exited.is_none(), "nginx exited: {exited:?}");
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Some(Nginx {
            addr,
            tls_addr: tls_port.map(|port| SocketAddr::from(([127, 0, 0, 1], port))),
            folder,
            _process: process,
        })
    }

    /// Waits until the access log has a line `REQUEST|HOST` for `request`
    /// (like `GET /x HTTP/1.1`) and returns the Host it logged.
    pub async fn logged(&self, request: &str) -> String {
        let log = self.folder.path().join("access.log");
        let prefix = format!("{request}|");
        let mut text = String::new();
        let found = tokio::time::timeout(STEP, async {
            loop {
                text = std::fs::read_to_string(&log).unwrap_or_default();
                if let Some(line) = text.lines().find(|line| line.starts_with(&prefix)) {
                    return line[prefix.len()..].to_owned();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("nginx logged no `{request}`; its log:\n{text}"))
    }
}

// --- Engine events ---------------------------------------------------------

/// A subscription to the engine's events.
pub type EngineEvents = tokio::sync::broadcast::Receiver<firedrill::engine::Event>;

/// The engine's events from now on; subscribe before the action whose
/// events a test waits for.
pub fn engine_events(running: &Running) -> EngineEvents {
    running.engine().subscribe()
}

/// Waits at most [`STEP`] for the next event that `wanted` accepts, and
/// returns it; fails the test if none comes or if events were lost.
pub async fn wait_for_event(
    events: &mut EngineEvents,
    wanted: impl Fn(&firedrill::engine::Event) -> bool,
) -> firedrill::engine::Event {
    let found = tokio::time::timeout(STEP, async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return event,
                Ok(_) => {}
                Err(error) => panic!("engine events stopped: {error}"),
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("no such engine event within {STEP:?}"))
}

/// Waits at most [`STEP`] for the activation of `scenario` to end by
/// itself (expired or completed) and returns how.
pub async fn wait_for_end(
    events: &mut EngineEvents,
    scenario: &str,
) -> firedrill::engine::Happened {
    use firedrill::engine::Happened;
    let event = wait_for_event(events, |event| {
        event.scenario() == Some(scenario)
            && matches!(
                event.what,
                Happened::Expired { .. } | Happened::Completed { .. }
            )
    })
    .await;
    event.what
}

// --- Raw HTTP/1.1 on a socket, and connections that end -------------------------

/// Connects to `addr` and writes `request`, an HTTP/1.1 request written out.
pub async fn raw_request(addr: SocketAddr, request: &str) -> TcpStream {
    let mut stream = connect(addr).await;
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    stream
}

/// Connects to `addr` and writes an HTTP/1.1 GET of `path`.
pub async fn raw_get(addr: SocketAddr, path: &str) -> TcpStream {
    raw_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    )
    .await
}

/// Reads one response with a `content-length` body, leaving the connection
/// open: the head and the body as text.
pub async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let head = read_head(stream).await;
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; length];
    within(STEP, stream.read_exact(&mut body))
        .await
        .expect("reading a body");
    (head, String::from_utf8(body).unwrap())
}

/// Reads until the peer closes (or resets) the connection; everything read.
pub async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match within(STEP, stream.read(&mut buf)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Asserts that the peer closes or resets `stream` within `limit` without
/// sending anything; `what` names the connection in the failure.
pub async fn assert_closed(stream: &mut TcpStream, limit: Duration, what: &str) {
    match closed_within(stream, limit).await {
        None => panic!("{what}: still open after {limit:?}"),
        Some(Ok(0) | Err(_)) => {}
        Some(Ok(n)) => panic!("{what}: got {n} bytes instead of a close"),
    }
}

/// Asserts that the peer closes or resets `stream` within [`STEP`] without
/// sending anything.
pub async fn assert_closed_without_answer(stream: &mut TcpStream) {
    assert_closed(stream, STEP, "the connection").await;
}

/// The addresses in firedrill's ready line (`firedrill ready admin=ADDR
/// service.NAME=ADDR ...`): the admin API's and each service's by name.
pub fn ready_addresses(
    line: &str,
) -> (
    Option<SocketAddr>,
    std::collections::HashMap<String, SocketAddr>,
) {
    let mut admin = None;
    let mut services = std::collections::HashMap::new();
    for field in line.split_whitespace().skip(2) {
        let (key, value) = field
            .split_once('=')
            .unwrap_or_else(|| panic!("`{field}` in `{line}` is not KEY=ADDR"));
        let addr: SocketAddr = value
            .parse()
            .unwrap_or_else(|e| panic!("`{field}` in `{line}`: {e}"));
        match key.strip_prefix("service.") {
            Some(name) => {
                services.insert(name.to_owned(), addr);
            }
            None if key == "admin" => admin = Some(addr),
            None => panic!("unknown field `{field}` in `{line}`"),
        }
    }
    (admin, services)
}

/// Reads up to the blank line that ends an HTTP/1.1 request head, one byte
/// at a time so that nothing after it is consumed: for upstreams written
/// by hand. `None` when the connection ends first.
pub async fn read_request_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// The lines of `pipe` (a child's stdout or stderr), sent as they come by a
/// thread of its own; the receiver hangs up at the end of the output.
pub fn lines(pipe: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// A loopback upstream written by hand: runs `serve` on each connection it
/// accepts, in a task of its own.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

impl PlanText {
    /// Adds one scenario per `(scenario, lines)` of `faults`, each with one
    /// fault that selects `service` (see [`PlanText::fault`]).
    pub fn faults(self, service: &str, faults: &[(&str, &str)]) -> PlanText {
        faults.iter().fold(self, |plan, (scenario, lines)| {
            plan.fault(scenario, service, lines)
        })
    }
}
