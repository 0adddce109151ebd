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
//! - [`tls`] reads PEM files into data and builds rustls configurations.
//! - [`probe`] checks before a game day that every upstream answers.
//! - [`model`] is what runs: services with their listeners' addresses and
//!   rule slots, and the scenarios in force; [`model::diff`] turns a
//!   re-read plan into [`model::Change`]s, without sockets.
//! - [`control`] is the one path by which the running proxy changes: it
//!   binds, starts and stops accept loops, and updates the engine.
//!
//! Layers, each using only those below it: `admin` → `control` →
//! `engine`, `proxy`, `model` → `fault`, `topology`, `config`. `running`
//! wires them: [`start`] binds every listener of a plan and returns a
//! [`Running`] proxy, whose [`Control`] reloads the plan.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod control;
pub mod demo;
pub mod engine;
pub mod fault;
mod log_limit;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod proxy;
pub mod shutdown;
pub mod stats;
pub mod tls;
pub mod topology;
pub mod workers;

mod running;

pub use control::{Control, ReloadError, Reloaded, StartError};
pub use running::{start, start_reloadable, start_with, Running};
pub use workers::Workers;
