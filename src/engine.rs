//! The fault engine: which scenarios are active, since when and until when.
//! Every change (activate, adopt, lift, a stage starting or ending, expiry)
//! builds a whole new rule snapshot, publishes it through [`Live`], and
//! broadcasts an [`Event`] saying what happened. A timer task wakes at the
//! next stage boundary. Reads ([`Engine::active`], [`Engine::history`])
//! compute from state and never publish.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod activation;
mod adopt;
mod change;
pub mod event;
pub mod history;
mod reload;
mod rules;
mod safety;

pub use activation::{Activated, Activation, Adopted, Origin, Remote};
pub use event::{Event, Happened, Stop, Subject};
pub use rules::rules_at;
pub use safety::{ActivateError, Refused};

use crate::config::Plan;
use crate::live::Live;
use crate::topology::Slots;
use change::Change;
use history::{History, Record};

/// How many events a subscriber may fall behind before it loses the oldest
/// (it then gets [`broadcast::error::RecvError::Lagged`]); the engine never
/// waits for a subscriber.
pub const EVENT_BACKLOG: usize = 1024;
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
    events: broadcast::Sender<Event>,
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
    /// The faults in force at the last publish, by activation id and fault
    /// index, to announce each stage that starts or ends.
    in_force: BTreeMap<(u64, usize), Arc<str>>,
    /// Events of the change under way, broadcast when it is done.
    outbox: Vec<Event>,
    next_id: u64,
}

impl Engine {
    /// An engine for `plan`, its services at the slots of their plan index
    /// (as [`start`](crate::start) runs them).
    pub fn new(plan: Arc<Plan>, live: Arc<Live>) -> Engine {
        for scenario in &plan.scenarios {
            crate::metrics::scenario_active(&scenario.name, false);
            crate::metrics::scenario_guards(scenario);
        }
        Engine {
            inner: Arc::new(Inner {
                live,
                state: Mutex::new(State {
                    slots: Slots::in_order(plan.topology.services.len()),
                    plan,
                    active: BTreeMap::new(),
                    history: History::default(),
                    in_force: BTreeMap::new(),
                    outbox: Vec::new(),
                    next_id: 0,
                }),
                wake: Notify::new(),
                events: broadcast::Sender::new(EVENT_BACKLOG),
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

    /// Every event from now on, in order. A subscriber that falls more than
    /// [`EVENT_BACKLOG`] events behind loses the oldest and is told so.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
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

    /// Locks the state for a change; the change's events are broadcast
    /// when it is done (see [`Change`]).
    fn change(&self) -> Change<'_> {
        Change {
            state: self.lock(),
            events: &self.inner.events,
        }
    }

    /// Records `what` in the history at once, and queues it to be broadcast
    /// when the change is done.
    fn emit(&self, state: &mut State, at: SystemTime, what: Happened) {
        let event = Event { at, what };
        state.history.apply(&event);
        state.outbox.push(event);
    }

    /// Activates a scenario for `duration` (capped at its `max_duration`);
    /// it ends earlier when every fault has a `duration` and the last one
    /// ends. On an active scenario, `None` changes nothing, and a duration
    /// moves its deadline to `duration` from its start (see [`Self::reschedule`]).
    /// A new activation the plan's `[safety]` table does not allow is
    /// [`Refused`].
    pub fn activate(
        &self,
        name: &str,
        duration: Option<Duration>,
        by: &str,
    ) -> Result<Activated, ActivateError> {
        let mut state = self.change();
        let index = Self::find(&state.plan, name)?;
        let now = Instant::now();
        self.expire(&mut state, now);
        if let Some(existing) = state.active.get(&index).cloned() {
            return Ok(match duration {
                None => Activated::Existing(existing),
                Some(duration) => {
                    let deadline = existing.started + duration;
                    self.reschedule(&mut state, index, existing, deadline, now, by)
                }
            });
        }
        let scenario = Arc::clone(&state.plan.scenarios[index]);
        if let Err(refused) = safety::check(&state.plan, &scenario, state.active.values()) {
            tracing::warn!(scenario = name, by, "activation refused: {refused}");
            return Err(refused.into());
        }
        let length = duration.unwrap_or(scenario.max_duration);
        let activation = Activation {
            id: 0,
            plan: Arc::clone(&state.plan),
            started: now,
            started_at: SystemTime::now(),
            expires: now,
            deadline: now,
            by: by.to_owned(),
            origin: Origin::Local,
            scenario,
        }
        .ending_at(now + length);
        Ok(Activated::New(
            self.insert(&mut state, index, activation, now),
        ))
    }

    /// Makes `activation` the active one at `index`: gives it an id,
    /// announces it and publishes the rules.
    fn insert(
        &self,
        state: &mut State,
        index: usize,
        mut activation: Activation,
        now: Instant,
    ) -> Activation {
        state.next_id += 1;
        activation.id = state.next_id;
        let name = &*activation.scenario.name;
        let origin = match &activation.origin {
            Origin::Local => "local",
            Origin::Peer(peer) => peer,
        };
        tracing::info!(
            scenario = name,
            by = activation.by,
            origin,
            expires_in = %humantime::format_duration(activation.expires - now),
            "scenario activated"
        );
        crate::metrics::scenario_active(name, true);
        let happened = Happened::Activated {
            subject: activation.subject(),
            by: activation.by.clone(),
            origin: activation.origin.clone(),
            started_at: activation.started_at,
            expires_at: activation.expires_at(),
        };
        self.emit(state, SystemTime::now(), happened);
        state.active.insert(index, activation.clone());
        self.publish(state, now);
        self.inner.wake.notify_one();
        activation
    }

    /// Moves the deadline of `activation`, active at `index`, to `deadline`,
    /// capped at `max_duration` from its start. A deadline already passed
    /// lifts it now, recorded as lifted by `by`.
    fn reschedule(
        &self,
        state: &mut State,
        index: usize,
        activation: Activation,
        deadline: Instant,
        now: Instant,
        by: &str,
    ) -> Activated {
        let previous = activation.expires;
        // Not before now: what has run cannot be undone.
        let activation = activation.ending_at(deadline.max(now));
        let name = &*activation.scenario.name;
        let at = SystemTime::now();
        let happened = Happened::Rescheduled {
            subject: activation.subject(),
            expires_at: activation.expires_at(),
            by: by.to_owned(),
        };
        self.emit(state, at, happened);
        let ended = activation.expires <= now;
        if ended {
            tracing::info!(
                scenario = name,
                by,
                "scenario lifted: its new duration has passed"
            );
            crate::metrics::scenario_active(name, false);
            state.active.remove(&index);
            let happened = Happened::Lifted {
                subject: activation.subject(),
                by: by.to_owned(),
            };
            self.emit(state, at, happened);
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
        let mut state = self.change();
        let index = Self::find(&state.plan, name)?;
        let now = Instant::now();
        self.expire(&mut state, now);
        let lifted = state.active.remove(&index);
        if let Some(activation) = &lifted {
            tracing::info!(scenario = name, by, "scenario lifted");
            crate::metrics::scenario_active(name, false);
            let happened = Happened::Lifted {
                subject: activation.subject(),
                by: by.to_owned(),
            };
            self.emit(&mut state, SystemTime::now(), happened);
            self.publish(&mut state, now);
            self.inner.wake.notify_one();
        }
        Ok(lifted)
    }

    /// Lifts the activation `id` because a guard tripped; `None` when it
    /// is no longer active (lifted, expired, or replaced by a newer one).
    pub fn stop(&self, id: u64, stop: Stop) -> Option<Activation> {
        let mut state = self.change();
        let now = Instant::now();
        self.expire(&mut state, now);
        let index = (state.active.iter())
            .find(|(_, a)| a.id == id)
            .map(|(&index, _)| index)?;
        let activation = state.active.remove(&index)?;
        let name = &*activation.scenario.name;
        tracing::warn!(
            scenario = name,
            guard = stop.guard,
            value = stop.value,
            above = stop.above,
            "scenario stopped by its guard: {}",
            stop.detail
        );
        crate::metrics::scenario_active(name, false);
        crate::metrics::scenario_stopped(name, &stop.guard);
        let happened = Happened::Stopped {
            subject: activation.subject(),
            stop,
        };
        self.emit(&mut state, SystemTime::now(), happened);
        self.publish(&mut state, now);
        self.inner.wake.notify_one();
        Some(activation)
    }

    /// Lifts every active scenario at once and returns what was lifted.
    pub fn lift_all(&self, by: &str) -> Vec<Activation> {
        let mut state = self.change();
        let now = Instant::now();
        // One that ran out before the timer got to it was not lifted by us.
        self.expire(&mut state, now);
        let lifted: Vec<Activation> = std::mem::take(&mut state.active).into_values().collect();
        for activation in &lifted {
            crate::metrics::scenario_active(&activation.scenario.name, false);
        }
        tracing::warn!(
            by,
            lifted = lifted.len(),
            scenarios = ?lifted.iter().map(|a| &*a.scenario.name).collect::<Vec<_>>(),
            "all faults halted"
        );
        let happened = Happened::Halted {
            by: by.to_owned(),
            lifted: lifted.iter().map(Activation::subject).collect(),
        };
        self.emit(&mut state, SystemTime::now(), happened);
        self.publish(&mut state, now);
        self.inner.wake.notify_one();
        lifted
    }

    /// The activations in force now, in plan order. Computed from state:
    /// one past its end is left out, and the timer removes it on time.
    pub fn active(&self) -> Vec<Activation> {
        let state = self.lock();
        let now = Instant::now();
        state
            .active
            .values()
            .filter(|a| a.expires > now)
            .cloned()
            .collect()
    }

    /// The recent activations and how they ended, newest first. Computed
    /// from state: one past its end shows how it ends, before the timer
    /// records it.
    pub fn history(&self) -> Vec<Record> {
        let state = self.lock();
        let now = Instant::now();
        let mut records = state.history.newest_first();
        for over in state.active.values().filter(|a| a.expires <= now) {
            if let Some(record) = records.iter_mut().find(|r| r.id == over.id) {
                record.ended = Some((over.expires_at(), over.ending(), None));
            }
        }
        records
    }

    /// Removes expired activations, announcing each; returns whether any
    /// were.
    fn expire(&self, state: &mut State, now: Instant) -> bool {
        let over: Vec<usize> = state
            .active
            .iter()
            .filter(|(_, activation)| activation.expires <= now)
            .map(|(&index, _)| index)
            .collect();
        for index in &over {
            let Some(activation) = state.active.remove(index) else {
                continue;
            };
            let ending = activation.ending();
            tracing::info!(scenario = %activation.scenario.name, "scenario {}", ending.name());
            crate::metrics::scenario_active(&activation.scenario.name, false);
            let subject = activation.subject();
            let happened = match ending {
                history::Ending::Completed => Happened::Completed { subject },
                _ => Happened::Expired { subject },
            };
            self.emit(state, activation.expires_at(), happened);
        }
        !over.is_empty()
    }

    /// Builds the rules for `now`, swaps them in and announces the stages
    /// that started or ended since the last publish; returns the next time
    /// the rules change by themselves.
    fn publish(&self, state: &mut State, now: Instant) -> Option<Instant> {
        let (rules, next) = rules_at(&state.slots, state.active.values(), now);
        self.inner.live.publish(rules);
        let in_force: BTreeMap<(u64, usize), Arc<str>> = state
            .active
            .values()
            .flat_map(|a| {
                let faults = a.scenario.faults.iter();
                faults
                    .filter(move |fault| a.in_force(fault, now))
                    .map(move |fault| ((a.id, fault.index), Arc::clone(&a.scenario.name)))
            })
            .collect();
        let before = std::mem::replace(&mut state.in_force, in_force);
        let at = SystemTime::now();
        for happened in event::stages(&before, &state.in_force) {
            self.emit(state, at, happened);
        }
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
                let mut state = self.change();
                let now = Instant::now();
                let expired = self.expire(&mut state, now);
                if due || expired {
                    self.publish(&mut state, now)
                } else {
                    rules_at(&state.slots, state.active.values(), now).1
                }
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

#[cfg(test)]
mod tests;
