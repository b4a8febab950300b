//! What the benches share: filling a store with many volumes quickly, in
//! one transaction through the store's bulk import.
#![allow(dead_code)]

use blockd::store::Store;
use blockd::store::model::*;

/// Inserts `n` available 8 GiB volumes of `project` and returns their ids
/// in the order they were created (one created_at millisecond apart).
pub fn seed(s: &Store, project: &str, n: usize) -> Vec<String> {
    let mut items = Vec::with_capacity(n);
    for i in 0..n {
        let id = uuid::Uuid::new_v4().to_string();
        let ts = format!(
            "2026-01-01T{:02}:{:02}:{:02}.{:03}Z",
            (i / 3_600_000) % 24,
            (i / 60_000) % 60,
            (i / 1000) % 60,
            i % 1000
        );
        let v = Volume {
            id: id.clone(),
            project_id: project.into(),
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
            volume_id: Some(id),
            project_id: project.into(),
            state: JobState::Succeeded,
            params: "{}".into(),
            error: None,
            created_at: ts.clone(),
            updated_at: ts,
        };
        items.push((v, j));
    }
    s.import_volumes(&items).expect("bulk insert");
    items.into_iter().map(|(v, _)| v.id).collect()
}
