//! A reloaded plan taking over the engine: active scenarios the new plan
//! still has keep running under their new definition; the rest are lifted.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{Engine, Happened};
use crate::config::Plan;
use crate::topology::Slots;

impl Engine {
    /// Swaps in a reloaded plan, with where its services' faults go now. A
    /// scenario the new plan still has stays active under its new
    /// definition, keeping its start and expiry (cut short if its new
    /// `max_duration` is shorter); one the plan no longer has is lifted.
    /// Returns the names of the lifted scenarios.
    pub fn replace_plan(&self, plan: Arc<Plan>, slots: Slots, by: &str) -> Vec<String> {
        let mut state = self.change();
        let now = Instant::now();
        self.expire(&mut state, now);
        let at = SystemTime::now();
        let mut lifted = Vec::new();
        for (_, mut activation) in std::mem::take(&mut state.active) {
            let name = Arc::clone(&activation.scenario.name);
            match plan.scenarios.iter().position(|s| s.name == name) {
                Some(index) => {
                    let previous = activation.expires;
                    activation.scenario = Arc::clone(&plan.scenarios[index]);
                    activation.plan = Arc::clone(&plan);
                    // Also cut short by the new max_duration, or by the
                    // new faults' end.
                    let deadline = activation.deadline;
                    let activation = activation.ending_at(deadline);
                    if activation.expires != previous {
                        let happened = Happened::Rescheduled {
                            subject: activation.subject(),
                            expires_at: activation.expires_at(),
                            by: by.to_owned(),
                        };
                        self.emit(&mut state, at, happened);
                    }
                    state.active.insert(index, activation);
                }
                None => {
                    tracing::warn!(
                        scenario = %name,
                        by,
                        "scenario lifted: the reloaded plan no longer has it"
                    );
                    crate::metrics::scenario_active(&name, false);
                    lifted.push(activation.subject());
                }
            }
        }
        for (index, scenario) in plan.scenarios.iter().enumerate() {
            crate::metrics::scenario_guards(scenario);
            if !state.active.contains_key(&index) {
                crate::metrics::scenario_active(&scenario.name, false);
            }
        }
        state.plan = plan;
        state.slots = slots;
        let names = lifted.iter().map(|s| s.scenario.to_string()).collect();
        let happened = Happened::Reloaded {
            by: by.to_owned(),
            lifted,
        };
        self.emit(&mut state, at, happened);
        // A shortened activation may be over already.
        self.expire(&mut state, now);
        self.publish(&mut state, now);
        self.inner.wake.notify_one();
        names
    }
}
