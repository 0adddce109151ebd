//! Rates and quantiles over a window, from two samples of the counters:
//! requests per second, the failed ratio, latency quantiles from histogram
//! bucket deltas (interpolated as Prometheus' `histogram_quantile` does),
//! open connections and bytes per second. Pure: no clock, no locks.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Counts, Outcome, BUCKETS, HISTORY, LATENCY_BUCKETS, SAMPLE_EVERY};

/// The numbers of one service a window needs, at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Sample {
    requests: u64,
    failed: u64,
    latency: [u64; BUCKETS],
    latency_nanos: u64,
    connections: u64,
    /// Tcp connections forwarded to the upstream (delayed or not).
    forwarded: u64,
    open: i64,
    bytes_upstream: u64,
    bytes_downstream: u64,
    faults: u64,
}

impl Sample {
    pub(super) fn of(counts: &Counts) -> Sample {
        let (requests, failed) = counts.requests_and_failed();
        Sample {
            requests,
            failed,
            latency: counts.latency,
            latency_nanos: counts.latency_nanos,
            connections: counts.connections.iter().sum(),
            forwarded: counts.connections[Outcome::Forwarded as usize]
                + counts.connections[Outcome::Delayed as usize],
            open: counts.open,
            bytes_upstream: counts.bytes_upstream,
            bytes_downstream: counts.bytes_downstream,
            faults: counts.faults.iter().map(|(_, _, n)| n).sum(),
        }
    }

    /// Requests counted that did not fail, and tcp connections forwarded.
    pub(super) fn succeeded(&self) -> u64 {
        self.requests.saturating_sub(self.failed) + self.forwarded
    }
}

/// Every service's samples, about once a second, as far back as
/// [`HISTORY`]. A tick's samples are indexed as the registry's services;
/// a service registered after a tick has none there, and counted 0 then.
#[derive(Debug)]
pub(super) struct Ticks(VecDeque<(Instant, Arc<[Sample]>)>);

impl Ticks {
    /// The history of a registry born at `at`, with nothing counted yet.
    pub(super) fn new(at: Instant) -> Ticks {
        Ticks(VecDeque::from([(at, Arc::from([]))]))
    }

    pub(super) fn push(&mut self, at: Instant, samples: Vec<Sample>) {
        let most = (HISTORY.as_secs() / SAMPLE_EVERY.as_secs().max(1)) as usize + 2;
        while self.0.len() >= most
            || self
                .0
                .front()
                .is_some_and(|(first, _)| at.saturating_duration_since(*first) > HISTORY)
        {
            self.0.pop_front();
        }
        self.0.push_back((at, samples.into()));
    }

    /// The last tick at or before `at`, or the first one there is when the
    /// history does not reach that far back (or `at` is `None`).
    pub(super) fn at_or_before(&self, at: Option<Instant>) -> (Instant, Arc<[Sample]>) {
        let found = at.and_then(|at| self.0.iter().rev().find(|(tick, _)| *tick <= at));
        let (tick, samples) = found
            .or(self.0.front())
            .expect("the history always keeps a tick");
        (*tick, Arc::clone(samples))
    }
}

/// What happened over a window of time, on one service or summed over
/// several: counts between its two ends, and rates over its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    span: Duration,
    /// What changed between the two ends; `open` is as at the end.
    counts: Sample,
}

impl Window {
    /// A window of `span` over no service.
    pub(super) fn empty(span: Duration) -> Window {
        Window::between(&Sample::default(), &Sample::default(), span)
    }

    /// What changed from `from` to `to`, `span` apart. Counters only grow;
    /// one that went back counts as unchanged.
    pub(super) fn between(from: &Sample, to: &Sample, span: Duration) -> Window {
        let mut latency = [0; BUCKETS];
        for (delta, (old, new)) in latency.iter_mut().zip(from.latency.iter().zip(&to.latency)) {
            *delta = new.saturating_sub(*old);
        }
        let counts = Sample {
            requests: to.requests.saturating_sub(from.requests),
            failed: to.failed.saturating_sub(from.failed),
            latency,
            latency_nanos: to.latency_nanos.saturating_sub(from.latency_nanos),
            connections: to.connections.saturating_sub(from.connections),
            forwarded: to.forwarded.saturating_sub(from.forwarded),
            open: to.open,
            bytes_upstream: to.bytes_upstream.saturating_sub(from.bytes_upstream),
            bytes_downstream: to.bytes_downstream.saturating_sub(from.bytes_downstream),
            faults: to.faults.saturating_sub(from.faults),
        };
        Window { span, counts }
    }

    /// Adds another service's window of the same span.
    pub(super) fn add(&mut self, other: &Window) {
        let (mine, theirs) = (&mut self.counts, &other.counts);
        for (mine, theirs) in mine.latency.iter_mut().zip(&theirs.latency) {
            *mine += theirs;
        }
        mine.requests += theirs.requests;
        mine.failed += theirs.failed;
        mine.latency_nanos += theirs.latency_nanos;
        mine.connections += theirs.connections;
        mine.forwarded += theirs.forwarded;
        mine.open += theirs.open;
        mine.bytes_upstream += theirs.bytes_upstream;
        mine.bytes_downstream += theirs.bytes_downstream;
        mine.faults += theirs.faults;
    }

    /// The time the window covers: the span asked for, give or take a
    /// sample, or less when the history does not reach that far back.
    pub fn span(&self) -> Duration {
        self.span
    }

    /// HTTP requests whose fate was decided in the window.
    pub fn requests(&self) -> u64 {
        self.counts.requests
    }

    /// Of those, the failed ones: dropped, blackholed, answered with an
    /// injected error or an upstream error, or with any 5xx (a delayed
    /// request that was answered did not fail).
    pub fn failed(&self) -> u64 {
        self.counts.failed
    }

    pub fn requests_per_second(&self) -> f64 {
        self.per_second(self.counts.requests)
    }

    /// Failed requests over all requests; `None` without requests.
    pub fn failed_ratio(&self) -> Option<f64> {
        (self.counts.requests > 0).then(|| self.counts.failed as f64 / self.counts.requests as f64)
    }

    /// The `q`-quantile (0 to 1) of answered requests' latency, from the
    /// histogram's buckets as `histogram_quantile` reads them; `None`
    /// without answered requests or for a `q` outside 0 to 1.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        quantile(q, &self.counts.latency).map(Duration::from_secs_f64)
    }

    pub fn p50(&self) -> Option<Duration> {
        self.latency_quantile(0.5)
    }

    pub fn p99(&self) -> Option<Duration> {
        self.latency_quantile(0.99)
    }

    /// The mean latency of answered requests; `None` without any.
    pub fn mean_latency(&self) -> Option<Duration> {
        let answered: u64 = self.counts.latency.iter().sum();
        (answered > 0).then(|| Duration::from_nanos(self.counts.latency_nanos / answered))
    }

    /// Client connections open at the window's end.
    pub fn connections_open(&self) -> i64 {
        self.counts.open
    }

    /// Client connections counted in the window, whatever their outcome.
    pub fn connections(&self) -> u64 {
        self.counts.connections
    }

    /// Client connections counted (whatever their outcome) per second.
    pub fn connections_per_second(&self) -> f64 {
        self.per_second(self.counts.connections)
    }

    /// Payload bytes per second from clients to the services.
    pub fn bytes_upstream_per_second(&self) -> f64 {
        self.per_second(self.counts.bytes_upstream)
    }

    /// Payload bytes per second from the services to clients.
    pub fn bytes_downstream_per_second(&self) -> f64 {
        self.per_second(self.counts.bytes_downstream)
    }

    /// Faults injected in the window.
    pub fn faults(&self) -> u64 {
        self.counts.faults
    }

    fn per_second(&self, n: u64) -> f64 {
        let seconds = self.span.as_secs_f64();
        if seconds > 0.0 {
            n as f64 / seconds
        } else {
            0.0
        }
    }
}

/// The `q`-quantile, in seconds, of observations counted per latency
/// bucket (not cumulative; the last is `+Inf`), as Prometheus'
/// `histogram_quantile` computes it: linear within the bucket the rank
/// falls in, from 0 for the first; the largest finite bound when it falls
/// in `+Inf`.
pub fn quantile(q: f64, counts: &[u64; BUCKETS]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0;
    for (i, (bound, count)) in LATENCY_BUCKETS.iter().zip(counts).enumerate() {
        let cumulative = below + count;
        // A rank of 0 (q = 0) lies at the start of the first bucket with
        // anything in it.
        if cumulative as f64 >= rank && *count > 0 {
            let start = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let into = (rank - below as f64) / *count as f64;
            return Some(start + (bound - start) * into);
        }
        below = cumulative;
    }
    LATENCY_BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(usize, u64)]) -> [u64; BUCKETS] {
        let mut counts = [0; BUCKETS];
        for (bucket, n) in pairs {
            counts[*bucket] = *n;
        }
        counts
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn a_quantile_interpolates_within_its_bucket() {
        // 100 requests between 0.1 s and 0.2 s (bucket 8): the median
        // sits halfway through it, p99 at 99 % of it.
        let c = counts(&[(8, 100)]);
        assert!(close(quantile(0.5, &c), 0.15));
        assert!(close(quantile(0.99, &c), 0.1 + 0.1 * 0.99));
        // The first bucket starts at 0.
        let c = counts(&[(0, 4)]);
        assert!(close(quantile(0.5, &c), 0.00025));
    }

    #[test]
    fn a_quantile_skips_to_the_bucket_its_rank_falls_in() {
        // 90 fast (≤ 1 ms), 10 slow (2.5 s to 5 s): the median is fast,
        // p99 is 9/10 into the slow bucket, p90 the top of the fast one.
        let c = counts(&[(1, 90), (17, 10)]);
        assert!(close(quantile(0.5, &c), 0.0005 + 0.0005 * (50.0 / 90.0)));
        assert!(close(quantile(0.99, &c), 2.5 + 2.5 * 0.9));
        assert!(close(quantile(0.9, &c), 0.001));
    }

    #[test]
    fn a_quantile_in_the_inf_bucket_is_the_largest_bound() {
        let c = counts(&[(BUCKETS - 1, 3)]);
        assert!(close(quantile(0.5, &c), 30.0));
        assert!(close(
            quantile(0.99, &counts(&[(0, 50), (BUCKETS - 1, 50)])),
            30.0
        ));
    }

    #[test]
    fn no_answered_request_has_no_quantile() {
        assert_eq!(quantile(0.5, &[0; BUCKETS]), None);
        assert_eq!(quantile(1.5, &counts(&[(3, 1)])), None);
    }

    fn sample(requests: u64, failed: u64) -> Sample {
        Sample {
            requests,
            failed,
            ..Sample::default()
        }
    }

    #[test]
    fn a_window_without_requests_has_no_failed_ratio() {
        let window = Window::between(&sample(7, 2), &sample(7, 2), Duration::from_secs(30));
        assert_eq!(window.requests_per_second(), 0.0);
        assert_eq!(window.failed_ratio(), None);
        assert_eq!(window.p99(), None);
        let window = Window::empty(Duration::ZERO);
        assert_eq!(window.failed_ratio(), None);
        assert_eq!(window.requests_per_second(), 0.0);
    }

    #[test]
    fn a_window_counts_what_changed_between_its_ends() {
        let window = Window::between(&sample(10, 1), &sample(40, 16), Duration::from_secs(10));
        assert_eq!(window.requests(), 30);
        assert_eq!(window.requests_per_second(), 3.0);
        assert_eq!(window.failed_ratio(), Some(0.5));
    }

    #[test]
    fn windows_of_several_services_add_up() {
        let span = Duration::from_secs(2);
        let mut all = Window::between(&sample(0, 0), &sample(10, 10), span);
        all.add(&Window::between(&sample(5, 0), &sample(35, 0), span));
        assert_eq!(all.requests_per_second(), 20.0);
        assert_eq!(all.failed_ratio(), Some(0.25));
    }

    #[test]
    fn the_history_answers_from_the_last_tick_before_the_window() {
        let born = Instant::now();
        let mut ticks = Ticks::new(born);
        for s in 1..=10 {
            let at = born + Duration::from_secs(s);
            ticks.push(at, vec![sample(s, 0)]);
        }
        let (at, samples) = ticks.at_or_before(Some(born + Duration::from_millis(4500)));
        assert_eq!(at, born + Duration::from_secs(4));
        assert_eq!(samples[0].requests, 4);
        // Further back than the history: its first tick.
        let (at, samples) = ticks.at_or_before(None);
        assert_eq!((at, samples.len()), (born, 0));
    }

    #[test]
    fn the_history_keeps_no_more_than_it_needs() {
        let born = Instant::now();
        let mut ticks = Ticks::new(born);
        for s in 1..=1000 {
            ticks.push(born + Duration::from_secs(s), vec![sample(s, 0)]);
        }
        let (at, _) = ticks.at_or_before(None);
        assert_eq!(at, born + Duration::from_secs(1000) - HISTORY);
        assert!(ticks.0.len() <= HISTORY.as_secs() as usize + 2);
    }
}
