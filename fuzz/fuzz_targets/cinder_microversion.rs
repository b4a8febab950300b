//! The Cinder `OpenStack-API-Version` header: any text negotiates to a
//! version in the served range, a 406 or a 400.
#![no_main]

use blockd::api::cinder::microversion::{MAX, MIN, Negotiation, negotiate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(h) = std::str::from_utf8(data) else {
        return;
    };
    if let Negotiation::Ok(v) = negotiate(Some(h)) {
        assert!(v >= MIN && v <= MAX, "{h:?} gave {v}");
    }
});
