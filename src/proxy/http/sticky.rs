//! An upstream HTTP/1.1 connection of each client connection's own. A
//! kept-alive client's requests go over one upstream connection with no
//! pool in between: no shared lock and no checkout per request. When the
//! client goes, its idle upstream connection waits among the service's
//! [`Spares`] for the next client, so a client that connects per request
//! does not cost a connect to the upstream as well. (Driving the upstream
//! connection inside the client connection's task was measured too: it
//! cost more CPU per request than a task of its own.)

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::abort::Armed;
use super::failure::Failure;
use super::origin::{Sender, UpstreamBody, Upstreams};
use crate::workers::Workers;

/// Idle upstream connections kept per service and worker for new clients.
const SPARES: usize = 64;

/// How long a spare may wait for a new client: long enough to carry a
/// client that connects per request, short enough that an idle service
/// soon holds no upstream connections (and far under common upstreams'
/// keep-alive timeouts, so a spare is rarely found closed).
const SPARE_FOR: Duration = Duration::from_secs(2);

/// The upstream connection of one client connection, while idle.
pub(super) struct Sticky {
    // A std mutex, held only to take or return the sender, never across an
    // await; only the client connection's own requests touch it.
    idle: Mutex<Option<Sender>>,
    spares: Arc<Spares>,
}

impl Sticky {
    pub(super) fn new(spares: Arc<Spares>) -> Sticky {
        Sticky {
            idle: Mutex::new(None),
            spares,
        }
    }

    fn take(&self) -> Option<Sender> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn put(&self, sender: Sender) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.is_none() {
            *idle = Some(sender);
        }
    }
}

impl Drop for Sticky {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = idle.take() {
            self.spares.put(sender);
        }
    }
}

/// Idle upstream connections and when each became a spare, newest last.
type List = Vec<(Sender, Instant)>;

/// Idle upstream connections whose clients have gone; one
/// list per worker thread, since a connection belongs to the thread that
/// opened it and a client takes spares only from its own thread's list.
pub(super) struct Spares {
    // std mutexes: each taken once when a client connection ends and once
    // when a new one sends its first request, never across an await.
    lists: Box<[Mutex<List>]>,
    workers: Workers,
    /// Once shutdown starts, spares are closed and no more are kept.
    draining: CancellationToken,
}

impl Spares {
    /// Spares for one accept loop, with a task that closes them as they
    /// expire and all at once when shutdown starts. The task ends with the
    /// last connection of the loop.
    pub(super) fn new(workers: Workers, draining: CancellationToken) -> Arc<Spares> {
        let spares = Arc::new(Spares {
            lists: (0..workers.threads()).map(|_| Mutex::default()).collect(),
            workers,
            draining: draining.clone(),
        });
        tokio::spawn(sweep(Arc::downgrade(&spares), draining));
        spares
    }

    /// The calling worker thread's list.
    fn list(&self) -> MutexGuard<'_, List> {
        let list = &self.lists[self.workers.current_index()];
        list.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn expire(&self, now: Instant) {
        for list in &self.lists {
            let mut idle = list.lock().unwrap_or_else(|e| e.into_inner());
            idle.retain(|(sender, since)| !sender.is_closed() && now - *since < SPARE_FOR);
        }
    }

    fn clear(&self) {
        for list in &self.lists {
            list.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// The newest spare that is still open and fresh.
    fn take(&self) -> Option<Sender> {
        let mut idle = self.list();
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < SPARE_FOR {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` if it is idle and open; the oldest spare makes room.
    /// Expired spares are left to [`sweep`] and to [`Spares::take`].
    fn put(&self, sender: Sender) {
        if !sender.is_ready() || self.draining.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.list();
        if idle.len() >= SPARES {
            idle.remove(0);
        }
        idle.push((sender, now));
    }
}

/// Closes expired spares every [`SPARE_FOR`], and every spare when
/// shutdown starts.
async fn sweep(spares: Weak<Spares>, draining: CancellationToken) {
    loop {
        let drain = tokio::select! {
            () = tokio::time::sleep(SPARE_FOR) => false,
            () = draining.cancelled() => true,
        };
        let Some(spares) = spares.upgrade() else {
            return;
        };
        if drain {
            spares.clear();
            return;
        }
        spares.expire(Instant::now());
    }
}

/// Sends `request` over the client connection's own upstream connection,
/// taking a spare or opening one when there is none or it has closed. A
/// request a closed connection never took is sent again on a new one.
pub(super) async fn send(
    upstreams: &Upstreams,
    sticky: &Sticky,
    request: Request<UpstreamBody>,
) -> Result<Response<Incoming>, Failure> {
    let mut request = request;
    if let Some(mut sender) = sticky.take().or_else(|| sticky.spares.take()) {
        if sender.ready().await.is_ok() {
            let armed = arm(&sender, &request);
            match sender.try_send_request(request).await {
                Ok(response) => {
                    disarm(armed);
                    sticky.put(sender);
                    return Ok(response);
                }
                Err(mut e) => match e.take_message() {
                    // Not sent: the upstream closed the idle connection.
                    Some(unsent) => {
                        disarm(armed);
                        request = unsent;
                    }
                    None => {
                        let e = e.into_error();
                        return Err(Failure::Exchange(e.to_string()));
                    }
                },
            }
        }
    }
    // Boxed: connecting (and a TLS handshake) is the rare path, and
    // hyper moves each request's future, this one inside, into place.
    let mut sender = Box::pin(upstreams.open(false)).await?;
    let armed = arm(&sender, &request);
    let response =
        (sender.send_request(request).await).map_err(|e| Failure::Exchange(e.to_string()))?;
    disarm(armed);
    sticky.put(sender);
    Ok(response)
}

/// Arms the abort of `sender`'s connection while a request with a body is
/// on its way: hyper, given up on mid-body, would keep the connection for
/// as long as the upstream does not read. A request without a body needs
/// none; hyper closes its connection itself.
fn arm(sender: &Sender, request: &Request<UpstreamBody>) -> Option<Armed> {
    let body = http_body::Body::is_end_stream(request.body());
    (!body).then(|| Armed::new(&sender.abort))
}

fn disarm(armed: Option<Armed>) {
    if let Some(armed) = armed {
        armed.disarm();
    }
}
