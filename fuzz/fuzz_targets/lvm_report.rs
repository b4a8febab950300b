//! The lvm2 JSON report parsers (vgs, pvs, lvs, seg_pe_ranges, numbers):
//! any text parses or gives an error, never a panic.
#![no_main]

use blockd::backend::lvm::report;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = report::parse_vg(text, "blockd-vg");
    let _ = report::parse_pvs(text);
    let _ = report::parse_lvs(text);
    let _ = report::parse_pe_ranges(text);
    let _ = report::number(text);
});
