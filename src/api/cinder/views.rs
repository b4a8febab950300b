//! Cinder views: each resource's JSON for a negotiated microversion. One
//! struct per resource holds the superset of every version; a field a
//! version lacks is left out (`None`), so each field appears exactly from
//! the version that introduced it. The structs are also the schemas of the
//! OpenAPI document, and a field's doc comment names its microversion.

use super::Ctx;
use super::microversion as mv;
use crate::service::{VolumeDetail, VolumeType};
use crate::store::model::{Attachment, Snapshot, Tag, Volume, VolumeState};
use crate::store::{Transfer, TransferState};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// Admin metadata key: the Cinder attach phase shown over the store state.
pub const PHASE: &str = "cinder_phase";
pub const READONLY: &str = "readonly";
pub const ATTACHED_MODE: &str = "attached_mode";

/// Everything a volume view shows.
pub struct VolumeInfo {
    pub detail: VolumeDetail,
    pub tags: Vec<Tag>,
    pub admin_meta: BTreeMap<String, String>,
}

/// Cinder's name for a store state (and the attach phase over it).
pub fn cinder_status(v: &Volume, admin_meta: &BTreeMap<String, String>) -> &'static str {
    let phase = admin_meta.get(PHASE).map(String::as_str);
    match (v.state, phase) {
        (VolumeState::Reserved, Some("attaching")) => "attaching",
        (VolumeState::InUse, Some("attaching")) => "attaching",
        (VolumeState::InUse, Some("detaching")) => "detaching",
        (VolumeState::Restoring, _) => "reverting",
        (s, _) => s.as_str(),
    }
}

/// The store state a Cinder status filter means.
pub fn store_state(status: &str) -> String {
    match status {
        "reverting" => "restoring".into(),
        s => s.to_string(),
    }
}

fn ts_str(s: &str) -> String {
    // Cinder shows naive UTC with microseconds: 2014-05-27T11:17:42.318311.
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => t
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%dT%H:%M:%S%.6f")
            .to_string(),
        Err(_) => s.to_string(),
    }
}

// `deny_unknown_fields` on these Serialize-only structs closes their
// schemas (additionalProperties: false), so an answer with a field the
// document lacks fails validation.

/// A `self` or `bookmark` link.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub href: String,
    pub rel: String,
}

fn link_list(ctx: &Ctx, collection: &str, id: &str) -> Vec<Link> {
    vec![
        Link {
            href: format!("{}/{collection}/{id}", ctx.base),
            rel: "self".into(),
        },
        Link {
            href: format!("{}/{collection}/{id}", ctx.bookmark),
            rel: "bookmark".into(),
        },
    ]
}

fn to_json<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn meta_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| (t.key.clone(), t.value.clone().unwrap_or_default()))
        .collect()
}

pub fn metadata(tags: &[Tag]) -> Value {
    to_json(&meta_map(tags))
}

/// One attachment of a volume.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentView {
    pub server_id: String,
    pub attachment_id: String,
    pub attached_at: String,
    pub host_name: String,
    pub volume_id: String,
    pub device: String,
    /// The volume id, as Cinder shows it.
    pub id: String,
}

fn attachment(a: &Attachment, host: &str) -> AttachmentView {
    AttachmentView {
        server_id: a.server_id.clone(),
        attachment_id: a.id.clone(),
        attached_at: ts_str(&a.attached_at),
        host_name: host.to_string(),
        volume_id: a.volume_id.clone(),
        device: a.device.clone(),
        id: a.volume_id.clone(),
    }
}

/// `GET volumes`: a volume's id, name and links.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSummary {
    pub id: String,
    pub name: String,
    pub links: Vec<Link>,
}

pub fn volume_summary(ctx: &Ctx, v: &Volume) -> Value {
    to_json(&VolumeSummary {
        id: v.id.clone(),
        name: v.name.clone(),
        links: link_list(ctx, "volumes", &v.id),
    })
}

/// A volume's detail view: the superset of every microversion. A field
/// noted "Microversion 3.N and later" is absent before 3.N (and on v2);
/// one noted "Admin only" is shown to admins only.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeView {
    pub id: String,
    pub status: String,
    /// GiB.
    pub size: u64,
    pub availability_zone: String,
    pub created_at: String,
    pub updated_at: String,
    pub attachments: Vec<AttachmentView>,
    pub name: String,
    pub description: String,
    pub volume_type: String,
    #[schema(required = true)]
    pub snapshot_id: Option<String>,
    #[schema(required = true)]
    pub source_volid: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub links: Vec<Link>,
    pub user_id: String,
    /// "true" or "false", a string as in Cinder.
    pub bootable: String,
    pub encrypted: bool,
    /// Always null.
    #[schema(required = true)]
    pub replication_status: Option<String>,
    /// Always null.
    #[schema(required = true)]
    pub consistencygroup_id: Option<String>,
    pub multiattach: bool,
    #[serde(rename = "os-vol-tenant-attr:tenant_id")]
    pub tenant_id: String,
    /// Only when the volume was made from an image: the image's properties
    /// (Cinder's volume_image_metadata extension, every version).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub volume_image_metadata: Option<BTreeMap<String, String>>,
    /// Admin only. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration_status: Option<Option<String>>,
    /// Admin only.
    #[serde(
        rename = "os-vol-host-attr:host",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false)]
    pub host: Option<String>,
    /// Admin only. Always null.
    #[serde(
        rename = "os-vol-mig-status-attr:migstat",
        skip_serializing_if = "Option::is_none"
    )]
    pub migstat: Option<Option<String>>,
    /// Admin only. Always null.
    #[serde(
        rename = "os-vol-mig-status-attr:name_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub name_id: Option<Option<String>>,
    /// Microversion 3.13 and later. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<Option<String>>,
    /// Microversion 3.21 and later, admin only. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<Option<String>>,
    /// Microversion 3.48 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shared_targets: Option<bool>,
    /// Microversion 3.48 and later. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_uuid: Option<Option<String>>,
    /// Microversion 3.61 and later, admin only. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<Option<String>>,
    /// Microversion 3.63 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub volume_type_id: Option<String>,
    /// Microversion 3.65 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub consumes_quota: Option<bool>,
}

/// The detail view at the negotiated microversion.
pub fn volume_detail(ctx: &Ctx, zone: &str, i: &VolumeInfo) -> Value {
    let v = &i.detail.volume;
    // Cinder's host@backend#pool.
    let host = format!("blockd@{0}#{0}", v.backend);
    let host = host.as_str();
    let admin = ctx.caller.admin;
    let at = |m: mv::Microversion| ctx.at_least(m);
    let view = VolumeView {
        id: v.id.clone(),
        status: cinder_status(v, &i.admin_meta).into(),
        size: v.size_gib,
        availability_zone: zone.into(),
        created_at: ts_str(&v.created_at),
        updated_at: ts_str(&v.modified_at),
        attachments: i
            .detail
            .attachments
            .iter()
            .map(|a| attachment(a, host))
            .collect(),
        name: v.name.clone(),
        description: v.description.clone(),
        volume_type: v.volume_type.clone(),
        snapshot_id: v.snapshot_id.clone(),
        source_volid: v.source_volid.clone(),
        metadata: meta_map(&i.tags),
        links: link_list(ctx, "volumes", &v.id),
        user_id: v.user_id.clone(),
        bootable: (if v.bootable { "true" } else { "false" }).into(),
        encrypted: v.encrypted,
        replication_status: None,
        consistencygroup_id: None,
        multiattach: v.multiattach,
        tenant_id: v.project_id.clone(),
        volume_image_metadata: (!i.detail.image_metadata.is_empty())
            .then(|| i.detail.image_metadata.clone()),
        migration_status: admin.then_some(None),
        host: admin.then(|| host.to_string()),
        migstat: admin.then_some(None),
        name_id: admin.then_some(None),
        group_id: at(mv::GROUP_VOLUME).then_some(None),
        provider_id: (admin && at(mv::VOLUME_DETAIL_PROVIDER_ID)).then_some(None),
        shared_targets: at(mv::VOLUME_SHARED_TARGETS_AND_SERVICE_FIELDS).then_some(false),
        service_uuid: at(mv::VOLUME_SHARED_TARGETS_AND_SERVICE_FIELDS).then_some(None),
        cluster_name: (admin && at(mv::VOLUME_CLUSTER_NAME)).then_some(None),
        volume_type_id: at(mv::VOLUME_TYPE_ID_IN_VOLUME_DETAIL).then(|| v.volume_type_id.clone()),
        // 3.64 shows encryption_key_id only for encrypted volumes; none are.
        consumes_quota: at(mv::USE_QUOTA).then_some(true),
    };
    to_json(&view)
}

/// A snapshot: the superset of every microversion, as for volumes. The
/// summary list (`GET snapshots`) leaves out the two extended attributes.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotView {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub name: String,
    #[schema(required = true)]
    pub description: Option<String>,
    pub volume_id: String,
    pub status: String,
    /// GiB.
    pub size: u64,
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Copy progress, e.g. "40%". Detail views only.
    #[serde(
        rename = "os-extended-snapshot-attributes:progress",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false)]
    pub progress: Option<String>,
    /// Detail views only.
    #[serde(
        rename = "os-extended-snapshot-attributes:project_id",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(nullable = false)]
    pub project_id: Option<String>,
    /// Microversion 3.14 and later. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_snapshot_id: Option<Option<String>>,
    /// Microversion 3.41 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user_id: Option<String>,
    /// Microversion 3.65 and later.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub consumes_quota: Option<bool>,
}

pub fn snapshot_detail(ctx: &Ctx, s: &Snapshot, progress: Option<(u64, u64)>) -> Value {
    let meta = s
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}));
    let pct = match (s.status.as_str(), progress) {
        ("available", _) => "100%".to_string(),
        (_, Some((done, total))) if total > 0 => format!("{}%", done * 100 / total),
        _ => "0%".to_string(),
    };
    to_json(&SnapshotView {
        id: s.id.clone(),
        created_at: ts_str(&s.created_at),
        updated_at: ts_str(&s.updated_at),
        name: s.name.clone(),
        description: s.description.clone(),
        volume_id: s.volume_id.clone(),
        status: s.status.as_str().into(),
        size: s.size_gib,
        metadata: meta,
        progress: Some(pct),
        project_id: Some(s.project_id.clone()),
        group_snapshot_id: ctx.at_least(mv::GROUP_SNAPSHOTS).then_some(None),
        user_id: ctx
            .at_least(mv::SNAPSHOT_LIST_USER_ID)
            .then(|| s.user_id.clone()),
        consumes_quota: ctx.at_least(mv::USE_QUOTA).then_some(true),
    })
}

/// A volume type.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeTypeView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub is_public: bool,
    #[serde(rename = "os-volume-type-access:is_public")]
    pub access_is_public: bool,
    /// `provisioning:type` (thin or thick), `multiattach` ("<is> True")
    /// for multiattach types, and for a backend other than `file` its
    /// `volume_backend_name` with `free_capacity_gb` / `total_capacity_gb`.
    pub extra_specs: BTreeMap<String, String>,
    /// Admin only. Always null.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos_specs_id: Option<Option<String>>,
}

pub fn volume_type(ctx: &Ctx, t: &VolumeType, cap: Option<crate::backend::Capacity>) -> Value {
    let provisioning = match t.provisioning {
        crate::config::Provisioning::Sparse => "thin",
        crate::config::Provisioning::Full => "thick",
    };
    let mut specs = BTreeMap::new();
    specs.insert("provisioning:type".to_string(), provisioning.to_string());
    if t.multiattach {
        specs.insert("multiattach".to_string(), "<is> True".to_string());
    }
    if t.backend != "file" {
        specs.insert("volume_backend_name".to_string(), t.backend.clone());
    }
    if let Some(c) = cap {
        // Cinder's pool-stat names, as GiB strings like every extra spec.
        specs.insert("free_capacity_gb".to_string(), (c.free >> 30).to_string());
        specs.insert("total_capacity_gb".to_string(), (c.total >> 30).to_string());
    }
    to_json(&VolumeTypeView {
        id: t.id.clone(),
        name: t.name.clone(),
        description: t.description.clone(),
        is_public: true,
        access_is_public: true,
        extra_specs: specs,
        qos_specs_id: ctx.caller.admin.then_some(None),
    })
}

/// A list answer: `{key: items}`, `{key}_links` when the page is full,
/// and `count` when asked for.
pub fn list_body(
    ctx: &Ctx,
    key: &str,
    path: &str,
    items: Vec<Value>,
    pairs: &[(String, String)],
    next_marker: Option<&str>,
    count: Option<u64>,
) -> Value {
    let mut out = json!({ key: items });
    if let Some(l) = next_link(ctx, path, pairs, next_marker) {
        out[format!("{key}_links")] = l;
    }
    if let Some(c) = count {
        out["count"] = c.into();
    }
    out
}

/// `volumes_links` / `snapshots_links`: the next page starts after
/// `next_marker` (given only when this page is full).
pub fn next_link(
    ctx: &Ctx,
    path: &str,
    pairs: &[(String, String)],
    next_marker: Option<&str>,
) -> Option<Value> {
    let last = next_marker?;
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(k, _)| k != "marker") {
        q.append_pair(k, v);
    }
    q.append_pair("marker", last);
    Some(json!([{"href": format!("{}/{path}?{}", ctx.base, q.finish()), "rel": "next"}]))
}

/// A volume transfer under `collection` (`os-volume-transfer` or
/// `volume-transfers`). The summary (lists, accept) has id, name,
/// volume_id and links; the detail adds the rest.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferView {
    pub id: String,
    #[schema(required = true)]
    pub name: Option<String>,
    pub volume_id: String,
    /// Detail views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub created_at: Option<String>,
    /// Shown once, in the answer of the create.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub auth_key: Option<String>,
    /// Microversion 3.55 and later, detail views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub no_snapshots: Option<bool>,
    /// Microversion 3.57 and later, detail views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub source_project_id: Option<String>,
    /// Microversion 3.57 and later, detail views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_project_id: Option<Option<String>>,
    /// Microversion 3.57 and later, detail views only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub accepted: Option<bool>,
    pub links: Vec<Link>,
}

pub fn transfer(ctx: &Ctx, collection: &str, t: &Transfer, full: bool) -> Value {
    let history = full && ctx.at_least(mv::TRANSFER_WITH_HISTORY);
    to_json(&TransferView {
        id: t.id.clone(),
        name: t.name.clone(),
        volume_id: t.volume_id.clone(),
        created_at: full.then(|| t.created_at.clone()),
        auth_key: None,
        no_snapshots: (full && ctx.at_least(mv::TRANSFER_WITH_SNAPSHOTS)).then_some(t.no_snapshots),
        source_project_id: history.then(|| t.project_id.clone()),
        destination_project_id: history.then(|| t.destination_project_id.clone()),
        accepted: history.then_some(t.state == TransferState::Accepted),
        links: link_list(ctx, collection, &t.id),
    })
}
