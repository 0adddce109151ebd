//! The fault engine: which scenarios are active, since when and until when.
//! Every change (activate, lift, a stage starting or ending, expiry) builds
//! a whole new rule snapshot and publishes it through [`Live`]. A timer task
//! wakes at the next stage boundary.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Plan;
use crate::fault::live::{Live, Rules};
use crate::fault::{Fault, Scenario};

/// One activation of a scenario.
#[derive(Debug, Clone)]
pub struct Activation {
    pub scenario: Arc<Scenario>,
    pub started: Instant,
    pub started_at: SystemTime,
    pub expires: Instant,
    /// Who asked for it (the admin client's address).
    pub by: String,
}

impl Activation {
    pub fn expires_at(&self) -> SystemTime {
        self.started_at + (self.expires - self.started)
    }

    /// When `fault` starts and ends within this activation, as offsets from
    /// the start; `None` when the activation ends before the fault starts.
    pub fn window(&self, fault: &Fault) -> Option<(Duration, Duration)> {
        let total = self.expires - self.started;
        let end = fault
            .duration
            .map_or(total, |d| (fault.after + d).min(total));
        (fault.after < end).then_some((fault.after, end))
    }
}

/// What [`Engine::activate`] did.
#[derive(Debug, Clone)]
pub enum Activated {
    New(Activation),
    /// The scenario was already active; nothing changed.
    Existing(Activation),
}

/// The named scenario is not in the plan.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown scenario `{name}`; known: {}", known.join(", "))]
pub struct UnknownScenario {
    pub name: String,
    pub known: Vec<String>,
}

/// A cheap handle to the engine; clones share state.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    plan: Arc<Plan>,
    live: Arc<Live>,
    // A std mutex: it is never held across an await, and only the admin API
    // and the timer take it. The data plane reads `live` and never locks.
    active: Mutex<BTreeMap<usize, Activation>>,
    wake: Notify,
}

impl Engine {
    pub fn new(plan: Arc<Plan>, live: Arc<Live>) -> Engine {
        for scenario in &plan.scenarios {
            crate::metrics::scenario_active(&scenario.name, false);
        }
        Engine {
            inner: Arc::new(Inner {
                plan,
                live,
                active: Mutex::new(BTreeMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    pub fn plan(&self) -> &Arc<Plan> {
        &self.inner.plan
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.inner.live
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<usize, Activation>> {
        // A panic elsewhere cannot leave the map half-updated: every change
        // is a single insert or remove, so a poisoned lock is still usable.
        self.inner.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(&self, name: &str) -> Result<usize, UnknownScenario> {
        let scenarios = &self.inner.plan.scenarios;
        scenarios
            .iter()
            .position(|s| &*s.name == name)
            .ok_or_else(|| UnknownScenario {
                name: name.to_owned(),
                known: scenarios.iter().map(|s| s.name.to_string()).collect(),
            })
    }

    /// Activates a scenario for `duration` (capped at its `max_duration`).
    /// Activating an active scenario changes nothing.
    pub fn activate(
        &self,
        name: &str,
        duration: Option<Duration>,
        by: &str,
    ) -> Result<Activated, UnknownScenario> {
        let index = self.find(name)?;
        let mut active = self.lock();
        let now = Instant::now();
        self.expire(&mut active, now);
        if let Some(existing) = active.get(&index) {
            return Ok(Activated::Existing(existing.clone()));
        }
        let scenario = Arc::clone(&self.inner.plan.scenarios[index]);
        let length = duration.map_or(scenario.max_duration, |d| d.min(scenario.max_duration));
        let activation = Activation {
            started: now,
            started_at: SystemTime::now(),
            expires: now + length,
            by: by.to_owned(),
            scenario,
        };
        tracing::info!(
            scenario = name,
            by,
            expires_in = %humantime::format_duration(length),
            "scenario activated"
        );
        crate::metrics::scenario_active(name, true);
        active.insert(index, activation.clone());
        self.publish(&active, now);
        self.inner.wake.notify_one();
        Ok(Activated::New(activation))
    }

    /// Lifts one scenario; `Ok(None)` when it was not active.
    pub fn lift(&self, name: &str, by: &str) -> Result<Option<Activation>, UnknownScenario> {
        let index = self.find(name)?;
        let mut active = self.lock();
        let now = Instant::now();
        self.expire(&mut active, now);
        let lifted = active.remove(&index);
        if lifted.is_some() {
            tracing::info!(scenario = name, by, "scenario lifted");
            crate::metrics::scenario_active(name, false);
            self.publish(&active, now);
            self.inner.wake.notify_one();
        }
        Ok(lifted)
    }

    /// Lifts every active scenario at once and returns what was lifted.
    pub fn lift_all(&self, by: &str) -> Vec<Activation> {
        let mut active = self.lock();
        // One that ran out before the timer got to it was not lifted by us.
        self.expire(&mut active, Instant::now());
        let lifted: Vec<Activation> = std::mem::take(&mut *active).into_values().collect();
        for activation in &lifted {
            crate::metrics::scenario_active(&activation.scenario.name, false);
        }
        tracing::warn!(
            by,
            lifted = lifted.len(),
            scenarios = ?lifted.iter().map(|a| &*a.scenario.name).collect::<Vec<_>>(),
            "all faults halted"
        );
        self.publish(&active, Instant::now());
        self.inner.wake.notify_one();
        lifted
    }

    /// The activations in force now, in plan order.
    pub fn active(&self) -> Vec<Activation> {
        let mut active = self.lock();
        let now = Instant::now();
        if self.expire(&mut active, now) {
            self.publish(&active, now);
        }
        active.values().cloned().collect()
    }

    /// Removes expired activations; returns whether any were.
    fn expire(&self, active: &mut BTreeMap<usize, Activation>, now: Instant) -> bool {
        let before = active.len();
        active.retain(|_, activation| {
            let keep = activation.expires > now;
            if !keep {
                tracing::info!(scenario = %activation.scenario.name, "scenario expired");
                crate::metrics::scenario_active(&activation.scenario.name, false);
            }
            keep
        });
        active.len() != before
    }

    /// Builds the rules for `now` and swaps them in; returns the next time
    /// the rules change by themselves.
    fn publish(&self, active: &BTreeMap<usize, Activation>, now: Instant) -> Option<Instant> {
        let count = self.inner.plan.topology.services.len();
        let (rules, next) = rules_at(count, active.values(), now);
        self.inner.live.publish(rules);
        next
    }

    /// Applies stage boundaries and expiry on time until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        // Activate and lift publish themselves and only wake this loop to
        // reschedule; it publishes when a boundary or expiry is due, so one
        // change never wakes every connection twice.
        let mut due = true;
        loop {
            let next = {
                let mut active = self.lock();
                let now = Instant::now();
                let expired = self.expire(&mut active, now);
                let count = self.inner.plan.topology.services.len();
                let (rules, next) = rules_at(count, active.values(), now);
                if due || expired {
                    self.inner.live.publish(rules);
                }
                next
            };
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.wake.notified() => due = false,
                () = sleep => due = true,
            }
        }
    }
}

/// The rules in force at `now` for the given activations, and the next
/// instant at which they change by themselves (a stage starts or ends, or an
/// activation expires).
pub fn rules_at<'a>(
    service_count: usize,
    activations: impl Iterator<Item = &'a Activation>,
    now: Instant,
) -> (Rules, Option<Instant>) {
    let mut rules = Rules::empty(service_count);
    let mut next: Option<Instant> = None;
    let mut consider = |at: Instant| {
        if at > now {
            next = Some(next.map_or(at, |n| n.min(at)));
        }
    };
    for activation in activations {
        consider(activation.expires);
        for fault in &activation.scenario.faults {
            let Some((from, until)) = activation.window(fault) else {
                continue;
            };
            let (start, end) = (activation.started + from, activation.started + until);
            consider(start);
            consider(end);
            if start <= now && now < end {
                rules.add(fault);
            }
        }
    }
    (rules, next)
}

#[cfg(test)]
mod tests;
