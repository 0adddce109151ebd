//! firedrill: a data-center-aware fault-injection proxy for rehearsing
//! blackouts on staging.
//!
//! # Layout
//! - [`config`] loads and validates a TOML plan into a [`config::Plan`]:
//!   the [`topology`] (data centers and services) and the scenarios.
//! - [`fault`] is the fault model and the pure [`fault::decide`];
//!   [`fault::live`] holds the active rule snapshot the data plane reads.
//! - [`engine`] activates and lifts scenarios, runs stage timers and expiry,
//!   and publishes a new snapshot on every change.
//! - [`proxy`] is the data plane: [`proxy::http`] decides per request,
//!   [`proxy::tcp`] per connection and again whenever the rules change.
//! - [`admin`] is the HTTP API and `/metrics`; [`metrics`] names every metric.
//! - [`shutdown`] drains connections; [`demo`] runs stand-in upstreams.
//! - [`tls`] turns PEM files into rustls configurations.
//!
//! [`start`] binds every listener of a plan and returns a [`Running`] proxy.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod engine;
pub mod fault;
pub mod metrics;
pub mod proxy;
pub mod shutdown;
pub mod tls;
pub mod topology;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Plan;
use crate::engine::Engine;
use crate::fault::live::{Live, Rules};
use crate::proxy::ServiceContext;
use crate::shutdown::Shutdown;
use crate::topology::Protocol;

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

/// A started firedrill: its bound addresses and a handle to stop it.
#[derive(Debug)]
pub struct Running {
    admin: SocketAddr,
    services: Vec<(Arc<str>, SocketAddr)>,
    engine: Engine,
    shutdown: Shutdown,
}

impl Running {
    /// Where the admin API listens (the real port when the plan said 0).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Where a service listens, by plan name.
    pub fn service_addr(&self, name: &str) -> Option<SocketAddr> {
        self.services
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, addr)| *addr)
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Connection tasks still running: client connections and the
    /// upstream connections they hold. 0 once everything has closed.
    pub fn connection_tasks(&self) -> usize {
        self.shutdown.tracker.len()
    }

    /// Stops accepting, lets in-flight work finish for up to `grace`, then
    /// closes what is left. Returns how many tasks had to be cut.
    pub async fn shutdown(self, grace: Duration) -> usize {
        self.shutdown.drain(grace).await
    }
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
pub async fn start(mut plan: Plan) -> Result<Running, StartError> {
    let metrics_handle = metrics::install();
    // Bind everything first, so a taken port fails start-up as a whole, and
    // record the bound addresses so the API reports real ports, not 0.
    let admin_listener = bind(&mut plan.admin.listen, "the admin API")?;
    let mut listeners = Vec::new();
    for service in &mut plan.topology.services {
        let what = format!("service `{}`", service.name);
        listeners.push(bind(&mut service.listen, &what)?);
    }
    let plan = Arc::new(plan);
    let live = Arc::new(Live::new(Rules::empty(plan.topology.services.len())));
    let engine = Engine::new(Arc::clone(&plan), Arc::clone(&live));
    let shutdown = Shutdown::default();
    let mut services = Vec::new();
    for (service, listener) in plan.topology.services.iter().zip(listeners) {
        tracing::info!(
            service = %service.name,
            datacenter = %service.datacenter,
            protocol = service.protocol.name(),
            listen = %service.listen,
            upstream = %service.upstream,
            "service listening"
        );
        services.push((Arc::clone(&service.name), service.listen));
        let context = Arc::new(ServiceContext {
            service: Arc::new(service.clone()),
            live: Arc::clone(&live),
            metrics: metrics::ServiceMetrics::new(
                service,
                plan.scenarios
                    .iter()
                    .flat_map(|s| s.faults.iter().map(|f| &**f)),
            ),
        });
        let handle = shutdown.clone();
        // Listener tasks are not tracked: the tracker counts connections.
        match service.protocol {
            Protocol::Http => tokio::spawn(proxy::http::serve(listener, context, handle)),
            Protocol::Tcp => tokio::spawn(proxy::tcp::serve(listener, context, handle)),
        };
    }
    let admin = plan.admin.listen;
    tracing::info!(listen = %admin, "admin API listening (GET /scenarios, POST /faults/NAME, DELETE /faults, GET /metrics)");
    let router = admin::router(admin::AdminState {
        engine: engine.clone(),
        metrics: metrics_handle,
    });
    // The admin API and the engine outlive the drain, so faults can still
    // be lifted (and still expire) while connections finish.
    let stopped = shutdown.hard_stop.clone();
    tokio::spawn(async move {
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(admin_listener, app)
            .with_graceful_shutdown(stopped.cancelled_owned())
            .await
        {
            tracing::error!("admin API stopped: {e}");
        }
    });
    tokio::spawn(engine.clone().run(shutdown.hard_stop.clone()));
    Ok(Running {
        admin,
        services,
        engine,
        shutdown,
    })
}
