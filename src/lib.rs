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
//! - [`stats`] keeps every service's numbers (atomics the data plane adds
//!   to) and reads them as rates and quantiles over a window; `/metrics`
//!   renders the same numbers.
//! - [`shutdown`] drains connections; [`demo`] runs stand-in upstreams.
//! - [`workers`] runs client connections on threads with a single-threaded
//!   runtime each.
//! - [`tls`] turns PEM files into rustls configurations.
//! - [`probe`] checks before a game day that every upstream answers.
//!
//! [`start`] binds every listener of a plan and returns a [`Running`] proxy;
//! [`Reloader`] applies a re-read plan to it.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod engine;
pub mod fault;
mod log_limit;
pub mod metrics;
pub mod probe;
pub mod proxy;
pub mod shutdown;
pub mod stats;
pub mod tls;
pub mod topology;
pub mod workers;

mod running;

pub use running::{
    start, start_reloadable, start_with, ReloadError, Reloaded, Reloader, Running, StartError,
};
pub use workers::Workers;
