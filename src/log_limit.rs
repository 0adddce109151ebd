//! A log line that cannot flood the log: written at most once per
//! interval, and the line that is written says how many were left out
//! since the one before. Upstream failures, refusals at max_connections and
//! wrong admin tokens use it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// When a line was last written and how many have been left out since. A
/// std mutex: held for a comparison and two writes, never across an
/// `.await`. A rate-limiting crate would decide when to write but not count
/// what it left out, and that count is what the line reports.
#[derive(Debug)]
pub(crate) struct LogLimit {
    every: Duration,
    state: Mutex<Written>,
}

#[derive(Debug, Default)]
struct Written {
    at: Option<Instant>,
    left_out: u64,
}

impl LogLimit {
    /// At most one line every `every`.
    pub(crate) fn new(every: Duration) -> LogLimit {
        LogLimit {
            every,
            state: Mutex::default(),
        }
    }

    /// Records one occurrence: `Some(left out since the last line)` when
    /// this one is to be written, `None` when it is left out.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere mid-update of two
        // plain numbers; they are still usable.
        let mut written = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if written
            .at
            .is_some_and(|then| now.duration_since(then) < self.every)
        {
            written.left_out += 1;
            return None;
        }
        written.at = Some(now);
        Some(std::mem::take(&mut written.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_first_then_one_per_interval_with_the_count_left_out() {
        let every = Duration::from_secs(5);
        let limit = LogLimit::new(every);
        let start = Instant::now();
        assert_eq!(limit.admit_at(start), Some(0));
        for ms in [1, 100, 4_999] {
            assert_eq!(limit.admit_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.admit_at(start + every), Some(3));
        assert_eq!(limit.admit_at(start + every * 2), Some(0));
        assert_eq!(
            limit.admit_at(start + every * 2 + Duration::from_secs(1)),
            None
        );
    }
}
