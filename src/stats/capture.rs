//! Every service's numbers at one moment ([`Capture`]), read now or from
//! the second-by-second history, and what happened between two of them:
//! a [`Window`] over the services a caller picks, and the faults of one
//! scenario by action. Reads only: a capture costs what a sampler tick
//! costs, and the data plane never sees it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::window::Sample;
use super::{ServiceStats, Stats, Window};

/// Every service's numbers at one moment. A capture from the history
/// ([`Stats::captured`]) has no fault numbers: the sampler keeps only
/// totals.
#[derive(Debug, Clone)]
pub struct Capture {
    at: Instant,
    services: Vec<Captured>,
}

/// One service in a capture.
#[derive(Debug, Clone)]
struct Captured {
    service: Arc<ServiceStats>,
    sample: Sample,
    /// By action and scenario.
    faults: Vec<(&'static str, Arc<str>, u64)>,
}

/// Faults of one scenario injected between two captures, by action.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultTally(Vec<(&'static str, u64)>);

impl FaultTally {
    /// Each action with a count above 0, in the order first counted.
    pub fn by_action(&self) -> &[(&'static str, u64)] {
        &self.0
    }

    /// Connections and requests a fault cut or froze: every `drop` and
    /// `blackhole` applied (each counted once per connection or request,
    /// where it was decided).
    pub fn cut(&self) -> u64 {
        (self.0.iter())
            .filter(|(action, _)| matches!(*action, "drop" | "blackhole"))
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, action: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        match self.0.iter_mut().find(|(a, _)| *a == action) {
            Some((_, count)) => *count += n,
            None => self.0.push((action, n)),
        }
    }

    /// Adds another tally, action by action.
    pub fn merge(&mut self, other: &FaultTally) {
        for (action, n) in &other.0 {
            self.add(action, *n);
        }
    }
}

impl Capture {
    /// A capture at `at` of no service: windows from it count everything.
    pub fn empty(at: Instant) -> Capture {
        Capture {
            at,
            services: Vec::new(),
        }
    }

    /// When it was taken (for one from the history, the sampler's tick).
    pub fn at(&self) -> Instant {
        self.at
    }

    /// What changed from this capture to `later` on the services `select`
    /// picks, summed; a service registered in between counts from 0.
    pub fn window(&self, later: &Capture, select: impl Fn(&ServiceStats) -> bool) -> Window {
        let span = later.at.saturating_duration_since(self.at);
        let mut window = Window::empty(span);
        for to in later.services.iter().filter(|c| select(&c.service)) {
            let from = self.find(&to.service).map(|c| &c.sample);
            let from = from.cloned().unwrap_or_default();
            window.add(&Window::between(&from, &to.sample, span));
        }
        window
    }

    /// The faults of `scenario` injected from this capture to `later` on
    /// the services `select` picks, by action.
    pub fn faults(
        &self,
        later: &Capture,
        scenario: &str,
        select: impl Fn(&ServiceStats) -> bool,
    ) -> FaultTally {
        let mut tally = FaultTally::default();
        for to in later.services.iter().filter(|c| select(&c.service)) {
            let before = self.find(&to.service);
            for (action, of, n) in to.faults.iter().filter(|f| &*f.1 == scenario) {
                let from = before
                    .and_then(|c| c.faults.iter().find(|f| f.0 == *action && f.1 == *of))
                    .map_or(0, |f| f.2);
                tally.add(action, n.saturating_sub(from));
            }
        }
        tally
    }

    /// Requests that did not fail so far, and tcp connections forwarded,
    /// summed over the services `select` picks.
    pub fn succeeded(&self, select: impl Fn(&ServiceStats) -> bool) -> u64 {
        (self.services.iter())
            .filter(|c| select(&c.service))
            .map(|c| c.sample.succeeded())
            .sum()
    }

    fn find(&self, service: &Arc<ServiceStats>) -> Option<&Captured> {
        (self.services.iter()).find(|c| Arc::ptr_eq(&c.service, service))
    }
}

impl Stats {
    /// Every service's numbers now, faults by action included.
    pub fn capture(&self) -> Capture {
        let services = self.services().into_iter().map(|service| {
            let counts = service.counts();
            Captured {
                sample: Sample::of(&counts),
                faults: counts.faults,
                service,
            }
        });
        Capture {
            at: Instant::now(),
            services: services.collect(),
        }
    }

    /// Every service's numbers as the sampler recorded them at its last
    /// tick at or before `ago` before now (the furthest back the history
    /// reaches when it does not reach that far), without fault numbers.
    pub fn captured(&self, ago: Duration) -> Capture {
        let now = Instant::now();
        let services = self.services();
        let (at, samples) = self
            .0
            .ticks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .at_or_before(now.into_std().checked_sub(ago));
        let services = services
            .into_iter()
            .zip(samples.iter())
            .map(|(s, sample)| Captured {
                service: s,
                sample: sample.clone(),
                faults: Vec::new(),
            });
        Capture {
            at: Instant::from_std(at),
            services: services.collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_furthest_a_report_looks_back_is_the_history() {
        assert_eq!(crate::config::Reports::MOST_BEFORE, super::super::HISTORY);
    }

    #[test]
    fn a_window_between_captures_sees_only_what_came_between() {
        let stats = Stats::default();
        let talk = stats.register("talk", "pangyo");
        talk.request(Outcome::Forwarded, 2, MS);
        let start = stats.capture();
        talk.request(Outcome::Dropped, 0, MS);
        talk.request(Outcome::Forwarded, 5, MS);
        talk.request(Outcome::Forwarded, 2, MS);
        // Registered in between: counted from 0.
        let maps = stats.register("maps", "ansan");
        maps.request(Outcome::Forwarded, 2, MS);
        let end = stats.capture();
        let pangyo = start.window(&end, |s| s.datacenter() == "pangyo");
        assert_eq!((pangyo.requests(), pangyo.failed()), (3, 2));
        let all = start.window(&end, |_| true);
        assert_eq!((all.requests(), all.failed()), (4, 2));
        assert_eq!(end.succeeded(|s| s.name() == "talk"), 2);
        // A tcp connection succeeds when it is forwarded.
        let cache = stats.register("cache", "pangyo");
        cache.connection(Outcome::Dropped);
        cache.connection(Outcome::Delayed);
        cache.connection(Outcome::Forwarded);
        assert_eq!(stats.capture().succeeded(|s| s.name() == "cache"), 2);
    }

    #[test]
    fn faults_between_captures_are_those_of_the_scenario_by_action() {
        let stats = Stats::default();
        let talk = stats.register("talk", "pangyo");
        let fire: Arc<str> = Arc::from("fire");
        let drops = talk.fault("drop", &fire);
        let delays = talk.fault("delay", &fire);
        let other = talk.fault("drop", &Arc::from("flood"));
        drops.fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        let start = stats.capture();
        drops.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        delays.fetch_add(2, std::sync::atomic::Ordering::Relaxed);
        other.fetch_add(7, std::sync::atomic::Ordering::Relaxed);
        let blackholes = talk.fault("blackhole", &fire);
        blackholes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let end = stats.capture();
        let tally = start.faults(&end, "fire", |_| true);
        assert_eq!(
            tally.by_action(),
            [("drop", 3), ("delay", 2), ("blackhole", 1)]
        );
        assert_eq!(tally.cut(), 4);
        assert_eq!(
            start.faults(&end, "fire", |s| s.name() == "maps"),
            FaultTally::default()
        );
    }

    #[test]
    fn a_capture_from_the_history_is_the_last_tick_before() {
        let stats = Stats::default();
        let talk = stats.register("talk", "pangyo");
        talk.request(Outcome::Forwarded, 2, MS);
        stats.sample();
        talk.request(Outcome::Error, 5, MS);
        let before = stats.captured(Duration::ZERO);
        let now = stats.capture();
        let window = before.window(&now, |_| true);
        assert_eq!((window.requests(), window.failed()), (1, 1));
        // Further back than the history: its first tick, before anything.
        let all = stats
            .captured(Duration::from_secs(3600))
            .window(&now, |_| true);
        assert_eq!(all.requests(), 2);
    }
}
