//! The one body type used end to end: client → gateway → upstream and back.
//!
//! Bodies stream frame by frame (nothing is buffered whole). A request body on a route with a
//! size limit is counted as it streams, and cut with an error past the limit.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// An incoming body allowed at most `left` more bytes.
    Limited {
        inner: Incoming,
        left: u64,
    },
    /// Responses of the embedded backend's router.
    Axum(axum::body::Body),
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Some(b.into()))
    }
}

#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the route's max_body_bytes")
    }
}

impl std::error::Error for TooLarge {}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Body::Empty => Poll::Ready(None),
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Incoming(i) => Pin::new(i).poll_frame(cx).map_err(Into::into),
            Body::Limited { inner, left } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                        if n > *left {
                            return Poll::Ready(Some(Err(Box::new(TooLarge))));
                        }
                        *left -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map_err(Into::into),
            },
            Body::Axum(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(i) | Body::Limited { inner: i, .. } => i.is_end_stream(),
            Body::Axum(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(
                b.as_ref()
                    .map_or(0, |b| u64::try_from(b.len()).unwrap_or(u64::MAX)),
            ),
            Body::Incoming(i) | Body::Limited { inner: i, .. } => i.size_hint(),
            Body::Axum(b) => b.size_hint(),
        }
    }
}
