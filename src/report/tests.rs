use super::*;

fn phase(span: &str, requests: u64, failed: u64, p99: Option<f64>) -> Phase {
    Phase {
        span: span.to_owned(),
        requests,
        failed,
        error_ratio: (requests > 0).then(|| failed as f64 / requests as f64),
        p50_seconds: p99.map(|p| p / 2.0),
        p99_seconds: p99,
        connections: requests,
    }
}

/// A report of `pangyo-fire` with id `id`: talk dropped, maps untouched.
pub(super) fn sample(id: u64) -> Report {
    let talk = ServiceImpact {
        name: "talk".to_owned(),
        protocol: "http".to_owned(),
        before: phase("1m", 600, 0, Some(0.004)),
        during: phase("12s", 120, 120, None),
        after: Some(phase("1m", 590, 3, Some(1.5))),
        connections_cut: 120,
        faults: vec![FaultCount {
            action: "drop".to_owned(),
            count: 120,
        }],
        recovery: Recovery {
            state: "recovered".to_owned(),
            seconds: Some(0.312),
        },
    };
    let maps = ServiceImpact {
        name: "maps".to_owned(),
        protocol: "http".to_owned(),
        before: phase("1m", 0, 0, None),
        during: phase("12s", 0, 0, None),
        after: Some(phase("1m", 0, 0, None)),
        connections_cut: 0,
        faults: Vec::new(),
        recovery: Recovery {
            state: "no_requests".to_owned(),
            seconds: None,
        },
    };
    let datacenter = |name: &str, service: &ServiceImpact| DataCenterImpact {
        name: name.to_owned(),
        before: service.before.clone(),
        during: service.during.clone(),
        after: service.after.clone(),
        connections_cut: service.connections_cut,
        faults: service.faults.clone(),
        services: vec![service.clone()],
    };
    Report {
        id: id.to_string(),
        scenario: "pangyo-fire".to_owned(),
        description: "pangyo goes dark".to_owned(),
        activated_by: "127.0.0.1:50000 (token lead)".to_owned(),
        origin: Origin::Local,
        started_at: "2026-12-03T10:00:00.000Z".to_owned(),
        ended_at: "2026-12-03T10:00:12.000Z".to_owned(),
        duration: "12s".to_owned(),
        ended: "stopped".to_owned(),
        ended_by: Some("guard ansan-stays-up".to_owned()),
        stopped_by: Some(Stop {
            guard: "ansan-stays-up".to_owned(),
            value: Some(0.31),
            above: 0.05,
            detail: "error ratio 0.31 of services outside the scenario over 30s".to_owned(),
        }),
        complete: true,
        before: "1m".to_owned(),
        after: "1m".to_owned(),
        recovery_precision: "100ms".to_owned(),
        datacenters: vec![datacenter("pangyo", &talk), datacenter("ansan", &maps)],
        chart: Chart {
            seconds_per_point: 1,
            datacenters: vec![
                ChartSeries {
                    name: "pangyo".to_owned(),
                    error_ratio: vec![Some(0.0), Some(1.0), Some(1.0), Some(0.5)],
                },
                ChartSeries {
                    name: "ansan".to_owned(),
                    error_ratio: vec![None, None, None, None],
                },
            ],
        },
    }
}

#[test]
fn only_the_last_fifty_reports_are_kept_newest_first() {
    let reports = Reports::default();
    for id in 1..=KEEP as u64 + 3 {
        reports.keep(sample(id));
    }
    let ids = reports.newest_first(|r| r.id.clone());
    assert_eq!(ids.len(), KEEP);
    assert_eq!(ids.first().map(String::as_str), Some("53"));
    assert_eq!(ids.last().map(String::as_str), Some("4"));
    assert!(reports.get("3").is_none());
    assert_eq!(reports.get("4").map(|r| r.id), Some("4".to_owned()));
}

#[test]
fn a_completed_report_replaces_its_incomplete_one_in_place() {
    let reports = Reports::default();
    let mut first = sample(1);
    first.complete = false;
    reports.keep(first);
    reports.keep(sample(2));
    reports.keep(sample(1));
    let kept = reports.newest_first(|r| (r.id.clone(), r.complete));
    assert_eq!(kept, [("2".to_owned(), true), ("1".to_owned(), true)]);
}

#[test]
fn markdown_says_who_ran_it_and_how_it_ended() {
    let md = markdown(&sample(7));
    let head = "# Impact report: pangyo-fire (#7)\n\n\
                pangyo goes dark\n\n\
                - **Started** 2026-12-03T10:00:00.000Z by 127.0.0.1:50000 (token lead)\n\
                - **Ended** 2026-12-03T10:00:12.000Z after 12s: stopped by guard `ansan-stays-up`: \
                error ratio 0.31 of services outside the scenario over 30s (read 0.31, above 0.05)\n";
    assert!(md.starts_with(head), "{md}");
    assert!(!md.contains("Incomplete"), "{md}");
}

#[test]
fn markdown_tables_each_phase_of_each_datacenter_and_service() {
    let md = markdown(&sample(7));
    let rows = [
        "| **pangyo** | before | 1m | 600 | 0 | 0.0 % | 2.0 ms | 4.0 ms | 600 |",
        "|  | during | 12s | 120 | 120 | 100.0 % | - | - | 120 |",
        "|  | after | 1m | 590 | 3 | 0.5 % | 750.0 ms | 1.50 s | 590 |",
        "| pangyo / talk (http) | before | 1m | 600 | 0 | 0.0 % | 2.0 ms | 4.0 ms | 600 |",
        "| **ansan** | all | no traffic | | | | | | |",
        "| ansan / maps (http) | all | no traffic | | | | | | |",
        "| pangyo / talk | drop 120 | 120 | 0.3 s |",
        "| ansan / maps | none | 0 | no requests after the end |",
    ];
    for row in rows {
        assert!(md.contains(&format!("\n{row}\n")), "no `{row}` in\n{md}");
    }
    let chart = "## Error ratio over the activation\n\n```text\n\
                 pangyo  ▁██▅  max 100.0 %\n\
                 ansan   ····  no requests\n\
                 \x20       one column = 1s; ▁ 0 % … █ 100 % failed; · no requests\n```\n";
    assert!(md.ends_with(chart), "{md}");
}

#[test]
fn markdown_of_an_incomplete_report_says_what_is_still_measured() {
    let mut report = sample(7);
    report.complete = false;
    report.ended = "lifted".to_owned();
    report.ended_by = Some("127.0.0.1:50001".to_owned());
    report.stopped_by = None;
    for dc in &mut report.datacenters {
        dc.after = None;
    }
    let md = markdown(&report);
    assert!(
        md.contains("after 12s: lifted by 127.0.0.1:50001\n"),
        "{md}"
    );
    assert!(
        md.contains("- **Incomplete**: the 1m after the end is still being measured\n"),
        "{md}"
    );
    assert!(
        md.contains("\n|  | after | (measuring) | | | | | | |\n"),
        "{md}"
    );
}

#[test]
fn a_report_reads_back_from_its_json() {
    let report = sample(7);
    let json = serde_json::to_string(&report).unwrap();
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["origin"], "local");
    assert_eq!(value["stopped_by"]["guard"], "ansan-stays-up");
}

#[test]
fn a_stop_without_a_reading_is_null_in_json_and_says_so_in_markdown() {
    let mut report = sample(7);
    if let Some(stop) = &mut report.stopped_by {
        stop.value = None;
        stop.detail = "prometheus at http://127.0.0.1:9091/ could not be read".to_owned();
    }
    let json = serde_json::to_string(&report).unwrap();
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(value["stopped_by"]["value"].is_null(), "{json}");
    assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
    let md = markdown(&report);
    assert!(
        md.contains("stopped by guard `ansan-stays-up`: prometheus at http://127.0.0.1:9091/ could not be read (could not read a value, above 0.05)"),
        "{md}"
    );
}
