//! What an HTTP connection is doing, for its idle timeout: it counts its
//! requests in flight, from the request head to the end of the response
//! body ([`Tracked`]). One or two atomics per request, never an allocation
//! or a lock; used by the data plane's HTTP services and the admin API.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use http_body::Body;
use tokio::time::Instant;

use crate::body::{Frames, Polled, Wrapped};

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

/// A response body that keeps its request in flight until it is done.
pub(crate) type Tracked<B> = Wrapped<B, Busy>;

impl<B> Tracked<B> {
    pub(crate) fn new(inner: B, busy: Busy) -> Tracked<B> {
        Wrapped::wrap(inner, busy)
    }
}

impl<B: Body> Frames<B> for Busy {
    type Error = B::Error;

    fn poll_frame(&mut self, inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, B::Error> {
        inner.poll_frame(cx)
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
}
