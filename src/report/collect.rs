//! The collector: one task subscribed to the engine's events. At an
//! activation's start it captures every service's numbers, and those of
//! `[reports] before` earlier from the stats history; each second while it
//! runs, each data center's totals for the chart; at its end, the numbers
//! again, and a first report (incomplete); then it looks every
//! [`RECOVERY_POLL`] for each service's first successful request, and
//! after `[reports] after` completes the report. Files are written at the
//! end (incomplete) and again when complete.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::build::{self, Ended, Ending, Started};
use super::{markdown, Report, Reports};
use crate::engine::{Engine, Event, Happened, Subject};
use crate::stats::{Capture, Stats, SAMPLE_EVERY};

/// How often an ended activation's services are looked at for their first
/// successful request: the precision of a recovery time.
pub const RECOVERY_POLL: Duration = Duration::from_millis(100);

/// Starts collecting reports of every activation from now on into
/// `reports`, until `stop`. Subscribes before it returns, so no activation
/// made after it is missed.
pub fn spawn(reports: &Reports, engine: &Engine, stats: &Stats, stop: CancellationToken) {
    let collector = Collector {
        reports: reports.clone(),
        engine: engine.clone(),
        stats: stats.clone(),
        running: BTreeMap::new(),
        ended: Vec::new(),
        next_tick: Instant::now(),
        next_poll: Instant::now(),
        unwritten: Vec::new(),
    };
    tokio::spawn(collector.run(engine.subscribe(), stop));
}

struct Collector {
    reports: Reports,
    engine: Engine,
    stats: Stats,
    /// Active activations by id.
    running: BTreeMap<u64, Started>,
    /// Ended ones still measured, with when their `after` runs out.
    ended: Vec<(Ended, Instant)>,
    /// When the running ones' next chart totals are due.
    next_tick: Instant,
    /// When the ended ones are next looked at for recovery.
    next_poll: Instant,
    /// Reports of activations just ended, to write to `[reports] dir`.
    unwritten: Vec<(Report, SystemTime)>,
}

impl Collector {
    async fn run(mut self, mut events: Receiver<Event>, stop: CancellationToken) {
        loop {
            let wake = self.next_wake();
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = stop.cancelled() => return,
                event = events.recv() => match event {
                    Ok(event) => self.apply(event),
                    Err(RecvError::Lagged(lost)) => self.catch_up(lost),
                    Err(RecvError::Closed) => return,
                },
                () = sleep => self.tick().await,
            }
            // Written as soon as it ends, incomplete, so a firedrill
            // stopped within `after` still leaves it; completed later.
            for (report, started_at) in std::mem::take(&mut self.unwritten) {
                if let Some(dir) = &self.engine.plan().reports.dir {
                    write(dir, &report, started_at).await;
                }
            }
        }
    }

    /// The next time there is something to measure, if any.
    fn next_wake(&self) -> Option<Instant> {
        let chart = (!self.running.is_empty()).then_some(self.next_tick);
        // Recovery is looked for only while some service has yet to
        // recover; the rest waits for `after` to run out.
        let waiting = (self.ended.iter()).any(|(e, _)| e.recovered.iter().any(Option::is_none));
        let poll = waiting.then_some(self.next_poll);
        let due = self.ended.iter().map(|(_, due)| *due).min();
        [chart, poll, due].into_iter().flatten().min()
    }

    fn apply(&mut self, event: Event) {
        let at = event.at;
        let end = |how, by: Option<&String>, stop| Ending {
            at,
            how,
            by: by.cloned(),
            stop,
        };
        match event.what {
            Happened::Activated {
                subject,
                by,
                origin,
                started_at,
                ..
            } => self.start(subject, by, origin, started_at),
            Happened::Lifted { subject, by } => self.end(&subject, end("lifted", Some(&by), None)),
            Happened::Expired { subject } => self.end(&subject, end("expired", None, None)),
            Happened::Completed { subject } => self.end(&subject, end("completed", None, None)),
            Happened::Stopped { subject, stop } => {
                let by = format!("guard {}", stop.guard);
                self.end(&subject, end("stopped", Some(&by), Some(stop)));
            }
            Happened::Halted { by, lifted } => {
                for subject in &lifted {
                    self.end(subject, end("halted", Some(&by), None));
                }
            }
            Happened::Reloaded { by, lifted } => {
                for subject in &lifted {
                    self.end(subject, end("lifted", Some(&by), None));
                }
            }
            Happened::Rescheduled { .. }
            | Happened::StageStarted { .. }
            | Happened::StageEnded { .. } => {}
        }
    }

    fn start(
        &mut self,
        subject: Subject,
        by: String,
        origin: crate::engine::Origin,
        started_at: SystemTime,
    ) {
        let plan = self.engine.plan();
        let before_asked = plan.reports.before;
        let before = self.stats.captured(before_asked);
        let start = self.stats.capture();
        let totals = vec![build::totals(&plan, &start)];
        if self.running.is_empty() {
            self.next_tick = Instant::now() + SAMPLE_EVERY;
        }
        let started = Started {
            id: subject.id,
            scenario: subject.scenario,
            by,
            origin,
            started_at,
            plan,
            before,
            before_asked,
            start,
            totals,
        };
        self.running.insert(started.id, started);
    }

    fn end(&mut self, subject: &Subject, ending: Ending) {
        let Some(mut started) = self.running.remove(&subject.id) else {
            return;
        };
        let end = self.stats.capture();
        started.totals.push(build::totals(&started.plan, &end));
        let plan = Arc::clone(&started.plan);
        let baseline = (0..plan.topology.services.len())
            .map(|index| end.succeeded(build::is_service(&plan, index)))
            .collect();
        let after_asked = self.engine.plan().reports.after;
        let ended = Ended {
            recovered: vec![None; plan.topology.services.len()],
            started,
            ending,
            end,
            after_asked,
            baseline,
        };
        let report = build::report(&ended, None, RECOVERY_POLL);
        self.reports.keep(report.clone());
        self.unwritten.push((report, ended.started.started_at));
        if self.ended.is_empty() {
            self.next_poll = Instant::now() + RECOVERY_POLL;
        }
        self.ended.push((ended, Instant::now() + after_asked));
    }

    /// Events were lost: ends, as the engine's history records them, the
    /// running activations that are no longer active.
    fn catch_up(&mut self, lost: u64) {
        tracing::warn!(lost, "impact reports fell behind the engine's events");
        let active: Vec<u64> = self.engine.active().iter().map(|a| a.id).collect();
        let history = self.engine.history();
        let gone: Vec<u64> = (self.running.keys())
            .filter(|id| !active.contains(id))
            .copied()
            .collect();
        for id in gone {
            let record = history.iter().find(|r| r.id == id);
            let ended = record.and_then(|r| r.ended.clone());
            let subject = Subject {
                id,
                scenario: Arc::clone(&self.running[&id].scenario),
            };
            let (at, how, by) = match ended {
                Some((at, how, by)) => (at, how.name(), by),
                None => (SystemTime::now(), "lifted", None),
            };
            let stop = record.and_then(|r| r.stopped_by.clone());
            self.end(&subject, Ending { at, how, by, stop });
        }
    }

    /// Takes chart totals when due, looks for recoveries, and completes
    /// the reports whose `after` has run out.
    async fn tick(&mut self) {
        let now = Instant::now();
        let capture = self.stats.capture();
        if !self.running.is_empty() && now >= self.next_tick {
            for started in self.running.values_mut() {
                started.totals.push(build::totals(&started.plan, &capture));
            }
            self.next_tick += SAMPLE_EVERY;
            // Late (a busy machine): the next one a full second on.
            if self.next_tick <= now {
                self.next_tick = now + SAMPLE_EVERY;
            }
        }
        if now >= self.next_poll {
            self.next_poll = now + RECOVERY_POLL;
        }
        let wall = SystemTime::now();
        for (ended, _) in &mut self.ended {
            recover(ended, &capture, wall);
        }
        let (done, measuring) = std::mem::take(&mut self.ended)
            .into_iter()
            .partition(|(_, due)| *due <= now);
        self.ended = measuring;
        for (ended, _) in done {
            let report = build::report(&ended, Some(&capture), RECOVERY_POLL);
            // Files first: once the API says complete, so do they.
            if let Some(dir) = &self.engine.plan().reports.dir {
                write(dir, &report, ended.started.started_at).await;
            }
            self.reports.keep(report);
        }
    }
}

/// Notes, for each service not yet recovered, whether it has had a
/// successful request since the end.
fn recover(ended: &mut Ended, capture: &Capture, now: SystemTime) {
    let plan = Arc::clone(&ended.started.plan);
    let since = now.duration_since(ended.ending.at).unwrap_or_default();
    for (index, recovered) in ended.recovered.iter_mut().enumerate() {
        if recovered.is_none()
            && capture.succeeded(build::is_service(&plan, index)) > ended.baseline[index]
        {
            *recovered = Some(since);
        }
    }
}

/// Writes `report` as JSON and Markdown into `dir`, named by its start,
/// scenario and id; a failure is logged, and the report stays in memory.
async fn write(dir: &Path, report: &Report, started_at: SystemTime) {
    let stamp = humantime::format_rfc3339_seconds(started_at)
        .to_string()
        .replace(':', "");
    let name = format!("{stamp}-{}-{}", report.scenario, report.id);
    let json = match serde_json::to_string_pretty(report) {
        Ok(json) => json + "\n",
        Err(e) => {
            tracing::warn!("cannot write the report of {}: {e}", report.scenario);
            return;
        }
    };
    let files = [
        (dir.join(format!("{name}.json")), json),
        (dir.join(format!("{name}.md")), markdown(report)),
    ];
    if let Err(e) = tokio::fs::create_dir_all(dir).await {
        tracing::warn!(dir = %dir.display(), "cannot create the reports directory: {e}");
        return;
    }
    for (path, text) in files {
        // Through a temporary file renamed over it, so a reader never
        // sees half a report.
        let partial = path.with_extension("partial");
        let written = match tokio::fs::write(&partial, text).await {
            Ok(()) => tokio::fs::rename(&partial, &path).await,
            Err(e) => Err(e),
        };
        match written {
            Ok(()) => tracing::info!(file = %path.display(), "impact report written"),
            Err(e) => tracing::warn!(file = %path.display(), "cannot write the impact report: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{Live, Rules};

    const PLAN: &str = r#"
[datacenters.pangyo]
[services.talk]
datacenter = "pangyo"
protocol = "http"
listen = "127.0.0.1:0"
upstream = "127.0.0.1:9001"
[scenarios.fire]
[[scenarios.fire.faults]]
datacenter = "pangyo"
action = "drop"
"#;

    fn collector() -> Collector {
        let plan = Arc::new(crate::config::parse(PLAN, "plan.toml").unwrap());
        let live = Arc::new(Live::new(Rules::empty(plan.topology.services.len())));
        let stats = Stats::default();
        stats.register("talk", "pangyo");
        Collector {
            reports: Reports::default(),
            engine: Engine::new(plan, live),
            stats,
            running: BTreeMap::new(),
            ended: Vec::new(),
            next_tick: Instant::now(),
            next_poll: Instant::now(),
            unwritten: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_collector_that_lost_events_ends_reports_as_the_history_recorded() {
        let mut collector = collector();
        let mut events = collector.engine.subscribe();
        collector.engine.activate("fire", None, "lead").unwrap();
        collector.apply(events.recv().await.unwrap());
        assert_eq!(collector.running.len(), 1);
        collector.engine.lift("fire", "lead (127.0.0.1:1)").unwrap();
        // The lift's event is lost: the history says what happened.
        collector.catch_up(1);
        assert!(collector.running.is_empty());
        let kept =
            (collector.reports).newest_first(|r| (r.ended.clone(), r.ended_by.clone(), r.complete));
        let by = Some("lead (127.0.0.1:1)".to_owned());
        assert_eq!(kept, [("lifted".to_owned(), by, false)]);
        assert_eq!(collector.unwritten.len(), 1);
    }

    #[tokio::test]
    async fn an_end_without_its_start_is_ignored() {
        let mut collector = collector();
        let mut events = collector.engine.subscribe();
        collector.engine.activate("fire", None, "lead").unwrap();
        collector.engine.lift("fire", "lead").unwrap();
        // Started before the collector listened: nothing to report on.
        while let Ok(event) = events.try_recv() {
            if !matches!(event.what, Happened::Activated { .. }) {
                collector.apply(event);
            }
        }
        assert!(collector.reports.newest_first(|r| r.id.clone()).is_empty());
    }
}
