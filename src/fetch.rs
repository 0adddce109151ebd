//! One HTTP/1.1 exchange on a fresh connection, for firedrill's own
//! clients (a guard's Prometheus query, the command line's admin API
//! calls): the handshake, the request, and the answer's body read up to a
//! limit. Connecting, TLS and what a failure means stay with the caller.

use std::error::Error as StdError;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncRead, AsyncWrite};

/// What [`encode`] escapes: every byte but RFC 3986's unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`), so the result is safe as a path
/// segment and as a query value, and plan names stay readable.
pub const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` (as UTF-8) percent-encoded for a path segment or query value.
pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, ESCAPED).to_string()
}

/// Why an exchange gave no answer; each caller words it for its reader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP/1.1 connection could not be set up.
    #[error("HTTP handshake failed: {0}")]
    Handshake(hyper::Error),
    /// The request went unanswered (refused, reset, not HTTP).
    #[error("request failed: {0}")]
    Send(hyper::Error),
    /// The answer's body broke off or was longer than allowed.
    #[error("cannot read the answer: {0}")]
    Read(Box<dyn StdError + Send + Sync>),
}

/// Sends `request` on a new HTTP/1.1 connection over `io` (plain or TLS);
/// the answer's status and its body, at most `most` bytes.
pub async fn exchange<T, B>(
    io: T,
    request: Request<B>,
    most: usize,
) -> Result<(StatusCode, Bytes), Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(Error::Handshake)?;
    // Ends when the answer is read and the sender dropped.
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(Error::Send)?;
    let status = response.status();
    let body = Limited::new(response.into_body(), most)
        .collect()
        .await
        .map_err(Error::Read)?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_but_unreserved_characters_is_escaped() {
        assert_eq!(encode("pangyo-fire_2.x~"), "pangyo-fire_2.x~");
        assert_eq!(encode("a/b c?"), "a%2Fb%20c%3F");
        assert_eq!(encode("판교"), "%ED%8C%90%EA%B5%90");
        assert_eq!(
            encode(r#"sum(rate(x{code=~"5.."}[1m])) > 1"#),
            "sum%28rate%28x%7Bcode%3D~%225..%22%7D%5B1m%5D%29%29%20%3E%201"
        );
    }

    /// A connection to a loopback server that reads one request and
    /// writes `answer` as it is.
    async fn answering(answer: &'static str) -> tokio::net::TcpStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("bound address");
        tokio::spawn(async move {
            let (mut server, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = server.read(&mut request).await;
            let _ = server.write_all(answer.as_bytes()).await;
            // Held until the client closes, so the answer is not cut.
            let _ = server.read(&mut request).await;
        });
        tokio::net::TcpStream::connect(addr).await.expect("connect")
    }

    fn request() -> Request<http_body_util::Empty<Bytes>> {
        Request::get("/")
            .header(http::header::HOST, "h")
            .body(http_body_util::Empty::new())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn the_answer_is_read_up_to_the_limit_and_no_further() {
        let limit = std::time::Duration::from_secs(10);
        let down = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\ndown";
        let answer = tokio::time::timeout(limit, exchange(answering(down).await, request(), 4));
        let (status, body) = answer.await.expect("in time").expect("an answer");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"down"[..])
        );
        let long = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789";
        let answer = tokio::time::timeout(limit, exchange(answering(long).await, request(), 4));
        let answer = answer.await.expect("in time");
        assert!(matches!(answer, Err(Error::Read(_))), "{answer:?}");
    }
}
