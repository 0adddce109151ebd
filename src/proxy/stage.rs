//! Ordered stages on one direction of a stream: what a relay does to the
//! bytes between reading them and writing them on. Each [`Stage`] takes
//! pieces in and gives them out when it is ready, as Toxiproxy's toxics do;
//! a [`Chain`] runs them in order and follows rule changes without losing
//! what they hold. Today's only stage is [`Delay`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::time::{Instant, Sleep};

use crate::fault::Latency;

/// What flows through a chain of stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    Data(Bytes),
    /// The end of this direction: the writer is shut down (FIN).
    End,
    /// Cut the connection: both sides are reset (RST). No stage sends it
    /// yet; Toxiproxy's `reset_peer` will.
    #[cfg_attr(not(test), allow(dead_code))]
    Reset,
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Data(data) => data.len(),
            Piece::End | Piece::Reset => 0,
        }
    }
}

/// A stage's settings, as data: what the rules ask of one direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Spec {
    /// Every chunk waits `latency` (sampled per chunk), keeping order.
    Delay(Latency),
}

impl Spec {
    fn build(&self) -> Box<dyn Stage> {
        match self {
            Spec::Delay(latency) => Box::new(Delay::new(*latency)),
        }
    }
}

/// One step on a direction of a stream. A stage is polled by one task, so
/// it keeps its own timers and wakes that task through `poll_next`.
pub(crate) trait Stage: Send + std::fmt::Debug {
    /// Takes the next piece that reached this stage.
    fn push(&mut self, piece: Piece);

    /// The next piece to pass on: `Ready(None)` when it holds nothing,
    /// `Pending` (with a wake-up arranged) while what it holds is not due.
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Piece>>;

    /// The payload bytes it holds.
    fn held(&self) -> usize;

    /// Whether it would pass a chunk on at once and untouched.
    fn is_transparent(&self) -> bool;

    /// Takes new settings after a rule change, if they are for this kind of
    /// stage; what it holds keeps its place.
    fn retune(&mut self, spec: &Spec) -> bool;

    /// Its fault has ended: it passes what comes on at once, behind what
    /// it still holds, and leaves the chain once empty.
    fn retire(&mut self);

    /// Whether it has retired and holds nothing more.
    fn is_spent(&self) -> bool;
}

/// The stages of one direction, in order. No stage: the relay reads and
/// writes directly.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    stages: Vec<Box<dyn Stage>>,
}

impl Chain {
    /// A chain of `stages`, for tests of a stage made by hand.
    #[cfg(test)]
    pub(crate) fn of(stages: Vec<Box<dyn Stage>>) -> Chain {
        Chain { stages }
    }

    /// Takes up the stages `specs` ask for: a stage already running keeps
    /// its place and what it holds with its new settings, one no longer
    /// asked for retires, and new ones join at the end.
    pub(crate) fn adopt(&mut self, specs: &[Spec]) {
        let mut kept = vec![false; self.stages.len()];
        for spec in specs {
            let running = (0..self.stages.len()).find(|&i| !kept[i] && self.stages[i].retune(spec));
            match running {
                Some(i) => kept[i] = true,
                None => {
                    self.stages.push(spec.build());
                    kept.push(true);
                }
            }
        }
        for (stage, kept) in self.stages.iter_mut().zip(kept) {
            if !kept {
                stage.retire();
            }
        }
        self.prune();
    }

    /// Whether bytes may skip the chain: every stage passes them untouched.
    pub(crate) fn is_transparent(&self) -> bool {
        self.stages.iter().all(|stage| stage.is_transparent())
    }

    /// The payload bytes the chain holds.
    pub(crate) fn held(&self) -> usize {
        self.stages.iter().map(|stage| stage.held()).sum()
    }

    /// Feeds `piece` to the first stage, or straight out when there is none.
    pub(crate) fn push(&mut self, piece: Piece) {
        if let Some(first) = self.stages.first_mut() {
            first.push(piece);
        }
    }

    /// The next piece out of the last stage, moving pieces along the
    /// chain on the way.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Piece> {
        let last = self.stages.len().saturating_sub(1);
        for i in 0..last {
            while let Poll::Ready(Some(piece)) = self.stages[i].poll_next(cx) {
                self.stages[i + 1].push(piece);
            }
        }
        let out = match self.stages.get_mut(last) {
            Some(stage) => stage.poll_next(cx),
            None => Poll::Ready(None),
        };
        self.prune();
        match out {
            Poll::Ready(Some(piece)) => Poll::Ready(piece),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    /// The next piece out of the chain.
    pub(crate) async fn next(&mut self) -> Piece {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Drops retired stages that hold nothing more.
    fn prune(&mut self) {
        self.stages.retain(|stage| !stage.is_spent());
    }
}

/// Stage settings handed from the task's rule watch to a direction's pump,
/// which takes them up when its next bytes arrive. Both run in one task;
/// the atomic flag keeps the pump's check to one load per read.
#[derive(Debug, Default)]
pub(crate) struct Retune {
    fresh: AtomicBool,
    // std mutex: held for a swap, never across an await.
    specs: Mutex<Vec<Spec>>,
}

impl Retune {
    pub(crate) fn set(&self, specs: Vec<Spec>) {
        *self.specs.lock().unwrap_or_else(|e| e.into_inner()) = specs;
        self.fresh.store(true, Ordering::Release);
    }

    /// The settings set since the last take, if any.
    pub(crate) fn take(&self) -> Option<Vec<Spec>> {
        if !self.fresh.load(Ordering::Relaxed) || !self.fresh.swap(false, Ordering::Acquire) {
            return None;
        }
        let specs = std::mem::take(&mut *self.specs.lock().unwrap_or_else(|e| e.into_inner()));
        Some(specs)
    }
}

/// Added latency per chunk, pipelined: chunks wait in a queue with their
/// due times while more arrive, so throughput is not cut to one chunk per
/// latency, and none overtakes the one before.
#[derive(Debug)]
pub(crate) struct Delay {
    latency: Latency,
    queue: VecDeque<(Instant, Piece)>,
    held: usize,
    /// When the last chunk queued is due: the next is never due before.
    last_due: Instant,
    /// Made with the first chunk that waits.
    timer: Option<Pin<Box<Sleep>>>,
    retired: bool,
}

impl Delay {
    pub(crate) fn new(latency: Latency) -> Delay {
        Delay {
            latency,
            queue: VecDeque::new(),
            held: 0,
            last_due: Instant::now(),
            timer: None,
            retired: false,
        }
    }
}

impl Stage for Delay {
    fn push(&mut self, piece: Piece) {
        // The end and a reset come right behind the last chunk.
        let wait = match piece {
            Piece::Data(_) => self.latency.sample(rand::random()),
            Piece::End | Piece::Reset => std::time::Duration::ZERO,
        };
        let due = (Instant::now() + wait).max(self.last_due);
        self.last_due = due;
        self.held += piece.len();
        self.queue.push_back((due, piece));
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Piece>> {
        let Some(&(due, _)) = self.queue.front() else {
            return Poll::Ready(None);
        };
        if due > Instant::now() {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if timer.deadline() != due {
                timer.as_mut().reset(due);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let (_, piece) = self.queue.pop_front().expect("a due piece is queued");
        self.held -= piece.len();
        Poll::Ready(Some(piece))
    }

    fn held(&self) -> usize {
        self.held
    }

    fn is_transparent(&self) -> bool {
        self.latency.is_zero() && self.queue.is_empty()
    }

    fn retune(&mut self, spec: &Spec) -> bool {
        match spec {
            Spec::Delay(latency) => self.latency = *latency,
        }
        self.retired = false;
        true
    }

    fn retire(&mut self) {
        self.latency = Latency::default();
        self.retired = true;
    }

    fn is_spent(&self) -> bool {
        self.retired && self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn latency(ms_: u64) -> Latency {
        Latency {
            base: ms(ms_),
            jitter: Duration::ZERO,
        }
    }

    fn data(text: &'static str) -> Piece {
        Piece::Data(Bytes::from_static(text.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_passes_each_chunk_on_after_its_latency_in_order() {
        let started = Instant::now();
        let mut chain = Chain::default();
        chain.adopt(&[Spec::Delay(latency(100))]);
        chain.push(data("a"));
        tokio::time::sleep(ms(30)).await;
        chain.push(data("b"));
        assert_eq!(chain.held(), 2);
        assert_eq!(chain.next().await, data("a"));
        assert_eq!(started.elapsed(), ms(100));
        assert_eq!(chain.next().await, data("b"));
        assert_eq!(
            started.elapsed(),
            ms(130),
            "pipelined, not one after another"
        );
        assert_eq!(chain.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_delay_never_lets_a_chunk_overtake_the_one_before() {
        let started = Instant::now();
        let mut chain = Chain::default();
        chain.adopt(&[Spec::Delay(latency(100))]);
        chain.push(data("slow"));
        chain.adopt(&[Spec::Delay(latency(10))]);
        chain.push(data("fast"));
        chain.push(Piece::End);
        assert_eq!(chain.next().await, data("slow"));
        assert_eq!(chain.next().await, data("fast"));
        assert_eq!(chain.next().await, Piece::End);
        assert_eq!(started.elapsed(), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lifted_delay_lets_what_it_holds_out_then_leaves_the_chain() {
        let started = Instant::now();
        let mut chain = Chain::default();
        chain.adopt(&[Spec::Delay(latency(100))]);
        chain.push(data("held"));
        chain.adopt(&[]);
        assert!(!chain.is_transparent(), "it still holds a chunk");
        chain.push(data("after"));
        assert_eq!(chain.next().await, data("held"));
        assert_eq!(chain.next().await, data("after"));
        assert_eq!(started.elapsed(), ms(100));
        assert!(chain.is_transparent());
        assert!(chain.stages.is_empty(), "the retired stage left");
    }

    #[test]
    fn retune_hands_settings_over_once() {
        let retune = Retune::default();
        assert_eq!(retune.take(), None);
        retune.set(vec![Spec::Delay(latency(5))]);
        assert_eq!(retune.take(), Some(vec![Spec::Delay(latency(5))]));
        assert_eq!(retune.take(), None);
    }
}
