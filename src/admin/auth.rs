//! Who may call the admin API: the plan's bearer tokens, compared in
//! constant time, guard every endpoint (reads too, unless `open_reads`).
//! The middleware hands handlers a [`Caller`], which names the token and
//! the peer for the audit trail and never carries the token's value.
//! [`Failures`] slows an address that keeps presenting wrong tokens and
//! keeps their warnings from flooding the log.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::{AdminState, ApiError};
use crate::config::Token;
use crate::log_limit::LogLimit;
use browser::{basic, same_origin};

mod browser;

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
/// or answers 401 (no usable token) or 403 (an unknown token). The status
/// page (`GET /`) answers both as 401 with a `Basic` challenge instead,
/// so a browser asks for the token (as the password) and then sends it
/// on the page's own requests, its event stream included.
pub(super) async fn authorize(
    state: State<AdminState>,
    peer: ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let page = request.uri().path() == "/";
    let mut response = check(state, peer, request, next).await;
    let refused = matches!(
        response.status(),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    );
    if page && refused {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"firedrill\", charset=\"UTF-8\""),
        );
    }
    response
}

async fn check(
    State(state): State<AdminState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut request: Request,
    next: Next,
) -> Response {
    let model = state.control.model();
    let admin = model.admin();
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
                    "the Authorization header must read `Bearer TOKEN` (or, from a browser, `Basic` with the token as the password)".to_owned(),
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
            // Basic credentials are the page's: a browser sends them by
            // itself, to any site's form too, so a write needs to come from
            // the page's own origin.
            Presented::Basic(_) if !read && !same_origin(request.headers()) => {
                tracing::debug!(%peer, path = request.uri().path(), "admin write with Basic credentials from another origin refused");
                return ApiError::Unauthorized(
                    "Basic credentials change nothing unless the request comes from the status page's own origin; send `Authorization: Bearer TOKEN`"
                        .to_owned(),
                )
                .into_response();
            }
            presented @ (Presented::Bearer(_) | Presented::Basic(_)) => {
                match find(&admin.tokens, presented.token()) {
                    Some(token) => Some(Arc::clone(&token.name)),
                    None => {
                        let failures = request.extensions().get::<Arc<Failures>>();
                        let wait = failures.and_then(|failures| {
                            failures.refused(peer, request.method(), request.uri().path())
                        });
                        if failures.is_none() {
                            tracing::warn!(%peer, method = %request.method(), path = request.uri().path(), "admin call with an unknown token refused");
                        }
                        return match wait {
                            Some(wait) => too_many(wait),
                            None => ApiError::Forbidden.into_response(),
                        };
                    }
                }
            }
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

/// Wrong tokens in quick succession an address may present before its
/// further wrong tokens are answered 429.
const FAILURE_BURST: NonZeroU32 = NonZeroU32::new(10).expect("not zero");
/// How soon an address that used up its burst may try one more token.
const FAILURE_EVERY: Duration = Duration::from_secs(1);
/// At most one warning about wrong tokens every so often, saying how many
/// were not logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// Every so many failures, addresses quiet long enough to have their whole
/// burst back are forgotten, so many addresses cannot grow the table.
const FORGET_EVERY: u64 = 1024;

/// What the admin API remembers of wrong tokens: per client address (an
/// IPv6 client by its /64) a rate limit, and one for the warning they log.
/// A valid token consults neither, so it is never slowed by them.
#[derive(Debug)]
pub(crate) struct Failures {
    by_address: DefaultKeyedRateLimiter<IpAddr>,
    log: LogLimit,
    seen: AtomicU64,
    clock: DefaultClock,
}

impl Failures {
    pub(crate) fn new() -> Failures {
        let address = Quota::with_period(FAILURE_EVERY)
            .expect("a period above zero")
            .allow_burst(FAILURE_BURST);
        Failures {
            by_address: RateLimiter::keyed(address),
            log: LogLimit::new(WARN_EVERY),
            seen: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    /// Records a wrong token from `peer` and logs it if the log's limit
    /// allows. Returns how long `peer` should wait when it has presented
    /// too many, to be answered 429; `None` to answer 403.
    pub(crate) fn refused(
        &self,
        peer: SocketAddr,
        method: &Method,
        path: &str,
    ) -> Option<Duration> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            self.by_address.retain_recent();
            self.by_address.shrink_to_fit();
        }
        let wait = match self.by_address.check_key(&client(peer.ip())) {
            Ok(()) => None,
            Err(until) => Some(until.wait_time_from(self.clock.now())),
        };
        if let Some(unlogged) = self.log.admit() {
            tracing::warn!(
                %peer,
                %method,
                path,
                throttled = wait.is_some(),
                unlogged,
                "admin call with an unknown token refused (`unlogged`: refused since the last such line and not logged)"
            );
        }
        wait
    }
}

/// The address a client's failures count against: IPv4 as it is, IPv6 by
/// its /64, which one host usually has whole.
fn client(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (!0u128 << 64))),
        },
    }
}

/// 429 with `Retry-After` (whole seconds, at least one) for an address
/// that presented too many wrong tokens.
fn too_many(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let seconds = seconds.max(1);
    let body = super::api::ErrorBody::new(format!(
        "too many wrong tokens from this address; retry in {seconds} s with a token from [admin] tokens"
    ));
    let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// What a request's `Authorization` header holds.
enum Presented<'r> {
    Nothing,
    Malformed,
    /// More than one `Authorization` header: which one counts would be a
    /// guess, so the request is refused whatever they hold.
    Several(usize),
    Bearer(&'r [u8]),
    /// `Basic` with the token as the password (any user name): what a
    /// browser sends for the status page once asked for it.
    Basic(Vec<u8>),
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
    if scheme.eq_ignore_ascii_case(b"basic") {
        return basic(token).map_or(Presented::Malformed, Presented::Basic);
    }
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Presented::Malformed;
    }
    Presented::Bearer(token)
}

impl Presented<'_> {
    /// The token value presented, for `Bearer` and `Basic`.
    fn token(&self) -> &[u8] {
        match self {
            Presented::Bearer(token) => token,
            Presented::Basic(token) => token,
            Presented::Nothing | Presented::Malformed | Presented::Several(_) => &[],
        }
    }
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
                Presented::Basic(token) => {
                    Some(format!("basic {}", String::from_utf8(token).unwrap()))
                }
                Presented::Nothing | Presented::Several(_) => unreachable!("one header was set"),
            }
        };
        assert_eq!(parse("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(parse("bearer  abc ").as_deref(), Some("abc"));
        assert_eq!(parse("Basic abc"), None, "not base64");
        // The status page's credentials: any user, the token as password.
        assert_eq!(
            parse("Basic bGVhZDpzM2NyZXQ=").as_deref(),
            Some("basic s3cret")
        );
        assert_eq!(parse("basic OnMzY3JldA==").as_deref(), Some("basic s3cret"));
        assert_eq!(parse("Basic bGVhZA==").as_deref(), None, "no password");
        assert_eq!(parse("Basic bGVhZDo=").as_deref(), None, "empty password");
        assert_eq!(parse("Bearer"), None);
        assert_eq!(parse("Bearer "), None);
        assert!(matches!(bearer(&HeaderMap::new()), Presented::Nothing));
    }

    #[test]
    fn an_address_with_too_many_wrong_tokens_waits_and_others_do_not() {
        let failures = Failures::new();
        let peer: SocketAddr = "192.0.2.7:4000".parse().unwrap();
        for _ in 0..FAILURE_BURST.get() {
            assert_eq!(failures.refused(peer, &Method::GET, "/faults"), None);
        }
        let wait = failures
            .refused(peer, &Method::GET, "/faults")
            .expect("throttled");
        assert!(wait > Duration::ZERO && wait <= FAILURE_EVERY, "{wait:?}");
        let other: SocketAddr = "192.0.2.8:4000".parse().unwrap();
        assert_eq!(failures.refused(other, &Method::GET, "/faults"), None);
        let response = too_many(wait);
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_64() {
        let a = client("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = client("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = client("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let mapped = client("::ffff:192.0.2.7".parse().unwrap());
        assert_eq!(mapped, "192.0.2.7".parse::<IpAddr>().unwrap());
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
