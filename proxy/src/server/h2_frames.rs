//! What Skiff watches of a served HTTP/2 connection's frames, below hyper.
//!
//! h2 enforces most HTTP/2 limits itself (docs/hardening.md) but tells
//! Skiff nothing of what it refused. [`Watched`] wraps the connection's
//! byte stream and reads the frame headers as they pass, both ways, without
//! copying or buffering anything but a header's first bytes:
//!
//! * **Going out**, the refusals h2 makes on its own are counted in
//!   `skiff_downstream_refusals_total`: `RST_STREAM REFUSED_STREAM` past
//!   `max_concurrent_streams` (`max-concurrent-streams`), GOAWAY
//!   `ENHANCE_YOUR_CALM` after a flood (rapid reset, CONTINUATION, stream
//!   errors: `h2-flood`), and GOAWAY or `RST_STREAM` for a frame or header
//!   block that breaks the protocol (`PROTOCOL_ERROR`, `FLOW_CONTROL_ERROR`,
//!   `FRAME_SIZE_ERROR`, `COMPRESSION_ERROR`: `malformed`). Counted just
//!   before the frame is written, so before the client can read it.
//! * **Coming in**, DATA, HEADERS and CONTINUATION frames with an empty
//!   payload and no END_STREAM are counted in a row, as Envoy's
//!   `max_consecutive_inbound_frames_with_empty_payload` (default 1)
//!   counts them: h2 drops such a frame at no cost in memory, but each
//!   costs a frame's work, and a stream of them is a CPU flood
//!   (CVE-2019-9518) that no other limit stops. Past the limit Skiff sends
//!   GOAWAY `ENHANCE_YOUR_CALM` itself, counts `h2-flood`, and ends the
//!   connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use skiff_filters::telemetry::Metrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Empty frames without END_STREAM a client may send in a row (Envoy's
/// default for `max_consecutive_inbound_frames_with_empty_payload`).
pub const MAX_EMPTY_FRAMES_IN_A_ROW: u32 = 1;

/// The client's connection preface, which comes before its first frame.
const PREFACE_LEN: u32 = 24;
/// A frame header: length (24 bits), type, flags, stream id (RFC 9113 §4.1).
const HEAD: usize = 9;
/// Payload bytes kept of each frame: enough for a GOAWAY's error code, or
/// a padded HEADERS frame's pad length.
const PEEK: usize = 8;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame's header and the first bytes of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    /// Where in the byte stream the frame was made out (its header and
    /// peeked bytes end there): what tells one frame from another.
    at: u64,
    len: u32,
    kind: u8,
    flags: u8,
    stream: u32,
    /// The payload's first `min(len, PEEK)` bytes; zeros past them.
    peek: [u8; PEEK],
}

impl Frame {
    /// The payload's length without padding and priority fields: what the
    /// frame carries. A padded frame whose pad length is not there yet
    /// (`len` 0) carries nothing.
    fn carried(&self) -> u32 {
        let mut extra = 0;
        if matches!(self.kind, DATA | HEADERS) && self.flags & PADDED != 0 {
            extra += 1 + u32::from(self.peek[0]);
        }
        if self.kind == HEADERS && self.flags & PRIORITY != 0 {
            extra += 5;
        }
        self.len.saturating_sub(extra)
    }

    /// The error code of a RST_STREAM or GOAWAY, when it is all there.
    fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        (self.len as usize >= at + 4).then(|| {
            u32::from_be_bytes([
                self.peek[at],
                self.peek[at + 1],
                self.peek[at + 2],
                self.peek[at + 3],
            ])
        })
    }
}

/// Walks frame headers through bytes that arrive in pieces of any size.
#[derive(Debug, Default, Clone, Copy)]
struct Scanner {
    /// The current frame's header and first payload bytes, as far as read.
    head: [u8; HEAD + PEEK],
    filled: u8,
    /// Bytes to pass over before the next frame header.
    skip: u32,
    /// Bytes fed so far.
    pos: u64,
}

impl Scanner {
    fn after(skip: u32) -> Self {
        Self {
            skip,
            ..Self::default()
        }
    }

    fn len(&self) -> u32 {
        u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]])
    }

    /// Whether the bytes so far end exactly at a frame's end.
    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.filled == 0
    }

    /// Feeds `bytes`; `on` sees each frame once its header and the first
    /// `PEEK` bytes of its payload (or all of a shorter one) have passed.
    fn feed(&mut self, bytes: &[u8], mut on: impl FnMut(&Frame)) {
        let start = self.pos;
        self.pos += bytes.len() as u64;
        let mut at = 0;
        while at < bytes.len() {
            if self.skip > 0 {
                let n = (bytes.len() - at).min(self.skip as usize);
                // `n` is at most `skip`, a u32.
                self.skip -= n as u32;
                at += n;
                continue;
            }
            let filled = usize::from(self.filled);
            let target = if filled < HEAD {
                HEAD
            } else {
                HEAD + (self.len() as usize).min(PEEK)
            };
            let n = (target - filled).min(bytes.len() - at);
            self.head[filled..filled + n].copy_from_slice(&bytes[at..at + n]);
            at += n;
            // At most HEAD + PEEK.
            self.filled = (filled + n) as u8;
            if filled + n < target || (target == HEAD && self.len() > 0) {
                // Wants more bytes, or the payload's first ones next.
                continue;
            }
            let len = self.len();
            let mut peek = [0; PEEK];
            peek.copy_from_slice(&self.head[HEAD..]);
            let peek_len = (len as usize).min(PEEK);
            peek[peek_len..].fill(0);
            let frame = Frame {
                at: start + at as u64,
                len,
                kind: self.head[3],
                flags: self.head[4],
                stream: u32::from_be_bytes([
                    self.head[5],
                    self.head[6],
                    self.head[7],
                    self.head[8],
                ]) & 0x7fff_ffff,
                peek,
            };
            self.filled = 0;
            // `peek_len` is at most `len`.
            self.skip = len - peek_len as u32;
            on(&frame);
        }
    }
}

/// A served HTTP/2 connection's byte stream, watched (see the module doc).
pub struct Watched<I> {
    io: I,
    incoming: Scanner,
    outgoing: Scanner,
    /// Empty frames without END_STREAM received in a row.
    empty_in_a_row: u32,
    /// The highest stream a client opened that h2 has seen: a GOAWAY's
    /// last stream.
    last_stream: u32,
    /// Whether h2 sent GOAWAY: streams refused after it were refused for
    /// the drain, not for a limit.
    going_away: bool,
    /// Where the last outgoing frame judged was made out ([`Frame::at`]):
    /// frames are judged before their bytes are written, and bytes h2
    /// could not write yet come again in its next write.
    judged: u64,
    /// Set once the empty-frame limit is crossed: Skiff's GOAWAY, and how
    /// much of it is written. From then on every read fails and every
    /// write h2 makes is dropped, so the wire ends with that GOAWAY.
    ended: Option<([u8; HEAD + 8], usize)>,
    metrics: Arc<Metrics>,
    listener: Arc<str>,
}

impl<I> Watched<I> {
    /// Watches `io`, whose first bytes are the client's preface.
    pub fn new(io: I, metrics: Arc<Metrics>, listener: Arc<str>) -> Self {
        Self {
            io,
            incoming: Scanner::after(PREFACE_LEN),
            outgoing: Scanner::default(),
            empty_in_a_row: 0,
            last_stream: 0,
            going_away: false,
            judged: 0,
            ended: None,
            metrics,
            listener,
        }
    }

    /// Notes the frames in `bytes`, just read; whether the connection must
    /// end for an empty-frame flood.
    fn read_frames(&mut self, bytes: &[u8]) -> bool {
        let (mut empty, mut last) = (self.empty_in_a_row, self.last_stream);
        let mut flood = false;
        self.incoming.feed(bytes, |f| {
            if f.kind == HEADERS && f.stream % 2 == 1 {
                last = last.max(f.stream);
            }
            flood |= note_empty(&mut empty, f);
        });
        self.empty_in_a_row = empty;
        // A flood's read is dropped whole (`poll_read`), so the streams it
        // opened never reached h2 and the GOAWAY does not name them.
        if !flood {
            self.last_stream = last;
        }
        flood
    }

    /// Counts the refusals among the frames in `pieces`, about to be
    /// written: counted before the client can read them. Judged on a copy
    /// of the scanner, so that a partial write changes nothing; a frame
    /// already judged is passed over when its bytes come again.
    fn will_write<'b>(&mut self, pieces: impl Iterator<Item = &'b [u8]>) {
        let mut ahead = self.outgoing;
        let Self {
            going_away,
            judged,
            metrics,
            listener,
            ..
        } = self;
        for piece in pieces {
            ahead.feed(piece, |f| {
                if f.at <= *judged {
                    return;
                }
                *judged = f.at;
                let reason = match (f.kind, f.code()) {
                    (RST_STREAM, Some(REFUSED_STREAM)) if !*going_away => "max-concurrent-streams",
                    (GOAWAY, Some(ENHANCE_YOUR_CALM)) => "h2-flood",
                    (
                        RST_STREAM | GOAWAY,
                        Some(
                            PROTOCOL_ERROR | FLOW_CONTROL_ERROR | FRAME_SIZE_ERROR
                            | COMPRESSION_ERROR,
                        ),
                    ) => "malformed",
                    // NO_ERROR and CANCEL end streams and connections in
                    // the normal course; INTERNAL_ERROR is a response body
                    // that failed, which the request's own metrics tell.
                    _ => "",
                };
                *going_away |= f.kind == GOAWAY;
                if !reason.is_empty() {
                    metrics.refused(listener, reason);
                }
            });
        }
    }

    /// Starts ending the connection for an empty-frame flood: Skiff's own
    /// GOAWAY, when the bytes written so far end at a frame's end (else
    /// writing it would cut into h2's frame, and the connection just closes).
    fn end_for_flood(&mut self) {
        self.metrics.refused(&self.listener, "h2-flood");
        let mut goaway = [0u8; HEAD + 8];
        goaway[..HEAD].copy_from_slice(&[0, 0, 8, GOAWAY, 0, 0, 0, 0, 0]);
        goaway[HEAD..HEAD + 4].copy_from_slice(&self.last_stream.to_be_bytes());
        goaway[HEAD + 4..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        let written = if self.outgoing.at_boundary() {
            0
        } else {
            goaway.len()
        };
        self.ended = Some((goaway, written));
    }
}

fn flood_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "HTTP/2 flood of empty frames: GOAWAY ENHANCE_YOUR_CALM",
    )
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    /// Writes what is left of Skiff's GOAWAY; ready once it is all out (or
    /// the socket failed: the connection ends either way).
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((goaway, written)) = self.ended.as_mut() else {
            return Poll::Ready(());
        };
        while *written < goaway.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &goaway[*written..])) {
                Ok(n) if n > 0 => *written += n,
                _ => *written = goaway.len(),
            }
        }
        Poll::Ready(())
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.ended.is_none() {
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            if !this.read_frames(&buf.filled()[before..]) {
                return Poll::Ready(Ok(()));
            }
            // What the flood's last read brought is not h2's to see.
            buf.set_filled(before);
            this.end_for_flood();
        }
        ready!(this.poll_goaway(cx));
        Poll::Ready(Err(flood_error()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended.is_some() {
            ready!(this.poll_goaway(cx));
            return Poll::Ready(Ok(buf.len()));
        }
        this.will_write(std::iter::once(buf));
        let n = ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        this.outgoing.feed(&buf[..n], |_| {});
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ended.is_some() {
            ready!(this.poll_goaway(cx));
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        this.will_write(bufs.iter().map(|b| &**b));
        let n = ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let take = left.min(b.len());
            this.outgoing.feed(&b[..take], |_| {});
            left -= take;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_goaway(cx));
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_goaway(cx));
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// Counts `f` in the run of empty frames (no payload, no END_STREAM) that
/// `in_a_row` holds; whether the run is now a flood.
fn note_empty(in_a_row: &mut u32, f: &Frame) -> bool {
    if matches!(f.kind, DATA | HEADERS | CONTINUATION) {
        if f.carried() == 0 && f.flags & END_STREAM == 0 {
            *in_a_row += 1;
        } else {
            *in_a_row = 0;
        }
    }
    *in_a_row > MAX_EMPTY_FRAMES_IN_A_ROW
}

/// A frame as [`scan`] reports it: type, flags, stream, length, bytes carried.
pub type Seen = (u8, u8, u32, u32, u32);

/// What a watch makes of `wire` read `step` bytes at a time: the frames it
/// found (type, flags, stream, length, bytes carried) and how many frames
/// in it declared an empty-frame flood, if one did. For the `h2_frames`
/// fuzz target, which checks that any cut of the bytes gives the same
/// answer as reading them whole.
pub fn scan(wire: &[u8], step: usize) -> (Vec<Seen>, Option<usize>) {
    let mut frames = Vec::new();
    let mut scanner = Scanner::default();
    let (mut empty, mut flood) = (0, None);
    for piece in wire.chunks(step.max(1)) {
        scanner.feed(piece, |f| {
            frames.push((f.kind, f.flags, f.stream, f.len, f.carried()));
            if note_empty(&mut empty, f) && flood.is_none() {
                flood = Some(frames.len());
            }
        });
    }
    (frames, flood)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut out = len.to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// The frames a scanner reports do not depend on how the bytes were cut.
    #[test]
    fn frames_are_found_whatever_the_pieces() {
        let mut wire = Vec::new();
        wire.extend(frame(HEADERS, 0x4, 1, &[0x82; 30]));
        wire.extend(frame(DATA, 0, 1, &[]));
        wire.extend(frame(RST_STREAM, 0, 3, &REFUSED_STREAM.to_be_bytes()));
        wire.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 5, 0, 0, 0, 0xb, 1, 2]));
        wire.extend(frame(DATA, PADDED, 1, &[3, 0, 0, 0]));
        let whole = {
            let mut seen = Vec::new();
            Scanner::default().feed(&wire, |f| seen.push(*f));
            seen
        };
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[0].carried(), 30);
        assert_eq!(whole[1].carried(), 0);
        assert_eq!(whole[2].code(), Some(REFUSED_STREAM));
        assert_eq!(whole[2].stream, 3);
        assert_eq!(whole[3].code(), Some(ENHANCE_YOUR_CALM));
        assert_eq!(whole[4].carried(), 0, "padding only");
        for size in 1..wire.len() {
            let mut seen = Vec::new();
            let mut s = Scanner::default();
            for piece in wire.chunks(size) {
                s.feed(piece, |f| seen.push(*f));
            }
            assert_eq!(seen, whole, "pieces of {size}");
            assert!(s.at_boundary());
        }
    }

    /// The preface is passed over; the second empty DATA frame in a row is
    /// a flood, and a frame with a payload or END_STREAM between them resets
    /// the count, as in Envoy.
    #[test]
    fn empty_frames_in_a_row_are_a_flood() {
        let metrics = skiff_filters::telemetry::Metrics::new();
        let mut w = Watched::new((), metrics, Arc::from("main"));
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(0x4, 0, 0, &[]));
        hello.extend(frame(HEADERS, 0x4, 1, &[0x82]));
        assert!(!w.read_frames(&hello));
        assert_eq!(w.last_stream, 1);
        assert!(!w.read_frames(&frame(DATA, 0, 1, &[])));
        assert!(!w.read_frames(&frame(DATA, 0, 1, b"x")));
        assert!(!w.read_frames(&frame(DATA, 0, 1, &[])));
        assert!(!w.read_frames(&frame(DATA, END_STREAM, 1, &[])));
        assert!(!w.read_frames(&frame(DATA, 0, 1, &[])));
        assert!(w.read_frames(&frame(CONTINUATION, 0, 1, &[])));
    }
}
