//! A report as Markdown, for a retro: who ran what and how it ended, a
//! table of each data center and service before, during and after, the
//! faults and cuts with each service's recovery, and the error ratio
//! chart. `GET /reports/{id}` answers it for `Accept: text/markdown`.

use std::fmt::Write;

use super::{chart, FaultCount, Phase, Recovery, Report};

/// `report` as a Markdown document.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Impact report: {} (#{})\n",
        report.scenario, report.id
    );
    if !report.description.is_empty() {
        let _ = writeln!(md, "{}\n", report.description);
    }
    let origin = match &report.origin {
        crate::engine::Origin::Local => String::new(),
        crate::engine::Origin::Peer(peer) => format!(" (from peer {peer})"),
    };
    let _ = writeln!(
        md,
        "- **Started** {} by {}{origin}",
        report.started_at, report.activated_by
    );
    let _ = writeln!(
        md,
        "- **Ended** {} after {}: {}",
        report.ended_at,
        report.duration,
        ending(report)
    );
    let _ = writeln!(
        md,
        "- **Measured** {} before, during, and {} after; recovery is the time from the end to a service's first successful request, late by at most {}",
        report.before, report.after, report.recovery_precision
    );
    if !report.complete {
        let _ = writeln!(
            md,
            "- **Incomplete**: the {} after the end is still being measured",
            report.after
        );
    }
    md += "\n## Data centers and services\n\n";
    md += "| | Phase | Span | Requests | Failed | Error ratio | p50 | p99 | Connections |\n";
    md += "|---|---|---|---:|---:|---:|---:|---:|---:|\n";
    for dc in &report.datacenters {
        rows(
            &mut md,
            &format!("**{}**", dc.name),
            &dc.before,
            &dc.during,
            dc.after.as_ref(),
        );
        for service in &dc.services {
            let name = format!("{} / {} ({})", dc.name, service.name, service.protocol);
            rows(
                &mut md,
                &name,
                &service.before,
                &service.during,
                service.after.as_ref(),
            );
        }
    }
    md += "\n## Faults and recovery\n\n";
    md += "| Service | Faults injected | Connections cut | Recovery |\n";
    md += "|---|---|---:|---|\n";
    for dc in &report.datacenters {
        for s in &dc.services {
            let _ = writeln!(
                md,
                "| {} / {} | {} | {} | {} |",
                dc.name,
                s.name,
                faults(&s.faults),
                s.connections_cut,
                recovery(&s.recovery)
            );
        }
    }
    md += "\n## Error ratio over the activation\n\n```text\n";
    md += &chart::render(&report.chart);
    md += "```\n";
    md
}

fn ending(report: &Report) -> String {
    let by = report.ended_by.as_deref().unwrap_or("");
    match (report.ended.as_str(), &report.stopped_by) {
        ("stopped", Some(stop)) => {
            let read = match stop.value {
                Some(value) => format!("read {}", number(value)),
                None => "could not read a value".to_owned(),
            };
            format!(
                "stopped by guard `{}`: {} ({read}, above {})",
                stop.guard,
                stop.detail,
                number(stop.above)
            )
        }
        ("expired", _) => "expired: its duration ran out".to_owned(),
        ("completed", _) => "completed: its last fault ended".to_owned(),
        ("halted", _) => format!("halted (every scenario lifted at once) by {by}"),
        (how, _) if by.is_empty() => how.to_owned(),
        (how, _) => format!("{how} by {by}"),
    }
}

fn rows(md: &mut String, name: &str, before: &Phase, during: &Phase, after: Option<&Phase>) {
    let quiet = |p: &Phase| p.requests == 0 && p.connections == 0;
    // One line for a service nobody used, so the ones that matter stand out.
    if quiet(before) && quiet(during) && after.is_some_and(quiet) {
        let _ = writeln!(md, "| {name} | all | no traffic | | | | | | |");
        return;
    }
    row(md, name, "before", Some(before));
    row(md, "", "during", Some(during));
    row(md, "", "after", after);
}

fn row(md: &mut String, name: &str, label: &str, phase: Option<&Phase>) {
    let Some(p) = phase else {
        let _ = writeln!(md, "| {name} | {label} | (measuring) | | | | | | |");
        return;
    };
    let _ = writeln!(
        md,
        "| {name} | {label} | {} | {} | {} | {} | {} | {} | {} |",
        p.span,
        p.requests,
        p.failed,
        percent(p.error_ratio),
        latency(p.p50_seconds),
        latency(p.p99_seconds),
        p.connections
    );
}

/// A ratio as a percentage with one decimal, or `-` for none.
pub(super) fn percent(ratio: Option<f64>) -> String {
    ratio.map_or("-".to_owned(), |r| format!("{:.1} %", r * 100.0))
}

/// A latency in seconds, in the unit that reads best.
fn latency(seconds: Option<f64>) -> String {
    match seconds {
        None => "-".to_owned(),
        Some(s) if s < 1.0 => format!("{:.1} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn number(n: f64) -> String {
    format!("{n:.3}")
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_owned()
}

fn faults(faults: &[FaultCount]) -> String {
    if faults.is_empty() {
        return "none".to_owned();
    }
    let each: Vec<String> = (faults.iter())
        .map(|f| format!("{} {}", f.action, f.count))
        .collect();
    each.join(", ")
}

fn recovery(recovery: &Recovery) -> String {
    match (recovery.state.as_str(), recovery.seconds) {
        ("recovered", Some(s)) => format!("{s:.1} s"),
        ("pending", _) => "measuring".to_owned(),
        ("not_recovered", _) => "not recovered: every request after the end failed".to_owned(),
        ("no_requests", _) => "no requests after the end".to_owned(),
        (other, _) => other.to_owned(),
    }
}
