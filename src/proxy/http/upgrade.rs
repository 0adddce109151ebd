//! `Upgrade` (WebSocket) requests: the proxy passes them to the upstream on
//! a connection of their own; after `101 Switching Protocols` both streams
//! are relayed here like a TCP connection, under the same live rules.

use std::sync::Arc;

use http::header::{self, HeaderMap};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use crate::proxy::limits;
use crate::proxy::policy::Policy;
use crate::proxy::relay;
use crate::proxy::ServiceContext;

/// Whether a request asks to switch protocols (`Connection: upgrade`).
pub(super) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Relays an upgraded connection once both sides have switched: like a
/// tcp connection, under the same live rules, with the request's rolls.
pub(super) async fn relay(
    client: OnUpgrade,
    upstream: OnUpgrade,
    context: Arc<ServiceContext>,
    seed: u64,
    hard_stop: CancellationToken,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!("upgrade failed: {e}");
            return;
        }
    };
    // hyper's connection task ends, and gives back its slot, once it hands
    // the connection over; it stays open here until the relay ends.
    let _slot = limits::occupy(&context);
    let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    // A connection of its own now, with the request's rolls.
    let mut policy = Policy::connection(seed);
    let ruling = policy.look(&*context);
    relay::relay(
        client_read,
        client_write,
        upstream_read,
        upstream_write,
        &context,
        &mut policy,
        ruling,
        context.service.limits.idle_timeout,
        &hard_stop,
    )
    .await;
}
