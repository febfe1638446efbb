//! Skiff's own HTTP/1.1 server: one downstream HTTP/1 connection, from its
//! first request head to its close, each request through `Handler::handle`.
//!
//! hyper's HTTP/1 server keeps an 8 KiB read buffer and an 8 KiB write
//! buffer for as long as a connection lives, and its connection future is
//! sized for the request it may one day serve: about 20 KiB for a keep-alive
//! connection that does nothing (docs/benchmarks.md). A sidecar holds
//! thousands of those. Here an idle connection holds no buffer at all: it
//! waits with its memory given back, reads a new head through the stack,
//! and only then takes a buffer the size of what arrived; the request's own
//! future is boxed for as long as the request lives.
//!
//! What it accepts is what hyper accepted, checked by the same hostile
//! suite (`tests/tests/hostile.rs`): httparse parses the head (no obsolete
//! line folding, no space before a colon, no bare CR, LF or NUL), a request
//! names one `Content-Length` or ends its codings in `chunked`, never both
//! (400, as Envoy: the classic smuggling vector), and a head
//! must arrive whole within `header_timeout`. Refusals are Skiff's own
//! answers, with `skiff-error`, and are counted.
//!
//! A request body is read by the body itself, from whichever task polls it
//! (the upstream's): it owns the connection's read half until its end, then
//! hands it back. An answer that comes before the body was read leaves the
//! rest to be read and thrown away, within bounds, so that the connection
//! can serve the next request; past the bounds it is closed.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TE, TRAILER, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use skiff_filters::Body;
use skiff_filters::body::RequestBody;
use skiff_filters::error::{self, Reason};
use skiff_filters::headers;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio_util::io::poll_read_buf;
use tracing::debug;

use super::Handler;
use crate::h1::{self, Chunk, Framing, READ_CHUNK, Step};
use crate::protocol::HeadLimits;
use crate::shutdown::Watch;

/// The longest request target, as hyper's server: past it, 414.
const MAX_TARGET: usize = 65_534;
/// Header slots parsed on the stack; a listener allowing more fields parses
/// into a heap array.
const STACK_FIELDS: usize = 128;
/// How much a read into the stack takes at once: a whole head, usually.
const STACK_READ: usize = 8192;
/// Body data up to this size is copied beside the head or chunk line, so
/// that a small answer goes out in one write; larger data is written from
/// where it is.
const COPY_BELOW: usize = 8192;
/// What the output buffer starts with: a typical answer's head, and a
/// small body.
const HEAD_GUESS: usize = 1024;
/// Buffered output is written out once it grows past this.
const FLUSH_AT: usize = 32 * 1024;

/// Serves one HTTP/1 connection until it closes, the client leaves, or the
/// drain ends it: an idle connection closes as soon as the drain starts, a
/// busy one answers its request with `connection: close`, and whatever is
/// still going when the drain timeout passes is cut: the listener aborts the
/// connection's task then (`listener::run`), so no await here races the
/// drain timeout itself. Racing it per request cost a watch future made,
/// registered and dropped, ~1,300 instructions a request
/// (docs/benchmarks.md).
///
/// A function returning an `async` block rather than an `async fn`: an
/// `async fn` keeps each argument twice in its state (as it came, and bound
/// in the body), and this state is what every idle connection holds.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn serve<I>(
    io: I,
    handler: Handler,
    mut drain: Watch,
    tunnels: Arc<Watch>,
) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static,
{
    async move {
        let (rd, mut wr) = tokio::io::split(io);
        let mut reader = Some(Reader {
            io: rd,
            buf: BytesMut::new(),
        });
        let mut out = Vec::new();
        let listener = handler.listener.clone();
        let limits = listener.limits;
        let mut served = 0u64;
        let mut draining = false;
        // One timer for every head of the connection, re-armed only when it
        // fires before the current head's deadline: registering a timer per
        // request and cancelling it costs more than the rest of reading a head.
        let head_timer = tokio::time::sleep(listener.header_timeout);
        tokio::pin!(head_timer);
        loop {
            let Some(r) = reader.as_mut() else { return };
            if r.buf.is_empty() {
                // Idle until the next head: nothing held.
                r.buf = BytesMut::new();
                out = Vec::new();
            }
            let deadline = tokio::time::Instant::now() + listener.header_timeout;
            let read = tokio::select! {
                read = read_head(r, limits) => Ok(read),
                () = until(head_timer.as_mut(), deadline) => Err(()),
                // Reading a head is cancel-safe: what was read stays in the
                // buffer, and a head begun is finished and answered.
                () = drain.draining(), if !draining => {
                    if r.buf.is_empty() {
                        return;
                    }
                    draining = true;
                    continue;
                }
            };
            let head = match read {
                Ok(Ok(head)) => head,
                other => {
                    // Every other outcome ends the connection; `other` is
                    // handed over whole, so nothing of it stays in this
                    // future's state.
                    let idle = reader.as_ref().is_none_or(|r| r.buf.is_empty());
                    if let Some(refusal) = head_failed(other, &handler, served, idle) {
                        // Boxed, as every path the idle connection does not take.
                        let refused = refuse(reader.take(), wr, refusal, listener.header_timeout);
                        Box::pin(refused).await;
                    }
                    return;
                }
            };
            served += 1;
            let Some(Begun {
                req,
                ask,
                lent,
                go_on,
                upgrade,
            }) = begin(head, &mut reader)
            else {
                return;
            };
            // The request's exchange is boxed, once: the connection's own
            // future, which an idle connection keeps, stays small. Every
            // byte of a boxed future is copied into the box per request
            // (docs/benchmarks.md, "Future sizes").
            let switchable = upgrade.is_some();
            let exchanged = Box::pin(exchange(
                &handler,
                req,
                &tunnels,
                &mut wr,
                &mut out,
                ask,
                switchable,
                go_on,
                head_timer.as_mut(),
            ));
            let done = exchanged.await;
            let Ok(Done {
                mut keep_alive,
                switching,
                unasked,
            }) = done
            else {
                return;
            };

            if switching {
                if let (Some(tx), Some(r)) = (upgrade, reader.take()) {
                    let rest = r.buf.freeze();
                    let io = r.io.unsplit(wr);
                    let _ = tx.send(Box::new(Rewind { rest, io }));
                }
                return;
            }
            if let Some((lend, ended)) = lent {
                // A client still waiting for `100 Continue` sends no body to
                // read and throw away: the connection closes instead.
                let back = take_back(lend, ended, keep_alive && !unasked);
                let (back, finished) = Box::pin(back).await;
                keep_alive &= finished;
                reader = back;
            }
            if !keep_alive {
                let closed = close(reader.take(), wr, listener.header_timeout);
                Box::pin(closed).await;
                return;
            }
        }
    }
}

/// What reading a head that failed means: counted and logged here; the
/// refusal to answer, if there is one to give.
fn head_failed(
    outcome: Result<Result<Head, HeadError>, ()>,
    handler: &Handler,
    served: u64,
    idle: bool,
) -> Option<Refusal> {
    let listener = &handler.listener;
    match outcome {
        Ok(Ok(_)) | Ok(Err(HeadError::Closed)) => None,
        Ok(Err(HeadError::Io(e))) => {
            debug!(error = %e, "downstream connection ended");
            None
        }
        Ok(Err(HeadError::Refused(refusal))) => {
            handler
                .shared
                .metrics
                .refused(&listener.name, refusal.counted_as);
            handler.log_refusal(refusal.reason, refusal.message);
            Some(refusal)
        }
        Err(()) => {
            // A head begun and not finished, or a first one never sent;
            // a keep-alive connection going quiet is no refusal.
            if served == 0 || !idle {
                handler
                    .shared
                    .metrics
                    .refused(&listener.name, "header-timeout");
            }
            debug!(listener = %listener.name, "no request head within header_timeout");
            None
        }
    }
}

/// A request made from its head, ready for its exchange.
struct Begun<I> {
    req: Request<RequestBody>,
    ask: Asked,
    /// The body's hold on the reader, and its end, when it has a body.
    lent: Option<(Arc<Lend<I>>, oneshot::Receiver<()>)>,
    /// Fires when a client expecting `100 Continue` is to get it.
    go_on: Option<oneshot::Receiver<()>>,
    /// Where the connection goes if it switches protocols.
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// Makes the request of `head`, lending `reader` to its body if it has one.
/// A plain function: the head and the request never sit in the connection
/// future's state, which an idle connection keeps.
fn begin<I: AsyncRead + Send + Sync + 'static>(
    head: Head,
    reader: &mut Option<Reader<I>>,
) -> Option<Begun<I>> {
    let Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        upgrade,
        expects_continue,
    } = head;
    let ask = Asked {
        head: method == Method::HEAD,
        version,
        keep_alive,
        trailers: wants_trailers(&headers),
    };
    let mut req = Request::new(RequestBody::empty());
    let (mut lent, mut go_on) = (None, None);
    if framing != Framing::Length(0) {
        let (body, lend, ended, asked) =
            ServerBody::lend(reader.take()?, framing, expects_continue);
        *req.body_mut() = RequestBody::own(body);
        lent = Some((lend, ended));
        go_on = asked;
    }
    let upgrade = (upgrade && lent.is_none()).then(|| {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut()
            .insert(OnUpgrade(Arc::new(std::sync::Mutex::new(Some(rx)))));
        tx
    });
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = version;
    *req.headers_mut() = headers;
    Some(Begun {
        req,
        ask,
        lent,
        go_on,
        upgrade,
    })
}

/// Closes a connection after its last answer: the write side first, so the
/// client sees the end at once, then what it still sends is read for a
/// moment ([`linger`]), so that unread bytes do not reset the connection
/// before the client has read the answer. Bounded by `within`.
async fn close<I: AsyncRead + AsyncWrite>(
    reader: Option<Reader<I>>,
    mut wr: WriteHalf<I>,
    within: std::time::Duration,
) {
    let _ = tokio::time::timeout(within, wr.shutdown()).await;
    if let Some(r) = reader {
        linger(r).await;
    }
}

/// Resolves at `deadline`, on a timer that may be set earlier: it is moved
/// on when it fires first.
async fn until(mut timer: Pin<&mut tokio::time::Sleep>, deadline: tokio::time::Instant) {
    loop {
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().await;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        timer.as_mut().reset(deadline);
    }
}

/// How an exchange ended.
struct Done {
    /// The connection may serve another request.
    keep_alive: bool,
    /// The answer was 101 to a request that asked to switch protocols.
    switching: bool,
    /// The request expected `100 Continue` and was answered without it.
    unasked: bool,
}

/// What a client waiting to send its body is told once the body is read.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One request through `Handler::handle`, and its answer written. A
/// drain that started meanwhile closes the connection after it. A request
/// that expects `100 Continue` gets it when its body is first read (`go_on`
/// fires), as hyper did: an answer that comes first (a refusal, a 404)
/// spares the client the upload.
#[allow(clippy::too_many_arguments)]
async fn exchange<W: AsyncWrite + Unpin>(
    handler: &Handler,
    req: Request<RequestBody>,
    tunnels: &Arc<Watch>,
    wr: &mut W,
    out: &mut Vec<u8>,
    mut ask: Asked,
    switchable: bool,
    go_on: Option<oneshot::Receiver<()>>,
    timer: Pin<&mut tokio::time::Sleep>,
) -> io::Result<Done> {
    let mut unasked = false;
    // One place for the handler's future on either path: two awaits of
    // `handle` would each keep room for it in this future. The head timer,
    // idle while the request is served, bounds the wait for its answer.
    let answer = handler.handle_timed(req, tunnels, Some(timer));
    tokio::pin!(answer);
    let mut rsp = match go_on {
        None => answer.await,
        Some(mut asked) => {
            tokio::select! {
                rsp = &mut answer => {
                    unasked = true;
                    rsp
                }
                Ok(()) = &mut asked => {
                    wr.write_all(CONTINUE).await?;
                    answer.await
                }
            }
        }
    };
    ask.keep_alive &= !tunnels.is_draining();
    let status = rsp.status();
    let switching = switchable && status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        ask.keep_alive = true;
    } else if status.is_informational() {
        // An interim answer as the final one (a 101 to a request that did
        // not ask to switch, a 100): the exchange has no answer to give.
        rsp = error::reply(
            Reason::UpstreamReset,
            "the upstream answered with an interim status",
            false,
        );
        ask.keep_alive = false;
    }
    let keep_alive = respond(wr, out, rsp, &ask).await?;
    Ok(Done {
        keep_alive,
        switching,
        unasked,
    })
}

/// What the request asked of its answer's framing.
struct Asked {
    /// A HEAD request: the answer's head only.
    head: bool,
    version: Version,
    keep_alive: bool,
    /// `TE: trailers`: trailers may go in a chunked answer.
    trailers: bool,
}

impl Asked {
    /// For an answer Skiff makes before it has a request to go by.
    fn closing() -> Self {
        Self {
            head: false,
            version: Version::HTTP_11,
            keep_alive: false,
            trailers: false,
        }
    }
}

fn wants_trailers(headers: &HeaderMap) -> bool {
    h1::has_token(headers, &TE, "trailers")
}

// === reading ===

/// The read side of a connection, and what was read of it and not used.
struct Reader<I> {
    io: ReadHalf<I>,
    buf: BytesMut,
}

/// A request head, parsed and checked.
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    framing: Framing,
    /// HTTP/1.1 without `Connection: close`, HTTP/1.0 with `keep-alive`.
    keep_alive: bool,
    /// `Upgrade` with `Connection: upgrade` (a WebSocket handshake).
    upgrade: bool,
    /// `Expect: 100-continue` on a request with a body.
    expects_continue: bool,
}

/// Why no request came.
enum HeadError {
    /// The client closed between requests.
    Closed,
    Io(io::Error),
    /// A head Skiff answers itself, then closes.
    Refused(Refusal),
}

/// A head refused before it reaches the handler.
struct Refusal {
    status: StatusCode,
    reason: Reason,
    /// The `reason` label of `skiff_downstream_refusals_total`.
    counted_as: &'static str,
    message: &'static str,
}

impl Refusal {
    fn malformed(message: &'static str) -> HeadError {
        HeadError::Refused(Self {
            status: StatusCode::BAD_REQUEST,
            reason: Reason::BadRequest,
            counted_as: "malformed",
            message,
        })
    }

    fn too_large(status: StatusCode, message: &'static str) -> HeadError {
        HeadError::Refused(Self {
            status,
            reason: if status == StatusCode::URI_TOO_LONG {
                Reason::BadRequest
            } else {
                Reason::HeadTooLarge
            },
            counted_as: "head-too-large",
            message,
        })
    }
}

/// The most bytes an unfinished head may take before it is refused: what
/// the listener's limits allow, with room for the request line and the
/// separators they do not count. A whole head within it is judged exactly
/// by the handler (`admit`).
fn head_budget(limits: HeadLimits) -> usize {
    limits.bytes + limits.count * 4 + 1024 + MAX_TARGET
}

/// Reads until a whole request head is buffered, and parses it.
async fn read_head<I: AsyncRead>(r: &mut Reader<I>, limits: HeadLimits) -> Result<Head, HeadError> {
    let budget = head_budget(limits);
    loop {
        if !r.buf.is_empty()
            && let Some(head) = parse_head(&mut r.buf, limits.count + 1)?
        {
            return Ok(head);
        }
        if r.buf.len() > budget {
            return Err(if r.buf.contains(&b'\n') {
                Refusal::too_large(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "request headers too large",
                )
            } else {
                Refusal::too_large(StatusCode::URI_TOO_LONG, "request target too long")
            });
        }
        let was_empty = r.buf.is_empty();
        let n = std::future::poll_fn(|cx| poll_fill(&mut r.io, &mut r.buf, cx))
            .await
            .map_err(HeadError::Io)?;
        if n == 0 {
            return Err(if was_empty {
                HeadError::Closed
            } else {
                HeadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed mid-head",
                ))
            });
        }
    }
}

/// Reads more into `buf`. An empty buffer holds no memory: the read goes
/// through the stack and only what arrived is kept, so a connection waiting
/// for its next request costs no buffer.
fn poll_fill<I: AsyncRead>(
    io: &mut ReadHalf<I>,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        let got = read.filled();
        if buf.capacity() < got.len() {
            *buf = BytesMut::with_capacity(got.len());
        }
        buf.extend_from_slice(got);
        return Poll::Ready(Ok(got.len()));
    }
    buf.reserve(READ_CHUNK);
    poll_read_buf(Pin::new(io), cx, buf)
}

/// Parses the request head at the start of `buf`, consuming it; `None`
/// while it is incomplete. Empty lines before it are skipped (RFC 9112
/// §2.2). `slots` is one more than the fields allowed, so that one too
/// many is told from a parse error.
fn parse_head(buf: &mut BytesMut, slots: usize) -> Result<Option<Head>, HeadError> {
    loop {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
        } else if buf.starts_with(b"\n") {
            buf.advance(1);
        } else {
            break;
        }
    }
    if buf.is_empty() || buf[..] == b"\r"[..] {
        return Ok(None);
    }
    let mut stack = [MaybeUninit::<httparse::Header<'_>>::uninit(); STACK_FIELDS];
    let mut heap = Vec::new();
    let fields: &mut [MaybeUninit<httparse::Header<'_>>] = if slots <= STACK_FIELDS {
        &mut stack[..slots]
    } else {
        heap.resize(slots, MaybeUninit::uninit());
        &mut heap
    };
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, fields)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::too_large(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request header fields",
            ));
        }
        Err(_) => return Err(Refusal::malformed("malformed request head")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal::malformed("malformed request head"));
    };
    if target.len() > MAX_TARGET {
        return Err(Refusal::too_large(
            StatusCode::URI_TOO_LONG,
            "request target too long",
        ));
    }
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| Refusal::malformed("malformed request method"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = buf.as_ptr() as usize;
    let target_at = target.as_ptr() as usize - base;
    let target_len = target.len();
    let count = req.headers.len();
    let mut stack_spans = [(0u32, 0u32, 0u32, 0u32); STACK_FIELDS];
    let mut heap_spans = Vec::new();
    let spans: &mut [h1::Span] = if count <= STACK_FIELDS {
        &mut stack_spans[..count]
    } else {
        heap_spans.resize(count, (0, 0, 0, 0));
        &mut heap_spans
    };
    h1::spans(buf.as_ptr(), req.headers, spans);
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_at..target_at + target_len))
        .map_err(|_| Refusal::malformed("malformed request target"))?;
    let headers =
        h1::header_map(&head, spans).map_err(|_| Refusal::malformed("malformed header field"))?;

    let keep_alive = match version {
        Version::HTTP_10 => h1::connection_has(&headers, "keep-alive"),
        _ => !h1::connection_has_close(&headers),
    };
    let framing = if headers.contains_key(TRANSFER_ENCODING) {
        if version == Version::HTTP_10 {
            return Err(Refusal::malformed(
                "transfer-encoding in an HTTP/1.0 request",
            ));
        }
        if !h1::last_coding_is_chunked(&headers) {
            return Err(Refusal::malformed(
                "a request body's last transfer coding must be chunked",
            ));
        }
        if headers.contains_key(CONTENT_LENGTH) {
            // Framed two ways, the classic smuggling vector: refused, as
            // Envoy does by default (RFC 9112 §6.1 allows it).
            return Err(Refusal::malformed(
                "both content-length and transfer-encoding",
            ));
        }
        Framing::Chunked(Chunk::Size)
    } else {
        let length =
            h1::content_length(&headers).map_err(|_| Refusal::malformed("bad content-length"))?;
        Framing::Length(length.unwrap_or(0))
    };
    let upgrade = headers::is_upgrade(&headers);
    // An HTTP/1.0 client's expectation is ignored (RFC 9110 §10.1.1).
    let expects_continue = framing != Framing::Length(0)
        && version == Version::HTTP_11
        && headers
            .get(EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        upgrade,
        expects_continue,
    }))
}

/// What parsing `bytes` as the start of a request head decides, in a form
/// that can be compared: `None` while incomplete, the head's parts, or the
/// refusal's status and counted reason. For the `h1` fuzz target, which
/// checks that reading a head in pieces decides what reading it whole does.
#[doc(hidden)]
pub fn parse_outcome(bytes: &[u8], slots: usize) -> Option<Result<String, (u16, &'static str)>> {
    match parse_head(&mut BytesMut::from(bytes), slots) {
        Ok(None) => None,
        Ok(Some(h)) => Some(Ok(format!(
            "{} {} {:?} {:?} {:?} keep-alive {} upgrade {} continue {}",
            h.method,
            h.uri,
            h.version,
            h.headers,
            h.framing,
            h.keep_alive,
            h.upgrade,
            h.expects_continue
        ))),
        Err(HeadError::Refused(r)) => Some(Err((r.status.as_u16(), r.counted_as))),
        Err(HeadError::Closed | HeadError::Io(_)) => Some(Err((0, "io"))),
    }
}

// === request bodies ===

/// A request body's hold on its connection's read side. The body reads
/// through it from whichever task polls it; the connection takes the reader
/// back once the body has ended, or when it gives up waiting for that, after
/// which the body fails (the client's connection is gone from under it).
struct Lend<I> {
    slot: std::sync::Mutex<Option<(Reader<I>, Framing)>>,
}

impl<I> Lend<I> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(Reader<I>, Framing)>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request body, read from its connection by whoever polls it.
struct ServerBody<I> {
    lend: Arc<Lend<I>>,
    /// Told when the body has ended, failed, or is dropped.
    ended: Option<oneshot::Sender<()>>,
    /// Told at the first read that must wait for the client: the moment a
    /// client expecting `100 Continue` is to get it.
    go_on: Option<oneshot::Sender<()>>,
    /// The body has ended, or failed (and says so again if polled again).
    done: bool,
    failed: bool,
}

type Lent<I> = (
    ServerBody<I>,
    Arc<Lend<I>>,
    oneshot::Receiver<()>,
    Option<oneshot::Receiver<()>>,
);

impl<I: AsyncRead> ServerBody<I> {
    /// Lends `reader` to a body framed by `framing`.
    fn lend(reader: Reader<I>, framing: Framing, expects_continue: bool) -> Lent<I> {
        let lend = Arc::new(Lend {
            slot: std::sync::Mutex::new(Some((reader, framing))),
        });
        let (ended_tx, ended_rx) = oneshot::channel();
        let (go_on, asked) = if expects_continue {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let body = ServerBody {
            lend: lend.clone(),
            ended: Some(ended_tx),
            go_on,
            done: false,
            failed: false,
        };
        (body, lend, ended_rx, asked)
    }

    fn end(&mut self) {
        self.done = true;
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
    }

    fn fail(&mut self, e: io::Error) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.failed = true;
        self.end();
        Poll::Ready(Some(Err(e)))
    }
}

impl<I: AsyncRead> http_body::Body for ServerBody<I> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Some(Err(io::Error::other(
                "the request body already failed",
            ))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        let lend = this.lend.clone();
        let mut slot = lend.lock();
        let Some((r, framing)) = slot.as_mut() else {
            drop(slot);
            return this.fail(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the client's connection closed before its body was read",
            ));
        };
        loop {
            match h1::decode(&mut r.buf, framing) {
                Ok(Step::Frame(frame)) => {
                    if framing.done() {
                        drop(slot);
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    drop(slot);
                    this.end();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {
                    if let Some(tx) = this.go_on.take() {
                        let _ = tx.send(());
                    }
                    r.buf.reserve(READ_CHUNK);
                    match ready!(poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf)) {
                        Ok(0) => {
                            drop(slot);
                            return this.fail(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the client closed before the request body's end",
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            drop(slot);
                            return this.fail(e);
                        }
                    }
                }
                Err(e) => {
                    drop(slot);
                    return this.fail(e);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && !self.failed
    }

    fn size_hint(&self) -> SizeHint {
        self.lend
            .lock()
            .as_ref()
            .map_or_else(SizeHint::default, |(_, framing)| framing.size_hint())
    }
}

impl<I> Drop for ServerBody<I> {
    fn drop(&mut self) {
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
    }
}

/// Takes a lent reader back once its body has ended: at once, usually,
/// since the upstream read the body before it answered. A body still
/// held elsewhere after `RequestBody::DRAIN_TIME` loses the reader (it
/// fails if polled again). With `finish`, what is left of an unread body
/// is read and thrown away, within `RequestBody::DRAIN_BYTES` and
/// `DRAIN_TIME`; whether the connection can serve another request.
async fn take_back<I: AsyncRead>(
    lend: Arc<Lend<I>>,
    mut ended: oneshot::Receiver<()>,
    finish: bool,
) -> (Option<Reader<I>>, bool) {
    if finish && matches!(ended.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
        let _ = tokio::time::timeout(RequestBody::DRAIN_TIME, &mut ended).await;
    }
    let Some((mut r, mut framing)) = lend.lock().take() else {
        return (None, false);
    };
    if framing.done() {
        return (Some(r), true);
    }
    if !finish {
        return (Some(r), false);
    }
    let mut read = 0usize;
    let rest = async {
        loop {
            match h1::decode(&mut r.buf, &mut framing) {
                Ok(Step::End) => return true,
                Ok(Step::Frame(f)) => {
                    read += f.data_ref().map_or(0, Bytes::len);
                    if read > RequestBody::DRAIN_BYTES {
                        return false;
                    }
                }
                Ok(Step::NeedMore) => {
                    r.buf.reserve(READ_CHUNK);
                    let n = std::future::poll_fn(|cx| {
                        poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf)
                    })
                    .await;
                    if !matches!(n, Ok(n) if n > 0) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    let finished = tokio::time::timeout(RequestBody::DRAIN_TIME, rest)
        .await
        .unwrap_or(false);
    (Some(r), finished)
}

/// Answers a refused head, then closes, within `within`.
async fn refuse<I: AsyncRead + AsyncWrite>(
    r: Option<Reader<I>>,
    mut wr: WriteHalf<I>,
    refusal: Refusal,
    within: std::time::Duration,
) {
    let mut rsp = error::reply(refusal.reason, refusal.message, false);
    *rsp.status_mut() = refusal.status;
    let answered = tokio::time::timeout(
        within,
        respond(&mut wr, &mut Vec::new(), rsp, &Asked::closing()),
    )
    .await;
    if matches!(answered, Ok(Ok(_))) {
        close(r, wr, within).await;
    }
}

/// After the last answer: reads what the client is still sending, for a
/// moment, so that closing with unread bytes does not reset the connection
/// before the client has read the answer.
async fn linger<I: AsyncRead>(mut r: Reader<I>) {
    let rest = async {
        let mut read = 0usize;
        loop {
            r.buf.clear();
            r.buf.reserve(READ_CHUNK);
            match std::future::poll_fn(|cx| poll_read_buf(Pin::new(&mut r.io), cx, &mut r.buf))
                .await
            {
                Ok(n) if n > 0 && read < LINGER_BYTES => read += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(RequestBody::DRAIN_TIME, rest).await;
}

/// The most a lingering close reads.
const LINGER_BYTES: usize = 1024 * 1024;

// === writing ===

/// How an answer's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a length unknown).
    Close,
}

/// Writes an answer, head and body; whether the connection can be kept
/// afterwards. A body that fails midway fails the write: the connection
/// is closed without the body's end, so the client cannot mistake a cut
/// body for a whole one.
async fn respond<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    rsp: Response<Body>,
    ask: &Asked,
) -> io::Result<bool> {
    let (parts, mut body) = rsp.into_parts();
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let mut keep_alive = ask.keep_alive && !h1::connection_has_close(&parts.headers);
    let framing = if ask.head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else if let Some(n) = body.size_hint().exact() {
        Out::Length(n)
    } else if let Ok(Some(n)) = h1::content_length(&parts.headers) {
        Out::Length(n)
    } else if ask.version == Version::HTTP_11 {
        Out::Chunked
    } else {
        keep_alive = false;
        Out::Close
    };

    out.clear();
    // A typical head in one allocation, not grown through several.
    out.reserve(HEAD_GUESS);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // No length on an interim answer or a 204 (RFC 9110 §8.6); an answer
    // to HEAD keeps the one it states, or says the one Skiff knows.
    let bodiless = status.is_informational() || status == StatusCode::NO_CONTENT;
    let head_length = (ask.head && !parts.headers.contains_key(CONTENT_LENGTH))
        .then(|| body.size_hint().exact())
        .flatten()
        .filter(|&n| n > 0);
    for (name, value) in &parts.headers {
        let framed_here = name == TRANSFER_ENCODING
            || (name == CONTENT_LENGTH && (framing != Out::None || bodiless));
        if framed_here || (name == CONNECTION && !switching) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        date::put(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Out::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Out::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Out::None => {
            if let Some(n) = head_length {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        Out::Close => {}
    }
    if !switching {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if ask.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    if framing == Out::None {
        drop(body);
        write_out(wr, out).await?;
        return Ok(keep_alive);
    }
    let mut sent = 0u64;
    let mut trailers = None;
    while !body.is_end_stream() {
        let frame = std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            // Write what is buffered while the body has nothing yet.
            Poll::Pending if !out.is_empty() => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
        })
        .await;
        let frame = match frame {
            None => {
                write_out(wr, out).await?;
                continue;
            }
            Some(None) => break,
            Some(Some(Err(e))) => return Err(io::Error::other(e)),
            Some(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        match framing {
            Out::Length(n) if sent > n => {
                return Err(io::Error::other("an answer's body ran past its length"));
            }
            Out::Chunked => {
                let mut hex = [0u8; 16];
                out.extend_from_slice(hex_len(data.len(), &mut hex));
                out.extend_from_slice(b"\r\n");
                put_data(wr, out, data).await?;
                out.extend_from_slice(b"\r\n");
            }
            _ => put_data(wr, out, data).await?,
        }
        if out.len() >= FLUSH_AT {
            write_out(wr, out).await?;
        }
    }
    match framing {
        Out::Chunked => {
            out.extend_from_slice(b"0\r\n");
            if ask.trailers
                && let Some(t) = &trailers
            {
                // Only fields the answer's `Trailer` header announced, and
                // none that frames, routes or controls a message (RFC 9110
                // §6.5.1), as hyper.
                for (name, value) in t {
                    if !announced(&parts.headers, name) || !fit_for_trailers(name) {
                        continue;
                    }
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        Out::Length(n) if sent < n => {
            write_out(wr, out).await?;
            return Err(io::Error::other(
                "an answer's body ended short of its length",
            ));
        }
        _ => {}
    }
    write_out(wr, out).await?;
    Ok(keep_alive)
}

/// Whether the `Trailer` header of an answer names `name`.
fn announced(headers: &HeaderMap, name: &http::HeaderName) -> bool {
    h1::has_token(headers, &TRAILER, name.as_str())
}

/// Whether a field may travel in trailers: not one that frames, routes,
/// authenticates or controls the message.
fn fit_for_trailers(name: &http::HeaderName) -> bool {
    use http::header::*;
    ![
        AUTHORIZATION,
        CACHE_CONTROL,
        CONNECTION,
        CONTENT_ENCODING,
        CONTENT_LENGTH,
        CONTENT_RANGE,
        CONTENT_TYPE,
        EXPECT,
        HOST,
        MAX_FORWARDS,
        PRAGMA,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        RANGE,
        SET_COOKIE,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        WWW_AUTHENTICATE,
    ]
    .contains(name)
}

/// `n` in hex, as a chunk-size line starts.
fn hex_len(n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Adds body data to the output: small data is copied in, large data is
/// written at once behind what is buffered, from where it lies.
async fn put_data<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut Vec<u8>,
    data: Bytes,
) -> io::Result<()> {
    if data.len() < COPY_BELOW {
        out.extend_from_slice(&data);
        return Ok(());
    }
    let (mut first, mut second) = (&out[..], &data[..]);
    while !first.is_empty() {
        let n = wr
            .write_vectored(&[IoSlice::new(first), IoSlice::new(second)])
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n <= first.len() {
            first = &first[n..];
        } else {
            second = &second[n - first.len()..];
            first = &[];
        }
    }
    wr.write_all(second).await?;
    out.clear();
    Ok(())
}

async fn write_out<W: AsyncWrite + Unpin>(wr: &mut W, out: &mut Vec<u8>) -> io::Result<()> {
    if !out.is_empty() {
        wr.write_all(out).await?;
        out.clear();
    }
    wr.flush().await
}

/// The `Date` of answers, formatted once a second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static NOW: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }

    pub fn put(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs {
                let formatted = httpdate::fmt_http_date(now);
                if formatted.len() == text.len() {
                    text.copy_from_slice(formatted.as_bytes());
                    *at = secs;
                }
            }
            out.extend_from_slice(text);
        });
    }
}

// === upgrades ===

/// Set on a request that asked to switch protocols: where its connection
/// comes out once Skiff answered 101. (A request extension must be `Clone`;
/// the first to `take` it gets the connection.)
#[derive(Clone)]
pub struct OnUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl OnUpgrade {
    pub fn take(&self) -> Option<Switched> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(Switched)
    }
}

/// The connection of a request that switched protocols, given to the tunnel
/// by the connection's task once the 101 is written.
pub struct Switched(oneshot::Receiver<Upgraded>);

/// An upgraded downstream connection, the bytes already read first.
pub type Upgraded = Box<dyn Io>;

/// A byte stream both ways.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

impl Future for Switched {
    type Output = io::Result<Upgraded>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map_err(|_| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the connection did not switch protocols",
            )
        })
    }
}

/// A stream with bytes already read put back in front of it.
struct Rewind<I> {
    rest: Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.rest.is_empty() {
            let n = self.rest.len().min(out.remaining());
            out.put_slice(&self.rest[..n]);
            self.rest.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<Head>, HeadError> {
        parse_head(&mut BytesMut::from(text.as_bytes()), 101)
    }

    fn refused(text: &str) -> Option<(u16, &'static str)> {
        match parse(text) {
            Err(HeadError::Refused(r)) => Some((r.status.as_u16(), r.counted_as)),
            _ => None,
        }
    }

    #[test]
    fn request_heads_and_their_framing() {
        let h = parse("\r\nGET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!((h.method, h.uri.to_string()), (Method::GET, "/a?b".into()));
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.framing, Framing::Length(0));
        assert!(h.keep_alive);

        let h = parse("GET / HTTP/1.0\r\n\r\n").ok().flatten().unwrap();
        assert!(!h.keep_alive);
        let h = parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(h.keep_alive);

        let h = parse(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .ok()
        .flatten()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.expects_continue);

        let h = parse(
            "GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .ok()
        .flatten()
        .unwrap();
        assert!(h.upgrade);

        assert!(matches!(parse("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
        assert!(matches!(parse("\r\n"), Ok(None)));
    }

    #[test]
    fn malformed_heads_are_refused() {
        for (text, expected) in [
            ("GE(T / HTTP/1.1\r\n\r\n", (400, "malformed")),
            ("GET / HTTP/1.2\r\n\r\n", (400, "malformed")),
            ("GET / HTTP/2.0\r\n\r\n", (400, "malformed")),
            ("GET /\r\n\r\n", (400, "malformed")),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", (400, "malformed")),
            ("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", (400, "malformed")),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n",
                (400, "malformed"),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                (400, "malformed"),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                (400, "malformed"),
            ),
            (
                "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                (400, "malformed"),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                (400, "malformed"),
            ),
        ] {
            assert_eq!(refused(text), Some(expected), "{text:?}");
        }
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        assert_eq!(refused(&long), Some((414, "head-too-large")));
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(102));
        assert_eq!(refused(&many), Some((431, "head-too-large")));
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, text) in [
            (0, "0"),
            (9, "9"),
            (10, "a"),
            (4096, "1000"),
            (usize::MAX, "ffffffffffffffff"),
        ] {
            assert_eq!(hex_len(n, &mut [0; 16]), text.as_bytes());
        }
    }

    /// An answer's framing follows the request and the body: a length when
    /// known, chunked for HTTP/1.1, until close for HTTP/1.0; none for HEAD.
    #[tokio::test]
    async fn answers_are_framed_for_their_request() {
        async fn written(rsp: Response<Body>, ask: Asked) -> (String, bool) {
            let mut wire = Vec::new();
            let keep = respond(&mut wire, &mut Vec::new(), rsp, &ask)
                .await
                .unwrap();
            (String::from_utf8(wire).unwrap(), keep)
        }
        let ask = |version, head| Asked {
            head,
            version,
            keep_alive: true,
            trailers: false,
        };
        let (w, keep) = written(
            Response::new(Body::full("hello")),
            ask(Version::HTTP_11, false),
        )
        .await;
        assert!(w.starts_with("HTTP/1.1 200 OK\r\n"), "{w}");
        assert!(
            w.contains("content-length: 5\r\n") && w.ends_with("\r\n\r\nhello"),
            "{w}"
        );
        assert!(w.contains("date: "), "{w}");
        assert!(keep);

        let streamed = || {
            let frames = futures_util::stream::iter([
                Ok::<_, io::Error>(Frame::data(Bytes::from_static(b"abc"))),
                Ok(Frame::data(Bytes::from(vec![b'z'; 10_000]))),
            ]);
            Body::boxed(http_body_util::StreamBody::new(frames))
        };
        let (w, keep) = written(Response::new(streamed()), ask(Version::HTTP_11, false)).await;
        assert!(w.contains("transfer-encoding: chunked\r\n"), "{w}");
        let body = &w[w.find("\r\n\r\n").unwrap() + 4..];
        assert_eq!(
            body,
            format!("3\r\nabc\r\n2710\r\n{}\r\n0\r\n\r\n", "z".repeat(10_000))
        );
        assert!(keep);

        let (w, keep) = written(Response::new(streamed()), ask(Version::HTTP_10, false)).await;
        assert!(
            !w.contains("transfer-encoding") && w.contains("connection: close\r\n"),
            "{w}"
        );
        assert!(!keep);

        let mut rsp = Response::new(Body::Empty);
        rsp.headers_mut()
            .insert(CONTENT_LENGTH, http::HeaderValue::from_static("42"));
        let (w, _) = written(rsp, ask(Version::HTTP_11, true)).await;
        assert!(
            w.contains("content-length: 42\r\n") && w.ends_with("\r\n\r\n"),
            "{w}"
        );

        let mut rsp = Response::new(Body::Empty);
        rsp.headers_mut()
            .insert(CONNECTION, http::HeaderValue::from_static("close"));
        let (w, keep) = written(rsp, ask(Version::HTTP_10, false)).await;
        assert!(w.contains("connection: close\r\n") && !keep, "{w}");
    }
}
