//! The config file parser and its checks: any text loads or gives an
//! error naming the problem.
#![no_main]

use blockd::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text, "fuzz.toml") {
        let _ = c.versions();
        let _ = c.data_dir();
    }
});
