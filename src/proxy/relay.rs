//! Moves bytes both ways between a client and its upstream while obeying the
//! live rules through the connection's [`Policy`]: each direction runs its
//! chain of stages (a per-chunk delay today, see `stage.rs`), and cuts
//! (drop, blackhole) reach an open connection as soon as rules change.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::idle::Traffic;
use super::policy::{Fate, Policy, Ruling};
use super::stage::{Chain, Piece, Retune};
use super::{Flow, ServiceContext};

/// Read size per chunk on a busy stream; also the unit a per-chunk delay
/// applies to.
const CHUNK: usize = 16 * 1024;
/// Read size on a quiet stream, kept inside the connection's task: an idle
/// connection holds no heap buffer.
const SMALL: usize = 1024;
/// Bytes a direction's stages may hold before it stops reading (backpressure).
const MAX_HELD: usize = 1024 * 1024;

/// How a relay or a hold ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides finished or one failed, a blackhole let go, the
    /// connection went idle, or shutdown's deadline passed: close both.
    Closed,
    /// A drop hit, or a stage reset the connection: reset both sides.
    Reset,
}

/// Relays between the client halves and the upstream halves until both
/// sides close, a cut arrives, no bytes move for `idle_timeout`, or
/// shutdown's deadline passes. `ruling` is the one in force as it starts.
/// A blackhole's hold is exempt from the idle timeout: a dead data center
/// leaves connections hanging, and so does the drill.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn relay<CR, CW, UR, UW>(
    mut client_read: CR,
    mut client_write: CW,
    mut upstream_read: UR,
    mut upstream_write: UW,
    context: &ServiceContext,
    policy: &mut Policy,
    ruling: Ruling,
    idle_timeout: Duration,
    hard_stop: &CancellationToken,
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    UR: AsyncRead + Unpin,
    UW: AsyncWrite + Unpin,
{
    let fate = match ruling.fate {
        Fate::Forward | Fate::Error(_) => {
            let retunes = [Retune::default(), Retune::default()];
            let [upstream, downstream] = ruling.stages();
            retunes[0].set(upstream);
            retunes[1].set(downstream);
            let traffic = Traffic::default();
            let pumps = async {
                tokio::try_join!(
                    pump(
                        &mut client_read,
                        &mut upstream_write,
                        Chain::default(),
                        &retunes[0],
                        &traffic,
                        |n| context.count_bytes(Flow::Upstream, n),
                    ),
                    pump(
                        &mut upstream_read,
                        &mut client_write,
                        Chain::default(),
                        &retunes[1],
                        &traffic,
                        |n| context.count_bytes(Flow::Downstream, n),
                    ),
                )
            };
            tokio::select! {
                // Rule changes first: bytes that arrive together with a cut
                // must not slip through.
                biased;
                fate = watch(policy, context, &retunes, hard_stop) => fate,
                result = pumps => {
                    return match result {
                        Err(e) if e.get_ref().is_some_and(|e| e.is::<StageReset>()) => End::Reset,
                        Err(e) => {
                            tracing::debug!(service = %context.service.name, "connection ended: {e}");
                            End::Closed
                        }
                        Ok(_) => End::Closed,
                    };
                }
                () = traffic.silent_for(idle_timeout) => {
                    tracing::debug!(service = %context.service.name, "closing a connection idle for {}", humantime::format_duration(idle_timeout));
                    return End::Closed;
                }
            }
        }
        // A cut may already be in force (an upgraded HTTP connection is
        // decided on only once its upgrade completes).
        fate => Some(fate),
    };
    match fate {
        None => End::Closed,
        Some(fate) => {
            let upstream = Some(&mut upstream_read);
            hold(&mut client_read, upstream, context, policy, fate, hard_stop).await
        }
    }
}

/// Keeps each direction's stages in step with the rules until a change
/// cuts the connection; returns that fate, or `None` on hard stop.
async fn watch(
    policy: &mut Policy,
    context: &ServiceContext,
    retunes: &[Retune; 2],
    hard_stop: &CancellationToken,
) -> Option<Fate> {
    loop {
        let ruling = policy.changed(context, hard_stop).await?;
        match ruling.fate {
            Fate::Forward | Fate::Error(_) => {
                let [upstream, downstream] = ruling.stages();
                retunes[0].set(upstream);
                retunes[1].set(downstream);
            }
            fate => return Some(fate),
        }
    }
}

/// Acts on `fate`: a blackhole holds the connection, so nothing passes
/// either way, reading and discarding what either side sends until it
/// ends or shutdown starts (then `Closed`), the client goes away
/// (`Closed`), or a drop replaces it (`Reset`).
pub(crate) async fn hold<C, U>(
    client: &mut C,
    mut upstream: Option<&mut U>,
    context: &ServiceContext,
    policy: &mut Policy,
    mut fate: Fate,
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
        match fate {
            Fate::Blackhole => {}
            Fate::Drop => return End::Reset,
            Fate::Forward | Fate::Error(_) | Fate::Released => return End::Closed,
        }
        tokio::select! {
            changed = policy.changed(context, hard_stop) => match changed {
                Some(ruling) => fate = ruling.fate,
                None => return End::Closed,
            },
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
        }
    }
}

/// Why a pump ended the connection: a stage asked for a reset.
#[derive(Debug, thiserror::Error)]
#[error("a stage reset the connection")]
struct StageReset;

/// Copies one direction, chunk by chunk, through its chain of stages.
/// Without stages it is a plain read-then-write loop; with them, what they
/// hold goes out when they let it while reading goes on, up to
/// [`MAX_HELD`]. The stages in force when bytes arrive are the ones they
/// go through, so a change that comes while a read waits applies at once.
/// `count` is told of the payload bytes written.
async fn pump<R, W>(
    reader: &mut R,
    writer: &mut W,
    mut chain: Chain,
    retune: &Retune,
    traffic: &Traffic,
    count: impl Fn(usize),
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = ReadBuffer::new();
    let mut eof = false;
    loop {
        let n = if chain.is_transparent() {
            if eof {
                // Half-close: pass the end of this direction on and let the
                // other direction keep flowing.
                return writer.shutdown().await;
            }
            reader.read(buf.space()).await?
        } else {
            tokio::select! {
                biased;
                piece = chain.next() => {
                    match piece {
                        Piece::Data(chunk) => {
                            writer.write_all(&chunk).await?;
                            count(chunk.len());
                        }
                        Piece::End => return writer.shutdown().await,
                        Piece::Reset => return Err(std::io::Error::other(StageReset)),
                    }
                    continue;
                }
                read = reader.read(buf.space()), if !eof && chain.held() < MAX_HELD => read?,
            }
        };
        if let Some(specs) = retune.take() {
            chain.adopt(&specs);
        }
        if n == 0 {
            eof = true;
            if !chain.is_transparent() {
                chain.push(Piece::End);
            }
            continue;
        }
        traffic.moved();
        if chain.is_transparent() {
            writer.write_all(buf.data(n)).await?;
            count(n);
        } else {
            chain.push(Piece::Data(bytes::Bytes::copy_from_slice(buf.data(n))));
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use tokio::io::duplex;
    use tokio::time::Instant;

    use super::*;
    use crate::fault::Latency;
    use crate::proxy::stage::{Spec, Stage};

    /// Runs a pump from one duplex pipe to another; returns the far ends
    /// and the pump's result.
    fn pipe<'a>(
        retune: &'a Retune,
        traffic: &'a Traffic,
        written: &'a AtomicUsize,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        impl std::future::Future<Output = std::io::Result<()>> + 'a,
    ) {
        let (client, mut near_in) = duplex(64 * 1024);
        let (mut near_out, server) = duplex(64 * 1024);
        let pump = async move {
            let count = |n| {
                written.fetch_add(n, Ordering::Relaxed);
            };
            let chain = Chain::default();
            pump(&mut near_in, &mut near_out, chain, retune, traffic, count).await
        };
        (client, server, pump)
    }

    /// Writes `data` into `from` and reads it back out of `to`, ending
    /// with `end`; returns how long that took.
    async fn carry(
        from: &mut tokio::io::DuplexStream,
        to: &mut tokio::io::DuplexStream,
        data: &[u8],
        end: bool,
    ) -> Duration {
        let started = Instant::now();
        from.write_all(data).await.unwrap();
        let mut got = vec![0u8; data.len()];
        to.read_exact(&mut got).await.unwrap();
        assert_eq!(got, data);
        if end {
            from.shutdown().await.unwrap();
            assert_eq!(
                to.read(&mut [0u8; 1]).await.unwrap(),
                0,
                "the end passes on"
            );
        }
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_without_stages_copies_at_once_and_passes_the_end_on() {
        let (retune, traffic, written) =
            (Retune::default(), Traffic::default(), AtomicUsize::new(0));
        let (mut client, mut server, pump) = pipe(&retune, &traffic, &written);
        let test = async {
            let took = carry(&mut client, &mut server, b"hello", true).await;
            assert_eq!(took, Duration::ZERO);
        };
        let (result, ()) = tokio::join!(pump, test);
        result.unwrap();
        assert_eq!(written.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_delays_bytes_by_the_stage_in_force_when_they_arrive() {
        let (retune, traffic, written) =
            (Retune::default(), Traffic::default(), AtomicUsize::new(0));
        let (mut client, mut server, pump) = pipe(&retune, &traffic, &written);
        let latency = Latency {
            base: Duration::from_millis(200),
            jitter: Duration::ZERO,
        };
        let test = async {
            retune.set(vec![Spec::Delay(latency)]);
            let took = carry(&mut client, &mut server, b"slow", false).await;
            assert_eq!(took, Duration::from_millis(200));
            retune.set(Vec::new());
            let took = carry(&mut client, &mut server, b"fast", true).await;
            assert_eq!(took, Duration::ZERO, "the lift applies to the next bytes");
        };
        let (result, ()) = tokio::join!(pump, test);
        result.unwrap();
        assert_eq!(written.load(Ordering::Relaxed), 8);
    }

    /// A stage that resets the connection at the first byte, as
    /// Toxiproxy's `reset_peer` does after its timeout.
    #[derive(Debug, Default)]
    struct ResetAtOnce(bool);

    impl Stage for ResetAtOnce {
        fn push(&mut self, _: Piece) {
            self.0 = true;
        }
        fn poll_next(&mut self, _: &mut Context<'_>) -> Poll<Option<Piece>> {
            Poll::Ready(std::mem::take(&mut self.0).then_some(Piece::Reset))
        }
        fn held(&self) -> usize {
            0
        }
        fn is_transparent(&self) -> bool {
            false
        }
        fn retune(&mut self, _: &Spec) -> bool {
            false
        }
        fn retire(&mut self) {}
        fn is_spent(&self) -> bool {
            false
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stage_can_reset_the_connection_without_the_pump_knowing_it() {
        let written = AtomicUsize::new(0);
        let (mut client, mut near_in) = duplex(1024);
        let (mut near_out, _server) = duplex(1024);
        client.write_all(b"x").await.unwrap();
        let chain = Chain::of(vec![Box::new(ResetAtOnce::default())]);
        let count = |n| {
            written.fetch_add(n, Ordering::Relaxed);
        };
        let (retune, traffic) = (Retune::default(), Traffic::default());
        let pump = pump(&mut near_in, &mut near_out, chain, &retune, &traffic, count);
        let error = pump.await.expect_err("the stage reset it");
        assert!(error.get_ref().is_some_and(|e| e.is::<StageReset>()));
        assert_eq!(written.load(Ordering::Relaxed), 0);
    }

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
