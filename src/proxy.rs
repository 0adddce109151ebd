//! The data plane: one listener per service. `http.rs` decides per request,
//! `tcp.rs` per connection, both through `policy.rs`, the one way a
//! connection or request obeys the live rules; `relay.rs` moves bytes for
//! TCP connections and upgraded HTTP connections through the per-direction
//! stages of `stage.rs`. `limits.rs`
//! caps each service's connections; `idle.rs` ends what has gone quiet;

pub(crate) mod connect;
pub mod http;
pub(crate) mod idle;
pub mod limits;
mod policy;
mod relay;
mod stage;
pub mod tcp;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::Body;

use crate::body::{Frames, Polled, Wrapped};

use crate::live::Live;
use crate::log_limit::LogLimit;
use crate::metrics::ServiceMetrics;
use crate::tls::{self, TlsError, UpstreamConnector};
use crate::topology::Service;

/// Everything a listener needs about its service; shared by its connections.
#[derive(Debug)]
pub struct ServiceContext {
    pub service: Arc<Service>,
    /// Where the service's faults sit in a rule snapshot: runtime state the
    /// model keeps, stable while the service stays as it was.
    pub slot: usize,
    /// Its TLS, built from the service's data when it started.
    pub tls: ServiceTls,
    pub live: Arc<Live>,
    pub metrics: ServiceMetrics,
    /// Client connections open now, held against `max_connections`.
    pub open: Arc<limits::OpenConnections>,
    /// Upstream failures are logged at most once every few seconds.
    pub(crate) failures: LogLimit,
}

/// A service's TLS both ways, built into rustls configurations from the
/// data its [`Service`] holds.
#[derive(Debug, Clone, Default)]
pub struct ServiceTls {
    /// Terminates TLS from clients.
    pub listener: Option<Arc<rustls::ServerConfig>>,
    /// Speaks TLS to an `https://` upstream.
    pub upstream: Option<UpstreamConnector>,
}

impl ServiceTls {
    /// Builds what `service` asks for; data that validation checked builds.
    pub fn build(service: &Service) -> Result<ServiceTls, TlsError> {
        Ok(ServiceTls {
            listener: service.tls.as_ref().map(tls::listener_config).transpose()?,
            upstream: (service.upstream_tls.as_ref())
                .map(UpstreamConnector::new)
                .transpose()?,
        })
    }
}

/// Which way payload bytes flow, for the bytes counter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flow {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
}

/// How often one service may log an upstream failure.
pub(crate) const LOG_FAILURES_EVERY: Duration = Duration::from_secs(5);

impl ServiceContext {
    /// Logs that the upstream failed, `what` completing "upstream ..."
    /// (say, "is unreachable: connection refused"), unless this service
    /// logged one within the last few seconds.
    pub(crate) fn upstream_failed(&self, what: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.failures.admit() {
            let service = &self.service;
            tracing::warn!(
                service = %service.name,
                datacenter = %service.datacenter,
                upstream = %service.upstream,
                suppressed,
                "upstream {what}"
            );
        }
    }

    pub(crate) fn count_bytes(&self, flow: Flow, n: usize) {
        match flow {
            Flow::Upstream => self.metrics.bytes_upstream(n),
            Flow::Downstream => self.metrics.bytes_downstream(n),
        }
    }
}

/// A body that counts the payload bytes streaming through it.
pub type Counted<B> = Wrapped<B, Counter>;

/// Counts a body's payload bytes for its service, one way.
#[derive(Debug)]
pub struct Counter {
    context: Arc<ServiceContext>,
    flow: Flow,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, context: Arc<ServiceContext>, flow: Flow) -> Counted<B> {
        Wrapped::wrap(inner, Counter { context, flow })
    }
}

impl<B: Body> Frames<B> for Counter {
    type Error = B::Error;

    fn poll_frame(&mut self, inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, B::Error> {
        let frame = ready!(inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                self.context.count_bytes(self.flow, data.remaining());
            }
        }
        Poll::Ready(frame)
    }
}
