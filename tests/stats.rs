//! The numbers firedrill keeps, read inside the process through
//! `Running::stats()` while real traffic flows through the real proxy: the
//! error ratio of a blackholed data center against a healthy one, the
//! latency quantiles of a delayed service, and counts that a reload keeps.

mod support;

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use firedrill::stats::Window;
use firedrill::Running;
use support::*;

/// How far back each read looks.
const OVER: Duration = Duration::from_secs(30);

/// Fails the test, with the last reading, once [`STEP`] has passed.
struct Deadline(Instant);

impl Deadline {
    fn start() -> Deadline {
        Deadline(Instant::now() + STEP)
    }

    async fn check(&self, last: &Window) {
        assert!(Instant::now() < self.0, "never came true: {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends one GET to `service` without waiting for an answer, and keeps its
/// connection open in `held` (a blackhole never answers).
async fn send_and_hold(running: &Running, service: &str, held: &mut Vec<TcpStream>) {
    let mut stream = connect(addr(running, service)).await;
    within(STEP, stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
        .await
        .expect("the request is sent");
    held.push(stream);
}

#[tokio::test]
async fn a_blackholed_data_center_reads_all_failed_and_the_other_none() {
    let (talk, maps, fire) = (unique("talk"), unique("maps"), unique("fire"));
    let running = PlanText::new(&["pangyo", "ansan"])
        .http(&talk, "pangyo", http_upstream("talk").await)
        .http(&maps, "ansan", http_upstream("maps").await)
        .scenario(&fire, &["datacenter = 'pangyo'; action = 'blackhole'"])
        .start()
        .await;
    let stats = running.stats();
    let in_datacenter =
        |name: &'static str| move || stats.window_of(OVER, |s| s.datacenter() == name);
    // No request yet: no ratio, which is not a ratio of 0.
    assert_eq!(in_datacenter("pangyo")().failed_ratio(), None);
    assert_eq!(stats.window(&talk, OVER).unwrap().failed_ratio(), None);

    activate(&running, &fire).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        send_and_hold(&running, &talk, &mut held).await;
    }
    let deadline = Deadline::start();
    let pangyo = loop {
        let read = in_datacenter("pangyo")();
        // Each is counted when it is held, not when its client gives up.
        if read.requests() == 3 {
            break read;
        }
        deadline.check(&read).await;
    };
    assert_eq!(pangyo.failed_ratio(), Some(1.0), "{pangyo:?}");
    assert!(pangyo.requests_per_second() > 0.0);
    assert_eq!(pangyo.connections_open(), 3, "{pangyo:?}");

    let deadline = Deadline::start();
    let ansan = loop {
        let (status, _) = get(addr(&running, &maps), "/").await;
        assert!(status.is_success());
        let read = in_datacenter("ansan")();
        if read.requests() >= 3 {
            break read;
        }
        deadline.check(&read).await;
    };
    assert_eq!(ansan.failed_ratio(), Some(0.0), "{ansan:?}");
    assert!(ansan.bytes_downstream_per_second() > 0.0);
    assert!(ansan.p99().is_some());
    // Summed over both: the failed are pangyo's, one fault each.
    let all = stats.window_of(OVER, |_| true);
    assert_eq!(all.requests(), pangyo.requests() + ansan.requests());
    assert_eq!(all.failed(), held.len() as u64);
    assert_eq!(all.faults(), held.len() as u64);
}

#[tokio::test]
async fn the_latency_quantiles_of_a_delayed_service_are_at_least_its_delay() {
    // 250 ms is a bucket bound: every delayed answer lands above it.
    const DELAY: Duration = Duration::from_millis(250);
    let (search, slow) = (unique("search"), unique("slow"));
    let running = PlanText::new(&["pangyo"])
        .http(&search, "pangyo", http_upstream("search").await)
        .fault(&slow, &search, "action = 'delay'; latency = '250ms'")
        .start()
        .await;
    activate(&running, &slow).await;
    let deadline = Deadline::start();
    let window = loop {
        let (status, _) = get(addr(&running, &search), "/").await;
        assert!(status.is_success());
        let read = running.stats().window(&search, OVER).unwrap();
        if read.requests() >= 3 {
            break read;
        }
        deadline.check(&read).await;
    };
    for quantile in [window.p50(), window.p99()] {
        let quantile = quantile.expect("answered requests have a latency");
        assert!(quantile >= DELAY, "{quantile:?} in {window:?}");
    }
    // A delayed request that was answered has not failed.
    assert_eq!(window.failed_ratio(), Some(0.0));
}

#[tokio::test]
async fn a_service_a_reload_keeps_counts_on_in_the_stats_and_in_metrics() {
    let (talk, maps) = (unique("talk"), unique("maps"));
    let upstream = http_upstream("talk").await;
    let plan = PlanText::new(&["pangyo"]).http(&talk, "pangyo", upstream);
    let running = plan.start().await;
    for _ in 0..3 {
        get(addr(&running, &talk), "/").await;
    }
    let labels = [("service", talk.as_str()), ("code", "2xx")];
    let before = sample(
        &metrics(&running).await,
        "firedrill_requests_total",
        &labels,
    );
    assert_eq!(before, 3.0);

    let more = plan.http(&maps, "pangyo", http_upstream("maps").await);
    let more = firedrill::config::parse(more.toml(), "test.toml").unwrap();
    let reloaded = running.control().reload_plan(more, "test").await.unwrap();
    assert_eq!(reloaded.kept, std::slice::from_ref(&talk));
    get(addr(&running, &talk), "/").await;

    let after = sample(
        &metrics(&running).await,
        "firedrill_requests_total",
        &labels,
    );
    assert_eq!(after, 4.0);
    let window = running.stats().window(&talk, OVER).unwrap();
    assert_eq!(window.requests(), 4);
    let fresh = running.stats().window(&maps, OVER).unwrap();
    assert_eq!(fresh.requests(), 0);
}
