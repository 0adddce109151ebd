//! HTTP services: HTTP/1.1 and h2c from clients, keep-alive HTTP/1.1
//! upstream, bodies streamed both ways. [`Proxy`] is the whole request
//! path: decide (the rules are read once per request, so kept-alive
//! connections see new faults on their next request), wait out a delay,
//! forward through [`Upstreams`], answer; every failure is answered by
//! `http/failure.rs`. Header limits are hyper's own; a connection with no
//! request in flight for the idle timeout is closed, and over
//! `max_connections` a client gets a short 503.

mod abort;
mod failure;
mod headers;
mod origin;
mod sending;
mod sticky;
mod terminate;
mod upgrade;
mod watched;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::idle::Stalling;
use super::limits::{
    admit, admit_handshake, refusal_response, refuse_http, Handshake, Refusals, Slot,
};
use super::policy::{Fate, Policy};
use super::{Counted, Flow, ServiceContext};
use crate::fault::ErrorResponse;
use crate::listen::activity::{Activity, Tracked};
use crate::listen::Clients;
use crate::metrics::Outcome;
use crate::shutdown::Shutdown;
use crate::topology::Limits;
use failure::Failure;
use origin::Upstreams;
use watched::{Responses, Watch, Watched};

/// The body of every response firedrill sends: streamed from the upstream,
/// or a small one of its own (injected errors, 502, 504).
pub type ProxyBody = Either<Watched<Stalling<Counted<Incoming>>>, Full<Bytes>>;

/// Why a request got no response; hyper closes its connection.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("request dropped by an injected fault")]
    Dropped,
    #[error("request held by a blackhole that has ended")]
    Blackholed,
    #[error("firedrill is shutting down")]
    ShuttingDown,
}

struct Proxy {
    context: Arc<ServiceContext>,
    upstreams: Upstreams,
    rewrite: headers::Rewrite,
    shutdown: Shutdown,
}

/// Serves one http service until its accept loop ends (see [`Clients`]):
/// when shutdown starts, open connections finish their requests, then
/// close; on a stop, the listener is handed back and they stay.
pub async fn serve(
    clients: Clients,
    context: Arc<ServiceContext>,
    shutdown: Shutdown,
) -> Option<TcpListener> {
    let service = &context.service;
    let authority = match Authority::try_from(service.upstream.authority.as_str()) {
        Ok(authority) => authority,
        Err(e) => {
            tracing::error!(service = %service.name, "invalid upstream {}: {e}", service.upstream);
            return None;
        }
    };
    let limits = service.limits;
    let proxy = Arc::new(Proxy {
        context: Arc::clone(&context),
        upstreams: Upstreams::new(&context, authority.clone(), &shutdown),
        rewrite: headers::Rewrite {
            host: authority,
            https: service.tls.is_some(),
        },
        shutdown: shutdown.clone(),
    });
    if service
        .upstream_tls
        .as_ref()
        .is_some_and(|tls| tls.skip_verify)
    {
        tracing::warn!(
            service = %service.name,
            upstream = %service.upstream,
            "upstream_skip_verify = true: the upstream's certificate is NOT verified, so anyone on the path can pose as it"
        );
    }
    let acceptor = context.tls.listener.clone().map(TlsAcceptor::from);
    let builder = Arc::new(server_builder(limits));
    let refusal = refusal_response(&context);
    let mut refusals = Refusals::default();
    while let Some((stream, peer)) = clients.next().await {
        let place = match &acceptor {
            None => admit(&context).map(Place::Open),
            Some(tls) => admit_handshake(&context).map(|pending| Place::Tls(pending, tls.clone())),
        };
        let Some(place) = place else {
            refusals.record(&context);
            refuse_http(stream, refusal.clone(), acceptor.is_some());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let forwarded_for = HeaderValue::from_str(&peer.ip().to_string())
            .expect("an IP address is a valid header value");
        let proxy = Arc::clone(&proxy);
        let sticky = Arc::new(proxy.upstreams.own());
        let activity = Arc::new(Activity::new());
        let responses = Arc::new(Responses::new(Arc::clone(&context.live)));
        let driving = Driving {
            peer,
            activity: Arc::clone(&activity),
            idle_timeout: limits.idle_timeout,
            draining: shutdown.draining.clone(),
            hard_stop: shutdown.hard_stop.clone(),
            responses: Arc::clone(&responses),
        };
        let service = service_fn(move |request: Request<Incoming>| {
            let busy = activity.begin();
            let proxy = Arc::clone(&proxy);
            let forwarded_for = forwarded_for.clone();
            let sticky = Arc::clone(&sticky);
            let responses = Arc::clone(&responses);
            let whole_connection = request.version() != Version::HTTP_2;
            async move {
                let response = proxy.handle(request, forwarded_for, &sticky).await?;
                if let Either::Left(body) = response.body() {
                    responses.add(body, whole_connection);
                }
                Ok::<_, Refused>(response.map(|body| Tracked::new(body, busy)))
            }
        });
        let builder = Arc::clone(&builder);
        let (pending, acceptor) = match place {
            Place::Tls(pending, acceptor) => (pending, acceptor),
            Place::Open(slot) => {
                context.metrics.connection(Outcome::Accepted);
                let serve = move |stream| {
                    let connection = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    drive(connection, slot, driving)
                };
                shutdown
                    .workers
                    .run_connection(&shutdown.tracker, stream, serve);
                continue;
            }
        };
        let context = Arc::clone(&context);
        let serve = move |stream| async move {
            let stop = (pending, &driving.hard_stop);
            let handshake = terminate::handshake(&acceptor, stream, peer, &context, stop);
            let Some((stream, slot)) = handshake.await else {
                return;
            };
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            drive(connection, slot, driving).await;
        };
        shutdown
            .workers
            .run_connection(&shutdown.tracker, stream, serve);
    }
    clients.hand_back()
}

/// A new client's place under `max_connections`: taken, or, on a TLS
/// listener, held by its handshake.
enum Place {
    Open(Slot),
    Tls(Handshake, TlsAcceptor),
}

/// What the task driving one client connection watches besides it.
struct Driving {
    peer: SocketAddr,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    draining: CancellationToken,
    hard_stop: CancellationToken,
    /// Its streaming responses, looked at on every rule change.
    responses: Arc<Responses>,
}

/// Serves one client connection until it ends, or has been idle for
/// `idle_timeout`. When shutdown starts (`draining`) it finishes the
/// requests in flight and closes; the hard stop cuts it. On every rule
/// change it looks at its streaming `responses`: an HTTP/1.1 response that
/// a fault cuts closes the connection, one that a blackhole holds stops it
/// (nothing more is written) until the hold ends, even when the client has
/// stopped reading and hyper would not poll the body.
async fn drive<C>(connection: C, slot: Slot, driving: Driving)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    let Driving {
        peer,
        activity,
        idle_timeout,
        draining,
        hard_stop,
        responses,
    } = driving;
    let _slot = slot;
    let mut connection = std::pin::pin!(connection);
    let mut changes = responses.changes();
    let mut held = false;
    let mut closing = false;
    let ended = loop {
        tokio::select! {
            // The connection first: it is what wakes this task nearly always.
            biased;
            result = connection.as_mut(), if !held => break Some(result),
            changed = changes.changed() => {
                changed.expect("the rules outlive every connection");
                match responses.look() {
                    // Dropping the connection closes it.
                    Fate::Drop | Fate::Released => {
                        tracing::debug!(%peer, "closing a connection whose response a fault cut");
                        break None;
                    }
                    Fate::Blackhole => held = true,
                    Fate::Forward | Fate::Error(_) => held = false,
                }
            }
            () = activity.idle_for(idle_timeout), if !closing => {
                let idle = humantime::format_duration(idle_timeout);
                tracing::debug!(%peer, "closing a connection idle for {idle}");
                break None;
            }
            () = draining.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            () = hard_stop.cancelled() => break None,
        }
    };
    if let Some(Err(e)) = ended {
        tracing::debug!(%peer, "http connection ended: {e}");
    }
}

/// hyper's server with the service's header limits. HTTP/1.1 has no limit
/// on header bytes in the server builder that serves both versions, so the
/// read buffer, which must hold the whole head, is the bound: over it hyper
/// answers 431 and closes. h2 bounds the header list the same way and
/// answers 431 on that stream.
fn server_builder(limits: Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(limits.max_header_bytes);
    if limits.max_headers != Limits::DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    let list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    builder.http2().max_header_list_size(list);
    builder
}

/// Counts one request once, when its fate is decided: when it is answered,
/// dropped, or blackholed (at once, not when the hold ends, so a fire shows
/// while clients still wait). hyper drops a request's future when its
/// client goes away, as during a long delay; such a request is counted
/// then, unanswered, as `pending`.
struct Tally<'a> {
    context: &'a ServiceContext,
    started: Instant,
    /// The outcome of a request that ends before its fate is decided.
    pending: Outcome,
    counted: bool,
}

impl Tally<'_> {
    /// Counts the request, answered with `status` or not at all (`None`),
    /// unless it is counted already.
    fn count(&mut self, outcome: Outcome, status: Option<StatusCode>) {
        if !std::mem::replace(&mut self.counted, true) {
            let elapsed = self.started.elapsed();
            self.context.metrics.request(outcome, status, elapsed);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.count(self.pending, None);
    }
}

impl Proxy {
    async fn handle(
        &self,
        request: Request<Incoming>,
        forwarded_for: HeaderValue,
        sticky: &Arc<sticky::Sticky>,
    ) -> Result<Response<ProxyBody>, Refused> {
        let started = Instant::now();
        if let Some((status, what)) = headers::malformed(&request) {
            let close = request.version() != Version::HTTP_2;
            let malformed = Failure::Malformed {
                status,
                what,
                close,
            };
            let outcome = malformed.outcome();
            let response = failure::response(malformed, &self.context);
            let elapsed = started.elapsed();
            let metrics = &self.context.metrics;
            metrics.request(outcome, Some(response.status()), elapsed);
            return Ok(response);
        }
        let (method, uri) = (request.method().clone(), request.uri().clone());
        let mut policy = Policy::request(method, uri, rand::random());
        let mut ruling = policy.look(&*self.context);
        let delayed = !ruling.delay.is_zero();
        let mut tally = Tally {
            context: &self.context,
            started,
            pending: if delayed {
                Outcome::Delayed
            } else {
                Outcome::Forwarded
            },
            counted: false,
        };
        if delayed {
            // Boxed, like every path a plain request does not take: hyper
            // moves each request's future into place, so its size is paid
            // on every request.
            let hard_stop = &self.shutdown.hard_stop;
            let wait = policy.wait_out(&*self.context, started, ruling, hard_stop);
            ruling = Box::pin(wait).await.ok_or(Refused::ShuttingDown)?;
        }
        match ruling.fate {
            Fate::Forward => {
                // Faults that start while the response streams still
                // reach it. Made here: a policy is large, and a future
                // keeps its arguments for as long as it lives.
                let seed = policy.seed();
                let watch = Watch::new(Arc::clone(&self.context), policy);
                let (outcome, result) = self
                    .forward(request, forwarded_for, delayed, (seed, watch), sticky)
                    .await;
                tally.count(outcome, result.as_ref().ok().map(Response::status));
                result
            }
            Fate::Error(error) => {
                let response = injected(*error);
                tally.count(Outcome::Error, Some(response.status()));
                Ok(response)
            }
            Fate::Drop => {
                tally.count(Outcome::Dropped, None);
                Err(Refused::Dropped)
            }
            fate @ (Fate::Blackhole | Fate::Released) => {
                tally.count(Outcome::Blackholed, None);
                Box::pin(self.blackhole(&mut policy, fate)).await;
                Err(Refused::Blackholed)
            }
        }
    }

    /// Holds a blackholed request until the blackhole no longer applies to
    /// it, or shutdown starts.
    async fn blackhole(&self, policy: &mut Policy, mut fate: Fate) {
        policy.hold();
        let hard_stop = &self.shutdown.hard_stop;
        while fate == Fate::Blackhole {
            match policy.changed(&*self.context, hard_stop).await {
                Some(ruling) => fate = ruling.fate,
                None => return,
            }
        }
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        forwarded_for: HeaderValue,
        delayed: bool,
        (seed, watch): (u64, Box<Watch>),
        sticky: &Arc<sticky::Sticky>,
    ) -> (Outcome, Result<Response<ProxyBody>, Refused>) {
        if upgrade::is_upgrade(request.headers()) {
            // The upgraded connection obeys the rules through a policy of
            // its own, with the request's rolls.
            drop(watch);
            let upgrade = self.upgrade(request, forwarded_for, seed);
            return match Box::pin(upgrade).await {
                Ok(response) if delayed => (Outcome::Delayed, Ok(response)),
                Ok(response) => (Outcome::Forwarded, Ok(response)),
                Err(failure) => self.fail(failure),
            };
        }
        // h2 clients multiplex requests, so they share the pool; an
        // HTTP/1.1 client's requests come one at a time over its own
        // upstream connection.
        let own = (request.version() != Version::HTTP_2).then_some(&**sticky);
        self.rewrite.request(&mut request, forwarded_for, false);
        // A request with a body is watched on its way: `timeout` starts
        // once it has all been sent.
        let progress =
            (!http_body::Body::is_end_stream(request.body())).then(sending::Progress::new);
        let request = request.map(|body| {
            let counted = Counted::new(body, Arc::clone(&self.context), Flow::Upstream);
            sending::Sending::new(counted, progress.clone())
        });
        let service = &self.context.service;
        // A failed send is the client's when its body broke off or was
        // malformed (`Err(None)`); only the upstream's gets firedrill's
        // 502 or 504, and its log line.
        let upstreams = || {
            progress
                .as_ref()
                .is_none_or(|p| p.client_failure().is_none())
        };
        // Pinned where it is: a timeout around the future itself would move
        // it (a kilobyte and more) on every request.
        let sent = std::pin::pin!(async {
            (self.upstreams.send(own, request).await)
                .map_err(|failure| upstreams().then_some(failure))
        });
        let overdue = async {
            match &progress {
                Some(progress) => {
                    let stall = service.limits.upstream_idle_timeout;
                    progress.overdue(stall, service.timeout).await
                }
                None => {
                    tokio::time::sleep(service.timeout).await;
                    sending::Overdue::Headers
                }
            }
        };
        // Dropping the request on its way closes its upstream connection.
        let answered = tokio::select! {
            biased;
            answered = sent => answered,
            overdue = overdue => {
                let overdue = match overdue {
                    sending::Overdue::Headers => Failure::NoHeaders,
                    sending::Overdue::Body => Failure::BodyStalled,
                };
                return self.fail(overdue);
            }
        };
        match answered {
            Ok(response) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                // hyper closes that upstream connection: it may speak
                // another protocol now.
                self.fail(Failure::UnaskedUpgrade)
            }
            Ok(response) => {
                let outcome = if delayed {
                    Outcome::Delayed
                } else {
                    Outcome::Forwarded
                };
                let response = headers::downstream(response, &self.context, Some(watch));
                (outcome, Ok(response))
            }
            Err(Some(failure)) => self.fail(failure),
            Err(None) => {
                let why = progress.as_ref().and_then(|p| p.client_failure());
                self.fail(Failure::ClientBody(why.unwrap_or_default().to_owned()))
            }
        }
    }

    /// Passes an `Upgrade` request on over an upstream connection of its
    /// own; after `101 Switching Protocols` both connections are relayed
    /// like a tcp connection by `http/upgrade.rs`.
    async fn upgrade(
        &self,
        mut request: Request<Incoming>,
        forwarded_for: HeaderValue,
        seed: u64,
    ) -> Result<Response<ProxyBody>, Failure> {
        let client = hyper::upgrade::on(&mut request);
        self.rewrite.request(&mut request, forwarded_for, true);
        let mut sender = self.upstreams.open(true).await?;
        let request = request.map(|body| {
            let counted = Counted::new(body, Arc::clone(&self.context), Flow::Upstream);
            sending::Sending::new(counted, None)
        });
        let timeout = self.context.service.timeout;
        let mut response = tokio::time::timeout(timeout, sender.send_request(request))
            .await
            .map_err(|_| Failure::UpgradeUnanswered)?
            .map_err(|e| Failure::Exchange(e.to_string()))?;
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switched {
            let upstream = hyper::upgrade::on(&mut response);
            let context = Arc::clone(&self.context);
            let hard_stop = self.shutdown.hard_stop.clone();
            let relay = upgrade::relay(client, upstream, context, seed, hard_stop);
            self.shutdown.tracker.spawn(relay);
        }
        // An upstream that declines the upgrade answers an ordinary
        // response, whose hop-by-hop fields go like any other's.
        Ok(headers::downstream_upgrade(
            response,
            &self.context,
            switched,
        ))
    }

    /// How a failed request counts, and its answer.
    fn fail(&self, failure: Failure) -> (Outcome, Result<Response<ProxyBody>, Refused>) {
        let outcome = failure.outcome();
        (outcome, Ok(failure::response(failure, &self.context)))
    }
}

/// The canned answer of an `error` fault.
fn injected(error: ErrorResponse) -> Response<ProxyBody> {
    let mut response = Response::new(Either::Right(Full::new(error.body)));
    *response.status_mut() = error.status;
    *response.headers_mut() = error.headers;
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    response
}
