//! The per-service connection cap: an atomic count of open client
//! connections, a [`Slot`] that holds one place until its connection ends,
//! and the refusal a client gets over the cap (tcp: a reset; http: a short
//! 503), counted and logged at most once every few seconds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ServiceContext;
use crate::metrics::{ActiveConnection, Outcome};

/// How often a service at its cap may log a warning.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// How long a refused HTTP client gets to read its 503 before the socket
/// closes.
const LINGER: Duration = Duration::from_secs(2);

/// Client connections of one service open now.
#[derive(Debug, Default)]
pub struct OpenConnections(AtomicUsize);

/// One client connection's place under its service's `max_connections`,
/// and in `firedrill_connections_active`; both are given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    context: Arc<ServiceContext>,
    _active: ActiveConnection,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.context.open.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a place for a new client connection, or `None` when the service
/// is at its cap.
pub(crate) fn admit(context: &Arc<ServiceContext>) -> Option<Slot> {
    let max = context.service.limits.max_connections;
    // Each caller sees a distinct previous count, so exactly `max` fit.
    if context.open.0.fetch_add(1, Ordering::Relaxed) >= max {
        context.open.0.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    Some(Slot {
        context: Arc::clone(context),
        _active: context.metrics.connection_opened(),
    })
}

/// Takes a place without checking the cap: for a connection that is
/// already open and changes hands (an upgraded HTTP connection).
pub(crate) fn occupy(context: &Arc<ServiceContext>) -> Slot {
    context.open.0.fetch_add(1, Ordering::Relaxed);
    Slot {
        context: Arc::clone(context),
        _active: context.metrics.connection_opened(),
    }
}

/// Counts refused connections and warns about them, at most once every
/// [`WARN_EVERY`]; owned by a service's accept loop.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    last_warned: Option<Instant>,
    since: u64,
}

impl Refusals {
    pub(crate) fn record(&mut self, context: &ServiceContext) {
        context.metrics.connection(Outcome::Refused);
        self.since += 1;
        let now = Instant::now();
        if self
            .last_warned
            .is_none_or(|then| now.duration_since(then) >= WARN_EVERY)
        {
            let service = &context.service;
            tracing::warn!(
                service = %service.name,
                max_connections = service.limits.max_connections,
                refused = self.since,
                "service is at max_connections; refusing new connections"
            );
            self.last_warned = Some(now);
            self.since = 0;
        }
    }
}

/// The whole HTTP/1.1 answer a refused client gets.
pub(crate) fn refusal_response(context: &ServiceContext) -> Bytes {
    let service = &context.service;
    let body = format!(
        "firedrill: service `{}` is at max_connections ({})\n",
        service.name, service.limits.max_connections
    );
    Bytes::from(format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ))
}

/// Refused HTTP clients being answered at once, process-wide; past it a
/// refused connection is reset like a tcp one, so a flood over the cap
/// cannot pile up sockets.
const ANSWERING: usize = 256;

static ANSWERING_NOW: AtomicUsize = AtomicUsize::new(0);

/// Answers a refused HTTP client with `response` and closes. The request
/// is read and discarded for a moment first: closing a socket with unread
/// input sends a reset, which may destroy the answer before the client
/// reads it. A TLS listener's clients could not read a plain answer: they,
/// and everyone past [`ANSWERING`], get a reset.
pub(crate) fn refuse_http(stream: TcpStream, response: Bytes, tls: bool) {
    let answering = if tls { None } else { Answering::take() };
    let Some(answering) = answering else {
        let _ = stream.set_zero_linger();
        return;
    };
    tokio::spawn(async move {
        let _answering = answering;
        let mut stream = stream;
        let _ = tokio::time::timeout(LINGER, async {
            stream.write_all(&response).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// One refused client being answered; counted down however the task ends.
struct Answering;

impl Answering {
    /// A place among the [`ANSWERING`] refused clients answered at once.
    fn take() -> Option<Answering> {
        if ANSWERING_NOW.fetch_add(1, Ordering::Relaxed) < ANSWERING {
            Some(Answering)
        } else {
            ANSWERING_NOW.fetch_sub(1, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        ANSWERING_NOW.fetch_sub(1, Ordering::Relaxed);
    }
}
