//! `Upgrade` (WebSocket) requests: passed to the upstream on a connection of
//! their own; after `101 Switching Protocols` both streams are relayed like a
//! TCP connection, under the same live rules.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::failure::{self, Failure};
use super::sending::Sending;
use super::{Proxy, ProxyBody};
use crate::metrics::Outcome;
use crate::proxy::limits;
use crate::proxy::policy::Policy;
use crate::proxy::relay;
use crate::proxy::{Counted, Flow};

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

impl Proxy {
    /// Passes an upgrade request on; an upstream failure becomes a 502/504
    /// answer counted as `upstream_error`.
    pub(super) async fn upgrade(
        &self,
        request: Request<Incoming>,
        forwarded_for: HeaderValue,
        seed: u64,
    ) -> (Outcome, Response<ProxyBody>) {
        match self.try_upgrade(request, forwarded_for, seed).await {
            Ok(response) => (Outcome::Forwarded, response),
            Err(failure) => (failure.outcome(), failure::response(failure, &self.context)),
        }
    }

    async fn try_upgrade(
        &self,
        mut request: Request<Incoming>,
        forwarded_for: HeaderValue,
        seed: u64,
    ) -> Result<Response<ProxyBody>, Failure> {
        let service = &self.context.service;
        let client_upgrade = hyper::upgrade::on(&mut request);
        self.prepare(&mut request, forwarded_for, true);
        let mut sender = self.upstreams.open(true).await?;
        let request = request.map(|body| {
            let counted = Counted::new(body, Arc::clone(&self.context), Flow::Upstream);
            Sending::new(counted, None)
        });
        let mut response = tokio::time::timeout(service.timeout, sender.send_request(request))
            .await
            .map_err(|_| Failure::UpgradeUnanswered)?
            .map_err(|e| Failure::Exchange(e.to_string()))?;
        let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switched {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let context = Arc::clone(&self.context);
            let hard_stop = self.shutdown.hard_stop.clone();
            self.shutdown.tracker.spawn(async move {
                let (client, upstream) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::debug!("upgrade failed: {e}");
                        return;
                    }
                };
                // hyper's connection task ends, and gives back its slot,
                // once it hands the connection over; it stays open here
                // until the relay ends.
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
            });
        }
        // An upstream that declines the upgrade answers an ordinary
        // response, whose hop-by-hop fields go like any other's.
        Ok(self.downstream_upgrade(response, switched))
    }
}
