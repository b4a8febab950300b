//! The Samsung Cloud Platform "virtualserver" block-storage dialect,
//! versions 1.0 to 1.3: routes, signature auth, version negotiation, and
//! the one function that turns service errors into SCP error bodies.

pub mod auth;
pub mod openapi;
mod transfers;
pub mod version;
pub mod views;

use super::{BodyError, RawBody, query_bool, query_pairs};
use crate::clock::SharedClock;
use crate::config::Credential;
use crate::service::{Caller, CreateSnapshot, CreateVolume, ErrorKind, Service, ServiceError};
use crate::store::model::{SnapshotQuery, SortDir, Tag, VolumeQuery, VolumeSortKey, VolumeState};
use auth::{AuthFailure, SignedRequest, Verifier};
use axum::extract::{DefaultBodyLimit, Extension, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::{Arc, RwLock};
use version::{ApiVersion, VersionTable};

pub struct ScpState {
    pub svc: Arc<Service>,
    pub clock: SharedClock,
    versions: RwLock<Arc<VersionTable>>,
    verifier: RwLock<Arc<Verifier>>,
    scheme: String,
}

impl ScpState {
    pub fn new(
        svc: Arc<Service>,
        clock: SharedClock,
        versions: VersionTable,
        creds: &[Credential],
        window_secs: i64,
        scheme: &str,
    ) -> ScpState {
        ScpState {
            svc,
            clock,
            versions: RwLock::new(Arc::new(versions)),
            verifier: RwLock::new(Arc::new(Verifier::new(creds, window_secs))),
            scheme: scheme.to_string(),
        }
    }

    fn versions(&self) -> Arc<VersionTable> {
        self.versions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn verifier(&self) -> Arc<Verifier> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the version table (live reload).
    pub fn set_versions(&self, table: VersionTable) {
        *self.versions.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
    }

    /// Replaces the credentials and the signature window (live reload);
    /// signatures already seen stay refused as replays.
    pub fn set_credentials(&self, creds: &[Credential], window_secs: i64) {
        let next = Arc::new(self.verifier().rekeyed(creds, window_secs));
        *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = next;
    }
}

/// What authentication and negotiation established for a request.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub version: ApiVersion,
}

/// An SCP error answer: `{"errors":[{"code","title","detail"}]}`.
#[derive(Debug)]
pub struct ScpError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ScpError {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ScpError {
        ScpError {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn bad_request(detail: impl Into<String>) -> ScpError {
        ScpError::new(StatusCode::BAD_REQUEST, "BadRequest", detail)
    }

    fn not_found(detail: impl Into<String>) -> ScpError {
        ScpError::new(StatusCode::NOT_FOUND, "NotFound", detail)
    }
}

impl IntoResponse for ScpError {
    fn into_response(self) -> Response {
        let title = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let body = json!({"errors": [{
            "code": self.code,
            "title": title,
            "detail": self.detail,
        }]});
        (self.status, Json(body)).into_response()
    }
}

/// The one place service errors become SCP answers. Internal errors are
/// logged whole and answered without their details.
impl From<ServiceError> for ScpError {
    fn from(e: ServiceError) -> Self {
        match e.kind() {
            ErrorKind::NotFound => ScpError::not_found(capitalise(&e.to_string())),
            ErrorKind::Invalid => ScpError::bad_request(e.to_string()),
            ErrorKind::Conflict => {
                ScpError::new(StatusCode::CONFLICT, "Conflict", capitalise(&e.to_string()))
            }
            ErrorKind::QuotaExceeded => ScpError::new(
                StatusCode::BAD_REQUEST,
                "QuotaExceeded",
                capitalise(&e.to_string()),
            ),
            ErrorKind::Busy => {
                ScpError::new(StatusCode::CONFLICT, "Conflict", capitalise(&e.to_string()))
            }
            ErrorKind::NoCapacity => ScpError::new(
                StatusCode::BAD_REQUEST,
                "InsufficientCapacity",
                capitalise(&e.to_string()),
            ),
            ErrorKind::Unavailable => ScpError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The service is shutting down; retry shortly.",
            ),
            ErrorKind::ImageService => {
                tracing::error!(error = %e, "image service failure");
                ScpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "ImageServiceError",
                    crate::service::IMAGE_SERVICE_MESSAGE,
                )
            }
            ErrorKind::BackendUnavailable => {
                tracing::warn!(error = %e, "request refused: backend unusable");
                ScpError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "BackendUnavailable",
                    format!(
                        "{}; nothing was changed. Retry once it is back.",
                        capitalise(&e.to_string())
                    ),
                )
            }
            ErrorKind::InsufficientStorage => {
                tracing::warn!(error = %crate::service::reason(&e), "request refused: disk full");
                ScpError::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "InsufficientStorage",
                    "The host's data disk is full, so the change was not saved; nothing was changed. Retry once space is freed.",
                )
            }
            ErrorKind::Internal => {
                let mut chain = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    chain += &format!(": {s}");
                    src = s.source();
                }
                tracing::error!(error = %chain, "internal error");
                ScpError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    "The server could not complete the request; see its log for the request id.",
                )
            }
        }
    }
}

impl From<BodyError> for ScpError {
    fn from(e: BodyError) -> Self {
        match e {
            BodyError::TooLarge(_) => ScpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PayloadTooLarge",
                "The request body is too large.",
            ),
            BodyError::Unreadable(m) | BodyError::Malformed(m) => ScpError::bad_request(m),
            BodyError::Field { field, message } => {
                ScpError::bad_request(format!("{field}: {message}"))
            }
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// The dialect's router. `GET /` is open; everything else is signed.
pub fn router(state: Arc<ScpState>, max_body: usize) -> Router {
    let signed = Router::new()
        .route("/v1/volumes", get(list_volumes).post(create_volume))
        .route("/v1/volumes/quota-sets", get(quota_sets))
        .route(
            "/v1/volumes/{id}",
            get(show_volume).put(update_volume).delete(delete_volume),
        )
        .route("/v1/volumes/{id}/size", put(extend_volume))
        .route("/v1/volumes/{id}/qos", put(set_qos))
        .route("/v1/volumes/{id}/servers", post(attach))
        .route("/v1/volumes/{id}/revert", post(revert_volume))
        .route("/v1/snapshots", get(list_snapshots).post(create_snapshot))
        .route(
            "/v1/snapshots/{id}",
            get(show_snapshot)
                .put(update_snapshot)
                .delete(delete_snapshot),
        )
        .route("/blockd/v1/snapshots/{id}", get(native_snapshot))
        .route("/blockd/v1/snapshots/{id}/verify", post(verify_snapshot))
        .route("/v1/volumes/{id}/servers/{server_id}", delete(detach))
        .route(
            "/v1/servers/{server_id}/volumes",
            get(server_volumes).post(server_attach),
        )
        .route(
            "/v1/servers/{server_id}/volumes/{id}",
            get(server_volume)
                .put(server_volume_update)
                .delete(server_detach),
        )
        .route("/v1/volume-types", get(list_types))
        .route("/v1/volume-types/default", get(default_type))
        .route("/v1/volume-types/{id}", get(show_type))
        .route("/blockd/v1/volumes/{id}", get(native_volume))
        .merge(transfers::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/", get(versions))
        .merge(signed)
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn no_route() -> ScpError {
    ScpError::not_found("No such resource.")
}

async fn bad_method() -> ScpError {
    ScpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        "This method is not allowed on this resource.",
    )
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn authenticate(State(st): State<Arc<ScpState>>, mut req: Request, next: Next) -> Response {
    match authorise(&st, &req) {
        Ok(ctx) => {
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn authorise(st: &ScpState, req: &Request) -> Result<Ctx, ScpError> {
    let h = req.headers();
    let unauthorised = |f: AuthFailure| {
        tracing::info!(reason = ?f, "authentication refused");
        ScpError::new(StatusCode::UNAUTHORIZED, "Unauthorized", f.public_message())
    };
    // Each signed header must appear once; two values would be ambiguous.
    let need = |name: &'static str| {
        let mut all = h.get_all(name).iter();
        match (all.next().and_then(|v| v.to_str().ok()), all.next()) {
            (Some(v), None) => Ok(v),
            (Some(_), Some(_)) => Err(AuthFailure::Duplicate(name)),
            (None, _) => Err(AuthFailure::MissingHeader(name)),
        }
    };
    let access_key = need("Scp-AccessKey").map_err(unauthorised)?;
    let signature = need("Scp-Signature").map_err(unauthorised)?;
    let timestamp = need("Scp-Timestamp").map_err(unauthorised)?;
    let host = header_str(h, "host")
        .map(String::from)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}://{host}{target}", st.scheme);
    let signed = SignedRequest {
        method: req.method().as_str(),
        url: &url,
        timestamp,
        access_key,
        account_id: header_str(h, "Scp-AccountId").unwrap_or(""),
        client_type: header_str(h, "Scp-ClientType").unwrap_or(""),
    };
    let verifier = st.verifier();
    let cred = verifier
        .verify(&signed, signature, st.clock.now().timestamp_millis())
        .map_err(unauthorised)?;
    let table = st.versions();
    let version = table
        .negotiate(
            header_str(h, "Scp-Api-Version"),
            st.clock.now().date_naive(),
        )
        .map_err(|r| {
            ScpError::new(
                StatusCode::NOT_ACCEPTABLE,
                "UnsupportedApiVersion",
                r.message(table.latest().as_str()),
            )
        })?;
    Ok(Ctx {
        caller: Caller {
            project_id: cred.project_id.clone(),
            user_id: cred.user_id.clone(),
            admin: false,
        },
        version,
    })
}

async fn versions(State(st): State<Arc<ScpState>>, headers: HeaderMap) -> Json<Value> {
    let host = header_str(&headers, "host").unwrap_or("localhost");
    let href = format!("{}://{host}/", st.scheme);
    let list: Vec<Value> = st
        .versions()
        .entries()
        .iter()
        .map(|v| {
            json!({
                "id": format!("v{}", v.id),
                "status": v.status.as_str(),
                "not_before": v.not_before,
                "links": [{"href": href, "rel": "self"}],
            })
        })
        .collect();
    Json(json!({ "versions": list }))
}

/// An empty answer that still says it is JSON (clients insist).
fn empty(status: StatusCode) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")]).into_response()
}

fn check_name(name: &str) -> Result<(), ScpError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == ' ');
    if name.is_empty() || name.len() > 255 || !ok_chars {
        return Err(ScpError::bad_request(
            "name: must be 1-255 characters of letters, digits, '-', '_' and spaces",
        ));
    }
    Ok(())
}

fn check_size(size: u64) -> Result<(), ScpError> {
    if size < 8 || !size.is_multiple_of(8) {
        return Err(ScpError::bad_request(format!(
            "size: volume size of disk should be at least 8 and divisible by 8 (got {size})"
        )));
    }
    Ok(())
}

fn check_limit(field: &str, v: Option<i64>) -> Result<Option<u32>, ScpError> {
    match v {
        None => Ok(None),
        Some(n) if (1..=i32::MAX as i64).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(ScpError::bad_request(format!(
            "{field}: must be between 1 and {} (got {n})",
            i32::MAX
        ))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Tag)]
struct TagIn {
    #[schema(min_length = 1, max_length = 255)]
    key: String,
    value: Option<String>,
}

/// VolumeCreateRequest (1.0, 1.1).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeCreateRequest)]
struct CreateReq {
    #[schema(
        required = true,
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[a-zA-Z0-9-_ ]*$"
    )]
    name: Option<String>,
    #[schema(required = true, nullable = false, minimum = 8, multiple_of = 8)]
    size: Option<u64>,
    snapshot_id: Option<String>,
    tags: Option<Vec<TagIn>>,
    volume_type: Option<String>,
    /// blockd's extension: fill the volume from this Glance image.
    image_id: Option<String>,
}

/// VolumeCreateRequestV1Dot2 (1.2, 1.3).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeCreateRequestV1Dot2)]
struct CreateReqV1Dot2 {
    #[schema(
        required = true,
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[a-zA-Z0-9-_ ]*$"
    )]
    name: Option<String>,
    #[schema(required = true, nullable = false, minimum = 8, multiple_of = 8)]
    size: Option<u64>,
    snapshot_id: Option<String>,
    tags: Option<Vec<TagIn>>,
    volume_type: Option<String>,
    max_iops: Option<i64>,
    max_throughput: Option<i64>,
    /// blockd's extension: fill the volume from this Glance image.
    image_id: Option<String>,
}

/// Reads a volume create body as `ver` defines it (public for the fuzz targets).
pub fn create_request(body: &RawBody, ver: ApiVersion) -> Result<CreateVolume, ScpError> {
    let r: CreateReqV1Dot2 = if ver.has_qos() {
        body.parse()?
    } else {
        let r: CreateReq = body.parse()?;
        CreateReqV1Dot2 {
            name: r.name,
            size: r.size,
            snapshot_id: r.snapshot_id,
            tags: r.tags,
            volume_type: r.volume_type,
            max_iops: None,
            max_throughput: None,
            image_id: r.image_id,
        }
    };
    let name = required("name", r.name)?;
    check_name(&name)?;
    let size = required("size", r.size)?;
    check_size(size)?;
    let tags = r.tags.unwrap_or_default();
    if tags.len() > 50 {
        return Err(ScpError::bad_request("tags: at most 50 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.key.is_empty() || t.key.len() > 255 {
            return Err(ScpError::bad_request(format!(
                "tags[{i}].key: must be 1-255 characters"
            )));
        }
        if t.value.as_ref().is_some_and(|v| v.len() > 255) {
            return Err(ScpError::bad_request(format!(
                "tags[{i}].value: at most 255 characters"
            )));
        }
    }
    if let Some(s) = &r.snapshot_id {
        check_uuid("snapshot_id", s)?;
    }
    if let Some(i) = &r.image_id {
        check_uuid("image_id", i)?;
        if r.snapshot_id.is_some() {
            return Err(ScpError::bad_request(
                "image_id: give either snapshot_id or image_id, not both",
            ));
        }
    }
    Ok(CreateVolume {
        name,
        description: String::new(),
        size_gib: size,
        volume_type: r.volume_type,
        snapshot_id: r.snapshot_id,
        source_volid: None,
        tags: tags
            .into_iter()
            .map(|t| Tag {
                key: t.key,
                value: t.value,
            })
            .collect(),
        max_iops: check_limit("max_iops", r.max_iops)?,
        max_throughput: check_limit("max_throughput", r.max_throughput)?,
        image: r.image_id.map(|id| crate::service::ImageSource {
            image: crate::images::Image {
                id,
                ..Default::default()
            },
            token: None,
        }),
    })
}

async fn create_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let req = create_request(&body?, ctx.version)?;
    if let Some(t) = &req.volume_type
        && st.svc.volume_type(t).is_none()
    {
        return Err(ScpError::bad_request(format!(
            "volume_type: {t:?} is not a volume type here"
        )));
    }
    let mut req = req;
    if let Some(src) = req.image.take() {
        let img = st
            .svc
            .lookup_image(&ctx.caller, &src.image.id, None)
            .await?;
        req.image = Some(crate::service::ImageSource {
            image: img,
            token: None,
        });
    }
    let d = st.svc.create_volume(&ctx.caller, req)?;
    Ok((StatusCode::ACCEPTED, Json(views::volume(&d, ctx.version))).into_response())
}

/// Ids are our own UUIDs; anything else cannot name a volume.
/// A body field the request must carry.
pub(super) fn required<T>(field: &str, v: Option<T>) -> Result<T, ScpError> {
    v.ok_or_else(|| ScpError::bad_request(format!("{field}: is required")))
}

/// A body field that must hold a UUID.
pub(super) fn check_uuid(field: &str, v: &str) -> Result<(), ScpError> {
    match uuid::Uuid::parse_str(v) {
        Ok(_) => Ok(()),
        Err(_) => Err(ScpError::bad_request(format!("{field}: is not a UUID"))),
    }
}

fn volume_id(id: &str) -> Result<&str, ScpError> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(id),
        Err(_) => Err(ScpError::not_found(format!("Volume {id} not found"))),
    }
}

async fn show_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ScpError> {
    let d = st.svc.get_volume(&ctx.caller, volume_id(&id)?)?;
    Ok(Json(views::volume(&d, ctx.version)))
}

/// Reads the query of `GET /v1/volumes` (public for the fuzz targets).
pub fn list_query(raw: Option<&str>) -> Result<VolumeQuery, ScpError> {
    let mut q = VolumeQuery::default();
    for (k, v) in query_pairs(raw, 50).map_err(ScpError::bad_request)? {
        if page_param(
            &k,
            &v,
            &mut q.limit,
            &mut q.offset,
            &mut q.marker,
            &mut q.with_count,
        )? {
            continue;
        }
        match k.as_str() {
            "sort" => q.sort = parse_sort(&v)?,
            "name" => q.name = Some(v),
            "state" => {
                if VolumeState::parse(&v).is_none() {
                    return Err(ScpError::bad_request(format!(
                        "state: {v:?} is not a volume state"
                    )));
                }
                q.state = Some(v)
            }
            "bootable" => q.bootable = query_bool("bootable", &v).map_err(ScpError::bad_request)?,
            other => {
                return Err(ScpError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    Ok(q)
}

/// The paging parameters both lists share. Returns false for other keys.
fn page_param(
    k: &str,
    v: &str,
    limit: &mut u32,
    offset: &mut u64,
    marker: &mut Option<String>,
    with_count: &mut bool,
) -> Result<bool, ScpError> {
    match k {
        "with_count" => {
            *with_count = query_bool("with_count", v)
                .map_err(ScpError::bad_request)?
                .unwrap_or(true)
        }
        "limit" => {
            *limit = match v.parse::<u32>() {
                Ok(n) if (1..=1000).contains(&n) => n,
                _ => {
                    return Err(ScpError::bad_request(format!(
                        "limit: must be an integer from 1 to 1000 (got {v:?})"
                    )));
                }
            }
        }
        "offset" => {
            *offset = v.parse::<u64>().map_err(|_| {
                ScpError::bad_request(format!(
                    "offset: must be a non-negative integer (got {v:?})"
                ))
            })?
        }
        "marker" => *marker = Some(v.to_string()).filter(|s| !s.is_empty()),
        _ => return Ok(false),
    }
    Ok(true)
}

fn parse_sort(v: &str) -> Result<Vec<(VolumeSortKey, SortDir)>, ScpError> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, dir) = part.split_once(':').unwrap_or((part, "asc"));
        let k = VolumeSortKey::parse(key).ok_or_else(|| {
            ScpError::bad_request(format!(
                "sort: unknown key {key:?} (use created_at, modified_at, name, size, state, id)"
            ))
        })?;
        let d = match dir.to_ascii_lowercase().as_str() {
            "asc" => SortDir::Asc,
            "desc" => SortDir::Desc,
            _ => {
                return Err(ScpError::bad_request(format!(
                    "sort: direction {dir:?} must be asc or desc"
                )));
            }
        };
        if out.iter().any(|(o, _)| *o == k) {
            return Err(ScpError::bad_request(format!("sort: key {key:?} repeated")));
        }
        out.push((k, d));
    }
    if out.is_empty() {
        return Err(ScpError::bad_request("sort: no sort key given"));
    }
    Ok(out)
}

async fn list_volumes(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ScpError> {
    let q = list_query(raw.as_deref())?;
    let page = st.svc.list_volumes(&ctx.caller, q)?;
    Ok(Json(views::volume_list(
        &page.items,
        page.count,
        ctx.version,
    )))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeUpdateRequest)]
struct UpdateReq {
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 255,
        pattern = r"^[a-zA-Z0-9-_ ]*$"
    )]
    name: Option<String>,
}

async fn update_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Json<Value>, ScpError> {
    let id = volume_id(&id)?;
    let r: UpdateReq = body?.parse()?;
    if let Some(n) = &r.name {
        check_name(n)?;
    }
    let d = st.svc.update_volume(&ctx.caller, id, r.name, None)?;
    Ok(Json(views::volume(&d, ctx.version)))
}

async fn delete_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ScpError> {
    let id = volume_id(&id)?;
    let mut cascade = false;
    for (k, v) in query_pairs(raw.as_deref(), 10).map_err(ScpError::bad_request)? {
        match k.as_str() {
            "cascade" => {
                cascade = query_bool("cascade", &v)
                    .map_err(ScpError::bad_request)?
                    .unwrap_or(false)
            }
            other => {
                return Err(ScpError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    st.svc.delete_volume(&ctx.caller, id, cascade)?;
    Ok(empty(StatusCode::ACCEPTED))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeExtendRequest)]
struct ExtendReq {
    #[schema(required = true, nullable = false, minimum = 8, multiple_of = 8)]
    size: Option<u64>,
}

async fn extend_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let id = volume_id(&id)?;
    let r: ExtendReq = body?.parse()?;
    let size = required("size", r.size)?;
    check_size(size)?;
    let d = st.svc.extend_volume(&ctx.caller, id, size)?;
    Ok((StatusCode::ACCEPTED, Json(views::volume(&d, ctx.version))).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeQosRequest)]
struct QosReq {
    max_iops: Option<i64>,
    max_throughput: Option<i64>,
}

async fn set_qos(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    if !ctx.version.has_qos() {
        return Err(ScpError::not_found(format!(
            "PUT /v1/volumes/{{id}}/qos needs API version 1.2 or later (this request is {})",
            ctx.version.as_str()
        )));
    }
    let id = volume_id(&id)?;
    let r: QosReq = body?.parse()?;
    let iops = check_limit("max_iops", r.max_iops)?;
    let tput = check_limit("max_throughput", r.max_throughput)?;
    if iops.is_none() && tput.is_none() {
        return Err(ScpError::bad_request(
            "body: give max_iops, max_throughput or both",
        ));
    }
    st.svc.set_qos(&ctx.caller, id, iops, tput)?;
    Ok(empty(StatusCode::OK))
}

async fn list_types(State(st): State<Arc<ScpState>>) -> Json<Value> {
    let types: Vec<_> = st
        .svc
        .volume_types()
        .iter()
        .map(|t| views::volume_type(t, st.svc.type_capacity(t)))
        .collect();
    Json(json!({ "volume_types": types }))
}

async fn default_type(State(st): State<Arc<ScpState>>) -> Json<views::VolumeTypeView> {
    let t = st.svc.default_volume_type();
    Json(views::volume_type(t, st.svc.type_capacity(t)))
}

async fn show_type(
    State(st): State<Arc<ScpState>>,
    Path(id): Path<String>,
) -> Result<Json<views::VolumeTypeView>, ScpError> {
    st.svc
        .volume_type(&id)
        .map(|t| Json(views::volume_type(t, st.svc.type_capacity(t))))
        .ok_or_else(|| ScpError::not_found(format!("Volume type {id} not found")))
}

async fn quota_sets(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
) -> Result<Json<views::QuotaSet>, ScpError> {
    let q = st.svc.quota(&ctx.caller)?;
    Ok(Json(views::quota_set(&ctx.caller.project_id, &q)))
}

/// blockd's own view of a volume: what the SCP schema has no room for
/// (error reasons, where the bytes live, recent jobs).
async fn native_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ScpError> {
    let id = volume_id(&id)?;
    let d = st.svc.get_volume(&ctx.caller, id)?;
    let location = st.svc.location(&ctx.caller, id)?.map(|l| match l {
        crate::backend::Location::File(p) => json!({"kind": "file", "path": p}),
        crate::backend::Location::BlockDevice(p) => json!({"kind": "block_device", "path": p}),
    });
    let jobs = st.svc.jobs_for_volume(&ctx.caller, id)?;
    let export = st
        .svc
        .export_of(&ctx.caller, id)?
        .map(|x| json!({"kind": x.kind, "host_path": x.host_path, "read_only": x.read_only, "created_at": x.created_at}));
    let v = &d.volume;
    Ok(Json(json!({
        "id": v.id,
        "project_id": v.project_id,
        "state": v.state.as_str(),
        "error_reason": v.error_reason,
        "size_gib": v.size_gib,
        "backend": v.backend,
        "volume_type": v.volume_type,
        "location": location,
        "export": export,
        "attachments": d.attachments,
        "jobs": jobs,
    })))
}

fn check_server_id(s: &str) -> Result<(), ScpError> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(ScpError::bad_request(
            "server_id: must be 1-255 characters without control characters or '/'",
        ));
    }
    Ok(())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeAttachRequest)]
struct AttachReq {
    #[schema(required = true, nullable = false, min_length = 1, max_length = 255)]
    server_id: Option<String>,
    delete_on_termination: Option<bool>,
    /// blockd extension: `loop` or `vhost-user-blk`.
    export_kind: Option<String>,
    /// blockd extension: the guest sees the volume read-only.
    read_only: Option<bool>,
}

async fn attach(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let id = volume_id(&id)?;
    let r: AttachReq = body?.parse()?;
    let server = required("server_id", r.server_id)?;
    check_server_id(&server)?;
    let a = st.svc.attach_volume_with(
        &ctx.caller,
        id,
        &server,
        r.delete_on_termination.unwrap_or(false),
        &crate::service::AttachOptions {
            export_kind: r.export_kind,
            read_only: r.read_only.unwrap_or(false),
        },
    )?;
    Ok((StatusCode::ACCEPTED, Json(views::attach(&a))).into_response())
}

async fn detach(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path((id, server)): Path<(String, String)>,
) -> Result<Response, ScpError> {
    let id = volume_id(&id)?;
    check_server_id(&server)?;
    st.svc.detach_volume(&ctx.caller, id, &server)?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn server_volumes(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(server): Path<String>,
) -> Result<Json<Value>, ScpError> {
    check_server_id(&server)?;
    let all = st.svc.server_attachments(&ctx.caller, &server)?;
    let items: Vec<_> = all.iter().map(views::server_volume).collect();
    Ok(Json(json!({ "volumes": items })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServerVolumeCreateRequest)]
struct ServerAttachReq {
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    volume_id: Option<String>,
    device: Option<String>,
    delete_on_termination: Option<bool>,
}

async fn server_attach(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(server): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    check_server_id(&server)?;
    let r: ServerAttachReq = body?.parse()?;
    let vid = required("volume_id", r.volume_id)?;
    let vid = volume_id(&vid)?;
    if let Some(dev) = &r.device {
        // Device names are assigned by blockd so they never collide; a
        // requested name is honoured only if it is the one assigned.
        if !dev.starts_with("/dev/vd") {
            return Err(ScpError::bad_request("device: must look like /dev/vdX"));
        }
    }
    let a = st.svc.attach_volume(
        &ctx.caller,
        vid,
        &server,
        r.delete_on_termination.unwrap_or(false),
    )?;
    Ok((StatusCode::ACCEPTED, Json(views::server_volume(&a))).into_response())
}

async fn server_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path((server, id)): Path<(String, String)>,
) -> Result<Json<views::ServerVolume>, ScpError> {
    check_server_id(&server)?;
    let id = volume_id(&id)?;
    let a = st.svc.attachment(&ctx.caller, &server, id)?;
    Ok(Json(views::server_volume(&a)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ServerVolumeUpdateRequest)]
struct ServerVolumeUpdate {
    delete_on_termination: Option<bool>,
}

async fn server_volume_update(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path((server, id)): Path<(String, String)>,
    body: Result<RawBody, BodyError>,
) -> Result<Json<views::ServerVolume>, ScpError> {
    check_server_id(&server)?;
    let id = volume_id(&id)?;
    let r: ServerVolumeUpdate = body?.parse()?;
    let dot = required("delete_on_termination", r.delete_on_termination)?;
    let a = st
        .svc
        .set_delete_on_termination(&ctx.caller, &server, id, dot)?;
    Ok(Json(views::server_volume(&a)))
}

async fn server_detach(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path((server, id)): Path<(String, String)>,
) -> Result<Response, ScpError> {
    check_server_id(&server)?;
    let id = volume_id(&id)?;
    st.svc.detach_volume(&ctx.caller, id, &server)?;
    Ok(empty(StatusCode::ACCEPTED))
}

fn snapshot_id(id: &str) -> Result<&str, ScpError> {
    match uuid::Uuid::parse_str(id) {
        Ok(_) => Ok(id),
        Err(_) => Err(ScpError::not_found(format!("Snapshot {id} not found"))),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SnapshotCreateRequest)]
struct SnapshotCreateReq {
    #[schema(required = true, nullable = false)]
    name: Option<String>,
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    volume_id: Option<String>,
    description: Option<String>,
    force: Option<bool>,
    metadata: Option<Value>,
}

async fn create_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let r: SnapshotCreateReq = body?.parse()?;
    let name = required("name", r.name)?;
    check_name(&name)?;
    let vid = required("volume_id", r.volume_id)?;
    let vid = volume_id(&vid)?;
    if r.description.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(ScpError::bad_request("description: at most 255 characters"));
    }
    let metadata = match r.metadata {
        None | Some(Value::Null) => None,
        Some(m @ (Value::Object(_) | Value::String(_))) => Some(m.to_string()),
        Some(_) => {
            return Err(ScpError::bad_request(
                "metadata: must be an object (or a string)",
            ));
        }
    };
    if metadata.as_ref().is_some_and(|m| m.len() > 8192) {
        return Err(ScpError::bad_request("metadata: at most 8 KiB"));
    }
    let s = st.svc.create_snapshot(
        &ctx.caller,
        CreateSnapshot {
            volume_id: vid.to_string(),
            name,
            description: r.description,
            force: r.force.unwrap_or(false),
            metadata,
        },
    )?;
    Ok((StatusCode::ACCEPTED, Json(views::snapshot(&s))).into_response())
}

/// Reads the query of `GET /v1/snapshots` (public for the fuzz targets).
pub fn snapshot_query(raw: Option<&str>, version: ApiVersion) -> Result<SnapshotQuery, ScpError> {
    let mut q = SnapshotQuery {
        limit: 20,
        with_count: true,
        ..Default::default()
    };
    for (k, v) in query_pairs(raw, 50).map_err(ScpError::bad_request)? {
        if page_param(
            &k,
            &v,
            &mut q.limit,
            &mut q.offset,
            &mut q.marker,
            &mut q.with_count,
        )? {
            continue;
        }
        match k.as_str() {
            "volume_id" => q.volume_id = Some(v).filter(|s| !s.is_empty()),
            "name" => q.name = Some(v),
            "sort" if version >= ApiVersion::V1_3 => q.sort = parse_sort(&v)?,
            other => {
                return Err(ScpError::bad_request(format!(
                    "{other}: unknown query parameter"
                )));
            }
        }
    }
    Ok(q)
}

async fn list_snapshots(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Value>, ScpError> {
    let q = snapshot_query(raw.as_deref(), ctx.version)?;
    let page = st.svc.list_snapshots(&ctx.caller, q)?;
    Ok(Json(views::snapshot_list(&page.items, page.count)))
}

async fn show_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<views::SnapshotDetail>, ScpError> {
    let s = st.svc.get_snapshot(&ctx.caller, snapshot_id(&id)?)?;
    Ok(Json(views::snapshot(&s)))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SnapshotUpdateRequest)]
struct SnapshotUpdateReq {
    name: Option<String>,
    description: Option<String>,
}

async fn update_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Json<views::SnapshotDetail>, ScpError> {
    let id = snapshot_id(&id)?;
    let r: SnapshotUpdateReq = body?.parse()?;
    if let Some(n) = &r.name {
        check_name(n)?;
    }
    if r.description.as_ref().is_some_and(|d| d.len() > 255) {
        return Err(ScpError::bad_request("description: at most 255 characters"));
    }
    let s = st
        .svc
        .update_snapshot(&ctx.caller, id, r.name.as_deref(), r.description.as_deref())?;
    Ok(Json(views::snapshot(&s)))
}

async fn delete_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Response, ScpError> {
    st.svc.delete_snapshot(&ctx.caller, snapshot_id(&id)?)?;
    Ok(empty(StatusCode::ACCEPTED))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = VolumeRevertRequest)]
struct RevertReq {
    #[schema(
        required = true,
        nullable = false,
        pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    )]
    snapshot_id: Option<String>,
}

async fn revert_volume(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
    body: Result<RawBody, BodyError>,
) -> Result<Response, ScpError> {
    let id = volume_id(&id)?;
    let r: RevertReq = body?.parse()?;
    let sid = required("snapshot_id", r.snapshot_id)?;
    check_uuid("snapshot_id", &sid)?;
    st.svc.revert_volume(&ctx.caller, id, &sid)?;
    Ok(empty(StatusCode::ACCEPTED))
}

async fn verify_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ScpError> {
    let id = snapshot_id(&id)?.to_string();
    // Re-hashing reads the whole snapshot: off the request threads.
    let svc = st.svc.clone();
    let r = tokio::task::spawn_blocking(move || svc.verify_snapshot(&ctx.caller, &id))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "verify task failed");
            ScpError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "The server could not complete the request; see its log for the request id.",
            )
        })??;
    Ok(Json(json!({
        "ok": r.ok,
        "first_bad_chunk": r.first_bad_chunk,
        "chunks": r.chunks,
    })))
}

/// blockd's own view of a snapshot: its checksum, error reason and, while
/// it is copied, the progress.
async fn native_snapshot(
    State(st): State<Arc<ScpState>>,
    Extension(ctx): Extension<Ctx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ScpError> {
    let id = snapshot_id(&id)?;
    let s = st.svc.get_snapshot(&ctx.caller, id)?;
    let progress = st
        .svc
        .snapshot_progress(&ctx.caller, id)?
        .map(|(done, total)| json!({"bytes_done": done, "bytes_total": total}));
    Ok(Json(json!({
        "id": s.id,
        "volume_id": s.volume_id,
        "status": s.status.as_str(),
        "size_gib": s.size_gib,
        "checksum": s.checksum,
        "error_reason": s.error_reason,
        "progress": progress,
    })))
}
