//! TCP services: an accept loop, and per connection one decision at setup
//! (blackhole, drop, delay, forward) and a relay that keeps obeying the
//! rules while the connection is open. Over the service's
//! `max_connections`, a new connection is reset at once.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

use super::connect::{connect, ConnectError};
use super::limits::{self, Refusals};
use super::policy::{Fate, Policy};
use super::relay::{self, End};
use super::ServiceContext;
use crate::listen::Clients;
use crate::metrics::Outcome;
use crate::shutdown::Shutdown;

/// Serves the clients of one tcp service until its accept loop ends (see
/// [`Clients`]), then hands the listener back; open connections stay.
pub async fn serve(
    clients: Clients,
    context: Arc<ServiceContext>,
    shutdown: Shutdown,
) -> Option<TcpListener> {
    let mut refusals = Refusals::default();
    while let Some((stream, peer)) = clients.next().await {
        let Some(slot) = limits::admit(&context) else {
            refusals.record(&context);
            reset(&stream);
            continue;
        };
        let context = Arc::clone(&context);
        let hard_stop = shutdown.hard_stop.clone();
        let serve = move |stream| async move {
            let _slot = slot;
            handle(stream, peer, &context, &hard_stop).await;
        };
        shutdown
            .workers
            .run_connection(&shutdown.tracker, stream, serve);
    }
    clients.hand_back()
}

async fn handle(
    client: TcpStream,
    peer: SocketAddr,
    context: &ServiceContext,
    hard_stop: &tokio_util::sync::CancellationToken,
) {
    let _ = client.set_nodelay(true);
    let started = Instant::now();
    let mut policy = Policy::connection(rand::random());
    let mut client = client;
    let mut ruling = policy.look(context);
    let delayed = !ruling.delay.is_zero();
    if delayed {
        match policy.wait_out(context, started, ruling, hard_stop).await {
            Some(latest) => ruling = latest,
            None => return,
        }
    }
    match ruling.fate {
        Fate::Drop => {
            context.metrics.connection(Outcome::Dropped);
            reset(&client);
            return;
        }
        fate @ (Fate::Blackhole | Fate::Released) => {
            context.metrics.connection(Outcome::Blackholed);
            let upstream = None::<&mut TcpStream>;
            let end = relay::hold(&mut client, upstream, context, &mut policy, fate, hard_stop);
            if end.await == End::Reset {
                reset(&client);
            }
            return;
        }
        Fate::Forward | Fate::Error(_) => {}
    }
    let service = &context.service;
    let mut upstream = match connect(service).await {
        Ok(upstream) => upstream,
        Err(e) => {
            if let ConnectError::Refused(e) = &e {
                tracing::debug!(service = %service.name, %peer, upstream = %service.upstream, "upstream connect failed: {e}");
            } else {
                tracing::debug!(service = %service.name, %peer, upstream = %service.upstream, "upstream connect timed out");
            }
            context.upstream_failed(&e);
            context.metrics.connection(Outcome::UpstreamError);
            reset(&client);
            return;
        }
    };
    context.metrics.connection(if delayed {
        Outcome::Delayed
    } else {
        Outcome::Forwarded
    });
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let end = relay::relay(
        client_read,
        client_write,
        upstream_read,
        upstream_write,
        context,
        &mut policy,
        ruling,
        service.limits.idle_timeout,
        hard_stop,
    )
    .await;
    if end == End::Reset {
        reset(&client);
        reset(&upstream);
    }
}

/// Closes with RST instead of FIN, so the peer sees the connection cut.
fn reset(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!("cannot set SO_LINGER for a reset: {e}");
    }
}
