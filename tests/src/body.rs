//! Bodies for requests and responses, and the sha256 used to compare them.
use std::convert::Infallible;

use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use sha2::{Digest, Sha256};

/// The error every harness body carries: anything a peer can make go wrong.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One body type for every client request and backend response, so that
/// fixed, streamed and relayed bodies mix freely. Unsync because streams
/// built from channels need not be `Sync`.
pub type BoxBody = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> BoxBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// No body at all (a known length of zero).
pub fn empty() -> BoxBody {
    boxed(Empty::<Bytes>::new())
}

/// A body of known length: HTTP/1 sends it with `content-length`.
pub fn full(data: impl Into<Bytes>) -> BoxBody {
    boxed(Full::new(data.into()))
}

/// A body of unknown length made of `chunks`: HTTP/1 sends it chunked, one
/// chunk per element, and HTTP/2 as one DATA frame per element.
pub fn chunked<I>(chunks: I) -> BoxBody
where
    I: IntoIterator,
    I::Item: Into<Bytes>,
    I::IntoIter: Send + 'static,
{
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(Frame::data(c.into())));
    boxed(StreamBody::new(stream::iter(frames)))
}

/// `len` bytes of a deterministic, non-repeating-looking pattern: cheap to
/// generate, and a byte dropped, duplicated or reordered anywhere changes
/// the sha256.
pub fn pattern(len: usize) -> Bytes {
    let mut state: u32 = 0x9e37_79b9;
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        // xorshift32: a full-period generator, so no short cycle hides a bug.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out.push(state.to_le_bytes()[0]);
    }
    Bytes::from(out)
}

/// `data` as a streamed body of `chunk`-sized pieces (unknown length).
pub fn streamed(data: Bytes, chunk: usize) -> BoxBody {
    let pieces: Vec<Bytes> = data
        .chunks(chunk.max(1))
        .map(|c| data.slice_ref(c))
        .collect();
    chunked(pieces)
}

/// Lowercase hex sha256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
