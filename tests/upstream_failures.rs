//! Upstream failures through the real binary: a plan pointing at closed
//! ports logs them at `warn`, a bounded number of lines per service, each
//! naming the service, data center, upstream, error and what it left out.

mod support;
use support::*;

use std::time::{Duration, Instant};

use http::StatusCode;

/// The proxy logs at most one upstream failure per service this often.
const LOG_EVERY: Duration = Duration::from_secs(5);

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&format!("{key}=")))
}

/// The warn lines about `service`'s upstream in `log`.
fn failure_lines<'a>(log: &'a str, service: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && field(l, "service") == Some(service))
        .filter(|l| l.contains("upstream is unreachable"))
        .collect()
}

fn suppressed(line: &str) -> u64 {
    field(line, "suppressed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a suppressed= count in: {line}"))
}

/// One request through the http service, which must answer 502.
async fn fail_http(binary: &Binary) {
    let (status, body) = get(binary.service("web"), "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
}

/// One connection through the tcp service, which must be cut.
async fn fail_tcp(binary: &Binary) {
    // The reset may come so fast that it is reported by connect itself.
    let connected = within(
        STEP,
        tokio::net::TcpStream::connect(binary.service("cache")),
    )
    .await;
    let mut stream = match connected {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("connecting to the tcp service: {e}"),
    };
    let closed = closed_within(&mut stream, STEP).await;
    assert!(
        matches!(closed, Some(Ok(0) | Err(_))),
        "the proxy cuts a connection it cannot forward: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_to_reach_an_upstream_are_logged_at_warn_sparingly_per_service() {
    let (closed_http, _held_http) = unreachable_upstream();
    let (closed_tcp, _held_tcp) = unreachable_upstream();
    let dir = TempDir::new("firedrill-upstream-failures");
    let path = dir.path().join("plan.toml");
    let plan = PlanText::new(&["pangyo"])
        .http("web", "pangyo", closed_http)
        .tcp("cache", "pangyo", closed_tcp);
    std::fs::write(&path, plan.toml()).expect("writing the plan");
    let binary = Binary::run(&path, &[]);

    // A burst of failures, then one more every 100 ms until each service
    // has logged a second line, which counts the burst it left out.
    let started = Instant::now();
    let burst = 40;
    for _ in 0..burst {
        fail_http(&binary).await;
        fail_tcp(&binary).await;
    }
    let mut made = burst;
    let deadline = Instant::now() + LOG_EVERY + STEP;
    loop {
        let log = binary.log();
        if failure_lines(&log, "web").len() >= 2 && failure_lines(&log, "cache").len() >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second warning within {:?}:\n{log}",
            LOG_EVERY + STEP
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        fail_http(&binary).await;
        fail_tcp(&binary).await;
        made += 1;
    }
    let elapsed = started.elapsed();

    let log = binary.log();
    for (service, upstream) in [
        ("web", closed_http.to_string()),
        ("cache", closed_tcp.to_string()),
    ] {
        let lines = failure_lines(&log, service);
        // One line at the first failure, then at most one per interval.
        let most = 1 + (elapsed.as_secs_f64() / LOG_EVERY.as_secs_f64()) as usize;
        assert!(
            (2..=most).contains(&lines.len()),
            "{} lines for `{service}` in {elapsed:?}, expected 2 to {most}:\n{log}",
            lines.len()
        );
        for line in &lines {
            assert_eq!(field(line, "datacenter"), Some("pangyo"), "{line}");
            assert!(
                field(line, "upstream").is_some_and(|u| u.ends_with(&upstream)),
                "names the upstream {upstream}: {line}"
            );
            assert!(line.contains("refused"), "says what failed: {line}");
        }
        assert_eq!(suppressed(lines[0]), 0, "{}", lines[0]);
        // Every failure is either a line or counted in a later one; those
        // after the last line are not counted yet.
        let counted: u64 = lines.iter().map(|l| 1 + suppressed(l)).sum();
        assert!(
            counted <= made && counted > burst,
            "{counted} failures accounted for, {made} made, the first {burst} in a burst:\n{log}"
        );
    }
}
