//! Reading ahead in a gRPC response to find its status.
//!
//! A gRPC status lives in the trailers unless the reply is trailers-only. To
//! judge a response for a retry, the first frames are read: the first one is
//! waited for, then whatever else is already there, stopping at the trailers,
//! the end, the byte limit, or the first moment nothing is ready (as
//! linkerd2-proxy's `PeekTrailersBody`). A unary reply normally arrives whole
//! and is judged; a stream is passed on as soon as it pauses, never held
//! until it ends.

use std::collections::VecDeque;

use bytes::Bytes;
use futures_util::FutureExt;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;

use crate::body::Body;
use crate::classify;
use crate::error::{BoxError, ProxyError, Reason};

/// `rsp` with the frames read ahead given back first, and the status found.
pub(super) async fn grpc_status(
    rsp: Response<Body>,
    limit: usize,
    endpoint: Option<usize>,
) -> Result<(Response<Body>, Option<u32>), BoxError> {
    let (parts, mut body) = rsp.into_parts();
    let failed = |e: BoxError| -> BoxError {
        let mut err = ProxyError::new(Reason::UpstreamReset, "gRPC response body failed");
        if let Some(ep) = endpoint {
            err = err.at_endpoint(ep);
        }
        err.with_source(e).into()
    };
    let mut frames: VecDeque<Frame<Bytes>> = VecDeque::new();
    let mut status = None;
    let mut read = 0usize;
    let mut next = Some(body.frame().await);
    while let Some(polled) = next {
        match polled {
            None => break,
            Some(Err(e)) => return Err(failed(e)),
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    status = classify::grpc_status(t);
                }
                if let Some(d) = frame.data_ref() {
                    read += d.len();
                }
                let end = frame.is_trailers();
                frames.push_back(frame);
                if end || read > limit {
                    break;
                }
            }
        }
        // Only what is already there: `None` from now_or_never is "pending".
        next = body.frame().now_or_never();
    }
    let body = Body::Peeked {
        frames,
        rest: Box::new(body),
    };
    Ok((Response::from_parts(parts, body), status))
}
