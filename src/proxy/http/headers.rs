//! Header and target rewriting between client and upstream: RFC 9110
//! hop-by-hop fields, h2 to HTTP/1.1 translation, `X-Forwarded-For`, and
//! `X-Forwarded-Proto: https` behind a TLS listener.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use smallvec::SmallVec;

use super::watched::{Watch, Watched};
use super::ProxyBody;
use crate::proxy::idle::Stalling;
use crate::proxy::{Counted, Flow, ServiceContext};

/// RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward.
static HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// How a service's requests are rewritten for its upstream.
pub(super) struct Rewrite {
    /// The `Host` of a request that names none (HTTP/1.0).
    pub(super) host: Authority,
    /// Every client came over TLS: the service has a TLS listener.
    pub(super) https: bool,
}

impl Rewrite {
    /// Rewrites a client request for the upstream: origin-form target
    /// (`*` for `OPTIONS *`), the client's `Host`, HTTP/1.1, hop-by-hop
    /// fields removed (kept for an upgrade), `TE: trailers` when the client
    /// takes trailers, X-Forwarded-For, and X-Forwarded-Proto for clients
    /// that came over TLS.
    pub(super) fn request<B>(
        &self,
        request: &mut Request<B>,
        forwarded_for: HeaderValue,
        upgrade: bool,
    ) {
        let h2 = request.version() == Version::HTTP_2;
        let authority = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let headers = request.headers_mut();
        match authority {
            // RFC 9112 section 3.2.2: an HTTP/1.1 target in absolute form
            // names the host, and replaces the Host field.
            Some(host) if !h2 => {
                headers.insert(header::HOST, host);
            }
            // An h2 client names the host in :authority (RFC 9113 section 8.3.1).
            Some(host) => {
                headers.entry(header::HOST).or_insert(host);
            }
            // An HTTP/1.0 client may send no Host at all.
            None if !headers.contains_key(header::HOST) => {
                if let Ok(host) = HeaderValue::from_str(self.host.as_str()) {
                    headers.insert(header::HOST, host);
                }
            }
            None => {}
        }
        *request.uri_mut() = origin_form(request.uri());
        let takes_trailers = h2 || te_trailers(request.headers());
        if h2 {
            join_cookies(request.headers_mut());
        }
        *request.version_mut() = Version::HTTP_11;
        let headers = request.headers_mut();
        if upgrade {
            let protocol = headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(headers);
            if let Some(protocol) = protocol {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, protocol);
            }
        } else {
            strip_hop_by_hop(headers);
        }
        if takes_trailers {
            // The upstream sends trailers only to a request that takes them
            // (RFC 9110 section 10.1.4); firedrill passes them on.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        forward_for(headers, forwarded_for);
        if self.https {
            // The client came over TLS (every client of a TLS listener does).
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        }
    }
}

/// A forwarded response, its body watched by `watch` if given.
pub(super) fn downstream(
    response: Response<Incoming>,
    context: &Arc<ServiceContext>,
    watch: Option<Box<Watch>>,
) -> Response<ProxyBody> {
    let mut response = wrap(response, context, watch);
    strip_hop_by_hop(response.headers_mut());
    response
}

/// The upstream's answer to an `Upgrade` request; a switch keeps the
/// headers that negotiate the new protocol, and the relay that follows
/// obeys the rules itself.
pub(super) fn downstream_upgrade(
    response: Response<Incoming>,
    context: &Arc<ServiceContext>,
    switched: bool,
) -> Response<ProxyBody> {
    let mut response = wrap(response, context, None);
    if !switched {
        strip_hop_by_hop(response.headers_mut());
    }
    response
}

fn wrap(
    response: Response<Incoming>,
    context: &Arc<ServiceContext>,
    watch: Option<Box<Watch>>,
) -> Response<ProxyBody> {
    let stall = context.service.limits.upstream_idle_timeout;
    response.map(|body| {
        let counted = Counted::new(body, Arc::clone(context), Flow::Downstream);
        Either::Left(Watched::new(Stalling::new(counted, stall), watch))
    })
}

/// Removes the hop-by-hop fields, including any that `Connection` names.
/// `Connection` is a list and may be split over several lines (RFC 9110
/// section 5.3), so every line counts. Runs twice per request: one pass
/// over the fields, comparing names without hashing, finds the few to
/// remove (usually none, or just `Connection: keep-alive`).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    // On the stack: a message rarely names more than a few.
    let doomed: SmallVec<[HeaderName; 4]> = {
        let named: SmallVec<[&str; 4]> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|line| line.to_str().ok())
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .collect();
        if named.len() > 16 {
            // Many names (or a hostile list): look each up instead of
            // comparing every name with every field.
            named
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .chain(HOP_BY_HOP.iter().cloned())
                .collect()
        } else {
            headers
                .keys()
                .filter(|name| {
                    HOP_BY_HOP.contains(name)
                        || named
                            .iter()
                            .any(|named| named.eq_ignore_ascii_case(name.as_str()))
                })
                .cloned()
                .collect()
        }
    };
    for name in doomed {
        headers.remove(name);
    }
}

/// Why a client's request is refused before anything else looks at it:
/// the status and what is wrong. `CONNECT` asks for a tunnel, which
/// firedrill does not open; RFC 9112 section 3.2 wants exactly one `Host`
/// in an HTTP/1.1 request.
pub(super) fn malformed<B>(request: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if request.method() == Method::CONNECT {
        return Some((
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: firedrill is a reverse proxy, send requests to it directly",
        ));
    }
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Some((
            StatusCode::BAD_REQUEST,
            "the request has more than one Host field; send exactly one",
        )),
        (None, _) if request.version() == Version::HTTP_11 => Some((
            StatusCode::BAD_REQUEST,
            "the HTTP/1.1 request has no Host field; send exactly one",
        )),
        _ => None,
    }
}

/// The origin-form target of `uri` (RFC 9112 section 3.2.1): its path and
/// query, `/` when it has none, and `*` as it is (`OPTIONS *`).
fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(path)
}

/// Whether a client's `TE` fields accept trailers.
fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|line| line.to_str().ok())
        .flat_map(|line| line.split(','))
        .any(|coding| {
            let coding = coding.split(';').next().unwrap_or_default();
            coding.trim().eq_ignore_ascii_case("trailers")
        })
}

/// RFC 9113 section 8.2.3: an h2 client may send each cookie as a field of
/// its own, and HTTP/1.1 wants them in one, joined with "; ".
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, cookie) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, joined);
    }
}

/// Adds the client to `X-Forwarded-For`: one field, after the addresses
/// the client sent (on one line or several).
fn forward_for(headers: &mut HeaderMap, client: HeaderValue) {
    let mut entry = match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(entry) => {
            entry.insert(client);
            return;
        }
        header::Entry::Occupied(entry) => entry,
    };
    let mut joined = Vec::new();
    for line in entry
        .iter()
        .filter(|line| !line.as_bytes().trim_ascii().is_empty())
    {
        joined.extend_from_slice(line.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(client.as_bytes());
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        entry.insert(joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(*name, HeaderValue::from_static(value));
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        headers.keys().map(HeaderName::as_str).collect()
    }

    #[test]
    fn origin_form_keeps_path_and_query_and_a_star() {
        let form = |uri: &str| origin_form(&uri.parse().unwrap()).to_string();
        assert_eq!(form("http://myapp.example/a/b?c=1"), "/a/b?c=1");
        assert_eq!(form("/x"), "/x");
        assert_eq!(form("http://myapp.example"), "/");
        assert_eq!(form("*"), "*");
    }

    #[test]
    fn trailers_are_taken_when_any_te_coding_says_so() {
        assert!(te_trailers(&map(&[("te", "gzip;q=0.5, Trailers")])));
        assert!(te_trailers(&map(&[("te", "gzip"), ("te", "trailers")])));
        assert!(!te_trailers(&map(&[("te", "gzip")])));
        assert!(!te_trailers(&map(&[])));
    }

    #[test]
    fn connect_and_a_wrong_number_of_hosts_are_refused() {
        let request = |method: Method, version: Version, hosts: &[&'static str]| {
            let mut request = Request::builder().method(method).version(version);
            for host in hosts {
                request = request.header(header::HOST, *host);
            }
            request.uri("/").body(()).unwrap()
        };
        let status = |r: &Request<()>| malformed(r).map(|(status, _)| status);
        let connect = request(Method::CONNECT, Version::HTTP_11, &["a:443"]);
        assert_eq!(status(&connect), Some(StatusCode::METHOD_NOT_ALLOWED));
        let two = request(Method::GET, Version::HTTP_11, &["a", "b"]);
        assert_eq!(status(&two), Some(StatusCode::BAD_REQUEST));
        let none = request(Method::GET, Version::HTTP_11, &[]);
        assert_eq!(status(&none), Some(StatusCode::BAD_REQUEST));
        assert_eq!(status(&request(Method::GET, Version::HTTP_10, &[])), None);
        assert_eq!(status(&request(Method::GET, Version::HTTP_2, &[])), None);
        assert_eq!(
            status(&request(Method::GET, Version::HTTP_11, &["a"])),
            None
        );
    }

    #[test]
    fn messages_without_hop_by_hop_fields_are_left_alone() {
        let mut headers = map(&[("host", "a"), ("x-one", "1"), ("x-one", "2")]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["host", "x-one"]);
        assert_eq!(headers.get_all("x-one").iter().count(), 2);
    }

    #[test]
    fn names_listed_in_connection_go_whatever_their_case_and_spacing() {
        let mut headers = map(&[
            ("connection", "X-Custom ,  keep-alive"),
            ("Connection", "close"),
            ("x-custom", "1"),
            ("x-custom", "2"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("close", "not a real field, still listed"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn a_long_connection_list_removes_what_it_names() {
        let list: Vec<String> = (0..40).map(|i| format!("X-Listed-{i}")).collect();
        let mut headers = map(&[("x-kept", "yes"), ("keep-alive", "timeout=5")]);
        headers.append(header::CONNECTION, list.join(", ").parse().unwrap());
        for i in [0, 17, 39] {
            headers.append(
                HeaderName::from_bytes(format!("x-listed-{i}").as_bytes()).unwrap(),
                HeaderValue::from_static("1"),
            );
        }
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }

    #[test]
    fn fixed_hop_by_hop_fields_go_without_a_connection_field() {
        let mut headers = map(&[("te", "trailers"), ("upgrade", "h2c"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["x-kept"]);
    }
}
