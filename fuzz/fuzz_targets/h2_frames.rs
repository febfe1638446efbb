//! Skiff reads the frame headers of every served HTTP/2 connection below
//! hyper (`server::h2_frames`): to count the refusals h2 writes and to end
//! floods of empty frames. The bytes come from any client, in pieces of any
//! size: reading them in pieces must find exactly the frames, and the flood,
//! that reading them whole finds, and nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::server::h2_frames::scan;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, wire)) = data.split_first() else {
        return;
    };
    let whole = scan(wire, wire.len().max(1));
    for step in [1, 2, 3, 8, 9, 10, 17, usize::from(knob).max(1)] {
        assert_eq!(scan(wire, step), whole, "read {step} bytes at a time");
    }
});
