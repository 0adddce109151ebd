//! TLS from clients. The handshake runs in the connection's own task under
//! a time limit, so a client that connects and never speaks holds only its
//! own task, never the accept loop, and not for long: a newer connection
//! may close it sooner to take its place (see [`limits::admit_handshake`]).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::Outcome;
use crate::proxy::limits::{self, Handshake, Slot};
use crate::proxy::ServiceContext;

/// How long a client has to finish its TLS handshake.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Completes the TLS handshake of an accepted client, which holds
/// `pending` meanwhile. A failed, unfinished or displaced handshake is
/// logged (debug) and counted as `tls_error`, and the connection closed; a
/// successful one counts as `accepted` and keeps its place.
pub(super) async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    context: &ServiceContext,
    (pending, hard_stop): (Handshake, &CancellationToken),
) -> Option<(TlsStream<TcpStream>, Slot)> {
    let service = &context.service.name;
    let result = tokio::select! {
        result = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => result,
        () = pending.cut() => {
            tracing::debug!(%service, %peer, "TLS handshake not finished within {:?} while newer connections waited", limits::PRESSED_HANDSHAKE);
            context.metrics.connection(Outcome::TlsError);
            return None;
        }
        () = hard_stop.cancelled() => return None,
    };
    match result {
        Ok(Ok(stream)) => {
            // Displaced just as it finished: closed like the others.
            let slot = pending.finish()?;
            context.metrics.connection(Outcome::Accepted);
            Some((stream, slot))
        }
        Ok(Err(e)) => {
            tracing::debug!(%service, %peer, "TLS handshake failed: {e}");
            context.metrics.connection(Outcome::TlsError);
            None
        }
        Err(_) => {
            tracing::debug!(%service, %peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}");
            context.metrics.connection(Outcome::TlsError);
            None
        }
    }
}
