//! firedrill surviving bad upstreams and big streams: 100 MiB each way
//! through tcp and http services byte for byte, half-closes in both orders,
//! upstreams that refuse, reset mid-stream or hang, while a healthy
//! service in the same firedrill keeps answering, and a killed firedrill
//! that comes back in pass-through.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use firedrill::Running;
use support::*;

const MIB: u64 = 1024 * 1024;
/// Bytes each side sends in the byte-exact tests.
const BIG: u64 = 100 * MIB;
/// Generous bound for moving 800 MiB through a debug build on a shared
/// 2-core machine; only catches a hang.
const BIG_LIMIT: Duration = Duration::from_secs(300);

// --- Seeded streams -------------------------------------------------------------

/// Size of one piece of a [`Pattern`].
const PIECE: usize = 64 * 1024;
/// How many random pieces a [`Pattern`] draws from.
const PIECES: usize = 16;

/// A seeded pseudo-random byte stream of a fixed length: random 64 KiB
/// pieces in a random order. The receiver regenerates it from the seed and
/// compares byte for byte, which is both stricter and far cheaper than
/// hashing (std's hasher costs about 0.7 s per 100 MiB in a debug build,
/// comparing slices almost nothing), and it finds lost, repeated or
/// reordered bytes.
struct Pattern {
    pieces: Vec<Bytes>,
    order: SmallRng,
    left: u64,
}

impl Pattern {
    fn new(seed: u64, len: u64) -> Pattern {
        let mut rng = SmallRng::seed_from_u64(seed);
        let pieces = (0..PIECES)
            .map(|_| {
                let mut piece = vec![0u8; PIECE];
                rng.fill_bytes(&mut piece);
                Bytes::from(piece)
            })
            .collect();
        Pattern {
            pieces,
            order: rng,
            left: len,
        }
    }

    /// The next piece, shorter at the end; `None` once `len` bytes are out.
    fn next_piece(&mut self) -> Option<Bytes> {
        if self.left == 0 {
            return None;
        }
        let piece = &self.pieces[self.order.random_range(0..PIECES)];
        let n = (PIECE as u64).min(self.left) as usize;
        self.left -= n as u64;
        Some(piece.slice(..n))
    }
}

/// Checks received bytes against the [`Pattern`] they should follow.
struct Expect {
    pattern: Pattern,
    pending: Bytes,
    received: u64,
    mismatch: Option<u64>,
}

impl Expect {
    fn new(seed: u64, len: u64) -> Expect {
        Expect {
            pattern: Pattern::new(seed, len),
            pending: Bytes::new(),
            received: 0,
            mismatch: None,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.pending.is_empty() {
                match self.pattern.next_piece() {
                    Some(piece) => self.pending = piece,
                    None => {
                        // More bytes than were sent.
                        self.mismatch.get_or_insert(self.received);
                        self.received += data.len() as u64;
                        return;
                    }
                }
            }
            let n = data.len().min(self.pending.len());
            if data[..n] != self.pending[..n] && self.mismatch.is_none() {
                let at = data
                    .iter()
                    .zip(&self.pending[..n])
                    .position(|(a, b)| a != b);
                self.mismatch = Some(self.received + at.unwrap_or(0) as u64);
            }
            self.pending = self.pending.slice(n..);
            self.received += n as u64;
            data = &data[n..];
        }
    }

    /// How many bytes arrived, if they were exactly the expected ones.
    fn finish(mut self) -> Result<u64, String> {
        if let Some(at) = self.mismatch {
            return Err(format!(
                "bytes differ from offset {at} ({} received)",
                self.received
            ));
        }
        if !self.pending.is_empty() || self.pattern.next_piece().is_some() {
            return Err(format!("only {} bytes arrived", self.received));
        }
        Ok(self.received)
    }
}

/// Reads `stream` to its end, checking it against `expect`.
async fn receive(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    mut expect: Expect,
) -> Result<u64, String> {
    let mut buf = vec![0u8; PIECE];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return expect.finish(),
            Ok(n) => expect.feed(&buf[..n]),
            Err(e) => return Err(format!("read failed after {}: {e}", expect.received)),
        }
    }
}

/// Writes all of `pattern` to `stream`, then shuts its write half.
async fn send(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    mut pattern: Pattern,
) -> std::io::Result<()> {
    while let Some(piece) = pattern.next_piece() {
        stream.write_all(&piece).await?;
    }
    stream.shutdown().await
}

// --- Byte-exact tcp -------------------------------------------------------------

/// What the client asks of the byte-exact upstream, in a 33-byte header.
#[derive(Clone, Copy, Debug)]
struct Exchange {
    client_seed: u64,
    client_len: u64,
    upstream_seed: u64,
    upstream_len: u64,
    /// The upstream sends nothing until the client has shut its write half.
    upstream_waits: bool,
    /// The client sends nothing until the upstream has shut its write half.
    client_waits: bool,
}

impl Exchange {
    const HEADER: usize = 33;

    fn header(&self) -> [u8; Self::HEADER] {
        let mut header = [0u8; Self::HEADER];
        header[0..8].copy_from_slice(&self.client_seed.to_be_bytes());
        header[8..16].copy_from_slice(&self.client_len.to_be_bytes());
        header[16..24].copy_from_slice(&self.upstream_seed.to_be_bytes());
        header[24..32].copy_from_slice(&self.upstream_len.to_be_bytes());
        header[32] = u8::from(self.upstream_waits);
        header
    }

    fn parse(header: &[u8; Self::HEADER]) -> Exchange {
        let word = |i: usize| u64::from_be_bytes(header[i..i + 8].try_into().unwrap());
        Exchange {
            client_seed: word(0),
            client_len: word(8),
            upstream_seed: word(16),
            upstream_len: word(24),
            upstream_waits: header[32] == 1,
            client_waits: false,
        }
    }
}

/// An upstream that, per connection, reads an [`Exchange`] header, then
/// checks everything the client sends until EOF while sending its own
/// stream and shutting its write half. Reports, per client seed, how many
/// of the client's bytes arrived intact.
async fn exact_upstream() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(u64, Result<u64, String>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (reports, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let reports = reports.clone();
            tokio::spawn(async move {
                let mut header = [0u8; Exchange::HEADER];
                if stream.read_exact(&mut header).await.is_err() {
                    return;
                }
                let exchange = Exchange::parse(&header);
                let (mut read, mut write) = stream.into_split();
                let (eof, seen_eof) = oneshot::channel();
                let sender = tokio::spawn(async move {
                    if exchange.upstream_waits {
                        let _ = seen_eof.await;
                    }
                    let pattern = Pattern::new(exchange.upstream_seed, exchange.upstream_len);
                    send(&mut write, pattern).await
                });
                let expect = Expect::new(exchange.client_seed, exchange.client_len);
                let result = receive(&mut read, expect).await;
                let _ = eof.send(());
                let sent = sender.await.expect("the sender does not panic");
                let result = match sent {
                    Ok(()) => result,
                    Err(e) => Err(format!("upstream could not send: {e}")),
                };
                let _ = reports.send((exchange.client_seed, result));
            });
        }
    });
    (addr, received)
}

/// Runs one [`Exchange`] through `proxy`: returns how many of the
/// upstream's bytes arrived intact.
async fn exchange(proxy: SocketAddr, exchange: Exchange) -> Result<u64, String> {
    let mut stream = connect(proxy).await;
    stream.write_all(&exchange.header()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let (eof, seen_eof) = oneshot::channel();
    let sender = tokio::spawn(async move {
        if exchange.client_waits {
            let _ = seen_eof.await;
        }
        send(
            &mut write,
            Pattern::new(exchange.client_seed, exchange.client_len),
        )
        .await
    });
    let expect = Expect::new(exchange.upstream_seed, exchange.upstream_len);
    let result = receive(&mut read, expect).await;
    let _ = eof.send(());
    sender
        .await
        .unwrap()
        .map_err(|e| format!("client could not send: {e}"))?;
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_tcp_connections_carry_100_mib_each_way_byte_exact_through_half_closes() {
    let (upstream, mut reports) = exact_upstream().await;
    let service = unique("bulk");
    let running = PlanText::new(&["pangyo"])
        .tcp(&service, "pangyo", upstream)
        .start()
        .await;
    let proxy = addr(&running, &service);
    let base: u64 = rand::random::<u64>() & !0xff;
    let exchanges = [
        // Both sides send at once.
        (false, false),
        (false, false),
        // The client shuts its write half first; the upstream's 100 MiB
        // only start after that, and must all arrive.
        (true, false),
        // The upstream finishes first; the client's 100 MiB follow.
        (false, true),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (upstream_waits, client_waits))| Exchange {
        client_seed: base + 2 * i as u64,
        client_len: BIG,
        upstream_seed: base + 2 * i as u64 + 1,
        upstream_len: BIG,
        upstream_waits,
        client_waits,
    })
    .collect::<Vec<_>>();

    let runs = exchanges
        .iter()
        .map(|&e| tokio::spawn(exchange(proxy, e)))
        .collect::<Vec<_>>();
    let mut downstream = Vec::new();
    for run in runs {
        downstream.push(within(BIG_LIMIT, run).await.unwrap());
    }
    let mut upstream_side = HashMap::new();
    while upstream_side.len() < exchanges.len() {
        let (seed, result) = within(STEP, reports.recv()).await.expect("a report");
        upstream_side.insert(seed, result);
    }

    for (e, received) in exchanges.iter().zip(downstream) {
        assert_eq!(received, Ok(BIG), "upstream to client, {e:?}");
        assert_eq!(
            upstream_side[&e.client_seed],
            Ok(BIG),
            "client to upstream, {e:?}"
        );
    }
    let labels = |direction| [("service", service.as_str()), ("direction", direction)];
    let header = Exchange::HEADER as u64;
    let up = (4 * (BIG + header)) as f64;
    wait_for_sample(&running, "firedrill_bytes_total", &labels("upstream"), up).await;
    let down = (4 * BIG) as f64;
    wait_for_sample(
        &running,
        "firedrill_bytes_total",
        &labels("downstream"),
        down,
    )
    .await;
}

// --- Byte-exact http ------------------------------------------------------------

/// A request body that streams a [`Pattern`].
struct PatternBody(Pattern);

impl Body for PatternBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.next_piece().map(|piece| Ok(Frame::data(piece))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_service_streams_100_mib_up_and_back_byte_exact() {
    let service = unique("upload");
    let running = PlanText::new(&["pangyo"])
        .http(&service, "pangyo", http_upstream("upload").await)
        .start()
        .await;
    let seed = rand::random();
    let client = Client::builder(TokioExecutor::new()).build_http::<PatternBody>();
    let request = Request::builder()
        .method(Method::POST)
        .uri(url(&running, &service, "/echo"))
        .body(PatternBody(Pattern::new(seed, BIG)))
        .unwrap();

    let received = within(BIG_LIMIT, async {
        let response = client.request(request).await.expect("a response");
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut expect = Expect::new(seed, BIG);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body failed: {e}"))?;
            if let Some(data) = frame.data_ref() {
                expect.feed(data);
            }
        }
        expect.finish()
    })
    .await;

    assert_eq!(received, Ok(BIG));
}

// --- Upstreams that fail ----------------------------------------------------------

/// How the test upstreams misbehave.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Sends `head` and half of a 1 MiB body, then resets the connection.
    ResetMidBody,
    /// Sends half a response head, then resets the connection.
    ResetMidHead,
    /// Accepts and reads, never answers.
    Silent,
    /// tcp: sends 256 KiB, then resets the connection.
    ResetMidStream,
}

/// An upstream that accepts connections and misbehaves on each; keeps every
/// silent connection open while it lives.
async fn bad_upstream(how: Misbehaviour) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut silent = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            match how {
                Misbehaviour::Silent => silent.push(stream),
                Misbehaviour::ResetMidStream => {
                    tokio::spawn(async move {
                        let _ = stream.write_all(&vec![7u8; 256 * 1024]).await;
                        reset_and_close(stream);
                    });
                }
                Misbehaviour::ResetMidBody | Misbehaviour::ResetMidHead => {
                    tokio::spawn(async move {
                        read_request_head(&mut stream).await;
                        let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                        let sent = match how {
                            Misbehaviour::ResetMidBody => {
                                let _ = stream.write_all(head.as_bytes()).await;
                                stream.write_all(&vec![b'x'; 512 * 1024]).await
                            }
                            _ => stream.write_all(&head.as_bytes()[..20]).await,
                        };
                        let _ = sent;
                        // Let the bytes leave before the reset, so the
                        // proxy sees them first.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        reset_and_close(stream);
                    });
                }
            }
        }
    });
    addr
}

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset_and_close(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// One firedrill with a sick service in front of `upstream` (with extra
/// `lines`) and a healthy http and tcp service beside it.
struct Ward {
    running: Running,
    sick: String,
    healthy_http: String,
    healthy_tcp: String,
}

impl Ward {
    async fn start(protocol: &str, upstream: SocketAddr, lines: &str) -> Ward {
        let (sick, healthy_http, healthy_tcp) = (unique("sick"), unique("web"), unique("cache"));
        let running = PlanText::new(&["pangyo"])
            .service(&sick, "pangyo", protocol, upstream, lines)
            .http(&healthy_http, "pangyo", http_upstream("web").await)
            .tcp(&healthy_tcp, "pangyo", echo_upstream().await)
            .start()
            .await;
        Ward {
            running,
            sick,
            healthy_http,
            healthy_tcp,
        }
    }

    fn sick(&self) -> SocketAddr {
        addr(&self.running, &self.sick)
    }

    /// Runs `failing` `n` times at once, while the healthy services answer
    /// one request after another; returns the failures' results.
    async fn alongside<F, T>(&self, n: usize, failing: impl Fn() -> F) -> Vec<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let runs: Vec<_> = (0..n).map(|_| tokio::spawn(failing())).collect();
        let web = addr(&self.running, &self.healthy_http);
        let mut cache = connect(addr(&self.running, &self.healthy_tcp)).await;
        let mut results = Vec::new();
        for run in runs {
            let (status, body) = get(web, "/still").await;
            assert_eq!(
                (status, body.as_str()),
                (StatusCode::OK, "web answered GET /still\n")
            );
            carry_echo(&mut cache, b"still there").await;
            results.push(
                within(STEP, run)
                    .await
                    .expect("the failing client does not panic"),
            );
        }
        results
    }

    async fn outcomes(&self, outcome: &str) -> f64 {
        let text = metrics(&self.running).await;
        let labels = [("service", self.sick.as_str()), ("outcome", outcome)];
        sample(&text, "firedrill_requests_total", &labels)
            + sample(&text, "firedrill_connections_total", &labels)
    }
}

#[tokio::test]
async fn an_upstream_that_resets_mid_body_cuts_the_response_and_spares_other_services() {
    let ward = Ward::start("http", bad_upstream(Misbehaviour::ResetMidBody).await, "").await;
    let url = format!("http://{}/big", ward.sick());
    let results = ward
        .alongside(10, || {
            let url = url.clone();
            async move {
                let response = client()
                    .request(Request::get(&url).body(Default::default()).unwrap())
                    .await
                    .map_err(|e| format!("no response: {e}"))?;
                let status = response.status();
                let body = response.into_body().collect().await;
                Ok::<_, String>((status, body.map(|b| b.to_bytes().len())))
            }
        })
        .await;
    for result in results {
        // Either the 200 arrived and its body broke off, or the reset came
        // before the head was forwarded and the proxy answered 502.
        match result {
            Ok((StatusCode::OK, body)) => assert!(body.is_err(), "a cut body ended cleanly"),
            Ok((status, _)) => assert_eq!(status, StatusCode::BAD_GATEWAY),
            Err(e) => panic!("the proxy forwarded no head and no 502: {e}"),
        }
    }
}

#[tokio::test]
async fn an_upstream_that_resets_mid_head_answers_502_and_spares_other_services() {
    let ward = Ward::start("http", bad_upstream(Misbehaviour::ResetMidHead).await, "").await;
    let sick = ward.sick();
    let results = ward.alongside(10, move || get(sick, "/half")).await;
    for (status, body) in results {
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert!(body.contains(&format!("service `{}`", ward.sick)), "{body}");
    }
    assert_eq!(ward.outcomes("upstream_error").await, 10.0);
}

#[tokio::test]
async fn a_silent_http_upstream_answers_504_after_the_timeout_and_spares_other_services() {
    let upstream = bad_upstream(Misbehaviour::Silent).await;
    let ward = Ward::start("http", upstream, "timeout = '300ms'").await;
    let sick = ward.sick();
    let started = Instant::now();
    let results = ward.alongside(10, move || get(sick, "/anyone")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    for (status, body) in results {
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
        assert!(body.contains("within 300ms"), "{body}");
    }
}

#[tokio::test]
async fn a_refusing_http_upstream_answers_502_and_spares_other_services() {
    let (upstream, _reserved) = unreachable_upstream();
    let ward = Ward::start("http", upstream, "").await;
    let sick = ward.sick();
    let results = ward.alongside(10, move || get(sick, "/anyone")).await;
    for (status, body) in results {
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    }
}

/// Reads `stream` until the proxy closes or resets it; how many bytes came.
async fn read_until_closed(mut stream: TcpStream) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[tokio::test]
async fn a_tcp_upstream_that_resets_mid_stream_closes_the_client_and_spares_other_services() {
    let ward = Ward::start("tcp", bad_upstream(Misbehaviour::ResetMidStream).await, "").await;
    let sick = ward.sick();
    let results = ward
        .alongside(10, move || async move {
            read_until_closed(connect(sick).await).await
        })
        .await;
    for received in results {
        assert!(
            received <= 256 * 1024,
            "{received} bytes from a 256 KiB upstream"
        );
    }
}

#[tokio::test]
async fn a_tcp_upstream_that_does_not_accept_closes_the_client_after_connect_timeout() {
    let (upstream, _queue) = unresponsive_upstream().await;
    let ward = Ward::start("tcp", upstream, "connect_timeout = '300ms'").await;
    let sick = ward.sick();
    let started = Instant::now();
    let results = ward
        .alongside(10, move || async move {
            read_until_closed(connect(sick).await).await
        })
        .await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(results, vec![0; 10]);
    assert_eq!(ward.outcomes("upstream_error").await, 10.0);
}

#[tokio::test]
async fn a_refusing_tcp_upstream_closes_the_client_and_spares_other_services() {
    let (upstream, _reserved) = unreachable_upstream();
    let ward = Ward::start("tcp", upstream, "").await;
    let sick = ward.sick();
    let results = ward
        .alongside(10, move || async move {
            read_until_closed(connect(sick).await).await
        })
        .await;
    assert_eq!(results, vec![0; 10]);
}

// --- Faults are never persisted -------------------------------------------------

#[tokio::test]
async fn a_firedrill_killed_mid_blackout_restarts_in_pass_through_and_says_so() {
    let dir = TempDir::new("restart");
    let plan = dir.path().join("plan.toml");
    let text = PlanText::new(&["pangyo"])
        .http("web", "pangyo", http_upstream("web").await)
        .tcp("cache", "pangyo", echo_upstream().await)
        .scenario_with(
            "pangyo-fire",
            "max_duration = '30m'",
            &["datacenter = 'pangyo'; action = 'blackhole'"],
        );
    std::fs::write(&plan, text.toml()).unwrap();

    let mut first = Binary::run(&plan, &["--threads", "1"]);
    let (status, body) = first
        .admin(Method::POST, "/faults/pangyo-fire", "")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let held = tokio::time::timeout(
        Duration::from_millis(300),
        get(first.service("web"), "/dark"),
    )
    .await;
    assert!(held.is_err(), "the blackhole answered: {held:?}");
    first.kill();

    let second = Binary::run(&plan, &["--threads", "1"]);
    let log = second.log_with("faults are never persisted").await;
    assert!(
        log.contains("faults are never persisted: firedrill starts in pass-through"),
        "{log}"
    );
    let (status, faults) = second.admin(Method::GET, "/faults", "").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(faults["active"], serde_json::json!([]), "{faults}");
    let (status, body) = get(second.service("web"), "/light").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "web answered GET /light\n")
    );
    let mut cache = connect(second.service("cache")).await;
    carry_echo(&mut cache, b"still here").await;
}
