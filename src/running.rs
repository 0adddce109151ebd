//! A started firedrill: wires the engine, the services (through the
//! [`Control`] handle that changes them) and the admin API, and stops them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Plan;
use crate::control::{self, Control, StartError};
use crate::engine::Engine;
use crate::guard::Guards;
use crate::live::{Live, Rules};
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::workers::Workers;
use crate::{admin, metrics, report};

/// A started firedrill: its bound addresses and a handle to stop it.
/// Dropping it stops everything at once, as [`Running::shutdown`] does at
/// its deadline: connections on worker threads would otherwise outlive it.
#[derive(Debug)]
pub struct Running {
    admin: SocketAddr,
    control: Control,
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

    /// Where a service listens now, by name.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.control.service_addr(name)
    }

    pub fn engine(&self) -> &Engine {
        self.control.engine()
    }

    /// Every service's numbers, as `/metrics` shows them, readable as
    /// rates and quantiles over a window.
    pub fn stats(&self) -> &Stats {
        self.control.stats()
    }

    /// Connection tasks still running: client connections and the
    /// upstream connections they hold. 0 once everything has closed.
    pub fn connection_tasks(&self) -> usize {
        self.shutdown.tracker.len()
    }

    /// The handle that adds, changes and removes services and re-reads
    /// the plan, as `POST /reload` does.
    pub fn control(&self) -> &Control {
        &self.control
    }

    /// Stops accepting, closes at once what a blackhole holds (it can never
    /// finish), lets other in-flight work finish for up to `grace`, then
    /// closes what is left. Returns how many tasks had to be cut.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.control.engine().live().drain();
        self.shutdown.drain(grace).await
    }
}

/// Binds every listener of `plan`, then serves the admin API and every
/// service until [`Running::shutdown`]. Must run inside a tokio runtime.
/// `POST /reload` answers that there is no plan file to re-read.
pub async fn start(plan: Plan) -> Result<Running, StartError> {
    start_with(plan, None, Workers::current()).await
}

/// Like [`start`], for a plan read from `path`: `POST /reload` and
/// [`Control::reload`] re-read that file.
pub async fn start_reloadable(plan: Plan, path: PathBuf) -> Result<Running, StartError> {
    start_with(plan, Some(path), Workers::current()).await
}

/// Like [`start`], or [`start_reloadable`] when `source` is given, with
/// client connections running on `workers`.
pub async fn start_with(
    plan: Plan,
    source: Option<PathBuf>,
    workers: Workers,
) -> Result<Running, StartError> {
    let stats = Stats::default();
    let exporter = metrics::Exporter::new(stats.clone());
    // Bind everything first, so a taken port fails start-up as a whole.
    let (admin_listener, admin) = control::bind(plan.admin.listen, "the admin API")?;
    let mut listeners = Vec::new();
    for service in &plan.topology.services {
        let what = format!("service `{}`", service.name);
        listeners.push(control::bind(service.listen, &what)?);
    }
    let plan = Arc::new(plan);
    let live = Arc::new(Live::on(
        Rules::empty(plan.topology.services.len()),
        &workers,
    ));
    let engine = Engine::new(Arc::clone(&plan), live);
    let shutdown = Shutdown {
        workers,
        ..Shutdown::default()
    };
    let control = Control::start(
        Arc::clone(&plan),
        listeners,
        source,
        engine.clone(),
        stats.clone(),
        shutdown.clone(),
    )?;
    let reports = report::Reports::default();
    report::spawn(&reports, &engine, &stats, shutdown.hard_stop.clone());
    tokio::spawn(stats.clone().run(shutdown.hard_stop.clone()));
    let guards = Guards::default();
    let router = admin::router(admin::AdminState {
        engine: engine.clone(),
        metrics: exporter,
        control: control.clone(),
        reports,
        guards: guards.clone(),
    });
    // The admin API and the engine outlive the drain, so faults can still
    // be lifted (and still expire) while connections finish.
    admin::serve(
        admin_listener,
        router,
        &plan.admin,
        shutdown.hard_stop.clone(),
    )
    .map_err(|source| StartError::Tls {
        what: "the admin API".to_owned(),
        source,
    })?;
    // Guards stop with the engine: a drill still draining stays guarded.
    tokio::spawn(guards.run(engine.clone(), stats, shutdown.hard_stop.clone()));
    tokio::spawn(engine.run(shutdown.hard_stop.clone()));
    Ok(Running {
        admin,
        control,
        _stop: StopOnDrop(shutdown.clone()),
        shutdown,
    })
}
