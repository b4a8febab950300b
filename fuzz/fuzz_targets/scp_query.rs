//! SCP list query strings, as `GET /v1/volumes` and `GET /v1/snapshots`
//! read them: any input gives a query or a 400, never a panic.
#![no_main]

use blockd::api::scp::version::ApiVersion;
use blockd::api::scp::{list_query, snapshot_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let _ = list_query(Some(raw));
    for v in [ApiVersion::V1_0, ApiVersion::V1_3] {
        let _ = snapshot_query(Some(raw), v);
    }
});
