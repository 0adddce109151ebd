use std::time::Duration;

use super::*;

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_service_registered_again_counts_on_from_where_it_was() {
    let stats = Stats::default();
    let before = stats.register("talk", "pangyo");
    for _ in 0..3 {
        before.request(Outcome::Forwarded, 2, MS);
    }
    stats.sample();
    // A reload keeps the service: its new accept loop registers it again.
    let after = stats.register("talk", "pangyo");
    after.request(Outcome::Forwarded, 2, MS);
    after.request(Outcome::Forwarded, 5, MS);
    assert_eq!(after.counts().requests[Outcome::Forwarded as usize][2], 4);
    // The window since the sample sees only what came after it.
    let window = stats.window("talk", Duration::ZERO).unwrap();
    assert_eq!((window.requests(), window.failed()), (2, 1));
    assert_eq!(window.failed_ratio(), Some(0.5));
    assert_eq!(stats.services().len(), 1);
}

#[test]
fn a_service_is_found_by_name_where_it_was_registered_last() {
    let stats = Stats::default();
    let pangyo = stats.register("talk", "pangyo");
    let ansan = stats.register("talk", "ansan");
    assert!(Arc::ptr_eq(&stats.service("talk").unwrap(), &ansan));
    stats.register("talk", "pangyo");
    assert!(Arc::ptr_eq(&stats.service("talk").unwrap(), &pangyo));
    assert!(stats.service("maps").is_none());
    assert!(stats.window("maps", Duration::ZERO).is_none());
}

#[test]
fn a_service_without_requests_has_no_failed_ratio() {
    let stats = Stats::default();
    stats
        .register("talk", "pangyo")
        .connection(Outcome::Accepted);
    stats.sample();
    let quiet = stats.register("maps", "ansan");
    quiet.open(1);
    let window = stats.window("maps", Duration::from_secs(30)).unwrap();
    assert_eq!(window.requests(), 0);
    assert_eq!(window.failed_ratio(), None);
    assert_eq!(window.connections_open(), 1);
}

#[test]
fn a_window_sums_the_services_it_selects() {
    let stats = Stats::default();
    let talk = stats.register("talk", "pangyo");
    let pay = stats.register("pay", "pangyo");
    let maps = stats.register("maps", "ansan");
    talk.request(Outcome::Blackholed, 0, Duration::from_secs(9));
    pay.request(Outcome::Dropped, 0, MS);
    pay.request(Outcome::Delayed, 2, Duration::from_millis(300));
    maps.request(Outcome::Forwarded, 2, MS);
    talk.bytes_downstream(10);
    maps.bytes_downstream(5);
    let pangyo = stats.window_of(Duration::from_secs(30), |s| s.datacenter() == "pangyo");
    assert_eq!(pangyo.requests(), 3);
    // Dropped and blackholed fail; a delayed request that was answered
    // does not.
    assert_eq!(pangyo.failed(), 2);
    // Only answered requests have a latency: 300 ms, in (0.25, 0.3].
    assert_eq!(
        pangyo.p99(),
        Some(Duration::from_secs_f64(0.25 + 0.05 * 0.99))
    );
    let ansan = stats.window_of(Duration::from_secs(30), |s| s.datacenter() == "ansan");
    assert_eq!(ansan.failed_ratio(), Some(0.0));
    let all = stats.window_of(Duration::from_secs(30), |_| true);
    assert_eq!(all.requests(), 4);
    assert!(all.span() <= Duration::from_secs(30));
}

#[test]
fn latency_falls_in_the_first_bucket_it_does_not_exceed() {
    assert_eq!(bucket(Duration::ZERO), 0);
    assert_eq!(bucket(Duration::from_micros(500)), 0);
    assert_eq!(bucket(Duration::from_micros(501)), 1);
    assert_eq!(bucket(Duration::from_millis(750)), 13);
    assert_eq!(bucket(Duration::from_secs(1)), 14);
    assert_eq!(bucket(Duration::from_secs(30)), 19);
    assert_eq!(bucket(Duration::from_secs(31)), BUCKETS - 1);
}

#[test]
fn answered_5xx_fail_and_client_errors_do_not() {
    let stats = Stats::default();
    let talk = stats.register("talk", "pangyo");
    talk.request(Outcome::Forwarded, 5, MS);
    talk.request(Outcome::UpstreamError, 5, MS);
    talk.request(Outcome::Error, 2, MS);
    talk.request(Outcome::ClientError, 4, MS);
    talk.request(Outcome::Forwarded, 4, MS);
    assert_eq!(talk.counts().requests_and_failed(), (5, 3));
}
