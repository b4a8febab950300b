//! Cinder request bodies as the volume handlers read them (the envelope,
//! name, size, ids, metadata, booleans), and the list query string.
#![no_main]

use blockd::api::cinder::microversion::{MAX, Microversion};
use blockd::api::cinder::volumes::{id_field, list_query, metadata_field, size_field, text_field};
use blockd::api::cinder::{Ctx, body_object, json_body, python_bool};
use blockd::service::Caller;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = json_body(data);
    for key in ["volume", "snapshot", "os-extend", "metadata"] {
        if let Ok(m) = body_object(data, key) {
            let _ = text_field(&m, &["name", "display_name"]);
            let _ = size_field(m.get("size"));
            let _ = size_field(m.get("new_size"));
            let _ = id_field(&m, "snapshot_id");
            if let Some(v) = m.get("metadata") {
                let _ = metadata_field(v);
            }
            for b in ["multiattach", "force", "readonly", "bootable"] {
                if let Some(v) = m.get(b) {
                    let _ = python_bool(b, v);
                }
            }
        }
    }
    if let Ok(q) = std::str::from_utf8(data) {
        for (admin, version) in [(false, Microversion(3, 0)), (true, MAX)] {
            let ctx = Ctx {
                caller: Caller {
                    project_id: "p".into(),
                    user_id: "u".into(),
                    admin,
                },
                version,
                v2: false,
                base: "http://h/v3/p".into(),
                bookmark: "http://h/p".into(),
            };
            if let Ok(l) = list_query(&ctx, Some(q)) {
                assert!(l.limit <= 1000);
            }
        }
    }
});
