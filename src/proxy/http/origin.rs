//! The upstream of an http service behind one interface, [`Upstreams`]: an
//! HTTP/1.1 client's requests go over its own upstream connection
//! (`sticky.rs`), an h2 client's share a pool, and upgrades open a
//! connection of their own. Every connection is opened by
//! `proxy/connect.rs`: plain TCP, or TLS for an `https://` upstream, the
//! connect timeout covering the handshake too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::{capture_connection, Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;
use tokio_util::task::TaskTracker;

use super::abort::{Abort, Outgoing, OverTcp};
use super::failure::Failure;
use super::sending::Sending;
use super::sticky::{self, Spares, Sticky};
use crate::proxy::connect::{connect, connect_tls, ConnectError};
use crate::proxy::{Counted, ServiceContext};
use crate::shutdown::Shutdown;
use crate::tls::UpstreamConnector;
use crate::topology::{Limits, Service};

/// A request body on its way upstream.
pub(super) type UpstreamBody = Sending<Counted<Incoming>>;

/// An upstream connection: plain, or TLS for an `https://` upstream.
type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// The upstream of one http service: how its requests and upgrades reach it.
pub(super) struct Upstreams {
    opener: Opener,
    /// The shared pool, for h2 clients, whose requests are multiplexed.
    pool: Client<Opener, UpstreamBody>,
    /// Opens the upstream connections that are not pooled, with the
    /// service's limits on response headers.
    http1: http1::Builder,
    /// Idle connections whose clients have gone, for new clients.
    spares: Arc<Spares>,
    /// Drives the connections that are not pooled.
    tracker: TaskTracker,
    /// Where pooled requests go: `https` for an `https://` upstream.
    scheme: Scheme,
    authority: Authority,
}

impl Upstreams {
    pub(super) fn new(
        context: &ServiceContext,
        authority: Authority,
        shutdown: &Shutdown,
    ) -> Upstreams {
        let service = &context.service;
        let limits = service.limits;
        let mut http1 = http1::Builder::new();
        http1.max_header_size(limits.max_header_bytes);
        if limits.max_headers != Limits::DEFAULT_MAX_HEADERS {
            http1.max_headers(limits.max_headers);
        }
        let mut pool = Client::builder(TokioExecutor::new());
        // Without a timer the pool never notices that a connection idles.
        pool.pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // The pooled client has no limit of its own for response
            // headers; its read buffer, which must hold them, is the bound.
            .http1_max_buf_size(limits.max_header_bytes);
        if limits.max_headers != Limits::DEFAULT_MAX_HEADERS {
            pool.http1_max_headers(limits.max_headers);
        }
        let opener = Opener {
            service: Arc::clone(service),
            tls: context.tls.upstream.clone(),
        };
        Upstreams {
            pool: pool.build(opener.clone()),
            opener,
            http1,
            spares: Spares::new(shutdown.workers.clone(), shutdown.draining.clone()),
            tracker: shutdown.tracker.clone(),
            scheme: match service.upstream_tls {
                Some(_) => Scheme::HTTPS,
                None => Scheme::HTTP,
            },
            authority,
        }
    }

    /// The upstream connection of a new client connection's own, empty
    /// until its first HTTP/1.1 request.
    pub(super) fn own(&self) -> Sticky {
        Sticky::new(Arc::clone(&self.spares))
    }

    /// Sends `request` upstream: over `own`, the client connection's own
    /// upstream connection, for an HTTP/1.1 client, or through the pool
    /// for an h2 client (`None`). Dropped on its way, a request with a
    /// body takes its upstream connection with it.
    pub(super) async fn send(
        &self,
        own: Option<&Sticky>,
        request: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failure> {
        if let Some(own) = own {
            return sticky::send(self, own, request).await;
        }
        let mut request = request;
        *request.uri_mut() = self.absolute(request.uri());
        // Which pooled connection a request with a body goes over, to
        // abort it if the request is given up.
        let body = !http_body::Body::is_end_stream(request.body());
        let captured = body.then(|| capture_connection(&mut request));
        let abandoned = Abandoned(captured.as_ref());
        let response = self
            .pool
            .request(request)
            .await
            .map_err(|e| Failure::from(&e))?;
        // hyper closes a connection that switched protocols itself.
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            abandoned.disarm();
        }
        Ok(response)
    }

    /// The target of an origin-form request for the pool, which connects
    /// to the URI's authority and writes origin form itself.
    fn absolute(&self, target: &Uri) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = target.path_and_query().cloned();
        Uri::from_parts(parts).expect("scheme, authority and path make a URI")
    }

    /// Opens an HTTP/1.1 connection of its own to the upstream and drives
    /// it on a task of its own. With `upgrades` the connection survives
    /// `101 Switching Protocols` and is relayed like a tcp connection,
    /// half-closes and all, so it closes as the relay says; without, it is
    /// [`Outgoing`].
    pub(super) async fn open(&self, upgrades: bool) -> Result<Sender, Failure> {
        let stream = self.opener.open().await?;
        if upgrades {
            let send = self.handshake(stream, true).await?;
            let abort = Abort::default();
            return Ok(Sender { send, abort });
        }
        let stream = Outgoing::new(stream);
        let abort = stream.abort().clone();
        let send = self.handshake(stream, false).await?;
        Ok(Sender { send, abort })
    }

    async fn handshake<S>(
        &self,
        stream: S,
        upgrades: bool,
    ) -> Result<SendRequest<UpstreamBody>, Failure>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = self
            .http1
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Exchange(e.to_string()))?;
        if upgrades {
            self.tracker.spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!("upstream upgrade connection ended: {e}");
                }
            });
        } else {
            self.tracker.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
        }
        Ok(sender)
    }
}

/// The sending half of an upstream HTTP/1.1 connection, and what aborts it.
pub(super) struct Sender {
    send: SendRequest<UpstreamBody>,
    pub(super) abort: Abort,
}

impl std::ops::Deref for Sender {
    type Target = SendRequest<UpstreamBody>;

    fn deref(&self) -> &Self::Target {
        &self.send
    }
}

impl std::ops::DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.send
    }
}

/// Opens connections to a service's upstream, for the pool and for
/// [`Upstreams::open`].
#[derive(Clone)]
struct Opener {
    service: Arc<Service>,
    tls: Option<UpstreamConnector>,
}

impl Opener {
    async fn open(&self) -> Result<Stream, ConnectError> {
        match &self.tls {
            None => connect(&self.service).await.map(Either::Left),
            Some(tls) => connect_tls(&self.service, tls).await.map(Either::Right),
        }
    }
}

type Opening =
    Pin<Box<dyn Future<Output = Result<TokioIo<Outgoing<Stream>>, ConnectError>> + Send>>;

/// The pool's connector: every pooled connection is [`Outgoing`].
impl tower_service::Service<Uri> for Opener {
    type Response = TokioIo<Outgoing<Stream>>;
    type Error = ConnectError;
    type Future = Opening;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// Connects to the service's upstream, whatever the pool's key says:
    /// it is always that upstream.
    fn call(&mut self, _: Uri) -> Self::Future {
        let opener = self.clone();
        Box::pin(async move {
            let stream = opener.open().await?;
            Ok(TokioIo::new(Outgoing::new(stream)))
        })
    }
}

impl OverTcp for Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Either::Left(tcp) => tcp,
            Either::Right(tls) => tls.get_ref().0,
        }
    }
}

impl Connection for Outgoing<Stream> {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.abort().clone())
    }
}

/// Aborts the pooled connection a request with a body went over when
/// dropped before [`Abandoned::disarm`]: a request given up (504, or the
/// client gone) takes its connection with it.
struct Abandoned<'a>(Option<&'a hyper_util::client::legacy::connect::CaptureConnection>);

impl Abandoned<'_> {
    /// The request got its answer; its connection lives on.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some(abort) = self.0.and_then(Abort::of) {
            abort.abort();
        }
    }
}
