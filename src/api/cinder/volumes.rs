//! Cinder volume routes: create (every rule of the create-volume spec),
//! list and detail with filters and paging, summary, show, update, delete,
//! and the metadata sub-resource.

use super::errors::{CResult, CinderError};
use super::microversion as mv;
use super::views::{self, VolumeInfo};
use super::{CinderState, Ctx, body_object, json_body, python_bool};
use crate::api::{BodyError, RawBody, query_pairs};
use crate::service::{Caller, CreateVolume};
use crate::store::TagChange;
use crate::store::model::{CmpOp, Condition, SortDir, Tag, VolumeQuery, VolumeSortKey};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub type Body = Result<RawBody, BodyError>;

pub fn raw(body: Body) -> CResult<RawBody> {
    body.map_err(CinderError::from)
}

/// A volume with its tags and admin metadata, as the caller may see it.
pub fn load(st: &CinderState, caller: &Caller, id: &str) -> CResult<VolumeInfo> {
    let detail = st.svc.get_volume(caller, id)?;
    info(st, detail)
}

pub fn info(st: &CinderState, detail: crate::service::VolumeDetail) -> CResult<VolumeInfo> {
    let tags = st.svc.volume_tags(&detail.volume.id)?;
    let admin_meta = st.svc.admin_metadata(&detail.volume.id)?;
    Ok(VolumeInfo {
        detail,
        tags,
        admin_meta,
    })
}

pub fn one(ctx: &Ctx, st: &CinderState, i: &VolumeInfo, status: StatusCode) -> Response {
    (
        status,
        Json(json!({"volume": views::volume_detail(ctx, &st.zone, i)})),
    )
        .into_response()
}

/// A name or description: a string of 0-255 characters, a number (taken
/// as its digits), or null.
pub fn text_field(m: &Map<String, Value>, keys: &[&str]) -> CResult<Option<String>> {
    let Some((k, v)) = keys.iter().find_map(|k| m.get(*k).map(|v| (*k, v))) else {
        return Ok(None);
    };
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            return Err(CinderError::invalid_input(format!(
                "{k} must be a string or null, not {v}"
            )));
        }
    };
    if s.chars().count() > 255 {
        return Err(CinderError::invalid_input(format!(
            "{k} has {} characters; at most 255 are allowed",
            s.chars().count()
        )));
    }
    Ok(Some(s))
}

/// Metadata: a JSON object of strings, keys 1-255 and values 0-255 long.
pub fn metadata_field(v: &Value) -> CResult<Vec<Tag>> {
    let Value::Object(m) = v else {
        return Err(CinderError::invalid_input(
            "metadata must be an object of string keys and values",
        ));
    };
    let mut tags = Vec::with_capacity(m.len());
    for (k, val) in m {
        let Value::String(s) = val else {
            return Err(CinderError::invalid_input(format!(
                "metadata value of {k:?} must be a string, not {val}"
            )));
        };
        if k.is_empty() || k.chars().count() > 255 {
            return Err(CinderError::invalid_input(
                "metadata keys must be 1-255 characters",
            ));
        }
        if s.chars().count() > 255 {
            return Err(CinderError::invalid_input(format!(
                "metadata value of {k:?} is longer than 255 characters"
            )));
        }
        tags.push(Tag {
            key: k.clone(),
            value: Some(s.clone()),
        });
    }
    Ok(tags)
}

pub fn size_field(v: Option<&Value>) -> CResult<Option<u64>> {
    let bad = |v: &Value| {
        CinderError::invalid_input(format!(
            "Volume size '{}' must be an integer and greater than 0",
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(s) if s >= 1 => Ok(Some(s)),
            _ => Err(bad(v.unwrap_or(&Value::Null))),
        },
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(bad(&Value::String(s.clone()))),
            }
        }
        Some(other) => Err(bad(other)),
    }
}

pub fn id_field(m: &Map<String, Value>, key: &str) -> CResult<Option<String>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(CinderError::invalid_input(format!(
            "{key} must be a string, not {v}"
        ))),
    }
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

pub async fn create(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    body: Body,
) -> CResult<Response> {
    let body = raw(body)?;
    let m = body_object(&body.0, "volume")?;
    let name = text_field(&m, &["name", "display_name"])?;
    let description = text_field(&m, &["description", "display_description"])?;
    let size = size_field(m.get("size"))?;
    let tags = match m.get("metadata") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => metadata_field(v)?,
    };
    let snapshot_id = id_field(&m, "snapshot_id")?;
    let source_volid = id_field(&m, "source_volid")?;
    let image = match id_field(&m, "imageRef")? {
        Some(i) => Some(i),
        None => id_field(&m, "image_id")?,
    };
    let sources = [&snapshot_id, &source_volid, &image]
        .iter()
        .filter(|s| s.is_some())
        .count();
    if sources > 1 {
        return Err(CinderError::invalid_input(
            "give only one of snapshot_id, source_volid and imageRef",
        ));
    }
    let image = match &image {
        Some(img) => {
            // imageRef may be a URI ending in the image id.
            let id = img.rsplit('/').next().unwrap_or("");
            if !is_uuid(id) {
                return Err(CinderError::bad_request(
                    "Invalid image identifier or unable to access requested image.",
                ));
            }
            Some(id.to_string())
        }
        None => None,
    };
    if let Some(src) = &source_volid
        && !is_uuid(src)
    {
        return Err(CinderError::invalid_input(format!(
            "source_volid {src:?} is not a UUID"
        )));
    }
    if let Some(b) = id_field(&m, "backup_id")?
        && ctx.at_least(mv::Microversion(3, 47))
    {
        return Err(CinderError::not_found(format!(
            "Backup {b} could not be found."
        )));
    }
    for key in ["consistencygroup_id", "group_id"] {
        if let Some(g) = id_field(&m, key)? {
            return Err(CinderError::not_found(format!(
                "Group {g} could not be found."
            )));
        }
    }
    if let Some(v) = m.get("multiattach")
        && !v.is_null()
    {
        python_bool("multiattach", v)?;
    }
    let vtype = match m.get("volume_type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.is_empty() => None,
        Some(Value::String(t)) => match st.svc.volume_type(t) {
            Some(vt) => Some(vt.clone()),
            None => {
                return Err(CinderError::not_found(format!(
                    "Volume type with name {t} could not be found."
                )));
            }
        },
        Some(v) => {
            return Err(CinderError::invalid_input(format!(
                "volume_type must be a string, not {v}"
            )));
        }
    };
    match m.get("availability_zone") {
        None | Some(Value::Null) => {}
        Some(Value::String(z)) if z.is_empty() || *z == st.zone => {}
        Some(z) => {
            let z = z
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| z.to_string());
            return Err(CinderError::invalid_input(format!(
                "Availability zone '{z}' is invalid."
            )));
        }
    }
    // The source decides the size when none is given, and its type must
    // match an explicit one.
    let mut size = size;
    let mut source_type: Option<String> = None;
    if let Some(sid) = &snapshot_id {
        let snap = st.svc.get_snapshot(&ctx.caller, sid)?;
        size = size.or(Some(snap.size_gib));
        if let Ok(v) = st.svc.get_volume(&ctx.caller, &snap.volume_id) {
            source_type = Some(v.volume.volume_type_id);
        }
    }
    if let Some(src) = &source_volid {
        let v = st.svc.get_volume(&ctx.caller, src)?;
        size = size.or(Some(v.volume.size_gib));
        source_type = Some(v.volume.volume_type_id);
    }
    if let (Some(want), Some(have)) = (&vtype, &source_type)
        && want.id != *have
    {
        return Err(CinderError::invalid_input(format!(
            "volume type {} does not match the type of the source; leave volume_type out to inherit it",
            want.name
        )));
    }
    // The image is looked up last, once the request itself is sound.
    let image = match image {
        Some(id) => {
            let img = st
                .svc
                .lookup_image(&ctx.caller, &id, ctx.token.as_deref())
                .await?;
            size = size.or(Some(crate::service::Service::image_min_gib(&img)));
            Some(crate::service::ImageSource {
                image: img,
                token: ctx.token.clone(),
            })
        }
        None => None,
    };
    let Some(size) = size else {
        return Err(CinderError::invalid_input(
            "Volume size 'None' must be an integer and greater than 0",
        ));
    };
    let type_name = vtype
        .map(|t| t.name)
        .or_else(|| source_type.and_then(|id| st.svc.volume_type(&id).map(|t| t.name.clone())));
    let d = st.svc.create_volume(
        &ctx.caller,
        CreateVolume {
            name: name.unwrap_or_default(),
            description: description.unwrap_or_default(),
            size_gib: size,
            volume_type: type_name,
            snapshot_id,
            source_volid,
            tags,
            max_iops: None,
            max_throughput: None,
            image,
        },
    )?;
    let i = info(&st, d)?;
    Ok(one(&ctx, &st, &i, StatusCode::ACCEPTED))
}

/// Filters and paging of a list, as Cinder reads them.
pub struct ListQuery {
    pub pairs: Vec<(String, String)>,
    pub all_tenants: bool,
    pub limit: u32,
    pub marker: Option<String>,
    pub offset: u64,
    pub sort: Vec<(VolumeSortKey, SortDir)>,
    pub with_count: bool,
}

fn parse_sort(pairs: &[(String, String)]) -> CResult<Vec<(VolumeSortKey, SortDir)>> {
    let dir = |s: &str| match s.to_ascii_lowercase().as_str() {
        "asc" => Ok(SortDir::Asc),
        "desc" => Ok(SortDir::Desc),
        _ => Err(CinderError::invalid_input(format!(
            "Unknown sort direction {s:?}, must be 'desc' or 'asc'"
        ))),
    };
    let key = |s: &str| {
        VolumeSortKey::parse(s)
            .ok_or_else(|| CinderError::invalid_input(format!("sort key {s:?} is not supported")))
    };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let mut out = Vec::new();
    if let Some(sort) = get("sort") {
        for part in sort.split(',').filter(|p| !p.is_empty()) {
            let (k, d) = part.split_once(':').unwrap_or((part, "desc"));
            out.push((key(k.trim())?, dir(d.trim())?));
        }
    } else if let Some(k) = get("sort_key") {
        let keys: Vec<&str> = k.split(',').collect();
        let dirs: Vec<&str> = get("sort_dir").unwrap_or("desc").split(',').collect();
        for (i, k) in keys.iter().enumerate() {
            let d = dirs.get(i).or(dirs.last()).copied().unwrap_or("desc");
            out.push((key(k.trim())?, dir(d.trim())?));
        }
    }
    if out.is_empty() {
        out.push((VolumeSortKey::CreatedAt, SortDir::Desc));
    }
    Ok(out)
}

pub fn list_query(ctx: &Ctx, raw: Option<&str>) -> CResult<ListQuery> {
    let pairs = query_pairs(raw, 50).map_err(CinderError::invalid_input)?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let flag = |k: &str| -> CResult<bool> {
        match get(k) {
            None => Ok(false),
            Some(v) => crate::api::query_bool(k, &v)
                .map(|b| b.unwrap_or(false))
                .map_err(CinderError::invalid_input),
        }
    };
    let limit = match get("limit") {
        None => 1000,
        Some(l) => match l.parse::<u64>() {
            Ok(n) => n.min(1000) as u32,
            Err(_) => {
                return Err(CinderError::bad_request("limit param must be an integer"));
            }
        },
    };
    let offset = match get("offset") {
        None => 0,
        Some(o) => o
            .parse::<u64>()
            .map_err(|_| CinderError::bad_request("offset param must be an integer"))?,
    };
    Ok(ListQuery {
        all_tenants: flag("all_tenants")? && ctx.caller.admin,
        limit,
        marker: get("marker").filter(|m| !m.is_empty()),
        offset,
        sort: parse_sort(&pairs)?,
        with_count: ctx.at_least(mv::SUPPORT_COUNT_INFO) && flag("with_count")?,
        pairs,
    })
}

/// The caller to list as: admins see every project only with all_tenants.
pub fn list_caller(ctx: &Ctx, q: &ListQuery) -> Caller {
    let mut c = ctx.caller.clone();
    c.admin = q.all_tenants;
    c
}

/// `metadata={"k": "v"}` as clients send it (JSON, or a Python dict).
fn metadata_filter(s: &str) -> CResult<Vec<Tag>> {
    let parsed = serde_json::from_str::<Value>(s)
        .or_else(|_| serde_json::from_str::<Value>(&s.replace('\'', "\"")));
    match parsed {
        Ok(v) => metadata_field(&v),
        Err(_) => Err(CinderError::invalid_input(format!(
            "metadata filter {s:?} is not a dictionary"
        ))),
    }
}

/// A time filter value (3.60): `gt:2026-12-01T10:00:00` and the like.
fn time_condition(key: VolumeSortKey, v: &str) -> CResult<Condition> {
    let bad = || {
        CinderError::invalid_input(format!(
            "time filter {v:?} must be OP:TIME with OP one of gt, gte, lt, lte, eq, neq"
        ))
    };
    let (op, t) = v.split_once(':').ok_or_else(bad)?;
    let op = match op {
        "gt" => CmpOp::Gt,
        "gte" => CmpOp::Ge,
        "lt" => CmpOp::Lt,
        "lte" => CmpOp::Le,
        "eq" => CmpOp::Eq,
        "neq" => CmpOp::Ne,
        _ => return Err(bad()),
    };
    let t = chrono::DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&chrono::Utc))
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f").map(|n| n.and_utc())
        })
        .map_err(|_| bad())?;
    Ok(Condition {
        key,
        op,
        value: crate::clock::format_ts(t),
    })
}

/// Comparison filters of a volume list, each from its microversion.
fn conditions(st: &CinderState, ctx: &Ctx, pairs: &[(String, String)]) -> CResult<Vec<Condition>> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        let cond = match k.as_str() {
            "name~" if ctx.at_least(mv::LIKE_FILTER) => Condition {
                key: VolumeSortKey::Name,
                op: CmpOp::Contains,
                value: v.clone(),
            },
            "status~" if ctx.at_least(mv::LIKE_FILTER) => Condition {
                key: VolumeSortKey::State,
                op: CmpOp::Contains,
                value: views::store_state(v),
            },
            "size" => match v.parse::<u64>() {
                Ok(_) => Condition {
                    key: VolumeSortKey::Size,
                    op: CmpOp::Eq,
                    value: v.clone(),
                },
                Err(_) => {
                    return Err(CinderError::invalid_input(format!(
                        "size filter {v:?} is not an integer"
                    )));
                }
            },
            // Every volume is in this node's zone.
            "availability_zone" if *v != st.zone => Condition {
                key: VolumeSortKey::Id,
                op: CmpOp::Eq,
                value: String::new(),
            },
            "created_at" if ctx.at_least(mv::VOLUME_TIME_COMPARISON_FILTER) => {
                time_condition(VolumeSortKey::CreatedAt, v)?
            }
            "updated_at" if ctx.at_least(mv::VOLUME_TIME_COMPARISON_FILTER) => {
                time_condition(VolumeSortKey::ModifiedAt, v)?
            }
            _ => continue,
        };
        out.push(cond);
    }
    Ok(out)
}

async fn list(st: &CinderState, ctx: &Ctx, raw: Option<&str>, detail: bool) -> CResult<Response> {
    let q = list_query(ctx, raw)?;
    let get = |k: &str| q.pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let mut vq = VolumeQuery {
        project_id: None,
        name: get("name"),
        state: get("status").map(|s| views::store_state(&s)),
        bootable: match get("bootable") {
            None => None,
            Some(b) => {
                crate::api::query_bool("bootable", &b).map_err(CinderError::invalid_input)?
            }
        },
        tags: match get("metadata") {
            None => Vec::new(),
            Some(m) => metadata_filter(&m)?,
        },
        conditions: conditions(st, ctx, &q.pairs)?,
        sort: q.sort.clone(),
        limit: q.limit,
        offset: q.offset,
        marker: q.marker.clone(),
        with_count: q.with_count,
    };
    let caller = list_caller(ctx, &q);
    if q.all_tenants
        && let Some(p) = get("project_id")
    {
        vq.project_id = Some(p);
    }
    let page = st.svc.list_volumes(&caller, vq)?;
    let full = page.items.len() as u32 == q.limit && q.limit > 0;
    let last = page.items.last().map(|d| d.volume.id.clone());
    let mut items = Vec::with_capacity(page.items.len());
    for d in page.items {
        if detail {
            let i = info(st, d)?;
            items.push(views::volume_detail(ctx, &st.zone, &i));
        } else {
            items.push(views::volume_summary(ctx, &d.volume));
        }
    }
    let path = if detail { "volumes/detail" } else { "volumes" };
    let count = page.count.filter(|_| q.with_count);
    Ok(Json(views::list_body(
        ctx,
        "volumes",
        path,
        items,
        &q.pairs,
        last.as_deref().filter(|_| full),
        count,
    ))
    .into_response())
}

pub async fn list_summary(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, raw.as_deref(), false).await
}

pub async fn list_detail(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, raw.as_deref(), true).await
}

pub async fn summary(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> CResult<Response> {
    if !ctx.at_least(mv::VOLUME_SUMMARY) {
        // Before 3.12 "summary" is read as a volume id.
        return Err(CinderError::not_found("Volume summary could not be found."));
    }
    let q = list_query(&ctx, raw.as_deref())?;
    let caller = list_caller(&ctx, &q);
    let (mut size, mut count) = (0u64, 0u64);
    let mut meta: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    let mut marker = None;
    loop {
        let page = st.svc.list_volumes(
            &caller,
            VolumeQuery {
                marker: marker.clone(),
                limit: 1000,
                with_count: false,
                sort: vec![(VolumeSortKey::Id, SortDir::Asc)],
                ..Default::default()
            },
        )?;
        for d in &page.items {
            size += d.volume.size_gib;
            count += 1;
            for t in st.svc.volume_tags(&d.volume.id)? {
                meta.entry(t.key)
                    .or_default()
                    .insert(t.value.unwrap_or_default());
            }
        }
        if page.items.len() < 1000 {
            break;
        }
        marker = page.items.last().map(|d| d.volume.id.clone());
    }
    let mut s = json!({"total_size": size, "total_count": count});
    if ctx.at_least(mv::VOLUME_SUMMARY_METADATA) {
        s["metadata"] = json!(meta);
    }
    Ok(Json(json!({ "volume-summary": s })).into_response())
}

pub async fn show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    let i = load(&st, &ctx.caller, &id)?;
    Ok(one(&ctx, &st, &i, StatusCode::OK))
}

pub async fn update(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let body = raw(body)?;
    let m = body_object(&body.0, "volume")?;
    let has = |keys: &[&str]| keys.iter().any(|k| m.contains_key(*k));
    let name = match has(&["name", "display_name"]) {
        true => Some(text_field(&m, &["name", "display_name"])?.unwrap_or_default()),
        false => None,
    };
    let description = match has(&["description", "display_description"]) {
        true => Some(text_field(&m, &["description", "display_description"])?.unwrap_or_default()),
        false => None,
    };
    let tags = match m.get("metadata") {
        None | Some(Value::Null) => None,
        Some(v) => Some(metadata_field(v)?),
    };
    if name.is_none() && description.is_none() && tags.is_none() {
        return Err(CinderError::invalid_input(
            "give at least one of name, description and metadata",
        ));
    }
    // Check visibility first so that an unknown id answers 404.
    st.svc.get_volume(&ctx.caller, &id)?;
    if name.is_some() || description.is_some() {
        st.svc.update_volume(&ctx.caller, &id, name, description)?;
    }
    if let Some(t) = tags {
        st.svc
            .change_tags(&ctx.caller, &id, TagChange::Replace(t))?;
    }
    let i = load(&st, &ctx.caller, &id)?;
    Ok(one(&ctx, &st, &i, StatusCode::OK))
}

pub async fn delete(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> CResult<Response> {
    let pairs = query_pairs(raw.as_deref(), 20).map_err(CinderError::invalid_input)?;
    let flag = |k: &str| -> CResult<bool> {
        match pairs.iter().find(|(n, _)| n == k) {
            None => Ok(false),
            Some((_, v)) => crate::api::query_bool(k, v)
                .map(|b| b.unwrap_or(false))
                .map_err(|_| {
                    CinderError::invalid_input(format!(
                        "{k} must be a boolean (True or False), not {v:?}"
                    ))
                }),
        }
    };
    let cascade = flag("cascade")?;
    let force = flag("force")?;
    if force && !ctx.caller.admin {
        return Err(CinderError::forbidden(
            "Policy doesn't allow volume:force_delete to be performed.",
        ));
    }
    st.svc.delete_volume(&ctx.caller, &id, cascade)?;
    Ok(StatusCode::ACCEPTED.into_response())
}

fn metadata_answer(tags: &[Tag]) -> Response {
    Json(json!({"metadata": views::metadata(tags)})).into_response()
}

pub async fn metadata_show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> CResult<Response> {
    let i = load(&st, &ctx.caller, &id)?;
    Ok(metadata_answer(&i.tags))
}

fn metadata_body(raw: &RawBody) -> CResult<Vec<Tag>> {
    let mut m = json_body(&raw.0)?;
    match m.remove("metadata") {
        Some(v) => metadata_field(&v),
        None => Err(CinderError::malformed()),
    }
}

fn metadata_change(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    body: Body,
    change: fn(Vec<Tag>) -> TagChange,
) -> CResult<Response> {
    let tags = metadata_body(&raw(body)?)?;
    st.svc.change_tags(&ctx.caller, id, change(tags))?;
    let i = load(st, &ctx.caller, id)?;
    Ok(metadata_answer(&i.tags))
}

pub async fn metadata_merge(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    metadata_change(&st, &ctx, &id, body, TagChange::Merge)
}

pub async fn metadata_replace(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    metadata_change(&st, &ctx, &id, body, TagChange::Replace)
}

pub async fn metadata_key_show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
) -> CResult<Response> {
    let i = load(&st, &ctx.caller, &id)?;
    match i.tags.iter().find(|t| t.key == key) {
        Some(t) => {
            Ok(Json(json!({"meta": {key: t.value.clone().unwrap_or_default()}})).into_response())
        }
        None => Err(CinderError::not_found("Metadata item was not found")),
    }
}

/// `{"meta": {key: value}}` whose one key matches the URL.
pub fn meta_item(raw: &RawBody, key: &str) -> CResult<Tag> {
    let mut m = json_body(&raw.0)?;
    let Some(Value::Object(meta)) = m.remove("meta") else {
        return Err(CinderError::malformed());
    };
    if meta.len() > 1 {
        return Err(CinderError::bad_request(
            "Request body contains too many items",
        ));
    }
    if !meta.contains_key(key) {
        return Err(CinderError::bad_request("Request body and URI mismatch"));
    }
    let tags = metadata_field(&Value::Object(meta))?;
    tags.into_iter().next().ok_or_else(CinderError::malformed)
}

pub async fn metadata_key_put(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
    body: Body,
) -> CResult<Response> {
    let tag = meta_item(&raw(body)?, &key)?;
    st.svc
        .change_tags(&ctx.caller, &id, TagChange::Merge(vec![tag.clone()]))?;
    Ok(Json(json!({"meta": {key: tag.value.unwrap_or_default()}})).into_response())
}

pub async fn metadata_key_delete(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, key)): Path<(String, String)>,
) -> CResult<Response> {
    let i = load(&st, &ctx.caller, &id)?;
    if !i.tags.iter().any(|t| t.key == key) {
        return Err(CinderError::not_found("Metadata item was not found"));
    }
    st.svc
        .change_tags(&ctx.caller, &id, TagChange::Delete(key))?;
    Ok(StatusCode::OK.into_response())
}
