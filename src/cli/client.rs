//! One admin API call over HTTP/1.1, plain or TLS (server verified with
//! `--cacert` or the system's roots, a client certificate for mutual TLS),
//! with the bearer token of `FIREDRILL_TOKEN`. Every failure says which
//! of the runbook's exit codes it means.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::admin::api;
use crate::{fetch, tls};

/// The largest answer read: a report with many services stays far below.
const MAX_ANSWER: usize = 16 << 20;

/// Where the admin API is and how to reach it, as the flags give it.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The admin API of a running firedrill.
    #[arg(
        long,
        env = "FIREDRILL_ADMIN",
        default_value = "http://127.0.0.1:9090",
        value_name = "URL"
    )]
    pub admin: String,
    /// Trust this CA (PEM) for an https admin API instead of the system's.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS; needs --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM); needs --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// How long connecting and one answer may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// Why a call gave no answer from the API.
#[derive(Debug)]
pub enum Failure {
    /// The flags cannot work (a bad URL, an unreadable PEM file): exit 2.
    Usage(String),
    /// Nothing answered as firedrill's admin API does: exit 3.
    Unreachable(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(message) | Failure::Unreachable(message) => f.write_str(message),
        }
    }
}

/// An HTTP answer: its status, content type and body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Bytes,
}

impl Answer {
    /// The body as text, invalid UTF-8 replaced.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The API's error body, when it answered one.
    pub fn error(&self) -> Option<api::ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A ready client of one admin API: its parsed address, TLS configuration
/// and token.
pub struct Client {
    /// The URL as given, without a trailing `/`: messages name it.
    pub url: String,
    scheme_tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    host: String,
    port: u16,
    prefix: String,
    authority: String,
    token: Option<String>,
    timeout: Duration,
}

impl Client {
    /// Checks the flags and reads the PEM files they name; `token` is the
    /// bearer token to send, if any.
    pub fn new(target: &Target, token: Option<String>) -> Result<Client, Failure> {
        let url = target.admin.trim_end_matches('/').to_owned();
        let usage = |why: &str| {
            Failure::Usage(format!(
                "the admin URL `{}` (--admin or FIREDRILL_ADMIN) {why}; write it like http://127.0.0.1:9090 or https://firedrill.example:9090",
                target.admin
            ))
        };
        let uri: Uri = url.parse().map_err(|_| usage("is not a URL"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(usage("must start with http:// or https://")),
            None => return Err(usage("needs a scheme")),
        };
        let host = uri.host().ok_or_else(|| usage("names no host"))?;
        // `[::1]` in a URL is `::1` to connect to and to verify.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if uri.query().is_some() {
            return Err(usage("must not have a query"));
        }
        if target.timeout.is_zero() {
            return Err(Failure::Usage(
                "--timeout must be longer than 0s".to_owned(),
            ));
        }
        if !https && (target.cacert.is_some() || target.cert.is_some()) {
            return Err(Failure::Usage(format!(
                "--cacert, --cert and --key need an https:// admin URL, not `{}`",
                target.admin
            )));
        }
        let scheme_tls = if https {
            let name = ServerName::try_from(host.clone()).map_err(|_| usage("has a bad host"))?;
            Some((tls_config(target)?, name))
        } else {
            None
        };
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        Ok(Client {
            scheme_tls,
            port,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            authority,
            host,
            url,
            token: token.filter(|t| !t.is_empty()),
            timeout: target.timeout,
        })
    }

    /// Whether a token is sent.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Calls `method path` with an optional JSON `body`, asking for `accept`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        accept: &'static str,
    ) -> Result<Answer, Failure> {
        tokio::time::timeout(self.timeout, self.exchange(method, path, body, accept))
            .await
            .unwrap_or_else(|_| {
                Err(self.unreachable(&format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                )))
            })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        accept: &'static str,
    ) -> Result<Answer, Failure> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("firedrill/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                Failure::Usage("FIREDRILL_TOKEN holds characters a header cannot carry".to_owned())
            })?;
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::Usage(format!("cannot build the request for {path}: {e}")))?;
        let stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(&e.to_string()))?;
        let _ = stream.set_nodelay(true);
        match &self.scheme_tls {
            None => self.send(stream, request).await,
            Some((config, name)) => {
                let stream = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| self.unreachable(&format!("the TLS handshake failed: {e}")))?;
                self.send(stream, request).await
            }
        }
    }

    async fn send<S>(&self, stream: S, request: Request<Full<Bytes>>) -> Result<Answer, Failure>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (status, body) =
            fetch::exchange(stream, request, MAX_ANSWER)
                .await
                .map_err(|error| match error {
                    fetch::Error::Handshake(e) => self.unreachable(&e.to_string()),
                    fetch::Error::Send(e) => {
                        let hint = if self.scheme_tls.is_none() {
                            " (if its admin API speaks TLS, use an https:// URL)"
                        } else {
                            ""
                        };
                        self.unreachable(&format!("{e}{hint}"))
                    }
                    fetch::Error::Read(e) => self.unreachable(&format!("reading its answer: {e}")),
                })?;
        Ok(Answer { status, body })
    }

    fn unreachable(&self, why: &str) -> Failure {
        Failure::Unreachable(format!(
            "firedrill is not reachable at {}: {why}; is it running there? Set --admin or FIREDRILL_ADMIN",
            self.url
        ))
    }
}

/// The TLS client configuration the flags ask for: `--cacert` or the
/// system's roots, and `--cert`/`--key` when given.
fn tls_config(target: &Target) -> Result<Arc<ClientConfig>, Failure> {
    let usage = |e: tls::TlsError| Failure::Usage(e.to_string());
    let roots = match &target.cacert {
        Some(path) => tls::root_store(
            "--cacert file",
            &tls::read("--cacert file", path).map_err(usage)?,
        )
        .map_err(usage)?,
        None => tls::system_roots(),
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure::Usage(e.to_string()))?
            .with_root_certificates(roots);
    let mut config = match (&target.cert, &target.key) {
        (Some(cert), Some(key)) => {
            let chain = tls::certificates(
                "--cert file",
                &tls::read("--cert file", cert).map_err(usage)?,
            )
            .map_err(usage)?;
            let key =
                tls::private_key(&tls::read("--key file", key).map_err(usage)?).map_err(usage)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Failure::Usage(format!("--cert and --key do not form a usable pair: {e}"))
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = tls::ALPN_HTTP1.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(admin: &str) -> Target {
        Target {
            admin: admin.to_owned(),
            cacert: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(1),
        }
    }

    fn client(admin: &str) -> Client {
        Client::new(&target(admin), None).unwrap_or_else(|e| panic!("{admin}: {e}"))
    }

    fn usage(admin: &str) -> String {
        match Client::new(&target(admin), None) {
            Err(Failure::Usage(message)) => message,
            Err(other) => panic!("{admin}: {other}"),
            Ok(_) => panic!("{admin} accepted"),
        }
    }

    #[test]
    fn an_admin_url_gives_where_to_connect_and_the_path_prefix() {
        let plain = client("http://127.0.0.1:9090/");
        assert_eq!(plain.url, "http://127.0.0.1:9090");
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 9090));
        assert_eq!(
            (plain.prefix.as_str(), plain.authority.as_str()),
            ("", "127.0.0.1:9090")
        );
        let behind = client("https://firedrill.example/drill/");
        assert_eq!(
            (behind.host.as_str(), behind.port),
            ("firedrill.example", 443)
        );
        assert_eq!(behind.prefix, "/drill");
        assert!(behind.scheme_tls.is_some());
        let six = client("http://[::1]:9090");
        assert_eq!(
            (six.host.as_str(), six.authority.as_str()),
            ("::1", "[::1]:9090")
        );
    }

    #[test]
    fn a_bad_admin_url_is_a_usage_error_that_shows_the_right_form() {
        let form = "; write it like http://127.0.0.1:9090 or https://firedrill.example:9090";
        assert_eq!(
            usage("127.0.0.1:9090"),
            format!(
                "the admin URL `127.0.0.1:9090` (--admin or FIREDRILL_ADMIN) needs a scheme{form}"
            )
        );
        assert_eq!(
            usage("ftp://h:1"),
            format!("the admin URL `ftp://h:1` (--admin or FIREDRILL_ADMIN) must start with http:// or https://{form}")
        );
        assert_eq!(
            usage("http://h:1/?x=1"),
            format!("the admin URL `http://h:1/?x=1` (--admin or FIREDRILL_ADMIN) must not have a query{form}")
        );
        let mut tls_on_http = target("http://127.0.0.1:9090");
        tls_on_http.cacert = Some("ca.pem".into());
        assert!(
            matches!(Client::new(&tls_on_http, None), Err(Failure::Usage(m)) if m.contains("need an https:// admin URL"))
        );
    }

    #[test]
    fn an_empty_token_is_no_token() {
        assert!(!Client::new(&target("http://h:1"), Some(String::new()))
            .unwrap()
            .has_token());
        assert!(Client::new(&target("http://h:1"), Some("t".to_owned()))
            .unwrap()
            .has_token());
    }
}
