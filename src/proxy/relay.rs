//! Moves bytes both ways between a client and its upstream while obeying the
//! live rules: per-chunk delays (pipelined, order kept), and cuts (drop,
//! blackhole) that reach an open connection as soon as rules change.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::idle::Traffic;
use super::{Flow, ServiceContext};
use crate::fault::{connection_roll, decide, Latency, Verdict};

/// Read size per chunk on a busy stream; also the unit a per-chunk delay
/// applies to.
const CHUNK: usize = 16 * 1024;
/// Read size on a quiet stream, kept inside the connection's task: an idle
/// connection holds no heap buffer.
const SMALL: usize = 1024;
/// Bytes a delayed direction may hold before it stops reading (backpressure).
const MAX_DELAYED: usize = 1024 * 1024;

/// The state of one connection's faults, re-evaluated on every rule change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    None,
    Drop,
    Blackhole,
}

/// The current effect of the rules on one connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Effect {
    pub cut: Cut,
    /// Delay before connection setup (tcp).
    pub setup: Latency,
    pub upstream: Latency,
    pub downstream: Latency,
}

/// What one connection remembers between rule changes.
#[derive(Debug)]
pub(crate) struct Connection {
    /// Seeds this connection's probability rolls, so they stay stable.
    seed: u64,
    /// Faults already counted as injected on this connection.
    counted: Vec<u64>,
    pub changes: watch::Receiver<u64>,
}

impl Connection {
    /// `seed` fixes this connection's probability rolls: random for a TCP
    /// connection, the request's own for an upgraded HTTP connection.
    pub fn new(context: &ServiceContext, seed: u64) -> Connection {
        let mut changes = context.live.subscribe();
        changes.borrow_and_update();
        Connection {
            seed,
            counted: Vec::new(),
            changes,
        }
    }

    /// Decides what the current rules do to this connection, counting each
    /// fault once per connection when it first takes effect.
    pub fn evaluate(&mut self, context: &ServiceContext) -> Effect {
        let rules = context.live.load();
        let faults = rules.slot(context.slot);
        if faults.is_empty() {
            self.counted.clear();
            return Effect {
                cut: Cut::None,
                setup: Latency::default(),
                upstream: Latency::default(),
                downstream: Latency::default(),
            };
        }
        let decision = decide(faults, None, |fault| connection_roll(self.seed, fault));
        let fresh: Vec<_> = decision
            .applied
            .iter()
            .copied()
            .filter(|f| !self.counted.contains(&f.uid))
            .collect();
        context.metrics.faults_injected(&fresh);
        self.counted = decision.applied.iter().map(|f| f.uid).collect();
        Effect {
            cut: match decision.verdict {
                Verdict::Blackhole => Cut::Blackhole,
                Verdict::Drop => Cut::Drop,
                Verdict::Forward | Verdict::Error(_) => Cut::None,
            },
            setup: decision.delay,
            upstream: decision.upstream,
            downstream: decision.downstream,
        }
    }

    /// Waits for a rule change that cuts this connection, keeping `delays`
    /// current meanwhile. Returns `None` on hard stop.
    async fn watch(
        &mut self,
        context: &ServiceContext,
        delays: &[SharedLatency; 2],
        hard_stop: &CancellationToken,
    ) -> Option<Cut> {
        loop {
            tokio::select! {
                () = hard_stop.cancelled() => return None,
                changed = self.changes.changed() => {
                    changed.expect("the rules outlive every connection");
                }
            }
            let effect = self.evaluate(context);
            if effect.cut != Cut::None {
                return Some(effect.cut);
            }
            delays[0].set(effect.upstream);
            delays[1].set(effect.downstream);
        }
    }
}

/// A [`Latency`] that pumps read while the watcher updates it.
#[derive(Debug, Default)]
struct SharedLatency {
    base: AtomicU64,
    jitter: AtomicU64,
}

impl SharedLatency {
    fn set(&self, latency: Latency) {
        self.base.store(nanos(latency.base), Ordering::Relaxed);
        self.jitter.store(nanos(latency.jitter), Ordering::Relaxed);
    }

    fn get(&self) -> Latency {
        Latency {
            base: Duration::from_nanos(self.base.load(Ordering::Relaxed)),
            jitter: Duration::from_nanos(self.jitter.load(Ordering::Relaxed)),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished, or one failed.
    Closed,
    /// A drop fault hit: the caller resets both sides.
    Dropped,
    /// A blackhole held the connection and has ended: close both sides.
    Released,
    /// Shutdown's deadline passed.
    Stopped,
    /// No bytes moved either way for the idle timeout: close both sides.
    Idle,
}

/// Relays between the client halves and the upstream halves until both
/// sides close, a cut arrives, no bytes move for `idle_timeout`, or
/// shutdown's deadline passes. A blackhole's hold is exempt from the idle
/// timeout: a dead data center leaves connections hanging, and so does the
/// drill.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay<CR, CW, UR, UW>(
    mut client_read: CR,
    mut client_write: CW,
    mut upstream_read: UR,
    mut upstream_write: UW,
    context: &ServiceContext,
    connection: &mut Connection,
    effect: Effect,
    idle_timeout: Duration,
    hard_stop: &CancellationToken,
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    // A cut may already be in force (an upgraded HTTP connection is
    // evaluated only once its upgrade completes).
    match effect.cut {
        Cut::Drop => return End::Dropped,
        Cut::Blackhole => {
            let upstream = Some(&mut upstream_read);
            return hold(&mut client_read, upstream, context, connection, hard_stop).await;
        }
        Cut::None => {}
    }
    let delays = [SharedLatency::default(), SharedLatency::default()];
    delays[0].set(effect.upstream);
    delays[1].set(effect.downstream);
    let traffic = Traffic::default();
    let cut = {
        let pumps = async {
            tokio::try_join!(
                pump(
                    &mut client_read,
                    &mut upstream_write,
                    &delays[0],
                    &traffic,
                    context,
                    Flow::Upstream
                ),
                pump(
                    &mut upstream_read,
                    &mut client_write,
                    &delays[1],
                    &traffic,
                    context,
                    Flow::Downstream
                ),
            )
        };
        tokio::select! {
            // Rule changes first: bytes that arrive together with a cut must
            // not slip through.
            biased;
            cut = connection.watch(context, &delays, hard_stop) => cut,
            result = pumps => {
                if let Err(e) = result {
                    tracing::debug!(service = %context.service.name, "connection ended: {e}");
                }
                return End::Closed;
            }
            () = traffic.silent_for(idle_timeout) => {
                tracing::debug!(service = %context.service.name, "closing a connection idle for {}", humantime::format_duration(idle_timeout));
                return End::Idle;
            }
        }
    };
    match cut {
        None => End::Stopped,
        Some(Cut::Drop) | Some(Cut::None) => End::Dropped,
        Some(Cut::Blackhole) => {
            hold(
                &mut client_read,
                Some(&mut upstream_read),
                context,
                connection,
                hard_stop,
            )
            .await
        }
    }
}

/// A blackhole: nothing passes either way. Reads and discards what either
/// side sends until the blackhole lifts or shutdown starts (then
/// `Released`), the client goes away (`Closed`), or a drop fault replaces
/// it (`Dropped`).
pub(crate) async fn hold<C, U>(
    client: &mut C,
    mut upstream: Option<&mut U>,
    context: &ServiceContext,
    connection: &mut Connection,
    hard_stop: &CancellationToken,
) -> End
where
    C: AsyncRead + Unpin,
    U: AsyncRead + Unpin,
{
    let mut sink = [0u8; SMALL];
    let mut upstream_sink = [0u8; SMALL];
    let mut upstream_open = upstream.is_some();
    loop {
        // Such a connection can never finish: shutdown lets it go at once.
        if context.live.load().draining() {
            return End::Released;
        }
        tokio::select! {
            () = hard_stop.cancelled() => return End::Stopped,
            read = client.read(&mut sink) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return End::Closed;
                }
            }
            read = async {
                match upstream.as_mut() {
                    Some(upstream) => upstream.read(&mut upstream_sink).await,
                    None => std::future::pending().await,
                }
            }, if upstream_open => {
                upstream_open = matches!(read, Ok(n) if n > 0);
            }
            changed = connection.changes.changed() => {
                changed.expect("the rules outlive every connection");
                match connection.evaluate(context).cut {
                    Cut::Blackhole => {}
                    Cut::Drop => return End::Dropped,
                    Cut::None => return End::Released,
                }
            }
        }
    }
}

/// Copies one direction, chunk by chunk. Without a delay it is a plain
/// read-then-write loop; with one, chunks wait in a queue until they are due
/// while reading goes on, so a delay adds latency without cutting throughput.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    delay: &SharedLatency,
    traffic: &Traffic,
    context: &ServiceContext,
    flow: Flow,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = ReadBuffer::new();
    let mut queue: VecDeque<(Instant, Bytes)> = VecDeque::new();
    let mut queued = 0usize;
    let mut last_due = Instant::now();
    let mut eof = false;
    loop {
        let n = if queue.is_empty() {
            if eof {
                // Half-close: pass the end of this direction on and let the
                // other direction keep flowing.
                return writer.shutdown().await;
            }
            reader.read(buf.space()).await?
        } else {
            let front_due = queue.front().map(|(due, _)| *due);
            tokio::select! {
                biased;
                () = sleep_until_some(front_due) => {
                    let (_, chunk) = queue.pop_front().expect("a due chunk is queued");
                    queued -= chunk.len();
                    writer.write_all(&chunk).await?;
                    context.count_bytes(flow, chunk.len());
                    continue;
                }
                read = reader.read(buf.space()), if !eof && queued < MAX_DELAYED => read?,
            }
        };
        if n == 0 {
            eof = true;
            continue;
        }
        traffic.moved();
        // The delay in force when the bytes arrive is the one they get, so
        // a delay that starts or ends while a read waits applies at once.
        let latency = delay.get();
        if latency.is_zero() && queue.is_empty() {
            writer.write_all(buf.data(n)).await?;
            context.count_bytes(flow, n);
        } else {
            last_due = enqueue(&mut queue, buf.data(n), latency, last_due);
            queued += n;
        }
        buf.adapt(n);
    }
}

/// A read buffer that stays small (and off the heap) while a stream is
/// quiet and grows while it is busy, so 10,000 idle connections cost little
/// memory and a bulk transfer still moves big chunks.
struct ReadBuffer {
    small: [u8; SMALL],
    big: Option<Box<[u8]>>,
}

impl ReadBuffer {
    fn new() -> ReadBuffer {
        ReadBuffer {
            small: [0; SMALL],
            big: None,
        }
    }

    fn space(&mut self) -> &mut [u8] {
        match &mut self.big {
            Some(big) => big,
            None => &mut self.small,
        }
    }

    fn data(&self, n: usize) -> &[u8] {
        match &self.big {
            Some(big) => &big[..n],
            None => &self.small[..n],
        }
    }

    /// Grows after a read that filled the small buffer; shrinks after one
    /// that would have fit in it.
    fn adapt(&mut self, n: usize) {
        match self.big {
            None if n == SMALL => self.big = Some(vec![0; CHUNK].into_boxed_slice()),
            Some(_) if n < SMALL => self.big = None,
            _ => {}
        }
    }
}

/// Queues `chunk` to be written after `latency`, but never before the chunk
/// ahead of it (due at `last_due`), so order is kept. Returns its due time.
fn enqueue(
    queue: &mut VecDeque<(Instant, Bytes)>,
    chunk: &[u8],
    latency: Latency,
    last_due: Instant,
) -> Instant {
    let due = (Instant::now() + latency.sample(rand::random())).max(last_due);
    queue.push_back((due, Bytes::copy_from_slice(chunk)));
    due
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_buffer_grows_while_busy_and_shrinks_when_quiet() {
        let mut buf = ReadBuffer::new();
        assert_eq!(buf.space().len(), SMALL);
        buf.adapt(10);
        assert_eq!(buf.space().len(), SMALL, "a short read keeps it small");
        buf.adapt(SMALL);
        assert_eq!(buf.space().len(), CHUNK, "a full small read grows it");
        buf.space()[..3].copy_from_slice(b"abc");
        assert_eq!(buf.data(3), b"abc");
        buf.adapt(CHUNK);
        assert_eq!(buf.space().len(), CHUNK, "busy streams keep big chunks");
        buf.adapt(SMALL - 1);
        assert_eq!(buf.space().len(), SMALL, "a quiet read frees it");
    }
}
