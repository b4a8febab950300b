//! The SCP dialect's OpenAPI 3 document, served at `/openapi.json`. Answer
//! schemas come from the view types themselves (utoipa derives), so they
//! follow the code; the route table below is checked against the router
//! by a test. Versions differ in the volume schema only: 1.0 and 1.1 answer
//! `VolumeShow`, 1.2 and 1.3 `VolumeShowV1Dot2` (with QoS). Request bodies
//! are the request types the handlers parse, with their limits.

use super::views::*;
use serde_json::{Map, Value, json};
use utoipa::{PartialSchema, ToSchema};

fn schema<T: PartialSchema + ToSchema>(m: &mut Map<String, Value>) {
    m.insert(
        T::name().to_string(),
        serde_json::to_value(T::schema()).unwrap_or(Value::Null),
    );
}

/// Which schema each version answers volumes with.
pub const VOLUME_SCHEMA_BY_VERSION: [(&str, &str); 4] = [
    ("1.0", "VolumeShow"),
    ("1.1", "VolumeShow"),
    ("1.2", "VolumeShowV1Dot2"),
    ("1.3", "VolumeShowV1Dot2"),
];

/// Method, path template, summary, success status, answer schema.
pub const ROUTES: &[(&str, &str, &str, u16, Option<&str>)] = &[
    ("get", "/", "Versions (unsigned)", 200, None),
    (
        "get",
        "/v1/volumes",
        "List volumes",
        200,
        Some("VolumeList"),
    ),
    (
        "post",
        "/v1/volumes",
        "Create a volume",
        202,
        Some("Volume"),
    ),
    (
        "get",
        "/v1/volumes/quota-sets",
        "The project's quota",
        200,
        Some("QuotaSet"),
    ),
    (
        "get",
        "/v1/volumes/{id}",
        "Show a volume",
        200,
        Some("Volume"),
    ),
    (
        "put",
        "/v1/volumes/{id}",
        "Rename a volume",
        200,
        Some("Volume"),
    ),
    ("delete", "/v1/volumes/{id}", "Delete a volume", 202, None),
    ("put", "/v1/volumes/{id}/size", "Extend a volume", 202, None),
    (
        "put",
        "/v1/volumes/{id}/qos",
        "Set QoS limits (1.2 and later)",
        200,
        None,
    ),
    (
        "post",
        "/v1/volumes/{id}/servers",
        "Attach to a server",
        202,
        Some("AttachView"),
    ),
    (
        "delete",
        "/v1/volumes/{id}/servers/{server_id}",
        "Detach from a server",
        202,
        None,
    ),
    (
        "post",
        "/v1/volumes/{id}/revert",
        "Revert to a snapshot",
        202,
        None,
    ),
    (
        "get",
        "/v1/servers/{server_id}/volumes",
        "A server's volumes",
        200,
        None,
    ),
    (
        "post",
        "/v1/servers/{server_id}/volumes",
        "Attach to the server",
        202,
        Some("ServerVolume"),
    ),
    (
        "get",
        "/v1/servers/{server_id}/volumes/{id}",
        "One attachment",
        200,
        Some("ServerVolume"),
    ),
    (
        "put",
        "/v1/servers/{server_id}/volumes/{id}",
        "Update an attachment",
        200,
        Some("ServerVolume"),
    ),
    (
        "delete",
        "/v1/servers/{server_id}/volumes/{id}",
        "Detach from the server",
        202,
        None,
    ),
    ("get", "/v1/snapshots", "List snapshots", 200, None),
    (
        "post",
        "/v1/snapshots",
        "Create a snapshot",
        202,
        Some("SnapshotDetail"),
    ),
    (
        "get",
        "/v1/snapshots/{id}",
        "Show a snapshot",
        200,
        Some("SnapshotDetail"),
    ),
    (
        "put",
        "/v1/snapshots/{id}",
        "Rename a snapshot",
        200,
        Some("SnapshotDetail"),
    ),
    (
        "delete",
        "/v1/snapshots/{id}",
        "Delete a snapshot",
        202,
        None,
    ),
    ("get", "/v1/volume-types", "List volume types", 200, None),
    (
        "get",
        "/v1/volume-types/default",
        "The default type",
        200,
        Some("VolumeTypeView"),
    ),
    (
        "get",
        "/v1/volume-types/{id}",
        "Show a type",
        200,
        Some("VolumeTypeView"),
    ),
    (
        "get",
        "/v1/volume-transfer",
        "The project's pending transfers",
        200,
        None,
    ),
    (
        "post",
        "/v1/volume-transfer",
        "Offer a volume to another project",
        202,
        None,
    ),
    (
        "get",
        "/v1/volume-transfer/{id}",
        "Show a pending transfer",
        200,
        None,
    ),
    (
        "delete",
        "/v1/volume-transfer/{id}",
        "Cancel a transfer",
        202,
        None,
    ),
    (
        "post",
        "/v1/volume-transfer/{id}/accept",
        "Take the volume with the transfer's key",
        202,
        None,
    ),
    (
        "get",
        "/blockd/v1/volumes/{id}",
        "blockd's own view of a volume",
        200,
        None,
    ),
    (
        "get",
        "/blockd/v1/snapshots/{id}",
        "blockd's own view of a snapshot, with copy progress",
        200,
        None,
    ),
    (
        "post",
        "/blockd/v1/snapshots/{id}/verify",
        "Re-hash a snapshot",
        200,
        None,
    ),
];

/// Method, path template and body schema of the routes that take a body;
/// the schemas are the request types the handlers parse.
pub const REQUEST_BODIES: &[(&str, &str, &str)] = &[
    ("post", "/v1/volumes", "VolumeCreate"),
    ("put", "/v1/volumes/{id}", "VolumeUpdateRequest"),
    ("put", "/v1/volumes/{id}/size", "VolumeExtendRequest"),
    ("put", "/v1/volumes/{id}/qos", "VolumeQosRequest"),
    ("post", "/v1/volumes/{id}/servers", "VolumeAttachRequest"),
    ("post", "/v1/volumes/{id}/revert", "VolumeRevertRequest"),
    (
        "post",
        "/v1/servers/{server_id}/volumes",
        "ServerVolumeCreateRequest",
    ),
    (
        "put",
        "/v1/servers/{server_id}/volumes/{id}",
        "ServerVolumeUpdateRequest",
    ),
    ("post", "/v1/snapshots", "SnapshotCreateRequest"),
    ("put", "/v1/snapshots/{id}", "SnapshotUpdateRequest"),
    ("post", "/v1/volume-transfer", "TransferCreateRequest"),
    (
        "post",
        "/v1/volume-transfer/{id}/accept",
        "TransferAcceptRequest",
    ),
];

/// Query parameters the handlers read; any other is answered 400.
const PAGE: &[&str] = &["limit", "offset", "marker", "with_count"];
pub const QUERY: &[(&str, &str, &[&str])] = &[
    ("get", "/v1/volumes", &["sort", "name", "state", "bootable"]),
    ("delete", "/v1/volumes/{id}", &["cascade"]),
    ("get", "/v1/snapshots", &["volume_id", "name", "sort"]),
    ("get", "/v1/volume-transfer", &[]),
];

fn query_param(name: &str) -> Value {
    let schema = match name {
        "limit" => json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        "offset" => json!({"type": "integer", "minimum": 0}),
        "with_count" | "bootable" | "cascade" => json!({"type": "boolean"}),
        "sort" => {
            json!({"type": "string", "description": "key[:asc|desc], comma-separated (snapshots: 1.3 and later)"})
        }
        _ => json!({"type": "string"}),
    };
    json!({"name": name, "in": "query", "required": false, "schema": schema})
}

/// The document.
pub fn document() -> Value {
    let mut schemas = Map::new();
    schema::<ServerView>(&mut schemas);
    schema::<VolumeShow>(&mut schemas);
    schema::<VolumeShowV1Dot2>(&mut schemas);
    schema::<ExtraSpecs>(&mut schemas);
    schema::<VolumeTypeView>(&mut schemas);
    schema::<QuotaItem>(&mut schemas);
    schema::<QuotaSet>(&mut schemas);
    schema::<AttachView>(&mut schemas);
    schema::<ServerVolume>(&mut schemas);
    schema::<SnapshotDetail>(&mut schemas);
    schema::<super::TagIn>(&mut schemas);
    schema::<super::CreateReq>(&mut schemas);
    schema::<super::CreateReqV1Dot2>(&mut schemas);
    schema::<super::UpdateReq>(&mut schemas);
    schema::<super::ExtendReq>(&mut schemas);
    schema::<super::QosReq>(&mut schemas);
    schema::<super::AttachReq>(&mut schemas);
    schema::<super::RevertReq>(&mut schemas);
    schema::<super::ServerAttachReq>(&mut schemas);
    schema::<super::ServerVolumeUpdate>(&mut schemas);
    schema::<super::SnapshotCreateReq>(&mut schemas);
    schema::<super::SnapshotUpdateReq>(&mut schemas);
    schema::<super::transfers::CreateReq>(&mut schemas);
    schema::<super::transfers::AcceptReq>(&mut schemas);
    schemas.insert(
        "VolumeCreate".into(),
        json!({
            "description": "VolumeCreateRequest for 1.0 and 1.1, VolumeCreateRequestV1Dot2 (with QoS) for 1.2 and 1.3.",
            "anyOf": [
                {"$ref": "#/components/schemas/VolumeCreateRequest"},
                {"$ref": "#/components/schemas/VolumeCreateRequestV1Dot2"},
            ],
        }),
    );
    let by_version: Vec<Value> = VOLUME_SCHEMA_BY_VERSION
        .iter()
        .map(|(_, s)| json!({"$ref": format!("#/components/schemas/{s}")}))
        .collect();
    schemas.insert(
        "Volume".into(),
        json!({
            "description": "The volume, in the schema of the negotiated version: VolumeShow for 1.0 and 1.1, VolumeShowV1Dot2 for 1.2 and 1.3.",
            "oneOf": [
                // 1.0 and 1.1 never carry the QoS fields 1.2 requires.
                {
                    "allOf": [by_version[0]],
                    "not": {"anyOf": [{"required": ["max_iops"]}, {"required": ["max_throughput"]}]},
                },
                by_version[2],
            ],
        }),
    );
    schemas.insert(
        "VolumeList".into(),
        json!({
            "type": "object",
            "required": ["volumes"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "volumes": {"type": "array", "items": {"$ref": "#/components/schemas/Volume"}},
            },
        }),
    );
    schemas.insert(
        "Errors".into(),
        json!({
            "type": "object",
            "required": ["errors"],
            "properties": {"errors": {"type": "array", "items": {
                "type": "object",
                "required": ["code", "title", "detail"],
                "properties": {
                    "code": {"type": "string"},
                    "title": {"type": "string"},
                    "detail": {"type": "string"},
                },
            }}},
        }),
    );

    let mut paths = Map::new();
    for (method, path, summary, status, answer) in ROUTES {
        let mut params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some((_, _, names)) = QUERY.iter().find(|(m, p, _)| m == method && p == path) {
            let page = if *method == "get" { PAGE } else { &[] };
            params.extend(page.iter().chain(names.iter()).map(|n| query_param(n)));
        }
        let ok = match answer {
            Some(s) => json!({"description": "Success", "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{s}")}}}}),
            None => json!({"description": "Success"}),
        };
        let errors = json!({"description": "An SCP error", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Errors"}}}});
        let mut op = json!({
            "summary": summary,
            "operationId": format!("{method}{}", path.replace(['/', '{', '}', '-'], "_")),
            "responses": {status.to_string(): ok, "default": errors},
        });
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some((_, _, body)) = REQUEST_BODIES
            .iter()
            .find(|(m, p, _)| m == method && p == path)
        {
            op["requestBody"] = json!({"required": true, "content": {"application/json": {
                "schema": {"$ref": format!("#/components/schemas/{body}")}}}});
        }
        if *path != "/" {
            op["security"] = json!([{"scpSignature": []}]);
        }
        let item = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        item[*method] = op;
    }
    let versions: Map<String, Value> = VOLUME_SCHEMA_BY_VERSION
        .iter()
        .map(|(v, s)| (v.to_string(), json!({"volume": s})))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "blockd SCP virtualserver block storage",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Send Scp-Api-Version: virtualserver 1.0-1.3. Volume answers follow the version's schema; see x-scp-versions.",
        },
        "x-scp-versions": versions,
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"scpSignature": {
                "type": "apiKey", "in": "header", "name": "Scp-Signature",
                "description": "base64(HMAC-SHA256(secret, METHOD + URL + Scp-Timestamp + Scp-AccessKey + Scp-AccountId + Scp-ClientType)), with Scp-AccessKey and Scp-Timestamp headers",
            }},
        },
    })
}
