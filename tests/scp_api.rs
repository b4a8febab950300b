//! The SCP dialect end to end: a real server, a signed HTTP client, and
//! checks on the files the volumes live in. Signatures and project
//! isolation are in tests/security.rs.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// Lets 1.0 and 1.1 be called although their dates have passed.
const OLD_VERSIONS_ON: &str = r#"
[[scp.versions]]
id = "1.0"
status = "SUPPORTED"
[[scp.versions]]
id = "1.1"
status = "SUPPORTED"
"#;

const BASE_KEYS: &[&str] = &[
    "bootable",
    "created_at",
    "encrypted",
    "id",
    "modified_at",
    "multiattach",
    "name",
    "servers",
    "size",
    "snapshot_id",
    "state",
    "user_id",
    "volume_image_metadata",
    "volume_type",
    "volume_type_id",
];

fn expected_keys(version: &str) -> Vec<String> {
    let mut k: Vec<String> = BASE_KEYS.iter().map(|s| s.to_string()).collect();
    if version >= "1.2" {
        k.push("max_iops".into());
        k.push("max_throughput".into());
    }
    k.sort();
    k
}

#[tokio::test]
async fn versions_document_is_open_and_lists_current() {
    let d = TestDaemon::start().await;
    let r = reqwest::get(format!("http://{}/", d.addr)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"v1.3"), "{v}");
    let cur = v["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "v1.3")
        .unwrap();
    assert_eq!(cur["status"], "CURRENT");
    assert!(
        cur["links"][0]["href"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );
}

#[tokio::test]
async fn whole_lifecycle_on_every_version() {
    let d = TestDaemon::start_with(
        OLD_VERSIONS_ON,
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    for ver in ["1.0", "1.1", "1.2", "1.3"] {
        let c = d.client("a").version(Some(ver));
        let v = c
            .create(&format!("vol {}", ver.replace('.', "-")), 16, None)
            .await;
        assert_eq!(keys(&v), expected_keys(ver), "create shape in {ver}");
        assert_eq!(v["state"], "creating");
        assert_eq!(v["user_id"], "user-a");
        let id = v["id"].as_str().unwrap().to_string();
        let v = c.wait(&id, &["available"]).await;
        assert_eq!(keys(&v), expected_keys(ver), "show shape in {ver}");
        assert_eq!(v["size"], 16);
        assert_eq!(v["volume_type"], "SSD");
        assert!(
            v["modified_at"].is_string(),
            "modified_at is required in 1.0"
        );
        let m = std::fs::metadata(d.volume_path(&id)).unwrap();
        assert_eq!(m.len(), 16 * GIB);
        assert!(m.blocks() * 512 < (1 << 20), "SSD is sparse");

        let l = c.get("/v1/volumes?limit=1000").await;
        assert_eq!(l.status, StatusCode::OK);
        assert_eq!(keys(&l.body), vec!["count", "volumes"]);
        let listed = l.body["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id.as_str())
            .expect("listed")
            .clone();
        assert_eq!(keys(&listed), expected_keys(ver), "list shape in {ver}");

        let r = c
            .call(
                Method::PUT,
                &format!("/v1/volumes/{id}"),
                Some(json!({"name": "renamed"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["name"], "renamed");
        assert_eq!(keys(&r.body), expected_keys(ver));

        let r = c
            .call(
                Method::PUT,
                &format!("/v1/volumes/{id}/size"),
                Some(json!({"size": 24})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        assert_eq!(keys(&r.body), expected_keys(ver));
        let v = c.wait(&id, &["available"]).await;
        assert_eq!(v["size"], 24);
        assert_eq!(
            std::fs::metadata(d.volume_path(&id)).unwrap().len(),
            24 * GIB
        );

        let qos = c
            .call(
                Method::PUT,
                &format!("/v1/volumes/{id}/qos"),
                Some(json!({"max_iops": 500, "max_throughput": null})),
            )
            .await;
        if ver >= "1.2" {
            assert_eq!(qos.status, StatusCode::OK, "{}", qos.text);
            let v = c.get(&format!("/v1/volumes/{id}")).await.body;
            assert_eq!(v["max_iops"], 500);
            assert!(v["max_throughput"].is_null());
        } else {
            assert_eq!(qos.status, StatusCode::NOT_FOUND, "qos is 1.2+");
        }

        let r = c
            .call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        c.wait(&id, &[]).await;
        assert!(!d.volume_path(&id).exists(), "file removed");
    }
}

#[tokio::test]
async fn qos_given_at_create_is_shown_from_1_2_and_refused_before() {
    let d = TestDaemon::start_with(
        OLD_VERSIONS_ON,
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let body = json!({"name": "q", "size": 8, "max_iops": 1000, "max_throughput": 50, "snapshot_id": null, "tags": null, "volume_type": null});
    let a = d
        .client("a")
        .call(Method::POST, "/v1/volumes", Some(body.clone()))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["max_iops"], 1000);
    assert_eq!(a.body["max_throughput"], 50);
    let old = d.client("a").version(Some("1.1"));
    let r = old.call(Method::POST, "/v1/volumes", Some(body)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(detail(&r).contains("max_iops"), "{}", r.text);
    // The 1.1 view of the same volume has no QoS fields.
    let id = a.body["id"].as_str().unwrap();
    let v = old.get(&format!("/v1/volumes/{id}")).await;
    assert_eq!(keys(&v.body), expected_keys("1.1"));
}

#[tokio::test]
async fn provisioned_volumes_are_fully_allocated() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    if room_for(d.dir.path(), 8 * GIB, "the fully allocated volume") {
        let v = c.create("thick", 8, Some("SSD_Provisioned")).await;
        let id = v["id"].as_str().unwrap();
        c.wait(id, &["available"]).await;
        let m = std::fs::metadata(d.volume_path(id)).unwrap();
        assert_eq!(m.len(), 8 * GIB);
        assert!(
            m.blocks() * 512 >= 8 * GIB,
            "allocated {} bytes",
            m.blocks() * 512
        );
    }
    let v = c.create("thin", 8, Some("HDD")).await;
    let id = v["id"].as_str().unwrap();
    c.wait(id, &["available"]).await;
    assert!(std::fs::metadata(d.volume_path(id)).unwrap().blocks() * 512 < 1 << 20);
}

#[tokio::test]
async fn bad_input_gets_400_naming_the_field_and_changes_nothing() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let cases: Vec<(&str, &str)> = vec![
        ("{", "JSON"),
        ("", "empty"),
        ("[]", "body"),
        (r#"{"size": 8}"#, "name"),
        (r#"{"name": null, "size": 8}"#, "name"),
        (r#"{"name": "ok"}"#, "size"),
        (r#"{"name": "ok", "size": "8"}"#, "size"),
        (r#"{"name": "ok", "size": 8.5}"#, "size"),
        (r#"{"name": "ok", "size": -8}"#, "size"),
        (r#"{"name": "ok", "size": 4}"#, "size"),
        (r#"{"name": "ok", "size": 12}"#, "size"),
        (r#"{"name": "ok", "size": 0}"#, "size"),
        (r#"{"name": "ok", "size": 99999999999999999999999}"#, "size"),
        (r#"{"name": "bad/name", "size": 8}"#, "name"),
        (r#"{"name": "", "size": 8}"#, "name"),
        (r#"{"name": "ünïcode", "size": 8}"#, "name"),
        (r#"{"name": 5, "size": 8}"#, "name"),
        (r#"{"name": "ok", "size": 8, "colour": "red"}"#, "colour"),
        (
            r#"{"name": "ok", "size": 8, "volume_type": "GOLD"}"#,
            "volume_type",
        ),
        (
            r#"{"name": "ok", "size": 8, "tags": [{"value": "v"}]}"#,
            "tags[0].key",
        ),
        (r#"{"name": "ok", "size": 8, "tags": "x"}"#, "tags"),
        (r#"{"name": "ok", "size": 8, "max_iops": 0}"#, "max_iops"),
        (
            r#"{"name": "ok", "size": 8, "max_throughput": 3000000000}"#,
            "max_throughput",
        ),
        (
            r#"{"name": "ok", "size": 8, "snapshot_id": "nope"}"#,
            "snapshot_id",
        ),
    ];
    let long = format!(r#"{{"name": "{}", "size": 8}}"#, "a".repeat(256));
    let mut all = cases.clone();
    all.push((long.as_str(), "name"));
    for (body, field) in all {
        let a = Client::send(
            c.signed(Method::POST, "/v1/volumes", None)
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        let det = detail(&a);
        assert!(
            det.contains(field),
            "{body}: detail {det:?} should name {field}"
        );
        assert_eq!(a.body["errors"][0]["code"], "BadRequest", "{body}");
        assert!(a.body["errors"][0]["title"].is_string());
    }
    let l = c.get("/v1/volumes").await;
    assert_eq!(l.body["count"], 0, "nothing was created");
    assert_eq!(
        std::fs::read_dir(d.dir.path().join("data/volumes"))
            .unwrap()
            .count(),
        0
    );

    // Bad extend and rename bodies.
    let v = c.create("good", 8, None).await;
    let id = v["id"].as_str().unwrap();
    c.wait(id, &["available"]).await;
    for (body, field) in [
        (json!({"size": 8}), "size"),
        (json!({"size": 4}), "size"),
        (json!({"size": 20}), "size"),
        (json!({}), "size"),
        (json!({"size": "16"}), "size"),
    ] {
        let a = c
            .call(
                Method::PUT,
                &format!("/v1/volumes/{id}/size"),
                Some(body.clone()),
            )
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert!(detail(&a).contains(field));
    }
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}"),
            Some(json!({"name": "x/y"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let v = c.get(&format!("/v1/volumes/{id}")).await.body;
    assert_eq!(
        (v["size"].as_u64(), v["name"].as_str()),
        (Some(8), Some("good"))
    );

    // Query parameters.
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "offset=-1",
        "sort=colour",
        "sort=name:sideways",
        "state=melting",
        "bootable=maybe",
        "with_count=2",
        "frobnicate=1",
        "marker=00000000-0000-0000-0000-000000000000",
    ] {
        let a = c.get(&format!("/v1/volumes?{q}")).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{q}: {}", a.text);
    }
    let flood: String = (0..2000).map(|i| format!("p{i}=1&")).collect();
    let a = c.get(&format!("/v1/volumes?{flood}")).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let big = json!({"name": "x", "size": 8, "tags": [{"key": "k", "value": "v".repeat(70_000)}]});
    let a = c.call(Method::POST, "/v1/volumes", Some(big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", a.text);
    assert!(detail(&a).contains("too large"));
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_scp_format() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let a = c.get("/v1/nothing-here").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    detail(&a);
    let a = c.call(Method::PATCH, "/v1/volumes", None).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    detail(&a);
    let a = c.get("/v1/volumes/not-a-uuid").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = c
        .get("/v1/volumes/3f500f00-ed80-4566-a057-e31760226f9a")
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert!(a.headers.contains_key("x-request-id"));
}

#[tokio::test]
async fn version_negotiation_follows_the_lifecycle() {
    let d = TestDaemon::start().await;
    // Absent header: the latest CURRENT (1.3) shape.
    let c = d.client("a").version(None);
    let v = c.create("nohdr", 8, None).await;
    assert_eq!(keys(&v), expected_keys("1.3"));
    for (ver, code) in [
        ("1.0", StatusCode::NOT_ACCEPTABLE),
        ("1.1", StatusCode::NOT_ACCEPTABLE),
        ("1.2", StatusCode::OK),
        ("1.3", StatusCode::OK),
        ("2.0", StatusCode::NOT_ACCEPTABLE),
    ] {
        let a = d.client("a").version(Some(ver)).get("/v1/volumes").await;
        assert_eq!(a.status, code, "version {ver}: {}", a.text);
        if code != StatusCode::OK {
            assert!(detail(&a).contains(ver), "{}", a.text);
        }
    }
    let mut bad = d.client("a");
    bad.version = Some("blockstorage 1.3".into());
    assert_eq!(
        bad.get("/v1/volumes").await.status,
        StatusCode::NOT_ACCEPTABLE
    );

    // Before 1.1's date it is callable; a PLANNED version never is.
    let planned = r#"
[[scp.versions]]
id = "1.4"
status = "PLANNED"
"#;
    let back = Arc::new(OffsetClock(
        chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc()
            - chrono::Utc::now(),
    ));
    let d = TestDaemon::start_with(planned, back).await;
    assert_eq!(
        d.client("a")
            .version(Some("1.1"))
            .get("/v1/volumes")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        d.client("a")
            .version(Some("1.0"))
            .get("/v1/volumes")
            .await
            .status,
        StatusCode::NOT_ACCEPTABLE
    );
    let a = d.client("a").version(Some("1.4")).get("/v1/volumes").await;
    assert_eq!(a.status, StatusCode::NOT_ACCEPTABLE);
    assert!(detail(&a).contains("planned"));
}

#[tokio::test]
async fn pagination_walks_every_volume_once() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let mut ids = Vec::new();
    for i in 0..23 {
        let v = c.create(&format!("v{:02}", i % 9), 8, None).await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    for sort in [
        "created_at:desc",
        "name:asc,created_at:desc",
        "size,name:desc",
        "id:asc",
    ] {
        let mut seen: Vec<String> = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut q = format!("/v1/volumes?limit=7&sort={sort}");
            if let Some(m) = &marker {
                q += &format!("&marker={m}");
            }
            let a = c.get(&q).await;
            assert_eq!(a.status, StatusCode::OK, "{}", a.text);
            assert_eq!(a.body["count"], 23);
            let page: Vec<String> = a.body["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string())
                .collect();
            assert!(page.len() <= 7);
            if page.is_empty() {
                break;
            }
            marker = page.last().cloned();
            seen.extend(page);
        }
        let all = c.get(&format!("/v1/volumes?limit=1000&sort={sort}")).await;
        let expect: Vec<String> = all.body["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(seen, expect, "marker pages for {sort}");
        let mut sorted = seen.clone();
        sorted.sort();
        let mut want = ids.clone();
        want.sort();
        assert_eq!(sorted, want);
    }
    // The name sort really sorts.
    let a = c.get("/v1/volumes?limit=1000&sort=name:asc").await;
    let names: Vec<&str> = a.body["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mut s = names.clone();
    s.sort();
    assert_eq!(names, s);
    // Offset pages, filters and with_count.
    let a = c.get("/v1/volumes?limit=5&offset=20&sort=id").await;
    assert_eq!(a.body["volumes"].as_array().unwrap().len(), 3);
    let a = c.get("/v1/volumes?name=v03&with_count=false").await;
    assert!(a.body.get("count").is_none());
    assert!(
        a.body["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["name"] == "v03")
    );
    assert_eq!(a.body["volumes"].as_array().unwrap().len(), 3);
    let a = c
        .get("/v1/volumes?state=available&bootable=False&limit=1000")
        .await;
    assert!(
        a.body["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["state"] == "available")
    );
    // Default page size is 20.
    let a = c.get("/v1/volumes").await;
    assert_eq!(a.body["volumes"].as_array().unwrap().len(), 20);
}

#[tokio::test]
async fn wrong_state_gets_409_and_changes_nothing() {
    let d = TestDaemon::start_with(
        "[jobs]\ndebug_delay_ms = 400\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let c = d.client("a");
    let v = c.create("slow", 8, None).await;
    let id = v["id"].as_str().unwrap();
    let ext = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(ext.status, StatusCode::CONFLICT, "{}", ext.text);
    let del = c
        .call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT);
    assert_eq!(del.body["errors"][0]["code"], "Conflict");
    let v = c.wait(id, &["available"]).await;
    assert_eq!(v["size"], 8);
    // Extending: a second extend and a delete both conflict.
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        c.get(&format!("/v1/volumes/{id}")).await.body["state"],
        "extending"
    );
    let r2 = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 32})),
        )
        .await;
    assert_eq!(r2.status, StatusCode::CONFLICT);
    let v = c.wait(id, &["available"]).await;
    assert_eq!(v["size"], 16);
    // The native view shows the jobs, all terminal.
    let n = c.get(&format!("/blockd/v1/volumes/{id}")).await;
    assert_eq!(n.status, StatusCode::OK);
    let jobs = n.body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2, "{}", n.text);
    assert!(jobs.iter().all(|j| j["state"] == "succeeded"), "{}", n.text);
    assert_eq!(n.body["location"]["kind"], "file");
}

#[tokio::test]
async fn quotas_are_enforced_and_reported() {
    let d = TestDaemon::start_with(
        "[quota]\nvolumes = 2\ngigabytes = 40\nper_volume_gigabytes = 32\n[quota.projects.project-b]\nvolumes = 5\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let c = d.client("a");
    let big = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "big", "size": 40})),
        )
        .await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST);
    assert!(detail(&big).contains("per_volume"), "{}", big.text);
    let v1 = c.create("one", 24, None).await;
    let over = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "two", "size": 24})),
        )
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.body["errors"][0]["code"], "QuotaExceeded");
    assert!(detail(&over).contains("gigabytes"));
    c.create("two", 16, None).await;
    let third = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "three", "size": 8})),
        )
        .await;
    assert_eq!(third.status, StatusCode::BAD_REQUEST);
    assert!(detail(&third).contains("volumes"));
    let id = v1["id"].as_str().unwrap();
    c.wait(id, &["available"]).await;
    let ext = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 32})),
        )
        .await;
    assert_eq!(ext.status, StatusCode::BAD_REQUEST, "{}", ext.text);
    assert_eq!(c.get(&format!("/v1/volumes/{id}")).await.body["size"], 24);

    let q = c.get("/v1/volumes/quota-sets").await;
    assert_eq!(q.status, StatusCode::OK);
    assert_eq!(
        keys(&q.body),
        vec!["id", "per_volume_size", "snapshots", "usages", "volumes"]
    );
    assert_eq!(q.body["id"], "project-a");
    assert_eq!(q.body["volumes"]["in_use"], 2);
    assert_eq!(q.body["volumes"]["limit"], 2);
    assert_eq!(q.body["usages"]["in_use"], 40);
    assert_eq!(q.body["usages"]["limit"], 40);
    assert_eq!(q.body["per_volume_size"]["limit"], 32);
    let qb = d.client("b").get("/v1/volumes/quota-sets").await;
    assert_eq!(qb.body["volumes"]["limit"], 5);
    assert_eq!(qb.body["volumes"]["in_use"], 0);
}

#[tokio::test]
async fn volume_types_are_listed_and_shown() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let l = c.get("/v1/volume-types").await;
    assert_eq!(l.status, StatusCode::OK);
    let types = l.body["volume_types"].as_array().unwrap();
    let names: Vec<&str> = types.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["SSD", "SSD_Provisioned", "HDD"]);
    for t in types {
        assert_eq!(keys(t), vec!["description", "extra_specs", "id", "name"]);
        let one = c
            .get(&format!("/v1/volume-types/{}", t["id"].as_str().unwrap()))
            .await;
        assert_eq!(one.status, StatusCode::OK);
        assert_eq!(&one.body, t);
    }
    let def = c.get("/v1/volume-types/default").await;
    assert_eq!(def.body["name"], "SSD");
    let v = c.create("typed", 8, Some("HDD")).await;
    let hdd = types.iter().find(|t| t["name"] == "HDD").unwrap();
    assert_eq!(v["volume_type_id"], hdd["id"]);
    assert_eq!(
        c.get("/v1/volume-types/nope").await.status,
        StatusCode::NOT_FOUND
    );
    // Ids are stable across restarts: they derive from the names.
    let d2 = TestDaemon::start().await;
    let l2 = d2.client("a").get("/v1/volume-types").await;
    assert_eq!(l2.body, l.body);
}

#[tokio::test]
async fn a_provisioned_volume_larger_than_the_disk_ends_in_error_with_a_reason() {
    let d = TestDaemon::start_with(
        "[quota]\ngigabytes = 1000000\nper_volume_gigabytes = 1000000\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let c = d.client("a");
    let free_gib = free_bytes(Path::new("/var/tmp")) / GIB;
    let size = (free_gib + 64).div_ceil(8) * 8;
    let v = c.create("huge", size, Some("SSD_Provisioned")).await;
    let id = v["id"].as_str().unwrap();
    let v = c.wait(id, &["available", "error"]).await;
    assert_eq!(v["state"], "error");
    let n = c.get(&format!("/blockd/v1/volumes/{id}")).await;
    let reason = n.body["error_reason"].as_str().unwrap_or("");
    assert!(reason.contains("no space"), "{reason}");
    assert!(
        !d.volume_path(id).exists(),
        "a failed create leaves no file"
    );
    // An errored volume can be deleted.
    let r = c
        .call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.wait(id, &[]).await;
}
