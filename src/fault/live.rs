//! The live rule set: which faults are active on each service right now.
//! The engine builds a whole new [`Rules`] snapshot and swaps it in one step;
//! the data plane reads it without locks and open connections are woken
//! through a watch channel to decide again.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use tokio::sync::watch;

use super::Fault;
use crate::topology::ServiceId;

/// An immutable snapshot of the active faults, indexed by service.
#[derive(Debug, Default)]
pub struct Rules {
    services: Vec<Vec<Arc<Fault>>>,
}

impl Rules {
    /// A snapshot with no active fault for `service_count` services.
    pub fn empty(service_count: usize) -> Rules {
        Rules {
            services: vec![Vec::new(); service_count],
        }
    }

    /// Adds an active fault to every service it targets.
    pub fn add(&mut self, fault: &Arc<Fault>) {
        for &service in &fault.targets {
            self.services[service.index()].push(Arc::clone(fault));
        }
    }

    /// The faults active on one service, in plan order.
    pub fn service(&self, service: ServiceId) -> &[Arc<Fault>] {
        &self.services[service.index()]
    }
}

/// Where the current [`Rules`] live: a lock-free pointer for per-request
/// reads, and a watch channel that wakes open connections on every change.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Rules>,
    changed: watch::Sender<u64>,
}

impl Live {
    pub fn new(rules: Rules) -> Live {
        Live {
            current: ArcSwap::from_pointee(rules),
            changed: watch::Sender::new(0),
        }
    }

    /// The current snapshot; cheap, lock-free and never blocks a writer.
    pub fn load(&self) -> Guard<Arc<Rules>> {
        self.current.load()
    }

    /// A receiver that is marked changed whenever new rules are published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Swaps in a new snapshot, then wakes everyone watching.
    pub fn publish(&self, rules: Rules) {
        self.current.store(Arc::new(rules));
        self.changed.send_modify(|generation| *generation += 1);
    }
}
