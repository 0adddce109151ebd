//! `GET /status`: every data center and service as healthy, degraded or
//! dark over the last few seconds, and the scenarios active now. A read:
//! it computes from the model, the rules in force and the counters.

use std::time::SystemTime;

use axum::extract::State;
use axum::Json;

use super::{api, AdminState};
use crate::status;

pub(super) async fn status(State(state): State<AdminState>) -> Json<api::Status> {
    Json(snapshot(&state).await)
}

/// The status now, as `GET /status` answers it and `GET /stream` pushes it.
pub(super) async fn snapshot(state: &AdminState) -> api::Status {
    // The active scenarios exactly as `GET /faults` shows them, guards
    // included.
    let active = super::list(State(state.clone())).await.0.active;
    let model = state.control.model();
    let rules = state.engine.live().load();
    let datacenters = status::datacenters(
        &model,
        &rules,
        state.control.stats(),
        status::WINDOW,
        |fault| api::ServiceFault {
            action: super::view::action(fault),
            scenario: fault.scenario.to_string(),
            index: fault.index,
        },
    );
    api::Status {
        at: super::timestamp(SystemTime::now()),
        window: super::human(status::WINDOW),
        datacenters,
        active,
    }
}
