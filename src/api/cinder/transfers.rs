//! Cinder volume transfers over the shared transfer service: the old
//! `os-volume-transfer` routes and, from 3.55, `volume-transfers`, whose
//! create also takes `no_snapshots`. The key is shown only when created.

use super::errors::{CResult, CinderError};
use super::microversion as mv;
use super::views;
use super::volumes::{Body, list_caller, list_query, raw};
use super::{CinderState, Ctx, body_object, python_bool};
use crate::service::CreateTransfer;
use crate::store::TransferQuery;
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub const OLD: &str = "os-volume-transfer";
pub const NEW: &str = "volume-transfers";

/// The collection a request came in on; `volume-transfers` needs 3.55.
fn collection(ctx: &Ctx, uri: &Uri) -> CResult<&'static str> {
    if !uri.path().starts_with(&format!("/{NEW}")) {
        return Ok(OLD);
    }
    if ctx.at_least(mv::TRANSFER_WITH_SNAPSHOTS) {
        Ok(NEW)
    } else {
        Err(CinderError::not_found(format!(
            "The resource could not be found; /{NEW} needs microversion {}",
            mv::TRANSFER_WITH_SNAPSHOTS
        )))
    }
}

fn not_found(id: &str) -> CinderError {
    CinderError::not_found(format!("Transfer {id} could not be found."))
}

/// Transfer ids are UUIDs; anything else cannot name one.
fn transfer_id(id: &str) -> CResult<&str> {
    uuid::Uuid::parse_str(id)
        .map(|_| id)
        .map_err(|_| not_found(id))
}

pub async fn create(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    body: Body,
) -> CResult<Response> {
    let coll = collection(&ctx, &uri)?;
    let body = raw(body)?;
    let m = body_object(&body.0, "transfer")?;
    let mut req = CreateTransfer::default();
    for (k, v) in &m {
        match (k.as_str(), v) {
            ("volume_id", Value::String(s)) if uuid::Uuid::parse_str(s).is_ok() => {
                req.volume_id = s.clone();
            }
            ("volume_id", _) => {
                return Err(CinderError::invalid_input(
                    "volume_id must be a volume's UUID",
                ));
            }
            ("name", Value::Null) => {}
            ("name", Value::String(s)) if s.chars().count() <= 255 => req.name = Some(s.clone()),
            ("name", _) => {
                return Err(CinderError::invalid_input(
                    "name must be a string of at most 255 characters",
                ));
            }
            ("no_snapshots", v) if coll == NEW => req.no_snapshots = python_bool(k, v)?,
            _ => {
                return Err(CinderError::invalid_input(format!(
                    "Additional properties are not allowed ('{k}' was unexpected)"
                )));
            }
        }
    }
    if req.volume_id.is_empty() {
        return Err(CinderError::invalid_input(
            "'volume_id' is a required property",
        ));
    }
    let n = st.svc.create_transfer(&ctx.caller, req)?;
    let mut v = views::transfer(&ctx, coll, &n.transfer, true);
    v["auth_key"] = n.auth_key.into();
    Ok((StatusCode::ACCEPTED, Json(json!({ "transfer": v }))).into_response())
}

async fn list(
    st: &CinderState,
    ctx: &Ctx,
    uri: &Uri,
    raw_q: Option<&str>,
    full: bool,
) -> CResult<Response> {
    let coll = collection(ctx, uri)?;
    let q = list_query(ctx, raw_q)?;
    if let Some((k, _)) = q
        .pairs
        .iter()
        .find(|(k, _)| !["all_tenants", "limit", "marker", "offset"].contains(&k.as_str()))
    {
        return Err(CinderError::invalid_input(format!(
            "transfers cannot be filtered or sorted by {k:?}; use limit, marker, offset or all_tenants"
        )));
    }
    let page = st.svc.list_transfers(
        &list_caller(ctx, &q),
        TransferQuery {
            project_id: None,
            limit: q.limit,
            offset: q.offset,
            marker: q.marker.clone(),
            with_count: false,
        },
    )?;
    let page_full = page.items.len() as u32 == q.limit && q.limit > 0;
    let last = page.items.last().map(|t| t.id.clone());
    let items = page
        .items
        .iter()
        .map(|t| views::transfer(ctx, coll, t, full))
        .collect();
    let path = if full {
        format!("{coll}/detail")
    } else {
        coll.to_string()
    };
    Ok(Json(views::list_body(
        ctx,
        "transfers",
        &path,
        items,
        &q.pairs,
        last.as_deref().filter(|_| page_full),
        None,
    ))
    .into_response())
}

pub async fn list_summary(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, &uri, q.as_deref(), false).await
}

pub async fn list_detail(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    RawQuery(q): RawQuery,
) -> CResult<Response> {
    list(&st, &ctx, &uri, q.as_deref(), true).await
}

pub async fn show(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    Path(id): Path<String>,
) -> CResult<Response> {
    let coll = collection(&ctx, &uri)?;
    let t = st.svc.get_transfer(&ctx.caller, transfer_id(&id)?)?;
    Ok(Json(json!({"transfer": views::transfer(&ctx, coll, &t, true)})).into_response())
}

pub async fn delete(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    Path(id): Path<String>,
) -> CResult<Response> {
    collection(&ctx, &uri)?;
    let id = transfer_id(&id)?;
    if !st.svc.delete_transfer(&ctx.caller, id)? {
        return Err(not_found(id));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

pub async fn accept(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    uri: Uri,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let coll = collection(&ctx, &uri)?;
    let id = transfer_id(&id)?;
    let body = raw(body)?;
    let m = body_object(&body.0, "accept")?;
    let key = match m.get("auth_key") {
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 255 => k.clone(),
        _ => {
            return Err(CinderError::invalid_input(
                "'auth_key' is a required property (a non-empty string)",
            ));
        }
    };
    let t = st.svc.accept_transfer(&ctx.caller, id, &key)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"transfer": views::transfer(&ctx, coll, &t, false)})),
    )
        .into_response())
}
