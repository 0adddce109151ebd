//! Every metric firedrill exports, written once: names, help text, labels.
//! Label values come only from plan names (services, data centers,
//! scenarios, actions), never from client input. Hot-path handles are
//! registered once per service so counting is an atomic add. [`render`]
//! writes `/metrics` in a stable order.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use http::StatusCode;
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
        "HTTP requests, by service, data center, outcome (forwarded, delayed, dropped, blackholed, error, upstream_error, and client_error for a request refused as malformed) and code, the class of the status answered (1xx to 5xx; no code for a request that got no response), counted when their fate is decided."
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
        "Client-observed time from request to response headers, including injected delay; answered requests only."
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

    fn contains(self, slot: usize) -> bool {
        self.0 & (1 << slot) != 0
    }
}

/// The series of `firedrill_requests_total` each request outcome can move,
/// registered at start-up so counting is an atomic add. A request outcome
/// is one line here.
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
const CODE_LABELS: [Option<&str>; 6] = [
    None,
    Some("1xx"),
    Some("2xx"),
    Some("3xx"),
    Some("4xx"),
    Some("5xx"),
];

/// The slot of a request's `code`: its status class, or 0 for no response.
/// A status over 599, which no client understands, counts as 5xx.
fn code_slot(status: Option<StatusCode>) -> usize {
    status.map_or(0, |status| usize::from(status.as_u16() / 100).min(5))
}

/// One service's metric handles, registered once at start-up. Only the
/// series that can move for the service's protocol are registered.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    /// By outcome, then by [`code_slot`].
    requests: [[Counter; CODE_LABELS.len()]; Outcome::ALL.len()],
    connections: [Counter; Outcome::ALL.len()],
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
        let requests = Outcome::ALL.map(|outcome| {
            let codes = REQUEST_CODES
                .iter()
                .find(|(o, _)| *o == outcome)
                .map(|(_, codes)| *codes)
                .filter(|_| http);
            std::array::from_fn(|slot| match codes {
                Some(codes) if codes.contains(slot) => {
                    let mut labels = labels.to_vec();
                    labels.push(("outcome", outcome.name().to_owned()));
                    if let Some(code) = CODE_LABELS[slot] {
                        labels.push(("code", code.to_owned()));
                    }
                    counter!(REQUESTS_TOTAL, &labels)
                }
                _ => Counter::noop(),
            })
        });
        ServiceMetrics {
            requests,
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

    /// Counts one HTTP request whose fate is decided: answered with
    /// `status`, or never answered (`None`). Only answered requests record
    /// their duration: held for minutes, blackholed ones would swamp the
    /// latency of real answers.
    pub fn request(&self, outcome: Outcome, status: Option<StatusCode>, elapsed: Duration) {
        self.requests[outcome as usize][code_slot(status)].increment(1);
        if status.is_some() {
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

/// The text of `/metrics`: the exporter's, which comes in hash order, with
/// families sorted by name and each family's series by labels, so two
/// scrapes of the same state are identical and can be grepped and diffed.
pub fn render(handle: &PrometheusHandle) -> String {
    sorted(&handle.render())
}

/// Sorts Prometheus text as the exporter writes it: per family its `# HELP`
/// and `# TYPE` lines, its series, then a blank line. A histogram's series
/// stay together per label set: buckets in `le` order, `_sum`, `_count`.
fn sorted(text: &str) -> String {
    let mut families: Vec<(&str, Vec<&str>)> = text
        .split("\n\n")
        .filter(|family| !family.trim().is_empty())
        .map(|family| {
            let (mut comments, series): (Vec<&str>, Vec<&str>) =
                family.lines().partition(|line| line.starts_with('#'));
            let histogram = comments
                .iter()
                .any(|line| line.starts_with("# TYPE ") && line.ends_with(" histogram"));
            let mut series: Vec<(SeriesKey, &str)> = series
                .into_iter()
                .map(|line| (SeriesKey::of(line, histogram), line))
                .collect();
            series.sort_by(|(a, _), (b, _)| {
                (a.labels, a.part)
                    .cmp(&(b.labels, b.part))
                    .then(a.le.total_cmp(&b.le))
            });
            let name = comments
                .iter()
                .find_map(|line| line.strip_prefix("# TYPE "))
                .or(series.first().map(|(_, line)| *line))
                .and_then(|line| line.split([' ', '{']).next())
                .unwrap_or("");
            comments.extend(series.into_iter().map(|(_, line)| line));
            (name, comments)
        })
        .collect();
    families.sort_by_key(|(name, _)| *name);
    let mut out = String::with_capacity(text.len());
    for (_, lines) in families {
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Where a series line sorts within its family.
struct SeriesKey<'a> {
    /// The labels, without a histogram's `le`.
    labels: &'a str,
    /// 0 for a plain series or a bucket, 1 for `_sum`, 2 for `_count`.
    part: u8,
    /// A bucket's bound; 0 otherwise.
    le: f64,
}

impl SeriesKey<'_> {
    fn of(line: &str, histogram: bool) -> SeriesKey<'_> {
        // Label values are escaped, and the sample value holds no `}`.
        let (name, labels) = match (line.find('{'), line.rfind('}')) {
            (Some(open), Some(close)) if open < close => (&line[..open], &line[open + 1..close]),
            _ => (line.split(' ').next().unwrap_or(line), ""),
        };
        if !histogram {
            return SeriesKey {
                labels,
                part: 0,
                le: 0.0,
            };
        }
        // The exporter writes `le` last.
        let (labels, le) = match labels.rfind("le=\"") {
            Some(at) if at == 0 || labels[..at].ends_with(',') => {
                let bound = labels[at + 4..].trim_end_matches('"');
                let le = bound.parse().unwrap_or(f64::INFINITY);
                (labels[..at].trim_end_matches(','), le)
            }
            _ => (labels, 0.0),
        };
        let part = if name.ends_with("_sum") {
            1
        } else if name.ends_with("_count") {
            2
        } else {
            0
        };
        SeriesKey { labels, part, le }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_families_and_series_are_sorted_with_histograms_kept_together() {
        let text = "\
# HELP b_total b.
# TYPE b_total counter
b_total{service=\"z\"} 1
b_total{service=\"a\",outcome=\"x\",code=\"5xx\"} 2
b_total{service=\"a\",outcome=\"x\"} 3

# TYPE a_seconds histogram
a_seconds_bucket{service=\"z\",le=\"0.5\"} 0
a_seconds_bucket{service=\"z\",le=\"+Inf\"} 0
a_seconds_sum{service=\"z\"} 0
a_seconds_count{service=\"z\"} 0
a_seconds_bucket{service=\"y\",le=\"10\"} 1
a_seconds_bucket{service=\"y\",le=\"2.5\"} 1
a_seconds_bucket{service=\"y\",le=\"+Inf\"} 1
a_seconds_sum{service=\"y\"} 2
a_seconds_count{service=\"y\"} 1

# TYPE c gauge
c 1

";
        let expected = "\
# TYPE a_seconds histogram
a_seconds_bucket{service=\"y\",le=\"2.5\"} 1
a_seconds_bucket{service=\"y\",le=\"10\"} 1
a_seconds_bucket{service=\"y\",le=\"+Inf\"} 1
a_seconds_sum{service=\"y\"} 2
a_seconds_count{service=\"y\"} 1
a_seconds_bucket{service=\"z\",le=\"0.5\"} 0
a_seconds_bucket{service=\"z\",le=\"+Inf\"} 0
a_seconds_sum{service=\"z\"} 0
a_seconds_count{service=\"z\"} 0

# HELP b_total b.
# TYPE b_total counter
b_total{service=\"a\",outcome=\"x\"} 3
b_total{service=\"a\",outcome=\"x\",code=\"5xx\"} 2
b_total{service=\"z\"} 1

# TYPE c gauge
c 1

";
        assert_eq!(sorted(text), expected);
        assert_eq!(sorted(expected), expected);
        assert_eq!(sorted(""), "");
    }

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
