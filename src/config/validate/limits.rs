//! Checks of one service's limits: the connection cap, the header limits
//! (within what hyper accepts) and the idle timeouts, each filled in with
//! its default when the plan leaves it out.

use std::time::Duration;

use toml::Spanned;

use super::super::raw::{self, HumanDuration};
use super::Report;
use crate::topology::{Limits, Protocol};

/// hyper's smallest read buffer: it refuses a smaller `max_buf_size`.
pub(crate) const MIN_HEADER_BYTES: u32 = 8 * 1024;
/// A header block bigger than this is an attack, not a request.
const MAX_HEADER_BYTES: u32 = 16 * 1024 * 1024;
/// hyper reserves room for this many headers per request.
const MAX_HEADERS: u32 = 10_000;

/// The service's limits, with every problem reported at its value.
pub(super) fn limits(name: &str, service: &raw::Service, report: Report<'_>) -> Limits {
    let mut limits = Limits::defaults(service.protocol);
    let http_only = |field: &str, span, report: Report<'_>| {
        report(
            span,
            format!("service `{name}` is tcp; `{field}` applies to http services only, remove it"),
        );
    };
    if let Some(max) = &service.max_connections {
        if *max.get_ref() == 0 {
            report(
                max.span(),
                format!("service `{name}` has max_connections 0; allow at least 1 connection"),
            );
        }
        limits.max_connections = *max.get_ref() as usize;
    }
    if let Some(bytes) = &service.max_header_bytes {
        if service.protocol == Protocol::Tcp {
            http_only("max_header_bytes", bytes.span(), report);
        } else if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(bytes.get_ref()) {
            report(
                bytes.span(),
                format!(
                    "service `{name}` has max_header_bytes {}; give {MIN_HEADER_BYTES} (8 KiB, the least the HTTP parser accepts) to {MAX_HEADER_BYTES} (16 MiB)",
                    bytes.get_ref()
                ),
            );
        }
        limits.max_header_bytes = *bytes.get_ref() as usize;
    }
    if let Some(count) = &service.max_headers {
        if service.protocol == Protocol::Tcp {
            http_only("max_headers", count.span(), report);
        } else if !(1..=MAX_HEADERS).contains(count.get_ref()) {
            report(
                count.span(),
                format!(
                    "service `{name}` has max_headers {}; give 1 to {MAX_HEADERS}",
                    count.get_ref()
                ),
            );
        }
        limits.max_headers = *count.get_ref() as usize;
    }
    if let Some(idle) = positive(name, "idle_timeout", &service.idle_timeout, report) {
        limits.idle_timeout = idle;
    }
    let upstream_idle = &service.upstream_idle_timeout;
    match upstream_idle {
        Some(idle) if service.protocol == Protocol::Tcp => {
            http_only("upstream_idle_timeout", idle.span(), report);
        }
        _ => {
            if let Some(idle) = positive(name, "upstream_idle_timeout", upstream_idle, report) {
                limits.upstream_idle_timeout = idle;
            }
        }
    }
    limits
}

/// A timeout of 0 would close every connection at once.
fn positive(
    name: &str,
    field: &str,
    value: &Option<Spanned<HumanDuration>>,
    report: Report<'_>,
) -> Option<Duration> {
    let value = value.as_ref()?;
    let duration = value.get_ref().0;
    if duration.is_zero() {
        report(
            value.span(),
            format!("service `{name}` has {field} 0; give it a positive duration like \"60s\""),
        );
    }
    Some(duration)
}
