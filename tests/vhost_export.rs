//! The vhost-user-blk export without a guest: a real daemon, the real SCP
//! and Cinder endpoints, and a real vhost-user frontend (the vhost crate's)
//! talking to the socket the way QEMU does at start-up.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use vhost::VhostBackend;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};

async fn daemon() -> (TestDaemon, PathBuf) {
    let run = tempfile::Builder::new()
        .prefix("blockd-run")
        .tempdir_in("/var/tmp")
        .unwrap()
        .keep();
    let extra = format!("[export]\nrun_dir = {:?}\n", run.display().to_string());
    let d = TestDaemon::start_with(&extra, Arc::new(OffsetClock(chrono::Duration::zero()))).await;
    (d, run)
}

/// Capacity in bytes as a frontend reads it through GET_CONFIG.
fn capacity(sock: &std::path::Path) -> (u64, u64) {
    let mut f = Frontend::connect(sock, 1).expect("connect");
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    assert!(features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0);
    let pf = f.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::CONFIG));
    f.set_protocol_features(VhostUserProtocolFeatures::CONFIG)
        .unwrap();
    let (_, cfg) = f
        .get_config(0, 60, VhostUserConfigFlags::WRITABLE, &[0u8; 60])
        .unwrap();
    let sectors = u64::from_le_bytes(cfg[0..8].try_into().unwrap());
    (sectors * 512, features)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_attach_listens_reports_capacity_grows_live_and_detaches() {
    let (d, run) = daemon().await;
    let c = d.client("a").version(Some("1.3"));
    let id = c.create("v", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&id, &["available"]).await;

    let r = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{id}/servers"),
            Some(json!({"server_id": "vm", "export_kind": "vhost-user-blk"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        c.wait(&id, &["in-use", "available"]).await["state"],
        "in-use"
    );
    let b = c.get(&format!("/blockd/v1/volumes/{id}")).await.body;
    let sock = PathBuf::from(b["export"]["host_path"].as_str().unwrap());
    assert_eq!(sock, run.join(format!("vhost/{id}.sock")));
    assert_eq!(b["export"]["kind"], "vhost-user-blk");

    let s2 = sock.clone();
    let (cap, features) = tokio::task::spawn_blocking(move || capacity(&s2))
        .await
        .unwrap();
    assert_eq!(cap, 8 * GIB);
    assert_eq!(features & (1 << 5), 0, "read-write: no VIRTIO_BLK_F_RO");

    // Grow live: the next frontend reads the new capacity.
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        c.wait(&id, &["in-use", "error_extending"]).await["state"],
        "in-use"
    );
    let s2 = sock.clone();
    let (cap, _) = tokio::task::spawn_blocking(move || capacity(&s2))
        .await
        .unwrap();
    assert_eq!(cap, 16 * GIB);

    // A forced snapshot of the attached volume flushes its backing store
    // (a socket is nothing to flush) and completes.
    let r = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": id, "force": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let sid = r.body["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = c.get(&format!("/v1/snapshots/{sid}")).await;
        match s.body["status"].as_str() {
            Some("available") => break,
            Some("creating") | None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            _ => {
                let b = c.get(&format!("/blockd/v1/volumes/{id}")).await;
                panic!(
                    "snapshot of a vhost-attached volume: {} / {}",
                    s.text, b.text
                );
            }
        }
    }

    // A connected frontend makes detach fail as busy, not pretend.
    let s2 = sock.clone();
    let held = tokio::task::spawn_blocking(move || {
        let f = Frontend::connect(&s2, 1).unwrap();
        f.set_owner().unwrap();
        f
    })
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/servers/vm"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let v = c.wait(&id, &["in-use", "available"]).await;
    assert_eq!(v["state"], "in-use");
    let b = c.get(&format!("/blockd/v1/volumes/{id}")).await.body;
    assert!(b["export"].is_object(), "{b}");
    drop(held);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/servers/vm"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        c.wait(&id, &["available", "in-use"]).await["state"],
        "available"
    );
    assert!(!sock.exists(), "detach removed the socket");
    drop(d);
    let _ = std::fs::remove_dir_all(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_export_kind_is_refused_and_changes_nothing() {
    let (d, run) = daemon().await;
    let c = d.client("a").version(Some("1.3"));
    let id = c.create("v", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&id, &["available"]).await;
    let r = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{id}/servers"),
            Some(json!({"server_id": "vm", "export_kind": "nbd"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("export_kind"), "{}", r.text);
    let v = c.get(&format!("/v1/volumes/{id}")).await.body;
    assert_eq!(v["state"], "available");
    let r = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{id}/servers"),
            Some(json!({"server_id": "vm", "read_only": "yes"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    drop(d);
    let _ = std::fs::remove_dir_all(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cinder_initialize_connection_returns_a_vhost_user_connection_and_restart_serves_it_again()
{
    let (d, run) = daemon().await;
    let http = reqwest::Client::new();
    let base = format!("http://{}/v3/demo", d.cinder_addr);
    let post = |path: String, body: Value| {
        http.post(format!("{base}{path}"))
            .header("X-Auth-Token", "alice:demo")
            .json(&body)
            .send()
    };
    let r = post("/volumes".into(), json!({"volume": {"size": 1}}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    let id = v["volume"]["id"].as_str().unwrap().to_string();
    for _ in 0..200 {
        let r = http
            .get(format!("{base}/volumes/{id}"))
            .header("X-Auth-Token", "alice:demo")
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        if v["volume"]["status"] == "available" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let bad = post(
        format!("/volumes/{id}/action"),
        json!({"os-initialize_connection": {"connector": {"host": "h", "export_kind": 7}}}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let r = post(
        format!("/volumes/{id}/action"),
        json!({"os-initialize_connection": {"connector": {"host": "h", "export_kind": "vhost-user-blk"}}}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let ci: Value = r.json().await.unwrap();
    let ci = &ci["connection_info"];
    assert_eq!(ci["driver_volume_type"], "vhost-user", "{ci}");
    assert_eq!(ci["data"]["device_type"], "vhost-user-blk");
    assert_eq!(ci["data"]["vhost_user_mode"], "client");
    assert_eq!(ci["data"]["access_mode"], "rw");
    let sock = PathBuf::from(ci["data"]["socket_path"].as_str().unwrap());
    assert_eq!(sock, run.join(format!("vhost/{id}.sock")));
    let s2 = sock.clone();
    let (cap, _) = tokio::task::spawn_blocking(move || capacity(&s2))
        .await
        .unwrap();
    assert_eq!(cap, GIB);

    // A restart serves the socket again during reconcile.
    let d = d
        .restart(&format!(
            "[export]\nrun_dir = {:?}\n",
            run.display().to_string()
        ))
        .await;
    let s2 = sock.clone();
    let (cap, _) = tokio::task::spawn_blocking(move || capacity(&s2))
        .await
        .unwrap();
    assert_eq!(cap, GIB);
    drop(d);
    let _ = std::fs::remove_dir_all(&run);
}
