//! The config loader, YAML text to a validated model: any text gets a
//! config or errors that name a place in the file, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_control::{Vars, load::load_str_with};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `${VAR}` resolves from a fixed set, so a run does not depend on the
    // fuzzing machine's environment.
    let vars = Vars::process()
        .with("POD_NAME", "pod-0")
        .with("PORT", "8080");
    match load_str_with(text, "fuzz.yaml", &vars) {
        Ok(config) => {
            // A config that loads maps to the control feed's resources.
            let _ = skiff_control::xds::encode(&config);
        }
        Err(errors) => {
            assert!(!errors.0.is_empty(), "a refusal names at least one problem");
            for e in &errors.0 {
                assert_eq!(e.file, "fuzz.yaml");
                let _ = e.to_string();
            }
        }
    }
});
