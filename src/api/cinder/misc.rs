//! Cinder discovery and small resources: the versions documents, volume
//! types, quota sets, limits, availability zones and extensions.

use super::errors::{CResult, CinderError};
use super::microversion as mv;
use super::views;
use super::{CinderState, Ctx, body_object};
use crate::api::{RawBody, query_pairs};
use crate::config::QuotaLimits;
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

fn version_doc(host: &str, v2: bool) -> Value {
    let (id, status, version, min, updated, major) = if v2 {
        (
            "v2.0",
            "DEPRECATED",
            String::new(),
            String::new(),
            "2017-02-25T12:00:00Z",
            2,
        )
    } else {
        (
            "v3.0",
            "CURRENT",
            mv::MAX.to_string(),
            mv::MIN.to_string(),
            "2023-09-06T00:00:00Z",
            3,
        )
    };
    json!({
        "id": id,
        "status": status,
        "version": version,
        "min_version": min,
        "updated": updated,
        "links": [
            {"href": "https://docs.openstack.org/", "type": "text/html", "rel": "describedby"},
            {"href": format!("http://{host}/v{major}/"), "rel": "self"},
        ],
        "media-types": [{
            "base": "application/json",
            "type": format!("application/vnd.openstack.volume+json;version={major}"),
        }],
    })
}

/// `GET /` (300, every version) or `GET /v3[/]`, `/v2[/]` (200, one).
pub fn versions_answer(host: &str, path: &str) -> Response {
    let p = path.trim_end_matches('/');
    match p {
        "/v3" => Json(json!({"versions": [version_doc(host, false)]})).into_response(),
        "/v2" => Json(json!({"versions": [version_doc(host, true)]})).into_response(),
        _ => (
            StatusCode::MULTIPLE_CHOICES,
            Json(json!({"versions": [version_doc(host, true), version_doc(host, false)]})),
        )
            .into_response(),
    }
}

pub async fn list_types(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
) -> Response {
    let types: Vec<Value> = st
        .svc
        .volume_types()
        .iter()
        .map(|t| views::volume_type(&ctx, t, st.svc.type_capacity(t)))
        .collect();
    Json(json!({ "volume_types": types })).into_response()
}

pub async fn default_type(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
) -> Response {
    let t = st.svc.default_volume_type();
    Json(json!({"volume_type": views::volume_type(&ctx, t, st.svc.type_capacity(t))}))
        .into_response()
}

pub async fn show_type(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    match st.svc.volume_type(&id) {
        Some(t) => Ok(Json(
            json!({"volume_type": views::volume_type(&ctx, t, st.svc.type_capacity(t))}),
        )
        .into_response()),
        None => Err(CinderError::not_found(format!(
            "Volume type {id} could not be found."
        ))),
    }
}

const RESOURCES: [&str; 4] = ["volumes", "snapshots", "gigabytes", "per_volume_gigabytes"];

fn limit_of(l: &QuotaLimits, r: &str) -> u64 {
    match r {
        "volumes" => l.volumes,
        "snapshots" => l.snapshots,
        "gigabytes" => l.gigabytes,
        _ => l.per_volume_gigabytes,
    }
}

/// The quota set of a project; resources blockd does not have (backups,
/// groups) show as unlimited and unused.
fn quota_set(
    project: &str,
    l: &QuotaLimits,
    usage: Option<&crate::store::model::Usage>,
    types: &[(String, Option<u64>)],
) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("id".into(), project.into());
    let entry = |limit: i64, in_use: u64| match usage {
        Some(_) => json!({"limit": limit, "in_use": in_use, "reserved": 0, "allocated": 0}),
        None => json!(limit),
    };
    for r in RESOURCES {
        let in_use = usage
            .map(|u| match r {
                "volumes" => u.volumes,
                "snapshots" => u.snapshots,
                "gigabytes" => u.gigabytes,
                _ => 0,
            })
            .unwrap_or(0);
        m.insert(r.into(), entry(limit_of(l, r) as i64, in_use));
    }
    for r in ["backups", "backup_gigabytes", "groups"] {
        m.insert(r.into(), entry(-1, 0));
    }
    for (t, free_gib) in types {
        for r in ["volumes", "snapshots", "gigabytes"] {
            // A type on an LVM volume group can hold no more than its free space.
            let limit = match (r, free_gib) {
                ("gigabytes", Some(f)) => *f as i64,
                _ => -1,
            };
            m.insert(format!("{r}_{t}"), entry(limit, 0));
        }
    }
    json!({ "quota_set": Value::Object(m) })
}

fn may_see_project(ctx: &Ctx, project: &str) -> CResult<()> {
    if ctx.caller.admin || ctx.caller.project_id == project {
        Ok(())
    } else {
        Err(CinderError::forbidden(
            "Policy doesn't allow volume_extension:quotas:show to be performed.",
        ))
    }
}

/// Each type's name and, for a type on an LVM volume group, its free GiB.
fn type_names(st: &CinderState) -> Vec<(String, Option<u64>)> {
    st.svc
        .volume_types()
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                st.svc.type_capacity(t).map(|c| c.free >> 30),
            )
        })
        .collect()
}

pub async fn show_quota(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(project): Path<String>,
    RawQuery(raw): RawQuery,
) -> CResult<Response> {
    may_see_project(&ctx, &project)?;
    let pairs = query_pairs(raw.as_deref(), 10).map_err(CinderError::invalid_input)?;
    let usage = match pairs.iter().find(|(k, _)| k == "usage") {
        Some((_, v)) => crate::api::query_bool("usage", v)
            .map_err(CinderError::invalid_input)?
            .unwrap_or(false),
        None => false,
    };
    let limits = st.svc.quota_limits(&project);
    let u = if usage {
        Some(
            st.svc
                .store()
                .usage(&project)
                .map_err(crate::service::ServiceError::from)?,
        )
    } else {
        None
    };
    Ok(Json(quota_set(&project, &limits, u.as_ref(), &type_names(&st))).into_response())
}

pub async fn default_quota(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(project): Path<String>,
) -> CResult<Response> {
    may_see_project(&ctx, &project)?;
    let l = st.svc.default_quota_limits();
    Ok(Json(quota_set(&project, &l, None, &type_names(&st))).into_response())
}

pub async fn update_quota(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(project): Path<String>,
    body: super::volumes::Body,
) -> CResult<Response> {
    let body: RawBody = super::volumes::raw(body)?;
    if !ctx.caller.admin {
        return Err(CinderError::forbidden(
            "Policy doesn't allow volume_extension:quotas:update to be performed.",
        ));
    }
    let m = body_object(&body.0, "quota_set")?;
    let mut changes: Vec<(&str, u64)> = Vec::new();
    for (k, v) in &m {
        if k == "id" || k == "tenant_id" {
            continue;
        }
        let Some(r) = RESOURCES.iter().find(|r| **r == k.as_str()) else {
            return Err(CinderError::bad_request(format!(
                "Bad key(s) in quota set: {k}"
            )));
        };
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse::<u64>().ok(),
            _ => None,
        }
        .ok_or_else(|| {
            CinderError::invalid_input(format!(
                "Quota value for {k} must be an integer of 0 or more (blockd has no unlimited quota)"
            ))
        })?;
        changes.push((r, n));
    }
    let l = st.svc.set_project_quota(&ctx.caller, &project, &changes)?;
    Ok(Json(quota_set(&project, &l, None, &type_names(&st))).into_response())
}

pub async fn limits(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
) -> CResult<Response> {
    let q = st.svc.quota(&ctx.caller)?;
    Ok(Json(json!({"limits": {
        "rate": [],
        "absolute": {
            "maxTotalVolumes": q.limits.volumes,
            "maxTotalSnapshots": q.limits.snapshots,
            "maxTotalVolumeGigabytes": q.limits.gigabytes,
            "maxTotalBackups": -1,
            "maxTotalBackupGigabytes": -1,
            "totalVolumesUsed": q.usage.volumes,
            "totalGigabytesUsed": q.usage.gigabytes,
            "totalSnapshotsUsed": q.usage.snapshots,
            "totalBackupsUsed": 0,
            "totalBackupGigabytesUsed": 0,
        }
    }}))
    .into_response())
}

pub async fn availability_zones(State(st): State<Arc<CinderState>>) -> Response {
    Json(json!({"availabilityZoneInfo": [
        {"zoneName": st.zone, "zoneState": {"available": true}}
    ]}))
    .into_response()
}

pub async fn extensions() -> Response {
    let ext = |alias: &str, name: &str, description: &str| {
        json!({
            "alias": alias,
            "name": name,
            "description": description,
            "links": [],
            "updated": "2011-11-03T00:00:00+00:00",
        })
    };
    Json(json!({"extensions": [
        ext("os-admin-actions", "AdminActions", "Enable admin actions."),
        ext("os-availability-zone", "AvailabilityZones", "Describe Availability Zones."),
        ext("os-extended-snapshot-attributes", "ExtendedSnapshotAttributes", "Extended SnapshotAttributes support."),
        ext("os-quota-sets", "Quotas", "Quota management support."),
        ext("os-types-manage", "TypesManage", "Types manage support."),
        ext("os-vol-tenant-attr", "VolumeTenantAttribute", "Expose the internal project_id as an attribute of a volume."),
        ext("os-vol-host-attr", "VolumeHostAttribute", "Expose host as an attribute of a volume."),
        ext("os-volume-actions", "VolumeActions", "Enable volume actions."),
        ext("os-volume-transfer", "VolumeTransfer", "Volume transfer management support."),
        ext("os-volume-type-access", "VolumeTypeAccess", "Volume type access support."),
    ]}))
    .into_response()
}
