//! A response body that obeys faults starting while it streams, as an open
//! TCP connection does: a `drop` cuts it (HTTP/1.1: the connection closes;
//! h2: the stream is reset), a `blackhole` holds it (nothing more reaches
//! the client) and cuts it when the blackhole ends, as a held TCP
//! connection is closed then. `delay` and `error` apply from the next
//! request on.
//!
//! The rules are read on every frame (a lock-free load); a change wakes a
//! body that is waiting for its upstream only once it has had to wait, so
//! a response that streams without pause never subscribes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Uri};
use http_body::{Body, Frame, SizeHint};

use crate::fault::{connection_roll, decide, RequestInfo, Verdict};
use crate::proxy::ServiceContext;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a streaming response was cut.
#[derive(Debug, thiserror::Error)]
#[error("response cut by an injected fault while it streamed")]
pub(crate) struct Cut;

/// The request a response answers, to decide again when the rules change.
pub(crate) struct Watch {
    context: Arc<ServiceContext>,
    method: Method,
    uri: Uri,
    /// The request's seed: the same rolls as its first decision.
    seed: u64,
    /// The generation of the snapshot last decided on.
    seen: u64,
    held: bool,
    /// Resolves on the next rule change; made once the body had to wait.
    changes: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Watch {
    pub(crate) fn new(
        context: Arc<ServiceContext>,
        method: Method,
        uri: Uri,
        seed: u64,
    ) -> Box<Watch> {
        let seen = context.live.load().generation();
        Box::new(Watch {
            context,
            method,
            uri,
            seed,
            seen,
            held: false,
            changes: None,
        })
    }

    /// Decides again if the rules changed since the last look; `Err` when
    /// the response must be cut.
    fn check(&mut self) -> Result<(), Cut> {
        let rules = self.context.live.load();
        if rules.generation() == self.seen {
            return Ok(());
        }
        self.seen = rules.generation();
        let faults = rules.slot(self.context.service.slot);
        let info = RequestInfo {
            method: &self.method,
            path: self.uri.path(),
        };
        let decision = decide(faults, Some(info), |fault| {
            connection_roll(self.seed, fault)
        });
        let verdict = decision.verdict;
        let was_held = self.held;
        self.held = matches!(verdict, Verdict::Blackhole);
        if matches!(verdict, Verdict::Drop) || (self.held && !was_held) {
            self.context.metrics.faults_injected(&decision.applied);
        }
        match verdict {
            Verdict::Drop => Err(Cut),
            // What the blackhole held is lost with it.
            _ if was_held && !self.held => Err(Cut),
            _ => Ok(()),
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, under the watch of the live rules when `watch` is set.
    pub struct Watched<B> {
        #[pin]
        inner: B,
        // Boxed: responses are moved several times on their way out.
        watch: Option<Box<Watch>>,
    }
}

impl<B> Watched<B> {
    pub(crate) fn new(inner: B, watch: Option<Box<Watch>>) -> Watched<B> {
        Watched { inner, watch }
    }
}

impl<B: Body> Body for Watched<B>
where
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(watch) = this.watch else {
            return this.inner.poll_frame(cx).map_err(Into::into);
        };
        let mut inner = this.inner;
        loop {
            if let Err(cut) = watch.check() {
                return Poll::Ready(Some(Err(Box::new(cut))));
            }
            if !watch.held {
                if let Poll::Ready(frame) = inner.as_mut().poll_frame(cx) {
                    return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
                }
            }
            if watch.changes.is_none() {
                let mut changes = watch.context.live.subscribe();
                watch.changes = Some(Box::pin(async move {
                    // `Live` owns the sender and outlives every response.
                    let _ = changes.changed().await;
                }));
                // A change between the check above and subscribing would
                // not wake us: look once more.
                if watch.context.live.load().generation() != watch.seen {
                    continue;
                }
            }
            let changes = watch.changes.as_mut().expect("made above");
            match changes.as_mut().poll(cx) {
                Poll::Ready(()) => watch.changes = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
