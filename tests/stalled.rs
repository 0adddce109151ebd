//! Streaming responses whose client has stopped reading: a `drop` or a
//! `blackhole` that comes and goes while the response is stalled by
//! backpressure still cuts it, over HTTP/1.1 (the connection closes) and
//! h2 (the stream is reset); the rest of the body never arrives.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use firedrill::Running;
use support::*;

/// The size of the download: far more than every buffer on the way holds.
const TOTAL: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// A firedrill whose service `dl` leads to a [`TOTAL`]-byte download, with
/// the scenarios `cut` (a drop) and `dark` (a blackhole).
async fn serve() -> (Running, String) {
    let service = unique("dl");
    let running = PlanText::new(&["pangyo"])
        .http(&service, "pangyo", download_upstream().await)
        .scenario("cut", &[&format!("service = '{service}'; action = 'drop'")])
        .scenario(
            "dark",
            &[&format!("service = '{service}'; action = 'blackhole'")],
        )
        .start()
        .await;
    (running, service)
}

#[tokio::test]
async fn a_drop_that_comes_and_goes_while_an_http1_response_is_stalled_cuts_it() {
    let (running, service) = serve().await;
    let mut download = Http1Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    activate(&running, "cut").await;
    lift(&running, "cut").await;
    download.assert_cut().await;
    assert_injected_once(&running, &service, "cut", "drop").await;
}

#[tokio::test]
async fn a_blackhole_that_comes_and_goes_while_an_http1_response_is_stalled_cuts_it() {
    let (running, service) = serve().await;
    let mut download = Http1Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    activate(&running, "dark").await;
    lift(&running, "dark").await;
    download.assert_cut().await;
    assert_injected_once(&running, &service, "dark", "blackhole").await;
}

/// Both publishes happen before any connection task runs (tests run on one
/// thread), so a look at the current rules alone would see nothing.
#[tokio::test]
async fn a_drop_that_comes_and_goes_between_two_looks_still_cuts_a_stalled_response() {
    let (running, service) = serve().await;
    let mut download = Http1Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    running.engine().activate("cut", None, "test").unwrap();
    running.engine().lift("cut", "test").unwrap();
    download.assert_cut().await;
    assert_injected_once(&running, &service, "cut", "drop").await;
}

#[tokio::test]
async fn a_drop_that_comes_and_goes_while_an_h2_response_is_stalled_resets_its_stream() {
    let (running, service) = serve().await;
    let mut download = H2Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    activate(&running, "cut").await;
    lift(&running, "cut").await;
    download.assert_reset().await;
    assert_injected_once(&running, &service, "cut", "drop").await;
}

#[tokio::test]
async fn a_blackhole_that_comes_and_goes_while_an_h2_response_is_stalled_resets_its_stream() {
    let (running, service) = serve().await;
    let mut download = H2Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    activate(&running, "dark").await;
    lift(&running, "dark").await;
    download.assert_reset().await;
    assert_injected_once(&running, &service, "dark", "blackhole").await;
}

/// A response a blackhole holds can never finish: shutdown closes it at
/// once instead of waiting out the grace period.
#[tokio::test]
async fn shutdown_closes_a_response_a_blackhole_holds_at_once() {
    let (running, service) = serve().await;
    let mut download = Http1Download::start(&running, &service).await;
    wait_for_stall(&running, &service).await;
    activate(&running, "dark").await;
    let shutdown = tokio::spawn(running.shutdown(Duration::from_secs(60)));
    download.assert_cut().await;
    let cut = within(STEP, shutdown).await.unwrap();
    assert_eq!(cut, 0, "nothing was left for the deadline");
}

/// How long the whole rest of the download may take once reading resumes.
const RESUME: Duration = Duration::from_secs(60);

/// A raw HTTP/1.1 client that has read the head and a little of the body,
/// then stopped reading.
struct Http1Download {
    stream: TcpStream,
    /// Body bytes read so far.
    received: u64,
}

impl Http1Download {
    async fn start(running: &Running, service: &str) -> Http1Download {
        let mut stream = connect(addr(running, service)).await;
        let request = "GET /download HTTP/1.1\r\nhost: dl\r\n\r\n";
        within(STEP, stream.write_all(request.as_bytes()))
            .await
            .unwrap();
        let mut read = Vec::new();
        let head_end = loop {
            let mut buf = [0u8; 4096];
            let n = within(STEP, stream.read(&mut buf)).await.unwrap();
            assert!(n > 0, "the response head arrives");
            read.extend_from_slice(&buf[..n]);
            if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&read[..head_end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains(&format!("content-length: {TOTAL}")), "{head}");
        Http1Download {
            stream,
            received: (read.len() - head_end) as u64,
        }
    }

    /// Reads on until the connection ends: it must end before the whole
    /// body has come.
    async fn assert_cut(&mut self) {
        let mut buf = vec![0u8; CHUNK];
        let end = within(RESUME, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) => return Ok(()),
                    Ok(n) => self.received += n as u64,
                    Err(e) => return Err(e),
                }
                // Kept alive after a whole body: nothing ends it.
                if self.received >= TOTAL {
                    return Ok(());
                }
            }
        })
        .await;
        assert!(
            self.received < TOTAL,
            "the whole body arrived after the fault ({} bytes, {end:?})",
            self.received
        );
        eprintln!("cut after {} of {TOTAL} bytes: {end:?}", self.received);
    }
}

/// An h2c client (prior knowledge) with small flow-control windows that has
/// read a little of the body, then stopped reading.
struct H2Download {
    body: Incoming,
    received: u64,
}

impl H2Download {
    async fn start(running: &Running, service: &str) -> H2Download {
        let stream = connect(addr(running, service)).await;
        let handshake = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(1024 * 1024)
            .handshake(TokioIo::new(stream));
        let (mut sender, connection) = within(STEP, handshake).await.unwrap();
        tokio::spawn(connection);
        let request = Request::get(format!("http://{}/download", addr(running, service)))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = within(STEP, sender.send_request(request)).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        let mut download = H2Download {
            body: response.into_body(),
            received: 0,
        };
        while download.received < CHUNK as u64 {
            let frame = within(STEP, download.body.frame()).await;
            let frame = frame.expect("the body goes on").expect("the body is whole");
            download.received += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        download
    }

    /// Reads on until the stream ends: it must be reset before the whole
    /// body has come.
    async fn assert_reset(&mut self) {
        let end = within(RESUME, async {
            loop {
                match self.body.frame().await {
                    None => return Ok(()),
                    Some(Ok(frame)) => {
                        self.received += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    Some(Err(e)) => return Err(e),
                }
            }
        })
        .await;
        assert!(
            self.received < TOTAL,
            "the whole body arrived after the fault ({} bytes)",
            self.received
        );
        assert!(end.is_err(), "the stream is reset, not ended: {end:?}");
        eprintln!("reset after {} of {TOTAL} bytes: {end:?}", self.received);
    }
}

/// Waits until the response no longer moves: the proxy has stopped reading
/// it from the upstream, as every buffer up to the client is full.
async fn wait_for_stall(running: &Running, service: &str) {
    let labels = [("service", service), ("direction", "downstream")];
    let moved = || async { sample(&metrics(running).await, "firedrill_bytes_total", &labels) };
    let stalled = within(STEP, async {
        let mut last = moved().await;
        loop {
            // Long enough for a flowing response to move on.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = moved().await;
            if now == last && now > 0.0 {
                return now;
            }
            last = now;
        }
    })
    .await;
    assert!(stalled < TOTAL as f64, "the download stalls before its end");
}

async fn assert_injected_once(running: &Running, service: &str, scenario: &str, action: &str) {
    let labels = [
        ("service", service),
        ("scenario", scenario),
        ("action", action),
    ];
    let text = metrics(running).await;
    assert_eq!(
        sample(&text, "firedrill_faults_injected_total", &labels),
        1.0,
        "the {action} is counted once"
    );
}

/// An HTTP/1.1 upstream that answers every request with [`TOTAL`] zero
/// bytes, sent as the client takes them.
async fn download_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Zeros { left: TOTAL }))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// `left` zero bytes, a chunk at a time.
struct Zeros {
    left: u64,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK as u64);
        self.left -= n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}
