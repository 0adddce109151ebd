//! Graceful shutdown: a signal to stop accepting, a tracker of every
//! connection task, and a hard stop for what is still running when the
//! drain deadline passes.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::workers::Workers;

/// Shared by every listener and connection task; clones are cheap.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when shutdown starts: stop accepting, finish in flight.
    pub draining: CancellationToken,
    /// Cancelled when the drain ends (at the deadline at the latest): drop
    /// every connection left, stop the admin API and the engine.
    pub hard_stop: CancellationToken,
    /// Tracks every listener and connection task.
    pub tracker: TaskTracker,
    /// Where client connections run.
    pub workers: Workers,
}

impl Shutdown {
    /// Stops accepting, waits up to `grace` for open connections to finish,
    /// then cuts the rest. Returns how many tasks were still running at the deadline.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.draining.cancel();
        self.tracker.close();
        let left = match tokio::time::timeout(grace, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tracker.len();
                tracing::warn!(left, grace = ?grace, "drain deadline passed; closing remaining connections");
                left
            }
        };
        // Also stops the admin API and the engine, which serve on while
        // connections drain.
        self.hard_stop.cancel();
        // Cut tasks end at their next poll; give them a moment to do so.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tracker.wait()).await;
        left
    }
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, listened for from the moment
/// [`Signals::install`] returns, so a signal that arrives during start-up
/// still drains instead of killing the process.
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Ctrl-C or SIGTERM: shut down.
    Stop,
    /// SIGHUP: re-read the plan.
    Reload,
}

impl Signals {
    /// Installs the handlers; must run inside a tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
                hangup: signal(SignalKind::hangup())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves on the next Ctrl-C, SIGTERM or SIGHUP.
    pub async fn recv(&mut self) -> Received {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {
                tracing::info!("ctrl-c received; shutting down");
                Received::Stop
            }
            _ = self.terminate.recv() => {
                tracing::info!("SIGTERM received; shutting down");
                Received::Stop
            }
            _ = self.hangup.recv() => {
                tracing::info!("SIGHUP received; reloading the plan");
                Received::Reload
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("ctrl-c received; shutting down");
            Received::Stop
        }
    }
}
