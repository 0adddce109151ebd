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

mod activation;
pub mod history;

pub use activation::{Activated, Activation};

use crate::config::Plan;
use crate::fault::live::{Live, Rules};
use crate::topology::Slots;
use history::{Ending, Event, History};

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
    live: Arc<Live>,
    // A std mutex: it is never held across an await, and only the admin API
    // and the timer take it. The data plane reads `live` and never locks.
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    /// The plan in force; a reload swaps it (see [`Engine::replace_plan`]).
    plan: Arc<Plan>,
    /// Where the faults of each of the plan's services go; the runtime
    /// model decides.
    slots: Slots,
    /// Active scenarios by plan index.
    active: BTreeMap<usize, Activation>,
    history: History,
    next_id: u64,
}

impl Engine {
    /// An engine for `plan`, its services at the slots of their plan index
    /// (as [`start`](crate::start) runs them).
    pub fn new(plan: Arc<Plan>, live: Arc<Live>) -> Engine {
        for scenario in &plan.scenarios {
            crate::metrics::scenario_active(&scenario.name, false);
        }
        Engine {
            inner: Arc::new(Inner {
                live,
                state: Mutex::new(State {
                    slots: Slots::in_order(plan.topology.services.len()),
                    plan,
                    active: BTreeMap::new(),
                    history: History::default(),
                    next_id: 0,
                }),
                wake: Notify::new(),
            }),
        }
    }

    /// The plan in force now.
    pub fn plan(&self) -> Arc<Plan> {
        Arc::clone(&self.lock().plan)
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.inner.live
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the state half-updated: every change
        // is a single insert or remove, so a poisoned lock is still usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn find(plan: &Plan, name: &str) -> Result<usize, UnknownScenario> {
        let scenarios = &plan.scenarios;
        scenarios
            .iter()
            .position(|s| &*s.name == name)
            .ok_or_else(|| UnknownScenario {
                name: name.to_owned(),
                known: scenarios.iter().map(|s| s.name.to_string()).collect(),
            })
    }

    /// Activates a scenario for `duration` (capped at its `max_duration`);
    /// it ends earlier when every fault has a `duration` and the last one
    /// ends. On an active scenario, `None` changes nothing, and a duration
    /// moves its deadline to `duration` from its start (see [`Self::reschedule`]).
    pub fn activate(
        &self,
        name: &str,
        duration: Option<Duration>,
        by: &str,
    ) -> Result<Activated, UnknownScenario> {
        let mut state = self.lock();
        let index = Self::find(&state.plan, name)?;
        let now = Instant::now();
        self.expire(&mut state, now);
        if let Some(existing) = state.active.get(&index) {
            let existing = existing.clone();
            return Ok(match duration {
                None => Activated::Existing(existing),
                Some(duration) => self.reschedule(&mut state, index, existing, duration, now, by),
            });
        }
        state.next_id += 1;
        let scenario = Arc::clone(&state.plan.scenarios[index]);
        let length = duration.unwrap_or(scenario.max_duration);
        let mut activation = Activation {
            id: state.next_id,
            plan: Arc::clone(&state.plan),
            started: now,
            started_at: SystemTime::now(),
            expires: now,
            deadline: now,
            by: by.to_owned(),
            scenario,
        };
        activation.set_deadline(now + length);
        tracing::info!(
            scenario = name,
            by,
            expires_in = %humantime::format_duration(activation.expires - now),
            "scenario activated"
        );
        crate::metrics::scenario_active(name, true);
        state.history.started(&activation);
        state.active.insert(index, activation.clone());
        self.publish(&state, now);
        self.inner.wake.notify_one();
        Ok(Activated::New(activation))
    }

    /// Moves the deadline of `activation`, active at `index`, to `duration`
    /// from its start, capped at `max_duration`. A deadline already passed
    /// lifts it now, recorded as lifted by `by`.
    fn reschedule(
        &self,
        state: &mut State,
        index: usize,
        mut activation: Activation,
        duration: Duration,
        now: Instant,
        by: &str,
    ) -> Activated {
        let previous = activation.expires;
        // Not before now: what has run cannot be undone.
        activation.set_deadline((activation.started + duration).max(now));
        state.history.rescheduled(&activation);
        let name = &*activation.scenario.name;
        let ended = activation.expires <= now;
        if ended {
            tracing::info!(
                scenario = name,
                by,
                "scenario lifted: its new duration has passed"
            );
            crate::metrics::scenario_active(name, false);
            state.active.remove(&index);
            let at = SystemTime::now();
            state
                .history
                .ended(&activation, at, Ending::Lifted, Some(by));
        } else {
            tracing::info!(
                scenario = name,
                by,
                expires_in = %humantime::format_duration(activation.expires - now),
                "scenario rescheduled"
            );
            state.active.insert(index, activation.clone());
        }
        if activation.expires != previous {
            self.publish(state, now);
            // The timer may sleep until the old end: it must see the new one.
            self.inner.wake.notify_one();
        }
        Activated::Changed {
            activation,
            previous,
            ended,
        }
    }

    /// Lifts one scenario; `Ok(None)` when it was not active.
    pub fn lift(&self, name: &str, by: &str) -> Result<Option<Activation>, UnknownScenario> {
        let mut state = self.lock();
        let index = Self::find(&state.plan, name)?;
        let now = Instant::now();
        self.expire(&mut state, now);
        let lifted = state.active.remove(&index);
        if let Some(activation) = &lifted {
            tracing::info!(scenario = name, by, "scenario lifted");
            crate::metrics::scenario_active(name, false);
            let at = SystemTime::now();
            state
                .history
                .ended(activation, at, Ending::Lifted, Some(by));
            self.publish(&state, now);
            self.inner.wake.notify_one();
        }
        Ok(lifted)
    }

    /// Lifts every active scenario at once and returns what was lifted.
    pub fn lift_all(&self, by: &str) -> Vec<Activation> {
        let mut state = self.lock();
        // One that ran out before the timer got to it was not lifted by us.
        self.expire(&mut state, Instant::now());
        let lifted: Vec<Activation> = std::mem::take(&mut state.active).into_values().collect();
        let at = SystemTime::now();
        for activation in &lifted {
            crate::metrics::scenario_active(&activation.scenario.name, false);
            state
                .history
                .ended(activation, at, Ending::Halted, Some(by));
        }
        tracing::warn!(
            by,
            lifted = lifted.len(),
            scenarios = ?lifted.iter().map(|a| &*a.scenario.name).collect::<Vec<_>>(),
            "all faults halted"
        );
        self.publish(&state, Instant::now());
        self.inner.wake.notify_one();
        lifted
    }

    /// Swaps in a reloaded plan, with where its services' faults go now. A
    /// scenario the new plan still has stays active under its new
    /// definition, keeping its start and expiry (cut short if its new
    /// `max_duration` is shorter); one the plan no longer has is lifted.
    /// Returns the names of the lifted scenarios.
    pub fn replace_plan(&self, plan: Arc<Plan>, slots: Slots, by: &str) -> Vec<String> {
        let mut state = self.lock();
        let now = Instant::now();
        self.expire(&mut state, now);
        let at = SystemTime::now();
        let mut lifted = Vec::new();
        for (_, mut activation) in std::mem::take(&mut state.active) {
            let name = Arc::clone(&activation.scenario.name);
            match plan.scenarios.iter().position(|s| s.name == name) {
                Some(index) => {
                    activation.scenario = Arc::clone(&plan.scenarios[index]);
                    activation.plan = Arc::clone(&plan);
                    // Also cut short by the new max_duration, or by the
                    // new faults' end.
                    activation.set_deadline(activation.deadline);
                    state.history.rescheduled(&activation);
                    state.active.insert(index, activation);
                }
                None => {
                    tracing::warn!(
                        scenario = %name,
                        by,
                        "scenario lifted: the reloaded plan no longer has it"
                    );
                    crate::metrics::scenario_active(&name, false);
                    state
                        .history
                        .ended(&activation, at, Ending::Lifted, Some(by));
                    lifted.push(name.to_string());
                }
            }
        }
        for (index, scenario) in plan.scenarios.iter().enumerate() {
            if !state.active.contains_key(&index) {
                crate::metrics::scenario_active(&scenario.name, false);
            }
        }
        state.plan = plan;
        state.slots = slots;
        // A shortened activation may be over already.
        self.expire(&mut state, now);
        self.publish(&state, now);
        self.inner.wake.notify_one();
        lifted
    }

    /// The activations in force now, in plan order.
    pub fn active(&self) -> Vec<Activation> {
        let mut state = self.lock();
        let now = Instant::now();
        if self.expire(&mut state, now) {
            self.publish(&state, now);
        }
        state.active.values().cloned().collect()
    }

    /// The recent activations and how they ended, newest first.
    pub fn events(&self) -> Vec<Event> {
        let mut state = self.lock();
        let now = Instant::now();
        if self.expire(&mut state, now) {
            self.publish(&state, now);
        }
        state.history.newest_first()
    }

    /// Removes expired activations; returns whether any were.
    fn expire(&self, state: &mut State, now: Instant) -> bool {
        let State {
            active, history, ..
        } = state;
        let before = active.len();
        active.retain(|_, activation| {
            let keep = activation.expires > now;
            if !keep {
                let ending = activation.ending();
                tracing::info!(scenario = %activation.scenario.name, "scenario {}", ending.name());
                crate::metrics::scenario_active(&activation.scenario.name, false);
                history.ended(activation, activation.expires_at(), ending, None);
            }
            keep
        });
        active.len() != before
    }

    /// Builds the rules for `now` and swaps them in; returns the next time
    /// the rules change by themselves.
    fn publish(&self, state: &State, now: Instant) -> Option<Instant> {
        let (rules, next) = rules_at(&state.slots, state.active.values(), now);
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
                let mut state = self.lock();
                let now = Instant::now();
                let expired = self.expire(&mut state, now);
                let (rules, next) = rules_at(&state.slots, state.active.values(), now);
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
/// activation expires). `slots` places the faults of the activations' plan.
pub fn rules_at<'a>(
    slots: &Slots,
    activations: impl Iterator<Item = &'a Activation>,
    now: Instant,
) -> (Rules, Option<Instant>) {
    let mut rules = Rules::empty(slots.count());
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
                rules.add(fault, slots);
            }
        }
    }
    (rules, next)
}

#[cfg(test)]
mod tests;
