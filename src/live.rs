//! The live rule set: which faults are active on each service right now.
//! The engine builds a whole new [`Rules`] snapshot and swaps it in one step;
//! the data plane reads it without locks and open connections are woken
//! through a watch channel to decide again. The last few snapshots are
//! kept, so a connection that looks again after several changes decides on
//! each one it missed; and shutdown is published like a change, so what a
//! blackhole holds is let go at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use crate::fault::Fault;
use crate::topology::Slots;

/// An immutable snapshot of the active faults, indexed by service slot
/// ([`Slots`]), which stays put for a service across plan reloads.
#[derive(Debug, Default)]
pub struct Rules {
    slots: Vec<Vec<Arc<Fault>>>,
    /// Counts publishes: a body that streams compares it to see a change.
    generation: u64,
    /// Shutdown has started: a blackhole holds nothing more, and what it
    /// held is closed as when it ends.
    draining: bool,
}

impl Rules {
    /// A snapshot with no active fault for `slots` slots.
    pub fn empty(slots: usize) -> Rules {
        Rules {
            slots: vec![Vec::new(); slots],
            generation: 0,
            draining: false,
        }
    }

    /// Adds an active fault to every service it targets that runs, at its
    /// slot in `slots` (of the plan the fault belongs to).
    pub fn add(&mut self, fault: &Arc<Fault>, slots: &Slots) {
        for &service in &fault.targets {
            let Some(slot) = slots.of(service) else {
                continue;
            };
            if self.slots.len() <= slot {
                self.slots.resize(slot + 1, Vec::new());
            }
            self.slots[slot].push(Arc::clone(fault));
        }
    }

    /// A snapshot with `faults` active on `slot`, for tests.
    #[cfg(test)]
    pub(crate) fn with(slot: usize, faults: Vec<Arc<Fault>>) -> Rules {
        let mut rules = Rules::empty(slot + 1);
        rules.slots[slot] = faults;
        rules
    }

    /// Which publish made this snapshot; each makes a higher one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether shutdown has started: connections a blackhole holds are let
    /// go (closed) instead of held.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The faults active on the service in `slot`, in plan order; none for a
    /// slot this snapshot does not know (a service a reload removed).
    pub fn slot(&self, slot: usize) -> &[Arc<Fault>] {
        self.slots.get(slot).map_or(&[], Vec::as_slice)
    }
}

/// How many recent snapshots [`Live::since`] can give. A connection looks
/// again on every change it is woken for, so it misses only the few that
/// come before it runs.
const RECENT: usize = 64;

/// Where the current [`Rules`] live: a lock-free pointer for per-request
/// reads, and a watch channel that wakes open connections on every change.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Rules>,
    /// The last [`RECENT`] snapshots, oldest first; the current one last.
    recent: ArcSwap<Vec<Arc<Rules>>>,
    /// Set by [`Live::drain`]; every snapshot published after carries it.
    draining: AtomicBool,
    changed: watch::Sender<u64>,
    /// With worker threads: a copy of `changed` per worker, which a task on
    /// that worker keeps up to date, so a publish wakes one task per worker
    /// across threads and each worker wakes its own connections.
    local: Option<Box<dyn LocalChanges>>,
}

/// Spreads rule changes over the threads that run connections: the
/// threads themselves are a layer above, so they come in through this.
pub trait FanOut {
    /// Starts keeping a copy of `changes` up to date on every thread that
    /// runs connections; `None` where connections run on the caller's
    /// runtime and subscribe to `changes` itself.
    fn fan_out(&self, changes: watch::Receiver<u64>) -> Option<Box<dyn LocalChanges>>;
}

/// The copies of the change channel that [`FanOut`] keeps, one per thread.
pub trait LocalChanges: std::fmt::Debug + Send + Sync {
    /// A receiver of the calling thread's copy; `None` on another thread.
    fn subscribe(&self) -> Option<watch::Receiver<u64>>;
}

impl Live {
    pub fn new(rules: Rules) -> Live {
        let rules = Arc::new(rules);
        Live {
            current: ArcSwap::new(Arc::clone(&rules)),
            recent: ArcSwap::from_pointee(vec![rules]),
            draining: AtomicBool::new(false),
            changed: watch::Sender::new(0),
            local: None,
        }
    }

    /// Like [`Live::new`], for connections that run where `fan_out` puts
    /// them (worker threads, say). Waking ten thousand connections on
    /// other threads one by one took the publishing thread tens of
    /// milliseconds (a syscall per wake-up).
    pub fn on(rules: Rules, fan_out: &impl FanOut) -> Live {
        let mut live = Live::new(rules);
        live.local = fan_out.fan_out(live.changed.subscribe());
        live
    }

    /// The current snapshot; cheap, lock-free and never blocks a writer.
    pub fn load(&self) -> Guard<Arc<Rules>> {
        self.current.load()
    }

    /// A receiver that is marked changed whenever new rules are published:
    /// on a worker thread, that worker's copy.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        let local = self.local.as_ref().and_then(|local| local.subscribe());
        local.unwrap_or_else(|| self.changed.subscribe())
    }

    /// The snapshots published after `generation`, oldest first, the
    /// current one last; only the last [`RECENT`] are kept.
    pub fn since(&self, generation: u64) -> Vec<Arc<Rules>> {
        let recent = self.recent.load();
        let newer = recent.iter().filter(|rules| rules.generation > generation);
        newer.cloned().collect()
    }

    /// Swaps in a new snapshot, then wakes everyone watching.
    pub fn publish(&self, rules: Rules) {
        self.changed
            .send_modify(|generation| self.swap_in(generation, rules));
    }

    /// Marks the start of shutdown: publishes the current faults again,
    /// with [`Rules::draining`] set from now on, so every connection a
    /// blackhole holds decides again and is closed.
    pub fn drain(&self) {
        // Inside the send, so no publish comes between.
        self.changed.send_modify(|generation| {
            self.draining.store(true, Ordering::Relaxed);
            let slots = self.current.load().slots.clone();
            let rules = Rules {
                slots,
                ..Rules::default()
            };
            self.swap_in(generation, rules);
        });
    }

    /// Numbers `rules` as the next generation and makes it current; runs
    /// inside the send, before the receivers are told.
    fn swap_in(&self, generation: &mut u64, mut rules: Rules) {
        *generation += 1;
        rules.generation = *generation;
        rules.draining = self.draining.load(Ordering::Relaxed);
        let rules = Arc::new(rules);
        let recent = self.recent.load();
        let kept = recent.len().saturating_sub(RECENT - 1);
        let mut recent = recent[kept..].to_vec();
        recent.push(Arc::clone(&rules));
        self.recent.store(Arc::new(recent));
        self.current.store(rules);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_gives_every_snapshot_after_a_generation_oldest_first() {
        let live = Live::new(Rules::empty(1));
        for _ in 0..3 {
            live.publish(Rules::empty(1));
        }
        let since: Vec<u64> = live.since(1).iter().map(|r| r.generation()).collect();
        assert_eq!(since, [2, 3]);
        assert!(live.since(3).is_empty(), "nothing after the current one");
        for _ in 0..2 * RECENT {
            live.publish(Rules::empty(1));
        }
        let since = live.since(0);
        assert_eq!(since.len(), RECENT, "only the last {RECENT} are kept");
        assert_eq!(
            since.last().map(|r| r.generation()),
            Some(live.load().generation())
        );
    }

    #[test]
    fn drain_marks_the_current_and_every_later_snapshot() {
        let live = Live::new(Rules::empty(1));
        let mut changes = live.subscribe();
        changes.borrow_and_update();
        assert!(!live.load().draining());
        live.drain();
        assert!(changes.has_changed().unwrap(), "drain wakes watchers");
        assert!(live.load().draining());
        live.publish(Rules::empty(1));
        assert!(live.load().draining(), "a later publish keeps it");
        assert_eq!(live.load().generation(), 2);
    }
}
