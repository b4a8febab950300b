//! The SCP wire format, one struct per published schema. A newer version
//! reuses the older struct and adds only what it changed, so every
//! response carries exactly its version's fields. Every field is always
//! sent (null when unset), so the schemas list them all as required.

use super::version::ApiVersion;
use crate::service::{Quota, VolumeDetail, VolumeType};
use crate::store::model::{Attachment, Snapshot};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize, utoipa::ToSchema)]
pub struct ServerView {
    pub id: String,
    pub device: String,
    pub attached_at: String,
}

/// VolumeShowResponse (1.0, 1.1).
#[derive(Serialize, utoipa::ToSchema)]
pub struct VolumeShow {
    pub bootable: bool,
    pub created_at: String,
    pub encrypted: bool,
    pub id: String,
    #[schema(required = true)]
    pub modified_at: Option<String>,
    pub multiattach: bool,
    #[schema(required = true)]
    pub name: Option<String>,
    pub servers: Vec<ServerView>,
    pub size: u64,
    #[schema(required = true)]
    pub snapshot_id: Option<String>,
    pub state: String,
    pub user_id: String,
    #[schema(required = true)]
    pub volume_image_metadata: Option<Value>,
    pub volume_type: String,
    pub volume_type_id: String,
}

/// VolumeShowResponseV1Dot2 (1.2, 1.3): adds the QoS limits.
#[derive(Serialize, utoipa::ToSchema)]
pub struct VolumeShowV1Dot2 {
    #[serde(flatten)]
    pub base: VolumeShow,
    #[schema(required = true)]
    pub max_iops: Option<u32>,
    #[schema(required = true)]
    pub max_throughput: Option<u32>,
}

fn base(d: &VolumeDetail) -> VolumeShow {
    let v = &d.volume;
    VolumeShow {
        bootable: v.bootable,
        created_at: v.created_at.clone(),
        encrypted: v.encrypted,
        id: v.id.clone(),
        modified_at: Some(v.modified_at.clone()),
        multiattach: v.multiattach,
        name: Some(v.name.clone()),
        servers: d
            .attachments
            .iter()
            .map(|a| ServerView {
                id: a.server_id.clone(),
                device: a.device.clone(),
                attached_at: a.attached_at.clone(),
            })
            .collect(),
        size: v.size_gib,
        snapshot_id: v.snapshot_id.clone(),
        state: v.state.as_str().to_string(),
        user_id: v.user_id.clone(),
        volume_image_metadata: image_metadata(&d.image_metadata),
        volume_type: v.volume_type.clone(),
        volume_type_id: v.volume_type_id.clone(),
    }
}

/// The image a volume came from, typed as the SCP examples show it: sizes
/// as numbers, flags as booleans, the rest as strings. Null for a volume
/// not made from an image.
fn image_metadata(m: &std::collections::BTreeMap<String, String>) -> Option<Value> {
    if m.is_empty() {
        return None;
    }
    let typed = m
        .iter()
        .map(|(k, v)| {
            let val = match (k.as_str(), v.as_str()) {
                ("min_disk" | "min_ram" | "size" | "virtual_size", n) => n
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or_else(|_| Value::from(n)),
                (_, "true" | "True") => Value::Bool(true),
                (_, "false" | "False") => Value::Bool(false),
                (_, s) => Value::from(s),
            };
            (k.clone(), val)
        })
        .collect();
    Some(Value::Object(typed))
}

pub fn volume(d: &VolumeDetail, ver: ApiVersion) -> Value {
    let b = base(d);
    let r = if ver.has_qos() {
        serde_json::to_value(VolumeShowV1Dot2 {
            base: b,
            max_iops: d.volume.max_iops,
            max_throughput: d.volume.max_throughput,
        })
    } else {
        serde_json::to_value(b)
    };
    r.unwrap_or(Value::Null)
}

pub fn volume_list(items: &[VolumeDetail], count: Option<u64>, ver: ApiVersion) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(c) = count {
        m.insert("count".into(), Value::from(c));
    }
    m.insert(
        "volumes".into(),
        Value::Array(items.iter().map(|d| volume(d, ver)).collect()),
    );
    Value::Object(m)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ExtraSpecs {
    /// Cinder's spelling, which this API inherited.
    pub multiattach: String,
    /// The backend, for types not on the built-in file backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_backend_name: Option<String>,
    /// Free and total GiB of a backend that allocates up front (LVM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_capacity_gb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_capacity_gb: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VolumeTypeView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub extra_specs: ExtraSpecs,
}

pub fn volume_type(t: &VolumeType, cap: Option<crate::backend::Capacity>) -> VolumeTypeView {
    VolumeTypeView {
        id: t.id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        extra_specs: ExtraSpecs {
            multiattach: if t.multiattach {
                "<is> True"
            } else {
                "<is> False"
            }
            .to_string(),
            volume_backend_name: (t.backend != "file").then(|| t.backend.clone()),
            free_capacity_gb: cap.map(|c| c.free >> 30),
            total_capacity_gb: cap.map(|c| c.total >> 30),
        },
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaItem {
    pub in_use: u64,
    pub limit: u64,
    pub reserved: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct QuotaSet {
    pub id: String,
    pub per_volume_size: QuotaItem,
    pub snapshots: QuotaItem,
    /// Gigabytes in use by the project's volumes.
    pub usages: QuotaItem,
    pub volumes: QuotaItem,
}

pub fn quota_set(project: &str, q: &Quota) -> QuotaSet {
    let item = |in_use, limit| QuotaItem {
        in_use,
        limit,
        reserved: 0,
    };
    QuotaSet {
        id: project.to_string(),
        per_volume_size: item(0, q.limits.per_volume_gigabytes),
        snapshots: item(q.usage.snapshots, q.limits.snapshots),
        usages: item(q.usage.gigabytes, q.limits.gigabytes),
        volumes: item(q.usage.volumes, q.limits.volumes),
    }
}

/// The answer to `POST /v1/volumes/{id}/servers`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttachView {
    pub delete_on_termination: bool,
    pub device: String,
    pub server_id: String,
    pub volume_id: String,
}

pub fn attach(a: &Attachment) -> AttachView {
    AttachView {
        delete_on_termination: a.delete_on_termination,
        device: a.device.clone(),
        server_id: a.server_id.clone(),
        volume_id: a.volume_id.clone(),
    }
}

/// A server's view of one attached volume; `id` is the volume id.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ServerVolume {
    pub id: String,
    pub server_id: String,
    pub volume_id: String,
    pub device: String,
    pub delete_on_termination: bool,
}

pub fn server_volume(a: &Attachment) -> ServerVolume {
    ServerVolume {
        id: a.volume_id.clone(),
        server_id: a.server_id.clone(),
        volume_id: a.volume_id.clone(),
        device: a.device.clone(),
        delete_on_termination: a.delete_on_termination,
    }
}

/// SnapshotDetailResponse. Metadata goes back as the client sent it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct SnapshotDetail {
    pub created_at: String,
    pub description: Option<String>,
    pub id: String,
    pub metadata: Option<Value>,
    pub name: Option<String>,
    pub size: u64,
    pub status: Option<String>,
    pub updated_at: Option<String>,
    pub user_id: Option<String>,
    pub volume_id: String,
}

pub fn snapshot(s: &Snapshot) -> SnapshotDetail {
    SnapshotDetail {
        created_at: s.created_at.clone(),
        description: s.description.clone(),
        id: s.id.clone(),
        metadata: s
            .metadata
            .as_deref()
            .map(|m| serde_json::from_str(m).unwrap_or_else(|_| Value::String(m.to_string()))),
        name: Some(s.name.clone()),
        size: s.size_gib,
        status: Some(s.status.as_str().to_string()),
        updated_at: Some(s.updated_at.clone()),
        user_id: Some(s.user_id.clone()),
        volume_id: s.volume_id.clone(),
    }
}

pub fn snapshot_list(items: &[Snapshot], count: Option<u64>) -> Value {
    let mut m = serde_json::Map::new();
    if let Some(c) = count {
        m.insert("count".into(), Value::from(c));
    }
    m.insert(
        "snapshots".into(),
        Value::Array(
            items
                .iter()
                .map(|s| serde_json::to_value(snapshot(s)).unwrap_or(Value::Null))
                .collect(),
        ),
    );
    Value::Object(m)
}
