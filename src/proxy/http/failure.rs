//! Every way a request fails, and its answer, in one place (as pingora's
//! `fail_to_proxy`): a request firedrill will not forward, or one the
//! upstream failed, maps here to its status, its log line and its body.
//! Injected `error` faults are not failures: they answer the plan's body.

use std::fmt;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use super::ProxyBody;
use crate::metrics::Outcome;
use crate::proxy::connect::ConnectError;
use crate::proxy::ServiceContext;

/// Why a request got an answer of firedrill's own.
#[derive(Debug)]
pub(super) enum Failure {
    /// The request is not one to forward (`CONNECT`, a wrong number of
    /// `Host` fields); `close` ends an HTTP/1.1 connection after it.
    Malformed {
        status: StatusCode,
        what: &'static str,
        close: bool,
    },
    /// The client's request body broke off or was malformed.
    ClientBody(String),
    /// No connection to the upstream: refused, unresolved, reset.
    Unreachable(String),
    /// The upstream took no connection within `connect_timeout`.
    ConnectTimedOut,
    /// The TLS handshake with an `https://` upstream failed, and why.
    Tls(String),
    /// The exchange with the upstream broke.
    Exchange(String),
    /// No response headers within `timeout` of the whole request.
    NoHeaders,
    /// The upstream took none of the request body for `upstream_idle_timeout`.
    BodyStalled,
    /// An `Upgrade` request got no answer within `timeout`.
    UpgradeUnanswered,
    /// `101 Switching Protocols` to a request that asked for no upgrade.
    UnaskedUpgrade,
}

impl Failure {
    /// A failed connect: timed out (as the kernel may say), or unreachable.
    fn connect(error: &std::io::Error) -> Failure {
        match error.kind() {
            std::io::ErrorKind::TimedOut => Failure::ConnectTimedOut,
            _ => Failure::Unreachable(error.to_string()),
        }
    }

    /// The status of the answer.
    fn status(&self) -> StatusCode {
        match self {
            Failure::Malformed { status, .. } => *status,
            Failure::ClientBody(_) => StatusCode::BAD_REQUEST,
            Failure::ConnectTimedOut
            | Failure::NoHeaders
            | Failure::BodyStalled
            | Failure::UpgradeUnanswered => StatusCode::GATEWAY_TIMEOUT,
            Failure::Unreachable(_)
            | Failure::Tls(_)
            | Failure::Exchange(_)
            | Failure::UnaskedUpgrade => StatusCode::BAD_GATEWAY,
        }
    }

    /// How the request counts.
    pub(super) fn outcome(&self) -> Outcome {
        match self {
            Failure::Malformed { .. } | Failure::ClientBody(_) => Outcome::ClientError,
            _ => Outcome::UpstreamError,
        }
    }
}

impl From<ConnectError> for Failure {
    fn from(error: ConnectError) -> Failure {
        Failure::from(&error)
    }
}

impl From<&ConnectError> for Failure {
    fn from(error: &ConnectError) -> Failure {
        match error {
            ConnectError::Refused(e) => Failure::connect(e),
            ConnectError::TimedOut(_) | ConnectError::TlsTimedOut(_) => Failure::ConnectTimedOut,
            ConnectError::Tls(e) => Failure::Tls(tls_reason(e)),
        }
    }
}

/// rustls's reason for a failed handshake when there is one (say, a
/// certificate not valid for the name), else the error itself.
pub(super) fn tls_reason(error: &(dyn std::error::Error + 'static)) -> String {
    match rustls_error(error) {
        Some(tls) => tls.to_string(),
        None => error.to_string(),
    }
}

/// The rustls error inside `error`, which may be wrapped in I/O errors.
fn rustls_error<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let io = error.downcast_ref::<std::io::Error>()?;
    rustls_error(io.get_ref()?)
}

/// What went wrong: for the upstream's failures, completing "upstream ...".
struct What<'a>(&'a Failure, &'a ServiceContext);

impl fmt::Display for What<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = &self.1.service;
        let format = humantime::format_duration;
        match self.0 {
            Failure::Unreachable(why) => write!(f, "is unreachable: {why}"),
            Failure::ConnectTimedOut => write!(
                f,
                "did not accept a connection within {}",
                format(service.connect_timeout)
            ),
            Failure::Tls(reason) => write!(f, "failed the TLS handshake: {reason}"),
            Failure::Exchange(why) => write!(f, "failed: {why}"),
            Failure::NoHeaders => write!(
                f,
                "did not send response headers within {} of receiving the request",
                format(service.timeout)
            ),
            Failure::BodyStalled => write!(
                f,
                "took none of the request body for {} (upstream_idle_timeout)",
                format(service.limits.upstream_idle_timeout)
            ),
            Failure::UpgradeUnanswered => f.write_str("did not answer the upgrade in time"),
            Failure::UnaskedUpgrade => f.write_str(
                "answered 101 Switching Protocols to a request that asked for no upgrade",
            ),
            Failure::Malformed { what, .. } => f.write_str(what),
            Failure::ClientBody(why) => {
                write!(f, "the request body could not be read: {why}")
            }
        }
    }
}

/// The answer to `failure`, logged: a client's failure at debug, an
/// upstream's at debug and, rate-limited, at warn with its service.
pub(super) fn response(failure: Failure, context: &ServiceContext) -> Response<ProxyBody> {
    let service = &context.service;
    let status = failure.status();
    let what = What(&failure, context).to_string();
    let body = match failure.outcome() {
        Outcome::ClientError => {
            tracing::debug!(service = %service.name, %status, "refused a request: {what}");
            format!("firedrill: service `{}`: {what}\n", service.name)
        }
        _ => {
            tracing::debug!(service = %service.name, upstream = %service.upstream, %status, "{what}");
            context.upstream_failed(&what);
            format!(
                "firedrill: service `{}` ({}): upstream {} {what}\n",
                service.name, service.datacenter, service.upstream
            )
        }
    };
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
        );
    }
    if let Failure::Malformed { close: true, .. } = failure {
        // What follows such a request (a tunnel's bytes, say) is not to be
        // read as the next request.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

impl From<&hyper_util::client::legacy::Error> for Failure {
    /// A pooled request's failure: a failed connect is unreachable, or
    /// timed out; a timeout on a connection already made (a reused one,
    /// say) is a plain failure.
    fn from(error: &hyper_util::client::legacy::Error) -> Failure {
        let root: &(dyn std::error::Error + 'static) = error;
        let chain = || std::iter::successors(Some(root), |e| e.source());
        if let Some(connect) = chain().find_map(|e| e.downcast_ref::<ConnectError>()) {
            return Failure::from(connect);
        }
        if let Some(tls) = chain().find(|e| rustls_error(*e).is_some()) {
            return Failure::Tls(tls_reason(tls));
        }
        if error.is_connect() {
            if let Some(io) = chain().find_map(|e| e.downcast_ref::<std::io::Error>()) {
                return Failure::connect(io);
            }
        }
        let chain: Vec<String> = chain().map(|e| e.to_string()).collect();
        match error.is_connect() {
            true => Failure::Unreachable(chain.join(": ")),
            false => Failure::Exchange(chain.join(": ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upstream_that_times_out_gets_504_and_one_that_fails_502() {
        let timed_out = std::io::Error::from(std::io::ErrorKind::TimedOut);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let limit = std::time::Duration::from_secs(1);
        let cases = [
            (Failure::from(ConnectError::Refused(timed_out)), 504),
            (Failure::from(ConnectError::TimedOut(limit)), 504),
            (Failure::from(ConnectError::TlsTimedOut(limit)), 504),
            (Failure::from(ConnectError::Refused(refused)), 502),
            (Failure::NoHeaders, 504),
            (Failure::BodyStalled, 504),
            (Failure::UpgradeUnanswered, 504),
            (Failure::UnaskedUpgrade, 502),
            (Failure::Exchange("broken pipe".to_owned()), 502),
        ];
        for (failure, status) in cases {
            assert_eq!(failure.status().as_u16(), status, "{failure:?}");
            assert_eq!(failure.outcome(), Outcome::UpstreamError, "{failure:?}");
        }
    }

    #[test]
    fn a_broken_request_is_the_clients_error() {
        let body = Failure::ClientBody("bad chunk".to_owned());
        assert_eq!(body.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body.outcome(), Outcome::ClientError);
        let connect = Failure::Malformed {
            status: StatusCode::METHOD_NOT_ALLOWED,
            what: "CONNECT is not supported",
            close: true,
        };
        assert_eq!(connect.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(connect.outcome(), Outcome::ClientError);
    }

    #[test]
    fn a_tls_failure_gives_rustls_reason_through_io_errors() {
        let rustls = rustls::Error::General("bad certificate".to_owned());
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls);
        match Failure::from(ConnectError::Tls(io)) {
            Failure::Tls(reason) => assert!(reason.contains("bad certificate"), "{reason}"),
            other => panic!("not a TLS failure: {other:?}"),
        }
    }
}
