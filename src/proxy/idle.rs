//! Idle timeouts, kept off the hot path: an HTTP client connection counts
//! its requests in flight ([`Activity`]), a relayed byte stream raises a
//! flag per read ([`Traffic`]), and an upstream response body arms a timer
//! only while it waits ([`Stalling`]). Each is one or two atomics per
//! request or chunk, never an allocation or a lock. (hyper's own
//! `header_read_timeout` would box a new timer per request and covers
//! neither h2 nor a client that sends no bytes at all.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The boxed error bodies that can fail with [`Stalled`] carry.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one HTTP client connection is doing, for its idle timeout: how
/// many requests are in flight (from the request head to the end of the
/// response body) and when the last one ended.
#[derive(Debug)]
pub(crate) struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// When the last request ended, in nanoseconds after `opened`.
    last_end: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        }
    }

    /// Marks a request in flight until the returned guard drops.
    pub(crate) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Since when the connection has had nothing in flight, if it has not.
    fn idle_since(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let nanos = self.last_end.load(Ordering::Acquire);
        Some(self.opened + Duration::from_nanos(nanos))
    }

    /// Returns once the connection has had no request in flight for
    /// `timeout`. One timer per connection, re-armed about once per
    /// `timeout`, whatever the request rate.
    pub(crate) async fn idle_for(&self, timeout: Duration) {
        let sleep = tokio::time::sleep_until(self.opened + timeout);
        tokio::pin!(sleep);
        loop {
            sleep.as_mut().await;
            let now = Instant::now();
            let deadline = self
                .idle_since()
                .map_or(now + timeout, |since| since + timeout);
            if deadline <= now {
                return;
            }
            sleep.as_mut().reset(deadline);
        }
    }
}

/// A request in flight on an HTTP connection.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        let since = Instant::now().saturating_duration_since(activity.opened);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        // The end time first, so whoever sees nothing in flight sees it.
        activity.last_end.fetch_max(nanos, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request in flight until it is done.
    pub(crate) struct Tracked<B> {
        #[pin]
        inner: B,
        _busy: Busy,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, busy: Busy) -> Tracked<B> {
        Tracked { inner, _busy: busy }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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

pin_project_lite::pin_project! {
    /// An upstream response body that fails when the upstream pauses for
    /// longer than `timeout`. The timer is armed only when a read has to
    /// wait, so a body that streams without pause never touches it.
    pub struct Stalling<B> {
        #[pin]
        inner: B,
        // Boxed: responses are moved several times on their way out, and a
        // timer inline would make every move copy it.
        deadline: Option<Pin<Box<Sleep>>>,
        timeout: Duration,
        waiting: bool,
    }
}

impl<B> Stalling<B> {
    pub(crate) fn new(inner: B, timeout: Duration) -> Stalling<B> {
        Stalling {
            inner,
            deadline: None,
            timeout,
            waiting: false,
        }
    }
}

impl<B: Body> Body for Stalling<B>
where
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.waiting = false;
            return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
        }
        if !*this.waiting {
            // The pause starts now.
            *this.waiting = true;
            let due = Instant::now() + *this.timeout;
            match this.deadline.as_mut() {
                Some(deadline) => deadline.as_mut().reset(due),
                None => *this.deadline = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        if let Some(deadline) = this.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Some(Err(Box::new(Stalled(*this.timeout)))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_its_last_request_ends() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(60);
        let busy = activity.begin();
        let idle = activity.idle_for(timeout);
        tokio::pin!(idle);
        // Busy for far longer than the timeout: never idle.
        let held = tokio::time::timeout(Duration::from_secs(600), idle.as_mut()).await;
        assert!(held.is_err(), "idle while a request was in flight");
        let ended = Instant::now();
        drop(busy);
        idle.await;
        assert!(ended.elapsed() >= timeout);
        assert!(ended.elapsed() <= timeout + Duration::from_secs(1));
    }

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
