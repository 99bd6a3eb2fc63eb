//! The one body type used end to end: client → gateway → upstream and back.
//!
//! Bodies stream frame by frame (nothing is buffered whole). A client's request body is
//! watched as it streams: past the route's size limit it is cut with an error, and whatever
//! broke it (too large, bad chunked framing, the client gone) is noted in a [`BodyFault`] so the
//! request path can answer 413/400 — the client's fault, not a refund — instead of 502. An
//! upstream's response body has an idle timeout: an upstream that stalls after its head does
//! not pin the client connection, the task and the upstream connection for ever.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub enum Body {
    Empty,
    Full(Option<Bytes>),
    Incoming(Incoming),
    /// A client's request body on its way upstream: at most `left` more bytes.
    Client {
        inner: Incoming,
        left: u64,
        fault: Arc<BodyFault>,
    },
    /// An upstream's response body on its way to the client: `idle` at most between frames.
    Upstream {
        inner: Incoming,
        idle: Duration,
        /// Armed at the first wait.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    /// Responses of the embedded backend's router.
    Axum(axum::body::Body),
}

/// How a client broke its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFault {
    /// Bad framing (chunked syntax), a reset stream, or the client closed mid-body.
    Malformed,
    /// More bytes than the route's `max_body_bytes`.
    TooLarge,
}

/// Set by a [`Body::Client`] when the client breaks it; read by the request path after the
/// upstream exchange failed.
#[derive(Default)]
pub struct BodyFault(AtomicU8);

impl BodyFault {
    fn set(&self, f: ClientFault) {
        let v = match f {
            ClientFault::Malformed => 1,
            ClientFault::TooLarge => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<ClientFault> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(ClientFault::Malformed),
            2 => Some(ClientFault::TooLarge),
            _ => None,
        }
    }
}

impl Body {
    pub fn full(b: impl Into<Bytes>) -> Body {
        Body::Full(Some(b.into()))
    }

    /// A client's body limited to `max` bytes (0: no limit), with the fault it may set. A body
    /// already known empty needs neither (no allocation for a plain GET).
    pub fn client(inner: Incoming, max: u64) -> (Body, Option<Arc<BodyFault>>) {
        if http_body::Body::is_end_stream(&inner) {
            return (Body::Incoming(inner), None);
        }
        let fault = Arc::new(BodyFault::default());
        let left = if max == 0 { u64::MAX } else { max };
        (
            Body::Client {
                inner,
                left,
                fault: fault.clone(),
            },
            Some(fault),
        )
    }

    /// An upstream's body, cut with an error when no frame arrives for `idle`.
    pub fn upstream(inner: Incoming, idle: Duration) -> Body {
        Body::Upstream {
            inner,
            idle,
            timer: None,
        }
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

#[derive(Debug)]
struct Stalled;

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream sent nothing for longer than the route's timeout")
    }
}

impl std::error::Error for Stalled {}

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
            Body::Client { inner, left, fault } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        let n = u64::try_from(data.len()).unwrap_or(u64::MAX);
                        if n > *left {
                            fault.set(ClientFault::TooLarge);
                            return Poll::Ready(Some(Err(Box::new(TooLarge))));
                        }
                        *left -= n;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    fault.set(ClientFault::Malformed);
                    Poll::Ready(Some(Err(e.into())))
                }
                other => other.map_err(Into::into),
            },
            Body::Upstream { inner, idle, timer } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(r) => {
                    if let Some(t) = timer {
                        rearm(t.as_mut(), *idle);
                    }
                    Poll::Ready(r.map(|r| r.map_err(Into::into)))
                }
                Poll::Pending => {
                    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(*idle)));
                    match t.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(Stalled)))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
            Body::Axum(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(i) | Body::Client { inner: i, .. } | Body::Upstream { inner: i, .. } => {
                i.is_end_stream()
            }
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
            Body::Incoming(i) | Body::Client { inner: i, .. } | Body::Upstream { inner: i, .. } => {
                i.size_hint()
            }
            Body::Axum(b) => b.size_hint(),
        }
    }
}

/// Moves an idle timer to `idle` from now, unless it is already within a sixteenth of that
/// (a timer-wheel move per frame would cost more than the frame).
fn rearm(timer: Pin<&mut tokio::time::Sleep>, idle: Duration) {
    let want = tokio::time::Instant::now() + idle;
    if timer.deadline() + idle / 16 < want {
        timer.reset(want);
    }
}
