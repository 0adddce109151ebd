//! Checks of the plan's `[safety]` table: `max_active` at least 1, and
//! allowed data centers that exist.

use std::sync::Arc;

use super::super::raw;
use super::guard::Names;
use super::Report;
use crate::config::Safety;

/// The `[safety]` table: `max_active` at least 1, allowed data centers
/// that exist.
pub(super) fn safety(raw: &raw::Safety, names: &Names<'_>, report: Report<'_>) -> Safety {
    let max_active = raw.max_active.as_ref().and_then(|max| {
        if *max.get_ref() == 0 {
            report(
                max.span(),
                "[safety] max_active = 0 would refuse every activation; give at least 1, or remove it for no limit".to_owned(),
            );
            return None;
        }
        Some(*max.get_ref() as usize)
    });
    let allow_datacenters = raw.allow_datacenters.as_ref().map(|allowed| {
        let topology = names.topology;
        let known: Vec<&str> = topology.datacenters.iter().map(|d| &*d.name).collect();
        for name in allowed.get_ref() {
            if !known.contains(&name.get_ref().as_str()) && !names.broken.contains(name.get_ref()) {
                report(
                    name.span(),
                    format!(
                        "[safety] allow_datacenters names unknown datacenter `{}`; known: {}",
                        name.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
        allowed
            .get_ref()
            .iter()
            .map(|n| Arc::from(n.get_ref().as_str()))
            .collect()
    });
    Safety {
        max_active,
        allow_datacenters,
    }
}
