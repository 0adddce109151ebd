//! The rules a set of activations puts in force at an instant, and when
//! they next change by themselves. Pure: the caller gives the time.

use tokio::time::Instant;

use super::Activation;
use crate::live::Rules;
use crate::topology::Slots;

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
