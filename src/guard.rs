//! Stop conditions: while a scenario is active, each of its `stop_when`
//! guards is evaluated about once a second, in a task of its own, from
//! the numbers the proxy already keeps ([`Stats::window_of`]) or a
//! Prometheus query; one whose condition holds for its `for` lifts the
//! scenario through [`Engine::stop`]. [`Guards`] is what the admin API
//! reads to show each guard's last reading. Nothing here runs on the data
//! plane.

mod prometheus;
mod verdict;

pub use verdict::{Reading, State};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{Guard, Measure, Scope};
use crate::engine::{Activation, Engine, Stop};
use crate::fault::Scenario;
use crate::log_limit::LogLimit;
use crate::stats::{ServiceStats, Stats, Window};
use verdict::{judge, Read};

/// How often a guard is evaluated.
pub const EVERY: Duration = Duration::from_secs(1);

/// How long a guard waits for its Prometheus before it counts as an
/// error: short, so an unreachable one is known within a few evaluations.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(2);

/// A guard that cannot read its Prometheus logs it at most this often.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// The last reading of every guard of every active scenario, by
/// activation id. Cheap to clone; clones share the readings.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    // A std mutex: held only to copy a reading in or out, never across an
    // await, and never by the data plane.
    readings: Arc<Mutex<HashMap<u64, Vec<Reading>>>>,
}

impl Guards {
    /// The guards of `activation` as last evaluated, in plan order; ones
    /// not evaluated yet read as `ok` without a value.
    pub fn readings(&self, activation: &Activation) -> Vec<Reading> {
        let guards = &activation.scenario.stop_when;
        let readings = self.lock();
        match readings.get(&activation.id) {
            Some(found) if found.len() == guards.len() => found.clone(),
            _ => guards.iter().map(Reading::first).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Reading>>> {
        self.readings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, id: u64, index: usize, reading: Reading) {
        if let Some(slot) = self.lock().get_mut(&id).and_then(|r| r.get_mut(index)) {
            *slot = reading;
        }
    }

    /// Watches the guards of every activation until `shutdown`: starts a
    /// task per guard when an activation begins (or a reload gives its
    /// scenario new guards) and ends them when it ends.
    pub async fn run(self, engine: Engine, stats: Stats, shutdown: CancellationToken) {
        let mut events = engine.subscribe();
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watching: HashMap<u64, (Arc<Scenario>, CancellationToken)> = HashMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = every.tick() => {}
                // Any event (or lagging behind) may start or end one.
                received = events.recv() => {
                    if let Err(tokio::sync::broadcast::error::RecvError::Closed) = received {
                        break;
                    }
                }
            }
            let active = engine.active();
            watching.retain(|id, (scenario, token)| {
                let current = active.iter().find(|a| a.id == *id);
                let kept = current.is_some_and(|a| Arc::ptr_eq(&a.scenario, scenario));
                if !kept {
                    token.cancel();
                    self.lock().remove(id);
                }
                kept
            });
            for activation in &active {
                let guards = &activation.scenario.stop_when;
                if guards.is_empty() || watching.contains_key(&activation.id) {
                    continue;
                }
                let token = shutdown.child_token();
                let first = guards.iter().map(Reading::first).collect();
                self.lock().insert(activation.id, first);
                for index in 0..guards.len() {
                    let watch = Watch {
                        guards: self.clone(),
                        engine: engine.clone(),
                        stats: stats.clone(),
                        activation: activation.clone(),
                        index,
                        failures: LogLimit::new(WARN_EVERY),
                    };
                    tokio::spawn(watch.run(token.clone()));
                }
                let scenario = Arc::clone(&activation.scenario);
                watching.insert(activation.id, (scenario, token));
            }
        }
        for (_, (_, token)) in watching {
            token.cancel();
        }
    }
}

/// One guard of one activation, evaluated every [`EVERY`] until it trips
/// or is cancelled.
struct Watch {
    guards: Guards,
    engine: Engine,
    stats: Stats,
    activation: Activation,
    index: usize,
    failures: LogLimit,
}

impl Watch {
    async fn run(self, cancel: CancellationToken) {
        let guard = &self.activation.scenario.stop_when[self.index];
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut since = None;
        loop {
            let read = tokio::select! {
                () = cancel.cancelled() => return,
                read = async {
                    every.tick().await;
                    self.read(guard).await
                } => read,
            };
            let reading = judge(guard, read, &mut since, Instant::now());
            let tripped = reading.state == State::Tripped;
            if tripped {
                let stop = Stop {
                    guard: guard.name.to_string(),
                    value: reading.value,
                    above: guard.above,
                    detail: reading.detail.clone(),
                };
                self.guards.record(self.activation.id, self.index, reading);
                // `None`: it ended meanwhile; nothing is left to stop.
                self.engine.stop(self.activation.id, stop);
                return;
            }
            self.guards.record(self.activation.id, self.index, reading);
        }
    }

    async fn read(&self, guard: &Guard) -> Read {
        let human = humantime::format_duration;
        match &guard.measure {
            Measure::ErrorRatio { scope, window } => {
                let (numbers, what) = self.window(scope, *window);
                let over = human(*window);
                match numbers.failed_ratio() {
                    Some(ratio) => Read::Value(
                        Some(ratio),
                        format!(
                            "error ratio {ratio:.3} of {what} over {over} ({} of {} requests failed)",
                            numbers.failed(),
                            numbers.requests()
                        ),
                    ),
                    None => Read::Value(None, format!("no requests to {what} over {over}")),
                }
            }
            Measure::P99Latency { scope, window } => {
                let (numbers, what) = self.window(scope, *window);
                let over = human(*window);
                match numbers.p99() {
                    Some(p99) => Read::Value(
                        Some(p99.as_secs_f64()),
                        format!(
                            "p99 latency {:.3}s of {what} over {over}",
                            p99.as_secs_f64()
                        ),
                    ),
                    None => {
                        Read::Value(None, format!("no answered requests to {what} over {over}"))
                    }
                }
            }
            Measure::Prometheus {
                url,
                query,
                on_error,
            } => match prometheus::query(url, query, PROMETHEUS_TIMEOUT).await {
                Ok(values) => {
                    let highest = values.iter().copied().reduce(f64::max);
                    let detail = match highest {
                        Some(v) => {
                            format!("query returned {} sample(s), the highest {v}", values.len())
                        }
                        None => "query returned no samples".to_owned(),
                    };
                    Read::Value(highest, detail)
                }
                Err(why) => {
                    let then = match on_error {
                        crate::config::OnError::Stop => "on_error = \"stop\"",
                        crate::config::OnError::Continue => "on_error = \"continue\"",
                    };
                    if let Some(unlogged) = self.failures.admit() {
                        tracing::warn!(
                            scenario = %self.activation.scenario.name,
                            guard = %guard.name,
                            unlogged,
                            "prometheus at {url} could not be read: {why}"
                        );
                    }
                    Read::Failed(format!(
                        "prometheus at {url} could not be read: {why} ({then})"
                    ))
                }
            },
        }
    }

    /// The numbers of the services `scope` selects over `over`, and what
    /// they are for a person.
    fn window(&self, scope: &Scope, over: Duration) -> (Window, String) {
        match scope {
            Scope::Outside => {
                let plan = &self.activation.plan;
                let services = &plan.topology.services;
                let inside: Vec<(&str, &str)> = (self.activation.scenario.faults.iter())
                    .flat_map(|fault| fault.targets.iter())
                    .filter_map(|id| services.get(id.index()))
                    .map(|s| (&*s.name, &*s.datacenter))
                    .collect();
                let outside = |s: &Arc<ServiceStats>| !inside.contains(&(s.name(), s.datacenter()));
                let window = self.stats.window_of(over, outside);
                (window, "the services outside the scenario".to_owned())
            }
            Scope::DataCenter(name) => {
                let window = self.stats.window_of(over, |s| s.datacenter() == &**name);
                (window, format!("datacenter `{name}`"))
            }
            Scope::Service(name) => {
                let window = (self.stats.window(name, over))
                    .unwrap_or_else(|| self.stats.window_of(over, |_| false));
                (window, format!("service `{name}`"))
            }
        }
    }
}
