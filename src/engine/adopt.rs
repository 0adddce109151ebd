//! Adopting an activation made elsewhere (a fleet member, another API):
//! applied here with the stage timing of its wall-clock start, and ending
//! here on its own at its expiry.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::time::Instant;

use super::{Activated, Activation, Adopted, Engine, Origin, Remote, UnknownScenario};

impl Engine {
    /// Applies an activation made elsewhere with the same stage timing: its
    /// start here is placed so that each fault's `after` counts from the
    /// wall-clock start it was given (a stage that started 5 s ago there is
    /// in force now; one due in 3 s starts in 3 s). It ends here at its
    /// expiry, capped at this plan's `max_duration` from its start, whether
    /// or not anyone lifts it. On a scenario already active here, only its
    /// end moves (an end already passed lifts it now, by `remote.by`). One
    /// whose end has passed applies nothing: [`Adopted::Over`].
    pub fn adopt(&self, remote: &Remote) -> Result<Adopted, UnknownScenario> {
        let mut state = self.change();
        let index = Self::find(&state.plan, &remote.scenario)?;
        let now = Instant::now();
        let wall = SystemTime::now();
        self.expire(&mut state, now);
        // Where a wall-clock time falls on this process's clock.
        let local = |t: SystemTime| match t.duration_since(wall) {
            Ok(ahead) => now.checked_add(ahead),
            Err(behind) => now.checked_sub(behind.duration()),
        };
        let scenario = Arc::clone(&state.plan.scenarios[index]);
        // Only on a clock that starts near boot, for an activation older
        // than the boot: it then keeps its end but its stages run late.
        let started = local(remote.started_at).unwrap_or(now);
        let deadline = local(remote.expires_at).unwrap_or(started + scenario.max_duration);
        if let Some(existing) = state.active.get(&index).cloned() {
            let by = &remote.by;
            let changed = self.reschedule(&mut state, index, existing, deadline, now, by);
            return Ok(Adopted::Applied(changed));
        }
        let activation = Activation {
            id: 0,
            plan: Arc::clone(&state.plan),
            started,
            started_at: remote.started_at,
            expires: started,
            deadline: started,
            by: remote.by.clone(),
            origin: Origin::Peer(remote.peer.clone()),
            scenario,
        }
        .ending_at(deadline);
        if activation.expires <= now {
            tracing::info!(
                scenario = remote.scenario,
                peer = remote.peer,
                by = remote.by,
                "adopted activation not applied: it is over"
            );
            return Ok(Adopted::Over);
        }
        let activation = self.insert(&mut state, index, activation, now);
        Ok(Adopted::Applied(Activated::New(activation)))
    }
}
