//! Every metric firedrill exports, written once: names, help text, labels.
//! Label values come only from plan names (services, data centers,
//! scenarios, actions), never from client input. Hot-path handles are
//! registered once per service so counting is an atomic add.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::fault::Fault;
use crate::topology::{Protocol, Service};

pub const REQUESTS_TOTAL: &str = "firedrill_requests_total";
pub const CONNECTIONS_TOTAL: &str = "firedrill_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "firedrill_connections_active";
pub const REQUEST_DURATION_SECONDS: &str = "firedrill_request_duration_seconds";
pub const BYTES_TOTAL: &str = "firedrill_bytes_total";
pub const FAULTS_INJECTED_TOTAL: &str = "firedrill_faults_injected_total";
pub const SCENARIO_ACTIVE: &str = "firedrill_scenario_active";

/// Histogram buckets for client-observed request latency, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder for this process (once; later calls
/// return the same handle) and describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION_SECONDS.to_owned()),
                    LATENCY_BUCKETS,
                )
                .expect("latency buckets are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
            }
            describe();
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests received, by service, data center and outcome (forwarded, delayed, dropped, blackholed, error, upstream_error, and client_error for a request refused as malformed)."
    );
    describe_counter!(
        CONNECTIONS_TOTAL,
        Unit::Count,
        "Client connections accepted, by service, data center and outcome (tcp: forwarded, delayed, dropped, blackholed, upstream_error; http: accepted, and tls_error for a failed TLS handshake; both: refused at max_connections)."
    );
    describe_gauge!(
        CONNECTIONS_ACTIVE,
        Unit::Count,
        "Client connections open now."
    );
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Client-observed time from request to response headers, including injected delay."
    );
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "Payload bytes forwarded, by direction (upstream: client to service; downstream: service to client)."
    );
    describe_counter!(
        FAULTS_INJECTED_TOTAL,
        Unit::Count,
        "Faults applied to a request or connection, by service, data center, action and scenario."
    );
    describe_gauge!(SCENARIO_ACTIVE, "1 while a scenario is active, else 0.");
}

/// How a request or connection ended up, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Delayed,
    Dropped,
    Blackholed,
    Error,
    UpstreamError,
    /// An HTTP client connection; its requests carry their own outcomes.
    Accepted,
    /// An HTTP client connection whose TLS handshake failed or timed out.
    TlsError,
    /// A client connection refused because the service was at its
    /// `max_connections`.
    Refused,
    /// An HTTP request refused as the client's fault (400, 405): two `Host`
    /// fields, `CONNECT`, a malformed body.
    ClientError,
}

impl Outcome {
    const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::Delayed,
        Outcome::Dropped,
        Outcome::Blackholed,
        Outcome::Error,
        Outcome::UpstreamError,
        Outcome::Accepted,
        Outcome::TlsError,
        Outcome::Refused,
        Outcome::ClientError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Delayed => "delayed",
            Outcome::Dropped => "dropped",
            Outcome::Blackholed => "blackholed",
            Outcome::Error => "error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Accepted => "accepted",
            Outcome::TlsError => "tls_error",
            Outcome::Refused => "refused",
            Outcome::ClientError => "client_error",
        }
    }
}

/// One service's metric handles, registered once at start-up. Only the
/// series that can move for the service's protocol are registered.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    requests: [Counter; 10],
    connections: [Counter; 10],
    active: Gauge,
    duration: Histogram,
    bytes_upstream: Counter,
    bytes_downstream: Counter,
    /// `firedrill_faults_injected_total` for every fault that can hit the
    /// service, by fault uid.
    faults: HashMap<u64, Counter>,
}

impl ServiceMetrics {
    /// Registers the service's series, including one per fault in `faults`
    /// that targets it.
    pub fn new<'a>(service: &Service, faults: impl Iterator<Item = &'a Fault>) -> ServiceMetrics {
        let labels = [
            ("service", service.name.to_string()),
            ("datacenter", service.datacenter.to_string()),
        ];
        let http = service.protocol == Protocol::Http;
        let by_outcome = |name: &'static str, applies: &dyn Fn(Outcome) -> bool| {
            Outcome::ALL.map(|o| {
                if !applies(o) {
                    return Counter::noop();
                }
                let mut labels = labels.to_vec();
                labels.push(("outcome", o.name().to_owned()));
                counter!(name, &labels)
            })
        };
        let bytes = |direction: &'static str| {
            let mut labels = labels.to_vec();
            labels.push(("direction", direction.to_owned()));
            counter!(BYTES_TOTAL, &labels)
        };
        let faults = faults
            .filter(|fault| fault.targets.contains(&service.id))
            .map(|fault| {
                let mut labels = labels.to_vec();
                labels.push(("action", fault.action.name().to_owned()));
                labels.push(("scenario", fault.scenario.to_string()));
                (fault.uid, counter!(FAULTS_INJECTED_TOTAL, &labels))
            })
            .collect();
        ServiceMetrics {
            requests: by_outcome(REQUESTS_TOTAL, &|o| {
                http && !matches!(o, Outcome::Accepted | Outcome::TlsError | Outcome::Refused)
            }),
            connections: by_outcome(CONNECTIONS_TOTAL, &|o| match o {
                Outcome::Accepted => http,
                Outcome::TlsError => service.tls.is_some(),
                Outcome::Refused => true,
                Outcome::ClientError => false,
                // An injected error response means nothing to a byte stream.
                Outcome::Error => false,
                _ => !http,
            }),
            active: gauge!(CONNECTIONS_ACTIVE, &labels),
            duration: if http {
                histogram!(REQUEST_DURATION_SECONDS, &labels)
            } else {
                Histogram::noop()
            },
            bytes_upstream: bytes("upstream"),
            bytes_downstream: bytes("downstream"),
            faults,
        }
    }

    /// Counts one finished HTTP request and its client-observed duration.
    pub fn request(&self, outcome: Outcome, elapsed: Duration) {
        self.requests[outcome as usize].increment(1);
        // Blackholed and dropped requests never get response headers; held
        // for minutes, they would swamp the latency of real answers.
        if !matches!(outcome, Outcome::Blackholed | Outcome::Dropped) {
            self.duration.record(elapsed.as_secs_f64());
        }
    }

    /// Counts one accepted connection and returns a guard that keeps it in
    /// `firedrill_connections_active` until dropped.
    pub fn connection_opened(&self) -> ActiveConnection {
        self.active.increment(1.0);
        ActiveConnection(self.active.clone())
    }

    /// Records how a connection was handled.
    pub fn connection(&self, outcome: Outcome) {
        self.connections[outcome as usize].increment(1);
    }

    pub fn bytes_upstream(&self, n: usize) {
        self.bytes_upstream.increment(n as u64);
    }

    pub fn bytes_downstream(&self, n: usize) {
        self.bytes_downstream.increment(n as u64);
    }

    /// Counts faults that hit a request or connection.
    pub fn faults_injected(&self, faults: &[&Fault]) {
        for fault in faults {
            if let Some(counter) = self.faults.get(&fault.uid) {
                counter.increment(1);
            }
        }
    }
}

/// Keeps a connection counted as active while it lives.
#[derive(Debug)]
pub struct ActiveConnection(Gauge);

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Sets `firedrill_scenario_active` for one scenario.
pub fn scenario_active(scenario: &str, active: bool) {
    gauge!(SCENARIO_ACTIVE, "scenario" => scenario.to_owned()).set(if active { 1.0 } else { 0.0 });
}
