//! The OpenAPI documents: served without credentials at /openapi.json on
//! each listener, every path they list is a real route of the router, and
//! their schemas follow the views. For Cinder, real answers of a running
//! daemon are validated against the documented schemas, at several
//! microversions. `BLOCKD_OPENAPI_OUT` and `BLOCKD_CINDER_OPENAPI_OUT` save
//! the documents for the validator CI runs.

mod common;

use blockd::api::cinder::ROUTE_PATHS;
use blockd::api::cinder::openapi::ROUTES as CINDER_ROUTES;
use common::cinder::{Cinder, TOKENS};
use common::*;
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::BTreeSet;

#[tokio::test]
async fn scp_document_matches_the_router() {
    let d = TestDaemon::start().await;
    let base = format!("http://{}", d.addr);
    let r = reqwest::get(format!("{base}/openapi.json")).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: serde_json::Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    if let Ok(out) = std::env::var("BLOCKD_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }

    // Each listed operation exists: unsigned, a signed route answers 401,
    // while an unknown path would answer 404 and a wrong method 405.
    let http = reqwest::Client::new();
    let paths = doc["paths"].as_object().unwrap();
    assert_eq!(
        paths
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum::<usize>(),
        blockd::api::scp::openapi::ROUTES.len()
    );
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let url = format!(
                "{base}{}",
                path.replace("{server_id}", "s1")
                    .replace("{id}", "00000000-0000-0000-0000-000000000000")
            );
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = http.request(m, &url).send().await.unwrap();
            let want = if path == "/" {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(r.status(), want, "{method} {path}");
        }
    }
    let r = http.get(format!("{base}/v1/nothing")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the check can fail");

    // Version schemas: QoS only from 1.2 on.
    let s = &doc["components"]["schemas"];
    assert!(s["VolumeShow"]["properties"]["size"].is_object(), "{s}");
    assert!(s["VolumeShow"]["properties"].get("max_iops").is_none());
    assert!(
        s["VolumeShowV1Dot2"].to_string().contains("max_iops"),
        "{s}"
    );
    assert_eq!(doc["x-scp-versions"]["1.1"]["volume"], "VolumeShow");
    assert_eq!(doc["x-scp-versions"]["1.3"]["volume"], "VolumeShowV1Dot2");
}

// --- The Cinder document ---

async fn cinder_daemon() -> TestDaemon {
    TestDaemon::start_with(
        TOKENS,
        std::sync::Arc::new(blockd::clock::OffsetClock(chrono::Duration::zero())),
    )
    .await
}

async fn cinder_doc(d: &TestDaemon) -> Value {
    let r = reqwest::get(format!("http://{}/openapi.json", d.cinder_addr))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "served without a token");
    r.json().await.unwrap()
}

/// Validates `body` against the schema the document gives for this
/// answer of `METHOD /v3/{project_id}REST`.
fn check(doc: &Value, method: &str, rest: &str, status: u16, body: &Value) {
    let errors = schema_errors(doc, method, rest, status, body);
    assert!(
        errors.is_empty(),
        "{method} {rest} {status}: {errors:?}\n{body:#}"
    );
}

fn schema_errors(doc: &Value, method: &str, rest: &str, status: u16, body: &Value) -> Vec<String> {
    let path = if ["/", "/v2", "/v3"].contains(&rest) || rest.starts_with("/v2/") {
        rest.to_string()
    } else {
        format!("/v3/{{project_id}}{rest}")
    };
    let op = &doc["paths"][&path][method];
    assert!(op.is_object(), "{method} {path} is documented");
    let answer = match op["responses"].get(status.to_string()) {
        Some(a) => a,
        None => {
            let d = &op["responses"]["default"];
            assert!(
                status >= 400 && d.is_object(),
                "{method} {path}: {status} is not documented"
            );
            &doc["components"]["responses"]["Fault"]
        }
    };
    let Some(schema) = answer["content"]["application/json"]["schema"].as_object() else {
        return match body.is_null() {
            true => Vec::new(),
            false => vec![format!("no body documented, got {body}")],
        };
    };
    let root = json!({"$ref": schema["$ref"], "components": doc["components"]});
    let v = jsonschema::validator_for(&root).expect("schema compiles");
    v.iter_errors(body).map(|e| e.to_string()).collect()
}

/// Validates a request body against the operation's documented one.
fn check_request(doc: &Value, method: &str, rest: &str, body: &Value) {
    let op = &doc["paths"][format!("/v3/{{project_id}}{rest}")][method];
    let schema = &op["requestBody"]["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {rest} documents its body");
    let root = json!({"$ref": schema["$ref"], "components": doc["components"]});
    let v = jsonschema::validator_for(&root).expect("schema compiles");
    let errors: Vec<String> = v.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {rest} body: {errors:?}\n{body:#}"
    );
}

#[tokio::test]
async fn cinder_document_matches_the_router() {
    let d = cinder_daemon().await;
    let doc = cinder_doc(&d).await;
    assert_eq!(doc["openapi"], "3.1.0");
    if let Ok(out) = std::env::var("BLOCKD_CINDER_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    }
    let paths = doc["paths"].as_object().unwrap();

    // The documented v3 paths are exactly the router's, and v2 has each
    // that needs no microversion.
    let v3: BTreeSet<&str> = paths
        .keys()
        .filter_map(|p| p.strip_prefix("/v3/{project_id}"))
        .collect();
    let router: BTreeSet<&str> = ROUTE_PATHS.iter().copied().collect();
    assert_eq!(v3, router, "every route has a doc entry and no more");
    for (method, path, _, _, _, _, since) in CINDER_ROUTES {
        let v2 = &paths.get(&format!("/v2/{{project_id}}{path}"));
        assert_eq!(
            v2.and_then(|p| p.get(*method)).is_some(),
            since.is_none(),
            "v2 {method} {path}"
        );
    }
    for p in ["/", "/v3", "/v2"] {
        assert!(paths[p]["get"].is_object(), "{p}");
        assert_eq!(paths[p]["get"]["security"], json!([]), "{p} needs no token");
    }
    let schemes = &doc["components"]["securitySchemes"]["keystoneToken"];
    assert_eq!(schemes["name"], "X-Auth-Token");
    assert_eq!(
        doc["components"]["parameters"]["OpenStackApiVersion"]["name"],
        "OpenStack-API-Version"
    );

    // Each documented method answers, and every other one is 405: probed
    // with fake ids and no bodies, so nothing changes.
    let c = Cinder::new(d.cinder_addr, "tok-admin-0001", "project-a").mv("latest");
    for path in ROUTE_PATHS {
        let item = &paths[&format!("/v3/{{project_id}}{path}")];
        let concrete = path
            .replace("{id}", "00000000-0000-0000-0000-000000000000")
            .replace("{key}", "k")
            .replace("{project}", "project-a");
        for m in ["get", "post", "put", "delete", "patch"] {
            let method = Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
            let a = c.raw(method, &concrete, None).await;
            if item.get(m).is_some() {
                assert_ne!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}");
                assert!(
                    !a.text.contains("The resource could not be found."),
                    "{m} {path}: {}",
                    a.text
                );
                assert!(a.status.as_u16() < 500, "{m} {path}: {}", a.text);
                if a.status.as_u16() >= 400 {
                    check(&doc, m, path, a.status.as_u16(), &a.body);
                }
            } else {
                assert_eq!(
                    a.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{m} {path} is not served"
                );
            }
        }
    }
    let a = c.get("/nothing").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "the check can fail");
    check(&doc, "get", "/volumes", 404, &a.body);
}

/// "Microversion 3.N and later" from a property's description.
fn since(prop: &Value) -> Option<(u16, u16)> {
    let d = prop["description"].as_str()?;
    let rest = d.split("Microversion ").nth(1)?;
    let (v, _) = rest.split_once(" and later")?;
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn admin_only(prop: &Value) -> bool {
    prop["description"]
        .as_str()
        .is_some_and(|d| d.contains("dmin only"))
}

#[tokio::test]
async fn cinder_answers_match_the_documented_schemas() {
    let d = cinder_daemon().await;
    let doc = cinder_doc(&d).await;
    let admin = Cinder::new(d.cinder_addr, "tok-admin-0001", "project-a");
    let member = Cinder::new(d.cinder_addr, "tok-member-a01", "project-a");

    // Discovery.
    let http = reqwest::Client::new();
    for (p, status) in [("/", 300), ("/v3", 200), ("/v2", 200)] {
        let r = http
            .get(format!("http://{}{p}", d.cinder_addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{p}");
        check(&doc, "get", p, status, &r.json().await.unwrap());
    }

    // Create a volume and a snapshot at 3.0 and at the latest version.
    let mut vols = Vec::new();
    for (who, v) in [(&member, "3.0"), (&admin, "latest")] {
        let c = who.clone().mv(v);
        let body =
            json!({"volume": {"size": 1, "name": format!("doc-{v}"), "metadata": {"k": "v"}}});
        check_request(&doc, "post", "/volumes", &body);
        let a = c.post("/volumes", body).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        check(&doc, "post", "/volumes", 202, &a.body);
        let id = a.body["volume"]["id"].as_str().unwrap().to_string();
        c.wait(&id, &["available"]).await;
        vols.push(id);
    }
    let c = member.clone().mv("latest");
    let body =
        json!({"snapshot": {"volume_id": vols[0], "name": "doc-snap", "metadata": {"a": "b"}}});
    check_request(&doc, "post", "/snapshots", &body);
    let a = c.post("/snapshots", body).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    check(&doc, "post", "/snapshots", 202, &a.body);
    let snap = a.body["snapshot"]["id"].as_str().unwrap().to_string();
    c.wait_snapshot(&snap, "available").await;

    // Show and list them, and the small resources, at several versions,
    // as an admin and as a member.
    let vol = &vols[0];
    let gets = [
        format!("/volumes/{vol}"),
        "/volumes".into(),
        "/volumes/detail?with_count=true".into(),
        "/volumes/summary".into(),
        format!("/volumes/{vol}/metadata"),
        format!("/volumes/{vol}/metadata/k"),
        format!("/snapshots/{snap}"),
        "/snapshots".into(),
        "/snapshots/detail".into(),
        format!("/snapshots/{snap}/metadata"),
        "/types".into(),
        "/types/default".into(),
        "/os-quota-sets/project-a?usage=true".into(),
        "/os-quota-sets/project-a".into(),
        "/os-quota-sets/project-a/defaults".into(),
        "/limits".into(),
        "/os-availability-zone".into(),
        "/extensions".into(),
    ];
    for v in ["3.0", "3.13", "3.36", "3.41", "3.48", "3.63", "latest"] {
        for who in [&admin, &member] {
            let c = who.clone().mv(v);
            for g in &gets {
                let a = c.get(g).await;
                let tmpl = g
                    .split('?')
                    .next()
                    .unwrap()
                    .replace(vol.as_str(), "{id}")
                    .replace(snap.as_str(), "{id}")
                    .replace("/metadata/k", "/metadata/{key}")
                    .replace("/project-a", "/{project}");
                if tmpl == "/volumes/summary" && v == "3.0" {
                    assert_eq!(a.status, StatusCode::NOT_FOUND);
                } else {
                    assert_eq!(a.status, StatusCode::OK, "{v} {g}: {}", a.text);
                }
                check(&doc, "get", &tmpl, a.status.as_u16(), &a.body);
                if !tmpl.contains("summary") {
                    assert!(a.headers.contains_key("openstack-api-version"), "{g}");
                }
            }
        }
    }
    let first = admin
        .clone()
        .mv("latest")
        .get(&format!("/types/{}", "default"))
        .await;
    let tid = first.body["volume_type"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = admin.get(&format!("/types/{tid}")).await;
    check(&doc, "get", "/types/{id}", 200, &a.body);

    // Metadata writes.
    for base in [format!("/volumes/{vol}"), format!("/snapshots/{snap}")] {
        let tmpl = if base.starts_with("/volumes") {
            "/volumes/{id}"
        } else {
            "/snapshots/{id}"
        };
        let writes = [
            (Method::POST, "/metadata", json!({"metadata": {"m1": "1"}})),
            (Method::PUT, "/metadata", json!({"metadata": {"m2": "2"}})),
            (Method::PUT, "/metadata/m3", json!({"meta": {"m3": "3"}})),
        ];
        for (m, sub, body) in writes {
            let rest = format!("{tmpl}{}", sub.replace("/m3", "/{key}"));
            let method = m.as_str().to_lowercase();
            check_request(&doc, &method, &rest, &body);
            let a = member.call(m, &format!("{base}{sub}"), Some(body)).await;
            assert_eq!(a.status, StatusCode::OK, "{rest}: {}", a.text);
            check(&doc, &method, &rest, 200, &a.body);
        }
        let a = member
            .call(Method::DELETE, &format!("{base}/metadata/m3"), None)
            .await;
        check(
            &doc,
            "delete",
            &format!("{tmpl}/metadata/{{key}}"),
            a.status.as_u16(),
            &a.body,
        );
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    }

    // A quota update, and the v2 API's answers under its own paths.
    let body = json!({"quota_set": {"volumes": 50}});
    check_request(&doc, "put", "/os-quota-sets/{project}", &body);
    let a = admin
        .call(Method::PUT, "/os-quota-sets/project-a", Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    check(&doc, "put", "/os-quota-sets/{project}", 200, &a.body);
    for (rest, tmpl) in [
        (format!("/volumes/{vol}"), "/volumes/{id}"),
        ("/volumes/detail".to_string(), "/volumes/detail"),
        (format!("/snapshots/{snap}"), "/snapshots/{id}"),
    ] {
        let r = http
            .get(format!("http://{}/v2/project-a{rest}", d.cinder_addr))
            .header("X-Auth-Token", "tok-member-a01")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "v2 {rest}");
        let body: Value = r.json().await.unwrap();
        let errors = schema_errors(
            &doc,
            "get",
            &format!("/v2/{{project_id}}{tmpl}"),
            200,
            &body,
        );
        assert!(errors.is_empty(), "v2 {rest}: {errors:?}");
    }

    // The check can fail: a field the document does not have, or a
    // required one missing.
    let a = admin
        .clone()
        .mv("latest")
        .get(&format!("/volumes/{vol}"))
        .await;
    let mut extra = a.body.clone();
    extra["volume"]["surprise"] = json!(1);
    assert!(!schema_errors(&doc, "get", "/volumes/{id}", 200, &extra).is_empty());
    let mut short = a.body.clone();
    short["volume"].as_object_mut().unwrap().remove("size");
    assert!(!schema_errors(&doc, "get", "/volumes/{id}", 200, &short).is_empty());

    // Faults: a missing volume, a bad body, no token, a version out of range.
    let a = member
        .get(&format!("/volumes/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    check(&doc, "get", "/volumes/{id}", 404, &a.body);
    let a = member.raw(Method::POST, "/volumes", Some("[1]")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    check(&doc, "post", "/volumes", 400, &a.body);
    let mut anon = member.clone();
    anon.token = None;
    let a = anon.get("/volumes").await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    check(&doc, "get", "/volumes", 401, &a.body);
    let a = member.clone().mv("3.99").get("/volumes").await;
    assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE);
    check(&doc, "get", "/volumes", 406, &a.body);

    // Updates answer the documented views too.
    let body = json!({"volume": {"name": "renamed"}});
    check_request(&doc, "put", "/volumes/{id}", &body);
    let a = member
        .call(Method::PUT, &format!("/volumes/{vol}"), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    check(&doc, "put", "/volumes/{id}", a.status.as_u16(), &a.body);
    let body = json!({"snapshot": {"description": "d"}});
    check_request(&doc, "put", "/snapshots/{id}", &body);
    let a = member
        .call(Method::PUT, &format!("/snapshots/{snap}"), Some(body))
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    check(&doc, "put", "/snapshots/{id}", a.status.as_u16(), &a.body);

    // Each documented action is one the dialect knows: sent without its
    // arguments it may be refused, but never as an unknown action.
    let c = admin.clone().mv("latest");
    let path = format!("/volumes/{}/action", vols[1]);
    let a = c.post(&path, json!({"os-nothing": null})).await;
    assert!(a.text.contains("There is no such action"), "{}", a.text);
    check(&doc, "post", "/volumes/{id}/action", 400, &a.body);
    let names = doc["x-cinder-actions"].as_object().unwrap();
    assert_eq!(names.len(), blockd::api::cinder::openapi::ACTIONS.len());
    for name in names.keys() {
        let a = c.post(&path, json!({ name: null })).await;
        assert!(a.status.as_u16() < 500, "{name}: {}", a.text);
        assert!(
            !a.text.contains("There is no such action"),
            "{name}: {}",
            a.text
        );
        check(
            &doc,
            "post",
            "/volumes/{id}/action",
            a.status.as_u16(),
            &a.body,
        );
    }

    // Volume transfers, through both collections: offered by the member
    // of project-a, accepted at the end by project-b.
    let tvol = member
        .clone()
        .mv("latest")
        .create(json!({"size": 1, "name": "doc-transfer"}))
        .await;
    let tvol = tvol["id"].as_str().unwrap().to_string();
    let body = json!({"transfer": {"volume_id": tvol, "name": "t1", "no_snapshots": true}});
    check_request(&doc, "post", "/volume-transfers", &body);
    let a = member
        .clone()
        .mv("latest")
        .post("/volume-transfers", body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    check(&doc, "post", "/volume-transfers", 202, &a.body);
    let tid = a.body["transfer"]["id"].as_str().unwrap().to_string();
    let key = a.body["transfer"]["auth_key"].as_str().unwrap().to_string();
    for (v, coll) in [
        ("3.0", "/os-volume-transfer"),
        ("3.57", "/os-volume-transfer"),
        ("3.55", "/volume-transfers"),
        ("latest", "/volume-transfers"),
    ] {
        let c = member.clone().mv(v);
        for (rest, tmpl) in [
            (format!("{coll}/{tid}"), format!("{coll}/{{id}}")),
            (coll.to_string(), coll.to_string()),
            (format!("{coll}/detail"), format!("{coll}/detail")),
        ] {
            let a = c.get(&rest).await;
            assert_eq!(a.status, StatusCode::OK, "{v} {rest}: {}", a.text);
            check(&doc, "get", &tmpl, 200, &a.body);
        }
    }

    // The microversion notes are true: a noted field appears exactly from
    // its version, admin-only fields only for admins, and the rest always.
    let schemas = &doc["components"]["schemas"];
    for (name, path, key) in [
        ("VolumeView", format!("/volumes/{vol}"), "volume"),
        ("SnapshotView", format!("/snapshots/{snap}"), "snapshot"),
        (
            "TransferView",
            format!("/os-volume-transfer/{tid}"),
            "transfer",
        ),
    ] {
        let props = schemas[name]["properties"].as_object().unwrap();
        let mut noted = 0;
        for (field, prop) in props {
            if prop["description"]
                .as_str()
                .is_some_and(|d| d.contains("Shown once") || d.starts_with("Only when"))
            {
                continue;
            }
            let who = if admin_only(prop) { &admin } else { &member };
            let has = |a: &common::Answer| a.body[key].get(field).is_some();
            match since(prop) {
                Some((maj, min)) => {
                    noted += 1;
                    let before = who
                        .clone()
                        .mv(&format!("{maj}.{}", min - 1))
                        .get(&path)
                        .await;
                    let at = who.clone().mv(&format!("{maj}.{min}")).get(&path).await;
                    assert!(!has(&before), "{name}.{field} is absent before {maj}.{min}");
                    assert!(has(&at), "{name}.{field} is shown from {maj}.{min}");
                }
                None => {
                    let a = who.clone().mv("3.0").get(&path).await;
                    assert!(has(&a), "{name}.{field} is shown at 3.0");
                }
            }
            if admin_only(prop) {
                let a = member.clone().mv("latest").get(&path).await;
                assert!(!has(&a), "{name}.{field} is hidden from members");
            }
        }
        assert!(noted >= 3, "{name} notes its microversion fields");
    }

    let body = json!({"accept": {"auth_key": key}});
    check_request(&doc, "post", "/os-volume-transfer/{id}/accept", &body);
    let b = Cinder::new(d.cinder_addr, "tok-member-b01", "project-b");
    let a = b
        .post(&format!("/os-volume-transfer/{tid}/accept"), body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    check(
        &doc,
        "post",
        "/os-volume-transfer/{id}/accept",
        202,
        &a.body,
    );
}
