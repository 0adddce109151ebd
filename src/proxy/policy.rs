//! How a connection or a request obeys the live rules: one [`Policy`] each.
//! It decides on the current snapshot, waits for the next change, and
//! decides on every snapshot it missed, so a fault that came and went in
//! between still counts. Each fault is counted here, once per policy, and
//! the one [`Ruling`] it gives is what every site acts on.

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stage::Spec;
use super::ServiceContext;
use crate::fault::{
    connection_roll, decide, Decision, ErrorResponse, Fault, Latency, RequestInfo, Verdict,
};
use crate::live::{Live, Rules};

/// What the rules make of a connection or request now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    Forward,
    /// Answer with this instead (HTTP requests; a stream lets it pass).
    Error(Box<ErrorResponse>),
    /// Cut it: a tcp connection is reset, a request gets no answer.
    Drop,
    /// Hold it: nothing passes either way.
    Blackhole,
    /// The blackhole that held it has ended, or shutdown started: close
    /// what it held, as a data center coming back would find it gone.
    Released,
}

impl Fate {
    /// Whether nothing later can change it.
    pub(crate) fn is_final(&self) -> bool {
        matches!(self, Fate::Drop | Fate::Released)
    }

    /// The fate after one more snapshot, which decided `verdict`; `acted`
    /// once the fate so far has been acted on (a cut stays, a hold that
    /// ends releases), not while a request still waits to be forwarded.
    fn then(&self, verdict: Verdict<'_>, draining: bool, acted: bool) -> Fate {
        match verdict {
            _ if acted && self.is_final() => self.clone(),
            Verdict::Drop => Fate::Drop,
            // Such a hold could never finish: shutdown lets it go at once.
            Verdict::Blackhole if draining => Fate::Released,
            Verdict::Blackhole => Fate::Blackhole,
            // What a blackhole held is lost with it.
            _ if acted && *self == Fate::Blackhole => Fate::Released,
            Verdict::Error(error) => Fate::Error(Box::new(error.clone())),
            Verdict::Forward => Fate::Forward,
        }
    }
}

/// The one verdict on a connection or request, with the delays in force.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ruling {
    pub fate: Fate,
    /// Before a request is forwarded, or a tcp connection set up.
    pub delay: Latency,
    /// Per chunk, client to upstream (tcp and upgraded connections).
    pub upstream: Latency,
    /// Per chunk, upstream to client.
    pub downstream: Latency,
}

impl Ruling {
    /// No fault hits: forward, at once.
    const PASS: Ruling = Ruling {
        fate: Fate::Forward,
        delay: Latency::ZERO,
        upstream: Latency::ZERO,
        downstream: Latency::ZERO,
    };

    fn of(fate: Fate, decision: &Decision<'_>) -> Ruling {
        Ruling {
            fate,
            delay: decision.delay,
            upstream: decision.upstream,
            downstream: decision.downstream,
        }
    }

    /// The stages each direction of a stream runs, upstream then
    /// downstream, in order.
    pub(crate) fn stages(&self) -> [Vec<Spec>; 2] {
        let chain = |latency: Latency| {
            let mut chain = Vec::new();
            if !latency.is_zero() {
                chain.push(Spec::Delay(latency));
            }
            chain
        };
        [chain(self.upstream), chain(self.downstream)]
    }
}

/// Where a policy is, which says which faults take effect there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// A tcp or upgraded connection: every fault that hits.
    Connection,
    /// A request not yet forwarded: every fault that hits; its fate is
    /// the newest snapshot's, as nothing has been done to it yet.
    Request,
    /// A request a blackhole holds: every fault that hits.
    Held,
    /// A response streaming back: only a drop or a blackhole reaches it;
    /// delays and errors wait for the next request.
    Response,
}

/// The request a policy decides for, for method and path selectors.
#[derive(Debug)]
struct Target {
    method: http::Method,
    uri: http::Uri,
}

/// What a policy reads and counts against: its service's faults in the
/// live rules, and their injected counters.
pub(crate) trait Rulebook {
    fn live(&self) -> &Live;
    /// The service's slot in each [`Rules`] snapshot.
    fn slot(&self) -> usize;
    /// Counts `faults` as injected.
    fn injected(&self, faults: &[&Fault]);
}

impl Rulebook for ServiceContext {
    fn live(&self) -> &Live {
        &self.live
    }

    fn slot(&self) -> usize {
        self.slot
    }

    fn injected(&self, faults: &[&Fault]) {
        self.metrics.faults_injected(faults);
    }
}

/// How one connection or request obeys the live rules (see the module).
#[derive(Debug)]
pub(crate) struct Policy {
    target: Option<Target>,
    /// Fixes its probability rolls and jitter, so deciding again under the
    /// same rules gives the same answer.
    seed: u64,
    scope: Scope,
    /// Faults already counted as injected; stays empty (no allocation)
    /// while no fault hits.
    counted: Vec<u64>,
    /// The generation of the snapshot last decided on.
    seen: Option<u64>,
    fate: Fate,
    /// Subscribed on the first wait, so a request that never waits costs
    /// no subscription.
    changes: Option<watch::Receiver<u64>>,
}

impl Policy {
    /// For a tcp connection, or an upgraded HTTP one.
    pub(crate) fn connection(seed: u64) -> Policy {
        Policy::new(None, seed, Scope::Connection)
    }

    /// For an HTTP request, by its method and path.
    pub(crate) fn request(method: http::Method, uri: http::Uri, seed: u64) -> Policy {
        Policy::new(Some(Target { method, uri }), seed, Scope::Request)
    }

    fn new(target: Option<Target>, seed: u64, scope: Scope) -> Policy {
        Policy {
            target,
            seed,
            scope,
            counted: Vec::new(),
            seen: None,
            fate: Fate::Forward,
            changes: None,
        }
    }

    /// The same policy, for the response to its request: what it counted
    /// stays counted.
    pub(crate) fn respond(mut self) -> Policy {
        self.scope = Scope::Response;
        self
    }

    /// The same policy, now that a blackhole holds its request: when the
    /// blackhole ends, the request is released.
    pub(crate) fn hold(&mut self) {
        self.scope = Scope::Held;
    }

    /// Whether its fate has been acted on and nothing can change it.
    fn is_settled(&self) -> bool {
        self.scope != Scope::Request && self.fate.is_final()
    }

    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    /// Decides on every snapshot published since the last look (on the
    /// current one at first, or when there is none newer), counting each
    /// fault once; the ruling of the newest, with its fate carried through
    /// the ones before.
    pub(crate) fn look(&mut self, book: &impl Rulebook) -> Ruling {
        let live = book.live();
        let current = live.load();
        let missed = match self.seen {
            Some(seen) if seen != current.generation() => live.since(seen),
            // The first look, on every request: kept short.
            None => return self.decide_on(&current, book),
            Some(_) => Vec::new(),
        };
        let mut ruling = None;
        for rules in &missed {
            ruling = Some(self.decide_on(rules, book));
            if self.is_settled() {
                break;
            }
        }
        let ruling = match ruling {
            Some(ruling) => ruling,
            None => self.decide_on(&current, book),
        };
        // Settled early: what came after changes nothing.
        self.seen = self.seen.max(Some(current.generation()));
        ruling
    }

    /// The fate as of the newest snapshot, deciding only when there is one
    /// newer than the last look: cheap enough for every frame of a body.
    pub(crate) fn fate(&mut self, book: &impl Rulebook) -> &Fate {
        if self.is_stale(book) {
            self.look(book);
        }
        &self.fate
    }

    /// Whether a snapshot newer than the last look has been published.
    fn is_stale(&self, book: &impl Rulebook) -> bool {
        self.seen != Some(book.live().load().generation())
    }

    fn decide_on(&mut self, rules: &Rules, book: &impl Rulebook) -> Ruling {
        let generation = rules.generation();
        self.seen = Some(self.seen.map_or(generation, |seen| seen.max(generation)));
        let request = self.target.as_ref().map(|target| RequestInfo {
            method: &target.method,
            path: target.uri.path(),
        });
        let seed = self.seed;
        let faults = rules.slot(book.slot());
        if faults.is_empty() && matches!(self.fate, Fate::Forward) {
            // The common case: nothing hits and nothing changes.
            return Ruling::PASS;
        }
        let decision = decide(faults, request, |fault| connection_roll(seed, fault));
        if !self.is_settled() {
            self.count(&decision, book);
            let acted = self.scope != Scope::Request;
            self.fate = self.fate.then(decision.verdict, rules.draining(), acted);
        }
        Ruling::of(self.fate.clone(), &decision)
    }

    /// Counts the faults of `decision` that take effect where this policy
    /// is and that it has not counted yet.
    fn count(&mut self, decision: &Decision<'_>, book: &impl Rulebook) {
        let effective = match (self.scope, decision.verdict) {
            (Scope::Connection | Scope::Request | Scope::Held, _) => &decision.applied[..],
            (Scope::Response, Verdict::Drop | Verdict::Blackhole) => &decision.applied[..1],
            (Scope::Response, _) => &[],
        };
        if effective.is_empty() {
            return;
        }
        if self.counted.is_empty() {
            book.injected(effective);
            self.counted.extend(effective.iter().map(|fault| fault.uid));
            return;
        }
        let fresh: Vec<&Fault> = effective
            .iter()
            .copied()
            .filter(|fault| !self.counted.contains(&fault.uid))
            .collect();
        if !fresh.is_empty() {
            book.injected(&fresh);
            self.counted.extend(fresh.iter().map(|fault| fault.uid));
        }
    }

    /// Waits for the next rule change, then decides on every snapshot it
    /// missed; `None` once `stop` is cancelled. Cancel-safe: what was seen
    /// is kept in generations, not in the wait.
    pub(crate) async fn changed(
        &mut self,
        book: &impl Rulebook,
        stop: &CancellationToken,
    ) -> Option<Ruling> {
        let live = book.live();
        let changes = self.changes.get_or_insert_with(|| live.subscribe());
        loop {
            changes.borrow_and_update();
            // A change published before the subscription counts too.
            if self.seen != Some(live.load().generation()) {
                break;
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return None,
                changed = changes.changed() => {
                    changed.expect("the rules outlive every connection");
                }
            }
        }
        Some(self.look(book))
    }

    /// Waits out the delay of `ruling`, counted from `started`, deciding
    /// again on every change: a lift ends the wait at once and a new delay
    /// may lengthen it. A connection's wait also ends at once when a change
    /// cuts it; a request's delay comes before its fate. Returns the ruling
    /// in force when the wait ends; `None` once `stop` is cancelled.
    pub(crate) async fn wait_out(
        &mut self,
        book: &impl Rulebook,
        started: Instant,
        mut ruling: Ruling,
        stop: &CancellationToken,
    ) -> Option<Ruling> {
        loop {
            let cut = self.scope == Scope::Connection && ruling.fate != Fate::Forward;
            if ruling.delay.is_zero() || cut {
                return Some(ruling);
            }
            let due = started + ruling.delay.sample(jitter_unit(self.seed));
            tokio::select! {
                biased;
                changed = self.changed(book, stop) => ruling = changed?,
                () = tokio::time::sleep_until(due) => break,
            }
        }
        // A change may have come with the deadline.
        if self.is_stale(book) {
            ruling = self.look(book);
        }
        Some(ruling)
    }
}

/// A number in `0..1` that places a delay within its jitter; taken from
/// the seed, so deciding again keeps it.
fn jitter_unit(seed: u64) -> f64 {
    // The top 53 bits make an evenly spread f64 in 0..1.
    (seed >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::time::Duration;

    use http::{HeaderMap, Method, StatusCode};

    use super::*;
    use crate::fault::{Action, Delay, Direction, Selector};

    /// One service in slot 0, counting into a list of fault uids.
    struct Book {
        live: Arc<Live>,
        counted: RefCell<Vec<u64>>,
    }

    impl Rulebook for Book {
        fn live(&self) -> &Live {
            &self.live
        }

        fn slot(&self) -> usize {
            0
        }

        fn injected(&self, faults: &[&Fault]) {
            let mut counted = self.counted.borrow_mut();
            counted.extend(faults.iter().map(|f| f.uid));
        }
    }

    fn book() -> Book {
        Book {
            live: Arc::new(Live::new(Rules::empty(1))),
            counted: RefCell::new(Vec::new()),
        }
    }

    impl Book {
        /// Publishes rules with `faults` active on slot 0.
        fn publish(&self, faults: &[&Arc<Fault>]) {
            let faults = faults.iter().map(|f| Arc::clone(f)).collect();
            self.live.publish(Rules::with(0, faults));
        }

        fn counted(&self) -> Vec<u64> {
            self.counted.borrow().clone()
        }
    }

    fn fault(uid: u64, action: Action) -> Arc<Fault> {
        Arc::new(Fault {
            uid,
            scenario: Arc::from("test"),
            index: 0,
            selector: Selector::default(),
            targets: Vec::new(),
            action,
            probability: 1.0,
            after: Duration::ZERO,
            duration: None,
        })
    }

    fn delay(ms: u64, direction: Direction) -> Action {
        Action::Delay(Delay {
            latency: Duration::from_millis(ms),
            jitter: Duration::ZERO,
            direction,
        })
    }

    #[test]
    fn a_drop_that_came_and_went_between_two_looks_still_cuts_and_counts_once() {
        let book = book();
        let drop = fault(1, Action::Drop);
        let mut policy = Policy::connection(7);
        assert_eq!(policy.look(&book).fate, Fate::Forward);
        book.publish(&[&drop]);
        book.publish(&[]);
        assert_eq!(policy.look(&book).fate, Fate::Drop);
        book.publish(&[&drop]);
        assert_eq!(policy.look(&book).fate, Fate::Drop);
        assert_eq!(book.counted(), [1], "counted once, where it was decided");
    }

    #[test]
    fn a_blackhole_holds_until_it_ends_then_releases_for_good() {
        let book = book();
        let hole = fault(1, Action::Blackhole);
        let mut policy = Policy::connection(7);
        book.publish(&[&hole]);
        assert_eq!(policy.look(&book).fate, Fate::Blackhole);
        book.publish(&[&hole]);
        assert_eq!(policy.look(&book).fate, Fate::Blackhole);
        book.publish(&[]);
        assert_eq!(policy.look(&book).fate, Fate::Released);
        book.publish(&[&hole]);
        assert_eq!(policy.look(&book).fate, Fate::Released);
        assert_eq!(book.counted(), [1]);
    }

    #[test]
    fn shutdown_releases_what_a_blackhole_holds() {
        let book = book();
        let mut policy = Policy::connection(7);
        book.publish(&[&fault(1, Action::Blackhole)]);
        assert_eq!(policy.look(&book).fate, Fate::Blackhole);
        book.live.drain();
        assert_eq!(policy.look(&book).fate, Fate::Released);
    }

    #[test]
    fn a_response_counts_only_a_cut_and_lets_errors_and_delays_pass() {
        let book = book();
        let slow = fault(1, delay(100, Direction::Both));
        let fail = fault(
            2,
            Action::Error(ErrorResponse {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: bytes::Bytes::new(),
                headers: HeaderMap::new(),
            }),
        );
        let drop = fault(3, Action::Drop);
        let request = Policy::request(Method::GET, http::Uri::from_static("/"), 7);
        let mut policy = request.respond();
        book.publish(&[&slow, &fail]);
        assert!(matches!(policy.look(&book).fate, Fate::Error(_)));
        assert!(book.counted().is_empty(), "{:?}", book.counted());
        book.publish(&[&slow, &drop]);
        assert_eq!(policy.look(&book).fate, Fate::Drop);
        assert_eq!(book.counted(), [3]);
    }

    #[test]
    fn a_request_counts_every_fault_that_hits_it_once() {
        let book = book();
        let slow = fault(1, delay(100, Direction::Both));
        let drop = fault(2, Action::Drop);
        let mut policy = Policy::request(Method::GET, http::Uri::from_static("/"), 7);
        book.publish(&[&slow]);
        assert_eq!(policy.look(&book).delay.base, Duration::from_millis(100));
        book.publish(&[&slow, &drop]);
        assert_eq!(policy.look(&book).fate, Fate::Drop);
        assert_eq!(book.counted(), [1, 2]);
    }

    #[test]
    fn a_waiting_request_takes_the_newest_fate_until_a_blackhole_holds_it() {
        let book = book();
        let drop = fault(1, Action::Drop);
        let hole = fault(2, Action::Blackhole);
        let mut policy = Policy::request(Method::GET, http::Uri::from_static("/"), 7);
        book.publish(&[&drop]);
        assert_eq!(policy.look(&book).fate, Fate::Drop);
        book.publish(&[&hole]);
        book.publish(&[]);
        assert_eq!(
            policy.look(&book).fate,
            Fate::Forward,
            "nothing was cut yet"
        );
        book.publish(&[&hole]);
        assert_eq!(policy.look(&book).fate, Fate::Blackhole);
        policy.hold();
        book.publish(&[]);
        assert_eq!(policy.look(&book).fate, Fate::Released);
        assert_eq!(book.counted(), [1, 2]);
    }

    #[test]
    fn each_direction_gets_a_delay_stage_only_while_it_is_delayed() {
        let book = book();
        let mut policy = Policy::connection(7);
        assert_eq!(policy.look(&book).stages(), [vec![], vec![]]);
        book.publish(&[&fault(1, delay(100, Direction::Upstream))]);
        let latency = Latency {
            base: Duration::from_millis(100),
            jitter: Duration::ZERO,
        };
        let stages = policy.look(&book).stages();
        assert_eq!(stages, [vec![Spec::Delay(latency)], vec![]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_as_soon_as_a_change_lifts_the_delay() {
        let book = book();
        book.publish(&[&fault(1, delay(30_000, Direction::Both))]);
        let mut policy = Policy::connection(7);
        let ruling = policy.look(&book);
        let started = Instant::now();
        let stop = CancellationToken::new();
        let lift = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            book.publish(&[]);
            std::future::pending::<()>().await;
        };
        let waited = tokio::select! {
            waited = policy.wait_out(&book, started, ruling, &stop) => waited,
            () = lift => unreachable!(),
        };
        assert_eq!(waited.map(|r| r.fate), Some(Fate::Forward));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_stops_waiting_when_a_drop_starts_but_a_request_waits_on() {
        for (mut policy, waits) in [
            (Policy::connection(7), Duration::from_secs(1)),
            (
                Policy::request(Method::GET, http::Uri::from_static("/"), 7),
                Duration::from_secs(5),
            ),
        ] {
            let book = book();
            let slow = fault(1, delay(5_000, Direction::Both));
            book.publish(&[&slow]);
            let ruling = policy.look(&book);
            let started = Instant::now();
            let stop = CancellationToken::new();
            let cut = async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                book.publish(&[&slow, &fault(2, Action::Drop)]);
                std::future::pending::<()>().await;
            };
            let waited = tokio::select! {
                waited = policy.wait_out(&book, started, ruling, &stop) => waited,
                () = cut => unreachable!(),
            };
            assert_eq!(waited.map(|r| r.fate), Some(Fate::Drop));
            assert_eq!(started.elapsed(), waits);
        }
    }
}
