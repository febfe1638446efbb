//! `skiff inject`: any manifest text gets an output and per-document
//! errors, never a panic; and injecting what it printed changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff::k8s::inject::{Options, inject};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let options = Options::default();
    let (once, errors) = inject(text, &options);
    for e in &errors {
        let _ = e.to_string();
    }
    if errors.is_empty() {
        let (twice, again) = inject(&once, &options);
        assert!(
            again.is_empty(),
            "its own output does not read back: {again:?}"
        );
        assert_eq!(once, twice, "inject is not idempotent");
    }
});
