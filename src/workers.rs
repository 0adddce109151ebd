//! Where client connections run. By default on the runtime that accepted
//! them; [`Workers::spawn`] spreads them instead over threads that each run
//! a single-threaded runtime of their own, as HAProxy's threads and nginx's
//! worker processes do. A connection, the upstream connections it opens
//! and its timers then stay on one thread: no work stealing, and no wake-up
//! crosses threads on the way of a request. Accept loops, the admin API and
//! the engine stay on the runtime that called [`crate::start`].
//!
//! Measured on 2 cores shared with the load generator and the upstream,
//! two such workers served small keep-alive requests 23 % faster than one
//! thread, at 5 % less CPU per request, and redis no slower; 1 MiB bodies
//! came about 8 % slower (`--threads 1` serves them as before). A
//! work-stealing runtime with two threads had cost more CPU per request
//! than one.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::live::{FanOut, LocalChanges};

thread_local! {
    /// Which pool and which worker in it this thread is, if it is one.
    static WORKER: Cell<Option<(usize, usize)>> = const { Cell::new(None) };
}

/// Tells pools apart: tests run several in one process.
static NEXT_POOL: AtomicUsize = AtomicUsize::new(1);

/// Where new client connections go; clones share the same threads, which
/// stop when the last clone is dropped.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    /// `None`: on the runtime that accepted them.
    pool: Option<Arc<Pool>>,
}

#[derive(Debug)]
struct Pool {
    id: usize,
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Ends every worker's runtime, and with it the tasks still on it,
    /// when the pool is dropped.
    _stop: DropGuard,
}

impl Workers {
    /// Connections run on the runtime that accepts them.
    pub fn current() -> Workers {
        Workers::default()
    }

    /// Starts `threads` worker threads (at least one), each with a
    /// single-threaded runtime; connections are handed to them in turn.
    pub fn spawn(threads: usize) -> io::Result<Workers> {
        let id = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
        let stop = CancellationToken::new();
        // Ends the threads already started if a later one fails to start,
        // else the pool's threads when it is dropped.
        let guard = stop.clone().drop_guard();
        let mut handles = Vec::new();
        for index in 0..threads.max(1) {
            let (handle, sent) = std::sync::mpsc::channel();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("firedrill-w{index}"))
                .spawn(move || {
                    // Made on its own thread: a runtime must not be dropped
                    // inside another one, as a failed start would.
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = handle.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle.send(Ok(runtime.handle().clone()));
                    WORKER.with(|worker| worker.set(Some((id, index))));
                    runtime.block_on(stop.cancelled());
                })?;
            let handle = sent
                .recv()
                .map_err(|_| io::Error::other("a worker thread ended as it started"))??;
            handles.push(handle);
        }
        Ok(Workers {
            pool: Some(Arc::new(Pool {
                id,
                handles,
                next: AtomicUsize::new(0),
                _stop: guard,
            })),
        })
    }

    /// How many worker threads there are; 1 when connections run where
    /// they are accepted.
    pub fn threads(&self) -> usize {
        self.pool.as_ref().map_or(1, |pool| pool.handles.len())
    }

    /// Whether connections run on worker threads of their own.
    pub(crate) fn pooled(&self) -> bool {
        self.pool.is_some()
    }

    /// Which of these workers the calling thread is, in `0..threads()`: 0 on
    /// any other thread.
    pub(crate) fn current_index(&self) -> usize {
        self.this_worker().unwrap_or(0)
    }

    /// Which of these workers the calling thread is, if it is one.
    pub(crate) fn this_worker(&self) -> Option<usize> {
        let pool = self.pool.as_ref()?;
        match WORKER.with(Cell::get) {
            Some((id, index)) if id == pool.id => Some(index),
            _ => None,
        }
    }

    /// Runs `task(index)` on every worker, untracked: for tasks that end on
    /// their own when what they serve goes away. Nothing on the runtime
    /// that accepts, where there are no workers.
    pub(crate) fn spawn_on_each<T, F>(&self, task: T)
    where
        T: Fn(usize) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        if let Some(pool) = &self.pool {
            for (index, handle) in pool.handles.iter().enumerate() {
                handle.spawn(task(index));
            }
        }
    }

    /// Runs `serve(stream)` as a task that `tracker` counts, on the next
    /// worker in turn. The stream moves to that worker's reactor first.
    pub(crate) fn run_connection<S, F>(&self, tracker: &TaskTracker, stream: TcpStream, serve: S)
    where
        S: FnOnce(TcpStream) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(pool) = &self.pool else {
            tracker.spawn(serve(stream));
            return;
        };
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("cannot hand a connection to a worker: {e}");
                return;
            }
        };
        let next = pool.next.fetch_add(1, Ordering::Relaxed) % pool.handles.len();
        pool.handles[next].spawn(tracker.track_future(async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!("cannot register a connection with a worker: {e}"),
            }
        }));
    }
}

/// A publish wakes one task per worker across threads, and each worker
/// wakes its own connections.
impl FanOut for Workers {
    fn fan_out(&self, changes: watch::Receiver<u64>) -> Option<Box<dyn LocalChanges>> {
        if !self.pooled() {
            return None;
        }
        let senders: Box<[_]> = (0..self.threads()).map(|_| watch::Sender::new(0)).collect();
        // Each ends when the sender of `changes` is dropped.
        self.spawn_on_each(|index| follow(changes.clone(), senders[index].clone()));
        Some(Box::new(PerWorker {
            workers: self.clone(),
            senders,
        }))
    }
}

/// One copy of the change channel per worker.
#[derive(Debug)]
struct PerWorker {
    workers: Workers,
    senders: Box<[watch::Sender<u64>]>,
}

impl LocalChanges for PerWorker {
    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        let index = self.workers.this_worker()?;
        Some(self.senders[index].subscribe())
    }
}

/// Keeps one worker's copy of the change channel up to date.
async fn follow(mut global: watch::Receiver<u64>, local: watch::Sender<u64>) {
    while global.changed().await.is_ok() {
        let generation = *global.borrow_and_update();
        local.send_replace(generation);
    }
}
