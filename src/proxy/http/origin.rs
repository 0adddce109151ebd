//! Connections to the upstream: plain TCP, or TLS for an `https://`
//! upstream. The pooled client (h2 clients) and the connections of each
//! client's own (HTTP/1.1 clients, upgrades) both go through here, and
//! the connect timeout covers the TLS handshake too.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::abort::{Abort, Outgoing, OverTcp};
use super::failure::Failure;
use super::sending::Sending;
use super::Proxy;
use crate::proxy::connect::{connect, connect_tls};
use crate::proxy::Counted;
use crate::tls::UpstreamConnector;
use crate::topology::{Limits, Service};

/// A request body on its way upstream.
pub(super) type UpstreamBody = Sending<Counted<Incoming>>;

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

/// The pooled upstream client of a service, for h2 clients.
pub(super) enum Pooled {
    Plain(Client<PlainConnector, UpstreamBody>),
    Tls(Client<TimedConnector, UpstreamBody>),
}

impl Pooled {
    pub(super) fn new(service: &Service, upstream_tls: Option<&UpstreamConnector>) -> Pooled {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(service.connect_timeout));
        let mut builder = Client::builder(TokioExecutor::new());
        // Without a timer the pool never notices that a connection idles.
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            // The pooled client has no limit of its own for response
            // headers; its read buffer, which must hold them, is the bound.
            .http1_max_buf_size(service.limits.max_header_bytes);
        if service.limits.max_headers != Limits::DEFAULT_MAX_HEADERS {
            builder.http1_max_headers(service.limits.max_headers);
        }
        match upstream_tls {
            None => Pooled::Plain(builder.build(PlainConnector(connector))),
            Some(tls) => {
                connector.enforce_http(false);
                // hyper-rustls sets ALPN itself (to http/1.1 here) and
                // refuses a configuration that already has some.
                let mut config = (*tls.config).clone();
                config.alpn_protocols.clear();
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .with_server_name_resolver(FixedServerNameResolver::new(
                        tls.server_name.clone(),
                    ))
                    .enable_http1()
                    .wrap_connector(PlainConnector(connector));
                Pooled::Tls(builder.build(TimedConnector {
                    inner: https,
                    timeout: service.connect_timeout,
                }))
            }
        }
    }

    pub(super) fn request(&self, request: Request<UpstreamBody>) -> ResponseFuture {
        match self {
            Pooled::Plain(client) => client.request(request),
            Pooled::Tls(client) => client.request(request),
        }
    }
}

/// hyper-util's connector, its connections [`Outgoing`].
#[derive(Clone)]
pub(super) struct PlainConnector(HttpConnector);

type PlainConnecting = Pin<Box<dyn Future<Output = Result<Pipe, BoxError>> + Send>>;

impl tower_service::Service<Uri> for PlainConnector {
    type Response = Pipe;
    type Error = BoxError;
    type Future = PlainConnecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let stream = connecting.await?;
            Ok(TokioIo::new(Outgoing::new(stream.into_inner())))
        })
    }
}

/// hyper-rustls's connector with one limit on TCP connect and TLS
/// handshake together, as the plan's `connect_timeout` promises.
#[derive(Clone)]
pub(super) struct TimedConnector {
    inner: HttpsConnector<PlainConnector>,
    timeout: Duration,
}

type BoxError = Box<dyn Error + Send + Sync>;
type Pipe = TokioIo<Outgoing<TcpStream>>;
type Connecting = Pin<Box<dyn Future<Output = Result<MaybeHttpsStream<Pipe>, BoxError>> + Send>>;

impl tower_service::Service<Uri> for TimedConnector {
    type Response = MaybeHttpsStream<Pipe>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(result) => result,
                Err(_) => Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()),
            }
        })
    }
}

impl Proxy {
    /// Opens an HTTP/1.1 connection of its own to the upstream, over TLS
    /// for an `https://` upstream, and drives it on a task of its own.
    /// With `upgrades` the connection survives `101 Switching Protocols`.
    pub(super) async fn open_upstream(&self, upgrades: bool) -> Result<Sender, Failure> {
        let service = &self.context.service;
        match &self.context.tls.upstream {
            None => self.drive(connect(service).await?, upgrades).await,
            Some(tls) => self.drive(connect_tls(service, tls).await?, upgrades).await,
        }
    }

    /// Drives a new connection; one for plain requests is [`Outgoing`].
    /// An upgraded one is relayed like a tcp connection, half-closes and
    /// all, so it closes as the relay says.
    async fn drive<S>(&self, stream: S, upgrades: bool) -> Result<Sender, Failure>
    where
        S: OverTcp + AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        if upgrades {
            let send = self.drive_upstream(stream, true).await?;
            Ok(Sender {
                send,
                abort: Abort::default(),
            })
        } else {
            let stream = Outgoing::new(stream);
            let abort = stream.abort().clone();
            let send = self.drive_upstream(stream, false).await?;
            Ok(Sender { send, abort })
        }
    }

    async fn drive_upstream<S>(
        &self,
        stream: S,
        upgrades: bool,
    ) -> Result<SendRequest<UpstreamBody>, Failure>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = self
            .upstream
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Exchange(e.to_string()))?;
        if upgrades {
            self.shutdown.tracker.spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!("upstream upgrade connection ended: {e}");
                }
            });
        } else {
            self.shutdown.tracker.spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("upstream connection ended: {e}");
                }
            });
        }
        Ok(sender)
    }
}
