//! Cinder views: each resource's JSON for a negotiated microversion. A
//! newer version starts from the older view and adds its own fields, as
//! Cinder's view builders do, so each field appears exactly from the
//! version that introduced it.

use super::Ctx;
use super::microversion as mv;
use crate::service::{VolumeDetail, VolumeType};
use crate::store::model::{Attachment, Snapshot, Tag, Volume, VolumeState};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

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

fn ts(s: &str) -> Value {
    // Cinder shows naive UTC with microseconds: 2014-05-27T11:17:42.318311.
    match chrono::DateTime::parse_from_rfc3339(s) {
        Ok(t) => Value::from(
            t.with_timezone(&chrono::Utc)
                .format("%Y-%m-%dT%H:%M:%S%.6f")
                .to_string(),
        ),
        Err(_) => Value::from(s),
    }
}

fn opt_str(s: &str) -> Value {
    Value::from(s)
}

pub fn links(ctx: &Ctx, collection: &str, id: &str) -> Value {
    json!([
        {"href": format!("{}/{collection}/{id}", ctx.base), "rel": "self"},
        {"href": format!("{}/{collection}/{id}", ctx.bookmark), "rel": "bookmark"},
    ])
}

pub fn metadata(tags: &[Tag]) -> Value {
    let m: Map<String, Value> = tags
        .iter()
        .map(|t| {
            (
                t.key.clone(),
                Value::from(t.value.clone().unwrap_or_default()),
            )
        })
        .collect();
    Value::Object(m)
}

fn attachment(a: &Attachment, host: &str) -> Value {
    json!({
        "server_id": a.server_id,
        "attachment_id": a.id,
        "attached_at": ts(&a.attached_at),
        "host_name": host,
        "volume_id": a.volume_id,
        "device": a.device,
        "id": a.volume_id,
    })
}

/// `GET volumes`: id, name and links.
pub fn volume_summary(ctx: &Ctx, v: &Volume) -> Value {
    json!({"id": v.id, "name": opt_str(&v.name), "links": links(ctx, "volumes", &v.id)})
}

/// The 3.0 (and v2) detail view.
fn volume_detail_base(ctx: &Ctx, zone: &str, i: &VolumeInfo) -> Map<String, Value> {
    let v = &i.detail.volume;
    let host = "blockd@file#file";
    let mut m = Map::new();
    let mut put = |k: &str, val: Value| {
        m.insert(k.to_string(), val);
    };
    put("id", v.id.clone().into());
    put("status", cinder_status(v, &i.admin_meta).into());
    put("size", v.size_gib.into());
    put("availability_zone", zone.into());
    put("created_at", ts(&v.created_at));
    put("updated_at", ts(&v.modified_at));
    put(
        "attachments",
        Value::Array(
            i.detail
                .attachments
                .iter()
                .map(|a| attachment(a, host))
                .collect(),
        ),
    );
    put("name", opt_str(&v.name));
    put("description", opt_str(&v.description));
    put("volume_type", v.volume_type.clone().into());
    put("snapshot_id", json!(v.snapshot_id));
    put("source_volid", json!(v.source_volid));
    put("metadata", metadata(&i.tags));
    put("links", links(ctx, "volumes", &v.id));
    put("user_id", v.user_id.clone().into());
    put(
        "bootable",
        (if v.bootable { "true" } else { "false" }).into(),
    );
    put("encrypted", v.encrypted.into());
    put("replication_status", Value::Null);
    put("consistencygroup_id", Value::Null);
    put("multiattach", v.multiattach.into());
    put("os-vol-tenant-attr:tenant_id", v.project_id.clone().into());
    if ctx.caller.admin {
        put("migration_status", Value::Null);
        put("os-vol-host-attr:host", host.into());
        put("os-vol-mig-status-attr:migstat", Value::Null);
        put("os-vol-mig-status-attr:name_id", Value::Null);
    }
    m
}

/// The detail view at the negotiated microversion.
pub fn volume_detail(ctx: &Ctx, zone: &str, i: &VolumeInfo) -> Value {
    let mut m = volume_detail_base(ctx, zone, i);
    let v = &i.detail.volume;
    if ctx.at_least(mv::GROUP_VOLUME) {
        m.insert("group_id".into(), Value::Null);
    }
    if ctx.caller.admin && ctx.at_least(mv::VOLUME_DETAIL_PROVIDER_ID) {
        m.insert("provider_id".into(), Value::Null);
    }
    if ctx.at_least(mv::VOLUME_SHARED_TARGETS_AND_SERVICE_FIELDS) {
        m.insert("shared_targets".into(), false.into());
        m.insert("service_uuid".into(), Value::Null);
    }
    if ctx.caller.admin && ctx.at_least(mv::VOLUME_CLUSTER_NAME) {
        m.insert("cluster_name".into(), Value::Null);
    }
    if ctx.at_least(mv::VOLUME_TYPE_ID_IN_VOLUME_DETAIL) {
        m.insert("volume_type_id".into(), v.volume_type_id.clone().into());
    }
    // 3.64 shows encryption_key_id only for encrypted volumes; none are.
    if ctx.at_least(mv::USE_QUOTA) {
        m.insert("consumes_quota".into(), true.into());
    }
    Value::Object(m)
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
    let mut m = Map::new();
    m.insert("id".into(), s.id.clone().into());
    m.insert("created_at".into(), ts(&s.created_at));
    m.insert("updated_at".into(), ts(&s.updated_at));
    m.insert("name".into(), opt_str(&s.name));
    m.insert("description".into(), json!(s.description));
    m.insert("volume_id".into(), s.volume_id.clone().into());
    m.insert("status".into(), s.status.as_str().into());
    m.insert("size".into(), s.size_gib.into());
    m.insert("metadata".into(), meta);
    m.insert(
        "os-extended-snapshot-attributes:progress".into(),
        pct.into(),
    );
    m.insert(
        "os-extended-snapshot-attributes:project_id".into(),
        s.project_id.clone().into(),
    );
    if ctx.at_least(mv::GROUP_SNAPSHOTS) {
        m.insert("group_snapshot_id".into(), Value::Null);
    }
    if ctx.at_least(mv::SNAPSHOT_LIST_USER_ID) {
        m.insert("user_id".into(), s.user_id.clone().into());
    }
    if ctx.at_least(mv::USE_QUOTA) {
        m.insert("consumes_quota".into(), true.into());
    }
    Value::Object(m)
}

pub fn volume_type(ctx: &Ctx, t: &VolumeType, cap: Option<crate::backend::Capacity>) -> Value {
    let provisioning = match t.provisioning {
        crate::config::Provisioning::Sparse => "thin",
        crate::config::Provisioning::Full => "thick",
    };
    let mut specs = json!({"provisioning:type": provisioning});
    if t.multiattach {
        specs["multiattach"] = "<is> True".into();
    }
    if t.backend != "file" {
        specs["volume_backend_name"] = t.backend.clone().into();
    }
    if let Some(c) = cap {
        // Cinder's pool-stat names, as GiB strings like every extra spec.
        specs["free_capacity_gb"] = (c.free >> 30).to_string().into();
        specs["total_capacity_gb"] = (c.total >> 30).to_string().into();
    }
    let mut m = json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "is_public": true,
        "os-volume-type-access:is_public": true,
        "extra_specs": specs,
    });
    if ctx.caller.admin {
        m["qos_specs_id"] = Value::Null;
    }
    m
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
