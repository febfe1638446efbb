//! The one body type of the data path.
//!
//! An enum rather than a boxed trait object: bodies are created for every
//! request and response, and the enum costs no allocation. Bodies are always
//! streamed frame by frame (data and trailers), never collected; the two
//! exceptions are bounded: a request body is kept (up to a limit) so that a
//! retry can send it again (`Replay`), and the retry layer may read the first
//! frames of a gRPC response to find its status (`Peeked`).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

use crate::circuit_breaker::Permit;
use crate::error::{BoxError, ProxyError, Reason};
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
    /// A request body streaming from the downstream client. Its failures (a
    /// bad chunk, a client gone mid-body) are the client's doing, so they
    /// surface as `bad-request`, never as an upstream's `upstream-reset`.
    Request(RequestBody),
    /// A response body whose end (trailers included) completes a telemetry
    /// record: hyper's, or the inline HTTP/1 client's (`Boxed`). Boxed with
    /// its 144-byte recorder, so that every `Body`, and every request and
    /// response moved through the layers, stays small (56 bytes, not 152).
    /// With it, the listener's `stream_idle_timeout` ([`IdleBound`]).
    Recorded(Box<(Body, Recorder, Option<IdleBound>)>),
    /// A request body that a retry can send again; see [`ReplayBody`].
    Replay(ReplayBody),
    /// A response body whose first frames were read ahead (to see a gRPC
    /// status in the trailers) and are given back before the rest.
    Peeked {
        frames: VecDeque<Frame<Bytes>>,
        rest: Box<Body>,
    },
    /// A response body that holds a circuit-breaker permit until it ends, so
    /// `max_requests` counts a request for as long as it streams.
    Guarded(Box<Body>, Permit),
    /// A response body that must end by the route's deadline; see
    /// [`DeadlineBody`]. Boxed: only routes with a timeout pay for it.
    Deadline(Box<DeadlineBody>),
    /// Any other body: the inline HTTP/1 client's responses, adapters, tests.
    Boxed(BoxBody<Bytes, BoxError>),
}

impl Body {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Body::Full(Some(bytes.into()))
    }

    /// Boxes any body whose errors convert to `BoxError`.
    pub fn boxed<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        use http_body_util::BodyExt;
        Body::Boxed(body.map_err(Into::into).boxed())
    }

    /// Lets `rec` ride in the body so the request is recorded when the body
    /// ends, with the `grpc-status` of the trailers. Bodies that can't carry
    /// a recorder (ones Skiff made) record now. A body streaming from the
    /// upstream that yields nothing for `idle` fails ([`IdleBound`]).
    pub fn with_recorder(self, mut rec: Recorder, idle: Option<Duration>) -> Body {
        match self {
            streamed @ (Body::Incoming(_) | Body::Boxed(_)) => {
                Body::Recorded(Box::new((streamed, rec, idle.map(IdleBound::new))))
            }
            Body::Peeked { frames, rest } => {
                for t in frames.iter().filter_map(Frame::trailers_ref) {
                    rec.observe_trailers(t);
                }
                Body::Peeked {
                    frames,
                    rest: Box::new(rest.with_recorder(rec, idle)),
                }
            }
            Body::Guarded(inner, permit) => {
                Body::Guarded(Box::new(inner.with_recorder(rec, idle)), permit)
            }
            // The deadline may end the body with trailers of its own, which
            // the recorder must see: it rides outside, beside the timer.
            Body::Deadline(mut d) => {
                d.rec = Some(rec);
                Body::Deadline(d)
            }
            // A body Skiff made: its size is known now.
            other => {
                if let Some(n) = other.size_hint().exact() {
                    rec.observe_data(n as usize);
                }
                other
            }
        }
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
            Body::Request(b) => b.poll_frame(cx).map_err(|e| {
                ProxyError::new(Reason::BadRequest, "the request body broke off")
                    .with_source(e)
                    .into()
            }),
            Body::Recorded(pair) => {
                let (b, rec, idle) = &mut **pair;
                let polled = Pin::new(b).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            rec.observe_trailers(trailers);
                        } else if let Some(data) = frame.data_ref() {
                            rec.observe_data(data.len());
                        }
                        if let Some(idle) = idle {
                            idle.active();
                        }
                    }
                    Poll::Pending => {
                        if let Some(idle) = idle
                            && idle.poll_stalled(cx).is_ready()
                        {
                            return Poll::Ready(Some(Err(IdleBound::error("the response body"))));
                        }
                    }
                    Poll::Ready(_) => {}
                }
                polled
            }
            Body::Replay(b) => b.poll_frame(cx),
            Body::Peeked { frames, rest } => match frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None => Pin::new(&mut **rest).poll_frame(cx),
            },
            Body::Guarded(b, _) => Pin::new(&mut **b).poll_frame(cx),
            Body::Deadline(d) => d.poll_frame(cx),
            Body::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Empty => true,
            Body::Full(b) => b.is_none(),
            Body::Incoming(b) => b.is_end_stream(),
            Body::Recorded(pair) => pair.0.is_end_stream(),
            Body::Request(b) => b.is_end_stream(),
            Body::Replay(b) => b.is_end_stream(),
            Body::Peeked { frames, rest } => frames.is_empty() && rest.is_end_stream(),
            Body::Guarded(b, _) => b.is_end_stream(),
            Body::Deadline(d) => d.inner.as_ref().is_none_or(|b| b.is_end_stream()),
            Body::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Empty => SizeHint::with_exact(0),
            Body::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Body::Incoming(b) => b.size_hint(),
            Body::Recorded(pair) => pair.0.size_hint(),
            Body::Request(b) => b.size_hint(),
            Body::Replay(b) => b.size_hint(),
            Body::Peeked { frames, rest } => {
                let ahead: u64 = frames
                    .iter()
                    .filter_map(Frame::data_ref)
                    .map(|d| d.len() as u64)
                    .sum();
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(ahead));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(ahead));
                }
                hint
            }
            Body::Guarded(b, _) => b.size_hint(),
            // The deadline may cut the body short: only the upper bound holds.
            Body::Deadline(d) => match &d.inner {
                Some(b) => {
                    let mut hint = SizeHint::new();
                    if let Some(upper) = b.size_hint().upper() {
                        hint.set_upper(upper);
                    }
                    hint
                }
                None => SizeHint::with_exact(0),
            },
            Body::Boxed(b) => b.size_hint(),
        }
    }
}

// === impl RequestBody ===

/// The downstream client's request body. When Skiff answers without reading
/// it all (a fault abort, a refusal, an upstream that answered early), the
/// rest is read and thrown away in the background, up to
/// [`RequestBody::DRAIN_BYTES`] or [`RequestBody::DRAIN_TIME`], instead of
/// being dropped at once.
///
/// Dropping it at once makes h2 reset the stream (RST_STREAM NO_ERROR, RFC
/// 9113 §8.1) as soon as the answer is out, while the client may still be
/// sending: allowed, but clients such as curl then report a stream error
/// instead of the answer they were given. Drained, the stream ends the
/// ordinary way once the client has sent its last frame; past the bounds
/// it is reset as before, so a huge or endless upload costs little.
#[derive(Debug)]
pub struct RequestBody {
    inner: Option<Source>,
    /// Where bytes read are noted, for the access log (only when one is on).
    counted: Option<Arc<crate::telemetry::RequestContext>>,
    /// The listener's `stream_idle_timeout`, once set.
    idle: Option<IdleBound>,
    /// Set while the body streams, for the wait for the response head
    /// ([`RequestBody::streaming`]); cleared at its end or drop.
    streaming: Option<Arc<AtomicBool>>,
}

/// Where a request body's bytes come from.
#[derive(Debug)]
enum Source {
    /// hyper's HTTP/2 server.
    Hyper(Incoming),
    /// Skiff's own HTTP/1 server, which reads the rest of an unread body
    /// itself when it is dropped (so that the connection can be kept).
    Own(BoxBody<Bytes, BoxError>),
}

impl RequestBody {
    /// Most bytes read and discarded after the answer.
    pub const DRAIN_BYTES: usize = 64 * 1024;
    /// Longest time spent reading them.
    pub const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

    pub fn new(body: Incoming) -> Self {
        Self {
            inner: Some(Source::Hyper(body)),
            counted: None,
            idle: None,
            streaming: None,
        }
    }

    /// A request without a body.
    pub fn empty() -> Self {
        Self {
            inner: None,
            counted: None,
            idle: None,
            streaming: None,
        }
    }

    /// A body read by Skiff's own HTTP/1 server.
    pub fn own<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes, Error = std::io::Error> + Send + Sync + 'static,
    {
        use http_body_util::BodyExt;
        Self {
            inner: Some(Source::Own(body.map_err(BoxError::from).boxed())),
            counted: None,
            idle: None,
            streaming: None,
        }
    }

    /// Notes the bytes read in `counter`.
    pub fn counted(mut self, counter: Arc<crate::telemetry::RequestContext>) -> Self {
        self.counted = Some(counter);
        self
    }

    /// Fails the body when the client sends nothing of it for `after`
    /// while it is being read (the listener's `stream_idle_timeout`). A
    /// body that is already whole pays nothing.
    pub fn idle_after(mut self, after: Duration) -> Self {
        if !self.is_end_stream() {
            self.idle = Some(IdleBound::new(after));
        }
        self
    }

    /// A flag that stays set while this body streams and is cleared once
    /// it ended or was dropped (sent whole, or given up): how the wait for
    /// the response head knows the upload is still going, which the
    /// body's own `stream_idle_timeout` bounds. `None` for a body that is
    /// already whole (no allocation for those).
    pub fn streaming(&mut self) -> Option<Arc<AtomicBool>> {
        if self.is_end_stream() {
            return None;
        }
        let flag = self
            .streaming
            .get_or_insert_with(|| Arc::new(AtomicBool::new(true)));
        Some(flag.clone())
    }

    /// Clears the [`RequestBody::streaming`] flag: the body ended, failed
    /// or was dropped.
    fn stopped_streaming(&self) {
        if let Some(flag) = &self.streaming {
            flag.store(false, Ordering::Relaxed);
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match self.inner.as_mut() {
            Some(Source::Hyper(b)) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Some(Source::Own(b)) => Pin::new(b).poll_frame(cx),
            None => return Poll::Ready(None),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(counter), Some(data)) = (&self.counted, frame.data_ref()) {
                    counter.read(data.len());
                }
                if let Some(idle) = &mut self.idle {
                    idle.active();
                }
            }
            Poll::Pending => {
                if let Some(idle) = &mut self.idle
                    && idle.poll_stalled(cx).is_ready()
                {
                    return Poll::Ready(Some(Err(IdleBound::error("the request body"))));
                }
            }
            Poll::Ready(_) => self.stopped_streaming(),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Some(Source::Hyper(b)) => b.is_end_stream(),
            Some(Source::Own(b)) => b.is_end_stream(),
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(Source::Hyper(b)) => b.size_hint(),
            Some(Source::Own(b)) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self::new(body)
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.stopped_streaming();
        // Skiff's own server drains its own bodies.
        let Some(Source::Hyper(mut body)) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            use http_body_util::BodyExt;
            let drained = async {
                let mut read = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    read += frame.data_ref().map_or(0, Bytes::len);
                    if read > Self::DRAIN_BYTES {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Self::DRAIN_TIME, drained).await;
        });
    }
}

// === impl IdleBound ===

/// A body that must not stall: one that yields nothing for `after` while
/// it is polled fails (the listener's `stream_idle_timeout`, as Envoy's),
/// between one and two `after`s after its last frame.
///
/// Cheap on the data path: a frame only sets a flag (no clock read, no
/// timer touched); the timer is made at the body's first wait, and when it
/// fires it is moved on if a frame came meanwhile.
#[derive(Debug)]
pub struct IdleBound {
    after: Duration,
    /// A frame came since the timer was last set.
    moved: bool,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleBound {
    pub fn new(after: Duration) -> Self {
        Self {
            after,
            moved: false,
            sleep: None,
        }
    }

    fn active(&mut self) {
        self.moved = true;
    }

    /// Ready once the body has yielded nothing for a whole `after`.
    fn poll_stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.after;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        loop {
            std::task::ready!(sleep.as_mut().poll(cx));
            if !self.moved {
                return Poll::Ready(());
            }
            self.moved = false;
            sleep.as_mut().reset(tokio::time::Instant::now() + after);
        }
    }

    fn error(what: &str) -> BoxError {
        ProxyError::new(
            Reason::Timeout,
            format!("{what} stalled for the listener's stream_idle_timeout"),
        )
        .into()
    }
}

// === impl DeadlineBody ===

/// A response body still streaming when the route's deadline passes is cut
/// there: the route `timeout` (and a gRPC `grpc-timeout`) bound the whole
/// exchange, not only the wait for the response head (docs/filters.md).
///
/// The head has already gone to the client, so the reason travels in what is
/// left: a gRPC response ends at once with trailers `grpc-status: 4`
/// (DEADLINE_EXCEEDED) and `skiff-error: timeout`, a complete gRPC answer
/// any client reads; any other body fails, which aborts the response (an
/// HTTP/2 stream reset, an HTTP/1 connection closed before the body's end),
/// so the client cannot mistake a cut body for a whole one. Either way the
/// upstream body is dropped, which cancels the upstream request.
#[derive(Debug)]
pub struct DeadlineBody {
    /// `None` once the deadline has passed (or the body has ended).
    inner: Option<Body>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    grpc: bool,
    /// The request's telemetry, when the server attached it (`with_recorder`).
    rec: Option<Recorder>,
}

impl DeadlineBody {
    /// `body` bounded by `deadline`; `grpc` picks how a cut body ends.
    pub fn wrap(body: Body, deadline: tokio::time::Instant, grpc: bool) -> Body {
        if body.is_end_stream() {
            return body;
        }
        Body::Deadline(Box::new(DeadlineBody {
            inner: Some(body),
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            grpc,
            rec: None,
        }))
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(polled) = Pin::new(inner).poll_frame(cx) {
            match &polled {
                Some(Ok(frame)) => {
                    if let Some(rec) = self.rec.as_mut() {
                        if let Some(t) = frame.trailers_ref() {
                            rec.observe_trailers(t);
                        } else if let Some(data) = frame.data_ref() {
                            rec.observe_data(data.len());
                        }
                    }
                }
                None | Some(Err(_)) => self.inner = None,
            }
            return Poll::Ready(polled);
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.inner = None;
        if !self.grpc {
            return Poll::Ready(Some(Err(ProxyError::new(
                Reason::Timeout,
                "the response body did not end within the route timeout",
            )
            .into())));
        }
        let mut trailers = HeaderMap::with_capacity(3);
        trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static(Reason::Timeout.text()),
        );
        trailers.insert(
            "skiff-error",
            http::HeaderValue::from_static(Reason::Timeout.as_str()),
        );
        if let Some(rec) = self.rec.as_mut() {
            rec.observe_trailers(&trailers);
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

// === impl ReplayBody ===

/// A request body that streams to the first attempt while keeping a copy of
/// what it sent, up to a limit, so that a retry can send it again (as
/// linkerd2-proxy's `ReplayBody`).
///
/// The first attempt never waits for the whole body: a bidirectional gRPC
/// stream sends its request while reading the response, and waiting would
/// deadlock it. Every copy reads the shared state; the newest copy (the
/// attempt in progress) is the only one allowed to read on from the client,
/// and older copies fail, since their attempt was given up. The value `new`
/// returns is the handle the retry layer keeps; each attempt, the first
/// included, sends a copy from `replay`.
#[derive(Debug)]
pub struct ReplayBody {
    shared: Arc<Mutex<ReplayState>>,
    /// Which copy this is; only the newest one may read from the client.
    generation: u64,
    /// The next buffered chunk this copy gives out.
    next_chunk: usize,
    trailers_sent: bool,
    /// The client body's size hint, which every complete replay matches.
    hint: SizeHint,
}

struct ReplayState {
    /// The client's body until it has ended.
    rest: Option<Box<Body>>,
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    limit: usize,
    /// The copy is incomplete (over the limit, failed, or no longer wanted):
    /// nothing more is buffered and no new copy can be made.
    capped: bool,
    generation: u64,
}

impl fmt::Debug for ReplayState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayState")
            .field("len", &self.len)
            .field("limit", &self.limit)
            .field("capped", &self.capped)
            .field("ended", &self.rest.is_none())
            .finish_non_exhaustive()
    }
}

/// The body a given-up attempt still held was read by a newer attempt.
#[derive(Debug, thiserror::Error)]
#[error("request body moved to a newer attempt")]
pub struct Superseded;

impl ReplayBody {
    /// Wraps `body`, keeping up to `limit` bytes for replays.
    pub fn new(body: Body, limit: usize) -> Self {
        use http_body::Body as _;
        let hint = body.size_hint();
        ReplayBody {
            shared: Arc::new(Mutex::new(ReplayState {
                rest: Some(Box::new(body)),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                limit,
                capped: false,
                generation: 0,
            })),
            generation: 0,
            next_chunk: 0,
            trailers_sent: false,
            hint,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        // A panic while holding the lock can't leave the state half-updated
        // in a way that matters more than failing the request.
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a replay would send the whole body: nothing went over the limit.
    pub fn can_replay(&self) -> bool {
        !self.state().capped
    }

    /// A new copy from the first byte for the next attempt, or `None` when
    /// the body can no longer be replayed. Older copies stop working.
    pub fn replay(&self) -> Option<ReplayBody> {
        let mut s = self.state();
        if s.capped {
            return None;
        }
        s.generation += 1;
        Some(ReplayBody {
            shared: self.shared.clone(),
            generation: s.generation,
            next_chunk: 0,
            trailers_sent: false,
            hint: self.hint,
        })
    }

    /// Stops keeping a copy: no more retries will be made, so the buffer
    /// need not grow. What is buffered stays for the copy still reading it.
    pub fn stop_buffering(&self) {
        self.state().capped = true;
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = self.shared.clone();
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        if s.generation != self.generation {
            return Poll::Ready(Some(Err(Superseded.into())));
        }
        if let Some(chunk) = s.chunks.get(self.next_chunk) {
            self.next_chunk += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(rest) = s.rest.as_mut() else {
            if !self.trailers_sent
                && let Some(t) = &s.trailers
            {
                self.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t.clone()))));
            }
            return Poll::Ready(None);
        };
        match http_body::Body::poll_frame(Pin::new(&mut **rest), cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.rest = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.capped = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.capped {
                        if s.len + data.len() > s.limit {
                            s.capped = true;
                        } else {
                            s.len += data.len();
                            s.chunks.push(data.clone());
                            self.next_chunk += 1;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    // Trailers end a body.
                    s.trailers = Some(t.clone());
                    s.rest = None;
                    self.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        use http_body::Body as _;
        let s = self.state();
        if s.generation != self.generation || self.next_chunk < s.chunks.len() {
            return false;
        }
        match &s.rest {
            Some(rest) => rest.is_end_stream(),
            None => self.trailers_sent || s.trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client body that streams `chunks` then optional trailers.
    pub(crate) fn streamed(chunks: &[&'static [u8]], trailers: Option<HeaderMap>) -> Body {
        let mut frames: VecDeque<Frame<Bytes>> = chunks
            .iter()
            .map(|c| Frame::data(Bytes::from_static(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push_back(Frame::trailers(t));
        }
        Body::Peeked {
            frames,
            rest: Box::new(Body::Empty),
        }
    }

    async fn collect(body: Body) -> (Vec<u8>, Option<HeaderMap>) {
        let c = body.collect().await.unwrap();
        let trailers = c.trailers().cloned();
        (c.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn replays_data_and_trailers_intact() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "abc".parse().unwrap());
        let root = ReplayBody::new(streamed(&[b"hello ", b"world"], Some(t)), 64);
        // The first attempt reads from the client...
        let (bytes, trailers) = collect(Body::Replay(root.replay().unwrap())).await;
        assert_eq!(bytes, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "abc");
        // ...and a replay afterwards gets the same bytes from the copy.
        let (bytes, trailers) = collect(Body::Replay(root.replay().unwrap())).await;
        assert_eq!(bytes, b"hello world");
        assert_eq!(trailers.unwrap()["x-sum"], "abc");
    }

    #[tokio::test]
    async fn a_replay_supersedes_the_older_copy() {
        let root = ReplayBody::new(streamed(&[b"a", b"b"], None), 64);
        let mut first = Body::Replay(root.replay().unwrap());
        let chunk = first.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(chunk, "a");
        let second = root.replay().unwrap();
        assert!(first.frame().await.unwrap().is_err(), "older copy fails");
        let (bytes, _) = collect(Body::Replay(second)).await;
        assert_eq!(bytes, b"ab", "the replay resends the start, then reads on");
    }

    #[tokio::test]
    async fn over_the_limit_cannot_replay() {
        let body = ReplayBody::new(streamed(&[b"0123", b"4567", b"89"], None), 8);
        assert!(body.can_replay(), "nothing read yet");
        let handle = body.replay().unwrap();
        let (bytes, _) = collect(Body::Replay(handle)).await;
        assert_eq!(bytes, b"0123456789", "the attempt itself gets everything");
        assert!(!body.can_replay());
        assert!(body.replay().is_none());
    }

    #[tokio::test]
    async fn stop_buffering_refuses_replays() {
        let body = ReplayBody::new(streamed(&[b"x"], None), 8);
        assert!(body.can_replay());
        body.stop_buffering();
        assert!(body.replay().is_none());
    }

    #[tokio::test]
    async fn peeked_frames_come_first_and_feed_the_recorder() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "5".parse().unwrap());
        let body = Body::Peeked {
            frames: [Frame::data(Bytes::from_static(b"ab"))].into(),
            rest: Box::new(streamed(&[b"cd"], Some(t))),
        };
        let (bytes, trailers) = collect(body).await;
        assert_eq!(bytes, b"abcd");
        assert_eq!(trailers.unwrap()["grpc-status"], "5");
    }
}
