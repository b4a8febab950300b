//! Copy throughput: dense and 25%-sparse 64 MiB sources, io_uring vs
//! fallback, manifest on and off.

use blockd::copy::{CancelToken, CopyOptions, EnginePreference, Progress, copy};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

const MIB: u64 = 1 << 20;

fn make(path: &Path, sparse: bool) -> u64 {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 * MIB).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut data = 0;
    for i in 0..64 {
        if sparse && i % 4 != 0 {
            continue;
        }
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all_at(&buf, i * MIB).unwrap();
        data += MIB;
    }
    f.sync_all().unwrap();
    data
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mut g = c.benchmark_group("copy");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (shape, sparse) in [("dense", false), ("sparse25", true)] {
        let src = dir.path().join(shape);
        let data = make(&src, sparse);
        g.throughput(Throughput::Bytes(data));
        for (ename, engine) in [
            ("uring", EnginePreference::Uring),
            ("fallback", EnginePreference::Fallback),
        ] {
            for manifest in [true, false] {
                let o = CopyOptions {
                    engine,
                    manifest,
                    reflink: false,
                    ..CopyOptions::default()
                };
                let dst = dir.path().join("dst");
                let id = format!("{shape}/{ename}/manifest={manifest}");
                g.bench_function(id, |b| {
                    b.iter(|| copy(&src, &dst, &o, &Progress::new(), &CancelToken::new()).unwrap())
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
