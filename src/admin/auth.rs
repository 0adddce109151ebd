//! Who may call the admin API: the plan's bearer tokens, compared in
//! constant time, guard every endpoint (reads too, unless `open_reads`).
//! The middleware hands handlers a [`Caller`], which names the token and
//! the peer for the audit trail and never carries the token's value.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::{AdminState, ApiError};
use crate::config::Token;

/// Who made an admin request, as activation and lift records name them:
/// `gameday-lead (127.0.0.1:53412)`, or only the address when the plan
/// has no tokens.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The name of the token presented; `None` when none was needed.
    pub token: Option<Arc<str>>,
    pub peer: SocketAddr,
    /// The subject CN of the client certificate, under mutual TLS.
    pub certificate: Option<Arc<str>>,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.token, &self.certificate) {
            (Some(token), Some(cn)) => write!(f, "{token} ({}, CN={cn})", self.peer),
            (Some(token), None) => write!(f, "{token} ({})", self.peer),
            (None, Some(cn)) => write!(f, "{} (CN={cn})", self.peer),
            (None, None) => write!(f, "{}", self.peer),
        }
    }
}

/// The subject CN of a connection's verified client certificate, put into
/// each request's extensions by the TLS accept loop.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<str>);

/// Middleware: lets a request through with a [`Caller`] in its extensions,
/// or answers 401 (no usable token) or 403 (an unknown token).
pub(super) async fn authorize(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let plan = state.engine.plan();
    let admin = &plan.admin;
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let token = if admin.tokens.is_empty() {
        None
    } else {
        match bearer(request.headers()) {
            Presented::Nothing if read && admin.open_reads => None,
            Presented::Nothing => {
                tracing::debug!(%peer, path = request.uri().path(), "admin call without a token refused");
                return ApiError::Unauthorized(
                    "this endpoint needs a token: send `Authorization: Bearer TOKEN` with a token from [admin] tokens"
                        .to_owned(),
                )
                .into_response();
            }
            Presented::Malformed => {
                tracing::debug!(%peer, path = request.uri().path(), "admin call with a malformed Authorization header refused");
                return ApiError::Unauthorized(
                    "the Authorization header must read `Bearer TOKEN`".to_owned(),
                )
                .into_response();
            }
            Presented::Several(count) => {
                tracing::debug!(%peer, path = request.uri().path(), "admin call with {count} Authorization headers refused");
                return ApiError::BadRequest(format!(
                    "this request has {count} Authorization headers; send exactly one, `Authorization: Bearer TOKEN`"
                ))
                .into_response();
            }
            Presented::Bearer(value) => match find(&admin.tokens, value) {
                Some(token) => Some(Arc::clone(&token.name)),
                None => {
                    tracing::warn!(%peer, method = %request.method(), path = request.uri().path(), "admin call with an unknown token refused");
                    return ApiError::Forbidden.into_response();
                }
            },
        }
    };
    let certificate = request
        .extensions()
        .get::<PeerCertificate>()
        .map(|c| Arc::clone(&c.0));
    request.extensions_mut().insert(Caller {
        token,
        peer,
        certificate,
    });
    next.run(request).await
}

/// What a request's `Authorization` header holds.
enum Presented<'r> {
    Nothing,
    Malformed,
    /// More than one `Authorization` header: which one counts would be a
    /// guess, so the request is refused whatever they hold.
    Several(usize),
    Bearer(&'r [u8]),
}

fn bearer(headers: &HeaderMap) -> Presented<'_> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::Nothing;
    };
    let more = values.count();
    if more > 0 {
        return Presented::Several(more + 1);
    }
    let value = value.as_bytes();
    let Some(space) = value.iter().position(|&b| b == b' ') else {
        return Presented::Malformed;
    };
    let (scheme, rest) = value.split_at(space);
    let token = rest.trim_ascii();
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Presented::Malformed;
    }
    Presented::Bearer(token)
}

/// The token whose value is `presented`. Every token is compared, in
/// constant time for equal lengths, so timing tells neither a value nor
/// which token matched; only a value's length can show.
fn find<'t>(tokens: &'t [Token], presented: &[u8]) -> Option<&'t Token> {
    let mut index = 0u64;
    let mut found = Choice::from(0);
    for (i, token) in tokens.iter().enumerate() {
        let equal = token.value.expose().as_bytes().ct_eq(presented);
        index.conditional_assign(&(i as u64), equal);
        found |= equal;
    }
    bool::from(found).then(|| &tokens[index as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn tokens() -> Vec<Token> {
        ["lead", "bot"]
            .iter()
            .zip(["s3cret-lead", "s3cret-bot"])
            .map(|(name, value)| Token {
                name: Arc::from(*name),
                value: Secret::new(value.to_owned()),
            })
            .collect()
    }

    #[test]
    fn finds_each_token_by_its_value_and_nothing_else() {
        let tokens = tokens();
        assert_eq!(&*find(&tokens, b"s3cret-lead").unwrap().name, "lead");
        assert_eq!(&*find(&tokens, b"s3cret-bot").unwrap().name, "bot");
        for wrong in [&b"s3cret-bo"[..], b"s3cret-bott", b"", b"S3CRET-BOT"] {
            assert!(find(&tokens, wrong).is_none(), "{wrong:?}");
        }
    }

    #[test]
    fn reads_a_bearer_header_with_any_case_of_scheme() {
        let parse = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            match bearer(&headers) {
                Presented::Bearer(token) => Some(String::from_utf8(token.to_vec()).unwrap()),
                Presented::Malformed => None,
                Presented::Nothing | Presented::Several(_) => unreachable!("one header was set"),
            }
        };
        assert_eq!(parse("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(parse("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(parse("Basic abc"), None);
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse("Bearer "), None);
        assert!(matches!(bearer(&HeaderMap::new()), Presented::Nothing));
    }

    #[test]
    fn two_authorization_headers_are_neither_token() {
        let mut headers = HeaderMap::new();
        headers.append(header::AUTHORIZATION, "Bearer s3cret-lead".parse().unwrap());
        headers.append(header::AUTHORIZATION, "Bearer wrong".parse().unwrap());
        assert!(matches!(bearer(&headers), Presented::Several(2)));
    }

    #[test]
    fn names_the_caller_by_token_and_address_never_by_value() {
        let caller = Caller {
            token: Some(Arc::from("lead")),
            peer: "127.0.0.1:53412".parse().unwrap(),
            certificate: None,
        };
        assert_eq!(caller.to_string(), "lead (127.0.0.1:53412)");
        let with_cert = Caller {
            certificate: Some(Arc::from("ops")),
            ..caller
        };
        assert_eq!(with_cert.to_string(), "lead (127.0.0.1:53412, CN=ops)");
        let debug = format!("{:?}", tokens());
        assert!(!debug.contains("s3cret"), "{debug}");
    }
}
