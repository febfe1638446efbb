//! The one body type of the data path.
//!
//! An enum rather than a boxed trait object: bodies are created for every
//! request and response, and the enum costs no allocation. Bodies are always
//! streamed frame by frame (data and trailers), never collected.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::BoxError;
use crate::telemetry::Recorder;

/// A request or response body flowing through Skiff.
#[derive(Debug, Default)]
pub enum Body {
    /// No bytes at all (errors Skiff makes, gRPC trailers-only replies).
    #[default]
    Empty,
    /// A small body Skiff made itself (admin answers, error text).
    Full(Option<Bytes>),
    /// A body streaming from a peer.
    Incoming(Incoming),
    /// A response body whose end (trailers included) completes a telemetry record.
    Recorded(Incoming, Recorder),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }
}

impl From<Incoming> for Body {
    fn from(b: Incoming) -> Self {
        Body::Incoming(b)
    }
}

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
            Body::Incoming(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Body::Recorded(b, rec) => {
                let polled = Pin::new(b).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(trailers) = frame.trailers_ref()
                {
                    rec.observe_trailers(trailers);
                }
                polled.map_err(Into::into)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) | Body::Recorded(b, _) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) | Body::Recorded(b, _) => b.size_hint(),
        }
    }
}
