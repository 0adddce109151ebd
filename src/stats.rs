//! The numbers firedrill keeps per service, readable inside the process:
//! lock-free atomics the data plane adds to ([`ServiceStats`]), one registry
//! of every service's numbers found by name ([`Stats`]), and a sampler that
//! keeps a second-by-second history for rates and quantiles over a window
//! ([`window`]). `/metrics` renders these same atomics ([`crate::metrics`]).

mod capture;
pub mod window;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio_util::sync::CancellationToken;

pub use capture::{Capture, FaultTally};
pub use window::Window;
use window::{Sample, Ticks};

/// Histogram buckets for client-observed request latency, in seconds (each
/// an inclusive upper bound; a last `+Inf` bucket catches the rest). Dense
/// from 100 ms to 2.5 s, where latency thresholds of `p99_latency` guards
/// and SLOs sit: a quantile is interpolated inside a bucket, and reads
/// exactly only on a bound.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5,
    2.5, 5.0, 10.0, 30.0,
];

/// Latency counts per bucket: one per bound, and `+Inf`.
pub const BUCKETS: usize = LATENCY_BUCKETS.len() + 1;

/// Status classes a request is counted by: slot 0 for no response, slot N
/// for `Nxx`.
pub const CODE_SLOTS: usize = 6;

/// How often the sampler records every service's numbers.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// How far back windows can reach: samples older than this are dropped.
pub const HISTORY: Duration = Duration::from_secs(300);

/// How a request or connection ended up, as the `outcome` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Forwarded,
    Delayed,
    Dropped,
    Blackholed,
    Error,
    UpstreamError,
    /// An HTTP client connection; its requests carry their own outcomes.
    Accepted,
    /// An HTTP client connection whose TLS handshake failed or timed out.
    TlsError,
    /// A client connection refused because the service was at its
    /// `max_connections`.
    Refused,
    /// An HTTP request refused as the client's fault (400, 405): two `Host`
    /// fields, `CONNECT`, a malformed body.
    ClientError,
}

impl Outcome {
    pub const ALL: [Outcome; 10] = [
        Outcome::Forwarded,
        Outcome::Delayed,
        Outcome::Dropped,
        Outcome::Blackholed,
        Outcome::Error,
        Outcome::UpstreamError,
        Outcome::Accepted,
        Outcome::TlsError,
        Outcome::Refused,
        Outcome::ClientError,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::Delayed => "delayed",
            Outcome::Dropped => "dropped",
            Outcome::Blackholed => "blackholed",
            Outcome::Error => "error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Accepted => "accepted",
            Outcome::TlsError => "tls_error",
            Outcome::Refused => "refused",
            Outcome::ClientError => "client_error",
        }
    }

    /// Whether a request with this outcome failed whatever it was answered,
    /// as the dashboards' error ratio counts it (a 5xx answer fails too).
    fn fails(self) -> bool {
        matches!(
            self,
            Outcome::Dropped | Outcome::Blackholed | Outcome::Error | Outcome::UpstreamError
        )
    }
}

/// The slot of a request's status class, or 0 for no response. A status
/// over 599, which no client understands, counts as 5xx.
pub fn code_slot(status: Option<StatusCode>) -> usize {
    status.map_or(0, |status| usize::from(status.as_u16() / 100).min(5))
}

/// The latency bucket `elapsed` falls in: the first bound it does not
/// exceed, or the last (`+Inf`).
fn bucket(elapsed: Duration) -> usize {
    let seconds = elapsed.as_secs_f64();
    LATENCY_BUCKETS.partition_point(|bound| *bound < seconds)
}

/// Which series `/metrics` lists for a service even while they are 0: the
/// ones its protocol can move, as registered (a union over every accept
/// loop the service had, since a listed series never disappears).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    /// Per outcome, one bit per code slot.
    pub requests: [u8; Outcome::ALL.len()],
    /// One bit per outcome.
    pub connections: u16,
    pub latency: bool,
}

impl Listed {
    fn merge(&mut self, other: &Listed) {
        for (mine, theirs) in self.requests.iter_mut().zip(other.requests) {
            *mine |= theirs;
        }
        self.connections |= other.connections;
        self.latency |= other.latency;
    }
}

/// One fault's `firedrill_faults_injected_total` series on a service.
#[derive(Debug)]
struct FaultCount {
    action: &'static str,
    scenario: Arc<str>,
    count: Arc<AtomicU64>,
}

/// One service's numbers. The data plane adds with relaxed atomics: each
/// number is independent, and readers tolerate a moment's skew between
/// them. Counters only grow; the registry keeps them for the process's
/// life, so a service a reload keeps counts on from where it was.
#[derive(Debug)]
pub struct ServiceStats {
    name: Arc<str>,
    datacenter: Arc<str>,
    /// When it was last registered, to find the current service by name.
    registered: AtomicU64,
    /// By outcome, then by [`code_slot`].
    requests: [[AtomicU64; CODE_SLOTS]; Outcome::ALL.len()],
    connections: [AtomicU64; Outcome::ALL.len()],
    open: AtomicI64,
    /// Answered requests per latency bucket (not cumulative).
    latency: [AtomicU64; BUCKETS],
    latency_nanos: AtomicU64,
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    /// Registration and reading only, never the data plane (which holds
    /// its fault counters' `Arc`s), so a std Mutex is enough.
    faults: Mutex<Vec<FaultCount>>,
    listed: Mutex<Listed>,
}

impl ServiceStats {
    fn new(name: &str, datacenter: &str) -> ServiceStats {
        ServiceStats {
            name: name.into(),
            datacenter: datacenter.into(),
            registered: AtomicU64::new(0),
            requests: Default::default(),
            connections: Default::default(),
            open: AtomicI64::new(0),
            latency: Default::default(),
            latency_nanos: AtomicU64::new(0),
            bytes_upstream: AtomicU64::new(0),
            bytes_downstream: AtomicU64::new(0),
            faults: Mutex::new(Vec::new()),
            listed: Mutex::new(Listed::default()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// Counts one request whose fate is decided, answered with a status of
    /// `code_slot` (0: none) after `elapsed`; only answered ones record
    /// their latency.
    pub(crate) fn request(&self, outcome: Outcome, code_slot: usize, elapsed: Duration) {
        self.requests[outcome as usize][code_slot.min(CODE_SLOTS - 1)].fetch_add(1, Relaxed);
        if code_slot != 0 {
            self.latency[bucket(elapsed)].fetch_add(1, Relaxed);
            let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            self.latency_nanos.fetch_add(nanos, Relaxed);
        }
    }

    pub(crate) fn connection(&self, outcome: Outcome) {
        self.connections[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Moves the open connections gauge by `by` (+1 or -1).
    pub(crate) fn open(&self, by: i64) {
        self.open.fetch_add(by, Relaxed);
    }

    pub(crate) fn bytes_upstream(&self, n: usize) {
        self.bytes_upstream.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn bytes_downstream(&self, n: usize) {
        self.bytes_downstream.fetch_add(n as u64, Relaxed);
    }

    /// The counter of faults of `action` from `scenario` hitting this
    /// service, created at 0 the first time.
    pub(crate) fn fault(&self, action: &'static str, scenario: &Arc<str>) -> Arc<AtomicU64> {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(found) = faults
            .iter()
            .find(|f| f.action == action && f.scenario == *scenario)
        {
            return Arc::clone(&found.count);
        }
        let count = Arc::new(AtomicU64::new(0));
        faults.push(FaultCount {
            action,
            scenario: Arc::clone(scenario),
            count: Arc::clone(&count),
        });
        count
    }

    /// Adds `listed` to the series `/metrics` lists for this service.
    pub(crate) fn list(&self, listed: &Listed) {
        self.listed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .merge(listed);
    }

    /// Everything counted so far, read now.
    pub fn counts(&self) -> Counts {
        let load = |n: &AtomicU64| n.load(Relaxed);
        let faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        Counts {
            requests: self
                .requests
                .each_ref()
                .map(|codes| codes.each_ref().map(load)),
            connections: self.connections.each_ref().map(load),
            open: self.open.load(Relaxed),
            latency: self.latency.each_ref().map(load),
            latency_nanos: load(&self.latency_nanos),
            bytes_upstream: load(&self.bytes_upstream),
            bytes_downstream: load(&self.bytes_downstream),
            faults: faults
                .iter()
                .map(|f| (f.action, Arc::clone(&f.scenario), load(&f.count)))
                .collect(),
            listed: *self.listed.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// The numbers a window needs, read now.
    fn sample(&self) -> Sample {
        Sample::of(&self.counts())
    }
}

/// One service's numbers at one moment, as [`ServiceStats::counts`] reads
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct Counts {
    /// By outcome, then by [`code_slot`].
    pub requests: [[u64; CODE_SLOTS]; Outcome::ALL.len()],
    pub connections: [u64; Outcome::ALL.len()],
    pub open: i64,
    /// Per latency bucket, not cumulative; the last is `+Inf`.
    pub latency: [u64; BUCKETS],
    pub latency_nanos: u64,
    pub bytes_upstream: u64,
    pub bytes_downstream: u64,
    /// By action and scenario.
    pub faults: Vec<(&'static str, Arc<str>, u64)>,
    pub listed: Listed,
}

impl Counts {
    /// Requests counted, and how many of them failed: dropped, blackholed,
    /// answered with an injected error or an upstream error, or with 5xx.
    pub fn requests_and_failed(&self) -> (u64, u64) {
        let mut all = 0;
        let mut failed = 0;
        for (outcome, by_code) in Outcome::ALL.iter().zip(&self.requests) {
            let total: u64 = by_code.iter().sum();
            all += total;
            failed += if outcome.fails() { total } else { by_code[5] };
        }
        (all, failed)
    }
}

/// Every service's numbers, found by name. Cheap to clone; clones share
/// the numbers. Services are never removed: a service a reload drops keeps
/// its last numbers, and one that comes back under the same name and data
/// center counts on from them, so no counter ever goes back.
#[derive(Debug, Clone)]
pub struct Stats(Arc<Registry>);

#[derive(Debug)]
struct Registry {
    /// In order of first registration; a tick's samples use that index.
    /// Written only when a service registers; std locks, never held
    /// across an await.
    services: RwLock<Vec<Arc<ServiceStats>>>,
    registrations: AtomicU64,
    ticks: Mutex<Ticks>,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats(Arc::new(Registry {
            services: RwLock::new(Vec::new()),
            registrations: AtomicU64::new(0),
            ticks: Mutex::new(Ticks::new(Instant::now())),
        }))
    }
}

impl Stats {
    /// The numbers of the service `name` in `datacenter`: the ones it had
    /// if it was registered before, else fresh ones at 0. It becomes the
    /// service [`Stats::service`] finds by that name.
    pub(crate) fn register(&self, name: &str, datacenter: &str) -> Arc<ServiceStats> {
        let order = self.0.registrations.fetch_add(1, Relaxed) + 1;
        let mut services = self
            .0
            .services
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let found = services
            .iter()
            .find(|s| &*s.name == name && &*s.datacenter == datacenter);
        let stats = match found {
            Some(stats) => Arc::clone(stats),
            None => {
                let stats = Arc::new(ServiceStats::new(name, datacenter));
                services.push(Arc::clone(&stats));
                stats
            }
        };
        stats.registered.store(order, Relaxed);
        stats
    }

    /// The numbers of the service called `name`, the one registered last
    /// under that name.
    pub fn service(&self, name: &str) -> Option<Arc<ServiceStats>> {
        self.services()
            .into_iter()
            .filter(|s| &*s.name == name)
            .max_by_key(|s| s.registered.load(Relaxed))
    }

    /// Every service ever registered, in order of first registration.
    pub fn services(&self) -> Vec<Arc<ServiceStats>> {
        self.0
            .services
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The service `name` over the last `over` (see [`Window`]); `None`
    /// for a name never registered.
    pub fn window(&self, name: &str, over: Duration) -> Option<Window> {
        let wanted = self.service(name)?;
        Some(self.window_of(over, |s| Arc::ptr_eq(s, &wanted)))
    }

    /// The services `select` picks (by name or data center, say), summed,
    /// over the last `over`: as far back as the history reaches, and at
    /// least one sample back. Rates cover from that sample to now.
    pub fn window_of(&self, over: Duration, select: impl Fn(&Arc<ServiceStats>) -> bool) -> Window {
        let now = Instant::now();
        let services = self.services();
        let (at, start) = self
            .0
            .ticks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .at_or_before(now.checked_sub(over));
        let span = now.saturating_duration_since(at);
        let mut window = Window::empty(span);
        for (index, service) in services.iter().enumerate() {
            if select(service) {
                let from = start.get(index).cloned().unwrap_or_default();
                window.add(&Window::between(&from, &service.sample(), span));
            }
        }
        window
    }

    /// Records every service's numbers now, for windows to start from.
    pub(crate) fn sample(&self) {
        self.sample_at(Instant::now());
    }

    fn sample_at(&self, at: Instant) {
        let samples = self.services().iter().map(|s| s.sample()).collect();
        self.0
            .ticks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(at, samples);
    }

    /// Samples every [`SAMPLE_EVERY`] until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => self.sample(),
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests;
