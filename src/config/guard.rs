//! The validated stop conditions of a scenario ([`Guard`]) and the
//! plan-wide [`Safety`] lever. `crate::guard` evaluates guards while their
//! scenario is active; the engine enforces the safety lever on activation.

use std::sync::Arc;
use std::time::Duration;

/// One `[[scenarios.NAME.stop_when]]`: lift the scenario when `measure`
/// reads above `above` for at least `hold`.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// Unique within its scenario.
    pub name: Arc<str>,
    pub measure: Measure,
    /// The threshold; latencies in seconds.
    pub above: f64,
    /// How long the condition must hold before the guard trips (`for`).
    pub hold: Duration,
}

/// What a guard reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// Failed over all HTTP requests of `scope` over `window`.
    ErrorRatio { scope: Scope, window: Duration },
    /// Client-observed p99 latency of `scope` over `window`.
    P99Latency { scope: Scope, window: Duration },
    /// A PromQL instant query on the Prometheus at `url`; it holds while
    /// any sample of the result is above the threshold.
    Prometheus {
        /// The server's base URL: `http://` or `https://`, no query.
        url: http::Uri,
        query: String,
        on_error: OnError,
    },
}

impl Measure {
    /// The name of the measure, as the plan and the API write it.
    pub fn kind(&self) -> &'static str {
        match self {
            Measure::ErrorRatio { .. } => "error_ratio",
            Measure::P99Latency { .. } => "p99_latency",
            Measure::Prometheus { .. } => "prometheus",
        }
    }
}

/// Which services a built-in guard reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every service no fault of the scenario selects.
    Outside,
    DataCenter(Arc<str>),
    Service(Arc<str>),
}

/// What a `prometheus` guard does when its query cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Lift the scenario: a drill nobody can watch is stopped.
    Stop,
    /// Keep it active and show the guard as `error`.
    Continue,
}

/// `[safety]`: what may be activated at all, checked on every activation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Safety {
    /// At most this many scenarios active at once.
    pub max_active: Option<usize>,
    /// A scenario whose faults reach a data center outside this list
    /// cannot be activated; `None` allows every one.
    pub allow_datacenters: Option<Vec<Arc<str>>>,
}
