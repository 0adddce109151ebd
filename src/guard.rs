//! Stop conditions: while a scenario is active, each of its `stop_when`
//! guards is evaluated about once a second, in a task of its own, from
//! the numbers the proxy already keeps ([`Stats::window_of`]) or a
//! Prometheus query; one whose condition holds for its `for` lifts the
//! scenario through [`Engine::stop`]. [`Guards`] is what the admin API
//! reads to show each guard's last reading. Nothing here runs on the data
//! plane.

mod prometheus;
#[cfg(test)]
mod tests;
mod verdict;

pub use verdict::{Reading, State};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::config::{Guard, Measure, Scope};
use crate::engine::{Activation, Engine, Stop};
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
    // A std mutex: held only to copy a reading in or out, or to judge one
    // and stop its activation, never across an await, and never by the
    // data plane. Lock order: this lock, then the engine's (the engine
    // never calls back into guards).
    watched: Arc<Mutex<HashMap<u64, Watched>>>,
}

/// The guards of one activation between evaluations.
#[derive(Debug)]
struct Watched {
    /// Which set of tasks owns the slots: a reload that gives the
    /// activation new guards starts tasks of a new generation, and one of
    /// an older generation may neither record nor stop.
    generation: u64,
    slots: Vec<Slot>,
}

/// One guard between evaluations.
#[derive(Debug, Clone)]
struct Slot {
    reading: Reading,
    /// When its condition began to hold, for `for` (see [`judge`]).
    since: Option<Instant>,
}

impl Slot {
    fn first(guard: &Guard) -> Slot {
        Slot {
            reading: Reading::first(guard),
            since: None,
        }
    }
}

impl Guards {
    /// The guards of `activation` as last evaluated, in plan order; ones
    /// not evaluated yet read as `ok` without a value.
    pub fn readings(&self, activation: &Activation) -> Vec<Reading> {
        let guards = &activation.scenario.stop_when;
        let watched = self.lock();
        let slots = watched.get(&activation.id).map(|w| &w.slots);
        match slots {
            // Not another set of guards that a reload has just replaced.
            Some(found)
                if found.len() == guards.len()
                    && found
                        .iter()
                        .zip(guards)
                        .all(|(s, g)| s.reading.name == g.name) =>
            {
                found.iter().map(|s| s.reading.clone()).collect()
            }
            _ => guards.iter().map(Reading::first).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches the guards of every activation until `shutdown`: starts a
    /// task per guard when an activation begins (or a reload gives its
    /// scenario new guards) and ends them when it ends. A reload keeps
    /// what an unchanged guard has read, and how long its condition has
    /// held, so reloading often cannot keep a guard with `for` from
    /// tripping.
    pub async fn run(self, engine: Engine, stats: Stats, shutdown: CancellationToken) {
        let mut events = engine.subscribe();
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watching: HashMap<u64, (Activation, CancellationToken)> = HashMap::new();
        let mut generation = 0;
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
            watching.retain(|id, (_, token)| {
                let kept = active.iter().any(|a| a.id == *id);
                if !kept {
                    self.lock().remove(id);
                    token.cancel();
                }
                kept
            });
            for activation in &active {
                let previous = watching.remove(&activation.id);
                let guards = &activation.scenario.stop_when;
                match &previous {
                    // A reload gives every activation a new scenario, with
                    // the same guards or not.
                    Some((old, _)) if Arc::ptr_eq(&old.scenario, &activation.scenario) => {
                        watching.extend(previous.map(|p| (activation.id, p)));
                        continue;
                    }
                    None if guards.is_empty() => continue,
                    _ => {}
                }
                generation += 1;
                {
                    let mut watched = self.lock();
                    let carried = watched.remove(&activation.id).map(|w| w.slots);
                    let slots = (guards.iter())
                        .map(|guard| {
                            let old = previous.as_ref().map(|(old, _)| old);
                            unchanged(old, activation, guard)
                                .and_then(|index| carried.as_ref()?.get(index).cloned())
                                .unwrap_or_else(|| Slot::first(guard))
                        })
                        .collect();
                    watched.insert(activation.id, Watched { generation, slots });
                }
                if let Some((_, token)) = previous {
                    token.cancel();
                }
                let token = shutdown.child_token();
                for index in 0..guards.len() {
                    let watch = Watch {
                        guards: self.clone(),
                        engine: engine.clone(),
                        stats: stats.clone(),
                        activation: activation.clone(),
                        index,
                        generation,
                        failures: LogLimit::new(WARN_EVERY),
                    };
                    tokio::spawn(watch.run(token.clone()));
                }
                watching.insert(activation.id, (activation.clone(), token));
            }
        }
        for (_, (_, token)) in watching {
            token.cancel();
        }
    }
}

/// Where `guard` of the reloaded `activation` was among the guards of
/// `old`, if it measures the same thing there: the same definition and,
/// for `outside = true`, the same services outside the scenario.
fn unchanged(old: Option<&Activation>, activation: &Activation, guard: &Guard) -> Option<usize> {
    let old = old?;
    let index = (old.scenario.stop_when.iter()).position(|g| g.name == guard.name)?;
    let same = old.scenario.stop_when[index] == *guard
        && match &guard.measure {
            Measure::ErrorRatio { scope, .. } | Measure::P99Latency { scope, .. } => {
                *scope != Scope::Outside || inside(old) == inside(activation)
            }
            Measure::Prometheus { .. } => true,
        };
    same.then_some(index)
}

/// The services (name, data center) some fault of the activation's
/// scenario selects, sorted.
fn inside(activation: &Activation) -> Vec<(&str, &str)> {
    let services = &activation.plan.topology.services;
    let mut inside: Vec<(&str, &str)> = (activation.scenario.faults.iter())
        .flat_map(|fault| fault.targets.iter())
        .filter_map(|id| services.get(id.index()))
        .map(|s| (&*s.name, &*s.datacenter))
        .collect();
    inside.sort_unstable();
    inside.dedup();
    inside
}

/// One guard of one activation, evaluated every [`EVERY`] until it trips
/// or is cancelled.
struct Watch {
    guards: Guards,
    engine: Engine,
    stats: Stats,
    activation: Activation,
    index: usize,
    /// The generation of [`Watched`] this task belongs to.
    generation: u64,
    failures: LogLimit,
}

impl Watch {
    async fn run(self, cancel: CancellationToken) {
        let guard = &self.activation.scenario.stop_when[self.index];
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let read = tokio::select! {
                () = cancel.cancelled() => return,
                read = async {
                    every.tick().await;
                    self.read(guard).await
                } => read,
            };
            // Judged, recorded and acted on under the lock, and only while
            // this task's generation owns the slot: a reload may have
            // swapped in new guards during the read.
            let mut watched = self.guards.lock();
            let slot = (watched.get_mut(&self.activation.id))
                .filter(|w| w.generation == self.generation)
                .and_then(|w| w.slots.get_mut(self.index));
            let Some(slot) = slot else {
                return;
            };
            let reading = judge(guard, read, &mut slot.since, Instant::now());
            slot.reading = reading.clone();
            if reading.state == State::Tripped {
                let stop = Stop {
                    guard: guard.name.to_string(),
                    value: reading.value,
                    above: guard.above,
                    detail: reading.detail,
                };
                // `None`: it ended meanwhile; nothing is left to stop.
                self.engine.stop(self.activation.id, stop);
                return;
            }
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
                let inside = inside(&self.activation);
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
