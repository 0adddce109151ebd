//! Graceful shutdown: a signal to stop accepting, a tracker of every
//! connection task, and a hard stop for what is still running when the
//! drain deadline passes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every listener and connection task; clones are cheap.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when shutdown starts: stop accepting, finish in flight.
    pub draining: CancellationToken,
    /// Cancelled when the drain deadline passes: drop everything.
    pub hard_stop: CancellationToken,
    /// Tracks every listener and connection task.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Stops accepting, waits up to `grace` for open connections to finish,
    /// then cuts the rest. Returns how many tasks were still running at the deadline.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.draining.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.tracker.len();
        tracing::warn!(left, grace = ?grace, "drain deadline passed; closing remaining connections");
        self.hard_stop.cancel();
        // Cut tasks end at their next poll; give them a moment to do so.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        left
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received; shutting down"),
        () = term => tracing::info!("SIGTERM received; shutting down"),
    }
}
