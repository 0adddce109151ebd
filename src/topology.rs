//! Data centers and the services that live in them, as the plan declares
//! them. Fixed after start-up; everything else refers to services by
//! [`ServiceId`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

    /// How many rule slots a snapshot needs for these services.
    pub fn slot_count(&self) -> usize {
        self.services.iter().map(|s| s.slot + 1).max().unwrap_or(0)
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
#[derive(Debug, Clone)]
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
    /// Where this service's faults sit in a rule snapshot. Its plan index at
    /// start-up; a reload keeps the slot of a service that stays as it was,
    /// so its open connections keep seeing their faults.
    pub slot: usize,
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

/// An upstream address: `host:port`, or `http://host:port` for http services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Upstream {
    /// `host:port`, as given.
    pub authority: String,
    /// Whether the plan spelled it with an `http://` scheme.
    pub has_scheme: bool,
}

impl TryFrom<String> for Upstream {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let (has_scheme, rest) = match value.split_once("://") {
            Some(("http", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(format!(
                    "upstream scheme `{scheme}` is not supported; use `host:port` or `http://host:port`"
                ))
            }
            None => (false, value.as_str()),
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
            has_scheme,
        })
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.has_scheme {
            write!(f, "http://{}", self.authority)
        } else {
            f.write_str(&self.authority)
        }
    }
}
