//! The HTTP/1.1 wire format both of Skiff's own HTTP/1 codecs share: the
//! server (`server::h1`) and the inline client (`upstream::inline_h1`).
//! How a body is framed and decoded, how a parsed head becomes a
//! `HeaderMap` without copying its bytes, and the `Connection` tokens.
//!
//! Nothing here trusts the peer: sizes are bounded, a `Content-Length` must
//! be one number, chunk sizes are parsed by httparse, and anything malformed
//! is an `InvalidData` error, never a panic.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;

/// Header fields accepted in a response head or a trailer block, as
/// hyper's client.
pub const MAX_HEADERS: usize = 100;
/// The largest response head (or trailer block) read, as hyper's client
/// (its `max_buf_size` default).
pub const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// The largest trailer section read, as hyper.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// The longest chunk-size line, extensions included: a size line is a few
/// bytes, and a long one is an attack.
const MAX_SIZE_LINE: usize = 1024;
/// What one read asks the socket for.
pub const READ_CHUNK: usize = 8192;

pub fn invalid(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Where one header field's name and value sit in a head's bytes.
pub type Span = (u32, u32, u32, u32);

/// Notes where each of `fields` sits in the head starting at `base`, so
/// that the head can be frozen once and every field shared from it.
pub fn spans(base: *const u8, fields: &[httparse::Header<'_>], out: &mut [Span]) {
    let base = base as usize;
    for (span, h) in out.iter_mut().zip(fields) {
        let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
        *span = (
            at(h.name.as_bytes()),
            at(h.name.as_bytes()) + h.name.len() as u32,
            at(h.value),
            at(h.value) + h.value.len() as u32,
        );
    }
}

/// The header map of a frozen head, its fields at `spans`; values share
/// the head's bytes.
pub fn header_map(head: &Bytes, spans: &[Span]) -> io::Result<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &(ns, ne, vs, ve) in spans {
        let name = HeaderName::from_bytes(&head[ns as usize..ne as usize])
            .map_err(|_| invalid("bad header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(vs as usize..ve as usize))
            .map_err(|_| invalid("bad header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// The one length the `Content-Length` fields state (`3, 3` is one
/// length), `None` without any; several differing lengths, or anything but
/// digits, are an error.
pub fn content_length(headers: &HeaderMap) -> io::Result<Option<u64>> {
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part.trim_ascii())
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            if length.is_some_and(|was| was != n) {
                return Err(invalid("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the last transfer coding is `chunked`.
pub fn last_coding_is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|&b| b == b',').next())
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

pub fn connection_has_close(headers: &HeaderMap) -> bool {
    connection_has(headers, "close")
}

pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    has_token(headers, &CONNECTION, token)
}

/// Whether any `header` field lists `token` (a comma-separated list,
/// compared without case): `Connection`, `TE`, `Trailer`.
pub fn has_token(headers: &HeaderMap, header: &HeaderName, token: &str) -> bool {
    headers.get_all(header).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// How a message body ends (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes still to come.
    Length(u64),
    /// Chunked, in this state.
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
}

impl Framing {
    /// Whether the body is complete.
    pub fn done(self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunk::Done))
    }

    /// What is known of the rest of the body's size.
    pub fn size_hint(self) -> http_body::SizeHint {
        match self {
            Framing::Length(n) => http_body::SizeHint::with_exact(n),
            _ => http_body::SizeHint::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk: this many data bytes still to come.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section.
    Trailers,
    /// The body is complete.
    Done,
}

/// The framing a response's headers declare: a last `chunked` coding wins
/// (and a `Content-Length` beside it is ignored, RFC 9112 §6.3); another
/// coding means reading until close; several differing lengths are an error.
pub fn framing(headers: &HeaderMap) -> io::Result<Framing> {
    if headers.contains_key(TRANSFER_ENCODING) {
        return Ok(if last_coding_is_chunked(headers) {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    Ok(content_length(headers)?.map_or(Framing::Close, Framing::Length))
}

/// What the decoder made of the buffered bytes.
#[derive(Debug)]
pub enum Step {
    Frame(Frame<Bytes>),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Takes the next frame of a body framed by `framing` off `buf`, advancing
/// the state; data frames share the buffer's bytes.
pub fn decode(buf: &mut BytesMut, framing: &mut Framing) -> io::Result<Step> {
    loop {
        match *framing {
            Framing::Length(0) | Framing::Chunked(Chunk::Done) => return Ok(Step::End),
            Framing::Length(left) => {
                let Some(data) = take(buf, left) else {
                    return Ok(Step::NeedMore);
                };
                *framing = Framing::Length(left - data.len() as u64);
                return Ok(Step::Frame(Frame::data(data)));
            }
            Framing::Close if buf.is_empty() => return Ok(Step::NeedMore),
            Framing::Close => return Ok(Step::Frame(Frame::data(buf.split().freeze()))),
            Framing::Chunked(Chunk::Size) => match chunk_size(buf)? {
                Some((used, size)) => {
                    buf.advance(used);
                    *framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                None => return Ok(Step::NeedMore),
            },
            Framing::Chunked(Chunk::Data(left)) => {
                let Some(data) = take(buf, left) else {
                    return Ok(Step::NeedMore);
                };
                let left = left - data.len() as u64;
                *framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                return Ok(Step::Frame(Frame::data(data)));
            }
            Framing::Chunked(Chunk::DataEnd) => {
                if buf.len() < 2 {
                    return Ok(Step::NeedMore);
                }
                if buf[..2] != *b"\r\n" {
                    return Err(invalid("chunk data not followed by CRLF"));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Framing::Chunked(Chunk::Trailers) => {
                if buf.starts_with(b"\r\n") {
                    buf.advance(2);
                    *framing = Framing::Chunked(Chunk::Done);
                    return Ok(Step::End);
                }
                let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let (used, trailers) = match httparse::parse_headers(buf, &mut fields) {
                    Ok(httparse::Status::Complete((used, fields))) => {
                        let mut map = HeaderMap::with_capacity(fields.len());
                        for f in fields {
                            let name = HeaderName::from_bytes(f.name.as_bytes())
                                .map_err(|_| invalid("bad trailer name"))?;
                            let value = HeaderValue::from_bytes(f.value)
                                .map_err(|_| invalid("bad trailer value"))?;
                            map.append(name, value);
                        }
                        (used, map)
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_TRAILER_BYTES => {
                        return Ok(Step::NeedMore);
                    }
                    _ => return Err(invalid("bad trailers")),
                };
                buf.advance(used);
                *framing = Framing::Chunked(Chunk::Done);
                return Ok(Step::Frame(Frame::trailers(trailers)));
            }
        }
    }
}

/// A chunk-size line at the start of `buf` (RFC 9112 §7.1): one to sixteen
/// hex digits, then extensions (`;name=value`, which are ignored) of
/// visible characters, spaces and tabs, then CRLF. The bytes it takes and
/// the size; `None` while incomplete. Stricter than httparse, which takes
/// a line without digits as size 0 and a bare LF inside extensions: where
/// two parsers disagree on a body's end, requests can be smuggled.
pub fn chunk_size(buf: &[u8]) -> io::Result<Option<(usize, u64)>> {
    let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits > 16 {
        return Err(invalid("chunk size too large"));
    }
    let Some(line_end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_SIZE_LINE {
            return Err(invalid("chunk-size line too long"));
        }
        let rest = &buf[digits..];
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        return if ext_ok(rest) {
            Ok(None)
        } else {
            Err(invalid("bad chunk size"))
        };
    };
    if digits == 0 || line_end == 0 || buf[line_end - 1] != b'\r' || line_end > MAX_SIZE_LINE {
        return Err(invalid("bad chunk size"));
    }
    if !ext_ok(&buf[digits..line_end - 1]) {
        return Err(invalid("bad chunk extension"));
    }
    let mut size = 0u64;
    for &b in &buf[..digits] {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        size = (size << 4) | u64::from(d);
    }
    Ok(Some((line_end + 1, size)))
}

/// Whether what follows a chunk size's digits can be extensions: nothing,
/// or `;` (after optional spaces) and visible characters, spaces and tabs.
fn ext_ok(ext: &[u8]) -> bool {
    let is_ext_byte = |b: &u8| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80;
    let first = ext.iter().find(|&&b| b != b' ' && b != b'\t');
    matches!(first, None | Some(b';')) && ext.iter().all(is_ext_byte)
}

/// Up to `left` buffered bytes, if there are any.
pub fn take(buf: &mut BytesMut, left: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
    Some(buf.split_to(n).freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes; returns the data, the
    /// trailers and whether the body ended.
    fn run(
        wire: &[u8],
        mut framing: Framing,
        step: usize,
    ) -> io::Result<(Vec<u8>, Option<HeaderMap>, bool)> {
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match decode(&mut buf, &mut framing)? {
                Step::Frame(f) => match f.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(f) => trailers = f.into_trailers().ok(),
                },
                Step::End => return Ok((data, trailers, true)),
                Step::NeedMore if fed == wire.len() => return Ok((data, trailers, false)),
                Step::NeedMore => {
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn bodies_decode_whatever_the_read_sizes() {
        let chunked = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            let (data, trailers, ended) =
                run(chunked, Framing::Chunked(Chunk::Size), step).unwrap();
            assert_eq!(data, b"hello world", "step {step}");
            assert_eq!(trailers.unwrap()["grpc-status"], "0");
            assert!(ended);
            let (data, _, ended) = run(b"0123456789", Framing::Length(10), step).unwrap();
            assert_eq!((data.as_slice(), ended), (&b"0123456789"[..], true));
            let (data, trailers, ended) = run(
                b"3\r\nabc\r\n0\r\n\r\n",
                Framing::Chunked(Chunk::Size),
                step,
            )
            .unwrap();
            assert_eq!(
                (data.as_slice(), trailers, ended),
                (&b"abc"[..], None, true)
            );
        }
        // Short of its length: not ended.
        assert!(!run(b"01234", Framing::Length(10), 3).unwrap().2);
    }

    #[test]
    fn chunk_size_lines_are_strict() {
        for (line, expected) in [
            (&b"5\r\n"[..], Some((3, 5))),
            (b"1aF\r\n", Some((5, 0x1af))),
            (b"5;name=value\r\n", Some((14, 5))),
            (b"5 ;x\r\n", Some((6, 5))),
            (b"ffffffffffffffff\r\n", Some((18, u64::MAX))),
            (b"5", None),
            (b"5;ext", None),
            (b"5\r", None),
        ] {
            assert_eq!(chunk_size(line).unwrap(), expected, "{line:?}");
        }
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b" \r\n",
            b"5\n",
            b"5;a\nb\r\n",
            b"5;a\rb\r\n",
            b"5x\r\n",
            b"1ffffffffffffffff\r\n",
            b"-5\r\n",
            b"5;\x00\r\n",
        ] {
            assert!(chunk_size(bad).is_err(), "{bad:?}");
        }
        let long = [&b"5;"[..], &[b'a'; 2000]].concat();
        assert!(chunk_size(&long).is_err());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for wire in [
            &b"zz\r\nabc\r\n"[..],
            b"3\r\nabcXX0\r\n\r\n",
            b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
            &[b'1'; 2000],
        ] {
            assert!(
                run(wire, Framing::Chunked(Chunk::Size), 5).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
