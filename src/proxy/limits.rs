//! The per-service connection cap: an atomic count of open client
//! connections, a [`Slot`] that holds one place until its connection ends,
//! and the refusal a client gets over the cap (tcp: a reset; http: a short
//! 503), counted and logged at most once every few seconds. On a TLS
//! listener a connection in its handshake holds a [`Handshake`]: those are
//! bounded apart, and under pressure the oldest makes room for newcomers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ServiceContext;
use crate::log_limit::LogLimit;
use crate::metrics::{ActiveConnection, Outcome};

/// How often a service at its cap may log a warning.
const WARN_EVERY: Duration = Duration::from_secs(5);
/// How long a refused HTTP client gets to read its 503 before the socket
/// closes.
const LINGER: Duration = Duration::from_secs(2);

/// How long a TLS handshake may go on once it stands in a newcomer's way:
/// the handshake limit under pressure, instead of the usual 10 s.
pub(crate) const PRESSED_HANDSHAKE: Duration = Duration::from_secs(1);

/// Client connections of one service open now, and those of them still in
/// their TLS handshake.
#[derive(Debug, Default)]
pub struct OpenConnections {
    count: AtomicUsize,
    // A std Mutex: held for a map operation, never across an await.
    handshakes: Mutex<Pending>,
}

/// The TLS handshakes under way, oldest first.
#[derive(Debug, Default)]
struct Pending {
    next: u64,
    by_age: BTreeMap<u64, Waiting>,
}

/// One handshake under way: its place, since when, and how to end it.
#[derive(Debug)]
struct Waiting {
    slot: Slot,
    since: Instant,
    cut: CancellationToken,
}

/// How many TLS handshakes a service may have under way at once: a quarter
/// of `max_connections`, but at least 4 (or `max_connections` if smaller).
pub fn max_handshakes(max_connections: usize) -> usize {
    (max_connections / 4).max(max_connections.min(4))
}

/// One client connection's place under its service's `max_connections`,
/// and in `firedrill_connections_active`; both are given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    context: Arc<ServiceContext>,
    _active: ActiveConnection,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.context.open.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a place for a new client connection, or `None` when the service
/// is at its cap.
pub(crate) fn admit(context: &Arc<ServiceContext>) -> Option<Slot> {
    let max = context.service.limits.max_connections;
    // Each caller sees a distinct previous count, so exactly `max` fit.
    if context.open.count.fetch_add(1, Ordering::Relaxed) >= max {
        context.open.count.fetch_sub(1, Ordering::Relaxed);
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
    context.open.count.fetch_add(1, Ordering::Relaxed);
    Slot {
        context: Arc::clone(context),
        _active: context.metrics.connection_opened(),
    }
}

/// A client connection on a TLS listener, in its handshake: it holds a
/// place under `max_connections` that [`Handshake::finish`] hands over,
/// unless a newcomer took it first ([`Handshake::cut`]).
#[derive(Debug)]
pub(crate) struct Handshake {
    context: Arc<ServiceContext>,
    id: u64,
    cut: CancellationToken,
}

impl Handshake {
    /// Resolves when this handshake was closed to make room.
    pub(crate) async fn cut(&self) {
        self.cut.cancelled().await;
    }

    /// The connection's place, now that its handshake is done; `None` if
    /// it was closed to make room meanwhile.
    pub(crate) fn finish(self) -> Option<Slot> {
        let waiting = self.context.open.pending().by_age.remove(&self.id);
        waiting.map(|waiting| waiting.slot)
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        // Taken out under the lock, dropped (its place given back) after.
        let waiting = self.context.open.pending().by_age.remove(&self.id);
        drop(waiting);
    }
}

impl OpenConnections {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // The map stays consistent even if a holder panicked.
        self.handshakes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Closes the oldest handshake if it has gone on for at least
    /// [`PRESSED_HANDSHAKE`]; its place is free when this returns.
    fn make_room(&self) -> bool {
        let mut pending = self.pending();
        let oldest = pending.by_age.first_entry();
        let Some(oldest) = oldest.filter(|w| w.get().since.elapsed() >= PRESSED_HANDSHAKE) else {
            return false;
        };
        let waiting = oldest.remove();
        drop(pending);
        waiting.cut.cancel();
        true
    }
}

/// Takes a place for a new client connection on a TLS listener, for its
/// handshake. When the service's handshakes under way are at
/// [`max_handshakes`], or the service is at its cap, the oldest handshake
/// makes room if it is older than [`PRESSED_HANDSHAKE`]; otherwise `None`.
pub(crate) fn admit_handshake(context: &Arc<ServiceContext>) -> Option<Handshake> {
    let open = &context.open;
    let bound = max_handshakes(context.service.limits.max_connections);
    let full = open.pending().by_age.len() >= bound;
    if full && !open.make_room() {
        return None;
    }
    let slot = match admit(context) {
        Some(slot) => slot,
        None if open.make_room() => admit(context)?,
        None => return None,
    };
    let cut = CancellationToken::new();
    let mut pending = open.pending();
    let id = pending.next;
    pending.next += 1;
    let waiting = Waiting {
        slot,
        since: Instant::now(),
        cut: cut.clone(),
    };
    pending.by_age.insert(id, waiting);
    Some(Handshake {
        context: Arc::clone(context),
        id,
        cut,
    })
}

/// Counts refused connections and warns about them, at most once every
/// [`WARN_EVERY`]; owned by a service's accept loop.
#[derive(Debug)]
pub(crate) struct Refusals(LogLimit);

impl Default for Refusals {
    fn default() -> Refusals {
        Refusals(LogLimit::new(WARN_EVERY))
    }
}

impl Refusals {
    pub(crate) fn record(&mut self, context: &ServiceContext) {
        context.metrics.connection(Outcome::Refused);
        if let Some(left_out) = self.0.admit() {
            let service = &context.service;
            tracing::warn!(
                service = %service.name,
                max_connections = service.limits.max_connections,
                refused = left_out + 1,
                "service is at max_connections; refusing new connections"
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_under_way_get_a_quarter_of_the_cap_and_at_least_four() {
        assert_eq!(max_handshakes(10_000), 2_500);
        assert_eq!(max_handshakes(50), 12);
        assert_eq!(max_handshakes(10), 4);
        assert_eq!(max_handshakes(3), 3);
        assert_eq!(max_handshakes(1), 1);
    }
}
