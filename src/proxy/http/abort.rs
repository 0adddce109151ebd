//! Ending an upstream connection whatever the upstream does. A request
//! given up while on its way (a 504, or its client gone) aborts its
//! connection from outside, and a connection dropped with a request
//! unanswered is reset rather than closed: hyper would wait to flush what
//! the upstream does not read, and after a close the kernel would keep the
//! socket, and the upstream its connection, for as long as the upstream
//! keeps not reading.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Ends an upstream connection from outside, whatever the upstream does:
/// its next read or write fails, and one stuck on the upstream is woken
/// to find out. hyper alone would wait, to shut the connection down, until
/// the upstream takes what is queued for it.
#[derive(Clone, Default)]
pub(super) struct Abort(Arc<Aborting>);

#[derive(Default)]
struct Aborting {
    aborted: AtomicBool,
    waker: AtomicWaker,
}

impl Abort {
    pub(super) fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.waker.wake();
    }

    /// Errs once aborted; else waits for an abort alongside `poll`.
    fn guard<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        let aborted = || {
            let error = std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the request on this upstream connection was abandoned",
            );
            Poll::Ready(Err(error))
        };
        if self.0.aborted.load(Ordering::Acquire) {
            return aborted();
        }
        let polled = poll(cx);
        if polled.is_pending() {
            self.0.waker.register(cx.waker());
            if self.0.aborted.load(Ordering::Acquire) {
                return aborted();
            }
        }
        polled
    }

    /// The abort of the pooled connection that `captured` went over, if
    /// it got one.
    pub(super) fn of(captured: &CaptureConnection) -> Option<Abort> {
        let connected = captured.connection_metadata();
        let mut extensions = http::Extensions::new();
        connected.as_ref()?.get_extras(&mut extensions);
        extensions.get::<Abort>().cloned()
    }
}

/// Aborts an upstream connection when dropped before [`Armed::disarm`]:
/// held while a request is on its way, so a request given up (504, or the
/// client gone) takes its connection with it.
pub(super) struct Armed(Option<Abort>);

impl Armed {
    pub(super) fn new(abort: &Abort) -> Armed {
        Armed(Some(abort.clone()))
    }

    pub(super) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        if let Some(abort) = self.0.take() {
            abort.abort();
        }
    }
}

/// A TCP stream, or TLS over one.
pub(super) trait OverTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OverTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection that is reset, not closed, when firedrill
    /// lets go of it with a request unanswered (after a 504, say, or when
    /// the client went away), and that [`Abort`] can end from outside. An
    /// idle kept-alive connection, whose last bytes were an answer, closes
    /// as usual.
    pub(super) struct Outgoing<S: OverTcp> {
        #[pin]
        inner: S,
        // Bytes were written, or could not be, since the upstream last
        // sent anything.
        owed: bool,
        abort: Abort,
    }

    impl<S: OverTcp> PinnedDrop for Outgoing<S> {
        fn drop(this: Pin<&mut Self>) {
            if this.owed {
                this.reset();
            }
        }
    }
}

impl<S: OverTcp> Outgoing<S> {
    pub(super) fn new(inner: S) -> Outgoing<S> {
        Outgoing {
            inner,
            owed: false,
            abort: Abort::default(),
        }
    }

    /// What aborts this connection from outside.
    pub(super) fn abort(&self) -> &Abort {
        &self.abort
    }

    fn reset(&self) {
        // Closing with a zero linger resets the connection and discards
        // whatever is still queued for the upstream.
        if let Err(e) = self.inner.tcp().set_zero_linger() {
            tracing::debug!("resetting an unanswered upstream connection: {e}");
        }
    }
}

impl<S: OverTcp + AsyncRead> AsyncRead for Outgoing<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.abort.guard(cx, |cx| this.inner.poll_read(cx, buf));
        if buf.filled().len() > before {
            *this.owed = false;
        }
        read
    }
}

impl<S: OverTcp + AsyncWrite> AsyncWrite for Outgoing<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        *this.owed = true;
        this.abort.guard(cx, |cx| this.inner.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        *this.owed = true;
        this.abort
            .guard(cx, |cx| this.inner.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.project();
        this.abort.guard(cx, |cx| this.inner.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.owed {
            // Nothing more is owed to this upstream, a TLS close_notify
            // included: reset rather than wait on it.
            self.reset();
            return Poll::Ready(Ok(()));
        }
        self.project().inner.poll_shutdown(cx)
    }
}

impl Connection for Outgoing<TcpStream> {
    fn connected(&self) -> Connected {
        self.inner.connected().extra(self.abort.clone())
    }
}
