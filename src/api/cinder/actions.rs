//! `POST volumes/{id}/action`: extend, the attach and detach handshake
//! that compute hosts drive (reserve, initialize_connection, attach,
//! begin_detaching, terminate_connection, detach), and admin and flag
//! actions. A volume in the wrong state answers 400 "Invalid volume".
//!
//! The handshake maps onto the service's attachments: initialize_connection
//! (or attach without it) attaches the volume for the connector's host and
//! exports it; terminate_connection (or detach) detaches it. Cinder's
//! intermediate statuses (attaching after reserve, detaching after
//! begin_detaching) are kept as admin metadata over the store state.

use super::errors::{CResult, CinderError};
use super::microversion as mv;
use super::views::{ATTACHED_MODE, PHASE, READONLY};
use super::volumes::{Body, load, raw};
use super::{CinderState, Ctx, json_body, python_bool};
use crate::store::model::VolumeState;
use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

const ACCEPTED: StatusCode = StatusCode::ACCEPTED;

fn accepted() -> Response {
    ACCEPTED.into_response()
}

pub async fn action(
    State(st): State<Arc<CinderState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Body,
) -> CResult<Response> {
    let body = raw(body)?;
    let m = json_body(&body.0)?;
    if m.len() != 1 {
        return Err(CinderError::malformed());
    }
    let Some((name, args)) = m.into_iter().next() else {
        return Err(CinderError::malformed());
    };
    let args = match args {
        Value::Object(o) => o,
        Value::Null => Map::new(),
        _ => return Err(CinderError::malformed()),
    };
    // The volume must exist and be visible before anything else.
    let i = load(&st, &ctx.caller, &id)?;
    let state = i.detail.volume.state;
    let phase = i.admin_meta.get(PHASE).cloned();
    match name.as_str() {
        "os-extend" => extend(
            &st,
            &ctx,
            &id,
            super::views::cinder_status(&i.detail.volume, &i.admin_meta),
            &args,
        ),
        "os-reserve" => {
            st.svc
                .set_admin_metadata(
                    &ctx.caller,
                    &id,
                    &[VolumeState::Available],
                    &[(PHASE, Some("attaching"))],
                    Some(VolumeState::Reserved),
                )
                .map_err(|_| {
                    CinderError::invalid_volume(format!(
                        "Volume {id} status must be available to reserve, but the current status is: {}",
                        super::views::cinder_status(&i.detail.volume, &i.admin_meta)
                    ))
                })?;
            Ok(accepted())
        }
        "os-unreserve" => {
            if state == VolumeState::Reserved {
                st.svc.set_admin_metadata(
                    &ctx.caller,
                    &id,
                    &[VolumeState::Reserved],
                    &[(PHASE, None)],
                    Some(VolumeState::Available),
                )?;
            }
            Ok(accepted())
        }
        "os-initialize_connection" => initialize(&st, &ctx, &id, &args).await,
        "os-attach" => attach(&st, &ctx, &id, state, &i.admin_meta, &args),
        "os-begin_detaching" => {
            if state != VolumeState::InUse || phase.is_some() {
                return Err(CinderError::invalid_volume(
                    "Unable to detach volume. Volume status must be 'in-use' and attach_status must be 'attached' to detach.",
                ));
            }
            st.svc.set_admin_metadata(
                &ctx.caller,
                &id,
                &[VolumeState::InUse],
                &[(PHASE, Some("detaching"))],
                None,
            )?;
            Ok(accepted())
        }
        "os-roll_detaching" => {
            if phase.as_deref() == Some("detaching") {
                st.svc.set_admin_metadata(
                    &ctx.caller,
                    &id,
                    VolumeState::ALL,
                    &[(PHASE, None)],
                    None,
                )?;
            }
            Ok(accepted())
        }
        "os-terminate_connection" => {
            let host = connector_host(&args)?;
            detach_server(&st, &ctx, &id, Some(&host), None)
        }
        "os-detach" => {
            let att = match args.get("attachment_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(a)) => Some(a.clone()),
                Some(v) => {
                    return Err(CinderError::invalid_input(format!(
                        "attachment_id must be a string, not {v}"
                    )));
                }
            };
            detach_server(&st, &ctx, &id, None, att.as_deref())
        }
        "os-reset_status" => reset_status(&st, &ctx, &id, &args),
        "os-update_readonly_flag" => {
            let ro = python_bool(
                "readonly",
                args.get("readonly")
                    .ok_or_else(|| CinderError::bad_request("Must specify readonly in request."))?,
            )?;
            let v = if ro { "True" } else { "False" };
            st.svc
                .set_admin_metadata(
                    &ctx.caller,
                    &id,
                    &[VolumeState::Available],
                    &[(READONLY, Some(v))],
                    None,
                )
                .map_err(|_| {
                    CinderError::invalid_volume(format!(
                        "Volume {id} status must be available to update readonly flag."
                    ))
                })?;
            Ok(accepted())
        }
        "os-set_bootable" => {
            let b = python_bool(
                "bootable",
                args.get("bootable")
                    .ok_or_else(|| CinderError::bad_request("Must specify bootable in request."))?,
            )?;
            st.svc.set_bootable(&ctx.caller, &id, b)?;
            Ok(StatusCode::OK.into_response())
        }
        "revert" if ctx.at_least(mv::VOLUME_REVERT) => {
            let sid = match args.get("snapshot_id") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(CinderError::bad_request("Must specify snapshot_id")),
            };
            st.svc.revert_volume(&ctx.caller, &id, &sid)?;
            Ok(accepted())
        }
        "os-volume_upload_image" => upload_image(&st, &ctx, &i, &args).await,
        "os-show_image_metadata" => {
            let m = st.svc.image_metadata(&ctx.caller, &id)?;
            Ok(Json(json!({ "metadata": m })).into_response())
        }
        "os-set_image_metadata" => {
            let Some(meta) = args.get("metadata") else {
                return Err(CinderError::malformed());
            };
            let entries = super::volumes::metadata_field(meta)?
                .into_iter()
                .map(|t| (t.key, t.value.unwrap_or_default()))
                .collect();
            let m = st.svc.change_image_metadata(
                &ctx.caller,
                &id,
                crate::store::ImageMetaChange::Merge(entries),
            )?;
            Ok(Json(json!({ "metadata": m })).into_response())
        }
        "os-unset_image_metadata" => {
            let Some(Value::String(key)) = args.get("key") else {
                return Err(CinderError::bad_request("Must specify 'key' as a string"));
            };
            st.svc
                .change_image_metadata(
                    &ctx.caller,
                    &id,
                    crate::store::ImageMetaChange::Delete(key.clone()),
                )
                .map_err(|e| match e.kind() {
                    crate::service::ErrorKind::NotFound => CinderError::not_found(format!(
                        "Glance metadata for volume {id} with key {key} could not be found."
                    )),
                    _ => e.into(),
                })?;
            Ok(StatusCode::OK.into_response())
        }
        other => Err(CinderError::bad_request(format!(
            "There is no such action: {other}"
        ))),
    }
}

fn extend(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    status: &str,
    args: &Map<String, Value>,
) -> CResult<Response> {
    let new_size = match args.get("new_size") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    }
    .filter(|n| *n >= 1)
    .ok_or_else(|| CinderError::invalid_input("new_size must be an integer of 1 or more"))?;
    let live_ok = ctx.at_least(mv::VOLUME_EXTEND_INUSE);
    let ok = status == "available" || (live_ok && status == "in-use");
    if !ok {
        let need = if live_ok {
            "'available' or 'in-use'"
        } else {
            "'available'"
        };
        return Err(CinderError::invalid_volume(format!(
            "Volume status must be {need} to extend, but current status is: {status}"
        )));
    }
    let current = st.svc.get_volume(&ctx.caller, id)?.volume.size_gib;
    if new_size <= current {
        return Err(CinderError::invalid_input(format!(
            "New size for extend must be greater than current size. (current: {current}, extended: {new_size})"
        )));
    }
    st.svc.extend_volume(&ctx.caller, id, new_size)?;
    Ok(accepted())
}

fn connector_host(args: &Map<String, Value>) -> CResult<String> {
    let Some(Value::Object(c)) = args.get("connector") else {
        return Err(CinderError::bad_request("Must specify 'connector'"));
    };
    Ok(match c.get("host") {
        Some(Value::String(h)) if !h.is_empty() => h.clone(),
        _ => "localhost".to_string(),
    })
}

/// Waits for an attach or detach job to settle; returns the state.
async fn settle(st: &CinderState, ctx: &Ctx, id: &str) -> CResult<VolumeState> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = st.svc.get_volume(&ctx.caller, id)?.volume.state;
        if !matches!(s, VolumeState::Attaching | VolumeState::Detaching)
            || tokio::time::Instant::now() > deadline
        {
            return Ok(s);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn initialize(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    args: &Map<String, Value>,
) -> CResult<Response> {
    let host = connector_host(args)?;
    let before = load(st, &ctx.caller, id)?;
    let state = before.detail.volume.state;
    let has = before
        .detail
        .attachments
        .iter()
        .any(|a| a.server_id == host);
    if !has {
        if !matches!(
            state,
            VolumeState::Available | VolumeState::Reserved | VolumeState::InUse
        ) {
            return Err(CinderError::invalid_volume(format!(
                "Volume {id} status must be available, reserved or in-use to initialize a connection, but current status is: {state}"
            )));
        }
        // blockd extension: the connector may name the export kind
        // (`"export_kind": "vhost-user-blk"`); else the volume type decides.
        let export_kind = match args.get("connector").and_then(|c| c.get("export_kind")) {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => {
                return Err(CinderError::invalid_input(
                    "connector.export_kind must be a string",
                ));
            }
        };
        let read_only = before.admin_meta.get(READONLY).map(String::as_str) == Some("True");
        st.svc.attach_volume_with(
            &ctx.caller,
            id,
            &host,
            false,
            &crate::service::AttachOptions {
                export_kind,
                read_only,
            },
        )?;
        if state != VolumeState::InUse {
            // Cinder shows attaching until os-attach completes the handshake.
            let _ = st.svc.set_admin_metadata(
                &ctx.caller,
                id,
                VolumeState::ALL,
                &[(PHASE, Some("attaching"))],
                None,
            );
        }
    }
    let now = settle(st, ctx, id).await?;
    let export = st.svc.export_of(&ctx.caller, id)?;
    let Some(x) = export.filter(|_| now == VolumeState::InUse) else {
        let v = st.svc.get_volume(&ctx.caller, id)?.volume;
        tracing::error!(volume = %id, state = %v.state, reason = ?v.error_reason, "initialize_connection: no export");
        return Err(CinderError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Unable to initialize the connection: the volume could not be exported on this host.",
        ));
    };
    let after = load(st, &ctx.caller, id)?;
    let v = &after.detail.volume;
    let ro = after.admin_meta.get(READONLY).map(String::as_str) == Some("True");
    let qos = match (v.max_iops, v.max_throughput) {
        (None, None) => Value::Null,
        (iops, mbps) => {
            let mut q = Map::new();
            if let Some(i) = iops {
                q.insert("total_iops_sec".into(), i.into());
            }
            if let Some(t) = mbps {
                q.insert("total_bytes_sec".into(), (u64::from(t) * 1_000_000).into());
            }
            Value::Object(q)
        }
    };
    if x.kind == crate::export::vhost_blk::KIND {
        // QoS is enforced by blockd in the export itself, so none is
        // handed to the hypervisor.
        return Ok(Json(json!({"connection_info": {
            "driver_volume_type": "vhost-user",
            "data": {
                "device_type": "vhost-user-blk",
                "socket_path": x.host_path,
                "vhost_user_mode": "client",
                "volume_id": v.id,
                "access_mode": if x.read_only { "ro" } else { "rw" },
                "encrypted": v.encrypted,
                "discard": true,
                "qos_specs": Value::Null,
                "qos_enforced_by_backend": true,
            }
        }}))
        .into_response());
    }
    Ok(Json(json!({"connection_info": {
        "driver_volume_type": "local",
        "data": {
            "device_path": x.host_path,
            "volume_id": v.id,
            "access_mode": if ro { "ro" } else { "rw" },
            "encrypted": v.encrypted,
            "discard": true,
            "qos_specs": qos,
        }
    }}))
    .into_response())
}

fn attach(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    state: VolumeState,
    admin_meta: &std::collections::BTreeMap<String, String>,
    args: &Map<String, Value>,
) -> CResult<Response> {
    let s = |k: &str| match args.get(k) {
        Some(Value::String(v)) if !v.is_empty() => Some(v.clone()),
        _ => None,
    };
    let server = s("instance_uuid")
        .or_else(|| s("host_name"))
        .ok_or_else(|| {
            CinderError::bad_request("Invalid request to attach volume to an invalid target")
        })?;
    let mode = s("mode").unwrap_or_else(|| "rw".into());
    if mode != "rw" && mode != "ro" {
        return Err(CinderError::bad_request(
            "Invalid request to attach volume with an invalid mode. Attaching mode should be 'rw' or 'ro'",
        ));
    }
    let ro = admin_meta.get(READONLY).map(String::as_str) == Some("True");
    if ro && mode == "rw" {
        return Err(CinderError::bad_request(format!(
            "Invalid attaching mode 'rw' for volume {id}: it is read-only; attach it with mode 'ro'"
        )));
    }
    match state {
        VolumeState::InUse => {}
        VolumeState::Available | VolumeState::Reserved => {
            st.svc.attach_volume(&ctx.caller, id, &server, false)?;
        }
        other => {
            return Err(CinderError::invalid_volume(format!(
                "Volume {id} status must be available, reserved or attaching to attach, but current status is: {other}"
            )));
        }
    }
    st.svc.set_admin_metadata(
        &ctx.caller,
        id,
        VolumeState::ALL,
        &[(PHASE, None), (ATTACHED_MODE, Some(mode.as_str()))],
        None,
    )?;
    Ok(accepted())
}

/// Detaches the attachment of `host` (terminate_connection) or the one
/// named (or the only one) for os-detach. Nothing attached: nothing to do.
fn detach_server(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    host: Option<&str>,
    attachment_id: Option<&str>,
) -> CResult<Response> {
    let d = st.svc.get_volume(&ctx.caller, id)?;
    if let Some(a) = attachment_id
        && !d.attachments.iter().any(|x| x.id == a)
    {
        return Err(CinderError::not_found(format!(
            "Volume attachment {a} could not be found."
        )));
    }
    let targets: Vec<String> = d
        .attachments
        .iter()
        .filter(|a| host.is_none_or(|h| a.server_id == h))
        .filter(|a| attachment_id.is_none_or(|x| a.id == x))
        .map(|a| a.server_id.clone())
        .collect();
    if d.volume.state == VolumeState::Detaching {
        // terminate_connection already started the detach.
        return Ok(accepted());
    }
    if let Some(server) = targets.first() {
        if d.volume.state != VolumeState::InUse {
            return Err(CinderError::invalid_volume(format!(
                "Volume {id} is {}; it can be detached when in-use",
                d.volume.state
            )));
        }
        st.svc.detach_volume(&ctx.caller, id, server)?;
        if d.attachments.len() <= 1 {
            let _ = st.svc.set_admin_metadata(
                &ctx.caller,
                id,
                VolumeState::ALL,
                &[(PHASE, None), (ATTACHED_MODE, None)],
                None,
            );
        }
    } else if host.is_none() {
        let _ =
            st.svc
                .set_admin_metadata(&ctx.caller, id, VolumeState::ALL, &[(PHASE, None)], None);
    }
    Ok(accepted())
}

fn reset_status(
    st: &CinderState,
    ctx: &Ctx,
    id: &str,
    args: &Map<String, Value>,
) -> CResult<Response> {
    if !ctx.caller.admin {
        return Err(CinderError::forbidden(
            "Policy doesn't allow volume_extension:volume_admin_actions:reset_status to be performed.",
        ));
    }
    if let Some(a) = args.get("attach_status")
        && !matches!(a.as_str(), Some("attached" | "detached"))
    {
        return Err(CinderError::invalid_input(format!(
            "Must specify a valid attach status: attached or detached, not {a}"
        )));
    }
    let Some(status) = args.get("status").and_then(Value::as_str) else {
        if args.contains_key("attach_status") || args.contains_key("migration_status") {
            return Ok(accepted());
        }
        return Err(CinderError::bad_request("Must specify 'status'"));
    };
    let (state, phase) = match status {
        "attaching" => (VolumeState::Reserved, Some("attaching")),
        "detaching" => (VolumeState::InUse, Some("detaching")),
        "reserved" => (VolumeState::Reserved, None),
        s => match VolumeState::parse(&super::views::store_state(s)) {
            Some(v) if !v.is_transitional() => (v, None),
            _ => {
                return Err(CinderError::invalid_input(format!(
                    "Must specify a valid status; {s:?} cannot be set here (a running job owns it or it is unknown)"
                )));
            }
        },
    };
    st.svc
        .reset_state(&ctx.caller, id, state)
        .map_err(|e| CinderError::invalid_volume(format!("cannot reset the status now: {e}")))?;
    st.svc
        .set_admin_metadata(&ctx.caller, id, VolumeState::ALL, &[(PHASE, phase)], None)?;
    Ok(accepted())
}

/// `os-volume_upload_image`: registers an image in Glance and uploads the
/// volume into it in a job; answers 202 with the image id.
async fn upload_image(
    st: &CinderState,
    ctx: &Ctx,
    i: &super::views::VolumeInfo,
    args: &Map<String, Value>,
) -> CResult<Response> {
    let text = |k: &str, default: Option<&str>| -> CResult<Option<String>> {
        match args.get(k) {
            None | Some(Value::Null) => Ok(default.map(String::from)),
            Some(Value::String(s)) if s.chars().count() <= 255 => Ok(Some(s.clone())),
            Some(v) => Err(CinderError::invalid_input(format!(
                "{k} must be a string of at most 255 characters, not {v}"
            ))),
        }
    };
    let Some(image_name) = text("image_name", None)?.filter(|n| !n.is_empty()) else {
        return Err(CinderError::bad_request(
            "No image_name was specified in request.",
        ));
    };
    let force = match args.get("force") {
        None | Some(Value::Null) => false,
        Some(v) => python_bool("force", v)?,
    };
    let protected = match args.get("protected") {
        None | Some(Value::Null) => None,
        Some(v) => Some(python_bool("protected", v)?),
    };
    let visibility = text("visibility", None)?;
    if let Some(v) = &visibility
        && !matches!(v.as_str(), "public" | "private" | "shared" | "community")
    {
        return Err(CinderError::invalid_input(format!(
            "visibility must be public, private, shared or community, not {v:?}"
        )));
    }
    let req = crate::service::UploadImage {
        image_name,
        disk_format: text("disk_format", Some("raw"))?.unwrap_or_default(),
        container_format: text("container_format", Some("bare"))?.unwrap_or_default(),
        visibility,
        protected,
        force,
    };
    let id = i.detail.volume.id.clone();
    let status = super::views::cinder_status(&i.detail.volume, &i.admin_meta);
    if !(status == "available" || (force && status == "in-use")) {
        return Err(CinderError::invalid_volume(format!(
            "Volume {id} status must be available{}, but the current status is: {status}",
            if force { " or in-use" } else { "" }
        )));
    }
    let (d, img) = st
        .svc
        .upload_to_image(&ctx.caller, &id, req.clone(), ctx.token.as_deref())
        .await?;
    let v = &d.volume;
    Ok((
        ACCEPTED,
        Json(json!({"os-volume_upload_image": {
            "id": v.id,
            "updated_at": v.modified_at,
            "status": "uploading",
            "display_description": v.description,
            "size": v.size_gib,
            "volume_type": v.volume_type,
            "image_id": img.id,
            "container_format": req.container_format,
            "disk_format": req.disk_format,
            "image_name": req.image_name,
            "visibility": img.visibility,
            "protected": img.extra.get("protected").cloned().unwrap_or(Value::Bool(false)),
        }})),
    )
        .into_response())
}
