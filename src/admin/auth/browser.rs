//! What a browser sends for the status page: `Basic` credentials with the
//! token as the password (a browser cannot send a bearer token on a
//! navigation or an event stream), and the `Origin` that tells the page's
//! own writes from another site's.

use axum::http::{header, HeaderMap};

/// The password of `Basic` credentials (RFC 7617): base64 of `user:password`.
pub(super) fn basic(credentials: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let password = decoded[colon + 1..].to_vec();
    (!password.is_empty()).then_some(password)
}

/// Whether the request says it comes from a page of this very origin: its
/// `Origin` names the `Host` it was sent to. Browsers send `Origin` on
/// every `POST` and `DELETE`, and a page cannot forge it.
pub(super) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
    else {
        return false;
    };
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_same_origin_only_when_its_origin_names_its_host() {
        let with = |origin: Option<&str>, host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, origin.parse().unwrap());
            }
            same_origin(&headers)
        };
        assert!(with(Some("http://127.0.0.1:9090"), "127.0.0.1:9090"));
        assert!(with(
            Some("https://Firedrill.staging:9090"),
            "firedrill.staging:9090"
        ));
        assert!(!with(Some("http://evil.example"), "127.0.0.1:9090"));
        assert!(!with(Some("http://127.0.0.1:9091"), "127.0.0.1:9090"));
        assert!(!with(Some("null"), "127.0.0.1:9090"));
        assert!(!with(None, "127.0.0.1:9090"), "no Origin: not a page");
    }
}
