//! Stand-in upstreams for `firedrill demo`: for every service of a plan, an
//! HTTP responder that says which service and data center answered, or a
//! TCP echo server, bound at the service's upstream address.
//! [`shift_ports`] moves the whole demo (`--port-offset`) beside whatever
//! already holds its ports.

use std::convert::Infallible;

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
use crate::listen::Clients;
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
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AddrInUse => {
                    let port = port_of(&service.upstream.authority).unwrap_or(0);
                    error(format!("{e}; {}", port_taken(port)))
                }
                _ => error(e.to_string()),
            })?;
        let addr = listener.local_addr().map_err(|e| error(e.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(error("the demo only binds loopback addresses".to_owned()));
        }
        let clients = Clients::new(listener, "demo upstream", stop.clone());
        match service.protocol {
            Protocol::Http => tokio::spawn(http_responder(clients, service.clone())),
            Protocol::Tcp => tokio::spawn(echo(clients)),
        };
    }
    Ok(())
}

/// What to do about a port of the demo that something else holds.
pub fn port_taken(port: u16) -> String {
    format!(
        "port {port} is taken; run the demo on other ports with --port-offset, \
         like `firedrill demo --port-offset 10000`"
    )
}

/// Moves every port of `plan` up by `offset`: the services' listeners,
/// their upstreams (where the stand-ins listen) and the admin API. Port 0
/// stays 0 (any free port).
pub fn shift_ports(plan: &mut Plan, offset: u16) -> Result<(), String> {
    let shift = |port: u16| -> Result<u16, String> {
        if port == 0 {
            return Ok(0);
        }
        port.checked_add(offset).ok_or_else(|| {
            format!("--port-offset {offset} moves port {port} past 65535; use a smaller offset")
        })
    };
    let admin = plan.admin.listen.port();
    plan.admin.listen.set_port(shift(admin)?);
    for service in &mut plan.topology.services {
        service.listen.set_port(shift(service.listen.port())?);
        let authority = &mut service.upstream.authority;
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
            .ok_or_else(|| format!("upstream `{authority}` has no port to move"))?;
        *authority = format!("{host}:{}", shift(port)?);
    }
    Ok(())
}

/// The port of a `host:port` authority.
fn port_of(authority: &str) -> Option<u16> {
    authority.rsplit_once(':')?.1.parse().ok()
}

async fn http_responder(clients: Clients, service: Service) {
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Some((stream, _)) = clients.next().await {
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

async fn echo(clients: Clients) {
    while let Some((mut stream, _)) = clients.next().await {
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
[admin]
listen = "127.0.0.1:9090"
[datacenters.pangyo]
[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:8001"
upstream = "http://127.0.0.1:9001"
[services.cache]
datacenter = "pangyo"
protocol = "tcp"
listen = "[::1]:0"
upstream = "[::1]:9379"
"#;

    #[test]
    fn shifting_moves_every_listener_upstream_and_the_admin_api() {
        let mut plan = crate::config::parse(PLAN, "demo.toml").unwrap();
        shift_ports(&mut plan, 1000).unwrap();
        assert_eq!(plan.admin.listen.to_string(), "127.0.0.1:10090");
        let talk = plan.topology.service("talk").unwrap();
        assert_eq!(talk.listen.to_string(), "127.0.0.1:9001");
        assert_eq!(talk.upstream.to_string(), "http://127.0.0.1:10001");
        let cache = plan.topology.service("cache").unwrap();
        assert_eq!(cache.listen.to_string(), "[::1]:0");
        assert_eq!(cache.upstream.to_string(), "[::1]:10379");
    }

    #[test]
    fn shifting_past_the_last_port_is_refused() {
        let mut plan = crate::config::parse(PLAN, "demo.toml").unwrap();
        assert_eq!(
            shift_ports(&mut plan, 60000).unwrap_err(),
            "--port-offset 60000 moves port 9090 past 65535; use a smaller offset"
        );
    }
}
