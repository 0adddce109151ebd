//! Client connections on worker threads, as the binary runs them: each
//! accepted connection moves to one of a few threads with a runtime of its
//! own, in turn. Checked here: connections really are spread, faults reach
//! open connections and held requests on every worker, clients that
//! connect per request reuse upstream connections on their own worker, and
//! shutdown drains the workers and ends their threads. The tests count the
//! process's worker threads, so they run one at a time.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, MutexGuard};
use tokio::task::JoinSet;

use firedrill::{Running, Workers};
use support::*;

/// One test at a time: they count worker threads by name.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// This test's turn, once the last test's workers have ended (they do
/// once its connections have closed).
async fn serial() -> MutexGuard<'static, ()> {
    let turn = SERIAL.lock().await;
    wait_for_workers(0).await;
    turn
}

/// A firedrill on two workers with one tcp service in front of an echo;
/// returns it and the service's name.
async fn echo_on_two_workers() -> (Running, String) {
    let cache = unique("cache");
    let running = PlanText::new(&["pangyo"])
        .tcp(&cache, "pangyo", echo_upstream().await)
        .start_on(Workers::spawn(2).unwrap())
        .await;
    (running, cache)
}

/// How long a connection must stay silent to count as held by a blackhole.
const HOLD: Duration = Duration::from_millis(300);

/// The worker threads of this process, with how often each has gone to
/// sleep waiting for work (voluntary context switches): a worker with a
/// connection sleeps between that connection's round trips, an idle one
/// stays asleep.
fn worker_threads() -> Vec<(String, u64)> {
    let mut threads = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").expect("reading /proc/self/task") {
        let path = task.expect("a task entry").path();
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(path.join("comm")),
            std::fs::read_to_string(path.join("status")),
        ) else {
            continue; // the thread ended while we looked
        };
        let name = comm.trim().to_owned();
        if !name.starts_with("firedrill-w") {
            continue;
        }
        let switches = status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("voluntary_ctxt_switches in /proc/self/task/*/status");
        threads.push((name, switches));
    }
    threads.sort();
    threads
}

/// The worker threads once there are `n` (a new thread names itself as
/// it starts).
async fn wait_for_workers(n: usize) -> Vec<(String, u64)> {
    within(STEP, async {
        loop {
            let threads = worker_threads();
            if threads.len() == n {
                return threads;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Sends 8 MiB through an echo in 64 KiB pieces and checks every byte.
async fn pump(mut stream: TcpStream) {
    let piece: Vec<u8> = (0..65_536u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..128 {
        let back = within(STEP, echo_round_trip(&mut stream, &piece))
            .await
            .expect("echo round trip");
        assert!(back == piece, "the echo changed the bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_take_turns_on_the_worker_threads() {
    let _serial = serial().await;
    let (running, cache) = echo_on_two_workers().await;
    let before = wait_for_workers(2).await;
    assert_eq!(
        before
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>(),
        ["firedrill-w0", "firedrill-w1"]
    );

    // Two connections: the first goes to one worker, the second to the other.
    let mut pumps = JoinSet::new();
    for _ in 0..2 {
        pumps.spawn(pump(connect(addr(&running, &cache)).await));
    }
    within(STEP * 6, pumps.join_all()).await;

    // 128 round trips each: a worker woken for every one would count
    // about as many switches; one without a connection, next to none.
    let after = worker_threads();
    for ((name, was), (_, is)) in before.iter().zip(&after) {
        assert!(
            is - was >= 32,
            "{name} hardly woke while each of two connections made 128 round trips: \
             {before:?} -> {after:?}"
        );
    }
}

/// An HTTP/1.1 connection of its own to `addr`.
async fn http_connection(addr: std::net::SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = connect(addr).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection);
    sender
}

async fn get_status(sender: &mut SendRequest<Empty<Bytes>>) -> StatusCode {
    let request = Request::get("/status")
        .header("host", "web")
        .body(Empty::new())
        .unwrap();
    let response = within(STEP, sender.send_request(request))
        .await
        .expect("a response");
    let status = response.status();
    within(STEP, response.into_body().collect())
        .await
        .expect("the body");
    status
}

#[tokio::test]
async fn faults_reach_open_connections_on_every_worker() {
    let _serial = serial().await;
    let (cache, web) = (unique("cache"), unique("web"));
    let (blackout, outage, slow) = (unique("blackout"), unique("outage"), unique("slow"));
    let running = PlanText::new(&["pangyo"])
        .tcp(&cache, "pangyo", echo_upstream().await)
        .http(&web, "pangyo", http_upstream("web").await)
        .fault(&blackout, &cache, "action = 'blackhole'")
        .fault(&outage, &web, "action = 'error'; status = 503")
        .fault(&slow, &web, "action = 'delay'; latency = '60s'")
        .start_on(Workers::spawn(2).unwrap())
        .await;

    // Connections take turns on the workers whatever their service: four
    // tcp ones in a row land on both workers, then four http ones.
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(addr(&running, &cache)).await;
        carry_echo(&mut stream, b"before").await;
        streams.push(stream);
    }
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut sender = http_connection(addr(&running, &web)).await;
        assert_eq!(get_status(&mut sender).await, StatusCode::OK);
        senders.push(sender);
    }

    // Requests held by a long delay: lifting it must reach each one on its
    // worker, through that worker's copy of the rule changes.
    activate(&running, &slow).await;
    let mut held = JoinSet::new();
    for mut sender in senders.drain(..) {
        held.spawn(async move {
            let status = get_status(&mut sender).await;
            (sender, status)
        });
    }
    tokio::time::sleep(HOLD).await;
    assert_eq!(held.len(), 4, "a request got through a 60 s delay");
    lift(&running, &slow).await;
    // `get_status` allows STEP (10 s), far less than the delay.
    for (sender, status) in within(STEP, held.join_all()).await {
        assert_eq!(status, StatusCode::OK);
        senders.push(sender);
    }

    activate(&running, &blackout).await;
    activate(&running, &outage).await;
    for (i, stream) in streams.iter_mut().enumerate() {
        stream.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(HOLD, stream.read(&mut buf)).await;
        assert!(read.is_err(), "tcp connection {i} was not held: {read:?}");
    }
    for (i, sender) in senders.iter_mut().enumerate() {
        let status = get_status(sender).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "http connection {i}"
        );
    }

    // A lifted blackhole closes what it held, on every worker.
    lift(&running, &blackout).await;
    for (i, stream) in streams.iter_mut().enumerate() {
        assert_closed(stream, STEP, &format!("tcp connection {i}")).await;
    }
}

#[tokio::test]
async fn clients_that_connect_per_request_reuse_upstream_connections_on_their_worker() {
    let _serial = serial().await;
    let name = unique("percall");
    let (upstream, accepted, _closed) = counting_upstream().await;
    let running = PlanText::new(&["pangyo"])
        .http(&name, "pangyo", upstream)
        .start_on(Workers::spawn(2).unwrap())
        .await;
    clients_one_request_each(addr(&running, &name), 20).await;
    // Clients alternate between the two workers, and each worker keeps
    // its own spares: one upstream connection each, more if a client
    // arrives before the last one's connection is handed over (a busy
    // machine), but far from one per client.
    let opened = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (2..=10).contains(&opened),
        "20 clients needed {opened} upstream connections"
    );
}

#[tokio::test]
async fn shutdown_drains_the_workers_and_their_threads_end() {
    let _serial = serial().await;
    let (cache, web) = (unique("cache"), unique("web"));
    let running = PlanText::new(&["pangyo"])
        .tcp(&cache, "pangyo", echo_upstream().await)
        .http(&web, "pangyo", http_upstream("web").await)
        .start_on(Workers::spawn(2).unwrap())
        .await;
    wait_for_workers(2).await;
    let mut stream = connect(addr(&running, &cache)).await;
    carry_echo(&mut stream, b"open").await;
    let mut sender = http_connection(addr(&running, &web)).await;
    assert_eq!(get_status(&mut sender).await, StatusCode::OK);

    // The idle http connection closes when the drain starts; the tcp one
    // is still open at the deadline and is cut there.
    let cut = within(STEP, running.shutdown(Duration::from_millis(300))).await;
    assert_eq!(cut, 1, "the tcp connection was still open at the deadline");
    assert_closed(&mut stream, STEP, "the tcp connection").await;

    // Nothing holds the workers any more: their threads end.
    wait_for_workers(0).await;
}

#[tokio::test]
async fn dropping_the_running_proxy_cuts_its_connections_and_ends_the_threads() {
    let _serial = serial().await;
    let (running, cache) = echo_on_two_workers().await;
    wait_for_workers(2).await;
    let mut stream = connect(addr(&running, &cache)).await;
    carry_echo(&mut stream, b"open").await;

    // No shutdown: an embedder that just lets go.
    drop(running);
    assert_closed(
        &mut stream,
        STEP,
        "the tcp connection, outliving the proxy,",
    )
    .await;
    wait_for_workers(0).await;
}
