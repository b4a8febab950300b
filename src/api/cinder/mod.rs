//! The OpenStack Cinder dialect (Block Storage API v3 with microversions,
//! and v2): its own listener, version discovery, token auth, the project
//! in the URL, and routes over the same service as the SCP dialect, so one
//! volume is one volume whichever dialect asks.

pub mod actions;
pub mod auth;
pub mod config;
pub mod errors;
pub mod microversion;
pub mod misc;
pub mod openapi;
pub mod snapshots;
pub mod transfers;
pub mod views;
pub mod volumes;

use crate::api::RequestId;
use crate::service::{Caller, Service};
use auth::TokenValidator;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use errors::CinderError;
use microversion::{Microversion, Negotiation};
use std::sync::Arc;

pub use errors::CResult;

pub struct CinderState {
    pub svc: Arc<Service>,
    validator: Arc<dyn TokenValidator>,
    pub zone: String,
    max_body: usize,
}

impl CinderState {
    pub fn new(
        svc: Arc<Service>,
        validator: Arc<dyn TokenValidator>,
        cfg: &config::CinderConfig,
    ) -> CinderState {
        CinderState {
            svc,
            validator,
            zone: cfg.availability_zone.clone(),
            max_body: cfg.max_body_bytes,
        }
    }
}

/// What the front door established for a request.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub caller: Caller,
    pub version: Microversion,
    /// The v2 API: no microversions, 3.0 views.
    pub v2: bool,
    /// `http://host/v3/project` (or without the project when omitted).
    pub base: String,
    /// `http://host/project`, for bookmark links.
    pub bookmark: String,
    /// The caller's X-Auth-Token, passed on to the image service.
    pub token: Option<String>,
}

impl Ctx {
    pub fn at_least(&self, v: Microversion) -> bool {
        !self.v2 && self.version.at_least(v)
    }
}

/// Marks an answer as a Cinder fault already, so the front door leaves it.
#[derive(Clone, Copy)]
pub struct Fault;

/// Collections that can follow `/v3/` directly (3.67, no project id).
const COLLECTIONS: &[&str] = &[
    "volumes",
    "snapshots",
    "types",
    "os-quota-sets",
    "limits",
    "os-availability-zone",
    "extensions",
    "backups",
    "attachments",
    "os-volume-transfer",
    "volume-transfers",
    "groups",
    "group_types",
    "group_snapshots",
    "messages",
    "clusters",
    "workers",
    "os-services",
    "scheduler-stats",
    "capabilities",
    "default-types",
    "qos-specs",
    "os-hosts",
    "manageable_volumes",
    "manageable_snapshots",
    "resource_filters",
    "os-quota-class-sets",
    "consistencygroups",
    "cgsnapshots",
];

/// Declares the API routes once: the router gets each of them, and
/// `ROUTE_PATHS` lists their paths, which the OpenAPI test compares with
/// the document.
macro_rules! route_table {
    ($($path:literal => $handler:expr,)*) => {
        /// Every path the API router serves, below the version and project
        /// prefix that the front door strips.
        pub const ROUTE_PATHS: &[&str] = &[$($path),*];

        fn api_routes(r: Router<Arc<CinderState>>) -> Router<Arc<CinderState>> {
            r$(.route($path, $handler))*
        }
    };
}

route_table! {
    "/volumes" => get(volumes::list_summary).post(volumes::create),
    "/volumes/detail" => get(volumes::list_detail),
    "/volumes/summary" => get(volumes::summary),
    "/volumes/{id}" => get(volumes::show)
        .put(volumes::update)
        .delete(volumes::delete),
    "/volumes/{id}/action" => post(actions::action),
    "/volumes/{id}/metadata" => get(volumes::metadata_show)
        .post(volumes::metadata_merge)
        .put(volumes::metadata_replace),
    "/volumes/{id}/metadata/{key}" => get(volumes::metadata_key_show)
        .put(volumes::metadata_key_put)
        .delete(volumes::metadata_key_delete),
    "/snapshots" => get(snapshots::list_summary).post(snapshots::create),
    "/snapshots/detail" => get(snapshots::list_detail),
    "/snapshots/{id}" => get(snapshots::show)
        .put(snapshots::update)
        .delete(snapshots::delete),
    "/snapshots/{id}/metadata" => get(snapshots::metadata_show)
        .post(snapshots::metadata_merge)
        .put(snapshots::metadata_replace),
    "/snapshots/{id}/metadata/{key}" => get(snapshots::metadata_key_show)
        .put(snapshots::metadata_key_put)
        .delete(snapshots::metadata_key_delete),
    // Volume transfers: the old collection, and from 3.55 the new one
    // (`transfers::OLD`, `transfers::NEW`).
    "/os-volume-transfer" => get(transfers::list_summary).post(transfers::create),
    "/os-volume-transfer/detail" => get(transfers::list_detail),
    "/os-volume-transfer/{id}" => get(transfers::show).delete(transfers::delete),
    "/os-volume-transfer/{id}/accept" => post(transfers::accept),
    "/volume-transfers" => get(transfers::list_summary).post(transfers::create),
    "/volume-transfers/detail" => get(transfers::list_detail),
    "/volume-transfers/{id}" => get(transfers::show).delete(transfers::delete),
    "/volume-transfers/{id}/accept" => post(transfers::accept),
    "/types" => get(misc::list_types),
    "/types/default" => get(misc::default_type),
    "/types/{id}" => get(misc::show_type),
    "/os-quota-sets/{project}" => get(misc::show_quota).put(misc::update_quota),
    "/os-quota-sets/{project}/defaults" => get(misc::default_quota),
    "/limits" => get(misc::limits),
    "/os-availability-zone" => get(misc::availability_zones),
    "/extensions" => get(misc::extensions),
}

/// The dialect's routes, below the version and project prefix that the
/// front door strips.
pub fn router(state: Arc<CinderState>) -> Router {
    let max_body = state.max_body;
    let api = api_routes(Router::new())
        .fallback(no_route)
        .method_not_allowed_fallback(bad_method)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    Router::new()
        .fallback_service(api)
        .layer(middleware::from_fn_with_state(state, front))
}

async fn no_route() -> CinderError {
    CinderError::not_found("The resource could not be found.")
}

async fn bad_method() -> CinderError {
    CinderError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "The method is not allowed for the requested URL.",
    )
}

enum Target {
    Root,
    VersionDoc,
    Api {
        v2: bool,
        project: Option<String>,
        rest: String,
    },
    Unknown,
}

fn classify(path: &str) -> Target {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let v2 = match segs[0] {
        "" if segs.len() == 1 => return Target::Root,
        "v2" => true,
        "v3" => false,
        _ => return Target::Unknown,
    };
    if segs.len() == 1 || (segs.len() == 2 && segs[1].is_empty()) {
        return Target::VersionDoc;
    }
    if COLLECTIONS.contains(&segs[1]) {
        return Target::Api {
            v2,
            project: None,
            rest: format!("/{}", segs[1..].join("/")),
        };
    }
    if segs.len() < 3 || segs[2].is_empty() {
        return Target::Unknown;
    }
    Target::Api {
        v2,
        project: Some(segs[1].to_string()),
        rest: format!("/{}", segs[2..].join("/")),
    }
}

fn host_of(h: &HeaderMap) -> String {
    h.get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .unwrap_or("localhost")
        .to_string()
}

/// The front door: discovery, microversion negotiation, authentication,
/// the project in the URL; then the routes see `/volumes/...` only.
async fn front(State(st): State<Arc<CinderState>>, mut req: Request, next: Next) -> Response {
    let rid = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| format!("req-{}", uuid::Uuid::new_v4()));
    let mut resp = match admit(&st, &mut req).await {
        Ok(Some(ctx)) => {
            let echo = (!ctx.v2).then_some(ctx.version);
            let mut r = next.run(req).await;
            if let Some(v) = echo
                && let Ok(h) = HeaderValue::from_str(&format!("volume {v}"))
            {
                r.headers_mut().insert("openstack-api-version", h);
                r.headers_mut().insert(
                    header::VARY,
                    HeaderValue::from_static("OpenStack-API-Version"),
                );
            }
            r
        }
        Ok(None) => {
            let host = host_of(req.headers());
            misc::versions_answer(&host, req.uri().path())
        }
        Err(e) => e.into_response(),
    };
    if resp.status().as_u16() >= 400 && resp.extensions().get::<Fault>().is_none() {
        // An answer from the framework itself (e.g. a bad path segment).
        let status = resp.status();
        let msg = status.canonical_reason().unwrap_or("Error").to_string();
        resp = CinderError::new(status, msg).into_response();
    }
    if let Ok(v) = HeaderValue::from_str(&rid) {
        resp.headers_mut().insert("x-openstack-request-id", v);
    }
    resp
}

/// Ok(None): a discovery document, served without a token.
async fn admit(st: &CinderState, req: &mut Request) -> CResult<Option<Ctx>> {
    let (v2, project, rest) = match classify(req.uri().path()) {
        Target::Root | Target::VersionDoc if req.method() == Method::GET => {
            return Ok(None);
        }
        Target::Root | Target::VersionDoc => {
            return Err(CinderError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "The method is not allowed for the requested URL.",
            ));
        }
        Target::Unknown => {
            return Err(CinderError::not_found("The resource could not be found."));
        }
        Target::Api { v2, project, rest } => (v2, project, rest),
    };
    let version = if v2 {
        microversion::MIN
    } else {
        let h = req
            .headers()
            .get("openstack-api-version")
            .map(|v| v.to_str().unwrap_or("\u{0}"));
        match microversion::negotiate(h) {
            Negotiation::Ok(v) => v,
            Negotiation::Malformed(m) => return Err(CinderError::bad_request(m)),
            Negotiation::OutOfRange(m) => {
                return Err(CinderError::new(StatusCode::NOT_ACCEPTABLE, m));
            }
        }
    };
    if project.is_none() && (v2 || !version.at_least(microversion::PROJECT_ID_OPTIONAL)) {
        return Err(CinderError::not_found(format!(
            "The resource could not be found; a project id in the URL is optional only from microversion {}",
            microversion::PROJECT_ID_OPTIONAL
        )));
    }
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty())
        .map(String::from)
        .ok_or_else(CinderError::unauthorized)?;
    let info = st.validator.validate(&token).await?;
    let admin = info.is_admin();
    if let Some(p) = &project
        && *p != info.project_id
        && !admin
    {
        return Err(CinderError::not_found(format!(
            "Project {p} in the URL is not the token's project."
        )));
    }
    if matches!(*req.method(), Method::POST | Method::PUT)
        && let Some(ct) = req.headers().get(header::CONTENT_TYPE)
    {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let mime = ct.split(';').next().unwrap_or("").trim();
        if !mime.is_empty()
            && mime != "application/json"
            && mime != "application/vnd.openstack.volume+json"
        {
            return Err(CinderError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Unsupported Content-Type {mime:?}; send application/json"),
            ));
        }
    }
    let host = host_of(req.headers());
    let major = if v2 { "v2" } else { "v3" };
    let base = match &project {
        Some(p) => format!("http://{host}/{major}/{p}"),
        None => format!("http://{host}/{major}"),
    };
    let bookmark = match &project {
        Some(p) => format!("http://{host}/{p}"),
        None => format!("http://{host}"),
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let uri: Uri = pq
        .parse()
        .map_err(|_| CinderError::bad_request("Malformed request url"))?;
    *req.uri_mut() = uri;
    let ctx = Ctx {
        caller: Caller {
            project_id: info.project_id,
            user_id: info.user_id,
            admin,
        },
        version,
        v2,
        base,
        bookmark,
        token: Some(token),
    };
    req.extensions_mut().insert(ctx.clone());
    Ok(Some(ctx))
}

/// Parses a body as a JSON object; anything else is "Malformed request body".
pub fn json_body(raw: &[u8]) -> CResult<serde_json::Map<String, serde_json::Value>> {
    match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Object(m)) => Ok(m),
        _ => Err(CinderError::malformed()),
    }
}

/// The object under `key` in a body, e.g. `{"volume": {...}}`.
pub fn body_object(raw: &[u8], key: &str) -> CResult<serde_json::Map<String, serde_json::Value>> {
    let mut m = json_body(raw)?;
    match m.remove(key) {
        Some(serde_json::Value::Object(o)) => Ok(o),
        _ => Err(CinderError::malformed()),
    }
}

/// Python-style booleans, as Cinder's clients send them ("True", "false").
pub fn python_bool(name: &str, v: &serde_json::Value) -> CResult<bool> {
    let bad = || CinderError::invalid_input(format!("{name} must be a boolean, not {v}"));
    match v {
        serde_json::Value::Bool(b) => Ok(*b),
        serde_json::Value::String(s) => match crate::api::query_bool(name, s) {
            Ok(Some(b)) => Ok(b),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_version_project_and_rest() {
        assert!(matches!(classify("/"), Target::Root));
        assert!(matches!(classify("/v3"), Target::VersionDoc));
        assert!(matches!(classify("/v2/"), Target::VersionDoc));
        match classify("/v3/p1/volumes/detail") {
            Target::Api { project, rest, .. } => {
                assert_eq!(project.as_deref(), Some("p1"));
                assert_eq!(rest, "/volumes/detail");
            }
            _ => panic!(),
        }
        match classify("/v3/volumes") {
            Target::Api { project, rest, .. } => {
                assert_eq!(project, None);
                assert_eq!(rest, "/volumes");
            }
            _ => panic!(),
        }
        assert!(matches!(classify("/v3/p1"), Target::Unknown));
        assert!(matches!(classify("/v1/p/volumes"), Target::Unknown));
    }
}
