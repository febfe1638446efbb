//! Protocol sniffing: a connection's first bytes decide HTTP/1, HTTP/2 or
//! garbage, and once decided, more bytes never change the decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::protocol::{Spoken, admit, decide};
use skiff_control::model::ListenerProtocol;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(24)];
    let mut decided: Option<Spoken> = None;
    for end in 0..=data.len() {
        let now = decide(&data[..end]);
        if let Some(before) = decided {
            assert_eq!(
                now,
                Some(before),
                "{:?}: decided, then changed",
                &data[..end]
            );
        }
        decided = decided.or(now);
    }
    if data.len() == 24 {
        assert!(decided.is_some(), "24 bytes always decide: {data:?}");
    }
    if let Some(spoken) = decided {
        for p in [
            ListenerProtocol::Auto,
            ListenerProtocol::Http1,
            ListenerProtocol::Http2,
        ] {
            let admitted = admit(p, spoken);
            assert_eq!(
                admitted.is_ok(),
                spoken != Spoken::Garbage
                    && !matches!(
                        (p, spoken),
                        (ListenerProtocol::Http1, Spoken::Http2)
                            | (ListenerProtocol::Http2, Spoken::Http1)
                    )
            );
        }
    }
});
