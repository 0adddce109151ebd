//! `firedrill check --probe`: before a game day, connect to every upstream
//! of a plan, all at once, each within its service's `connect_timeout`.
//! A tcp upstream must accept a connection; an http one must answer
//! `HEAD /` (any status), after the TLS handshake for `https://`.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::connect::{connect, connect_tls, ConnectError};
use crate::tls::UpstreamConnector;
use crate::topology::{Protocol, Service, Topology};

/// What probing one service's upstream found.
#[derive(Debug)]
pub struct Probe {
    pub service: Arc<str>,
    pub datacenter: Arc<str>,
    pub upstream: String,
    /// What answered (`Ok`), or why nothing did (`Err`).
    pub result: Result<String, String>,
}

/// Probes every service's upstream concurrently; results in plan order.
pub async fn probe_all(topology: &Topology) -> Vec<Probe> {
    let running: Vec<_> = topology
        .services
        .iter()
        .map(|service| {
            let service = service.clone();
            tokio::spawn(async move { probe(&service).await })
        })
        .collect();
    let mut probes = Vec::with_capacity(running.len());
    for (service, task) in topology.services.iter().zip(running) {
        let result = task
            .await
            .unwrap_or_else(|e| Err(format!("the probe failed: {e}")));
        probes.push(Probe {
            service: Arc::clone(&service.name),
            datacenter: Arc::clone(&service.datacenter),
            upstream: service.upstream.to_string(),
            result,
        });
    }
    probes
}

/// Probes one service's upstream.
async fn probe(service: &Service) -> Result<String, String> {
    let within = humantime::format_duration(service.connect_timeout);
    let failed = |e| match e {
        ConnectError::Refused(e) => e.to_string(),
        ConnectError::TimedOut(_) => format!("no connection within {within} (connect_timeout)"),
        ConnectError::Tls(e) => format!("TLS handshake failed: {e}"),
        ConnectError::TlsTimedOut(_) => {
            format!("no TLS handshake within {within} (connect_timeout)")
        }
    };
    match &service.upstream_tls {
        _ if service.protocol == Protocol::Tcp => {
            connect(service).await.map_err(failed)?;
            Ok("reachable".to_owned())
        }
        None => head(service, connect(service).await.map_err(failed)?).await,
        Some(tls) => {
            let tls = UpstreamConnector::new(tls).map_err(|e| format!("TLS setup failed: {e}"))?;
            let stream = connect_tls(service, &tls).await.map_err(failed)?;
            head(service, stream).await
        }
    }
}

/// Sends `HEAD /` over `stream`; any HTTP answer means reachable.
async fn head<S>(service: &Service, stream: S) -> Result<String, String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::HEAD)
            .uri("/")
            .header(header::HOST, service.upstream.authority.as_str())
            .header(header::USER_AGENT, "firedrill-probe")
            .body(Empty::<Bytes>::new())
            .expect("a fixed request is valid");
        sender.send_request(request).await
    };
    let limit = service.timeout;
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(response)) => Ok(format!("reachable, HEAD / answered {}", response.status())),
        Ok(Err(e)) => Err(format!("no HTTP answer to HEAD /: {e}")),
        Err(_) => Err(format!(
            "no answer to HEAD / within {} (timeout)",
            humantime::format_duration(limit)
        )),
    }
}

/// The probes as an aligned table, one service a line.
pub struct Table<'p>(pub &'p [Probe]);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = ["SERVICE", "DATACENTER", "UPSTREAM", "RESULT"];
        let rows: Vec<[String; 4]> = self
            .0
            .iter()
            .map(|p| {
                let result = match &p.result {
                    Ok(what) => what.clone(),
                    Err(why) => format!("UNREACHABLE: {why}"),
                };
                [
                    p.service.to_string(),
                    p.datacenter.to_string(),
                    p.upstream.clone(),
                    result,
                ]
            })
            .collect();
        let width = |column: usize| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .chain([header[column].len()])
                .max()
                .unwrap_or(0)
        };
        let widths = [width(0), width(1), width(2)];
        let header = header.map(str::to_owned);
        for row in std::iter::once(&header).chain(&rows) {
            writeln!(
                f,
                "{:w0$}  {:w1$}  {:w2$}  {}",
                row[0],
                row[1],
                row[2],
                row[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_marks_what_is_unreachable() {
        let probe = |service: &str, upstream: &str, result| Probe {
            service: service.into(),
            datacenter: "pangyo".into(),
            upstream: upstream.to_owned(),
            result,
        };
        let probes = [
            probe(
                "talk",
                "http://127.0.0.1:9001",
                Ok("reachable, HEAD / answered 200 OK".to_owned()),
            ),
            probe(
                "session-cache",
                "127.0.0.1:9379",
                Err("Connection refused (os error 111)".to_owned()),
            ),
        ];
        assert_eq!(
            Table(&probes).to_string(),
            "SERVICE        DATACENTER  UPSTREAM               RESULT\n\
             talk           pangyo      http://127.0.0.1:9001  reachable, HEAD / answered 200 OK\n\
             session-cache  pangyo      127.0.0.1:9379         UNREACHABLE: Connection refused (os error 111)\n"
        );
    }
}
