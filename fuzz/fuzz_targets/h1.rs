//! Skiff's own HTTP/1 server reads what any client sends: request heads
//! (`server::h1::parse_outcome`) and body framing (`h1::decode`). Bytes
//! arrive in pieces of any size, so reading in pieces must decide exactly
//! what reading at once decides, and nothing may panic.
#![no_main]

use bytes::BytesMut;
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;
use skiff::h1::{Chunk, Framing, Step, decode};
use skiff::server::h1::parse_outcome;

/// Decodes `wire` as a chunked body fed `step` bytes at a time: the data,
/// the trailers, and how it ended (`Ok(true)` complete, `Ok(false)` short,
/// `Err` refused).
fn body(wire: &[u8], step: usize) -> (Vec<u8>, Option<HeaderMap>, Result<bool, ()>) {
    let mut framing = Framing::Chunked(Chunk::Size);
    let mut buf = BytesMut::new();
    let (mut data, mut trailers) = (Vec::new(), None);
    let mut fed = 0;
    loop {
        match decode(&mut buf, &mut framing) {
            Err(_) => return (data, trailers, Err(())),
            Ok(Step::End) => return (data, trailers, Ok(true)),
            Ok(Step::Frame(f)) => match f.into_data() {
                Ok(d) => data.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().ok(),
            },
            Ok(Step::NeedMore) if fed == wire.len() => return (data, trailers, Ok(false)),
            Ok(Step::NeedMore) => {
                let n = step.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, data)) = data.split_first() else {
        return;
    };
    // Heads: every prefix is undecided, or decides what the whole does.
    let slots = 1 + usize::from(knob % 8) * 16;
    let whole = parse_outcome(data, slots);
    let step = 1 + usize::from(knob) * 7 % 61;
    let mut end = 0;
    while end < data.len() {
        end = (end + step).min(data.len());
        if let Some(part) = parse_outcome(&data[..end], slots) {
            assert_eq!(Some(&part), whole.as_ref(), "prefix of {end} bytes");
            break;
        }
    }
    // Chunked bodies: any read size decodes to the same data and end; a
    // refusal may come sooner in pieces, never a different body.
    let (all, all_trailers, all_end) = body(data, data.len().max(1));
    for step in [1, 2, 3, 7, 64] {
        let (got, got_trailers, got_end) = body(data, step);
        match (&all_end, &got_end) {
            (Err(()), Err(())) => {}
            _ => {
                assert_eq!(got_end, all_end, "end, read {step} at a time");
                assert_eq!(got, all, "data, read {step} at a time");
                assert_eq!(
                    got_trailers, all_trailers,
                    "trailers, read {step} at a time"
                );
            }
        }
    }
});
