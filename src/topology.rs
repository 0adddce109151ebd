//! Data centers and the services that live in them, as the plan declares
//! them: plain data, never rewritten after validation. Faults refer to a
//! topology's services by [`ServiceId`]; [`Slots`] says where each one's
//! faults sit in a rule snapshot, which the runtime model decides.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use rustls::pki_types::ServerName;
use serde::Deserialize;

/// Index of a service in [`Topology::services`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub(crate) usize);

impl ServiceId {
    pub fn index(self) -> usize {
        self.0
    }
}

/// Every data center and service of a plan.
#[derive(Debug, Default)]
pub struct Topology {
    pub datacenters: Vec<DataCenter>,
    pub services: Vec<Service>,
}

impl Topology {
    /// Looks a service up by its plan name.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| &*s.name == name)
    }
}

/// Where the faults of each service of one topology sit in a rule snapshot,
/// by [`ServiceId`]; `None` for a service nothing runs. The runtime model
/// keeps a service's slot while it stays as it was, so its open
/// connections keep seeing their faults, and never reuses one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots(Vec<Option<usize>>);

impl Slots {
    /// Each service at the slot of its own index, as at start-up.
    pub fn in_order(services: usize) -> Slots {
        Slots((0..services).map(Some).collect())
    }

    /// The slot of each service, by index.
    pub fn new(slots: Vec<Option<usize>>) -> Slots {
        Slots(slots)
    }

    /// The slot of `service`, if it runs.
    pub fn of(&self, service: ServiceId) -> Option<usize> {
        self.0.get(service.index()).copied().flatten()
    }

    /// How many slots a snapshot needs to hold every one of these.
    pub fn count(&self) -> usize {
        self.0.iter().flatten().map(|s| s + 1).max().unwrap_or(0)
    }
}

/// A building that can burn.
#[derive(Debug)]
pub struct DataCenter {
    pub name: Arc<str>,
    pub description: String,
    pub services: Vec<ServiceId>,
}

/// One proxied service: where clients connect and where traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: ServiceId,
    pub name: Arc<str>,
    pub description: String,
    pub datacenter: Arc<str>,
    pub protocol: Protocol,
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// Limit for establishing the upstream connection.
    pub connect_timeout: Duration,
    /// HTTP: limit for the upstream's response headers.
    pub timeout: Duration,
    /// HTTP: terminate TLS from clients with this certificate.
    pub tls: Option<ListenerTls>,
    /// HTTP with an `https://` upstream: how to speak TLS to it.
    pub upstream_tls: Option<UpstreamTls>,
    /// Connection cap, header limits and idle timeouts.
    pub limits: Limits,
}

/// PEM text from a file the plan names, kept as validation read and
/// checked it, so what runs is what was checked. Its Debug output shows
/// the path and size only: a key's bytes never reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Pem {
    pub path: PathBuf,
    pub text: Arc<[u8]>,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pem({}, {} bytes)", self.path.display(), self.text.len())
    }
}

/// TLS a listener terminates: its certificate chain and key, and the
/// protocols it offers through ALPN, most preferred first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: Pem,
    pub key: Pem,
    pub alpn: &'static [&'static [u8]],
}

/// TLS towards an `https://` upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The CA certificates to trust; `None` trusts the system's roots.
    pub ca: Option<Pem>,
    /// Sent as SNI and verified against the certificate.
    pub server_name: ServerName<'static>,
    /// The plan said `upstream_skip_verify = true`: any certificate passes.
    pub skip_verify: bool,
    /// The protocols offered through ALPN.
    pub alpn: &'static [&'static [u8]],
}

/// What one service allows its clients and its upstream, each with a
/// default (see the README's plan reference for what happens when hit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Client connections open at once; more are refused.
    pub max_connections: usize,
    /// HTTP: bytes of a request's start line and headers (h2: the header
    /// list); also bounds the upstream's response headers.
    pub max_header_bytes: usize,
    /// HTTP/1.1: header fields in a request or an upstream response.
    pub max_headers: usize,
    /// HTTP: how long a client connection may wait with no request in
    /// flight. TCP: how long a relayed connection may move no bytes.
    pub idle_timeout: Duration,
    /// HTTP: the longest pause in an upstream response body.
    pub upstream_idle_timeout: Duration,
}

impl Limits {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
    pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
    /// hyper's own default, which it keeps on the stack: any other value
    /// costs an allocation per request.
    pub const DEFAULT_MAX_HEADERS: usize = 100;
    pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

    /// The defaults for a service speaking `protocol`.
    pub fn defaults(protocol: Protocol) -> Limits {
        Limits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_header_bytes: Self::DEFAULT_MAX_HEADER_BYTES,
            max_headers: Self::DEFAULT_MAX_HEADERS,
            idle_timeout: match protocol {
                Protocol::Http => Self::DEFAULT_HTTP_IDLE_TIMEOUT,
                Protocol::Tcp => Self::DEFAULT_TCP_IDLE_TIMEOUT,
            },
            upstream_idle_timeout: Self::DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

/// How a service's traffic is understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

/// How the plan spelled an upstream address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `host:port`: plain TCP, or plain HTTP for http services.
    Bare,
    /// `http://host:port`.
    Http,
    /// `https://host:port`: TLS to the upstream (http services only).
    Https,
}

/// An upstream address: `host:port`, or `http://host:port` or
/// `https://host:port` for http services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream {
    /// `host:port`, as given.
    pub authority: String,
    pub scheme: Scheme,
}

impl Upstream {
    /// The host, without the brackets of an IPv6 address: the name an
    /// `https://` upstream's certificate is verified against by default.
    pub fn host(&self) -> &str {
        let host = match self.authority.rsplit_once(':') {
            Some((host, _port)) => host,
            None => &self.authority,
        };
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

impl TryFrom<String> for Upstream {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let (scheme, rest) = match value.split_once("://") {
            Some(("http", rest)) => (Scheme::Http, rest),
            Some(("https", rest)) => (Scheme::Https, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "upstream scheme `{scheme}` is not supported; use `host:port`, `http://host:port` or `https://host:port`"
                ))
            }
            None => (Scheme::Bare, value.as_str()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(format!(
                "upstream `{value}` has a path; give only `host:port` (paths are passed through from the client)"
            ));
        }
        // Parsed as an HTTP authority, so what `check` accepts every
        // listener can use (IPv6 needs brackets: `[::1]:9001`).
        let parsed: Option<http::uri::Authority> = authority.parse().ok();
        if !parsed.is_some_and(|a| a.port_u16().is_some() && !a.host().is_empty()) {
            return Err(format!(
                "upstream `{value}` needs a host and a port, like `127.0.0.1:9001` or `[::1]:9001`"
            ));
        }
        Ok(Upstream {
            authority: authority.to_owned(),
            scheme,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Bare => f.write_str(&self.authority),
            Scheme::Http => write!(f, "http://{}", self.authority),
            Scheme::Https => write!(f, "https://{}", self.authority),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(text: &str) -> Result<Upstream, String> {
        Upstream::try_from(text.to_owned())
    }

    #[test]
    fn an_upstream_keeps_its_scheme_and_shows_it() {
        for (text, scheme) in [
            ("127.0.0.1:9001", Scheme::Bare),
            ("http://127.0.0.1:9001", Scheme::Http),
            ("https://api.internal:443/", Scheme::Https),
        ] {
            let parsed = upstream(text).unwrap();
            assert_eq!(parsed.scheme, scheme, "{text}");
            assert_eq!(parsed.to_string(), text.trim_end_matches('/'));
        }
        let refused = upstream("ftp://127.0.0.1:21").unwrap_err();
        assert!(refused.contains("`https://host:port`"), "{refused}");
    }

    #[test]
    fn the_host_of_an_upstream_drops_the_port_and_ipv6_brackets() {
        assert_eq!(
            upstream("https://api.internal:8443").unwrap().host(),
            "api.internal"
        );
        assert_eq!(
            upstream("https://127.0.0.1:8443").unwrap().host(),
            "127.0.0.1"
        );
        assert_eq!(upstream("https://[::1]:8443").unwrap().host(), "::1");
    }
}
