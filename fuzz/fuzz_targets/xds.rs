//! The control feed's resource mapping: any sequence of resources (each of
//! one of the four types, its protobuf bytes from the input) is either
//! refused with reasons or decoded, and what is decoded goes through the
//! checks every config goes through (whatever they find); never a panic.
//! This is what a hostile or broken control plane can send.
#![no_main]

use envoy_types::pb::google::protobuf::Any;
use libfuzzer_sys::fuzz_target;
use skiff_control::xds::{self, Resources};

fuzz_target!(|data: &[u8]| {
    let mut res = Resources::default();
    let mut rest = data;
    // Records: one byte of type, two of length, that many of message.
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (value, next) = tail.split_at(len);
        rest = next;
        let any = Any {
            type_url: xds::TYPES[usize::from(*kind) % xds::TYPES.len()].to_owned(),
            value: value.to_vec(),
        };
        if let Err(why) = xds::insert(&mut res, &any) {
            assert!(!why.is_empty());
        }
    }
    match xds::decode(&res) {
        Ok(config) => {
            let _ = skiff_control::validate(&config);
        }
        Err(refusals) => assert!(!refusals.is_empty(), "a refusal says why"),
    }
});
