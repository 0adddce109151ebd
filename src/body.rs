//! One body wrapper for every body firedrill wraps: [`Wrapped`] holds the
//! inner body and a [`Frames`] that decides what each poll gives (count
//! the bytes, keep a request in flight, time out a pause, cut on a rule
//! change), and passes the rest of [`Body`] through unchanged. [`Cut`]
//! is the shape of those that add errors of their own.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};

/// The error a body that adds failures of its own gives.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one poll of a body `B` gives, with errors `E`.
pub type Polled<B, E> = Poll<Option<Result<Frame<<B as Body>::Data>, E>>>;

/// What a [`Wrapped`] body does on each poll of the body `B` it wraps.
pub trait Frames<B: Body> {
    type Error;

    /// Polls `inner` (or not, when holding it) and gives its frame, seen
    /// or changed, or an error of its own.
    fn poll_frame(&mut self, inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, Self::Error>;
}

pin_project_lite::pin_project! {
    /// `inner`, polled through `frames`.
    #[derive(Debug)]
    pub struct Wrapped<B, F> {
        #[pin]
        inner: B,
        frames: F,
    }
}

impl<B, F> Wrapped<B, F> {
    /// Wraps `inner`, to be polled through `frames`.
    pub fn wrap(inner: B, frames: F) -> Wrapped<B, F> {
        Wrapped { inner, frames }
    }

    /// What polls the inner body.
    pub fn frames(&self) -> &F {
        &self.frames
    }
}

impl<B: Body, F: Frames<B>> Body for Wrapped<B, F> {
    type Data = B::Data;
    type Error = F::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled<B, Self::Error> {
        let this = self.project();
        this.frames.poll_frame(this.inner, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A [`Frames`] that passes the inner body's frames on, errors boxed, and
/// may end the body with an error of its own while it waits: a timer, or
/// a watch of the live rules.
pub trait Cut {
    /// Whether the inner body may be polled now; a held body is not.
    fn open(&mut self) -> bool {
        true
    }

    /// The inner body gave a frame (or its end).
    fn passed(&mut self) {}

    /// While the inner body waits, or is held: an error to end it with.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<BoxError>;
}

impl<B: Body, C: Cut> Frames<B> for C
where
    B::Error: Into<BoxError>,
{
    type Error = BoxError;

    fn poll_frame(&mut self, inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, BoxError> {
        if self.open() {
            if let Poll::Ready(frame) = inner.poll_frame(cx) {
                self.passed();
                return Poll::Ready(frame.map(|result| result.map_err(Into::into)));
            }
        }
        self.poll_cut(cx).map(|e| Some(Err(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};

    /// Counts the frames it passes on.
    struct Passed(usize);

    impl<B: Body> Frames<B> for Passed {
        type Error = B::Error;

        fn poll_frame(&mut self, inner: Pin<&mut B>, cx: &mut Context<'_>) -> Polled<B, B::Error> {
            let polled = inner.poll_frame(cx);
            if let Poll::Ready(Some(Ok(_))) = &polled {
                self.0 += 1;
            }
            polled
        }
    }

    #[tokio::test]
    async fn a_wrapped_body_passes_its_frames_through_and_keeps_its_size() {
        let mut body = Wrapped::wrap(Full::new(Bytes::from_static(b"hello")), Passed(0));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert_eq!(body.frames().0, 1);
    }
}
