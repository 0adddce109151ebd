//! Checks of the `[reports]` table: `dir` is resolved from the plan's
//! directory and must not be a file; `before` reaches no further back than
//! the stats history keeps.

use std::path::Path;

use super::{raw, resolve, Report};
use crate::config::Reports;

const HISTORY: std::time::Duration = Reports::MOST_BEFORE;

pub(super) fn reports(raw: &raw::Reports, base: &Path, report: Report<'_>) -> Reports {
    let defaults = Reports::default();
    let dir = raw.dir.as_ref().map(|dir| {
        let path = resolve(base, dir.get_ref());
        if path.exists() && !path.is_dir() {
            report(
                dir.span(),
                format!(
                    "reports.dir: `{}` is a file, not a directory; name a directory (it is created if missing)",
                    path.display()
                ),
            );
        }
        path
    });
    let before = match &raw.before {
        Some(before) if before.get_ref().0 > HISTORY => {
            report(
                before.span(),
                format!(
                    "reports.before: {} reaches further back than the {} of history firedrill keeps; write at most \"{}\"",
                    humantime::format_duration(before.get_ref().0),
                    humantime::format_duration(HISTORY),
                    humantime::format_duration(HISTORY),
                ),
            );
            HISTORY
        }
        Some(before) => before.get_ref().0,
        None => defaults.before,
    };
    Reports {
        dir,
        before,
        after: raw.after.map_or(defaults.after, |after| after.0),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::{parse, Error};

    const PLAN: &str = r#"
[datacenters.pangyo]

[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:8001"
upstream = "http://127.0.0.1:9001"
"#;

    fn messages(source: &str) -> Vec<(usize, usize, String)> {
        match parse(source, "/plans/plan.toml") {
            Ok(_) => panic!("plan should be rejected"),
            Err(Error::Invalid(found)) => found
                .into_iter()
                .map(|d| (d.line, d.column, d.message))
                .collect(),
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn reports_default_to_memory_and_a_minute_either_side() {
        let plan = parse(PLAN, "/plans/plan.toml").unwrap();
        assert_eq!(plan.reports.dir, None);
        assert_eq!(plan.reports.before, Duration::from_secs(60));
        assert_eq!(plan.reports.after, Duration::from_secs(60));
    }

    #[test]
    fn reports_dir_is_read_from_the_plans_directory() {
        let source =
            format!("{PLAN}\n[reports]\ndir = \"retro\"\nbefore = \"30s\"\nafter = \"2s\"\n");
        let plan = parse(&source, "/plans/plan.toml").unwrap();
        assert_eq!(plan.reports.dir.as_deref(), Some("/plans/retro".as_ref()));
        assert_eq!(plan.reports.before, Duration::from_secs(30));
        assert_eq!(plan.reports.after, Duration::from_secs(2));
    }

    #[test]
    fn reports_before_may_not_reach_past_the_history() {
        let source = format!("{PLAN}\n[reports]\nbefore = \"10m\"\n");
        assert_eq!(
            messages(&source),
            [(11, 10, "reports.before: 10m reaches further back than the 5m of history firedrill keeps; write at most \"5m\"".to_owned())]
        );
    }

    #[test]
    fn reports_refuse_unknown_fields_and_bad_durations_where_they_are() {
        let source = format!("{PLAN}\n[reports]\nafter = 60\ndirectory = \"x\"\n");
        let found = messages(&source);
        assert_eq!(found.len(), 1, "{found:?}");
        let (line, _, message) = &found[0];
        assert_eq!(*line, 11);
        assert!(message.contains("write \"60ms\" or \"60s\""), "{message}");
    }

    #[test]
    fn reports_dir_may_not_be_a_file() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let source = format!("{PLAN}\n[reports]\ndir = \"{file}\"\n");
        let found = messages(&source);
        assert_eq!((found[0].0, found[0].1), (11, 7));
        let expected = format!("reports.dir: `{file}` is a file, not a directory");
        assert!(found[0].2.starts_with(&expected), "{found:?}");
    }
}
