//! `firedrill status` and `firedrill watch` against a real firedrill with
//! traffic flowing through real upstreams: the table shows a data center
//! go dark under a scenario the command line triggered, and recover;
//! `watch` redraws every second, stops on Ctrl-C and when its reader goes
//! away, and outlives a firedrill that stops answering.

mod support;
use gameday::Traffic;
use support::cli::http_admin;
use support::status::state_of;
use support::*;

#[path = "support/gameday.rs"]
mod gameday;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use firedrill::admin::api;
use firedrill::Running;

/// `firedrill ARGS` against `running`'s admin API, with no token.
fn firedrill(running: &Running, args: &[&str]) -> Command {
    support::cli::command(&http_admin(running), None, args)
}

/// Runs `firedrill ARGS` to its end off the test's runtime; asserts it
/// exits 0 and returns its stdout.
async fn succeed(running: &Running, args: &[&str]) -> String {
    let ran = support::cli::cli(&http_admin(running), None, args).await;
    assert!(ran.succeeded(), "firedrill {args:?}: {ran:?}");
    ran.stdout
}

/// Polls `firedrill status --json` until `done` holds, for at most `limit`.
async fn status_until(
    running: &Running,
    limit: Duration,
    what: &str,
    done: impl Fn(&api::Status) -> bool,
) -> api::Status {
    let deadline = Instant::now() + limit;
    loop {
        let text = succeed(running, &["status", "--json"]).await;
        let status: api::Status =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        if done(&status) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{what} not within {limit:?}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table's line for `name` (a data center, or `  name (http)`).
fn line<'t>(table: &'t str, name: &str) -> &'t str {
    let found = table
        .lines()
        .find(|line| line.starts_with(&format!("{name} ")));
    found.unwrap_or_else(|| panic!("no line for `{name}` in\n{table}"))
}

#[tokio::test]
async fn status_shows_a_data_center_go_dark_and_recover() {
    let running = gameday::plan("").await.start().await;
    let _traffic = Traffic::start(&running);
    status_until(&running, STEP, "traffic everywhere", |s| {
        s.datacenters.iter().all(|dc| dc.requests_per_second > 0.0)
    })
    .await;

    succeed(&running, &["trigger", "pangyo-fire", "--for", "5m"]).await;
    status_until(&running, STEP, "pangyo dark", |s| {
        state_of(s, "pangyo") == "dark"
    })
    .await;
    let table = succeed(&running, &["status"]).await;
    assert!(line(&table, "pangyo").contains(" dark "), "{table}");
    assert!(
        line(&table, "  talk (http)").ends_with("blackhole (pangyo-fire)"),
        "{table}"
    );
    assert!(line(&table, "ansan").contains(" healthy "), "{table}");
    assert!(
        line(&table, "  mail (http)").contains(" healthy "),
        "{table}"
    );
    let active = line(&table, "pangyo-fire");
    assert!(
        active.contains(" active ") && active.contains(" left, until "),
        "{table}"
    );

    succeed(&running, &["lift", "pangyo-fire"]).await;
    status_until(&running, STEP, "pangyo healthy again", |s| {
        state_of(s, "pangyo") == "healthy" && s.active.is_empty()
    })
    .await;
    let table = succeed(&running, &["status"]).await;
    assert!(table.ends_with("\nNo scenario is active.\n"), "{table}");
}

/// `firedrill watch ARGS` started with its stdout piped.
fn watch(running: &Running, args: &[&str]) -> Process {
    let mut command = firedrill(running, &[&["watch"], args].concat());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting firedrill watch");
    Process(child)
}

/// How `process` exits, waiting up to [`STEP`] off the test's runtime
/// (which serves firedrill meanwhile); fails the test if it does not.
async fn exit_of(mut process: Process) -> std::process::ExitStatus {
    let exited = tokio::task::spawn_blocking(move || process.wait_within(STEP));
    exited.await.unwrap().expect("it exits")
}

/// Waits (up to [`STEP`]) for the `count`th line holding `text`.
fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, text: &str, count: usize) -> String {
    let deadline = Instant::now() + STEP;
    let mut seen = 0;
    let mut all = String::new();
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        all += &line;
        all += "\n";
        if line.contains(text) {
            seen += 1;
            if seen == count {
                return all;
            }
        }
    }
    panic!("no {count} lines with `{text}` within {STEP:?}:\n{all}");
}

#[tokio::test]
async fn watch_redraws_every_second_until_ctrl_c() {
    let running = gameday::plan("").await.start().await;
    let mut watching = watch(&running, &[]);
    let lines = lines(watching.0.stdout.take().unwrap());
    let header = format!(
        "firedrill at http://{} (Ctrl-C to stop)",
        running.admin_addr()
    );
    let shown = tokio::task::spawn_blocking(move || (wait_for_line(&lines, &header, 2), lines));
    let (shown, _lines) = shown.await.unwrap();
    assert!(shown.contains("\npangyo "), "{shown}");
    assert!(shown.contains("\nNo scenario is active.\n"), "{shown}");
    watching.signal("INT");
    assert!(exit_of(watching).await.success(), "watch stops on Ctrl-C");
}

#[tokio::test]
async fn watch_stops_cleanly_when_its_reader_goes_away() {
    let running = gameday::plan("").await.start().await;
    let mut watching = watch(&running, &["--json"]);
    let mut stdout = watching.0.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut byte = [0u8; 1];
        let mut line = Vec::new();
        while byte[0] != b'\n' {
            assert_eq!(stdout.read(&mut byte).unwrap(), 1, "watch ended early");
            line.push(byte[0]);
        }
        // Closing the pipe here is the reader going away.
        String::from_utf8(line).unwrap()
    });
    let first = first.await.unwrap();
    let status: api::Status = serde_json::from_str(&first).expect("a JSON line");
    assert_eq!(status.datacenters.len(), 2, "{first}");
    assert!(exit_of(watching).await.success(), "watch stops");
}

#[tokio::test]
async fn watch_says_so_and_retries_when_firedrill_stops_answering() {
    let running = gameday::plan("").await.start().await;
    let admin = running.admin_addr();
    let mut watching = watch(&running, &[]);
    let lines = lines(watching.0.stdout.take().unwrap());
    let lines = tokio::task::spawn_blocking(move || {
        wait_for_line(&lines, "No scenario is active.", 1);
        lines
    })
    .await
    .unwrap();
    running.shutdown(Duration::from_secs(1)).await;
    let gone = format!("firedrill is not reachable at http://{admin}: ");
    let shown = tokio::task::spawn_blocking(move || wait_for_line(&lines, &gone, 2));
    let shown = shown.await.unwrap();
    assert!(shown.contains("retrying every second"), "{shown}");
    assert_eq!(watching.0.try_wait().unwrap(), None, "watch gave up");
    watching.signal("INT");
    assert!(exit_of(watching).await.success(), "watch stops on Ctrl-C");
}
