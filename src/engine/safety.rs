//! The plan's `[safety]` lever, checked when a scenario is activated: at
//! most `max_active` scenarios at once, and only faults within
//! `allow_datacenters`. Pure: it reads the plan and what is active.

use crate::config::Plan;
use crate::fault::Scenario;

use super::{Activation, UnknownScenario};

/// Why a scenario was not activated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ActivateError {
    #[error(transparent)]
    Unknown(#[from] UnknownScenario),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// An activation the plan's `[safety]` table does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `max_active` scenarios are active already.
    #[error("[safety] max_active is {max} and {} already active ({}); lift one first", if active.len() == 1 { "one is".to_owned() } else { format!("{} are", active.len()) }, active.join(", "))]
    TooMany { max: usize, active: Vec<String> },
    /// The scenario's faults reach a data center outside
    /// `allow_datacenters`.
    #[error("[safety] allow_datacenters does not include `{datacenter}`, which scenario `{scenario}` would touch; allowed: {}", allowed.join(", "))]
    Outside {
        scenario: String,
        datacenter: String,
        allowed: Vec<String>,
    },
}

/// Whether `scenario` may become active beside `active` under `plan`'s
/// `[safety]` table.
pub(super) fn check<'a>(
    plan: &Plan,
    scenario: &Scenario,
    active: impl Iterator<Item = &'a Activation>,
) -> Result<(), Refused> {
    let safety = &plan.safety;
    if let Some(allowed) = &safety.allow_datacenters {
        let services = &plan.topology.services;
        let touched = (scenario.faults.iter())
            .flat_map(|fault| fault.targets.iter())
            .filter_map(|id| services.get(id.index()));
        for service in touched {
            if !allowed.contains(&service.datacenter) {
                return Err(Refused::Outside {
                    scenario: scenario.name.to_string(),
                    datacenter: service.datacenter.to_string(),
                    allowed: allowed.iter().map(|a| a.to_string()).collect(),
                });
            }
        }
    }
    if let Some(max) = safety.max_active {
        let active: Vec<String> = active.map(|a| a.scenario.name.to_string()).collect();
        if active.len() >= max {
            return Err(Refused::TooMany { max, active });
        }
    }
    Ok(())
}
