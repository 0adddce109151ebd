//! `firedrill check --probe` through the real binary: it connects to every
//! upstream of a plan and prints a table; exit 0 when all answer, else 1.

mod support;
use support::*;

use std::path::Path;
use std::time::{Duration, Instant};

/// Runs `firedrill check --probe PLAN` to its end off the runtime, so the
/// upstreams of this test keep answering meanwhile.
async fn check_probe(plan: &Path) -> Ran {
    let plan = plan.to_owned();
    let ran = tokio::task::spawn_blocking(move || {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_firedrill"));
        command
            .args(["check", "--probe"])
            .arg(&plan)
            .stdin(std::process::Stdio::null());
        run_captured(&mut command, Duration::from_secs(30))
    })
    .await
    .expect("running firedrill");
    assert!(ran.status.is_some(), "check --probe hung: {ran:?}");
    ran
}

/// The table row of `service`, cut into its columns where the header's
/// columns start: a misaligned table fails here.
fn row<'a>(stdout: &'a str, service: &str) -> Vec<&'a str> {
    let header = stdout
        .lines()
        .find(|l| l.starts_with("SERVICE "))
        .unwrap_or_else(|| panic!("a table header in:\n{stdout}"));
    let starts: Vec<usize> = ["SERVICE", "DATACENTER", "UPSTREAM", "RESULT"]
        .iter()
        .map(|title| header.find(title).expect("a column title"))
        .collect();
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(service))
        .unwrap_or_else(|| panic!("no row for `{service}` in:\n{stdout}"));
    (0..4)
        .map(|i| {
            let end = starts.get(i + 1).copied().unwrap_or(line.len());
            let cell = &line[starts[i]..end];
            assert!(
                i == 3 || cell.ends_with("  "),
                "column {i} of `{service}` runs into the next:\n{stdout}"
            );
            cell.trim_end()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_a_plan_with_a_closed_port_names_it_and_exits_1() {
    let web = http_upstream("web").await;
    let cache = echo_upstream().await;
    let (closed, _held) = unreachable_upstream();
    let dir = TempDir::new("firedrill-probe");
    let path = dir.path().join("plan.toml");
    let plan = PlanText::new(&["pangyo", "ansan"])
        .http("web", "pangyo", web)
        .tcp("cache", "ansan", cache)
        .tcp("ledger", "ansan", closed);
    std::fs::write(&path, plan.toml()).unwrap();

    let ran = check_probe(&path).await;
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert_eq!(
        row(&ran.stdout, "web"),
        [
            "web",
            "pangyo",
            &web.to_string(),
            "reachable, HEAD / answered 200 OK"
        ]
    );
    assert_eq!(
        row(&ran.stdout, "cache"),
        ["cache", "ansan", &cache.to_string(), "reachable"]
    );
    let ledger = row(&ran.stdout, "ledger");
    assert_eq!(ledger[..3], ["ledger", "ansan", &closed.to_string()]);
    assert!(
        ledger[3].starts_with("UNREACHABLE: ") && ledger[3].contains("refused"),
        "{ledger:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_a_plan_whose_upstreams_all_answer_exits_0() {
    let web = http_upstream("web").await;
    let cache = echo_upstream().await;
    let dir = TempDir::new("firedrill-probe");
    let path = dir.path().join("plan.toml");
    let plan = PlanText::new(&["pangyo"])
        .http("web", "pangyo", web)
        .tcp("cache", "pangyo", cache);
    std::fs::write(&path, plan.toml()).unwrap();

    let ran = check_probe(&path).await;
    assert!(ran.succeeded(), "{ran:?}");
    assert!(!ran.stdout.contains("UNREACHABLE"), "{}", ran.stdout);
    assert_eq!(row(&ran.stdout, "cache")[3], "reachable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_run_at_once_each_within_its_connect_timeout() {
    const NAMES: [&str; 8] = ["a", "b", "c", "d", "e", "f", "g", "h"];
    // Upstreams that accept nothing: a listener whose backlog is full
    // leaves each connect hanging until connect_timeout.
    let (silent, _held) = unresponsive_upstream().await;
    let dir = TempDir::new("firedrill-probe");
    let path = dir.path().join("plan.toml");
    let mut plan = PlanText::new(&["pangyo"]);
    for name in NAMES {
        plan = plan.service(
            name,
            "pangyo",
            "http",
            silent,
            "connect_timeout = '1s'; timeout = '1s'",
        );
    }
    std::fs::write(&path, plan.toml()).unwrap();

    let started = Instant::now();
    let ran = check_probe(&path).await;
    let elapsed = started.elapsed();
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    for name in NAMES {
        let result = row(&ran.stdout, name)[3];
        assert!(result.starts_with("UNREACHABLE: no "), "{result}");
        assert!(result.contains("within 1s"), "{result}");
    }
    // Each waited its connect_timeout; one after another, eight would
    // take at least 8 s.
    assert!(elapsed >= Duration::from_secs(1), "probes took {elapsed:?}");
    assert!(elapsed < Duration::from_secs(8), "probes took {elapsed:?}");
}
