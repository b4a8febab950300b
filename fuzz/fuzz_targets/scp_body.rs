//! SCP volume create bodies in every version's schema.
#![no_main]

use blockd::api::RawBody;
use blockd::api::scp::create_request;
use blockd::api::scp::version::ApiVersion;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = RawBody(bytes::Bytes::copy_from_slice(data));
    for v in [
        ApiVersion::V1_0,
        ApiVersion::V1_1,
        ApiVersion::V1_2,
        ApiVersion::V1_3,
    ] {
        let _ = create_request(&body, v);
    }
});
