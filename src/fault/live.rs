//! The live rule set: which faults are active on each service right now.
//! The engine builds a whole new [`Rules`] snapshot and swaps it in one step;
//! the data plane reads it without locks and open connections are woken
//! through a watch channel to decide again.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::Fault;
use crate::topology::Topology;
use crate::workers::Workers;

/// An immutable snapshot of the active faults, indexed by service slot
/// ([`Service::slot`](crate::topology::Service::slot)), which stays put for a service across plan reloads.
#[derive(Debug, Default)]
pub struct Rules {
    slots: Vec<Vec<Arc<Fault>>>,
    /// Counts publishes: a body that streams compares it to see a change.
    generation: u64,
}

impl Rules {
    /// A snapshot with no active fault for `slots` slots.
    pub fn empty(slots: usize) -> Rules {
        Rules {
            slots: vec![Vec::new(); slots],
            generation: 0,
        }
    }

    /// Adds an active fault to every service it targets in `topology`, the
    /// plan the fault belongs to.
    pub fn add(&mut self, fault: &Arc<Fault>, topology: &Topology) {
        for &service in &fault.targets {
            let slot = topology.services[service.index()].slot;
            if self.slots.len() <= slot {
                self.slots.resize(slot + 1, Vec::new());
            }
            self.slots[slot].push(Arc::clone(fault));
        }
    }

    /// Which publish made this snapshot; each makes a higher one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The faults active on the service in `slot`, in plan order; none for a
    /// slot this snapshot does not know (a service a reload removed).
    pub fn slot(&self, slot: usize) -> &[Arc<Fault>] {
        self.slots.get(slot).map_or(&[], Vec::as_slice)
    }
}

/// Where the current [`Rules`] live: a lock-free pointer for per-request
/// reads, and a watch channel that wakes open connections on every change.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Rules>,
    changed: watch::Sender<u64>,
    /// With worker threads: a copy of `changed` per worker, which a task on
    /// that worker keeps up to date, so a publish wakes one task per worker
    /// across threads and each worker wakes its own connections.
    local: Option<(Workers, Box<[watch::Sender<u64>]>)>,
}

impl Live {
    pub fn new(rules: Rules) -> Live {
        Live {
            current: ArcSwap::from_pointee(rules),
            changed: watch::Sender::new(0),
            local: None,
        }
    }

    /// Like [`Live::new`], for connections that run on `workers`. Waking
    /// ten thousand connections on other threads one by one took the
    /// publishing thread tens of milliseconds (a syscall per wake-up).
    pub fn on(rules: Rules, workers: &Workers) -> Live {
        let mut live = Live::new(rules);
        if !workers.pooled() {
            return live;
        }
        let senders: Box<[_]> = (0..workers.threads())
            .map(|_| watch::Sender::new(0))
            .collect();
        let global = live.changed.subscribe();
        // Each ends when `changed` is dropped with this `Live`.
        workers.spawn_on_each(|index| relay(global.clone(), senders[index].clone()));
        live.local = Some((workers.clone(), senders));
        live
    }

    /// The current snapshot; cheap, lock-free and never blocks a writer.
    pub fn load(&self) -> Guard<Arc<Rules>> {
        self.current.load()
    }

    /// A receiver that is marked changed whenever new rules are published:
    /// on a worker thread, that worker's copy.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        if let Some((workers, senders)) = &self.local {
            if let Some(index) = workers.this_worker() {
                return senders[index].subscribe();
            }
        }
        self.changed.subscribe()
    }

    /// Swaps in a new snapshot, then wakes everyone watching.
    pub fn publish(&self, mut rules: Rules) {
        self.changed.send_modify(|generation| {
            *generation += 1;
            rules.generation = *generation;
            // Stored before the receivers are told.
            self.current.store(Arc::new(rules));
        });
    }
}

/// Keeps one worker's copy of the change channel up to date.
async fn relay(mut global: watch::Receiver<u64>, local: watch::Sender<u64>) {
    while global.changed().await.is_ok() {
        let generation = *global.borrow_and_update();
        local.send_replace(generation);
    }
}
