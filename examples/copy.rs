//! Copy one file with blockd's copy engine.
//! Usage: copy SRC DST [--no-manifest] [--engine auto|uring|fallback]
//!        [--direct-read] [--direct-write] [--no-direct]

use blockd::copy::{CancelToken, CopyOptions, EnginePreference, Progress, copy};
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!(
            "usage: copy SRC DST [--no-manifest] [--engine E] [--direct-read] [--direct-write] [--no-direct]"
        );
        std::process::exit(2);
    }
    let mut o = CopyOptions::default();
    let mut i = 3;
    while i < args.len() {
        match args[i].as_str() {
            "--no-manifest" => o.manifest = false,
            "--direct-read" => o.direct_read = true,
            "--direct-write" => o.direct_write = true,
            "--no-direct" => (o.direct_read, o.direct_write) = (false, false),
            "--engine" => {
                i += 1;
                o.engine = match args.get(i).map(String::as_str) {
                    Some("uring") => EnginePreference::Uring,
                    Some("fallback") => EnginePreference::Fallback,
                    _ => EnginePreference::Auto,
                };
            }
            a => {
                eprintln!("unknown flag {a}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    let t = Instant::now();
    match copy(
        Path::new(&args[1]),
        Path::new(&args[2]),
        &o,
        &Progress::new(),
        &CancelToken::new(),
    ) {
        Ok(r) => {
            let secs = t.elapsed().as_secs_f64();
            let sum = r
                .manifest
                .as_ref()
                .map(|m| m.checksum_hex())
                .unwrap_or_default();
            println!(
                "{:?} copied={} secs={secs:.3} MB/s={:.0} manifest={sum}",
                r.engine,
                r.bytes_copied,
                r.bytes_copied as f64 / secs / 1e6
            );
        }
        Err(e) => {
            eprintln!("copy failed ({:?}): {e}", e.kind());
            std::process::exit(1);
        }
    }
}
