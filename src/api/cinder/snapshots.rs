//! Cinder snapshot routes: create with Cinder's force rules (from 3.66 an
//! in-use volume needs no force), list and detail, show, update, delete,
//! and snapshot metadata.

use super::errors::{CResult, CinderError};
use super::microversion as mv;
use super::views;
use super::volumes::{Body, list_caller, list_query, meta_item, metadata_field, raw};
use super::{CinderState, Ctx, body_object, json_body, python_bool};
use crate::service::{CreateSnapshot, ErrorKind, ServiceError};
use crate::store::model::{Snapshot, SnapshotQuery, Tag, VolumeState};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Snapshot state errors read "Invalid snapshot", as Cinder's do.
fn snap_err(e: ServiceError) -> CinderError {
    match e.kind() {
        ErrorKind::Conflict => CinderError::bad_request(format!("Invalid snapshot: {e}")),
        _ => e.into(),
    }
}

fn detail(st: &CinderState, ctx: &Ctx, s: &Snapshot) -> Value {
    let progress = st.svc.snapshot_progress(&ctx.caller, &s.id).ok().flatten();
    views::snapshot_detail(ctx, s, progress)
}

fn summary(st: &CinderState, ctx: &Ctx, s: &Snapshot) -> Value {
    let mut v = detail(st, ctx, s);
    if let Some(m) = v.as_object_mut() {
        m.remove("os-extended-snapshot-attributes:progress");
        m.remove("os-extended-snapshot-attributes:project_id");
    }
    v
}

fn text(m: &Map<String, Value>, keys: &[&str]) -> CResult<Option<String>> {
    for k in keys {
        match m.get(*k) {
            None => continue,
            Some(Value::Null) => return Ok(Some(String::new())),
            Some(Value::String(s)) if s.chars().count() <= 255 => return Ok(Some(s.clone())),
            Some(Value::Number(n)) => return Ok(Some(n.to_string())),
            Some(_) => {
                return Err(CinderError::invalid_input(format!(
                    "{k} must be a string of at most 255 characters"
                )));
            }
        }
    }
    Ok(None)
}

fn tags_json(tags: &[Tag]) -> String {
    views::metadata(tags).to_string()
}

pub async fn create(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    body: Body,
) -> CResult<Response> {
    let body = raw(body)?;
    let m = body_object(&body.0, "snapshot")?;
    let volume_id = match m.get("volume_id") {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        _ => {
            return Err(CinderError::bad_request(
                "Invalid input received: 'volume_id' must be specified",
            ));
        }
    };
    let name = text(&m, &["name", "display_name"])?.unwrap_or_default();
    let description = text(&m, &["description", "display_description"])?;
    let force = match m.get("force") {
        None | Some(Value::Null) => None,
        Some(v) => Some(python_bool("force", v)?),
    };
    if ctx.at_least(mv::SNAPSHOT_IN_USE) && force == Some(false) {
        return Err(CinderError::bad_request(format!(
            "Since microversion {} the 'force' flag is invalid for a value of False; leave it out",
            mv::SNAPSHOT_IN_USE
        )));
    }
    let metadata = match m.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v) => Some(tags_json(&metadata_field(v)?)),
    };
    let v = st.svc.get_volume(&ctx.caller, &volume_id)?;
    let force = force.unwrap_or(false) || ctx.at_least(mv::SNAPSHOT_IN_USE);
    if v.volume.state == VolumeState::InUse && !force {
        return Err(CinderError::invalid_volume(format!(
            "Volume {volume_id} status must be available, but current status is: in-use; \
             pass force=True to snapshot an attached volume"
        )));
    }
    let s = st
        .svc
        .create_snapshot(
            &ctx.caller,
            CreateSnapshot {
                volume_id,
                name,
                description,
                force,
                metadata,
            },
        )
        .map_err(|e| match e.kind() {
            ErrorKind::Conflict => CinderError::invalid_volume(&e),
            _ => e.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"snapshot": detail(&st, &ctx, &s)})),
    )
        .into_response())
}

async fn list(st: &CinderState, ctx: &Ctx, raw_q: Option<&str>, full: bool) -> CResult<Response> {
    let q = list_query(ctx, raw_q)?;
    let get = |k: &str| q.pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let caller = list_caller(ctx, &q);
    let page = st.svc.list_snapshots(
        &caller,
        SnapshotQuery {
            project_id: None,
            volume_id: get("volume_id"),
            name: get("name"),
            status: get("status"),
            sort: q.sort.clone(),
            limit: q.limit,
            offset: q.offset,
            marker: q.marker.clone(),
            with_count: q.with_count,
        },
    )?;
    let page_full = page.items.len() as u32 == q.limit && q.limit > 0;
    let last = page.items.last().map(|s| s.id.clone());
    let items: Vec<Value> = page
        .items
        .iter()
        .map(|s| {
            if full {
                detail(st, ctx, s)
            } else {
                summary(st, ctx, s)
            }
        })
        .collect();
    let path = if full {
        "snapshots/detail"
    } else {
        "snapshots"
    };
    let count = page.count.filter(|_| q.with_count);
    Ok(Json(views::list_body(
        ctx,
        "snapshots",
        path,
        items,
        &q.pairs,
        last.as_deref().filter(|_| page_full),
        count,
    ))
    .into_response())
}

pub async fn list_summary(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(q): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, q.as_deref(), false).await
}

pub async fn list_detail(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(q): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, q.as_deref(), true).await
}

pub async fn show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    let s = st.svc.get_snapshot(&ctx.caller, &id)?;
    Ok(Json(json!({"snapshot": detail(&st, &ctx, &s)})).into_response())
}

pub async fn update(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let body = raw(body)?;
    let m = body_object(&body.0, "snapshot")?;
    let name = text(&m, &["name", "display_name"])?;
    let description = text(&m, &["description", "display_description"])?;
    if name.is_none() && description.is_none() {
        return Err(CinderError::invalid_input(
            "give at least one of name and description",
        ));
    }
    let s = st
        .svc
        .update_snapshot(&ctx.caller, &id, name.as_deref(), description.as_deref())
        .map_err(snap_err)?;
    Ok(Json(json!({"snapshot": detail(&st, &ctx, &s)})).into_response())
}

pub async fn delete(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    st.svc.delete_snapshot(&ctx.caller, &id).map_err(snap_err)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn snapshot_tags(s: &Snapshot) -> Map<String, Value> {
    s.metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn set_tags(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    m: Map<String, Value>,
) -> CResult<Map<String, Value>> {
    let s = st
        .svc
        .set_snapshot_metadata(&ctx.caller, id, &Value::Object(m).to_string())
        .map_err(snap_err)?;
    Ok(snapshot_tags(&s))
}

fn body_metadata(raw_body: &crate::api::RawBody) -> CResult<Map<String, Value>> {
    let mut m = json_body(&raw_body.0)?;
    let v = m.remove("metadata").ok_or_else(CinderError::malformed)?;
    metadata_field(&v)?;
    Ok(v.as_object().cloned().unwrap_or_default())
}

pub async fn metadata_show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    let s = st.svc.get_snapshot(&ctx.caller, &id)?;
    Ok(Json(json!({"metadata": snapshot_tags(&s)})).into_response())
}

pub async fn metadata_merge(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let add = body_metadata(&raw(body)?)?;
    let mut m = snapshot_tags(&st.svc.get_snapshot(&ctx.caller, &id)?);
    m.extend(add);
    let m = set_tags(&st, &ctx, &id, m)?;
    Ok(Json(json!({ "metadata": m })).into_response())
}

pub async fn metadata_replace(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let m = body_metadata(&raw(body)?)?;
    st.svc.get_snapshot(&ctx.caller, &id)?;
    let m = set_tags(&st, &ctx, &id, m)?;
    Ok(Json(json!({ "metadata": m })).into_response())
}

pub async fn metadata_key_show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
) -> CResult<Response> {
    let m = snapshot_tags(&st.svc.get_snapshot(&ctx.caller, &id)?);
    match m.get(&key) {
        Some(v) => Ok(Json(json!({"meta": {key: v}})).into_response()),
        None => Err(CinderError::not_found("Metadata item was not found")),
    }
}

pub async fn metadata_key_put(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
    body: Body,
) -> CResult<Response> {
    let tag = meta_item(&raw(body)?, &key)?;
    let mut m = snapshot_tags(&st.svc.get_snapshot(&ctx.caller, &id)?);
    let value = tag.value.unwrap_or_default();
    m.insert(key.clone(), Value::from(value.clone()));
    set_tags(&st, &ctx, &id, m)?;
    Ok(Json(json!({"meta": {key: value}})).into_response())
}

pub async fn metadata_key_delete(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
) -> CResult<Response> {
    let mut m = snapshot_tags(&st.svc.get_snapshot(&ctx.caller, &id)?);
    if m.remove(&key).is_none() {
        return Err(CinderError::not_found("Metadata item was not found"));
    }
    set_tags(&st, &ctx, &id, m)?;
    Ok(StatusCode::OK.into_response())
}
