//! `/metrics` as text: every service's numbers from the [`Stats`]
//! registry written in the Prometheus exporter's format, merged with the
//! process recorder's text and sorted, so two scrapes of the same state
//! read the same.

use std::fmt::Write as _;

use super::{Exporter, Family, CODE_LABELS};
use super::{ACTIVE, BYTES, CONNECTIONS, DURATION, FAULTS, REQUESTS};
use crate::stats::{Counts, Outcome, Stats, LATENCY_BUCKETS};

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
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::metrics::Codes;
    use crate::stats::Listed;

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
}
