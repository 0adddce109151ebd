//! The runtime model: the services running now (each with where its
//! listener is bound and its rule slot) and the plan whose scenarios are in
//! force. It changes only by [`Model::next`] over a list of [`Change`]s,
//! which the control handle performs; [`diff`] turns a re-read plan into
//! such a list. Pure: no sockets, no tasks.

mod diff;

pub use diff::{diff, Diff, Refusal};

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Admin, Plan};
use crate::topology::{Service, Slots};

/// One change to the running proxy. A plan reload is a list of them; so
/// is a service created or deleted through an API.
#[derive(Debug, Clone)]
pub enum Change {
    /// Starts a service on a listener of its own.
    Add(Arc<Service>),
    /// Puts `with` on the listener of the running service `name`, which
    /// may be another name. `Keep` leaves its open connections alone (they
    /// keep its rule slot); `Close` closes them, as they lead where the
    /// service no longer points.
    Replace {
        name: Arc<str>,
        with: Arc<Service>,
        connections: Connections,
    },
    /// Stops the running service `name` and closes its connections.
    Remove(Arc<str>),
    /// Puts the scenarios of this plan in force; their faults name services
    /// of its topology, matched by name. The admin API's access stays.
    Scenarios(Arc<Plan>),
    /// Puts the `tokens` and `open_reads` of these `[admin]` settings in
    /// force; where the API listens and its TLS stay as started.
    Access(Admin),
}

/// What happens to the open connections of a replaced service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connections {
    Keep,
    Close,
}

/// A running service: as declared (never rewritten), where its listener
/// is bound and where its faults sit in a rule snapshot.
#[derive(Debug, Clone)]
pub struct RunningService {
    pub service: Arc<Service>,
    /// The real address: the port the system gave when it said 0.
    pub bound: SocketAddr,
    pub slot: usize,
}

/// What runs now; see the module docs.
#[derive(Debug, Clone)]
pub struct Model {
    services: Vec<RunningService>,
    plan: Arc<Plan>,
    /// The `[admin]` settings in force: its listener and TLS as started
    /// (only a restart changes them), its tokens as last changed.
    admin: Admin,
    /// The next unused rule slot; slots are never reused, so connections of
    /// a service that is gone never see another service's faults.
    next_slot: usize,
}

impl Model {
    /// The model of `plan` started with its services bound at `bound`, in
    /// plan order; each service's slot is its plan index.
    pub fn new(plan: Arc<Plan>, bound: &[SocketAddr]) -> Model {
        let services: Vec<RunningService> = plan
            .topology
            .services
            .iter()
            .zip(bound)
            .enumerate()
            .map(|(slot, (service, &bound))| RunningService {
                service: Arc::new(service.clone()),
                bound,
                slot,
            })
            .collect();
        Model {
            next_slot: services.len(),
            services,
            admin: plan.admin.clone(),
            plan,
        }
    }

    /// The running services, in the order they were declared or added.
    pub fn services(&self) -> &[RunningService] {
        &self.services
    }

    /// The running service called `name`.
    pub fn service(&self, name: &str) -> Option<&RunningService> {
        self.services.iter().find(|s| &*s.service.name == name)
    }

    /// The plan whose scenarios are in force.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// The `[admin]` settings in force: who may call the API (as last
    /// changed), where it listens and its TLS (as started).
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// Where the faults of each service of the plan's topology go: the slot
    /// of the running service of that name, if one runs.
    pub fn slots(&self) -> Slots {
        Slots::new(
            self.plan
                .topology
                .services
                .iter()
                .map(|s| self.service(&s.name).map(|running| running.slot))
                .collect(),
        )
    }

    /// The model after `changes`. Names in `Replace` and `Remove` are of
    /// the services running before them; `bind` gives each added
    /// service's listener address (a test passes a made-up one), and is
    /// called only once every other check has passed. Any change that
    /// does not fit refuses them all.
    pub fn next<E>(
        &self,
        changes: &[Change],
        mut bind: impl FnMut(&Service) -> Result<SocketAddr, E>,
    ) -> Result<Model, Refusal<E>> {
        let mut next = self.clone();
        let mut fates: Vec<Option<&Change>> = vec![None; self.services.len()];
        let mut added = Vec::new();
        for change in changes {
            let name = match change {
                Change::Add(service) => {
                    added.push(service);
                    continue;
                }
                Change::Scenarios(plan) => {
                    next.plan = Arc::clone(plan);
                    continue;
                }
                Change::Access(admin) => {
                    next.admin.tokens = admin.tokens.clone();
                    next.admin.open_reads = admin.open_reads;
                    continue;
                }
                Change::Replace { name, .. } | Change::Remove(name) => name,
            };
            let index = self
                .services
                .iter()
                .position(|s| s.service.name == *name)
                .ok_or_else(|| Refusal::Conflict(format!("no service `{name}` runs")))?;
            if fates[index].replace(change).is_some() {
                return Err(Refusal::Conflict(format!(
                    "service `{name}` is changed twice at once; give one change for it"
                )));
            }
        }
        next.services.clear();
        for (old, fate) in self.services.iter().zip(fates) {
            match fate {
                None => next.services.push(old.clone()),
                Some(Change::Replace {
                    name,
                    with,
                    connections,
                }) => {
                    let elsewhere = with.listen.port() != 0
                        && with.listen != old.service.listen
                        && with.listen != old.bound;
                    if elsewhere {
                        return Err(Refusal::Conflict(format!(
                            "service `{}` listens on {}, not on the listener of `{name}` on {}; remove `{name}` and add it instead",
                            with.name, with.listen, old.bound
                        )));
                    }
                    let slot = match connections {
                        Connections::Keep => old.slot,
                        Connections::Close => next.take_slot(),
                    };
                    next.services.push(RunningService {
                        service: Arc::clone(with),
                        bound: old.bound,
                        slot,
                    });
                }
                Some(_) => {}
            }
        }
        let mut names: Vec<&str> = next.services.iter().map(|s| &*s.service.name).collect();
        names.extend(added.iter().map(|s| &*s.name));
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Refusal::Conflict(format!(
                "two services would be called `{}`; give each its own name",
                pair[0]
            )));
        }
        for service in added {
            let bound = bind(service).map_err(Refusal::Bind)?;
            let slot = next.take_slot();
            next.services.push(RunningService {
                service: Arc::clone(service),
                bound,
                slot,
            });
        }
        // Services of the plan in its order, as it lists them; others after.
        let topology = &next.plan.topology;
        let place = |s: &RunningService| {
            let at = topology
                .services
                .iter()
                .position(|p| p.name == s.service.name);
            at.unwrap_or(usize::MAX)
        };
        next.services.sort_by_key(place);
        Ok(next)
    }

    /// Drops the service `name`, which nothing serves any more (its
    /// accept loop ended while shutdown started).
    pub(crate) fn forget(&mut self, name: &str) {
        self.services.retain(|s| &*s.service.name != name);
    }

    fn take_slot(&mut self) -> usize {
        self.next_slot += 1;
        self.next_slot - 1
    }
}

#[cfg(test)]
mod tests;
