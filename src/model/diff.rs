//! A re-read plan against the running model: which services stay, which
//! are replaced, added or removed, as the [`Change`]s that make the model
//! the plan's. Pure, so every rule is tested without sockets:
//! - **kept**: on the same listener, the same service (name, protocol,
//!   upstream and how its certificate is checked: skipped or not, for
//!   which name). Its open connections stay and keep its rule slot; new
//!   connections get its new settings.
//! - **changed**: on the same listener, another service (renamed, or
//!   another upstream, protocol or upstream trust). It takes the listener
//!   over; its open connections are closed.
//! - **added**: on a listener of its own, bound before anything changes.
//! - **removed**: its listener closes and its connections are closed.
//!
//! Two services may not take one listener; `[admin] listen` cannot change
//! (a restart can), and `[admin] tls` applies on restart only.

use std::net::SocketAddr;
use std::sync::Arc;

use super::{Change, Connections, Model, RunningService};
use crate::config::Plan;
use crate::topology::{Service, UpstreamTls};

/// Why changes cannot apply; nothing changed.
#[derive(Debug)]
pub enum Refusal<E = std::convert::Infallible> {
    /// Two changes do not fit together or with what runs.
    Conflict(String),
    /// The plan moves the admin API, which only a restart can do.
    AdminListen { from: SocketAddr, to: SocketAddr },
    /// A new listener could not be bound.
    Bind(E),
}

impl Refusal {
    /// The same refusal, as one that could also have failed to bind.
    pub fn or_bind<E>(self) -> Refusal<E> {
        match self {
            Refusal::Conflict(why) => Refusal::Conflict(why),
            Refusal::AdminListen { from, to } => Refusal::AdminListen { from, to },
            Refusal::Bind(never) => match never {},
        }
    }
}

/// What it takes to run a re-read plan, with what a reload reports.
#[derive(Debug)]
pub struct Diff {
    /// Every change, the plan's `[admin]` access and scenarios last.
    pub changes: Vec<Change>,
    /// Names of the new plan's services, by fate, in plan order.
    pub kept: Vec<String>,
    pub changed: Vec<String>,
    pub added: Vec<String>,
    /// Names of running services the plan no longer has.
    pub removed: Vec<String>,
    /// The plan's own warnings, as `file:line:column: message`, and
    /// settings that only apply on restart.
    pub warnings: Vec<String>,
}

/// The changes that make `model` run `plan`; see the module docs.
pub fn diff(model: &Model, plan: Arc<Plan>) -> Result<Diff, Refusal> {
    let started = model.admin();
    if plan.admin.listen != started.listen {
        return Err(Refusal::AdminListen {
            from: started.listen,
            to: plan.admin.listen,
        });
    }
    let mut warnings: Vec<String> = plan
        .warnings
        .iter()
        .map(|w| format!("{}:{}:{}: {}", w.file, w.line, w.column, w.message))
        .collect();
    if plan.admin.tls.is_some() || started.tls.is_some() {
        warnings.push(
            "[admin] tls is read at start only; restart firedrill to apply changes to it"
                .to_owned(),
        );
    }
    let running = model.services();
    let mut diff = Diff {
        changes: Vec::new(),
        kept: Vec::new(),
        changed: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        warnings,
    };
    // Which new service took each running listener: two may not.
    let mut claimed: Vec<Option<&Arc<str>>> = vec![None; running.len()];
    for service in &plan.topology.services {
        let with = Arc::new(service.clone());
        let Some(i) = running.iter().position(|r| same_listener(r, service)) else {
            diff.added.push(service.name.to_string());
            diff.changes.push(Change::Add(with));
            continue;
        };
        let old = &running[i];
        if let Some(other) = claimed[i].replace(&service.name) {
            return Err(Refusal::Conflict(format!(
                "services `{other}` and `{}` both take the listener of `{}` on {}; give one of them another port",
                service.name, old.service.name, old.bound
            )));
        }
        let connections = if same_service(&old.service, service) {
            diff.kept.push(service.name.to_string());
            Connections::Keep
        } else {
            diff.changed.push(service.name.to_string());
            Connections::Close
        };
        diff.changes.push(Change::Replace {
            name: Arc::clone(&old.service.name),
            with,
            connections,
        });
    }
    for (old, _) in running.iter().zip(claimed).filter(|(_, c)| c.is_none()) {
        diff.removed.push(old.service.name.to_string());
        diff.changes
            .push(Change::Remove(Arc::clone(&old.service.name)));
    }
    diff.changes.push(Change::Access(plan.admin.clone()));
    diff.changes.push(Change::Scenarios(plan));
    Ok(diff)
}

/// Whether `service` (as the plan declares it) listens where `running`
/// does: the same declared address, or the port it was given for 0. A
/// port-0 listener only matches the service of the same name.
fn same_listener(running: &RunningService, service: &Service) -> bool {
    let declared = running.service.listen;
    if service.listen.port() == 0 {
        declared == service.listen && running.service.name == service.name
    } else {
        declared == service.listen || running.bound == service.listen
    }
}

/// Whether `new` on the same listener is the service `old` was, so its
/// connections may stay: they lead where they did, and the upstream's
/// certificate is checked as it was (skipped or not, for the same name).
/// Which CA file is trusted is a setting new connections pick up, like
/// timeouts and limits.
fn same_service(old: &Service, new: &Service) -> bool {
    let check = |service: &Service| {
        let tls = service.upstream_tls.as_ref()?;
        Some(UpstreamTls {
            ca: None,
            ..tls.clone()
        })
    };
    old.name == new.name
        && old.protocol == new.protocol
        && old.upstream == new.upstream
        && check(old) == check(new)
}
