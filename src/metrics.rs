//! Every metric firedrill exports, written once: names, help text, labels.
//! Label values come only from plan names (services, data centers,
//! scenarios, actions), never from client input. Per-service numbers live
//! in [`crate::stats`], where the process reads them too; a service's
//! [`ServiceMetrics`] adds to them with an atomic add per number. [`render`]
//! writes them, and the process-wide scenario gauges, as `/metrics` in a
//! stable order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::fault::Fault;
use crate::stats::{code_slot, Listed, ServiceStats, Stats, CODE_SLOTS};
use crate::topology::{Protocol, Service};

pub use crate::stats::Outcome;
pub use render::render;

mod render;

pub const REQUESTS_TOTAL: &str = "firedrill_requests_total";
pub const CONNECTIONS_TOTAL: &str = "firedrill_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "firedrill_connections_active";
pub const REQUEST_DURATION_SECONDS: &str = "firedrill_request_duration_seconds";
pub const BYTES_TOTAL: &str = "firedrill_bytes_total";
pub const FAULTS_INJECTED_TOTAL: &str = "firedrill_faults_injected_total";
pub const SCENARIO_ACTIVE: &str = "firedrill_scenario_active";
pub const SCENARIO_STOPS_TOTAL: &str = "firedrill_scenario_stops_total";

/// A per-service metric family: its name, `# TYPE` and `# HELP`.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
}

macro_rules! counter {
    ($name:expr, $help:expr) => {
        Family {
            name: $name,
            kind: "counter",
            help: $help,
        }
    };
}

macro_rules! gauge {
    ($name:expr, $help:expr) => {
        Family {
            name: $name,
            kind: "gauge",
            help: $help,
        }
    };
}

macro_rules! histogram {
    ($name:expr, $help:expr) => {
        Family {
            name: $name,
            kind: "histogram",
            help: $help,
        }
    };
}

const REQUESTS: Family = counter!(
    REQUESTS_TOTAL,
    "HTTP requests, by service, data center, outcome (forwarded, delayed, dropped, blackholed, error, upstream_error, and client_error for a request refused as malformed) and code, the class of the status answered (1xx to 5xx; no code for a request that got no response), counted when their fate is decided."
);
const CONNECTIONS: Family = counter!(
    CONNECTIONS_TOTAL,
    "Client connections accepted, by service, data center and outcome (tcp: forwarded, delayed, dropped, blackholed, upstream_error; http: accepted, and tls_error for a failed TLS handshake; both: refused at max_connections)."
);
const ACTIVE: Family = gauge!(CONNECTIONS_ACTIVE, "Client connections open now.");
const DURATION: Family = histogram!(
    REQUEST_DURATION_SECONDS,
    "Client-observed time from request to response headers, including injected delay; answered requests only."
);
const BYTES: Family = counter!(
    BYTES_TOTAL,
    "Payload bytes forwarded, by direction (upstream: client to service; downstream: service to client)."
);
const FAULTS: Family = counter!(
    FAULTS_INJECTED_TOTAL,
    "Faults applied to a request or connection, by service, data center, action and scenario."
);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls
/// return the same handle). It holds what is process-wide rather than per
/// service: `firedrill_scenario_active`, set by the engine wherever it runs.
/// It records no histogram, so it needs no upkeep thread.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
            }
            metrics::describe_gauge!(SCENARIO_ACTIVE, "1 while a scenario is active, else 0.");
            metrics::describe_counter!(
                SCENARIO_STOPS_TOTAL,
                "Activations a stop_when guard lifted, by scenario and guard."
            );
            handle
        })
        .clone()
}

/// The `code` series a request outcome can move, one bit each: bit 0 is a
/// request that got no response (no `code` label), bit N the status class
/// `Nxx`.
#[derive(Debug, Clone, Copy)]
struct Codes(u8);

impl Codes {
    /// No response.
    const NONE: Codes = Codes(1);
    /// No response, or any status class.
    const ANY: Codes = Codes(0b11_1111);

    /// The status classes `first`xx to `last`xx.
    const fn classes(first: u16, last: u16) -> Codes {
        Codes((1 << (last + 1)) - (1 << first))
    }
}

/// The series of `firedrill_requests_total` each request outcome can move,
/// listed from start-up at 0. A request outcome is one line here.
const REQUEST_CODES: &[(Outcome, Codes)] = &[
    // The upstream's answer, or none when the client left first.
    (Outcome::Forwarded, Codes::ANY),
    (Outcome::Delayed, Codes::ANY),
    // The injected status: 200 to 599.
    (Outcome::Error, Codes::classes(2, 5)),
    // firedrill's own 502 or 504.
    (Outcome::UpstreamError, Codes::classes(5, 5)),
    // firedrill's own 400 or 405 for a request refused as the client's.
    (Outcome::ClientError, Codes::classes(4, 4)),
    (Outcome::Dropped, Codes::NONE),
    (Outcome::Blackholed, Codes::NONE),
];

/// The `code` label by slot: none for a request that got no response, else
/// the status class.
const CODE_LABELS: [Option<&str>; CODE_SLOTS] = [
    None,
    Some("1xx"),
    Some("2xx"),
    Some("3xx"),
    Some("4xx"),
    Some("5xx"),
];

/// The series `service` lists from start-up: only the ones its protocol
/// can move.
fn listed(service: &Service) -> Listed {
    let http = service.protocol == Protocol::Http;
    let mut listed = Listed {
        latency: http,
        ..Listed::default()
    };
    if http {
        for (outcome, codes) in REQUEST_CODES {
            listed.requests[*outcome as usize] = codes.0;
        }
    }
    for outcome in Outcome::ALL {
        let applies = match outcome {
            Outcome::Accepted => http,
            Outcome::TlsError => service.tls.is_some(),
            Outcome::Refused => true,
            Outcome::ClientError => false,
            // An injected error response means nothing to a byte stream.
            Outcome::Error => false,
            _ => !http,
        };
        if applies {
            listed.connections |= 1 << outcome as usize;
        }
    }
    listed
}

/// One accept loop's handle on its service's numbers in the [`Stats`]
/// registry: every count is an atomic add there.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    stats: Arc<ServiceStats>,
    /// `firedrill_faults_injected_total` for every fault that can hit the
    /// service, by fault uid.
    faults: HashMap<u64, Arc<AtomicU64>>,
}

impl ServiceMetrics {
    /// Registers the service in `stats`, counting on from its numbers if it
    /// was there before, with a series for every fault in `faults`: those
    /// that can hit it.
    pub fn new<'a>(
        stats: &Stats,
        service: &Service,
        faults: impl Iterator<Item = &'a Fault>,
    ) -> ServiceMetrics {
        let numbers = stats.register(&service.name, &service.datacenter);
        numbers.list(&listed(service));
        let faults = faults
            .map(|fault| {
                (
                    fault.uid,
                    numbers.fault(fault.action.name(), &fault.scenario),
                )
            })
            .collect();
        ServiceMetrics {
            stats: numbers,
            faults,
        }
    }

    /// Counts one HTTP request whose fate is decided: answered with
    /// `status`, or never answered (`None`). Only answered requests record
    /// their duration: held for minutes, blackholed ones would swamp the
    /// latency of real answers.
    pub fn request(&self, outcome: Outcome, status: Option<StatusCode>, elapsed: Duration) {
        self.stats.request(outcome, code_slot(status), elapsed);
    }

    /// Counts one accepted connection and returns a guard that keeps it in
    /// `firedrill_connections_active` until dropped.
    pub fn connection_opened(&self) -> ActiveConnection {
        self.stats.open(1);
        ActiveConnection(Arc::clone(&self.stats))
    }

    /// Records how a connection was handled.
    pub fn connection(&self, outcome: Outcome) {
        self.stats.connection(outcome);
    }

    pub fn bytes_upstream(&self, n: usize) {
        self.stats.bytes_upstream(n);
    }

    pub fn bytes_downstream(&self, n: usize) {
        self.stats.bytes_downstream(n);
    }

    /// Counts faults that hit a request or connection.
    pub fn faults_injected(&self, faults: &[&Fault]) {
        for fault in faults {
            if let Some(counter) = self.faults.get(&fault.uid) {
                counter.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Keeps a connection counted as active while it lives.
#[derive(Debug)]
pub struct ActiveConnection(Arc<ServiceStats>);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.open(-1);
    }
}

/// Sets `firedrill_scenario_active` for one scenario.
pub fn scenario_active(scenario: &str, active: bool) {
    metrics::gauge!(SCENARIO_ACTIVE, "scenario" => scenario.to_owned()).set(if active {
        1.0
    } else {
        0.0
    });
}

/// Counts one activation of `scenario` that its guard `guard` lifted.
pub fn scenario_stopped(scenario: &str, guard: &str) {
    scenario_stops(scenario, guard).increment(1);
}

/// Lists `firedrill_scenario_stops_total` at 0 for every guard of
/// `scenario`, so a dashboard sees the series before the first stop.
pub fn scenario_guards(scenario: &crate::fault::Scenario) {
    for guard in &scenario.stop_when {
        scenario_stops(&scenario.name, &guard.name).increment(0);
    }
}

fn scenario_stops(scenario: &str, guard: &str) -> metrics::Counter {
    metrics::counter!(
        SCENARIO_STOPS_TOTAL,
        "scenario" => scenario.to_owned(),
        "guard" => guard.to_owned()
    )
}

/// What `/metrics` shows: the process-wide recorder and one firedrill's
/// per-service numbers.
#[derive(Debug, Clone)]
pub struct Exporter {
    process: PrometheusHandle,
    stats: Stats,
}

impl Exporter {
    /// Exports `stats`, installing the process's recorder if need be.
    pub fn new(stats: Stats) -> Exporter {
        Exporter {
            process: install(),
            stats,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_counts_in_its_class_and_no_answer_in_none() {
        let slot = |code: u16| code_slot(Some(StatusCode::from_u16(code).unwrap()));
        assert_eq!(code_slot(None), 0);
        assert_eq!(CODE_LABELS[slot(101)], Some("1xx"));
        assert_eq!(CODE_LABELS[slot(204)], Some("2xx"));
        assert_eq!(CODE_LABELS[slot(404)], Some("4xx"));
        assert_eq!(CODE_LABELS[slot(503)], Some("5xx"));
        assert_eq!(CODE_LABELS[slot(999)], Some("5xx"));
    }

    #[test]
    fn every_request_outcome_can_be_counted() {
        assert_eq!(Codes::classes(2, 5).0, 0b11_1100);
        assert_eq!(Codes::classes(5, 5).0, 0b10_0000);
        for (outcome, codes) in REQUEST_CODES {
            assert!(codes.0 != 0, "{outcome:?} registers no series");
        }
        // Outcomes of connections only, never of a request.
        let requests = |o: &Outcome| REQUEST_CODES.iter().any(|(r, _)| r == o);
        let connection_only = [Outcome::Accepted, Outcome::TlsError, Outcome::Refused];
        for outcome in Outcome::ALL {
            assert_eq!(
                requests(&outcome),
                !connection_only.contains(&outcome),
                "{outcome:?}"
            );
        }
    }
}
