//! Reading `GET /status` answers (from the API or `firedrill status
//! --json`) in tests.

use firedrill::admin::api;

/// The state (`healthy`, `degraded`, `dark`) of `datacenter` in `status`;
/// the test fails if it is not there.
pub fn state_of<'s>(status: &'s api::Status, datacenter: &str) -> &'s str {
    let dc = status.datacenters.iter().find(|dc| dc.name == datacenter);
    &dc.unwrap_or_else(|| panic!("no {datacenter}")).state
}
