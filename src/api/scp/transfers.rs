//! SCP volume transfers: `/v1/volume-transfer` to offer a volume,
//! `/{id}` to show or cancel the offer, `/{id}/accept` to take the volume
//! with the offer's key. The key appears only in the create answer.

use super::{Ctx, ScpError, ScpState, check_uuid, empty, page_param, required};
use crate::api::{BodyError, RawBody, query_pairs};
use crate::service::CreateTransfer;
use crate::store::{Transfer, TransferQuery};
use axum::Json;
use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

pub fn routes() -> axum::Router<Arc<ScpState>> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/v1/volume-transfer", get(list).post(create))
        .route("/v1/volume-transfer/{id}", get(show).delete(remove))
        .route("/v1/volume-transfer/{id}/accept", post(accept))
}

fn view(t: &Transfer) -> Value {
    json!({
        "id": t.id,
        "created_at": t.created_at,
        "volume_id": t.volume_id,
        "name": t.name,
    })
}

fn transfer_id(id: &str) -> Result<&str, ScpError> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(id),
        Err(_) => Err(ScpError::not_found(format!("Transfer {id} not found"))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransferCreateRequest)]
pub(super) struct CreateReq {
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    volume_id: Option<String>,
    #[schema(max_length = 255)]
    name: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TransferAcceptRequest)]
pub(super) struct AcceptReq {
    #[schema(required = true, nullable = false)]
    auth_key: Option<String>,
}

async fn create(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let r: CreateReq = body?.parse()?;
    let vid = required("volume_id", r.volume_id)?;
    check_uuid("volume_id", &vid)?;
    if r.name.as_ref().is_some_and(|n| n.chars().count() > 255) {
        return Err(ScpError::bad_request("name: at most 255 characters"));
    }
    let n = st.svc.create_transfer(
        &ctx.caller,
        CreateTransfer {
            volume_id: vid,
            name: r.name,
            no_snapshots: false,
        },
    )?;
    let mut body = view(&n.transfer);
    body["auth_key"] = Value::from(n.auth_key);
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

async fn list(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ScpError> {
    let mut q = TransferQuery {
        project_id: None,
        limit: 20,
        offset: 0,
        marker: None,
        with_count: true,
    };
    for (k, v) in query_pairs(raw.as_deref(), 20).map_err(ScpError::bad_request)? {
        if !page_param(
            &k,
            &v,
            &mut q.limit,
            &mut q.offset,
            &mut q.marker,
            &mut q.with_count,
        )? {
            return Err(ScpError::bad_request(format!(
                "{k}: unknown query parameter (use limit, offset, marker, with_count)"
            )));
        }
    }
    let page = st.svc.list_transfers(&ctx.caller, q)?;
    let mut body = json!({"transfers": page.items.iter().map(view).collect::<Vec<_>>()});
    if let Some(c) = page.count {
        body["count"] = Value::from(c);
    }
    Ok(Json(body))
}

async fn show(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ScpError> {
    let t = st.svc.get_transfer(&ctx.caller, transfer_id(&id)?)?;
    Ok(Json(view(&t)))
}

async fn remove(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ScpError> {
    let id = transfer_id(&id)?;
    if !st.svc.delete_transfer(&ctx.caller, id)? {
        return Err(ScpError::not_found(format!("Transfer {id} not found")));
    }
    Ok(empty(StatusCode::ACCEPTED))
}

async fn accept(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let id = transfer_id(&id)?;
    let r: AcceptReq = body?.parse()?;
    let key = r
        .auth_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ScpError::bad_request("auth_key: is required"))?;
    let t = st.svc.accept_transfer(&ctx.caller, id, &key)?;
    Ok((StatusCode::ACCEPTED, Json(view(&t))).into_response())
}
