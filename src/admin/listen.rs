//! Serving the admin router: an accept loop, with TLS handshakes when the
//! plan asks for TLS, in front of hyper-util's HTTP/1.1 + h2 server. A
//! client gets [`HEADER_TIMEOUT`] for its handshake, for each request's
//! headers and again for its body, so nobody holds connections open without
//! sending requests, with or without a token. Stops on the hard-stop token
//! and gives handlers the peer address.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::{Failures, PeerCertificate};
use super::ApiError;
use crate::body::{BoxError, Cut, Wrapped};
use crate::config::{self, AdminTls};
use crate::listen::activity::{Activity, Tracked};
use crate::listen::Clients;
use crate::tls::{self, TlsError};

/// How long a client may take to complete its TLS handshake, to send a
/// request's headers (HTTP/1.1), and to start a request on a connection
/// with none in flight; then its connection is closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest request body the admin API reads: axum's default limit,
/// which its extractors enforce on the bytes that arrive. A request that
/// declares more is answered 413 before anything is read.
const MAX_BODY: u64 = 2_097_152;

/// How long open admin connections may take to finish once `stop` fires.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Builds the admin API's TLS from its data, if it has any, logs how the
/// API is protected, then serves `router` on `listener` until `stop` is
/// cancelled.
pub fn serve(
    listener: TcpListener,
    router: Router,
    settings: &config::Admin,
    stop: CancellationToken,
) -> Result<(), TlsError> {
    let acceptor = settings
        .tls
        .as_ref()
        .map(|tls: &AdminTls| {
            let client_ca = tls.client_ca.as_ref();
            tls::server_config_of(&tls.cert, &tls.key, tls::ALPN_HTTP, client_ca)
                .map(TlsAcceptor::from)
        })
        .transpose()?;
    let names: Vec<&str> = settings.tokens.iter().map(|t| &*t.name).collect();
    tracing::info!(
        // Where it really listens: the plan may have said port 0.
        listen = %listener.local_addr().unwrap_or(settings.listen),
        tls = %match &settings.tls {
            None => "off",
            Some(tls) if tls.mutual() => "mutual",
            Some(_) => "on",
        },
        tokens = %if names.is_empty() { "none".to_owned() } else { names.join(",") },
        reads = %if !settings.protected() || settings.open_reads { "open" } else { "token" },
        "admin API listening (GET / for the status page, GET /scenarios, POST /faults/NAME, DELETE /faults, POST /reload, GET /metrics)"
    );
    tokio::spawn(accept(listener, router, acceptor, stop));
    Ok(())
}

async fn accept(
    listener: TcpListener,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    stop: CancellationToken,
) {
    let failures = Arc::new(Failures::new());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let clients = Clients::new(listener, "admin API", stop.clone());
    while let Some((stream, peer)) = clients.next().await {
        let connection = Connection {
            acceptor: acceptor.clone(),
            router: router.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            stop: stop.clone(),
            failures: Arc::clone(&failures),
        };
        tokio::spawn(connection.serve(stream, peer));
    }
    drop(clients);
    let _ = tokio::time::timeout(CLOSE_GRACE, graceful.shutdown()).await;
}

/// What one connection needs from its listener.
struct Connection {
    acceptor: Option<TlsAcceptor>,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    stop: CancellationToken,
    /// Wrong tokens presented to this listener, shared by its connections.
    failures: Arc<Failures>,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream, peer: SocketAddr) {
        let Some(acceptor) = self.acceptor.take() else {
            self.http(stream, peer, None).await;
            return;
        };
        let handshake = tokio::select! {
            () = self.stop.cancelled() => return,
            handshake = tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "admin TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "admin TLS handshake timed out");
                return;
            }
        };
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert))
            .map(PeerCertificate);
        self.http(stream, peer, certificate).await;
    }

    /// Serves requests on an open (and, for TLS, handshaken) connection.
    async fn http<S>(self, stream: S, peer: SocketAddr, certificate: Option<PeerCertificate>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let router = TowerToHyperService::new(self.router);
        let failures = self.failures;
        // Counts requests in flight, so a connection idle for the header
        // timeout (from its start, or since its last answer) is closed:
        // hyper's own timeout only starts with a request's first byte.
        let activity = Arc::new(Activity::new());
        let watched = Arc::clone(&activity);
        let service = service_fn(move |request: http::Request<Incoming>| {
            let busy = activity.begin();
            let answer = if declared_length(&request).is_some_and(|length| length > MAX_BODY) {
                // Answered at once; the unread body makes hyper close the
                // connection after the answer.
                tracing::debug!(%peer, "admin request declaring a body over {MAX_BODY} bytes refused");
                Answer::Now(ApiError::TooLarge.into_response())
            } else {
                let mut request = request.map(Deadline::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request.extensions_mut().insert(Arc::clone(&failures));
                if let Some(certificate) = &certificate {
                    request.extensions_mut().insert(certificate.clone());
                }
                Answer::Routed(router.call(request))
            };
            async move {
                let response = match answer {
                    Answer::Now(response) => response,
                    Answer::Routed(answer) => answer.await?,
                };
                Ok::<_, Infallible>(response.map(|body| Tracked::new(body, busy)))
            }
        });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = self.watcher.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                }
            }
            // Dropping the connection closes it.
            () = watched.idle_for(HEADER_TIMEOUT) => {
                tracing::debug!(%peer, "closing an admin connection that sent no request");
            }
            // A connection that did not close in the grace is cut.
            () = async { self.stop.cancelled().await; tokio::time::sleep(CLOSE_GRACE).await } => {}
        }
    }
}

/// An admin request's answer: one made before routing, or the router's.
enum Answer<F> {
    Now(axum::response::Response),
    Routed(F),
}

/// The `Content-Length` a request declares, if it declares a valid one.
fn declared_length<B>(request: &http::Request<B>) -> Option<u64> {
    let value = request.headers().get(http::header::CONTENT_LENGTH)?;
    value.to_str().ok()?.trim().parse().ok()
}

/// Why an admin request body was cut.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body did not arrive within {}",
    humantime::format_duration(HEADER_TIMEOUT)
)]
struct LateBody;

/// A request body that must end within [`HEADER_TIMEOUT`] of its
/// request's headers; after that it fails, the handler answers 400, and
/// hyper closes the connection, as the rest of the body is unread.
type Deadline = Wrapped<Incoming, BodyTimer>;

/// The timer of a [`Deadline`] body. Boxed: a request is moved through the
/// router, and admin requests are few.
struct BodyTimer(Pin<Box<Sleep>>);

impl Deadline {
    fn new(inner: Incoming) -> Deadline {
        Wrapped::wrap(
            inner,
            BodyTimer(Box::pin(tokio::time::sleep(HEADER_TIMEOUT))),
        )
    }
}

impl Cut for BodyTimer {
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        self.0
            .as_mut()
            .poll(cx)
            .map(|()| Box::new(LateBody) as BoxError)
    }
}

/// The subject common name of a DER certificate, if it has one.
fn common_name(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}
