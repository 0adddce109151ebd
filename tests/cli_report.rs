//! `firedrill report` against a real firedrill with real upstreams: the
//! latest impact report as Markdown once an activation the command line
//! triggered and lifted has ended, one by its id, `--json`, and the API's
//! 404 for an id it does not keep.

mod support;
use support::cli::{code, http_admin};
use support::*;

use std::time::{Duration, Instant};

use firedrill::Running;
use http::Method;

/// Runs `firedrill ARGS` against `running` to its end, with no token.
async fn cli(running: &Running, args: &[&str]) -> Ran {
    support::cli::cli(&http_admin(running), None, args).await
}

#[tokio::test]
async fn report_prints_the_latest_impact_report_as_markdown() {
    let running = PlanText::new(&["pangyo", "ansan"])
        .http("talk", "pangyo", http_upstream("talk").await)
        .http("maps", "ansan", http_upstream("maps").await)
        .scenario("pangyo-fire", &["datacenter = 'pangyo'; action = 'drop'"])
        .start()
        .await;
    let ran = cli(&running, &["report"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert_eq!(
        ran.stderr,
        "error: no report yet: firedrill keeps one when an activation ends\n"
    );

    assert_eq!(code(&cli(&running, &["trigger", "pangyo-fire"]).await), 0);
    for service in ["talk", "maps"] {
        // talk's request is dropped: an error here is the fault working.
        let _ = send(&client(), Method::GET, &url(&running, service, "/x"), "").await;
    }
    assert_eq!(code(&cli(&running, &["lift", "pangyo-fire"]).await), 0);

    let deadline = Instant::now() + STEP;
    let markdown = loop {
        let ran = cli(&running, &["report"]).await;
        if code(&ran) == 0 {
            break ran.stdout;
        }
        assert!(Instant::now() < deadline, "no report: {ran:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        markdown.starts_with("# Impact report: pangyo-fire"),
        "{markdown}"
    );

    let ran = cli(&running, &["report", "--json"]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(report["scenario"], "pangyo-fire", "{report}");
    let id = report["id"].as_str().expect("an id").to_owned();
    let ran = cli(&running, &["report", &id]).await;
    assert_eq!(code(&ran), 0, "{ran:?}");
    assert!(
        ran.stdout.starts_with("# Impact report: pangyo-fire"),
        "{}",
        ran.stdout
    );

    let ran = cli(&running, &["report", "no-such-report"]).await;
    assert_eq!(code(&ran), 1, "{ran:?}");
    assert_eq!(
        ran.stderr,
        "error: no report `no-such-report`; GET /reports lists the ones kept (the last 50)\n"
    );
}
