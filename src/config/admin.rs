//! The validated `[admin]` settings: where the admin API listens, the
//! bearer tokens that may call it, whether reads are open, and its TLS.
//! Token values live in [`Secret`], which never shows in Debug output.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::topology::Pem;

/// The `[admin]` table.
#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Who may call the API; empty means everyone (loopback only).
    pub tokens: Vec<Token>,
    /// Whether the read-only GET endpoints answer without a token.
    pub open_reads: bool,
    /// TLS for the admin API; `None` serves plain HTTP.
    pub tls: Option<AdminTls>,
}

impl Admin {
    /// Whether every endpoint needs a token (reads too, unless opened).
    pub fn protected(&self) -> bool {
        !self.tokens.is_empty()
    }
}

/// A named bearer token. The name goes into logs and `/events`; the value
/// never does.
#[derive(Debug, Clone)]
pub struct Token {
    pub name: Arc<str>,
    pub value: Secret,
}

/// A secret string whose Debug output is `<redacted>`, so a plan printed
/// with `{:?}` never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }

    /// The secret itself, for comparing; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// The admin API's TLS material, read and checked at plan validation;
/// the admin listener builds its rustls configuration from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTls {
    pub cert: Pem,
    pub key: Pem,
    /// Clients must present a certificate signed by one of these.
    pub client_ca: Option<Pem>,
}

impl AdminTls {
    /// Whether clients must present a certificate signed by the client CA.
    pub fn mutual(&self) -> bool {
        self.client_ca.is_some()
    }
}
