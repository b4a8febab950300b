//! Cinder dialect tests against the real daemon on 127.0.0.1:0: discovery,
//! microversions, auth, every error row of the create-volume spec, lists,
//! updates, metadata, actions and their states, snapshots, quotas, and one
//! volume seen through both dialects.

mod common;

use blockd::clock::OffsetClock;
use common::cinder::{Cinder, TOKENS, expect_fault};
use common::{GIB, TestDaemon, keys};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;

async fn daemon(extra: &str) -> TestDaemon {
    TestDaemon::start_with(
        &format!("{TOKENS}{extra}"),
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await
}

fn admin(d: &TestDaemon) -> Cinder {
    Cinder::new(d.cinder_addr, "tok-admin-0001", "project-a")
}
fn member_a(d: &TestDaemon) -> Cinder {
    Cinder::new(d.cinder_addr, "tok-member-a01", "project-a")
}
fn member_b(d: &TestDaemon) -> Cinder {
    Cinder::new(d.cinder_addr, "tok-member-b01", "project-b")
}

#[tokio::test]
async fn versions_documents_need_no_token() {
    let d = daemon("").await;
    let http = reqwest::Client::new();
    let root = format!("http://{}", d.cinder_addr);
    let r = http.get(format!("{root}/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    assert!(r.headers().contains_key("x-openstack-request-id"));
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["v2.0", "v3.0"]);
    let v3 = &v["versions"][1];
    assert_eq!(v3["status"], "CURRENT");
    assert_eq!(v3["min_version"], "3.0");
    assert_eq!(v3["version"], "3.67");
    assert_eq!(
        v3["media-types"][0]["type"],
        "application/vnd.openstack.volume+json;version=3"
    );
    for (path, id) in [
        ("/v3", "v3.0"),
        ("/v3/", "v3.0"),
        ("/v2", "v2.0"),
        ("/v2/", "v2.0"),
    ] {
        let r = http.get(format!("{root}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["versions"][0]["id"], id, "{path}");
        assert_eq!(v["versions"].as_array().unwrap().len(), 1);
    }
    let r = http
        .get(format!("{root}/v9/x/volumes"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn microversions_are_negotiated_echoed_and_bounded() {
    let d = daemon("").await;
    let c = member_a(&d);
    let a = c.get("/volumes").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.headers["openstack-api-version"], "volume 3.0");
    assert_eq!(a.headers["vary"], "OpenStack-API-Version");
    assert!(a.headers.contains_key("x-openstack-request-id"));
    let a = c.clone().mv("latest").get("/volumes").await;
    assert_eq!(a.headers["openstack-api-version"], "volume 3.67");
    let a = c.clone().mv("3.42").get("/volumes").await;
    assert_eq!(a.headers["openstack-api-version"], "volume 3.42");
    for bad in ["3.68", "2.0", "4.0"] {
        let a = c.clone().mv(bad).get("/volumes").await;
        let m = expect_fault(&a, 406, "computeFault");
        assert!(m.contains("3.67"), "{m}");
    }
    let a = c.clone().mv("three").get("/volumes").await;
    expect_fault(&a, 400, "badRequest");

    // The project id in the URL is optional from 3.67 only.
    let mut bare = c.clone();
    bare.project = None;
    expect_fault(
        &bare.clone().mv("3.66").get("/volumes").await,
        404,
        "itemNotFound",
    );
    assert_eq!(bare.mv("3.67").get("/volumes").await.status, StatusCode::OK);

    // v2 has no microversions.
    let r = reqwest::Client::new()
        .get(format!("http://{}/v2/project-a/volumes", d.cinder_addr))
        .header("X-Auth-Token", "tok-member-a01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(!r.headers().contains_key("openstack-api-version"));
}

const BASE_FIELDS: &[&str] = &[
    "attachments",
    "availability_zone",
    "bootable",
    "consistencygroup_id",
    "created_at",
    "description",
    "encrypted",
    "id",
    "links",
    "metadata",
    "multiattach",
    "name",
    "os-vol-tenant-attr:tenant_id",
    "replication_status",
    "size",
    "snapshot_id",
    "source_volid",
    "status",
    "updated_at",
    "user_id",
    "volume_type",
];

fn sorted(mut v: Vec<&str>) -> Vec<String> {
    v.sort();
    v.into_iter().map(String::from).collect()
}

#[tokio::test]
async fn each_microversion_shows_exactly_its_fields() {
    let d = daemon("").await;
    let c = member_a(&d);
    let v = c.create(json!({"size": 1, "name": "mv"})).await;
    let id = v["id"].as_str().unwrap();
    let show = |ver: &'static str, who: Cinder| {
        let path = format!("/volumes/{id}");
        async move { who.mv(ver).get(&path).await.body["volume"].clone() }
    };
    let expect = |extra: &[&'static str]| {
        let mut f: Vec<&str> = BASE_FIELDS.to_vec();
        f.extend_from_slice(extra);
        sorted(f)
    };
    assert_eq!(keys(&show("3.0", c.clone()).await), expect(&[]));
    assert_eq!(keys(&show("3.12", c.clone()).await), expect(&[]));
    assert_eq!(keys(&show("3.13", c.clone()).await), expect(&["group_id"]));
    assert_eq!(
        keys(&show("3.48", c.clone()).await),
        expect(&["group_id", "shared_targets", "service_uuid"])
    );
    assert_eq!(
        keys(&show("3.62", c.clone()).await),
        expect(&["group_id", "shared_targets", "service_uuid"])
    );
    let at63 = show("3.63", c.clone()).await;
    assert_eq!(
        keys(&at63),
        expect(&[
            "group_id",
            "shared_targets",
            "service_uuid",
            "volume_type_id"
        ])
    );
    let types = c.get("/types").await.body;
    let ssd = types["volume_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "SSD")
        .unwrap()
        .clone();
    assert_eq!(at63["volume_type_id"], ssd["id"]);
    assert_eq!(
        keys(&show("3.65", c.clone()).await),
        expect(&[
            "group_id",
            "shared_targets",
            "service_uuid",
            "volume_type_id",
            "consumes_quota"
        ])
    );
    // Admins see the admin-only attributes, each from its version.
    let admin_base = [
        "migration_status",
        "os-vol-host-attr:host",
        "os-vol-mig-status-attr:migstat",
        "os-vol-mig-status-attr:name_id",
    ];
    assert_eq!(keys(&show("3.0", admin(&d)).await), expect(&admin_base));
    let mut at67 = admin_base.to_vec();
    at67.extend([
        "group_id",
        "provider_id",
        "shared_targets",
        "service_uuid",
        "cluster_name",
        "volume_type_id",
        "consumes_quota",
    ]);
    assert_eq!(keys(&show("3.67", admin(&d)).await), expect(&at67));

    // Summary list: id, name, links only.
    let l = c.get("/volumes").await.body;
    assert_eq!(keys(&l["volumes"][0]), sorted(vec!["id", "links", "name"]));
    // Volume summary from 3.12, metadata in it from 3.36.
    expect_fault(
        &c.clone().mv("3.11").get("/volumes/summary").await,
        404,
        "itemNotFound",
    );
    let s = c.clone().mv("3.12").get("/volumes/summary").await.body;
    assert_eq!(s["volume-summary"]["total_count"], 1);
    assert_eq!(s["volume-summary"]["total_size"], 1);
    assert!(s["volume-summary"].get("metadata").is_none());
    let s = c.clone().mv("3.36").get("/volumes/summary").await.body;
    assert!(s["volume-summary"]["metadata"].is_object());
    // count from 3.45 with with_count.
    assert!(
        c.get("/volumes?with_count=true")
            .await
            .body
            .get("count")
            .is_none()
    );
    let l = c
        .clone()
        .mv("3.45")
        .get("/volumes?with_count=True")
        .await
        .body;
    assert_eq!(l["count"], 1);
}

#[tokio::test]
async fn tokens_projects_and_faults() {
    let d = daemon("").await;
    let mut anon = member_a(&d);
    anon.token = None;
    expect_fault(&anon.get("/volumes").await, 401, "unauthorized");
    let mut bad = member_a(&d);
    bad.token = Some("tok-unknown-00".into());
    expect_fault(&bad.get("/volumes").await, 401, "unauthorized");
    // Another project's URL.
    let mut wrong = member_a(&d);
    wrong.project = Some("project-b".into());
    expect_fault(&wrong.get("/volumes").await, 404, "itemNotFound");
    // Methods and media types.
    expect_fault(
        &member_a(&d).call(Method::DELETE, "/volumes", None).await,
        405,
        "badMethod",
    );
    let a = Client_send_text(&member_a(&d), "/volumes", "text/plain", "{}").await;
    expect_fault(&a, 415, "badMediaType");
    expect_fault(&member_a(&d).get("/no-such").await, 404, "itemNotFound");
    expect_fault(
        &member_a(&d)
            .get("/volumes/00000000-0000-0000-0000-000000000000")
            .await,
        404,
        "itemNotFound",
    );
}

#[allow(non_snake_case)]
async fn Client_send_text(c: &Cinder, path: &str, ct: &str, body: &str) -> common::Answer {
    let rb = c
        .request(Method::POST, &c.url(path))
        .header("Content-Type", ct)
        .body(body.to_string());
    common::Client::send(rb).await
}

async fn create_err(c: &Cinder, body: &str) -> common::Answer {
    c.raw(Method::POST, "/volumes", Some(body)).await
}

#[tokio::test]
async fn create_volume_follows_the_spec() {
    let d = daemon("[quota.projects.project-b]\nvolumes = 2\ngigabytes = 10\n").await;
    let c = member_a(&d);
    // The spec's sample request: unknown keys are ignored.
    let a = create_err(
        &c,
        r#"{"volume": {"status": "creating", "project_id": null, "description": null, "availability_zone": null, "attach_status": "detached", "imageRef": null, "size": 1, "name": null, "metadata": {}, "volume_type": null}}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let v = &a.body["volume"];
    assert_eq!(v["status"], "creating");
    assert_eq!(v["bootable"], "false");
    assert_eq!(v["encrypted"], false);
    assert_eq!(v["availability_zone"], "nova");
    assert_eq!(v["volume_type"], "SSD");
    assert_eq!(v["size"], 1);
    assert_eq!(v["user_id"], "user-a");
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["attachments"], json!([]));
    assert!(v["snapshot_id"].is_null() && v["source_volid"].is_null());
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        v["links"][0]["href"],
        format!("http://{}/v3/project-a/volumes/{id}", d.cinder_addr)
    );
    assert_eq!(v["links"][0]["rel"], "self");
    assert_eq!(
        v["links"][1]["href"],
        format!("http://{}/project-a/volumes/{id}", d.cinder_addr)
    );
    assert!(
        chrono::NaiveDateTime::parse_from_str(
            v["created_at"].as_str().unwrap(),
            "%Y-%m-%dT%H:%M:%S%.6f"
        )
        .is_ok(),
        "{}",
        v["created_at"]
    );
    c.wait(id, &["available"]).await;
    assert_eq!(
        std::fs::metadata(d.volume_path(id)).unwrap().len(),
        GIB,
        "the file exists with the size asked"
    );

    // Malformed bodies.
    for body in [
        "",
        "{",
        r#"{"volume": {"size": 1, "name": "x", }}"#,
        "{}",
        r#"{"volumes": {"size": 1}}"#,
        r#"{"volume": 5}"#,
        "[1]",
    ] {
        let m = expect_fault(&create_err(&c, body).await, 400, "badRequest");
        assert_eq!(m, "Malformed request body", "{body:?}");
    }
    // Size.
    for size in ["0", "-1", "1.5", "\"abc\"", "null", "true", "\"\""] {
        let a = create_err(&c, &format!(r#"{{"volume": {{"size": {size}}}}}"#)).await;
        let m = expect_fault(&a, 400, "badRequest");
        assert!(m.contains("size"), "{size}: {m}");
    }
    expect_fault(
        &create_err(&c, r#"{"volume": {"name": "nosize"}}"#).await,
        400,
        "badRequest",
    );
    let a = create_err(&c, r#"{"volume": {"size": "2"}}"#).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["volume"]["size"], 2);
    // Name and description: 0-255, null, or a number.
    for key in ["name", "description"] {
        let long = "x".repeat(256);
        let a = c
            .post("/volumes", json!({"volume": {"size": 1, key: long}}))
            .await;
        expect_fault(&a, 400, "badRequest");
        let a = c
            .post(
                "/volumes",
                json!({"volume": {"size": 1, key: "é".repeat(255)}}),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        let a = c
            .post("/volumes", json!({"volume": {"size": 1, key: 12345}}))
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        assert_eq!(a.body["volume"][key], "12345");
        let a = c
            .post("/volumes", json!({"volume": {"size": 1, key: ["x"]}}))
            .await;
        expect_fault(&a, 400, "badRequest");
    }
    // Metadata: an object of strings.
    for bad in [
        json!("k=v"),
        json!({"k": 1}),
        json!({"k": {"x": "y"}}),
        json!({"": "v"}),
        json!({"k": "v".repeat(256)}),
        json!([1]),
    ] {
        let a = c
            .post("/volumes", json!({"volume": {"size": 1, "metadata": bad}}))
            .await;
        expect_fault(&a, 400, "badRequest");
    }
    let v = c
        .create(json!({"size": 1, "metadata": {"a": "1", "b": ""}}))
        .await;
    assert_eq!(v["metadata"], json!({"a": "1", "b": ""}));
    // Volume type: 404 if unknown; by name or id.
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "volume_type": "NOPE"}}),
        )
        .await,
        404,
        "itemNotFound",
    );
    assert!(m.contains("NOPE"), "{m}");
    let hdd = c.get("/types").await.body["volume_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "HDD")
        .unwrap()["id"]
        .clone();
    let v = c.create(json!({"size": 1, "volume_type": hdd})).await;
    assert_eq!(v["volume_type"], "HDD");
    // Availability zone.
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "availability_zone": "mars"}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("mars"), "{m}");
    assert_eq!(
        c.post(
            "/volumes",
            json!({"volume": {"size": 1, "availability_zone": "nova"}})
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    // Images: a bad identifier; with no image service configured, 500
    // (tests/images.rs covers a real Glance).
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "imageRef": "not-a-uuid"}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("image"), "{m}");
    let img = "0b6fa1e8-3d3f-4b8a-9a5e-2b7a7a9c1e11";
    let m = expect_fault(
        &c.post("/volumes", json!({"volume": {"size": 1, "imageRef": img}}))
            .await,
        500,
        "computeFault",
    );
    assert!(m.contains("image service"), "{m}");
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "imageRef": format!("http://glance/v2/images/{img}")}}),
        )
        .await,
        500,
        "computeFault",
    );
    assert!(m.contains("image service"), "{m}");
    // Source volume: not a UUID 400, unknown 404.
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "source_volid": "vol-1"}}),
        )
        .await,
        400,
        "badRequest",
    );
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "source_volid": img}}),
        )
        .await,
        404,
        "itemNotFound",
    );
    // Snapshot: unknown 404.
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "snapshot_id": img}}),
        )
        .await,
        404,
        "itemNotFound",
    );
    // Several sources at once.
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "snapshot_id": img, "source_volid": id}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("only one"), "{m}");
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "imageRef": img, "source_volid": id}}),
        )
        .await,
        400,
        "badRequest",
    );
    // Another project's volume is not found, as an unknown one.
    expect_fault(
        &member_b(&d)
            .post(
                "/volumes",
                json!({"volume": {"size": 1, "source_volid": id}}),
            )
            .await,
        404,
        "itemNotFound",
    );

    // Quota: count and gigabytes give 413 overLimit with Retry-After.
    let b = member_b(&d);
    let a = b.post("/volumes", json!({"volume": {"size": 11}})).await;
    let m = expect_fault(&a, 413, "overLimit");
    assert!(m.contains("gigabytes"), "{m}");
    assert!(a.headers.contains_key("retry-after"));
    b.create(json!({"size": 1})).await;
    b.create(json!({"size": 1})).await;
    let a = b.post("/volumes", json!({"volume": {"size": 1}})).await;
    let m = expect_fault(&a, 413, "overLimit");
    assert!(m.contains("volumes"), "{m}");
    let l = b.get("/limits").await.body;
    assert_eq!(l["limits"]["absolute"]["maxTotalVolumes"], 2);
    assert_eq!(l["limits"]["absolute"]["totalVolumesUsed"], 2);
    let a = c.post("/volumes", json!({"volume": {"size": 4097}})).await;
    expect_fault(&a, 413, "overLimit");
}

#[tokio::test]
async fn create_from_snapshots_and_clones_check_sources() {
    // Jobs wait 600 ms, so sources can be caught while not available.
    let d = daemon("[jobs]\ndebug_delay_ms = 600\n").await;
    let c = member_a(&d);
    let a = c
        .post("/volumes", json!({"volume": {"size": 2, "name": "src"}}))
        .await;
    let src = a.body["volume"]["id"].as_str().unwrap().to_string();
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 2, "source_volid": src}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("creating"), "{m}");
    c.wait(&src, &["available"]).await;
    std::fs::write(d.volume_path(&src), b"").ok();
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.volume_path(&src))
            .unwrap();
        f.set_len(2 * GIB).unwrap();
        f.seek(std::io::SeekFrom::Start(GIB + 4096)).unwrap();
        f.write_all(b"cinder clone bytes").unwrap();
    }
    // Too small, and a type that does not match the source.
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "source_volid": src}}),
        )
        .await,
        400,
        "badRequest",
    );
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"source_volid": src, "volume_type": "HDD"}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("type"), "{m}");
    // A clone without a size takes the source's; bytes are copied.
    let a = c
        .post("/volumes", json!({"volume": {"source_volid": src}}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["volume"]["source_volid"], src.as_str());
    let clone = a.body["volume"]["id"].as_str().unwrap().to_string();
    let v = c.wait(&clone, &["available"]).await;
    assert_eq!(v["size"], 2);
    let bytes = std::fs::read(d.volume_path(&clone)).unwrap();
    assert_eq!(bytes.len() as u64, 2 * GIB);
    let at = (GIB + 4096) as usize;
    assert_eq!(&bytes[at..at + 18], b"cinder clone bytes");

    // Snapshots: not available yet is 400, larger than size is 400.
    let a = c
        .post(
            "/snapshots",
            json!({"snapshot": {"volume_id": src, "name": "s1"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["snapshot"]["id"].as_str().unwrap().to_string();
    let m = expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 2, "snapshot_id": sid}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("creating"), "{m}");
    c.wait_snapshot(&sid, "available").await;
    expect_fault(
        &c.post(
            "/volumes",
            json!({"volume": {"size": 1, "snapshot_id": sid}}),
        )
        .await,
        400,
        "badRequest",
    );
    let a = c
        .post("/volumes", json!({"volume": {"snapshot_id": sid}}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["volume"]["snapshot_id"], sid.as_str());
    let from = a.body["volume"]["id"].as_str().unwrap().to_string();
    c.wait(&from, &["available"]).await;
    let bytes = std::fs::read(d.volume_path(&from)).unwrap();
    assert_eq!(&bytes[at..at + 18], b"cinder clone bytes");
}

#[tokio::test]
async fn lists_filter_sort_and_page() {
    let d = daemon("").await;
    let c = member_a(&d);
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = c
            .create(json!({"size": 1 + i, "name": format!("v{i}"), "metadata": {"parity": if i % 2 == 0 { "even" } else { "odd" }}}))
            .await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    member_b(&d)
        .create(json!({"size": 1, "name": "other"}))
        .await;
    let l = c.get("/volumes/detail?name=v3").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    assert_eq!(l["volumes"][0]["id"], ids[3].as_str());
    let l = c.get("/volumes/detail?status=available").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 5);
    let l = c.get("/volumes/detail?status=error").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 0);
    let l = c
        .get("/volumes/detail?metadata=%7B%27parity%27%3A+%27even%27%7D")
        .await
        .body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 3, "{l}");
    let n = |l: &Value| l["volumes"].as_array().unwrap().len();
    let c34 = c.clone().mv("3.34");
    assert_eq!(n(&c34.get("/volumes?name~=3").await.body), 1);
    assert_eq!(n(&c34.get("/volumes?name~=v").await.body), 5);
    assert_eq!(n(&c34.get("/volumes?status~=avail").await.body), 5);
    assert_eq!(n(&c34.get("/volumes?name~=%25").await.body), 0);
    assert_eq!(
        n(&c.clone().mv("3.33").get("/volumes?name~=3").await.body),
        5
    );
    assert_eq!(n(&c.get("/volumes?size=3").await.body), 1);
    assert_eq!(n(&c.get("/volumes?availability_zone=mars").await.body), 0);
    assert_eq!(n(&c.get("/volumes?availability_zone=nova").await.body), 5);
    expect_fault(&c.get("/volumes?size=big").await, 400, "badRequest");
    let c60 = c.clone().mv("3.60");
    assert_eq!(
        n(&c60
            .get("/volumes?created_at=gt:2000-01-01T00:00:00")
            .await
            .body),
        5
    );
    assert_eq!(
        n(&c60
            .get("/volumes?created_at=lt:2000-01-01T00:00:00Z")
            .await
            .body),
        0
    );
    assert_eq!(
        n(&c60
            .get("/volumes?updated_at=lte:2999-01-01T00:00:00")
            .await
            .body),
        5
    );
    assert_eq!(
        n(&c.clone()
            .mv("3.59")
            .get("/volumes?created_at=lt:2000-01-01T00:00:00")
            .await
            .body),
        5
    );
    expect_fault(
        &c60.get("/volumes?created_at=soon").await,
        400,
        "badRequest",
    );
    // Sorted by size ascending, two per page, following volumes_links.
    let mut seen = Vec::new();
    let mut url = c.url("/volumes?sort=size:asc&limit=2");
    loop {
        let a = common::Client::send(c.request(Method::GET, &url)).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        for v in a.body["volumes"].as_array().unwrap() {
            seen.push(v["id"].as_str().unwrap().to_string());
        }
        match a.body["volumes_links"][0]["href"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages cover every volume once, in size order");
    let a = c
        .get("/volumes?sort_key=size&sort_dir=desc&limit=1")
        .await
        .body;
    assert_eq!(a["volumes"][0]["id"], ids[4].as_str());
    expect_fault(&c.get("/volumes?sort=bogus:asc").await, 400, "badRequest");
    expect_fault(&c.get("/volumes?limit=x").await, 400, "badRequest");
    expect_fault(&c.get("/volumes?marker=nope").await, 400, "badRequest");
    // all_tenants: only for admins.
    let l = c.get("/volumes?all_tenants=True").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 5);
    let l = admin(&d).get("/volumes?all_tenants=1").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 6);
    let l = admin(&d).get("/volumes").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 5);
}

#[tokio::test]
async fn update_delete_and_metadata() {
    let d = daemon("").await;
    let c = member_a(&d);
    let v = c
        .create(json!({"size": 1, "name": "before", "metadata": {"a": "1"}}))
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let p = format!("/volumes/{id}");
    let a = c
        .call(
            Method::PUT,
            &p,
            Some(json!({"volume": {"name": "after", "description": "d"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["volume"]["name"], "after");
    assert_eq!(a.body["volume"]["description"], "d");
    assert_eq!(a.body["volume"]["metadata"], json!({"a": "1"}));
    expect_fault(
        &c.call(Method::PUT, &p, Some(json!({"volume": {}}))).await,
        400,
        "badRequest",
    );
    expect_fault(
        &c.call(Method::PUT, &p, Some(json!({"name": "x"}))).await,
        400,
        "badRequest",
    );
    expect_fault(
        &c.call(
            Method::PUT,
            &p,
            Some(json!({"volume": {"name": "x".repeat(256)}})),
        )
        .await,
        400,
        "badRequest",
    );
    // Metadata endpoints.
    let mp = format!("{p}/metadata");
    let a = c.post(&mp, json!({"metadata": {"b": "2"}})).await;
    assert_eq!(a.body["metadata"], json!({"a": "1", "b": "2"}));
    let a = c
        .call(Method::PUT, &mp, Some(json!({"metadata": {"c": "3"}})))
        .await;
    assert_eq!(a.body["metadata"], json!({"c": "3"}));
    assert_eq!(c.get(&mp).await.body["metadata"], json!({"c": "3"}));
    let a = c
        .call(
            Method::PUT,
            &format!("{mp}/d"),
            Some(json!({"meta": {"d": "4"}})),
        )
        .await;
    assert_eq!(a.body["meta"], json!({"d": "4"}));
    expect_fault(
        &c.call(
            Method::PUT,
            &format!("{mp}/d"),
            Some(json!({"meta": {"e": "4"}})),
        )
        .await,
        400,
        "badRequest",
    );
    assert_eq!(
        c.get(&format!("{mp}/d")).await.body["meta"],
        json!({"d": "4"})
    );
    assert_eq!(
        c.call(Method::DELETE, &format!("{mp}/d"), None)
            .await
            .status,
        StatusCode::OK
    );
    expect_fault(&c.get(&format!("{mp}/d")).await, 404, "itemNotFound");
    expect_fault(
        &c.call(Method::DELETE, &format!("{mp}/d"), None).await,
        404,
        "itemNotFound",
    );
    expect_fault(
        &c.post(&mp, json!({"metadata": {"k": 5}})).await,
        400,
        "badRequest",
    );
    // Metadata filters see what was set.
    let l = c
        .get("/volumes?metadata=%7B%22c%22%3A%223%22%7D")
        .await
        .body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);

    // Delete: Python-style booleans, cascade for snapshots.
    let a = c
        .post("/snapshots", json!({"snapshot": {"volume_id": id}}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["snapshot"]["id"].as_str().unwrap().to_string();
    c.wait_snapshot(&sid, "available").await;
    let m = expect_fault(
        &c.call(Method::DELETE, &format!("{p}?cascade=False"), None)
            .await,
        400,
        "badRequest",
    );
    assert!(m.starts_with("Invalid volume"), "{m}");
    expect_fault(
        &c.call(Method::DELETE, &format!("{p}?cascade=maybe"), None)
            .await,
        400,
        "badRequest",
    );
    expect_fault(
        &c.call(Method::DELETE, &format!("{p}?force=True"), None)
            .await,
        403,
        "forbidden",
    );
    let a = c
        .call(Method::DELETE, &format!("{p}?cascade=True"), None)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait(&id, &[]).await;
    assert!(!d.volume_path(&id).exists(), "the file is gone");
    expect_fault(
        &c.get(&format!("/snapshots/{sid}")).await,
        404,
        "itemNotFound",
    );
    expect_fault(&c.call(Method::DELETE, &p, None).await, 404, "itemNotFound");
}

async fn act(c: &Cinder, id: &str, body: Value) -> common::Answer {
    c.post(&format!("/volumes/{id}/action"), body).await
}

#[tokio::test]
async fn actions_follow_cinder_states() {
    let d = daemon("").await;
    let c = member_a(&d);
    let v = c.create(json!({"size": 1})).await;
    let id = v["id"].as_str().unwrap().to_string();
    // Extend: must grow.
    let m = expect_fault(
        &act(&c, &id, json!({"os-extend": {"new_size": 1}})).await,
        400,
        "badRequest",
    );
    assert!(m.contains("greater than current size"), "{m}");
    expect_fault(
        &act(&c, &id, json!({"os-extend": {"new_size": "x"}})).await,
        400,
        "badRequest",
    );
    assert_eq!(
        act(&c, &id, json!({"os-extend": {"new_size": 2}}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let v = c.wait(&id, &["available"]).await;
    assert_eq!(v["size"], 2);
    assert_eq!(
        std::fs::metadata(d.volume_path(&id)).unwrap().len(),
        2 * GIB
    );
    // Reserve and unreserve.
    assert_eq!(
        act(&c, &id, json!({"os-reserve": null})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        c.get(&format!("/volumes/{id}")).await.body["volume"]["status"],
        "attaching"
    );
    let m = expect_fault(
        &act(&c, &id, json!({"os-reserve": {}})).await,
        400,
        "badRequest",
    );
    assert!(m.starts_with("Invalid volume"), "{m}");
    let m = expect_fault(
        &act(&c, &id, json!({"os-extend": {"new_size": 3}})).await,
        400,
        "badRequest",
    );
    assert!(m.starts_with("Invalid volume"), "{m}");
    expect_fault(
        &c.call(Method::DELETE, &format!("/volumes/{id}"), None)
            .await,
        400,
        "badRequest",
    );
    assert_eq!(
        act(&c, &id, json!({"os-unreserve": {}})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        c.get(&format!("/volumes/{id}")).await.body["volume"]["status"],
        "available"
    );
    // Detaching what is not attached.
    let m = expect_fault(
        &act(&c, &id, json!({"os-begin_detaching": {}})).await,
        400,
        "badRequest",
    );
    assert!(m.starts_with("Invalid volume"), "{m}");
    // Flags.
    assert_eq!(
        act(&c, &id, json!({"os-set_bootable": {"bootable": "True"}}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        c.get(&format!("/volumes/{id}")).await.body["volume"]["bootable"],
        "true"
    );
    expect_fault(
        &act(&c, &id, json!({"os-set_bootable": {"bootable": "perhaps"}})).await,
        400,
        "badRequest",
    );
    assert_eq!(
        act(
            &c,
            &id,
            json!({"os-update_readonly_flag": {"readonly": true}})
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    let m = expect_fault(
        &act(
            &c,
            &id,
            json!({"os-attach": {"instance_uuid": "i-1", "mountpoint": "/dev/vdb", "mode": "rw"}}),
        )
        .await,
        400,
        "badRequest",
    );
    assert!(m.contains("read-only"), "{m}");
    expect_fault(
        &act(
            &c,
            &id,
            json!({"os-attach": {"instance_uuid": "i-1", "mode": "xx"}}),
        )
        .await,
        400,
        "badRequest",
    );
    expect_fault(
        &act(&c, &id, json!({"os-initialize_connection": {}})).await,
        400,
        "badRequest",
    );
    // Admin only: reset_status.
    expect_fault(
        &act(&c, &id, json!({"os-reset_status": {"status": "error"}})).await,
        403,
        "forbidden",
    );
    let a = act(
        &admin(&d),
        &id,
        json!({"os-reset_status": {"status": "error"}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        c.get(&format!("/volumes/{id}")).await.body["volume"]["status"],
        "error"
    );
    expect_fault(
        &act(
            &admin(&d),
            &id,
            json!({"os-reset_status": {"status": "bogus"}}),
        )
        .await,
        400,
        "badRequest",
    );
    let m = expect_fault(
        &act(&c, &id, json!({"os-extend": {"new_size": 3}})).await,
        400,
        "badRequest",
    );
    assert!(m.starts_with("Invalid volume"), "{m}");
    act(
        &admin(&d),
        &id,
        json!({"os-reset_status": {"status": "available"}}),
    )
    .await;
    // Unknown actions and bodies.
    expect_fault(
        &act(&c, &id, json!({"os-fly": {}})).await,
        400,
        "badRequest",
    );
    expect_fault(&act(&c, &id, json!({})).await, 400, "badRequest");
    expect_fault(
        &act(
            &c,
            "00000000-0000-0000-0000-000000000000",
            json!({"os-reserve": {}}),
        )
        .await,
        404,
        "itemNotFound",
    );
    // The readonly flag needs an available volume; bootable does not.
    act(
        &admin(&d),
        &id,
        json!({"os-reset_status": {"status": "error"}}),
    )
    .await;
    expect_fault(
        &act(
            &c,
            &id,
            json!({"os-update_readonly_flag": {"readonly": false}}),
        )
        .await,
        400,
        "badRequest",
    );
}

fn have_loops() -> bool {
    if !std::path::Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control is missing; the connection test needs loop devices");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: the connection test needs root for loop devices");
        return false;
    }
    true
}

#[tokio::test]
async fn connection_handshake_exports_and_extends_live() {
    if !have_loops() {
        return;
    }
    let d = daemon("").await;
    let c = member_a(&d);
    let v = c.create(json!({"size": 1, "name": "attach"})).await;
    let id = v["id"].as_str().unwrap().to_string();
    let p = format!("/volumes/{id}");
    // Admins may set QoS through SCP; the connection carries it.
    let scp = d.client("a");
    let q = scp
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/qos"),
            Some(json!({"max_iops": 500, "max_throughput": 50})),
        )
        .await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.text);
    assert_eq!(
        act(&c, &id, json!({"os-reserve": {}})).await.status,
        StatusCode::ACCEPTED
    );
    let connector = json!({"host": "compute-1", "initiator": "iqn.x", "multipath": false});
    let a = act(
        &c,
        &id,
        json!({"os-initialize_connection": {"connector": connector}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let ci = &a.body["connection_info"];
    assert_eq!(ci["driver_volume_type"], "local");
    let dev = ci["data"]["device_path"].as_str().unwrap().to_string();
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    assert_eq!(ci["data"]["qos_specs"]["total_iops_sec"], 500);
    assert_eq!(ci["data"]["qos_specs"]["total_bytes_sec"], 50_000_000);
    assert_eq!(ci["data"]["access_mode"], "rw");
    let size = |dev: &str| {
        let name = dev.trim_start_matches("/dev/");
        std::fs::read_to_string(format!("/sys/block/{name}/size"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
            * 512
    };
    assert_eq!(size(&dev), GIB);
    assert_eq!(c.get(&p).await.body["volume"]["status"], "attaching");
    let a = act(&c, &id, json!({"os-attach": {"instance_uuid": "5f2d1e7c-0000-4000-8000-000000000001", "mountpoint": "/dev/vdb", "mode": "rw"}})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let v = c.get(&p).await.body["volume"].clone();
    assert_eq!(v["status"], "in-use");
    assert_eq!(v["attachments"].as_array().unwrap().len(), 1);
    // In-use: extend needs 3.42; snapshots need force before 3.66.
    let m = expect_fault(
        &act(&c, &id, json!({"os-extend": {"new_size": 2}})).await,
        400,
        "badRequest",
    );
    assert!(m.contains("available"), "{m}");
    let c42 = c.clone().mv("3.42");
    assert_eq!(
        act(&c42, &id, json!({"os-extend": {"new_size": 2}}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let v = c.wait(&id, &["in-use"]).await;
    assert_eq!(v["size"], 2);
    assert_eq!(size(&dev), 2 * GIB, "the device grew live");
    let m = expect_fault(
        &c.post("/snapshots", json!({"snapshot": {"volume_id": id}}))
            .await,
        400,
        "badRequest",
    );
    assert!(m.contains("in-use"), "{m}");
    expect_fault(
        &c.clone()
            .mv("3.66")
            .post(
                "/snapshots",
                json!({"snapshot": {"volume_id": id, "force": false}}),
            )
            .await,
        400,
        "badRequest",
    );
    let a = c
        .post(
            "/snapshots",
            json!({"snapshot": {"volume_id": id, "force": "True"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait_snapshot(a.body["snapshot"]["id"].as_str().unwrap(), "available")
        .await;
    let a = c
        .clone()
        .mv("3.66")
        .post("/snapshots", json!({"snapshot": {"volume_id": id}}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait_snapshot(a.body["snapshot"]["id"].as_str().unwrap(), "available")
        .await;
    // Detach: begin, roll back, begin again, terminate, detach.
    expect_fault(&c.call(Method::DELETE, &p, None).await, 400, "badRequest");
    assert_eq!(
        act(&c, &id, json!({"os-begin_detaching": {}})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(c.get(&p).await.body["volume"]["status"], "detaching");
    assert_eq!(
        act(&c, &id, json!({"os-roll_detaching": {}})).await.status,
        StatusCode::ACCEPTED
    );
    assert_eq!(c.get(&p).await.body["volume"]["status"], "in-use");
    assert_eq!(
        act(&c, &id, json!({"os-begin_detaching": {}})).await.status,
        StatusCode::ACCEPTED
    );
    let a = act(
        &c,
        &id,
        json!({"os-terminate_connection": {"connector": {"host": "compute-1"}}}),
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        act(&c, &id, json!({"os-detach": {}})).await.status,
        StatusCode::ACCEPTED
    );
    let v = c.wait(&id, &["available"]).await;
    assert_eq!(v["attachments"], json!([]));
    assert!(
        !std::path::Path::new(&format!(
            "/sys/block/{}/loop/backing_file",
            dev.trim_start_matches("/dev/")
        ))
        .exists()
            || std::fs::read_to_string(format!(
                "/sys/block/{}/loop/backing_file",
                dev.trim_start_matches("/dev/")
            ))
            .map(|b| !b.contains(&id))
            .unwrap_or(true),
        "the loop device is released"
    );
}

#[tokio::test]
async fn snapshots_types_quotas_and_zones() {
    let d = daemon("").await;
    let c = member_a(&d);
    let v = c.create(json!({"size": 1})).await;
    let id = v["id"].as_str().unwrap().to_string();
    expect_fault(
        &c.post("/snapshots", json!({"snapshot": {"name": "x"}}))
            .await,
        400,
        "badRequest",
    );
    expect_fault(
        &c.post(
            "/snapshots",
            json!({"snapshot": {"volume_id": "00000000-0000-0000-0000-000000000000"}}),
        )
        .await,
        404,
        "itemNotFound",
    );
    expect_fault(
        &c.post("/snapshots", json!({"snap": {}})).await,
        400,
        "badRequest",
    );
    let a = c
        .post("/snapshots", json!({"snapshot": {"volume_id": id, "name": "s", "description": "d", "metadata": {"k": "v"}}}))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["snapshot"]["id"].as_str().unwrap().to_string();
    let s = c.wait_snapshot(&sid, "available").await;
    assert_eq!(s["os-extended-snapshot-attributes:progress"], "100%");
    assert_eq!(s["os-extended-snapshot-attributes:project_id"], "project-a");
    assert_eq!(s["metadata"], json!({"k": "v"}));
    assert_eq!(s["size"], 1);
    assert_eq!(
        keys(&s),
        sorted(vec![
            "created_at",
            "description",
            "id",
            "metadata",
            "name",
            "os-extended-snapshot-attributes:progress",
            "os-extended-snapshot-attributes:project_id",
            "size",
            "status",
            "updated_at",
            "volume_id",
        ])
    );
    let s41 = c
        .clone()
        .mv("3.41")
        .get(&format!("/snapshots/{sid}"))
        .await
        .body["snapshot"]
        .clone();
    assert_eq!(s41["user_id"], "user-a");
    assert!(s41.get("group_snapshot_id").is_some());
    assert!(s41.get("consumes_quota").is_none());
    let l = c.get("/snapshots").await.body;
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 1);
    assert!(
        l["snapshots"][0]
            .get("os-extended-snapshot-attributes:progress")
            .is_none()
    );
    let l = c
        .get(&format!("/snapshots/detail?volume_id={id}"))
        .await
        .body;
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 1);
    let l = c.get("/snapshots/detail?status=available").await.body;
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 1);
    let l = c.get("/snapshots?status=error").await.body;
    assert_eq!(l["snapshots"].as_array().unwrap().len(), 0);
    assert_eq!(
        member_b(&d).get("/snapshots/detail").await.body["snapshots"],
        json!([])
    );
    let a = c
        .call(
            Method::PUT,
            &format!("/snapshots/{sid}"),
            Some(json!({"snapshot": {"name": "renamed"}})),
        )
        .await;
    assert_eq!(a.body["snapshot"]["name"], "renamed");
    let mp = format!("/snapshots/{sid}/metadata");
    assert_eq!(
        c.post(&mp, json!({"metadata": {"x": "1"}})).await.body["metadata"],
        json!({"k": "v", "x": "1"})
    );
    assert_eq!(
        c.get(&format!("{mp}/x")).await.body["meta"],
        json!({"x": "1"})
    );
    assert_eq!(
        c.call(Method::DELETE, &format!("{mp}/k"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(c.get(&mp).await.body["metadata"], json!({"x": "1"}));
    assert_eq!(
        c.call(Method::DELETE, &format!("/snapshots/{sid}"), None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while c.get(&format!("/snapshots/{sid}")).await.status != StatusCode::NOT_FOUND {
        assert!(std::time::Instant::now() < deadline, "snapshot not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }

    // Types.
    let t = c.get("/types").await.body;
    let names: Vec<&str> = t["volume_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["SSD", "SSD_Provisioned", "HDD"]);
    let def = c.get("/types/default").await.body;
    assert_eq!(def["volume_type"]["name"], "SSD");
    let tid = def["volume_type"]["id"].as_str().unwrap();
    assert_eq!(
        c.get(&format!("/types/{tid}")).await.body["volume_type"]["name"],
        "SSD"
    );
    expect_fault(&c.get("/types/nope").await, 404, "itemNotFound");

    // Quotas: show, defaults, admin update.
    let q = c.get("/os-quota-sets/project-a").await.body;
    assert_eq!(q["quota_set"]["volumes"], 100);
    assert_eq!(q["quota_set"]["id"], "project-a");
    let q = c.get("/os-quota-sets/project-a?usage=True").await.body;
    assert_eq!(q["quota_set"]["volumes"]["in_use"], 1);
    expect_fault(&c.get("/os-quota-sets/project-b").await, 403, "forbidden");
    expect_fault(
        &c.call(
            Method::PUT,
            "/os-quota-sets/project-b",
            Some(json!({"quota_set": {"volumes": 0}})),
        )
        .await,
        403,
        "forbidden",
    );
    let a = admin(&d)
        .call(
            Method::PUT,
            "/os-quota-sets/project-b",
            Some(json!({"quota_set": {"volumes": 0, "gigabytes": 5}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["quota_set"]["volumes"], 0);
    expect_fault(
        &admin(&d)
            .call(
                Method::PUT,
                "/os-quota-sets/project-b",
                Some(json!({"quota_set": {"bogus": 1}})),
            )
            .await,
        400,
        "badRequest",
    );
    expect_fault(
        &member_b(&d)
            .post("/volumes", json!({"volume": {"size": 1}}))
            .await,
        413,
        "overLimit",
    );
    assert_eq!(
        member_b(&d)
            .get("/os-quota-sets/project-b/defaults")
            .await
            .body["quota_set"]["volumes"],
        100
    );

    // Zones and extensions.
    let z = c.get("/os-availability-zone").await.body;
    assert_eq!(z["availabilityZoneInfo"][0]["zoneName"], "nova");
    assert_eq!(z["availabilityZoneInfo"][0]["zoneState"]["available"], true);
    let e = c.get("/extensions").await.body;
    assert!(
        e["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["alias"] == "os-extended-snapshot-attributes")
    );
}

#[tokio::test]
async fn quota_limits_set_through_the_api_survive_a_restart() {
    let d = daemon("").await;
    let a = admin(&d)
        .call(
            Method::PUT,
            "/os-quota-sets/project-b",
            Some(json!({"quota_set": {"volumes": 0}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let d = d.restart(TOKENS).await;
    assert_eq!(
        member_b(&d).get("/os-quota-sets/project-b").await.body["quota_set"]["volumes"],
        0
    );
    expect_fault(
        &member_b(&d)
            .post("/volumes", json!({"volume": {"size": 1}}))
            .await,
        413,
        "overLimit",
    );
}

#[tokio::test]
async fn one_volume_is_one_volume_in_both_dialects() {
    let d = daemon("").await;
    let scp = d.client("a");
    let c = member_a(&d);
    // SCP -> Cinder.
    let v = scp.create("from-scp", 8, None).await;
    let sid = v["id"].as_str().unwrap().to_string();
    scp.wait(&sid, &["available"]).await;
    let a = c.get(&format!("/volumes/{sid}")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["volume"]["name"], "from-scp");
    assert_eq!(a.body["volume"]["size"], 8);
    assert_eq!(a.body["volume"]["status"], "available");
    let l = c.get("/volumes").await.body;
    assert!(
        l["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == sid.as_str())
    );
    expect_fault(
        &member_b(&d).get(&format!("/volumes/{sid}")).await,
        404,
        "itemNotFound",
    );
    // Cinder -> SCP, with metadata as tags and a rename seen by both.
    let cv = c
        .create(json!({"size": 16, "name": "from-cinder", "metadata": {"env": "prod"}}))
        .await;
    let cid = cv["id"].as_str().unwrap().to_string();
    let s = scp.get(&format!("/v1/volumes/{cid}")).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    assert_eq!(s.body["name"], "from-cinder");
    assert_eq!(s.body["size"], 16);
    assert_eq!(s.body["state"], "available");
    let r = scp
        .call(
            Method::PUT,
            &format!("/v1/volumes/{cid}"),
            Some(json!({"name": "renamed-by-scp"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        c.get(&format!("/volumes/{cid}")).await.body["volume"]["name"],
        "renamed-by-scp"
    );
    // Deleting through one dialect removes it from the other.
    assert_eq!(
        c.call(Method::DELETE, &format!("/volumes/{sid}"), None)
            .await
            .status,
        StatusCode::ACCEPTED
    );
    scp.wait(&sid, &[]).await;
    assert!(!d.volume_path(&sid).exists());
}

#[tokio::test]
async fn noauth_tokens_are_user_and_project() {
    let d = TestDaemon::start().await;
    let c = Cinder::new(d.cinder_addr, "alice:demo", "demo");
    let v = c.create(json!({"size": 1, "name": "na"})).await;
    assert_eq!(v["user_id"], "alice");
    assert_eq!(v["os-vol-tenant-attr:tenant_id"], "demo");
    let other = Cinder::new(d.cinder_addr, "bob:elsewhere", "elsewhere");
    assert_eq!(other.get("/volumes").await.body["volumes"], json!([]));
    // noauth callers are admins, as in Cinder: all_tenants shows both.
    let l = other.get("/volumes?all_tenants=True").await.body;
    assert_eq!(l["volumes"].as_array().unwrap().len(), 1);
    let bad = Cinder::new(d.cinder_addr, "a b:c", "demo");
    expect_fault(&bad.get("/volumes").await, 401, "unauthorized");
}

#[test]
fn start_up_refuses_noauth_off_loopback_and_keystone_without_its_section() {
    let dir = tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    for (cinder, key, want) in [
        ("listen = \"0.0.0.0:0\"\n", "cinder.auth", "loopback"),
        (
            "listen = \"127.0.0.1:0\"\nauth = \"keystone\"\n",
            "cinder.keystone",
            "section",
        ),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\n[scp]\nlisten = \"127.0.0.1:0\"\n[cinder]\n{cinder}",
                dir.path().join("data").display().to_string()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blockd"))
            .args(["serve", "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cinder}: started");
        assert!(err.contains(want) && err.contains(key), "{cinder}: {err}");
    }
}

fn sorted_keys(v: &Value) -> Vec<String> {
    let mut k = keys(v);
    k.sort();
    k
}

#[tokio::test]
async fn transfers_move_volumes_between_projects() {
    let d = daemon("").await;
    let a = member_a(&d);
    let b = member_b(&d);
    let v = a.create(json!({"size": 1, "name": "gift"})).await;
    let id = v["id"].as_str().unwrap().to_string();
    let s = a
        .post(
            "/snapshots",
            json!({"snapshot": {"volume_id": id, "name": "s1"}}),
        )
        .await;
    assert_eq!(s.status, StatusCode::ACCEPTED, "{}", s.text);
    let sid = s.body["snapshot"]["id"].as_str().unwrap().to_string();
    a.wait_snapshot(&sid, "available").await;

    // Bad offers change nothing.
    for (body, why) in [
        (json!({"transfer": {"name": "x"}}), "volume_id missing"),
        (
            json!({"transfer": {"volume_id": "not-a-uuid"}}),
            "bad volume_id",
        ),
        (
            json!({"transfer": {"volume_id": id, "bogus": 1}}),
            "unknown key",
        ),
        (
            json!({"transfer": {"volume_id": id, "name": "n".repeat(256)}}),
            "long name",
        ),
        (
            json!({"transfer": {"volume_id": id, "no_snapshots": true}}),
            "no_snapshots before 3.55",
        ),
        (json!({"other": {}}), "no transfer object"),
    ] {
        let r = a.post("/os-volume-transfer", body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{why}: {}", r.text);
    }
    assert_eq!(a.wait(&id, &["available"]).await["status"], "available");
    expect_fault(
        &b.post(
            "/os-volume-transfer",
            json!({"transfer": {"volume_id": id}}),
        )
        .await,
        404,
        "itemNotFound",
    );

    // The offer: the key appears once, the volume waits for its taker.
    let r = a
        .post(
            "/os-volume-transfer",
            json!({"transfer": {"volume_id": id, "name": "to-b"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let t = &r.body["transfer"];
    assert_eq!(
        sorted_keys(t),
        ["auth_key", "created_at", "id", "links", "name", "volume_id"]
    );
    let tid = t["id"].as_str().unwrap().to_string();
    let key = t["auth_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 16);
    assert_eq!(
        a.get(&format!("/volumes/{id}")).await.body["volume"]["status"],
        "awaiting-transfer"
    );
    let shown = a.get(&format!("/os-volume-transfer/{tid}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    assert_eq!(
        sorted_keys(&shown.body["transfer"]),
        ["created_at", "id", "links", "name", "volume_id"]
    );
    assert!(!shown.text.contains(&key), "the key is shown only once");
    let list = a.get("/os-volume-transfer").await;
    assert_eq!(
        sorted_keys(&list.body["transfers"][0]),
        ["id", "links", "name", "volume_id"]
    );
    let detail = a.get("/os-volume-transfer/detail").await;
    assert_eq!(detail.body["transfers"][0]["id"], json!(tid));
    assert!(detail.body["transfers"][0]["created_at"].is_string());
    expect_fault(
        &a.get("/os-volume-transfer?sort=name").await,
        400,
        "badRequest",
    );
    // The same offer through the SCP dialect.
    let scp = d
        .client("a")
        .get(&format!("/v1/volume-transfer/{tid}"))
        .await;
    assert_eq!(scp.status, StatusCode::OK, "{}", scp.text);
    assert_eq!(scp.body["volume_id"], json!(id));

    // Other projects see no offer; a wrong key takes nothing.
    expect_fault(
        &b.get(&format!("/os-volume-transfer/{tid}")).await,
        404,
        "itemNotFound",
    );
    assert_eq!(
        b.get("/os-volume-transfer").await.body["transfers"],
        json!([])
    );
    expect_fault(
        &b.get("/os-volume-transfer/not-a-uuid").await,
        404,
        "itemNotFound",
    );
    let accept = |key: &str| json!({"accept": {"auth_key": key}});
    let path = format!("/os-volume-transfer/{tid}/accept");
    expect_fault(
        &b.post(&path, accept("wrong-key-000000")).await,
        400,
        "badRequest",
    );
    expect_fault(
        &b.post(&path, json!({"accept": {}})).await,
        400,
        "badRequest",
    );
    expect_fault(&b.get(&format!("/volumes/{id}")).await, 404, "itemNotFound");

    // The right key moves the volume and its snapshot to project-b.
    let r = b.post(&path, accept(&key)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        sorted_keys(&r.body["transfer"]),
        ["id", "links", "name", "volume_id"]
    );
    let moved = b.wait(&id, &["available"]).await;
    assert_eq!(moved["os-vol-tenant-attr:tenant_id"], "project-b");
    assert_eq!(
        b.get(&format!("/snapshots/{sid}")).await.status,
        StatusCode::OK
    );
    expect_fault(&a.get(&format!("/volumes/{id}")).await, 404, "itemNotFound");
    expect_fault(
        &a.get(&format!("/snapshots/{sid}")).await,
        404,
        "itemNotFound",
    );
    expect_fault(&b.post(&path, accept(&key)).await, 404, "itemNotFound");
    assert_eq!(
        d.client("b").get(&format!("/v1/volumes/{id}")).await.status,
        StatusCode::OK
    );

    // volume-transfers needs 3.55 and takes no_snapshots; 3.57 shows history.
    expect_fault(&b.get("/volume-transfers").await, 404, "itemNotFound");
    let b57 = member_b(&d).mv("3.57");
    let r = b57
        .post(
            "/volume-transfers",
            json!({"transfer": {"volume_id": id, "no_snapshots": true}}),
        )
        .await;
    expect_fault(&r, 400, "badRequest");
    assert_eq!(b.wait(&id, &["available"]).await["status"], "available");
    let fresh = b.create(json!({"size": 1, "name": "plain"})).await;
    let fid = fresh["id"].as_str().unwrap().to_string();
    let r = b57
        .post(
            "/volume-transfers",
            json!({"transfer": {"volume_id": fid, "no_snapshots": true}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let t = &r.body["transfer"];
    assert_eq!(
        sorted_keys(t),
        [
            "accepted",
            "auth_key",
            "created_at",
            "destination_project_id",
            "id",
            "links",
            "name",
            "no_snapshots",
            "source_project_id",
            "volume_id"
        ]
    );
    assert_eq!(t["source_project_id"], "project-b");
    assert_eq!(t["accepted"], false);
    assert_eq!(t["no_snapshots"], true);
    let t2 = t["id"].as_str().unwrap().to_string();
    assert!(
        t["links"][0]["href"]
            .as_str()
            .unwrap()
            .contains("/volume-transfers/"),
        "{}",
        r.text
    );

    // Cancelling the offer makes the volume available again, once.
    let del = b57
        .call(Method::DELETE, &format!("/volume-transfers/{t2}"), None)
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED, "{}", del.text);
    assert_eq!(b.wait(&fid, &["available"]).await["status"], "available");
    expect_fault(
        &b57.call(Method::DELETE, &format!("/volume-transfers/{t2}"), None)
            .await,
        404,
        "itemNotFound",
    );
}
