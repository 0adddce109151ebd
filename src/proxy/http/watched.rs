//! A response body that obeys faults starting while it streams, as an open
//! TCP connection does: a `drop` cuts it (HTTP/1.1: the connection closes;
//! h2: the stream is reset), a `blackhole` holds it (nothing more reaches
//! the client) and cuts it when the blackhole ends or shutdown starts, as a
//! held TCP connection is closed then. `delay` and `error` apply from the
//! next request on.
//!
//! Each look decides on every snapshot published since the last one, so a
//! fault that came and went in between still counts. The body looks on
//! every frame; the task that drives the client connection looks on every
//! rule change ([`Responses`]), so a response whose client stopped reading,
//! which hyper does not poll, obeys too: an HTTP/1.1 connection is closed
//! or stopped there; an h2 stream, which only its own body can reset, is
//! cut when hyper next polls it.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};

use tokio::sync::watch;

use crate::body::{BoxError, Cut, Wrapped};

use crate::live::Live;
use crate::proxy::policy::{Fate, Policy};
use crate::proxy::ServiceContext;

/// Why a streaming response was cut.
#[derive(Debug, thiserror::Error)]
#[error("response cut by an injected fault while it streamed")]
pub(crate) struct ResponseCut;

/// The request a response answers, to decide again when the rules change.
pub(crate) struct Watch(Arc<Watching>);

/// What the body and the task driving its connection share.
struct Watching {
    context: Arc<ServiceContext>,
    // std mutex: held for one decision, never across an await.
    state: Mutex<State>,
}

struct State {
    /// The request's policy: its rolls, and what it counted.
    policy: Policy,
    /// The body's task while it waits: woken when the response is cut.
    waker: Option<Waker>,
}

impl Watch {
    /// Watches the response to the request `policy` decided for.
    pub(crate) fn new(context: Arc<ServiceContext>, policy: Policy) -> Box<Watch> {
        let state = Mutex::new(State {
            policy: policy.respond(),
            waker: None,
        });
        Box::new(Watch(Arc::new(Watching { context, state })))
    }
}

impl Watching {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The response's fate after every snapshot published since the last
    /// look; wakes the body if that cut the response. An error fault
    /// passes: it applies from the next request on.
    fn look(&self) -> Fate {
        let mut state = self.lock();
        let fate = match state.policy.fate(&*self.context) {
            Fate::Error(_) => Fate::Forward,
            fate => fate.clone(),
        };
        let waker = fate.is_final().then(|| state.waker.take()).flatten();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        fate
    }

    /// Keeps `waker` to be woken on a cut; whether it is cut as of now.
    fn park(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        let cut = state.policy.fate(&*self.context).is_final();
        if !state.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            state.waker = Some(waker.clone());
        }
        cut
    }
}

/// The responses streaming on one client connection, for the task that
/// drives it to look at on every rule change.
pub(crate) struct Responses {
    live: Arc<Live>,
    /// With whether a cut or a hold takes the whole connection (HTTP/1.1)
    /// or one stream (h2). std mutex: taken once per response and once per
    /// rule change, never across an await.
    watched: Mutex<Vec<(Weak<Watching>, bool)>>,
}

impl Responses {
    pub(crate) fn new(live: Arc<Live>) -> Responses {
        Responses {
            live,
            watched: Mutex::new(Vec::new()),
        }
    }

    /// Told of every rule change; made on the thread that drives the
    /// connection.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.live.subscribe()
    }

    /// Watches `body` on its way out; `whole_connection` for HTTP/1.1,
    /// where a response is cut or held by closing or stopping the
    /// connection.
    pub(crate) fn add<B>(&self, body: &Watched<B>, whole_connection: bool) {
        let Some(watch) = &body.frames().0 else {
            return;
        };
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|(watching, _)| watching.strong_count() > 0);
        watched.push((Arc::downgrade(&watch.0), whole_connection));
    }

    /// Decides again for every response (each cut h2 stream is woken to
    /// reset itself) and says what the connection must do: a drop or a
    /// released hold closes it, a blackhole stops it until a later change.
    pub(crate) fn look(&self) -> Fate {
        let mut fate = Fate::Forward;
        let mut watched = self.watched.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|(watching, whole_connection)| {
            let Some(watching) = watching.upgrade() else {
                return false;
            };
            let now = watching.look();
            if *whole_connection && now != Fate::Forward && !fate.is_final() {
                fate = now.clone();
            }
            !now.is_final()
        });
        fate
    }
}

/// `inner`, under the watch of the live rules when its [`Watch`] is set.
pub type Watched<B> = Wrapped<B, Watcher>;

/// What watches a [`Watched`] body; boxed, as responses are moved several
/// times on their way out.
pub struct Watcher(Option<Box<Watch>>);

impl<B> Watched<B> {
    pub(crate) fn new(inner: B, watch: Option<Box<Watch>>) -> Watched<B> {
        Wrapped::wrap(inner, Watcher(watch))
    }
}

impl Cut for Watcher {
    fn open(&mut self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|watch| watch.0.look() == Fate::Forward)
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        // Waiting for the upstream, or held: a cut must still wake us.
        match &self.0 {
            Some(watch) if watch.0.park(cx.waker()) => Poll::Ready(Box::new(ResponseCut)),
            _ => Poll::Pending,
        }
    }
}
