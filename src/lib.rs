//! firedrill: a data-center-aware fault-injection proxy for rehearsing
//! blackouts on staging.
//!
//! # Layout
//! - [`config`] loads and validates a TOML plan into a [`config::Plan`]:
//!   the [`topology`] (data centers and services) and the scenarios.
//! - [`fault`] is the fault model and the pure [`fault::decide`]: no
//!   tokio, no sockets, no threads.
//! - [`live`] holds the active rule snapshot the data plane reads, and
//!   wakes open connections when it changes.
//! - [`tls`] reads PEM files into data and builds rustls configurations;
//!   [`fetch`] is the one HTTP/1.1 exchange firedrill's own clients make
//!   (a guard's Prometheus query, the command line's API calls).
//! - [`listen`] is the one accept loop every listener runs (services, admin
//!   API, demo upstreams), and the idle timeout of HTTP connections.
//! - [`body`] is the one wrapper of every body firedrill wraps: byte
//!   counts, timers and rule watches each decide only what a poll gives.
//! - [`stats`] keeps every service's numbers (atomics the data plane adds
//!   to) and reads them as rates and quantiles over a window; [`metrics`]
//!   names every metric and renders the same numbers for `/metrics`.
//! - [`engine`] activates, adopts and lifts scenarios, runs stage timers
//!   and expiry, publishes a new snapshot on every change, and broadcasts
//!   what happens as [`engine::event`]s (`GET /events` reads them).
//! - [`model`] is what runs: services with their listeners' addresses and
//!   rule slots, and the scenarios in force; [`model::diff`] turns a
//!   re-read plan into [`model::Change`]s, without sockets.
//! - [`proxy`] is the data plane: [`proxy::http`] decides per request,
//!   [`proxy::tcp`] per connection, both through `proxy::policy`, the one
//!   way a connection obeys live rules; `proxy::stage` is the ordered
//!   per-direction chain a relayed stream passes through.
//! - [`report`] collects, for every activation that ends, the numbers of
//!   each data center and service before, during and after it, from the
//!   engine's events and [`stats`] captures (`GET /reports`).
//! - [`guard`] evaluates each active scenario's `stop_when` guards about
//!   once a second, from [`stats`] or a Prometheus query, and lifts the
//!   scenario through [`engine::Engine::stop`] when one trips.
//! - [`control`] is the one path by which the running proxy changes: it
//!   binds, starts and stops accept loops, and updates the engine.
//! - [`admin`] is the HTTP API, `/metrics`, and the live status page with
//!   its server-sent event stream, talking to a [`Control`]; [`status`]
//!   reads what runs, the rules in force and the stats as each data
//!   center's and service's state for `GET /status`.
//! - [`shutdown`] drains connections; [`workers`] runs client connections
//!   on threads with a single-threaded runtime each; [`demo`] runs
//!   stand-in upstreams; [`probe`] checks before a game day that every
//!   upstream answers.
//! - [`cli`] is the command line's client of a running firedrill's admin
//!   API (`trigger`, `lift`, `status`, `watch`, `events`, `report`); it
//!   uses only [`admin::api`]'s types, [`tls`] and [`fetch`].
//!
//! Layers, each using only those below it: `admin` → `status` (which
//! writes `admin::api`'s shapes) → `control`, `guard`, `report` →
//! `proxy`, `engine`, `model` → `stats`, `metrics`, `shutdown`, `workers`
//! → `live`, `listen`, `body`, `tls`, `fetch` → `fault`, `topology`,
//! `config`. `running` wires them: [`start`] binds every listener of a
//! plan and returns a [`Running`] proxy, whose [`Control`] reloads the
//! plan.
#![forbid(unsafe_code)]

pub mod admin;
pub mod body;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod engine;
pub mod fault;
pub mod fetch;
pub mod guard;
pub mod listen;
pub mod live;
mod log_limit;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod proxy;
pub mod report;
pub mod shutdown;
pub mod stats;
pub mod status;
pub mod tls;
pub mod topology;
pub mod workers;

mod running;

pub use control::{Control, ReloadError, Reloaded, StartError};
pub use running::{start, start_reloadable, start_with, Running};
pub use workers::Workers;
