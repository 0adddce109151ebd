//! One PromQL instant query (`GET /api/v1/query`) against the Prometheus
//! a guard names, over http or https (the system's CA certificates), on a
//! fresh connection within a short timeout. Only the guard task calls it,
//! never the data plane.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Empty;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;

use crate::fetch;

/// The most of an answer read: an instant query a guard compares with a
/// threshold has a few samples, not megabytes.
const MOST: usize = 1 << 20;

/// The values of every sample the query returns now (NaN ones left out);
/// an error says what failed, for a person.
pub(super) async fn query(url: &Uri, promql: &str, limit: Duration) -> Result<Vec<f64>, String> {
    match tokio::time::timeout(limit, ask(url, promql)).await {
        Ok(answer) => answer,
        Err(_) => Err(format!(
            "no answer within {}",
            humantime::format_duration(limit)
        )),
    }
}

async fn ask(url: &Uri, promql: &str) -> Result<Vec<f64>, String> {
    let host = url.host().unwrap_or_default();
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    // Brackets come off an IPv6 literal for connecting and for TLS.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let base = url.path().trim_end_matches('/');
    let target = format!("{base}/api/v1/query?query={}", fetch::encode(promql));
    let authority = url.authority().map_or(host, |a| a.as_str()).to_owned();
    let request = Request::get(target)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let answer = if https {
        let name = ServerName::try_from(bare.to_owned())
            .map_err(|e| format!("`{bare}` is not a TLS server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(client_config().await?)
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        fetch::exchange(tls, request, MOST).await
    } else {
        fetch::exchange(stream, request, MOST).await
    };
    let (status, body) = answer.map_err(|e| e.to_string())?;
    values(status.as_u16(), &body)
}

/// The TLS client configuration for https, built once. Reading the
/// system's CA files is blocking file I/O, so it runs off the runtime's
/// threads; a failure is not kept, the next query tries again.
async fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceCell<Arc<ClientConfig>> = OnceCell::const_new();
    let build = || async {
        let built = tokio::task::spawn_blocking(|| {
            crate::tls::client_config(crate::tls::system_roots(), crate::tls::ALPN_HTTP1)
        });
        match built.await {
            Ok(config) => config.map_err(|e| e.to_string()),
            Err(e) => Err(format!("cannot load the system's CA certificates: {e}")),
        }
    };
    CONFIG.get_or_try_init(build).await.cloned()
}

/// The answer of `/api/v1/query`.
#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: serde_json::Value,
}

/// The sample values of an answer, or why there are none to compare.
fn values(status: u16, body: &[u8]) -> Result<Vec<f64>, String> {
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("HTTP {status} is not a Prometheus API answer: {text:?}")
    })?;
    if answer.status != "success" {
        let error = answer.error.unwrap_or_else(|| "no reason given".to_owned());
        return Err(format!("the query failed: {error}"));
    }
    let data = answer.data.ok_or("the answer has no data")?;
    let value =
        |pair: &serde_json::Value| -> Option<f64> { pair.get(1)?.as_str()?.parse::<f64>().ok() };
    let found: Vec<Option<f64>> = match data.result_type.as_str() {
        "vector" => (data.result.as_array().into_iter().flatten())
            .map(|sample| value(sample.get("value")?))
            .collect(),
        "scalar" => vec![value(&data.result)],
        other => {
            return Err(format!(
                "the query returns a {other}, not an instant vector or scalar; wrap a range in rate() or avg_over_time()"
            ))
        }
    };
    Ok(found
        .into_iter()
        .flatten()
        .filter(|v| !v.is_nan())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_vector_gives_every_sample_value() {
        let body = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"a":"1"},"value":[1700000000.1,"0.5"]},
            {"metric":{"a":"2"},"value":[1700000000.1,"NaN"]},
            {"metric":{"a":"3"},"value":[1700000000.1,"2"]}]}}"#;
        assert_eq!(values(200, body), Ok(vec![0.5, 2.0]));
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"3.5"]}}"#;
        assert_eq!(values(200, scalar), Ok(vec![3.5]));
    }

    #[test]
    fn a_failed_or_odd_answer_says_why() {
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 4"}"#;
        assert_eq!(
            values(400, bad),
            Err("the query failed: parse error at char 4".to_owned())
        );
        let matrix = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert!(values(200, matrix).unwrap_err().contains("a matrix"));
        assert_eq!(
            values(502, b"Bad Gateway"),
            Err("HTTP 502 is not a Prometheus API answer: \"Bad Gateway\"".to_owned())
        );
    }
}
