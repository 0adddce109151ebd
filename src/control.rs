//! The one path by which the running proxy changes. [`Control::apply`]
//! takes [`Change`]s (a service added, replaced or removed, a plan's
//! scenarios) and performs them: every new listener is bound first, so a
//! taken port refuses the whole change and nothing changes; then accept
//! loops are handed over, started and stopped; then the engine gets the
//! new scenarios and rule slots. A plan reload is a [`diff`] followed by
//! this apply; an API that creates services at runtime calls it too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Plan};
use crate::engine::Engine;
use crate::listen::Clients;
use crate::log_limit::LogLimit;
use crate::metrics;
use crate::model::{diff, Change, Connections, Model, Refusal, RunningService};
use crate::proxy::limits::OpenConnections;
use crate::proxy::{self, ServiceContext, ServiceTls};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::topology::{Protocol, Service};

mod outcome;

pub use outcome::{ApplyError, ReloadError, Reloaded, StartError};

/// A cheap handle to the running services; clones share them.
#[derive(Debug, Clone)]
pub struct Control(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The plan file [`Control::reload`] re-reads.
    source: Option<PathBuf>,
    engine: Engine,
    /// Every service's counters; a service keeps its own across changes.
    stats: Stats,
    shutdown: Shutdown,
    /// The accept loop of each running service. Its lock makes changes
    /// one at a time; readers use `model` and never wait on it.
    loops: tokio::sync::Mutex<Vec<AcceptLoop>>,
    /// What runs now, swapped whole after each change.
    model: ArcSwap<Model>,
}

/// One service's accept loop and what its connections share.
#[derive(Debug)]
struct AcceptLoop {
    name: Arc<str>,
    /// Its connections open now, counted against `max_connections`; a kept
    /// service's new accept loop goes on counting from here.
    open: Arc<OpenConnections>,
    /// Stops the accept loop, which hands its listener back.
    stop: CancellationToken,
    /// Closes the service's open connections (a child of the hard stop).
    cut: CancellationToken,
    /// Its TLS as built when it started, for a renewed accept loop.
    tls: ServiceTls,
    task: JoinHandle<Option<TcpListener>>,
}

/// What a service's connections share across a handover: the token that
/// cuts them and their count.
type Shared = (CancellationToken, Arc<OpenConnections>);

impl AcceptLoop {
    /// Stops the accept loop and takes its listener back.
    async fn stop(self) -> (Option<TcpListener>, Shared) {
        self.stop.cancel();
        let listener = self.task.await.ok().flatten();
        (listener, (self.cut, self.open))
    }
}

/// Binds a listener at `addr` and says where it is bound (the real port
/// when `addr` said 0).
pub(crate) fn bind(addr: SocketAddr, what: &str) -> Result<(TcpListener, SocketAddr), StartError> {
    let error = |source| StartError::Bind {
        what: what.to_owned(),
        addr,
        source,
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    let listener = socket.listen(1024).map_err(error)?;
    let bound = listener.local_addr().map_err(error)?;
    Ok((listener, bound))
}

fn service_what(service: &Service) -> String {
    format!("service `{}`", service.name)
}

impl Control {
    /// Serves `plan`'s services on `listeners`, bound in plan order, and
    /// returns the handle that changes them. `source` is the plan file
    /// that [`Control::reload`] re-reads.
    pub(crate) fn start(
        plan: Arc<Plan>,
        listeners: Vec<(TcpListener, SocketAddr)>,
        source: Option<PathBuf>,
        engine: Engine,
        stats: Stats,
        shutdown: Shutdown,
    ) -> Result<Control, StartError> {
        let (listeners, bound): (Vec<_>, Vec<_>) = listeners.into_iter().unzip();
        let model = Model::new(plan, &bound);
        let tls = built_tls(model.services().iter().map(|s| &*s.service))?;
        let control = Control(Arc::new(Inner {
            source,
            engine,
            stats,
            shutdown,
            loops: tokio::sync::Mutex::default(),
            model: ArcSwap::from_pointee(model.clone()),
        }));
        let loops = (model.services().iter().zip(listeners).zip(tls))
            .map(|((running, listener), tls)| {
                control.spawn(&model, running, listener, tls, control.fresh())
            })
            .collect();
        *control
            .0
            .loops
            .try_lock()
            .expect("nothing else has the control yet") = loops;
        Ok(control)
    }

    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    /// Every service's counters.
    pub fn stats(&self) -> &Stats {
        &self.0.stats
    }

    /// What runs now. A snapshot: later changes make a new one.
    pub fn model(&self) -> Arc<Model> {
        self.0.model.load_full()
    }

    /// Where a running service listens now, by name.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.0.model.load().service(name).map(|s| s.bound)
    }

    /// Performs `changes` (see the module docs); `by` names who asked, for
    /// the log and the history of lifted scenarios. Returns the active
    /// scenarios lifted because the new scenarios no longer have them.
    pub async fn apply(&self, changes: Vec<Change>, by: &str) -> Result<Vec<String>, ApplyError> {
        let mut loops = self.0.loops.lock().await;
        if self.0.shutdown.draining.is_cancelled() {
            return Err(ApplyError::ShuttingDown);
        }
        self.apply_locked(&mut loops, &changes, by)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Conflict(why) => ApplyError::Conflict(why),
                Refusal::AdminListen { from, to } => ApplyError::Conflict(format!(
                    "[admin] listen cannot move from {from} to {to} while running"
                )),
                Refusal::Bind(e) => ApplyError::Bind(e),
            })
    }

    /// Re-reads the plan file and applies it, as `POST /reload` does.
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let path = self.0.source.clone().ok_or(ReloadError::NoSource)?;
        // Reading files and certificates blocks; keep it off the thread
        // that accepts connections and serves the admin API.
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let plan = loaded
            .map_err(|e| ReloadError::Conflict(format!("loading the plan failed: {e}")))?
            .map_err(ReloadError::Plan)?;
        self.reload_plan(plan, by).await
    }

    /// Applies a validated plan: the [`diff`] of the running model and the
    /// plan, then its changes.
    pub async fn reload_plan(&self, plan: Plan, by: &str) -> Result<Reloaded, ReloadError> {
        let mut loops = self.0.loops.lock().await;
        if self.0.shutdown.draining.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        let diff = diff(&self.model(), Arc::new(plan)).map_err(Refusal::or_bind)?;
        let lifted = self.apply_locked(&mut loops, &diff.changes, by).await?;
        let report = Reloaded {
            kept: diff.kept,
            changed: diff.changed,
            added: diff.added,
            removed: diff.removed,
            lifted,
            warnings: diff.warnings,
        };
        tracing::info!(
            by,
            kept = ?report.kept,
            changed = ?report.changed,
            added = ?report.added,
            removed = ?report.removed,
            lifted = ?report.lifted,
            "plan reloaded"
        );
        for warning in &report.warnings {
            tracing::warn!("{warning}");
        }
        Ok(report)
    }

    /// The apply itself, with the change lock held.
    async fn apply_locked(
        &self,
        loops: &mut Vec<AcceptLoop>,
        changes: &[Change],
        by: &str,
    ) -> Result<Vec<String>, Refusal<StartError>> {
        let current = self.model();
        // Build what the new services need, then bind their listeners,
        // before anything changes.
        let starting = changes.iter().filter_map(|change| match change {
            Change::Add(service) | Change::Replace { with: service, .. } => Some(&**service),
            Change::Remove(_) | Change::Scenarios(_) | Change::Access(_) => None,
        });
        let mut tls = built_tls(starting).map_err(|e| Refusal::Conflict(e.to_string()))?;
        let mut listeners = Vec::new();
        let mut next = current.next(changes, |service| {
            let (listener, bound) = bind(service.listen, &service_what(service))?;
            listeners.push(listener);
            Ok(bound)
        })?;

        // Hand listeners over, start and stop accept loops, in change order.
        let mut old: Vec<Option<AcceptLoop>> =
            std::mem::take(loops).into_iter().map(Some).collect();
        // None when the service's accept loop had ended (see below).
        let mut take = |name: &str| {
            old.iter_mut()
                .find(|l| l.as_ref().is_some_and(|l| &*l.name == name))
                .and_then(Option::take)
        };
        let mut listeners = listeners.into_iter();
        let mut tls = tls.drain(..);
        // Services nothing serves any more, which the model drops.
        let mut ended = Vec::new();
        for change in changes {
            let (service, listener, shared) = match change {
                Change::Add(service) => {
                    let listener = listeners.next().expect("one listener per added service");
                    (service, Some(listener), self.fresh())
                }
                Change::Replace {
                    name,
                    with,
                    connections,
                } => {
                    let (listener, shared) = match take(name) {
                        Some(accepting) => accepting.stop().await,
                        None => (None, self.fresh()),
                    };
                    let shared = match connections {
                        Connections::Keep => shared,
                        Connections::Close => {
                            shared.0.cancel();
                            self.fresh()
                        }
                    };
                    (with, listener, shared)
                }
                Change::Remove(name) => {
                    if let Some(accepting) = take(name) {
                        let (listener, (cut, _)) = accepting.stop().await;
                        drop(listener);
                        cut.cancel();
                    }
                    continue;
                }
                Change::Scenarios(_) | Change::Access(_) => continue,
            };
            let tls = tls.next().expect("one TLS per started service");
            let Some(listener) = listener else {
                // Shutdown started meanwhile, or the accept loop had ended:
                // nothing serves the service, so its connections go too.
                shared.0.cancel();
                ended.push(Arc::clone(&service.name));
                continue;
            };
            let running = next
                .service(&service.name)
                .expect("the model runs every service it was given");
            loops.push(self.spawn(&next, running, listener, tls, shared));
        }
        // New scenarios may hit the others with new faults: renew their
        // accept loops too (their connections stay), so their metrics know
        // every fault that can hit them.
        let renew = changes.iter().any(|c| matches!(c, Change::Scenarios(_)));
        for untouched in old.into_iter().flatten() {
            if !renew {
                loops.push(untouched);
                continue;
            }
            let (name, tls) = (Arc::clone(&untouched.name), untouched.tls.clone());
            let (listener, shared) = untouched.stop().await;
            let (Some(listener), Some(running)) = (listener, next.service(&name)) else {
                shared.0.cancel();
                ended.push(name);
                continue;
            };
            loops.push(self.spawn(&next, running, listener, tls, shared));
        }

        for name in ended {
            next.forget(&name);
        }
        let (plan, slots) = (Arc::clone(next.plan()), next.slots());
        let engine_sees_a_change = !Arc::ptr_eq(current.plan(), &plan) || current.slots() != slots;
        self.0.model.store(Arc::new(next));
        Ok(if engine_sees_a_change {
            self.0.engine.replace_plan(plan, slots, by)
        } else {
            Vec::new()
        })
    }

    /// A fresh cut token and connection count, for a service whose
    /// connections share nothing with any before.
    fn fresh(&self) -> Shared {
        (self.0.shutdown.hard_stop.child_token(), Arc::default())
    }

    /// Starts the accept loop of `running` (of `model`) on `listener`.
    fn spawn(
        &self,
        model: &Model,
        running: &RunningService,
        listener: TcpListener,
        tls: ServiceTls,
        (cut, open): Shared,
    ) -> AcceptLoop {
        let service = &running.service;
        tracing::info!(
            service = %service.name,
            datacenter = %service.datacenter,
            protocol = service.protocol.name(),
            listen = %running.bound,
            upstream = %service.upstream,
            "service listening"
        );
        // The faults that can hit it, matched by name: a service added at
        // runtime is not in the plan the scenarios come from.
        let plan = model.plan();
        let hits = |fault: &&crate::fault::Fault| {
            let targets = fault.targets.iter();
            targets
                .map(|id| &plan.topology.services[id.index()].name)
                .any(|name| *name == service.name)
        };
        let faults = plan
            .scenarios
            .iter()
            .flat_map(|s| s.faults.iter().map(|f| &**f));
        let context = Arc::new(ServiceContext {
            service: Arc::clone(service),
            slot: running.slot,
            tls: tls.clone(),
            live: Arc::clone(self.0.engine.live()),
            metrics: metrics::ServiceMetrics::new(&self.0.stats, service, faults.filter(hits)),
            open: Arc::clone(&open),
            failures: LogLimit::new(proxy::LOG_FAILURES_EVERY),
        });
        // The service's connections stop at the hard stop, or earlier when
        // a change removes or replaces the service.
        let shutdown = Shutdown {
            hard_stop: cut.clone(),
            ..self.0.shutdown.clone()
        };
        let stop = CancellationToken::new();
        let clients = Clients::new(listener, Arc::clone(&service.name), stop.clone())
            .or_drain(shutdown.draining.clone());
        // Accept loops are not tracked: the tracker counts connections.
        let task = match service.protocol {
            Protocol::Http => tokio::spawn(proxy::http::serve(clients, context, shutdown)),
            Protocol::Tcp => tokio::spawn(proxy::tcp::serve(clients, context, shutdown)),
        };
        AcceptLoop {
            name: Arc::clone(&service.name),
            open,
            stop,
            cut,
            tls,
            task,
        }
    }
}

/// The TLS of each service, built from its data, in order.
fn built_tls<'a>(
    services: impl Iterator<Item = &'a Service>,
) -> Result<Vec<ServiceTls>, StartError> {
    services
        .map(|service| {
            ServiceTls::build(service).map_err(|source| StartError::Tls {
                what: service_what(service),
                source,
            })
        })
        .collect()
}
