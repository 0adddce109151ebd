//! Upstream failures (a refused or timed-out connect, a failed TLS
//! handshake, a broken exchange) logged at `warn`: at most one line every
//! few seconds per service, saying how many failures it left out since.

use std::fmt::Display;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::ServiceContext;

/// How often one service may log an upstream failure.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// When a service last logged an upstream failure, and how many it has
/// left out since. A std mutex: held for a comparison and two writes,
/// never across an `.await`. A crate such as governor would decide when
/// to log but not count what it left out, and that count is the point.
#[derive(Debug, Default)]
pub struct UpstreamFailures(Mutex<Logged>);

#[derive(Debug, Default)]
struct Logged {
    at: Option<Instant>,
    suppressed: u64,
}

impl UpstreamFailures {
    /// Records a failure at `now`: `Some(left out since the last line)`
    /// when this one is to be logged, `None` when it is left out.
    fn record(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update of two
        // plain numbers; they are still usable.
        let mut logged = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if logged
            .at
            .is_some_and(|then| now.duration_since(then) < LOG_EVERY)
        {
            logged.suppressed += 1;
            return None;
        }
        logged.at = Some(now);
        Some(std::mem::take(&mut logged.suppressed))
    }
}

impl ServiceContext {
    /// Logs that the upstream failed, `what` completing "upstream ..."
    /// (say, "is unreachable: connection refused"), unless this service
    /// logged one within the last few seconds.
    pub(crate) fn upstream_failed(&self, what: &dyn Display) {
        if let Some(suppressed) = self.failures.record(Instant::now()) {
            let service = &self.service;
            tracing::warn!(
                service = %service.name,
                datacenter = %service.datacenter,
                upstream = %service.upstream,
                suppressed,
                "upstream {what}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_failure_then_one_per_interval_with_the_count_left_out() {
        let failures = UpstreamFailures::default();
        let start = Instant::now();
        assert_eq!(failures.record(start), Some(0));
        for ms in [1, 100, 4_999] {
            assert_eq!(failures.record(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(failures.record(start + LOG_EVERY), Some(3));
        assert_eq!(failures.record(start + LOG_EVERY * 2), Some(0));
        assert_eq!(
            failures.record(start + LOG_EVERY * 2 + Duration::from_secs(1)),
            None
        );
    }
}
