//! Connecting to a service's upstream: TCP within its `connect_timeout`,
//! and for an `https://` upstream the TLS handshake within what is left of
//! it. The tcp and http proxies and `firedrill check --probe` all connect
//! here.

use std::fmt;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;

use crate::tls::UpstreamConnector;
use crate::topology::Service;

/// Why no connection to the upstream was made.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Refused, unresolved, unreachable.
    Refused(std::io::Error),
    /// No TCP connection within `connect_timeout`.
    TimedOut(Duration),
    /// The TLS handshake failed.
    Tls(std::io::Error),
    /// The TLS handshake did not finish within `connect_timeout`.
    TlsTimedOut(Duration),
}

/// What went wrong, completing "upstream ...".
impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Refused(e) => write!(f, "is unreachable: {e}"),
            ConnectError::TimedOut(limit) | ConnectError::TlsTimedOut(limit) => write!(
                f,
                "did not accept a connection within {}",
                humantime::format_duration(*limit)
            ),
            ConnectError::Tls(e) => write!(f, "failed the TLS handshake: {e}"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Refused(e) | ConnectError::Tls(e) => Some(e),
            ConnectError::TimedOut(_) | ConnectError::TlsTimedOut(_) => None,
        }
    }
}

/// A TCP connection to `service`'s upstream, within its `connect_timeout`.
pub(crate) async fn connect(service: &Service) -> Result<TcpStream, ConnectError> {
    let limit = service.connect_timeout;
    connect_by(service, Instant::now() + limit, limit).await
}

/// A TLS connection to `service`'s upstream, TCP connect and handshake
/// together within its `connect_timeout`.
pub(crate) async fn connect_tls(
    service: &Service,
    tls: &UpstreamConnector,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let limit = service.connect_timeout;
    let deadline = Instant::now() + limit;
    let stream = connect_by(service, deadline, limit).await?;
    tokio::time::timeout_at(deadline, tls.handshake(stream))
        .await
        .map_err(|_| ConnectError::TlsTimedOut(limit))?
        .map_err(ConnectError::Tls)
}

async fn connect_by(
    service: &Service,
    deadline: Instant,
    limit: Duration,
) -> Result<TcpStream, ConnectError> {
    let address = service.upstream.authority.as_str();
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(address))
        .await
        .map_err(|_| ConnectError::TimedOut(limit))?
        .map_err(ConnectError::Refused)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
