//! The data plane: one listener per service. `http.rs` decides per request,
//! `tcp.rs` per connection, and `relay.rs` moves bytes for TCP connections
//! and upgraded HTTP connections while watching the live rules. `limits.rs`
//! caps each service's connections; `idle.rs` ends what has gone quiet;
//! `failures.rs` logs upstream failures sparingly.

mod failures;
pub mod http;
pub(crate) mod idle;
pub mod limits;
mod relay;
pub mod tcp;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};

use crate::fault::live::Live;
use crate::metrics::ServiceMetrics;
use crate::topology::Service;

/// Everything a listener needs about its service; shared by its connections.
#[derive(Debug)]
pub struct ServiceContext {
    pub service: Arc<Service>,
    pub live: Arc<Live>,
    pub metrics: ServiceMetrics,
    /// Client connections open now, held against `max_connections`.
    pub open: Arc<limits::OpenConnections>,
    /// When upstream failures were last logged, to log them sparingly.
    pub failures: failures::UpstreamFailures,
}

/// Which way payload bytes flow, for the bytes counter.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Flow {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
}

impl ServiceContext {
    pub(crate) fn count_bytes(&self, flow: Flow, n: usize) {
        match flow {
            Flow::Upstream => self.metrics.bytes_upstream(n),
            Flow::Downstream => self.metrics.bytes_downstream(n),
        }
    }
}

pin_project_lite::pin_project! {
    /// A body that counts the payload bytes streaming through it.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        context: Arc<ServiceContext>,
        flow: Flow,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, context: Arc<ServiceContext>, flow: Flow) -> Counted<B> {
        Counted {
            inner,
            context,
            flow,
        }
    }
}

impl<B: Body> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                this.context.count_bytes(*this.flow, data.remaining());
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
