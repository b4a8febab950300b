//! Listing a page must cost the same whatever the table size: compares a
//! 20-volume keyset page over 1k, 10k and 100k volumes, and a single show.

mod common;

use blockd::store::Store;
use blockd::store::model::*;
use criterion::{Criterion, criterion_group, criterion_main};

fn fill(n: usize) -> (tempfile::TempDir, Store, String) {
    let d = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let s = Store::open(&d.path().join("db")).expect("store");
    let ids = common::seed(&s, "p", n);
    let mid = ids[n / 2].clone();
    (d, s, mid)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("list_page");
    g.sample_size(30);
    for n in [1_000usize, 10_000, 100_000] {
        let started = std::time::Instant::now();
        let (_d, s, mid) = fill(n);
        eprintln!("seeded {n} volumes in {:?}", started.elapsed());
        g.bench_function(format!("marker_page_of_20_in_{n}"), |b| {
            b.iter(|| {
                s.list_volumes(&VolumeQuery {
                    project_id: Some("p".into()),
                    marker: Some(mid.clone()),
                    with_count: false,
                    ..Default::default()
                })
                .expect("page")
            })
        });
        g.bench_function(format!("show_in_{n}"), |b| {
            b.iter(|| s.get_volume(Some("p"), &mid).expect("show"))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
