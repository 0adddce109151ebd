//! Stand-in upstreams for `firedrill demo`: for every service of a plan, an
//! HTTP responder that says which service and data center answered, or a
//! TCP echo server, bound at the service's upstream address.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Plan;
use crate::topology::{Protocol, Service};

/// A stand-in upstream could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the stand-in upstream for service `{service}` on {upstream}: {reason}")]
pub struct DemoError {
    pub service: String,
    pub upstream: String,
    pub reason: String,
}

/// Starts one stand-in upstream per service; they stop with `stop`.
pub async fn start_upstreams(plan: &Plan, stop: CancellationToken) -> Result<(), DemoError> {
    for service in &plan.topology.services {
        let error = |reason: String| DemoError {
            service: service.name.to_string(),
            upstream: service.upstream.to_string(),
            reason,
        };
        let listener = TcpListener::bind(service.upstream.authority.as_str())
            .await
            .map_err(|e| error(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| error(e.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(error("the demo only binds loopback addresses".to_owned()));
        }
        let stop = stop.clone();
        let service = service.clone();
        match service.protocol {
            Protocol::Http => tokio::spawn(http_responder(listener, service, stop)),
            Protocol::Tcp => tokio::spawn(echo(listener, stop)),
        };
    }
    Ok(())
}

async fn http_responder(listener: TcpListener, service: Service, stop: CancellationToken) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    crate::proxy::tcp::accept_failed("demo upstream", e).await;
                    continue;
                }
            },
        };
        let answer = format!("{} ({})", service.name, service.datacenter);
        let builder = builder.clone();
        tokio::spawn(async move {
            let respond = service_fn(move |request: Request<Incoming>| {
                let body = format!(
                    "{answer} answered {} {}\n",
                    request.method(),
                    request.uri().path()
                );
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            let _ = builder
                .serve_connection(TokioIo::new(stream), respond)
                .await;
        });
    }
}

async fn echo(listener: TcpListener, stop: CancellationToken) {
    loop {
        let (mut stream, _): (_, SocketAddr) = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    crate::proxy::tcp::accept_failed("demo upstream", e).await;
                    continue;
                }
            },
        };
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}
