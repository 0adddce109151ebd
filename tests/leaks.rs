//! No leaks: 10,000 connections opened and closed through an http and a tcp
//! service (clean closes, client resets, connections held by a blackhole
//! and then released) leave open files, connection tasks and the
//! `firedrill_connections_active` gauge where they started. A file of its
//! own because it counts the whole process's open files: no other test may
//! run beside it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use firedrill::Running;
use support::*;

/// Connections at once per kind in one batch; each costs the process three
/// or four descriptors (client, proxy side, upstream, upstream side).
const BATCH: usize = 250;

/// Descriptors that may still be open at the end beyond the baseline. The
/// proxy keeps no pool for HTTP/1.1 clients (each client connection has an
/// upstream connection of its own, closed with it), so everything the
/// traffic opened closes; the slack covers only the admin calls this test
/// itself makes (a fresh hyper client per call, whose pooled connection and
/// the admin server's side of it may still be closing when the count is
/// read).
const SLACK: usize = 8;

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("reading /proc/self/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_connections_leave_no_descriptor_task_or_gauge_behind() {
    let (web, cache) = (unique("web"), unique("cache"));
    let blackout = unique("blackout");
    let running = PlanText::new(&["pangyo"])
        .http(&web, "pangyo", http_upstream("web").await)
        .tcp(&cache, "pangyo", echo_upstream().await)
        .scenario(&blackout, &["datacenter = 'pangyo'; action = 'blackhole'"])
        // On worker threads, as the binary runs: every connection also
        // moves from the accepting runtime to a worker's.
        .start_on(firedrill::Workers::spawn(2).unwrap())
        .await;
    let (web_addr, cache_addr) = (addr(&running, &web), addr(&running, &cache));

    // Warm up every path once (lazy statics, the metrics registry, runtime
    // internals), then take the baseline.
    http_clean(web_addr, false).await;
    tcp_clean(cache_addr).await;
    settle(&running, &[&web, &cache], usize::MAX).await;
    let baseline = open_files();
    eprintln!("baseline: {baseline} open files");

    let mut opened = 0;
    for round in 0..8 {
        let mut batch = JoinSet::new();
        for i in 0..BATCH {
            batch.spawn(http_clean(web_addr, i % 2 == 0));
            batch.spawn(http_abort(web_addr, i % 3));
            batch.spawn(tcp_clean(cache_addr));
            batch.spawn(tcp_abort(cache_addr, i % 2 == 0));
        }
        opened += 4 * BATCH;
        within(STEP * 6, batch.join_all()).await;
        eprintln!(
            "round {round}: {opened} connections, {} open files, {} tasks",
            open_files(),
            running.connection_tasks()
        );
    }
    for round in 0..4 {
        opened += blackhole_round(&running, &blackout, web_addr, cache_addr).await;
        eprintln!(
            "blackhole round {round}: {opened} connections, {} open files, {} tasks",
            open_files(),
            running.connection_tasks()
        );
    }
    assert_eq!(opened, 10_000);

    settle(&running, &[&web, &cache], baseline + SLACK).await;
}

/// Waits (bounded) until no connection task runs, every service's active
/// gauge is 0 and at most `files` descriptors are open.
async fn settle(running: &Running, services: &[&str], files: usize) {
    let mut last = (0, 0, 0.0);
    let settled = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = metrics(running).await;
            let active: f64 = services
                .iter()
                .map(|s| sample(&text, "firedrill_connections_active", &[("service", s)]))
                .sum();
            last = (running.connection_tasks(), open_files(), active);
            if last.0 == 0 && last.1 <= files && active == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (tasks, open, active) = last;
    assert!(
        settled.is_ok(),
        "after 30 s: {tasks} connection tasks, {open} open files (at most {files} expected), \
         {active} connections counted active"
    );
}

/// One request; `close` asks the proxy to close after answering (then the
/// client reads to the end), else the client closes after the answer.
async fn http_clean(addr: SocketAddr, close: bool) {
    let mut stream = connect(addr).await;
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!("GET /leak HTTP/1.1\r\nHost: web\r\nConnection: {connection}\r\n\r\n");
    within(STEP, stream.write_all(request.as_bytes()))
        .await
        .unwrap();
    let answer = if close {
        let mut all = Vec::new();
        within(STEP, stream.read_to_end(&mut all)).await.unwrap();
        String::from_utf8_lossy(&all).into_owned()
    } else {
        let (head, body) = read_response(&mut stream).await;
        head + &body
    };
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("web answered GET /leak\n"),
        "{answer}"
    );
}

/// A client that resets its connection: at once (`stage` 0), halfway
/// through the request head (1), or right after sending the request (2).
async fn http_abort(addr: SocketAddr, stage: usize) {
    let mut stream = connect(addr).await;
    let request = b"GET /leak HTTP/1.1\r\nHost: web\r\n\r\n";
    let sent = match stage {
        0 => &request[..0],
        1 => &request[..10],
        _ => &request[..],
    };
    within(STEP, stream.write_all(sent)).await.unwrap();
    reset(stream);
}

/// An echo round trip, then a half-close and the proxy's close.
async fn tcp_clean(addr: SocketAddr) {
    let mut stream = connect(addr).await;
    carry_echo(&mut stream, b"ping").await;
    within(STEP, stream.shutdown()).await.unwrap();
    let mut rest = Vec::new();
    within(STEP, stream.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
}

/// A client that resets its connection, before or after a round trip.
async fn tcp_abort(addr: SocketAddr, after_echo: bool) {
    let mut stream = connect(addr).await;
    if after_echo {
        carry_echo(&mut stream, b"ping").await;
    } else {
        within(STEP, stream.write_all(b"ping")).await.unwrap();
    }
    reset(stream);
}

/// Closes with RST (SO_LINGER 0) instead of FIN.
fn reset(stream: TcpStream) {
    stream.set_zero_linger().expect("SO_LINGER");
    drop(stream);
}

/// Blackholes the data center, opens [`BATCH`] http and tcp connections
/// into it, resets one in five while held, lifts the blackhole and waits
/// for the proxy to close the rest. Returns how many connections it opened.
async fn blackhole_round(
    running: &Running,
    blackout: &str,
    web: SocketAddr,
    cache: SocketAddr,
) -> usize {
    activate(running, blackout).await;
    let injected = "firedrill_faults_injected_total";
    let scenario = [("scenario", blackout)];
    let before = sample(&metrics(running).await, injected, &scenario);
    let mut held = Vec::new();
    for _ in 0..BATCH {
        let mut http = connect(web).await;
        within(
            STEP,
            http.write_all(b"GET /held HTTP/1.1\r\nHost: web\r\n\r\n"),
        )
        .await
        .unwrap();
        let mut tcp = connect(cache).await;
        within(STEP, tcp.write_all(b"ping")).await.unwrap();
        held.push(http);
        held.push(tcp);
    }
    // Every connection is held by its own task before anything is let go:
    // its task runs, and the blackhole has been counted on it (a task that
    // had not yet looked at the rules when the blackhole was lifted would
    // pass its bytes on).
    let all = held.len();
    let reached = poll_tasks(running, |tasks| tasks >= all).await;
    assert!(reached >= all, "only {reached} of {all} connections held");
    let counted = poll_sample(running, injected, &scenario, STEP, |n| {
        n - before >= all as f64
    })
    .await;
    assert!(
        counted - before >= all as f64,
        "the blackhole held only {} of {all} connections",
        counted - before
    );
    let mut aborted = JoinSet::new();
    let mut kept = Vec::new();
    for (i, stream) in held.into_iter().enumerate() {
        if i % 5 == 0 {
            aborted.spawn(async move { reset(stream) });
        } else {
            kept.push(stream);
        }
    }
    aborted.join_all().await;
    lift(running, blackout).await;
    let mut released = JoinSet::new();
    for mut stream in kept {
        released.spawn(async move {
            let mut rest = Vec::new();
            // Closed (FIN or RST) without a byte: the blackhole answered nothing.
            let read = within(STEP, stream.read_to_end(&mut rest)).await;
            assert!(read.is_err() || rest.is_empty(), "{rest:?}");
        });
    }
    within(STEP * 3, released.join_all()).await;
    all
}

/// Polls the connection task count until `done` says so (at most
/// [`STEP`]); returns the last count.
async fn poll_tasks(running: &Running, done: impl Fn(usize) -> bool) -> usize {
    let mut last = running.connection_tasks();
    let _ = tokio::time::timeout(STEP, async {
        while !done(last) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            last = running.connection_tasks();
        }
    })
    .await;
    last
}
