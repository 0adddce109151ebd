//! The accept loop every listener runs: each service of the data plane,
//! the admin API and the demo's stand-in upstreams. It takes clients until
//! its stop (or shutdown's drain) fires, backs off briefly when an accept
//! fails, and hands the listener back when a caller wants to reuse it.
//! `activity` closes HTTP connections that sit idle.

pub(crate) mod activity;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed accept before trying again.
const BACK_OFF: Duration = Duration::from_millis(50);

/// The clients of one listener, taken one at a time by [`Clients::next`]
/// until `stop` fires, or shutdown starts to drain.
#[derive(Debug)]
pub struct Clients {
    listener: TcpListener,
    /// Who listens, for the log: a service's name, "admin API", ...
    who: Arc<str>,
    stop: CancellationToken,
    /// Shutdown's drain, when it ends this listener: then the listener is
    /// dropped rather than handed back.
    draining: Option<CancellationToken>,
}

impl Clients {
    /// Takes the clients of `listener`, for `who`, until `stop`.
    pub fn new(listener: TcpListener, who: impl Into<Arc<str>>, stop: CancellationToken) -> Self {
        Clients {
            listener,
            who: who.into(),
            stop,
            draining: None,
        }
    }

    /// Also stops once `draining` fires, and then hands nothing back.
    pub fn or_drain(self, draining: CancellationToken) -> Self {
        Clients {
            draining: Some(draining),
            ..self
        }
    }

    /// Waits for the next client, backing off after a failed accept: running
    /// out of file descriptors must slow the proxy down, not spin it.
    /// `None` once stopped or draining.
    pub async fn next(&self) -> Option<(TcpStream, SocketAddr)> {
        let draining = async {
            match &self.draining {
                Some(draining) => draining.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(draining);
        loop {
            let accepted = tokio::select! {
                () = &mut draining => return None,
                () = self.stop.cancelled() => return None,
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok(accepted) => return Some(accepted),
                Err(e) => {
                    tracing::warn!(listener = %self.who, "accept failed: {e}");
                    tokio::time::sleep(BACK_OFF).await;
                }
            }
        }
    }

    /// The listener back, for a reloaded plan, unless shutdown is draining:
    /// then it is closed here, which refuses new clients at once.
    pub fn hand_back(self) -> Option<TcpListener> {
        let draining = self.draining.as_ref().is_some_and(|d| d.is_cancelled());
        (!draining).then_some(self.listener)
    }

    /// Where the listener is bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    async fn bound() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.unwrap()
    }

    #[tokio::test]
    async fn a_client_is_taken_and_stop_hands_the_listener_back() {
        let stop = CancellationToken::new();
        let clients = Clients::new(bound().await, "test", stop.clone());
        let addr = clients.local_addr().unwrap();
        let _client = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let next = tokio::time::timeout(WAIT, clients.next()).await.unwrap();
        assert!(next.is_some());
        stop.cancel();
        let next = tokio::time::timeout(WAIT, clients.next()).await.unwrap();
        assert!(next.is_none());
        let listener = clients.hand_back().expect("handed back on stop");
        assert_eq!(listener.local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn draining_ends_the_loop_and_closes_the_listener() {
        let draining = CancellationToken::new();
        let clients = Clients::new(bound().await, "test", CancellationToken::new())
            .or_drain(draining.clone());
        draining.cancel();
        let next = tokio::time::timeout(WAIT, clients.next()).await.unwrap();
        assert!(next.is_none());
        assert!(clients.hand_back().is_none());
    }
}
