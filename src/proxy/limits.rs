//! The per-service connection cap: a semaphore with one permit per place
//! under `max_connections`, a [`Slot`] that holds one permit until its
//! connection ends, and the refusal a client gets over the cap (tcp: a
//! reset; http: a short 503), counted and logged at most once every few
//! seconds. On a TLS listener a connection in its handshake holds a
//! [`Handshake`]: those are bounded apart, and under pressure the oldest
//! makes room for newcomers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
/// their TLS handshake. A reload that keeps the service keeps this, so its
/// open connections go on counting; the cap follows the service's
/// `max_connections` from the next admission on.
#[derive(Debug)]
pub struct OpenConnections {
    /// One permit per place; each open connection holds one.
    permits: Arc<Semaphore>,
    // A std Mutex, like the one below: held for a few integer and permit
    // operations, never across an await. Every permit is taken under it,
    // so a shrunken cap is never overtaken by a newcomer.
    size: Mutex<Size>,
    handshakes: Mutex<Pending>,
}

impl Default for OpenConnections {
    fn default() -> OpenConnections {
        OpenConnections {
            permits: Arc::new(Semaphore::new(0)),
            size: Mutex::default(),
            handshakes: Mutex::default(),
        }
    }
}

/// What the permits stand for: all of them, free and held, number `cap +
/// excess`.
#[derive(Debug, Default)]
struct Size {
    /// The `max_connections` the permits were last sized for.
    cap: usize,
    /// Permits beyond `cap`, held by connections admitted before the cap
    /// shrank or taken over it by an upgrade; forgotten as they come back.
    excess: usize,
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
    _permit: OwnedSemaphorePermit,
    _active: ActiveConnection,
}

/// Takes a place for a new client connection, or `None` when the service
/// is at its cap.
pub(crate) fn admit(context: &Arc<ServiceContext>) -> Option<Slot> {
    let permit = context.open.take(context.service.limits.max_connections)?;
    Some(Slot {
        _permit: permit,
        _active: context.metrics.connection_opened(),
    })
}

/// Takes a place without checking the cap: for a connection that is
/// already open and changes hands (an upgraded HTTP connection).
pub(crate) fn occupy(context: &Arc<ServiceContext>) -> Slot {
    Slot {
        _permit: context
            .open
            .take_over(context.service.limits.max_connections),
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
    /// A permit for a new connection under a cap of `max`, or `None` at
    /// the cap.
    fn take(&self, max: usize) -> Option<OwnedSemaphorePermit> {
        let size = self.sized(max);
        if size.excess > 0 {
            return None;
        }
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// A permit under a cap of `max`, or one more than the cap allows.
    fn take_over(&self, max: usize) -> OwnedSemaphorePermit {
        let mut size = self.sized(max);
        if size.excess == 0 {
            if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
                return permit;
            }
        }
        size.excess += 1;
        self.permits.add_permits(1);
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .expect("a permit just added is free: permits are taken under the size lock")
    }

    /// Sizes the permits for a cap of `max` and forgets the excess ones
    /// that came back; the lock on the size is held until the caller has
    /// taken its permit.
    fn sized(&self, max: usize) -> std::sync::MutexGuard<'_, Size> {
        // Beyond this, `add_permits` panics; no cap gets near it.
        let max = max.min(Semaphore::MAX_PERMITS / 2);
        let mut size = self
            .size
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if max >= size.cap {
            let grow = max - size.cap;
            let repaid = grow.min(size.excess);
            size.excess -= repaid;
            self.permits.add_permits(grow - repaid);
        } else {
            size.excess += size.cap - max;
        }
        size.cap = max;
        if size.excess > 0 {
            size.excess -= self.permits.forget_permits(size.excess);
        }
        size
    }

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

    /// `n` permits of `open` under a cap of `cap`; all must fit.
    fn fill(open: &OpenConnections, n: usize, cap: usize) -> Vec<OwnedSemaphorePermit> {
        (0..n)
            .map(|_| open.take(cap).expect("under the cap"))
            .collect()
    }

    #[test]
    fn exactly_max_connections_fit_and_a_closed_one_frees_its_place() {
        let open = OpenConnections::default();
        let mut held = fill(&open, 3, 3);
        assert!(open.take(3).is_none(), "the fourth is over the cap");
        held.pop();
        assert!(open.take(3).is_some(), "a place came free");
    }

    #[test]
    fn a_raised_cap_admits_more_at_once() {
        let open = OpenConnections::default();
        let _held = fill(&open, 2, 2);
        assert!(open.take(2).is_none());
        let third = open.take(3);
        assert!(third.is_some(), "the raised cap has room");
        assert!(open.take(3).is_none());
    }

    #[test]
    fn a_lowered_cap_admits_no_one_until_enough_connections_closed() {
        let open = OpenConnections::default();
        let mut held = fill(&open, 4, 4);
        assert!(open.take(2).is_none(), "four open, cap two");
        held.truncate(2);
        assert!(open.take(2).is_none(), "two open, cap two");
        held.pop();
        let again = open.take(2);
        assert!(again.is_some(), "one open, cap two");
        assert!(open.take(2).is_none());
        // Raised again while over: the permits forgotten meanwhile are not
        // given twice.
        drop((held, again));
        let fresh: Vec<_> = (0..6).map_while(|_| open.take(5)).collect();
        assert_eq!(fresh.len(), 5);
    }

    #[test]
    fn a_place_taken_over_the_cap_is_not_given_again_when_it_closes() {
        let open = OpenConnections::default();
        let first = open.take(1).expect("under the cap");
        let upgraded = open.take_over(1);
        assert!(open.take(1).is_none());
        drop(first);
        assert!(
            open.take(1).is_none(),
            "the upgraded one still holds the one place"
        );
        drop(upgraded);
        let next = open.take(1);
        assert!(next.is_some());
        assert!(open.take(1).is_none(), "still one place");
        let under = open.take_over(1);
        drop(next);
        drop(under);
        let fresh: Vec<_> = (0..3).map_while(|_| open.take(2)).collect();
        assert_eq!(fresh.len(), 2);
    }
}
