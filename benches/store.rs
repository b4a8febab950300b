//! Listing a page must cost the same whatever the table size: compares a
//! 20-volume keyset page over 1k and 10k volumes, and a single show.

use blockd::store::model::*;
use blockd::store::{QuotaCheck, Store};
use criterion::{Criterion, criterion_group, criterion_main};

fn fill(n: usize) -> (tempfile::TempDir, Store, String) {
    let d = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    let s = Store::open(&d.path().join("db")).expect("store");
    let q = QuotaCheck {
        volumes_limit: u64::MAX,
        gigabytes_limit: u64::MAX,
        add_volumes: 1,
        add_gigabytes: 8,
    };
    let mut last = String::new();
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = format!(
            "2026-01-01T00:{:02}:{:02}.{:03}Z",
            (i / 60000) % 60,
            (i / 1000) % 60,
            i % 1000
        );
        let v = Volume {
            id: id.clone(),
            project_id: "p".into(),
            user_id: "u".into(),
            name: format!("vol{}", i % 97),
            description: String::new(),
            size_gib: 8,
            volume_type_id: "t".into(),
            volume_type: "SSD".into(),
            state: VolumeState::Available,
            bootable: false,
            encrypted: false,
            multiattach: false,
            snapshot_id: None,
            source_volid: None,
            max_iops: None,
            max_throughput: None,
            backend: "file".into(),
            error_reason: None,
            created_at: ts.clone(),
            modified_at: ts.clone(),
        };
        let j = Job {
            id: uuid::Uuid::new_v4().to_string(),
            kind: JobKind::CreateVolume,
            volume_id: Some(id.clone()),
            project_id: "p".into(),
            state: JobState::Succeeded,
            params: "{}".into(),
            error: None,
            created_at: ts.clone(),
            updated_at: ts,
        };
        s.create_volume(&v, &[], &j, &q).expect("insert");
        if i == n / 2 {
            last = id;
        }
    }
    (d, s, last)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("list_page");
    g.sample_size(30);
    for n in [1_000usize, 10_000] {
        let (_d, s, mid) = fill(n);
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
