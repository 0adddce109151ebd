//! A started firedrill: every service's listener and accept loop, the admin
//! API and the engine, and plan reload.
//!
//! # Reload
//! A reloaded plan is validated whole before anything changes. Then, per
//! service:
//! - **kept**: same name, protocol, listen and upstream (and the same
//!   upstream certificate check, if any). Its listener and
//!   open connections stay; new connections get its new settings. It keeps
//!   its rule slot, so open connections keep obeying the faults.
//! - **changed**: the listen address stays but the service behind it is
//!   another (renamed, other upstream or protocol). The listener is handed
//!   over; its open connections are closed, since they lead where the plan
//!   no longer points.
//! - **added**: bound before anything else changes, so a taken port fails
//!   the reload as a whole.
//! - **removed**: the listener closes and its connections are closed.
//!
//! Active scenarios the new plan still has keep running; the others are
//! lifted (see [`Engine::replace_plan`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{self, Plan};
use crate::engine::Engine;
use crate::fault::live::{Live, Rules};
use crate::log_limit::LogLimit;
use crate::proxy::limits::OpenConnections;
use crate::proxy::{self, ServiceContext};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::topology::{Protocol, Service, Upstream};
use crate::workers::Workers;
use crate::{admin, metrics};

/// Why firedrill could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} for {what}: {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this firedrill was started without a plan file, so there is nothing to re-read")]
    NoSource,
    #[error("the plan is invalid; nothing changed:\n{0}")]
    Plan(#[source] config::Error),
    #[error("{0}; nothing changed")]
    Bind(#[source] StartError),
    #[error("{0}; nothing changed")]
    Conflict(String),
    #[error("[admin] listen changed from {from} to {to}, which only a restart can apply; nothing changed")]
    AdminListen { from: SocketAddr, to: SocketAddr },
    #[error("firedrill is shutting down")]
    ShuttingDown,
}

/// What a reload did, service by service.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Reloaded {
    /// Services that stayed as they were; their connections stayed open.
    pub kept: Vec<String>,
    /// Services whose listener now leads somewhere else; their open
    /// connections were closed.
    pub changed: Vec<String>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Active scenarios the new plan no longer has.
    pub lifted: Vec<String>,
    /// The new plan's own warnings, located as `file:line:column: ...`,
    /// and settings that only apply on restart.
    pub warnings: Vec<String>,
}

/// A started firedrill: its bound addresses and a handle to stop it.
/// Dropping it stops everything at once, as [`Running::shutdown`] does at
/// its deadline: connections on worker threads would otherwise outlive it.
#[derive(Debug)]
pub struct Running {
    admin: SocketAddr,
    services: Reloader,
    engine: Engine,
    shutdown: Shutdown,
    _stop: StopOnDrop,
}

/// Stops accepting and cuts every connection, the admin API and the
/// engine when dropped.
#[derive(Debug)]
struct StopOnDrop(Shutdown);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.draining.cancel();
        self.0.hard_stop.cancel();
    }
}

impl Running {
    /// Where the admin API listens (the real port when the plan said 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where a service listens now, by plan name.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.services
            .0
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, addr)| *addr)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Every service's numbers, as `/metrics` shows them, readable as
    /// rates and quantiles over a window.
    pub fn stats(&self) -> &Stats {
        &self.services.0.stats
    }

    /// Connection tasks still running: client connections and the
    /// upstream connections they hold. 0 once everything has closed.
    pub fn connection_tasks(&self) -> usize {
        self.shutdown.tracker.len()
    }

    /// Re-reads the plan file and applies it, as `POST /reload` does.
    pub fn reloader(&self) -> &Reloader {
        &self.services
    }

    /// Stops accepting, closes at once what a blackhole holds (it can never
    /// finish), lets other in-flight work finish for up to `grace`, then
    /// closes what is left. Returns how many tasks had to be cut.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.services.0.live.drain();
        self.shutdown.drain(grace).await
    }
}

/// Applies reloaded plans; clones share the running services.
#[derive(Debug, Clone)]
pub struct Reloader(Arc<Services>);

#[derive(Debug)]
struct Services {
    /// The plan file `POST /reload` re-reads.
    source: Option<PathBuf>,
    engine: Engine,
    live: Arc<Live>,
    shutdown: Shutdown,
    /// One reload at a time.
    running: tokio::sync::Mutex<Vec<RunningService>>,
    /// The next unused rule slot; slots are never reused, so connections
    /// of a service that is gone never see another service's faults.
    next_slot: AtomicUsize,
    /// The admin settings as the plan firedrill started with declared them;
    /// they apply on restart only.
    admin: config::Admin,
    /// Bound addresses by service name, for [`Running::service_addr`].
    addresses: Mutex<Vec<(Arc<str>, SocketAddr)>>,
    stats: Stats,
}

/// One service's accept loop and what a reload compares it by.
#[derive(Debug)]
struct RunningService {
    name: Arc<str>,
    protocol: Protocol,
    /// The listen address as the plan wrote it (port 0 stays 0).
    declared: SocketAddr,
    bound: SocketAddr,
    upstream: Upstream,
    /// How the upstream's certificate is checked: skipped or not, and for
    /// which name. Loosening or moving it is not "the same service".
    upstream_trust: Option<(bool, ServerName<'static>)>,
    slot: usize,
    /// Its connections open now, counted against `max_connections`; a kept
    /// service's new accept loop goes on counting from here.
    open: Arc<OpenConnections>,
    /// Stops the accept loop, which hands its listener back.
    stop: CancellationToken,
    /// Closes the service's open connections (a child of the hard stop).
    cut: CancellationToken,
    task: JoinHandle<Option<TcpListener>>,
}

impl RunningService {
    /// Whether `service` (as the plan declares it) listens where this does:
    /// the same declared address, or the port this one was given for 0. A
    /// port-0 listener only matches the service of the same name.
    fn same_listener(&self, service: &Service) -> bool {
        if service.listen.port() == 0 {
            self.declared == service.listen && self.name == service.name
        } else {
            self.declared == service.listen || self.bound == service.listen
        }
    }

    /// Whether `service` is this very service, so its connections may stay.
    fn same_service(&self, service: &Service) -> bool {
        self.same_listener(service)
            && self.name == service.name
            && self.protocol == service.protocol
            && self.upstream == service.upstream
            && self.upstream_trust == trust(service)
    }

    /// Stops the accept loop and takes its listener back, with what its
    /// connections share: the token that cuts them and their count.
    async fn stop(
        self,
    ) -> (
        Option<TcpListener>,
        (CancellationToken, Arc<OpenConnections>),
    ) {
        self.stop.cancel();
        let listener = self.task.await.ok().flatten();
        (listener, (self.cut, self.open))
    }
}

/// How `service` checks its upstream's certificate, if it speaks TLS to it.
fn trust(service: &Service) -> Option<(bool, ServerName<'static>)> {
    service
        .upstream_tls
        .as_ref()
        .map(|tls| (tls.skip_verify, tls.server_name.clone()))
}

/// Binds a listener at `addr` and replaces `addr` with the bound address
/// (the real port when the plan said 0).
fn bind(addr: &mut SocketAddr, what: &str) -> Result<TcpListener, StartError> {
    let wanted = *addr;
    let error = |source| StartError::Bind {
        what: what.to_owned(),
        addr: wanted,
        source,
    };
    let socket = if wanted.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(wanted).map_err(error)?;
    let listener = socket.listen(1024).map_err(error)?;
    *addr = listener.local_addr().map_err(error)?;
    Ok(listener)
}

/// Binds every listener of `plan`, then serves the admin API and every
/// service until [`Running::shutdown`]. Must run inside a tokio runtime.
/// `POST /reload` answers that there is no plan file to re-read.
pub async fn start(plan: Plan) -> Result<Running, StartError> {
    start_with(plan, None, Workers::current()).await
}

/// Like [`start`], for a plan read from `path`: `POST /reload` and
/// [`Reloader::reload`] re-read that file.
pub async fn start_reloadable(plan: Plan, path: PathBuf) -> Result<Running, StartError> {
    start_with(plan, Some(path), Workers::current()).await
}

/// Like [`start`], or [`start_reloadable`] when `source` is given, with
/// client connections running on `workers`.
pub async fn start_with(
    mut plan: Plan,
    source: Option<PathBuf>,
    workers: Workers,
) -> Result<Running, StartError> {
    let stats = Stats::default();
    let exporter = metrics::Exporter::new(stats.clone());
    let declared_admin = plan.admin.clone();
    // Bind everything first, so a taken port fails start-up as a whole, and
    // record the bound addresses so the API reports real ports, not 0.
    let admin_listener = bind(&mut plan.admin.listen, "the admin API")?;
    let mut listeners = Vec::new();
    for service in &mut plan.topology.services {
        let declared = service.listen;
        let what = format!("service `{}`", service.name);
        listeners.push((declared, bind(&mut service.listen, &what)?));
    }
    let plan = Arc::new(plan);
    let live = Arc::new(Live::on(Rules::empty(plan.topology.slot_count()), &workers));
    let engine = Engine::new(Arc::clone(&plan), Arc::clone(&live));
    let shutdown = Shutdown {
        workers,
        ..Shutdown::default()
    };
    let services = Arc::new(Services {
        source,
        engine: engine.clone(),
        live,
        shutdown: shutdown.clone(),
        running: tokio::sync::Mutex::new(Vec::new()),
        next_slot: AtomicUsize::new(plan.topology.slot_count()),
        admin: declared_admin,
        addresses: Mutex::new(Vec::new()),
        stats: stats.clone(),
    });
    {
        let mut running = services.running.lock().await;
        for (service, (declared, listener)) in plan.topology.services.iter().zip(listeners) {
            let fresh = (shutdown.hard_stop.child_token(), Arc::default());
            running.push(services.spawn(&plan, service, declared, listener, fresh));
        }
        services.record_addresses(&running);
    }
    let admin = plan.admin.listen;
    tokio::spawn(stats.run(shutdown.hard_stop.clone()));
    let reloader = Reloader(services);
    let router = admin::router(admin::AdminState {
        engine: engine.clone(),
        metrics: exporter,
        reloader: reloader.clone(),
    });
    // The admin API and the engine outlive the drain, so faults can still
    // be lifted (and still expire) while connections finish.
    admin::serve(
        admin_listener,
        router,
        &plan.admin,
        shutdown.hard_stop.clone(),
    );
    tokio::spawn(engine.clone().run(shutdown.hard_stop.clone()));
    Ok(Running {
        admin,
        services: reloader,
        engine,
        _stop: StopOnDrop(shutdown.clone()),
        shutdown,
    })
}

impl Services {
    /// Starts the accept loop of `service` (of `plan`) on `listener`.
    fn spawn(
        &self,
        plan: &Plan,
        service: &Service,
        declared: SocketAddr,
        listener: TcpListener,
        (cut, open): (CancellationToken, Arc<OpenConnections>),
    ) -> RunningService {
        tracing::info!(
            service = %service.name,
            datacenter = %service.datacenter,
            protocol = service.protocol.name(),
            listen = %service.listen,
            upstream = %service.upstream,
            "service listening"
        );
        let context = Arc::new(ServiceContext {
            service: Arc::new(service.clone()),
            live: Arc::clone(&self.live),
            metrics: metrics::ServiceMetrics::new(
                &self.stats,
                service,
                plan.scenarios
                    .iter()
                    .flat_map(|s| s.faults.iter().map(|f| &**f)),
            ),
            open: Arc::clone(&open),
            failures: LogLimit::new(proxy::LOG_FAILURES_EVERY),
        });
        // The service's connections stop at the hard stop, or earlier when a
        // reload removes or replaces the service.
        let shutdown = Shutdown {
            hard_stop: cut.clone(),
            ..self.shutdown.clone()
        };
        let stop = CancellationToken::new();
        // Accept loops are not tracked: the tracker counts connections.
        let task = match service.protocol {
            Protocol::Http => tokio::spawn(proxy::http::serve(
                listener,
                context,
                shutdown,
                stop.clone(),
            )),
            Protocol::Tcp => {
                tokio::spawn(proxy::tcp::serve(listener, context, shutdown, stop.clone()))
            }
        };
        RunningService {
            name: Arc::clone(&service.name),
            protocol: service.protocol,
            declared,
            bound: service.listen,
            upstream: service.upstream.clone(),
            upstream_trust: trust(service),
            slot: service.slot,
            open,
            stop,
            cut,
            task,
        }
    }

    fn record_addresses(&self, running: &[RunningService]) {
        *self.addresses.lock().unwrap_or_else(|e| e.into_inner()) = running
            .iter()
            .map(|r| (Arc::clone(&r.name), r.bound))
            .collect();
    }
}

impl Reloader {
    /// Re-reads the plan file and applies it; `by` names who asked, for the
    /// log and the history of lifted scenarios.
    pub async fn reload(&self, by: &str) -> Result<Reloaded, ReloadError> {
        let path = self.0.source.clone().ok_or(ReloadError::NoSource)?;
        // Reading files and certificates blocks; keep it off the thread
        // that accepts connections and serves the admin API.
        let loaded = tokio::task::spawn_blocking(move || config::load(&path)).await;
        let plan = loaded
            .map_err(|e| ReloadError::Conflict(format!("loading the plan failed: {e}")))?
            .map_err(ReloadError::Plan)?;
        self.apply(plan, by).await
    }

    /// Applies a validated plan (see the module docs for what stays).
    pub async fn apply(&self, mut plan: Plan, by: &str) -> Result<Reloaded, ReloadError> {
        let services = &self.0;
        let mut running = services.running.lock().await;
        if services.shutdown.draining.is_cancelled() {
            return Err(ReloadError::ShuttingDown);
        }
        // The admin API keeps its socket and TLS; its tokens and open_reads
        // follow the plan, so a leaked token can be revoked without a
        // restart. The plan was validated against its own listen address,
        // so that must be the one in use.
        if plan.admin.listen != services.admin.listen {
            return Err(ReloadError::AdminListen {
                from: services.admin.listen,
                to: plan.admin.listen,
            });
        }
        let mut report = Reloaded::default();
        report.warnings.extend(plan.warnings.iter().map(|warning| {
            let at = format!("{}:{}:{}", warning.file, warning.line, warning.column);
            format!("{at}: {}", warning.message)
        }));
        let current = services.engine.plan().admin.clone();
        if plan.admin.tls.is_some() || current.tls.is_some() {
            report.warnings.push(
                "[admin] tls is read at start only; restart firedrill to apply changes to it"
                    .to_owned(),
            );
        }
        plan.admin.listen = current.listen;
        plan.admin.tls = current.tls;

        // Decide each service's fate and bind new listeners before anything
        // changes: a port that is taken fails the reload as a whole.
        enum Fate {
            /// Index into `running`; its connections stay.
            Keep(usize),
            /// Index into `running`, whose listener it takes over.
            Replace(usize),
            New(TcpListener),
        }
        let mut next_slot = services.next_slot.load(Ordering::Relaxed);
        let mut fates = Vec::new();
        let mut declared = Vec::new();
        // Which new service took each running listener: two may not.
        let mut claimed: Vec<Option<Arc<str>>> = vec![None; running.len()];
        for service in &mut plan.topology.services {
            declared.push(service.listen);
            let matched = running.iter().position(|r| r.same_listener(service));
            if let Some(i) = matched {
                if let Some(other) = &claimed[i] {
                    return Err(ReloadError::Conflict(format!(
                        "services `{other}` and `{}` both take the listener of `{}` on {}; give one of them another port",
                        service.name, running[i].name, running[i].bound
                    )));
                }
                claimed[i] = Some(Arc::clone(&service.name));
            }
            let fate = match matched {
                Some(i) if running[i].same_service(service) => {
                    service.slot = running[i].slot;
                    service.listen = running[i].bound;
                    report.kept.push(service.name.to_string());
                    Fate::Keep(i)
                }
                Some(i) => {
                    service.slot = next_slot;
                    next_slot += 1;
                    service.listen = running[i].bound;
                    report.changed.push(service.name.to_string());
                    Fate::Replace(i)
                }
                None => {
                    service.slot = next_slot;
                    next_slot += 1;
                    let what = format!("service `{}`", service.name);
                    let listener = bind(&mut service.listen, &what).map_err(ReloadError::Bind)?;
                    report.added.push(service.name.to_string());
                    Fate::New(listener)
                }
            };
            fates.push(fate);
        }
        services.next_slot.store(next_slot, Ordering::Relaxed);
        let plan = Arc::new(plan);
        report.lifted = services.engine.replace_plan(Arc::clone(&plan), by);

        // Take every old accept loop down (kept and replaced ones hand their
        // listener over), then start the new ones.
        let mut old: Vec<Option<RunningService>> = std::mem::take(&mut *running)
            .into_iter()
            .map(Some)
            .collect();
        for (service, (fate, declared)) in plan
            .topology
            .services
            .iter()
            .zip(fates.into_iter().zip(declared))
        {
            let fresh = || (services.shutdown.hard_stop.child_token(), Arc::default());
            let (listener, shared) = match fate {
                Fate::Keep(i) => {
                    let previous = old[i].take().expect("each old service is matched once");
                    previous.stop().await
                }
                Fate::Replace(i) => {
                    let previous = old[i].take().expect("each old service is matched once");
                    let (listener, (cut, _)) = previous.stop().await;
                    cut.cancel();
                    (listener, fresh())
                }
                Fate::New(listener) => (Some(listener), fresh()),
            };
            let Some(listener) = listener else {
                // Shutdown started meanwhile, or the accept loop had ended:
                // nothing serves the service, so its connections go too.
                shared.0.cancel();
                continue;
            };
            running.push(services.spawn(&plan, service, declared, listener, shared));
        }
        for removed in old.into_iter().flatten() {
            report.removed.push(removed.name.to_string());
            let (listener, (cut, _)) = removed.stop().await;
            drop(listener);
            cut.cancel();
        }
        services.record_addresses(&running);
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
}
