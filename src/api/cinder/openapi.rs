//! The Cinder dialect's OpenAPI 3 document, served at `/openapi.json` on
//! the Cinder listener. The resource schemas are the view types of
//! `views.rs` (utoipa derives), so they follow the wire format; each
//! microversion field says from which version it is shown. The route table
//! below is compared with the router's `ROUTE_PATHS` by a test, and real
//! answers are validated against the schemas it names.

use super::errors::fault_name;
use super::microversion as mv;
use super::views::*;
use axum::http::StatusCode;
use serde::Serialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use utoipa::{PartialSchema, ToSchema};

fn schema<T: PartialSchema + ToSchema>(m: &mut Map<String, Value>) {
    m.insert(
        T::name().to_string(),
        serde_json::to_value(T::schema()).unwrap_or(Value::Null),
    );
}

/// A boolean, or a Python-style string ("True", "false") as Cinder's
/// clients send.
fn python_bool() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{OneOfBuilder, Type};
    use utoipa::openapi::{Object, ObjectBuilder, Schema};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(Object::with_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some(
                "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)$",
            )))
            .build(),
    )
}

/// The body of `POST volumes`: `{"volume": VolumeCreate}`. Exactly one
/// source at most (snapshot_id, source_volid, imageRef).
#[derive(Serialize, ToSchema)]
pub struct VolumeCreate {
    /// GiB; taken from the source when one is given.
    pub size: Option<u64>,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The v1 name of `name`.
    pub display_name: Option<String>,
    pub display_description: Option<String>,
    /// A type's name or id; the default type when absent.
    pub volume_type: Option<String>,
    pub availability_zone: Option<String>,
    pub snapshot_id: Option<String>,
    pub source_volid: Option<String>,
    /// A Glance image id; the volume is filled from the image and bootable.
    #[serde(rename = "imageRef")]
    pub image_ref: Option<String>,
    /// Microversion 3.47 and later; blockd has no backups (404).
    pub backup_id: Option<String>,
    /// blockd has no groups (404).
    pub group_id: Option<String>,
    /// blockd has no consistency groups (404).
    pub consistencygroup_id: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// true or false, or Python-style "True"/"False".
    #[schema(schema_with = python_bool)]
    pub multiattach: Option<Value>,
}

/// The body of `PUT volumes/{id}`: `{"volume": VolumeUpdate}`.
#[derive(Serialize, ToSchema)]
pub struct VolumeUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub display_description: Option<String>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The body of `POST snapshots`: `{"snapshot": SnapshotCreate}`.
#[derive(Serialize, ToSchema)]
pub struct SnapshotCreate {
    pub volume_id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub display_description: Option<String>,
    /// Needed for an in-use volume before microversion 3.66.
    #[schema(schema_with = python_bool)]
    pub force: Option<Value>,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// The body of `PUT snapshots/{id}`: `{"snapshot": SnapshotUpdate}`.
#[derive(Serialize, ToSchema)]
pub struct SnapshotUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub display_name: Option<String>,
    pub display_description: Option<String>,
}

/// The body of a transfer create: `{"transfer": TransferCreate}`.
#[derive(Serialize, ToSchema)]
pub struct TransferCreate {
    pub volume_id: String,
    pub name: Option<String>,
    /// volume-transfers only (microversion 3.55 and later).
    #[schema(schema_with = python_bool)]
    pub no_snapshots: Option<Value>,
}

/// The body of a transfer accept: `{"accept": TransferAccept}`.
#[derive(Serialize, ToSchema)]
pub struct TransferAccept {
    /// The key the create answered.
    pub auth_key: String,
}

/// The volume actions `POST volumes/{id}/action` takes, one key per body,
/// with the microversion an action needs.
#[rustfmt::skip]
pub const ACTIONS: &[(&str, &str, Option<mv::Microversion>)] = &[
    ("os-extend", "Grow the volume: {\"new_size\": GiB} (in-use from 3.42)", None),
    ("os-reserve", "Reserve for an attach", None),
    ("os-unreserve", "Undo a reserve", None),
    ("os-initialize_connection", "Export the volume; answers connection_info (200)", None),
    ("os-attach", "Record the attach: instance_uuid, mountpoint, mode", None),
    ("os-begin_detaching", "Start a detach", None),
    ("os-roll_detaching", "Undo begin_detaching", None),
    ("os-terminate_connection", "Remove the export", None),
    ("os-detach", "Record the detach, optionally of attachment_id", None),
    ("os-reset_status", "Admin: set status, attach_status", None),
    ("os-update_readonly_flag", "Set the readonly flag: {\"readonly\": bool}", None),
    ("os-set_bootable", "Set bootable: {\"bootable\": bool} (answers 200)", None),
    ("revert", "Revert to the latest snapshot: {\"snapshot_id\"}", Some(mv::VOLUME_REVERT)),
    ("os-volume_upload_image", "Upload to a new Glance image: image_name, disk_format (raw, qcow2), container_format; answers 202 with image_id", None),
    ("os-show_image_metadata", "Answers {\"metadata\": volume_image_metadata} (200)", None),
    ("os-set_image_metadata", "Merge {\"metadata\": {...}} into volume_image_metadata (200)", None),
    ("os-unset_image_metadata", "Remove {\"key\"} from volume_image_metadata (200)", None),
];

/// Method, path below the version and project, summary, success status,
/// request schema, answer schema, and the microversion the route needs.
type Route = (
    &'static str,
    &'static str,
    &'static str,
    u16,
    Option<&'static str>,
    Option<&'static str>,
    Option<mv::Microversion>,
);

/// Every API route (the paths of `ROUTE_PATHS`, with their methods).
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    ("get", "/volumes", "List volumes (id, name, links)", 200, None, Some("VolumeSummaryList"), None),
    ("post", "/volumes", "Create a volume", 202, Some("VolumeCreateBody"), Some("VolumeOne"), None),
    ("get", "/volumes/detail", "List volumes in detail", 200, None, Some("VolumeDetailList"), None),
    ("get", "/volumes/summary", "Total count and size of the volumes", 200, None, Some("VolumesSummary"), Some(mv::VOLUME_SUMMARY)),
    ("get", "/volumes/{id}", "Show a volume", 200, None, Some("VolumeOne"), None),
    ("put", "/volumes/{id}", "Update a volume's name, description or metadata", 200, Some("VolumeUpdateBody"), Some("VolumeOne"), None),
    ("delete", "/volumes/{id}", "Delete a volume", 202, None, None, None),
    ("post", "/volumes/{id}/action", "A volume action (see x-cinder-actions); most answer 202 with no body", 202, Some("VolumeAction"), None, None),
    ("get", "/volumes/{id}/metadata", "A volume's metadata", 200, None, Some("Metadata"), None),
    ("post", "/volumes/{id}/metadata", "Merge metadata into a volume's", 200, Some("Metadata"), Some("Metadata"), None),
    ("put", "/volumes/{id}/metadata", "Replace a volume's metadata", 200, Some("Metadata"), Some("Metadata"), None),
    ("get", "/volumes/{id}/metadata/{key}", "One metadata item", 200, None, Some("MetaItem"), None),
    ("put", "/volumes/{id}/metadata/{key}", "Set one metadata item", 200, Some("MetaItem"), Some("MetaItem"), None),
    ("delete", "/volumes/{id}/metadata/{key}", "Delete one metadata item", 200, None, None, None),
    ("get", "/snapshots", "List snapshots", 200, None, Some("SnapshotList"), None),
    ("post", "/snapshots", "Create a snapshot", 202, Some("SnapshotCreateBody"), Some("SnapshotOne"), None),
    ("get", "/snapshots/detail", "List snapshots in detail", 200, None, Some("SnapshotList"), None),
    ("get", "/snapshots/{id}", "Show a snapshot", 200, None, Some("SnapshotOne"), None),
    ("put", "/snapshots/{id}", "Update a snapshot's name or description", 200, Some("SnapshotUpdateBody"), Some("SnapshotOne"), None),
    ("delete", "/snapshots/{id}", "Delete a snapshot", 202, None, None, None),
    ("get", "/snapshots/{id}/metadata", "A snapshot's metadata", 200, None, Some("Metadata"), None),
    ("post", "/snapshots/{id}/metadata", "Merge metadata into a snapshot's", 200, Some("Metadata"), Some("Metadata"), None),
    ("put", "/snapshots/{id}/metadata", "Replace a snapshot's metadata", 200, Some("Metadata"), Some("Metadata"), None),
    ("get", "/snapshots/{id}/metadata/{key}", "One metadata item", 200, None, Some("MetaItem"), None),
    ("put", "/snapshots/{id}/metadata/{key}", "Set one metadata item", 200, Some("MetaItem"), Some("MetaItem"), None),
    ("delete", "/snapshots/{id}/metadata/{key}", "Delete one metadata item", 200, None, None, None),
    ("get", "/os-volume-transfer", "List volume transfers", 200, None, Some("TransferList"), None),
    ("post", "/os-volume-transfer", "Offer a volume to another project", 202, Some("TransferCreateBody"), Some("TransferOne"), None),
    ("get", "/os-volume-transfer/detail", "List volume transfers in detail", 200, None, Some("TransferList"), None),
    ("get", "/os-volume-transfer/{id}", "Show a volume transfer", 200, None, Some("TransferOne"), None),
    ("delete", "/os-volume-transfer/{id}", "Cancel a volume transfer", 202, None, None, None),
    ("post", "/os-volume-transfer/{id}/accept", "Accept a volume transfer", 202, Some("TransferAcceptBody"), Some("TransferOne"), None),
    ("get", "/volume-transfers", "List volume transfers", 200, None, Some("TransferList"), Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("post", "/volume-transfers", "Offer a volume to another project", 202, Some("TransferCreateBody"), Some("TransferOne"), Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("get", "/volume-transfers/detail", "List volume transfers in detail", 200, None, Some("TransferList"), Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("get", "/volume-transfers/{id}", "Show a volume transfer", 200, None, Some("TransferOne"), Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("delete", "/volume-transfers/{id}", "Cancel a volume transfer", 202, None, None, Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("post", "/volume-transfers/{id}/accept", "Accept a volume transfer", 202, Some("TransferAcceptBody"), Some("TransferOne"), Some(mv::TRANSFER_WITH_SNAPSHOTS)),
    ("get", "/types", "List volume types", 200, None, Some("VolumeTypeList"), None),
    ("get", "/types/default", "The default volume type", 200, None, Some("VolumeTypeOne"), None),
    ("get", "/types/{id}", "Show a volume type", 200, None, Some("VolumeTypeOne"), None),
    ("get", "/os-quota-sets/{project}", "A project's quota (usage=true adds in_use)", 200, None, Some("QuotaSetBody"), None),
    ("put", "/os-quota-sets/{project}", "Admin: set a project's quota", 200, Some("QuotaSetBody"), Some("QuotaSetBody"), None),
    ("get", "/os-quota-sets/{project}/defaults", "The default quota", 200, None, Some("QuotaSetBody"), None),
    ("get", "/limits", "Absolute limits and usage", 200, None, Some("Limits"), None),
    ("get", "/os-availability-zone", "Availability zones", 200, None, Some("AvailabilityZones"), None),
    ("get", "/extensions", "API extensions", 200, None, Some("Extensions"), None),
];

/// The discovery documents, served without a token.
const DISCOVERY: &[(&str, &str, u16)] = &[
    ("/", "Every API version", 300),
    ("/v3", "The v3 version document", 200),
    ("/v2", "The v2 version document (deprecated)", 200),
];

/// Statuses the dialect answers with a fault body.
const FAULT_STATUSES: &[u16] = &[400, 401, 403, 404, 405, 406, 409, 413, 415, 500, 501, 503];

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn wrap(key: &str, inner: Value) -> Value {
    json!({"type": "object", "required": [key], "additionalProperties": false,
           "properties": {key: inner}})
}

fn list(key: &str, item: &str) -> Value {
    json!({
        "type": "object",
        "required": [key],
        "additionalProperties": false,
        "properties": {
            key: {"type": "array", "items": r(item)},
            format!("{key}_links"): {"type": "array", "items": r("Link"),
                "description": "The next page, when this one is full."},
            "count": {"type": "integer", "minimum": 0,
                "description": format!("With with_count=true; microversion {} and later.", mv::SUPPORT_COUNT_INFO)},
        },
    })
}

fn hand_schemas(m: &mut Map<String, Value>) {
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let faults: Vec<&str> = {
        let mut v: Vec<&str> = FAULT_STATUSES
            .iter()
            .filter_map(|s| StatusCode::from_u16(*s).ok())
            .map(fault_name)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let link = json!({"type": "object", "required": ["href", "rel"],
        "properties": {"href": {"type": "string"}, "rel": {"type": "string"}, "type": {"type": "string"}}});
    let entries = [
        ("VolumeOne", wrap("volume", r("VolumeView"))),
        ("VolumeSummaryList", list("volumes", "VolumeSummary")),
        ("VolumeDetailList", list("volumes", "VolumeView")),
        ("SnapshotOne", wrap("snapshot", r("SnapshotView"))),
        ("SnapshotList", list("snapshots", "SnapshotView")),
        ("VolumeTypeOne", wrap("volume_type", r("VolumeTypeView"))),
        ("TransferOne", wrap("transfer", r("TransferView"))),
        ("TransferList", list("transfers", "TransferView")),
        ("TransferCreateBody", wrap("transfer", r("TransferCreate"))),
        ("TransferAcceptBody", wrap("accept", r("TransferAccept"))),
        (
            "VolumeTypeList",
            wrap(
                "volume_types",
                json!({"type": "array", "items": r("VolumeTypeView")}),
            ),
        ),
        ("VolumeCreateBody", wrap("volume", r("VolumeCreate"))),
        ("VolumeUpdateBody", wrap("volume", r("VolumeUpdate"))),
        ("SnapshotCreateBody", wrap("snapshot", r("SnapshotCreate"))),
        ("SnapshotUpdateBody", wrap("snapshot", r("SnapshotUpdate"))),
        ("Metadata", wrap("metadata", string_map.clone())),
        (
            "MetaItem",
            json!({"type": "object", "required": ["meta"], "additionalProperties": false,
            "properties": {"meta": {"type": "object", "minProperties": 1, "maxProperties": 1,
                "additionalProperties": {"type": "string"}}}}),
        ),
        (
            "VolumesSummary",
            wrap(
                "volume-summary",
                json!({
                    "type": "object", "required": ["total_size", "total_count"], "additionalProperties": false,
                    "properties": {
                        "total_size": {"type": "integer", "minimum": 0},
                        "total_count": {"type": "integer", "minimum": 0},
                        "metadata": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}},
                            "description": format!("Microversion {} and later.", mv::VOLUME_SUMMARY_METADATA)},
                    },
                }),
            ),
        ),
        (
            "VolumeAction",
            json!({
                "type": "object", "minProperties": 1, "maxProperties": 1,
                "propertyNames": {"enum": ACTIONS.iter().map(|a| a.0).collect::<Vec<_>>()},
                "additionalProperties": {"type": ["object", "null"]},
                "description": "One action and its arguments; see x-cinder-actions.",
            }),
        ),
        (
            "ActionAnswer",
            json!({"oneOf": [r("ConnectionInfo"), r("ImageMetadata")]}),
        ),
        (
            "ActionAccepted",
            json!({"oneOf": [r("UploadImage"), {"type": "null"}]}),
        ),
        (
            "ImageMetadata",
            json!({
                "type": "object", "required": ["metadata"], "additionalProperties": false,
                "properties": {"metadata": {"type": "object", "additionalProperties": {"type": "string"}}},
                "description": "The answer of os-show_image_metadata, os-set_image_metadata and os-unset_image_metadata.",
            }),
        ),
        (
            "UploadImage",
            wrap(
                "os-volume_upload_image",
                json!({
                    "type": "object", "required": ["id", "status", "image_id", "image_name", "disk_format", "container_format"],
                    "properties": {
                        "id": {"type": "string"},
                        "updated_at": {"type": "string"},
                        "status": {"const": "uploading"},
                        "display_description": {"type": ["string", "null"]},
                        "size": {"type": "integer", "minimum": 0},
                        "volume_type": {"type": "string"},
                        "image_id": {"type": "string"},
                        "container_format": {"type": "string"},
                        "disk_format": {"type": "string"},
                        "image_name": {"type": "string"},
                        "visibility": {"type": "string"},
                        "protected": {"type": "boolean"},
                    },
                    "description": "The answer of os-volume_upload_image.",
                }),
            ),
        ),
        (
            "ConnectionInfo",
            wrap(
                "connection_info",
                json!({
                    "oneOf": [
                        {
                            "type": "object", "required": ["driver_volume_type", "data"],
                            "properties": {
                                "driver_volume_type": {"const": "local"},
                                "data": {"type": "object", "required": ["device_path", "volume_id", "access_mode"],
                                    "properties": {
                                        "device_path": {"type": "string"},
                                        "volume_id": {"type": "string"},
                                        "access_mode": {"enum": ["ro", "rw"]},
                                        "encrypted": {"type": "boolean"},
                                        "discard": {"type": "boolean"},
                                        "qos_specs": {"type": ["object", "null"]},
                                    }},
                            },
                        },
                        {
                            "type": "object", "required": ["driver_volume_type", "data"],
                            "properties": {
                                "driver_volume_type": {"const": "vhost-user"},
                                "data": {"type": "object", "required": ["device_type", "socket_path", "vhost_user_mode", "volume_id", "access_mode"],
                                    "properties": {
                                        "device_type": {"const": "vhost-user-blk"},
                                        "socket_path": {"type": "string"},
                                        "vhost_user_mode": {"const": "client"},
                                        "volume_id": {"type": "string"},
                                        "access_mode": {"enum": ["ro", "rw"]},
                                        "encrypted": {"type": "boolean"},
                                        "discard": {"type": "boolean"},
                                        "qos_specs": {"type": "null"},
                                        "qos_enforced_by_backend": {"type": "boolean"},
                                    }},
                            },
                        },
                    ],
                    "description": "The answer of os-initialize_connection only: a loop device (local) or a vhost-user-blk socket the hypervisor connects to.",
                }),
            ),
        ),
        (
            "QuotaSetBody",
            wrap(
                "quota_set",
                json!({
                    "type": "object",
                    "properties": {"id": {"type": "string"}},
                    "additionalProperties": {"oneOf": [
                        {"type": "integer", "description": "A limit; -1 is unlimited."},
                        {"type": "object", "required": ["limit", "in_use"], "properties": {
                            "limit": {"type": "integer"}, "in_use": {"type": "integer"},
                            "reserved": {"type": "integer"}, "allocated": {"type": "integer"}}},
                    ]},
                    "description": "volumes, snapshots, gigabytes, per_volume_gigabytes, backups, backup_gigabytes, groups, and volumes_TYPE etc. per type. A PUT sets the first four.",
                }),
            ),
        ),
        (
            "Limits",
            wrap(
                "limits",
                json!({
                    "type": "object", "required": ["rate", "absolute"],
                    "properties": {
                        "rate": {"type": "array"},
                        "absolute": {"type": "object", "additionalProperties": {"type": "integer"}},
                    },
                }),
            ),
        ),
        (
            "AvailabilityZones",
            wrap(
                "availabilityZoneInfo",
                json!({"type": "array", "items": {
                "type": "object", "required": ["zoneName", "zoneState"],
                "properties": {
                    "zoneName": {"type": "string"},
                    "zoneState": {"type": "object", "required": ["available"],
                        "properties": {"available": {"type": "boolean"}}},
                }}}),
            ),
        ),
        (
            "Extensions",
            wrap(
                "extensions",
                json!({"type": "array", "items": {
                "type": "object", "required": ["alias", "name", "description", "links", "updated"],
                "properties": {
                    "alias": {"type": "string"}, "name": {"type": "string"},
                    "description": {"type": "string"}, "links": {"type": "array"},
                    "updated": {"type": "string"},
                }}}),
            ),
        ),
        (
            "Versions",
            wrap(
                "versions",
                json!({"type": "array", "items": {
                "type": "object",
                "required": ["id", "status", "version", "min_version", "updated", "links", "media-types"],
                "properties": {
                    "id": {"enum": ["v2.0", "v3.0"]},
                    "status": {"enum": ["CURRENT", "DEPRECATED"]},
                    "version": {"type": "string", "description": "The highest microversion (v3); empty for v2."},
                    "min_version": {"type": "string"},
                    "updated": {"type": "string"},
                    "links": {"type": "array", "items": link},
                    "media-types": {"type": "array", "items": {"type": "object",
                        "properties": {"base": {"type": "string"}, "type": {"type": "string"}}}},
                }}}),
            ),
        ),
        (
            "Fault",
            json!({
                "type": "object", "minProperties": 1, "maxProperties": 1,
                "propertyNames": {"enum": faults},
                "additionalProperties": {
                    "type": "object", "required": ["message", "code"], "additionalProperties": false,
                    "properties": {
                        "message": {"type": "string"},
                        "code": {"type": "integer"},
                        "retryAfter": {"type": "string", "description": "On 413 only."},
                    },
                },
                "description": "A Cinder fault: one key naming the fault (badRequest, itemNotFound, ...) over the message and the status code.",
            }),
        ),
    ];
    for (k, v) in entries {
        m.insert(k.to_string(), v);
    }
}

fn operation(
    method: &str,
    path: &str,
    summary: &str,
    status: u16,
    request: Option<&str>,
    answer: Option<&str>,
    v2: bool,
) -> Value {
    let mut params: Vec<Value> = path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect();
    if !v2 {
        params.push(json!({"$ref": "#/components/parameters/OpenStackApiVersion"}));
    }
    let mut ok = json!({"description": "Success"});
    if let Some(s) = answer {
        ok["content"] = json!({"application/json": {"schema": r(s)}});
    }
    if !v2 {
        ok["headers"] =
            json!({"OpenStack-API-Version": {"$ref": "#/components/headers/OpenStackApiVersion"}});
    }
    let mut op = json!({
        "summary": summary,
        "operationId": format!("{}_{method}{}", if v2 { "v2" } else { "v3" },
            path.replace(['/', '{', '}', '-'], "_")),
        "parameters": params,
        "responses": {status.to_string(): ok, "default": {"$ref": "#/components/responses/Fault"}},
        "security": [{"keystoneToken": []}],
    });
    if let Some(s) = request {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": r(s)}}});
    }
    op
}

/// The document.
pub fn document() -> Value {
    let mut schemas = Map::new();
    schema::<Link>(&mut schemas);
    schema::<AttachmentView>(&mut schemas);
    schema::<VolumeSummary>(&mut schemas);
    schema::<VolumeView>(&mut schemas);
    schema::<SnapshotView>(&mut schemas);
    schema::<VolumeTypeView>(&mut schemas);
    schema::<TransferView>(&mut schemas);
    schema::<TransferCreate>(&mut schemas);
    schema::<TransferAccept>(&mut schemas);
    schema::<VolumeCreate>(&mut schemas);
    schema::<VolumeUpdate>(&mut schemas);
    schema::<SnapshotCreate>(&mut schemas);
    schema::<SnapshotUpdate>(&mut schemas);
    hand_schemas(&mut schemas);

    let mut paths = Map::new();
    for (path, summary, status) in DISCOVERY {
        paths.insert(
            path.to_string(),
            json!({"get": {
                "summary": summary,
                "operationId": format!("versions{}", path.replace('/', "_")),
                "security": [],
                "responses": {status.to_string(): {"description": "Versions",
                    "content": {"application/json": {"schema": r("Versions")}}}},
            }}),
        );
    }
    for v2 in [false, true] {
        for (method, path, summary, status, request, answer, since) in ROUTES {
            if v2 && since.is_some() {
                continue;
            }
            let summary = match since {
                Some(v) => format!("{summary} (microversion {v} and later)"),
                None => summary.to_string(),
            };
            let full = format!("/{}/{{project_id}}{path}", if v2 { "v2" } else { "v3" });
            let op = operation(method, &full, &summary, *status, *request, *answer, v2);
            let mut op = op;
            if *path == "/volumes/{id}/action" {
                op["responses"]["200"] = json!({"description": "os-initialize_connection answers connection_info; the image metadata actions answer the metadata; os-set_bootable answers 200 with no body.",
                    "content": {"application/json": {"schema": r("ActionAnswer")}}});
                op["responses"]["202"] = json!({"description": "Accepted; os-volume_upload_image answers the new image, the other actions no body.",
                    "content": {"application/json": {"schema": r("ActionAccepted")}}});
            }
            let item = paths.entry(full).or_insert_with(|| json!({}));
            item[*method] = op;
        }
    }
    let actions: Map<String, Value> = ACTIONS
        .iter()
        .map(|(name, what, since)| {
            let mut a = json!({"description": what});
            if let Some(v) = since {
                a["microversion"] = v.to_string().into();
            }
            (name.to_string(), a)
        })
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "blockd OpenStack Block Storage (Cinder) API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Cinder v3 with microversions {min}-{max} (send OpenStack-API-Version: volume X.Y; none means {min}) and v2 (the 3.0 views, no header). \
                 Paths carry the project id; from microversion {opt} it may be left out (/v3/volumes). \
                 Schemas describe the superset of every microversion: a field noted 'Microversion 3.N and later' is absent before, and 'Admin only' fields are shown to admins only. \
                 Errors answer the Fault body.",
                min = mv::MIN, max = mv::MAX, opt = mv::PROJECT_ID_OPTIONAL),
        },
        "x-cinder-microversions": {"min": mv::MIN.to_string(), "max": mv::MAX.to_string()},
        "x-cinder-actions": actions,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": {"OpenStackApiVersion": {
                "name": "OpenStack-API-Version", "in": "header", "required": false,
                "description": format!("volume X.Y ({}-{}) or volume latest; absent means {}. A version out of range answers 406.", mv::MIN, mv::MAX, mv::MIN),
                "schema": {"type": "string", "pattern": "^(volume|block-storage) ([0-9]+\\.[0-9]+|latest)$"},
            }},
            "headers": {"OpenStackApiVersion": {
                "description": "The negotiated microversion, as volume X.Y.",
                "schema": {"type": "string"},
            }},
            "responses": {"Fault": {
                "description": "A Cinder fault",
                "content": {"application/json": {"schema": r("Fault")}},
            }},
            "securitySchemes": {"keystoneToken": {
                "type": "apiKey", "in": "header", "name": "X-Auth-Token",
                "description": "A Keystone (or configured static) token; the project in the URL must be the token's unless the token is an admin's.",
            }},
        },
    })
}
