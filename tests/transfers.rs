//! Volume transfers through the SCP API: offer, accept with the key by
//! another project, wrong keys, the receiver's quota, cancel, and state
//! that survives a restart.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn available_volume(c: &Client, name: &str) -> String {
    let v = c.create(name, 8, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;
    id
}

async fn offer(c: &Client, volume_id: &str, name: &str) -> Value {
    let a = c
        .call(
            Method::POST,
            "/v1/volume-transfer",
            Some(json!({"volume_id": volume_id, "name": name})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "offer: {}", a.text);
    a.body
}

async fn accept(c: &Client, transfer_id: &str, key: &str) -> Answer {
    c.call(
        Method::POST,
        &format!("/v1/volume-transfer/{transfer_id}/accept"),
        Some(json!({"auth_key": key})),
    )
    .await
}

fn state(v: &Value) -> &str {
    v["state"].as_str().unwrap_or("")
}

async fn wait_snapshot(c: &Client, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = c.get(&format!("/v1/snapshots/{id}")).await;
        if a.body["status"] == "available" {
            return;
        }
        assert!(Instant::now() < deadline, "snapshot {id}: {}", a.text);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn another_project_takes_the_volume_and_its_snapshots_with_the_key() {
    let d = TestDaemon::start().await;
    let (a, b) = (d.client("a"), d.client("b"));
    let vid = available_volume(&a, "given").await;
    std::fs::write(d.volume_path(&vid), b"bytes stay where they are").unwrap();
    let s = a
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s1", "volume_id": vid})),
        )
        .await;
    assert_eq!(s.status, StatusCode::ACCEPTED, "{}", s.text);
    let sid = s.body["id"].as_str().unwrap().to_string();
    wait_snapshot(&a, &sid).await;

    let t = offer(&a, &vid, "to b").await;
    assert_eq!(
        keys(&t),
        ["auth_key", "created_at", "id", "name", "volume_id"]
    );
    assert_eq!(t["volume_id"], vid.as_str());
    assert_eq!(t["name"], "to b");
    let tid = t["id"].as_str().unwrap().to_string();
    let key = t["auth_key"].as_str().unwrap().to_string();
    assert!(key.len() >= 16, "{key}");

    // The volume waits; it cannot be offered twice, deleted or grown.
    let v = a.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(state(&v.body), "awaiting-transfer", "{}", v.text);
    let again = a
        .call(
            Method::POST,
            "/v1/volume-transfer",
            Some(json!({"volume_id": vid})),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.text);
    let del = a
        .call(Method::DELETE, &format!("/v1/volumes/{vid}"), None)
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT, "{}", del.text);

    // The owner sees the offer without its key; others do not see it.
    let shown = a.get(&format!("/v1/volume-transfer/{tid}")).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.text);
    assert_eq!(keys(&shown.body), ["created_at", "id", "name", "volume_id"]);
    let listed = a.get("/v1/volume-transfer").await;
    assert_eq!(listed.body["count"], 1, "{}", listed.text);
    assert_eq!(listed.body["transfers"][0]["id"], tid.as_str());
    assert!(!listed.text.contains(&key));
    assert_eq!(
        b.get(&format!("/v1/volume-transfer/{tid}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(b.get("/v1/volume-transfer").await.body["count"], 0);
    let stolen = b
        .call(Method::DELETE, &format!("/v1/volume-transfer/{tid}"), None)
        .await;
    assert_eq!(stolen.status, StatusCode::NOT_FOUND, "{}", stolen.text);

    // A wrong key is refused and changes nothing.
    let wrong = accept(&b, &tid, &format!("{key}x")).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.text);
    assert!(detail(&wrong).contains("auth_key"), "{}", wrong.text);
    let wrong = accept(&b, &tid, &key[..key.len() - 1]).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST, "{}", wrong.text);
    let v = a.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(state(&v.body), "awaiting-transfer");

    let ok = accept(&b, &tid, &key).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    assert_eq!(keys(&ok.body), ["created_at", "id", "name", "volume_id"]);
    assert_eq!(ok.body["volume_id"], vid.as_str());

    // b owns the volume and its snapshot; a sees neither.
    let v = b.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text);
    assert_eq!(state(&v.body), "available");
    assert_eq!(v.body["user_id"], "user-b");
    assert_eq!(
        a.get(&format!("/v1/volumes/{vid}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        b.get(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        a.get(&format!("/v1/snapshots/{sid}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        std::fs::read(d.volume_path(&vid)).unwrap(),
        b"bytes stay where they are"
    );
    // The usage moved too.
    let store = d.daemon.service.store();
    let (ua, ub) = (
        store.usage("project-a").unwrap(),
        store.usage("project-b").unwrap(),
    );
    assert_eq!((ua.volumes, ua.gigabytes, ua.snapshots), (0, 0, 0));
    assert_eq!((ub.volumes, ub.gigabytes, ub.snapshots), (1, 8, 1));

    // The offer is used up.
    assert_eq!(accept(&b, &tid, &key).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.get(&format!("/v1/volume-transfer/{tid}")).await.status,
        StatusCode::NOT_FOUND
    );
    // b may now do anything an owner does, including deleting it.
    let del = b
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{vid}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED, "{}", del.text);
    b.wait(&vid, &[]).await;

    // Every change was recorded as a finished job.
    let jobs = d.daemon.service.store().jobs_for_volume(&vid, 50).unwrap();
    let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
    assert!(kinds.contains(&"create_transfer"), "{kinds:?}");
    assert!(kinds.contains(&"accept_transfer"), "{kinds:?}");
}

#[tokio::test]
async fn receiving_project_quota_is_enforced() {
    let d = TestDaemon::start_with(
        "[quota.projects.project-b]\ngigabytes = 8\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let (a, b) = (d.client("a"), d.client("b"));
    let vid = available_volume(&a, "big").await;
    let own = available_volume(&b, "mine").await;
    let t = offer(&a, &vid, "x").await;
    let (tid, key) = (t["id"].as_str().unwrap(), t["auth_key"].as_str().unwrap());
    let over = accept(&b, tid, key).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{}", over.text);
    assert_eq!(
        over.body["errors"][0]["code"], "QuotaExceeded",
        "{}",
        over.text
    );
    assert!(detail(&over).contains("gigabytes"), "{}", over.text);
    let v = a.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(state(&v.body), "awaiting-transfer", "{}", v.text);

    // Once b frees room, the same key still works.
    let del = b
        .call(Method::DELETE, &format!("/v1/volumes/{own}"), None)
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED);
    b.wait(&own, &[]).await;
    assert_eq!(accept(&b, tid, key).await.status, StatusCode::ACCEPTED);
    assert_eq!(
        state(&b.get(&format!("/v1/volumes/{vid}")).await.body),
        "available"
    );
}

#[tokio::test]
async fn deleting_a_transfer_makes_the_volume_available_again() {
    let d = TestDaemon::start().await;
    let (a, b) = (d.client("a"), d.client("b"));
    let vid = available_volume(&a, "kept").await;
    let t = offer(&a, &vid, "maybe").await;
    let (tid, key) = (t["id"].as_str().unwrap(), t["auth_key"].as_str().unwrap());
    let del = a
        .call(Method::DELETE, &format!("/v1/volume-transfer/{tid}"), None)
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED, "{}", del.text);
    assert_eq!(
        state(&a.get(&format!("/v1/volumes/{vid}")).await.body),
        "available"
    );
    let again = a
        .call(Method::DELETE, &format!("/v1/volume-transfer/{tid}"), None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND, "{}", again.text);
    assert_eq!(accept(&b, tid, key).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        a.get(&format!("/v1/volumes/{vid}")).await.body["user_id"],
        "user-a"
    );
    // It can be offered again, with a new key.
    let t2 = offer(&a, &vid, "again").await;
    assert_ne!(t2["auth_key"], key);
}

#[tokio::test]
async fn bad_requests_get_clear_answers_and_change_nothing() {
    let d = TestDaemon::start_with(
        "[jobs]\ndebug_delay_ms = 3000\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let a = d.client("a");
    let b = d.client("b");
    let creating = a.create("slow", 8, None).await;
    let cid = creating["id"].as_str().unwrap();
    let post = |body: Value| {
        let a = a.clone();
        async move {
            a.call(Method::POST, "/v1/volume-transfer", Some(body))
                .await
        }
    };
    let r = post(json!({"volume_id": cid})).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    assert!(detail(&r).contains("creating"), "{}", r.text);
    let r = post(json!({"name": "x"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(detail(&r).contains("volume_id"), "{}", r.text);
    let r = post(json!({"volume_id": cid, "colour": "red"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(detail(&r).contains("colour"), "{}", r.text);
    let r = post(json!({"volume_id": "not-a-uuid"})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = post(json!({"volume_id": uuid_like()})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = post(json!({"volume_id": cid, "name": "n".repeat(256)})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = a.call(Method::POST, "/v1/volume-transfer", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    // Another project's volume is as unknown as a missing one.
    let r = b
        .call(
            Method::POST,
            "/v1/volume-transfer",
            Some(json!({"volume_id": cid})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = accept(&b, "nope", "key").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = accept(&b, &uuid_like(), "key").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = a.get("/v1/volume-transfer?limit=0").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = a.get("/v1/volume-transfer?colour=red").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = a
        .get(&format!("/v1/volume-transfer?marker={}", uuid_like()))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);

    let vid = a.wait(cid, &["available"]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let t = offer(&a, &vid, "x").await;
    let tid = t["id"].as_str().unwrap();
    let r = b
        .call(
            Method::POST,
            &format!("/v1/volume-transfer/{tid}/accept"),
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = b
        .call(
            Method::POST,
            &format!("/v1/volume-transfer/{tid}/accept"),
            Some(json!({"auth_key": 5})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(
        state(&a.get(&format!("/v1/volumes/{vid}")).await.body),
        "awaiting-transfer"
    );
    // Unsigned calls are refused like any other.
    let raw = reqwest::Client::new()
        .get(format!("http://{}/v1/volume-transfer", d.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::UNAUTHORIZED);
}

fn uuid_like() -> String {
    "0b5a8d4e-0000-4000-8000-000000000001".to_string()
}

#[tokio::test]
async fn a_pending_transfer_survives_a_restart() {
    let d = TestDaemon::start().await;
    let a = d.client("a");
    let vid = available_volume(&a, "across").await;
    let t = offer(&a, &vid, "later").await;
    let (tid, key) = (
        t["id"].as_str().unwrap().to_string(),
        t["auth_key"].as_str().unwrap().to_string(),
    );
    let d = d.restart("").await;
    let (a, b) = (d.client("a"), d.client("b"));
    let v = a.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(state(&v.body), "awaiting-transfer", "{}", v.text);
    assert_eq!(
        a.get(&format!("/v1/volume-transfer/{tid}")).await.status,
        StatusCode::OK
    );
    let ok = accept(&b, &tid, &key).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text);
    let d = d.restart("").await;
    let b = d.client("b");
    let v = b.get(&format!("/v1/volumes/{vid}")).await;
    assert_eq!(state(&v.body), "available", "{}", v.text);
    assert_eq!(
        d.client("a")
            .get(&format!("/v1/volumes/{vid}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
