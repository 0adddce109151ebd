//! Serving the admin router: plain HTTP through `axum::serve`, or an accept
//! loop of TLS handshakes (bounded in time, so a silent client cannot hold
//! a task) in front of hyper-util's HTTP/1.1 + h2 server. Both stop on the
//! hard-stop token and give handlers the peer address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth::PeerCertificate;
use crate::config::{self, AdminTls};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long open admin connections may take to finish once `stop` fires.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Logs how the admin API is protected, then serves `router` on `listener`
/// (with TLS when `settings` has it) until `stop` is cancelled.
pub fn serve(
    listener: TcpListener,
    router: Router,
    settings: &config::Admin,
    stop: CancellationToken,
) {
    let names: Vec<&str> = settings.tokens.iter().map(|t| &*t.name).collect();
    tracing::info!(
        listen = %settings.listen,
        tls = %match &settings.tls {
            None => "off",
            Some(tls) if tls.mutual => "mutual",
            Some(_) => "on",
        },
        tokens = %if names.is_empty() { "none".to_owned() } else { names.join(",") },
        reads = %if !settings.protected() || settings.open_reads { "open" } else { "token" },
        "admin API listening (GET /scenarios, POST /faults/NAME, DELETE /faults, GET /metrics)"
    );
    match settings.tls.clone() {
        None => {
            tokio::spawn(async move {
                let app = router.into_make_service_with_connect_info::<SocketAddr>();
                if let Err(e) = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                {
                    tracing::error!("admin API stopped: {e}");
                }
            });
        }
        Some(tls) => {
            tokio::spawn(serve_tls(listener, router, tls, stop));
        }
    }
}

async fn serve_tls(listener: TcpListener, router: Router, tls: AdminTls, stop: CancellationToken) {
    let acceptor = TlsAcceptor::from(Arc::clone(&tls.config));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let connection = Connection {
                    acceptor: acceptor.clone(),
                    router: router.clone(),
                    builder: builder.clone(),
                    watcher: graceful.watcher(),
                    stop: stop.clone(),
                };
                tokio::spawn(connection.serve(stream, peer));
            }
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!("admin API accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(CLOSE_GRACE, graceful.shutdown()).await;
}

/// What one TLS connection needs from its listener.
struct Connection {
    acceptor: TlsAcceptor,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    stop: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: TcpStream, peer: SocketAddr) {
        let handshake = tokio::select! {
            () = self.stop.cancelled() => return,
            handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)) => handshake,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(%peer, "admin TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "admin TLS handshake timed out");
                return;
            }
        };
        let certificate = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|cert| common_name(cert))
            .map(PeerCertificate);
        let router = TowerToHyperService::new(self.router);
        let service = service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            if let Some(certificate) = &certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            router.call(request)
        });
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = self.watcher.watch(connection);
        tokio::select! {
            result = connection => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                }
            }
            // A connection that did not close in the grace is cut.
            () = async { self.stop.cancelled().await; tokio::time::sleep(CLOSE_GRACE).await } => {}
        }
    }
}

/// The subject common name of a DER certificate, if it has one.
fn common_name(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}
