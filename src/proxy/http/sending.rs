//! A request body on its way upstream, watched so that waiting on the
//! upstream and waiting on the client are told apart: `timeout` starts once
//! the whole request has been handed to the upstream connection, a client
//! that uploads slowly never counts against the upstream, an upstream that
//! stops taking the body is caught after `upstream_idle_timeout`, and a
//! client's broken body is the client's error.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::{Frames, Polled, Wrapped};

/// The upstream has been handed a frame and not asked for the next yet.
const UPSTREAM: u64 = 0;
/// The body waits for the client's next bytes.
const CLIENT: u64 = 1;
/// The whole body has been handed over.
const SENT: u64 = 2;
/// The client's body failed.
const FAILED: u64 = 3;

/// How far a request body has got, shared by the body (polled by the
/// upstream connection) and the request waiting for its answer.
pub(super) struct Progress {
    base: Instant,
    /// The phase in the low two bits, above them when it began, in
    /// nanoseconds after `base` (only for `UPSTREAM` and `SENT`).
    state: AtomicU64,
    /// Woken when the body ends or fails; frames in between wake nobody.
    ended: Notify,
    /// What was wrong with the client's body.
    failure: OnceLock<String>,
}

/// Which limit the upstream overran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Overdue {
    /// It stopped taking the request body for `upstream_idle_timeout`.
    Body,
    /// It sent no response headers within `timeout` of the whole request.
    Headers,
}

impl Progress {
    pub(super) fn new() -> Arc<Progress> {
        Arc::new(Progress {
            base: Instant::now(),
            // Until the body is first asked for, the connection is being
            // set up and the head written: the upstream's turn.
            state: AtomicU64::new(UPSTREAM),
            ended: Notify::new(),
            failure: OnceLock::new(),
        })
    }

    fn set(&self, phase: u64) {
        let since = match phase {
            UPSTREAM | SENT => self.base.elapsed().as_nanos() as u64,
            _ => 0,
        };
        self.state.store(since << 2 | phase, Ordering::Release);
        if matches!(phase, SENT | FAILED) {
            self.ended.notify_one();
        }
    }

    fn load(&self) -> (u64, Instant) {
        let state = self.state.load(Ordering::Acquire);
        (state & 3, self.base + Duration::from_nanos(state >> 2))
    }

    /// What was wrong with the client's body, once it failed.
    pub(super) fn client_failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Resolves when the upstream has held the request up for too long:
    /// taking no body for `stall` while the client had some to give, or
    /// sending no response headers within `timeout` of the whole request.
    /// Time spent waiting for the client's bytes never counts.
    pub(super) async fn overdue(&self, stall: Duration, timeout: Duration) -> Overdue {
        loop {
            let ended = self.ended.notified();
            let mut ended = std::pin::pin!(ended);
            ended.as_mut().enable();
            let (phase, since) = self.load();
            let (due, overdue) = match phase {
                SENT => (since + timeout, Overdue::Headers),
                UPSTREAM => (since + stall, Overdue::Body),
                // Looked at again after `stall`, in case the upstream has
                // since been handed a frame and sits on it.
                CLIENT => (Instant::now() + stall, Overdue::Body),
                // The request fails with the client's error.
                _ => return std::future::pending().await,
            };
            tokio::select! {
                () = ended => {}
                () = tokio::time::sleep_until(due) => {
                    if phase != CLIENT && self.load() == (phase, since) {
                        return overdue;
                    }
                }
            }
        }
    }
}

/// `inner` reporting its progress to a [`Progress`], when given.
pub type Sending<B> = Wrapped<B, Option<Arc<Progress>>>;

impl<B> Sending<B> {
    pub(super) fn new(inner: B, progress: Option<Arc<Progress>>) -> Sending<B> {
        Wrapped::wrap(inner, progress)
    }
}

impl<B> Frames<B> for Option<Arc<Progress>>
where
    B: Body,
    B::Error: std::error::Error,
{
    type Error = B::Error;

    fn poll_frame(&mut self, mut inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, B::Error> {
        let Some(progress) = self else {
            return inner.poll_frame(cx);
        };
        let frame = inner.as_mut().poll_frame(cx);
        match &frame {
            Poll::Pending => progress.set(CLIENT),
            Poll::Ready(None) => progress.set(SENT),
            // The upstream connection asks for no more once the body says
            // it has ended.
            Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => progress.set(SENT),
            Poll::Ready(Some(Ok(_))) => progress.set(UPSTREAM),
            Poll::Ready(Some(Err(e))) => {
                let chain =
                    std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source());
                let chain: Vec<String> = chain.map(|e| e.to_string()).collect();
                let _ = progress.failure.set(chain.join(": "));
                progress.set(FAILED);
            }
        }
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);
    const TIMEOUT: Duration = Duration::from_secs(3);

    /// Timers fire on whole milliseconds.
    fn assert_about(elapsed: Duration, limit: Duration) {
        let late = elapsed.saturating_sub(limit);
        assert!(
            elapsed >= limit && late < Duration::from_millis(2),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_waiting_for_the_client_never_counts() {
        let progress = Progress::new();
        progress.set(CLIENT);
        let started = Instant::now();
        let overdue = progress.overdue(STALL, TIMEOUT);
        let mut overdue = std::pin::pin!(overdue);
        // A long wait for the client, then the body ends.
        assert!(tokio::time::timeout(STALL * 5, overdue.as_mut())
            .await
            .is_err());
        progress.set(SENT);
        let sent = Instant::now();
        assert_eq!(overdue.await, Overdue::Headers);
        assert_about(sent.elapsed(), TIMEOUT);
        assert!(started.elapsed() > STALL * 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_that_takes_no_body_is_overdue_after_the_stall_limit() {
        let progress = Progress::new();
        progress.set(CLIENT);
        tokio::time::advance(STALL * 3).await;
        let handed = Instant::now();
        progress.set(UPSTREAM);
        assert_eq!(progress.overdue(STALL, TIMEOUT).await, Overdue::Body);
        assert_about(handed.elapsed(), STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_client_body_is_never_overdue() {
        let progress = Progress::new();
        let _ = progress.failure.set("bad chunk".to_owned());
        progress.set(FAILED);
        let overdue = progress.overdue(STALL, TIMEOUT);
        assert!(tokio::time::timeout(STALL * 10, overdue).await.is_err());
        assert_eq!(progress.client_failure(), Some("bad chunk"));
    }
}
