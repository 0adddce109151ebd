//! Idle timeouts, kept off the hot path: a relayed byte stream raises a
//! flag per read ([`Traffic`]), and an upstream response body arms a timer
//! only while it waits ([`Stalling`]); an HTTP client connection counts
//! its requests in flight with [`crate::listen::activity`]. Each is an
//! atomic or two per chunk, never an allocation or a lock. (hyper's own
//! `header_read_timeout` would box a new timer per request and covers
//! neither h2 nor a client that sends no bytes at all.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::body::{BoxError, Cut, Wrapped};

/// Checks per idle timeout on a relayed stream: it closes after between
/// 1 and 1 + 1/CHECKS timeouts of silence.
const CHECKS: u32 = 4;

/// Whether bytes moved on a relayed connection (tcp, or an upgraded HTTP
/// connection) since the last look: one relaxed store per read.
#[derive(Debug, Default)]
pub(crate) struct Traffic(AtomicBool);

impl Traffic {
    pub(crate) fn moved(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Returns once no bytes have moved either way for at least `timeout`
    /// (and at most a quarter of it more).
    pub(crate) async fn silent_for(&self, timeout: Duration) {
        // interval() refuses a zero period, which "1ns" / 4 would be.
        let period = (timeout / CHECKS).max(Duration::from_millis(1));
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut quiet = 0;
        loop {
            ticks.tick().await;
            if self.0.swap(false, Ordering::Relaxed) {
                quiet = 0;
            } else {
                quiet += 1;
                if quiet >= CHECKS {
                    return;
                }
            }
        }
    }
}

/// Why an upstream response body was cut.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no part of its response body for {}", humantime::format_duration(*.0))]
pub(crate) struct Stalled(pub Duration);

/// An upstream response body that fails when the upstream pauses for
/// longer than its timeout. The timer is armed only when a read has to
/// wait, so a body that streams without pause never touches it.
pub type Stalling<B> = Wrapped<B, StallTimer>;

/// The pause timer of a [`Stalling`] body.
#[derive(Debug)]
pub struct StallTimer {
    // Boxed: responses are moved several times on their way out, and a
    // timer inline would make every move copy it.
    deadline: Option<Pin<Box<Sleep>>>,
    timeout: Duration,
    waiting: bool,
}

impl<B> Stalling<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Stalling<B> {
        let timer = StallTimer {
            deadline: None,
            timeout,
            waiting: false,
        };
        Wrapped::wrap(inner, timer)
    }
}

impl Cut for StallTimer {
    fn passed(&mut self) {
        self.waiting = false;
    }

    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<BoxError> {
        if !self.waiting {
            // The pause starts now.
            self.waiting = true;
            let due = Instant::now() + self.timeout;
            match self.deadline.as_mut() {
                Some(deadline) => deadline.as_mut().reset(due),
                None => self.deadline = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Box::new(Stalled(self.timeout))),
            _ => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_a_relay_open_and_silence_closes_it() {
        let traffic = Traffic::default();
        let timeout = Duration::from_secs(40);
        let silent = traffic.silent_for(timeout);
        tokio::pin!(silent);
        for _ in 0..10 {
            let moving = tokio::time::timeout(Duration::from_secs(25), silent.as_mut()).await;
            assert!(moving.is_err(), "closed while bytes moved");
            traffic.moved();
        }
        let quiet = Instant::now();
        silent.await;
        assert!(quiet.elapsed() >= timeout);
        assert!(quiet.elapsed() <= timeout + timeout / CHECKS);
    }
}
