//! One change of the engine's state under its lock, with the events it
//! broadcasts when done.

use std::sync::MutexGuard;

use tokio::sync::broadcast;

use super::{Event, State};

/// The state locked for one change. Dropping it broadcasts the change's
/// events, still under the lock: they go out in the order things happened,
/// and only once the rules they announce are published, so a subscriber
/// that acts on an event sees its effect.
pub(super) struct Change<'a> {
    pub(super) state: MutexGuard<'a, State>,
    pub(super) events: &'a broadcast::Sender<Event>,
}

impl std::ops::Deref for Change<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

impl std::ops::DerefMut for Change<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.state
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        for event in self.state.outbox.drain(..) {
            // No subscriber is not an error; a slow one loses old events.
            let _ = self.events.send(event);
        }
    }
}
