//! Every metric firedrill exports, written once: names, help text, labels.
//! Label values come only from plan names (services, data centers,
//! scenarios, actions), never from client input. Per-service numbers live
//! in [`crate::stats`], where the process reads them too; a service's
//! [`ServiceMetrics`] adds to them with an atomic add per number. [`render`]
//! writes them, and the process-wide scenario gauges, as `/metrics` in a
//! stable order.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::StatusCode;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::fault::Fault;
use crate::stats::LATENCY_BUCKETS;
use crate::stats::{code_slot, Counts, Listed, ServiceStats, Stats, CODE_SLOTS};
use crate::topology::{Protocol, Service};

pub use crate::stats::Outcome;

pub const REQUESTS_TOTAL: &str = "firedrill_requests_total";
pub const CONNECTIONS_TOTAL: &str = "firedrill_connections_total";
pub const CONNECTIONS_ACTIVE: &str = "firedrill_connections_active";
pub const REQUEST_DURATION_SECONDS: &str = "firedrill_request_duration_seconds";
pub const BYTES_TOTAL: &str = "firedrill_bytes_total";
pub const FAULTS_INJECTED_TOTAL: &str = "firedrill_faults_injected_total";
pub const SCENARIO_ACTIVE: &str = "firedrill_scenario_active";

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
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
            }
            metrics::describe_gauge!(SCENARIO_ACTIVE, "1 while a scenario is active, else 0.");
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
    /// was there before, with a series for every fault in `faults` that
    /// targets it.
    pub fn new<'a>(
        stats: &Stats,
        service: &Service,
        faults: impl Iterator<Item = &'a Fault>,
    ) -> ServiceMetrics {
        let numbers = stats.register(&service.name, &service.datacenter);
        numbers.list(&listed(service));
        let faults = faults
            .filter(|fault| fault.targets.contains(&service.id))
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

/// The text of `/metrics`: every service's series and the recorder's,
/// with families sorted by name and each family's series by labels, so two
/// scrapes of the same state are identical and can be grepped and diffed.
pub fn render(exporter: &Exporter) -> String {
    let mut text = exporter.process.render();
    write_services(&mut text, &exporter.stats);
    sorted(&text)
}

/// Appends every per-service family, in the exporter's format.
fn write_services(text: &mut String, stats: &Stats) {
    let services: Vec<(String, Counts)> = stats
        .services()
        .iter()
        .map(|s| {
            let (name, datacenter) = (escape(s.name()), escape(s.datacenter()));
            let labels = format!("service=\"{name}\",datacenter=\"{datacenter}\"");
            (labels, s.counts())
        })
        .collect();
    family(text, &REQUESTS, &services, |out, counts| {
        for (outcome, by_code) in Outcome::ALL.iter().zip(&counts.requests) {
            let listed = counts.listed.requests[*outcome as usize];
            for (slot, value) in by_code.iter().enumerate() {
                if listed & (1 << slot) != 0 || *value != 0 {
                    let outcome = format!(",outcome=\"{}\"", outcome.name());
                    let code = CODE_LABELS[slot].map(|c| format!(",code=\"{c}\""));
                    out.line("", &(outcome + &code.unwrap_or_default()), value);
                }
            }
        }
    });
    family(text, &CONNECTIONS, &services, |out, counts| {
        for (outcome, value) in Outcome::ALL.iter().zip(&counts.connections) {
            if counts.listed.connections & (1 << *outcome as usize) != 0 || *value != 0 {
                out.line("", &format!(",outcome=\"{}\"", outcome.name()), value);
            }
        }
    });
    family(text, &ACTIVE, &services, |out, counts| {
        out.line("", "", &counts.open);
    });
    family(text, &DURATION, &services, |out, counts| {
        let total: u64 = counts.latency.iter().sum();
        if !counts.listed.latency && total == 0 {
            return;
        }
        let mut below = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&counts.latency) {
            below += n;
            out.line("_bucket", &format!(",le=\"{bound}\""), &below);
        }
        out.line("_bucket", ",le=\"+Inf\"", &total);
        out.line("_sum", "", &(counts.latency_nanos as f64 / 1e9));
        out.line("_count", "", &total);
    });
    family(text, &BYTES, &services, |out, counts| {
        out.line("", ",direction=\"downstream\"", &counts.bytes_downstream);
        out.line("", ",direction=\"upstream\"", &counts.bytes_upstream);
    });
    family(text, &FAULTS, &services, |out, counts| {
        for (action, scenario, value) in &counts.faults {
            let scenario = escape(scenario);
            let labels = format!(",action=\"{action}\",scenario=\"{scenario}\"");
            out.line("", &labels, value);
        }
    });
}

/// Appends `family` with the series `series` writes for each service (by
/// its labels), unless it writes none: as the exporter, which leaves out a
/// metric nothing registered.
fn family(
    text: &mut String,
    family: &Family,
    services: &[(String, Counts)],
    series: impl Fn(&mut Series, &Counts),
) {
    let mut out = Series {
        name: family.name,
        labels: "",
        text: String::new(),
    };
    for (labels, counts) in services {
        out.labels = labels;
        series(&mut out, counts);
    }
    if out.text.is_empty() {
        return;
    }
    let _ = writeln!(text, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(text, "# TYPE {} {}", family.name, family.kind);
    text.push_str(&out.text);
    text.push('\n');
}

/// The series lines of one family, written one service at a time.
struct Series<'a> {
    name: &'static str,
    /// The service's labels.
    labels: &'a str,
    text: String,
}

impl Series<'_> {
    /// Writes `name{suffix}{labels more} value`; `more` starts with a comma.
    fn line(&mut self, suffix: &str, more: &str, value: &dyn std::fmt::Display) {
        let (name, labels) = (self.name, self.labels);
        let _ = writeln!(self.text, "{name}{suffix}{{{labels}{more}}} {value}");
    }
}

/// A label value as the text format wants it: backslash, double quote and
/// line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
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
    fn a_service_renders_as_the_prometheus_exporter_wrote_it() {
        let stats = Stats::default();
        let talk = stats.register("talk", "pangyo");
        let mut listed = Listed {
            latency: true,
            connections: 1 << Outcome::Accepted as usize,
            ..Listed::default()
        };
        listed.requests[Outcome::Blackholed as usize] = Codes::NONE.0;
        talk.list(&listed);
        talk.request(Outcome::Forwarded, 2, Duration::from_millis(3));
        talk.request(Outcome::Forwarded, 2, Duration::from_millis(40));
        talk.open(1);
        let count = talk.fault("blackhole", &Arc::from("fire"));
        count.fetch_add(2, Relaxed);
        let mut text = String::new();
        write_services(&mut text, &stats);
        let text = sorted(&text);
        let labels = "service=\"talk\",datacenter=\"pangyo\"";
        for expected in [
            format!("firedrill_requests_total{{{labels},outcome=\"blackholed\"}} 0"),
            // Counted though not listed: nothing counted goes unseen.
            format!("firedrill_requests_total{{{labels},outcome=\"forwarded\",code=\"2xx\"}} 2"),
            format!("firedrill_connections_total{{{labels},outcome=\"accepted\"}} 0"),
            format!("firedrill_connections_active{{{labels}}} 1"),
            format!("firedrill_request_duration_seconds_bucket{{{labels},le=\"0.0005\"}} 0"),
            format!("firedrill_request_duration_seconds_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("firedrill_request_duration_seconds_bucket{{{labels},le=\"0.05\"}} 2"),
            format!("firedrill_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 2"),
            format!("firedrill_request_duration_seconds_sum{{{labels}}} 0.043"),
            format!("firedrill_request_duration_seconds_count{{{labels}}} 2"),
            format!("firedrill_bytes_total{{{labels},direction=\"upstream\"}} 0"),
            format!("firedrill_faults_injected_total{{{labels},action=\"blackhole\",scenario=\"fire\"}} 2"),
            "# TYPE firedrill_request_duration_seconds histogram".to_owned(),
        ] {
            assert!(text.lines().any(|line| line == expected), "no {expected} in:\n{text}");
        }
        // Only listed or counted series.
        assert!(!text.contains("outcome=\"dropped\""), "{text}");
        assert!(!text.contains("outcome=\"refused\""), "{text}");
        assert_eq!(sorted(&text), text);
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
