//! The fault model: what a plan's scenarios inject, and [`decide`], the pure
//! function that turns the faults active on a service into one [`Decision`]
//! for a request or connection. No I/O and no clock reads happen here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;

use crate::topology::ServiceId;

/// A named set of faults that an operator activates as one.
#[derive(Debug)]
pub struct Scenario {
    pub name: Arc<str>,
    pub description: String,
    /// Every activation ends by itself after at most this long.
    pub max_duration: Duration,
    pub faults: Vec<Arc<Fault>>,
    /// Its `stop_when` guards: conditions that lift it while active.
    pub stop_when: Vec<crate::config::Guard>,
}

/// One fault of a scenario: which traffic, what happens to it, and when.
#[derive(Debug)]
pub struct Fault {
    /// Stable across rule snapshots; seeds per-connection probability rolls.
    pub uid: u64,
    pub scenario: Arc<str>,
    /// Position within its scenario, as listed in the plan.
    pub index: usize,
    pub selector: Selector,
    /// Services the selector matches, resolved once when the plan loads.
    pub targets: Vec<ServiceId>,
    pub action: Action,
    /// Chance in `0..=1` that a request (http) or connection (tcp) is hit.
    pub probability: f64,
    /// Offset from activation before the fault starts.
    pub after: Duration,
    /// How long the fault lasts once started; `None` until the scenario ends.
    pub duration: Option<Duration>,
}

/// Which traffic a fault applies to; every field given must match.
#[derive(Debug, Default)]
pub struct Selector {
    pub datacenter: Option<Arc<str>>,
    pub service: Option<Arc<str>>,
    /// HTTP only: the request method.
    pub method: Option<Method>,
    /// HTTP only: the request path starts with this.
    pub path_prefix: Option<String>,
}

impl Selector {
    /// Whether an HTTP request matches the method and path parts of this selector.
    fn matches_request(&self, request: Option<RequestInfo<'_>>) -> bool {
        match request {
            Some(request) => {
                self.method.as_ref().is_none_or(|m| m == request.method)
                    && self
                        .path_prefix
                        .as_deref()
                        .is_none_or(|p| request.path.starts_with(p))
            }
            None => self.method.is_none() && self.path_prefix.is_none(),
        }
    }
}

/// What a fault does to the traffic it selects.
#[derive(Debug)]
pub enum Action {
    Blackhole,
    Drop,
    Delay(Delay),
    Error(ErrorResponse),
}

impl Action {
    /// The name used in plans, the API and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Blackhole => "blackhole",
            Action::Drop => "drop",
            Action::Delay(_) => "delay",
            Action::Error(_) => "error",
        }
    }
}

/// Added latency, with uniform jitter, in one or both directions.
#[derive(Debug, Clone, Copy)]
pub struct Delay {
    pub latency: Duration,
    pub jitter: Duration,
    pub direction: Direction,
}

/// The direction of a TCP byte stream a delay applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Client to upstream.
    Upstream,
    /// Upstream to client.
    Downstream,
    Both,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Upstream => "upstream",
            Direction::Downstream => "downstream",
            Direction::Both => "both",
        }
    }
}

/// The canned answer of an `error` fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorResponse {
    pub status: StatusCode,
    pub body: Bytes,
    pub headers: HeaderMap,
}

/// The parts of an HTTP request that selectors look at.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    pub method: &'a Method,
    pub path: &'a str,
}

/// A latency with uniform jitter on top: `latency + U(0, jitter)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latency {
    pub base: Duration,
    pub jitter: Duration,
}

impl Latency {
    /// No latency at all.
    pub const ZERO: Latency = Latency {
        base: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    pub fn is_zero(&self) -> bool {
        self.base.is_zero() && self.jitter.is_zero()
    }

    /// The latency for one chunk or request, given `unit` drawn from `0..1`.
    pub fn sample(&self, unit: f64) -> Duration {
        self.base + self.jitter.mul_f64(unit.clamp(0.0, 1.0))
    }

    fn add(&mut self, delay: &Delay) {
        self.base += delay.latency;
        self.jitter += delay.jitter;
    }
}

/// The strongest fault that hit, in precedence order.
#[derive(Debug, Clone, Copy)]
pub enum Verdict<'a> {
    Forward,
    Error(&'a ErrorResponse),
    Drop,
    Blackhole,
}

/// What to do with one request or connection, combining every active fault.
///
/// Precedence: blackhole > drop > error > forward. Delays always add up and
/// are applied before the verdict (so `delay` + `error` answers late).
#[derive(Debug)]
pub struct Decision<'a> {
    pub verdict: Verdict<'a>,
    /// Total delay of every delay fault that hit, whatever its direction: used
    /// before an HTTP request is forwarded and before a TCP connection is set up.
    pub delay: Latency,
    /// Per-chunk delay on the client-to-upstream stream (tcp).
    pub upstream: Latency,
    /// Per-chunk delay on the upstream-to-client stream (tcp).
    pub downstream: Latency,
    /// The faults that took effect: the verdict's fault, then every delay.
    pub applied: Vec<&'a Fault>,
}

impl Decision<'_> {
    /// The decision when no fault applies.
    pub const PASS: Decision<'static> = Decision {
        verdict: Verdict::Forward,
        delay: Latency {
            base: Duration::ZERO,
            jitter: Duration::ZERO,
        },
        upstream: Latency {
            base: Duration::ZERO,
            jitter: Duration::ZERO,
        },
        downstream: Latency {
            base: Duration::ZERO,
            jitter: Duration::ZERO,
        },
        applied: Vec::new(),
    };
}

/// Combines the faults active on one service into a decision.
///
/// `request` is `None` for a TCP connection. `roll` returns a number in
/// `0..1` for a fault; the fault hits when that number is below its
/// probability. Callers make rolls random per request, or stable per
/// connection (see [`connection_roll`]).
pub fn decide<'a>(
    faults: &'a [Arc<Fault>],
    request: Option<RequestInfo<'_>>,
    mut roll: impl FnMut(&Fault) -> f64,
) -> Decision<'a> {
    let mut decision = Decision::PASS;
    let mut winner: Option<&'a Fault> = None;
    for fault in faults {
        if !fault.selector.matches_request(request) {
            continue;
        }
        if fault.probability < 1.0 && roll(fault) >= fault.probability {
            continue;
        }
        let verdict = match &fault.action {
            Action::Blackhole => Verdict::Blackhole,
            Action::Drop => Verdict::Drop,
            Action::Error(response) if request.is_some() => Verdict::Error(response),
            // An error response means nothing to a raw byte stream.
            Action::Error(_) => continue,
            Action::Delay(delay) => {
                decision.delay.add(delay);
                if delay.direction != Direction::Downstream {
                    decision.upstream.add(delay);
                }
                if delay.direction != Direction::Upstream {
                    decision.downstream.add(delay);
                }
                decision.applied.push(fault);
                continue;
            }
        };
        if rank(verdict) > rank(decision.verdict) {
            decision.verdict = verdict;
            winner = Some(fault);
        }
    }
    if let Some(fault) = winner {
        decision.applied.insert(0, fault);
    }
    decision
}

fn rank(verdict: Verdict<'_>) -> u8 {
    match verdict {
        Verdict::Forward => 0,
        Verdict::Error(_) => 1,
        Verdict::Drop => 2,
        Verdict::Blackhole => 3,
    }
}

/// A roll in `0..1` that stays the same for one connection and one fault, so
/// a connection spared by a flaky fault stays spared when rules are re-read.
pub fn connection_roll(connection_seed: u64, fault: &Fault) -> f64 {
    let mixed = splitmix64(connection_seed ^ fault.uid.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // The top 53 bits make an evenly spread f64 in 0..1.
    (mixed >> 11) as f64 / (1u64 << 53) as f64
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests;
