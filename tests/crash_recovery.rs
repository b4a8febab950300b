//! Crash recovery with the real binary: SIGKILL the daemon while jobs are
//! in flight, start it again, and every job reaches a terminal state.

mod common;

use blockd::clock::OffsetClock;
use common::proc::{self, free_port, spawn};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn write_config(dir: &Path, port: u16, delay_ms: u64) -> std::path::PathBuf {
    proc::write_config(dir, port, &format!("[jobs]\ndebug_delay_ms = {delay_ms}\n"))
}

#[tokio::test]
async fn sigkill_with_jobs_in_flight_then_restart_finishes_them() {
    let dir = tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = free_port();
    let clock = Arc::new(OffsetClock(chrono::Duration::zero()));
    let c = Client::new(&format!("http://127.0.0.1:{port}"), cred("a"), clock);
    let vols = dir.path().join("data/volumes");

    // Phase 1: two settled volumes.
    let cfg = write_config(dir.path(), port, 0);
    let p = spawn(&cfg, port).await;
    let keep = c.create("keep", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let gone = c.create("gone", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let snapsrc = c.create("snapsrc", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&keep, &["available"]).await;
    c.wait(&gone, &["available"]).await;
    c.wait(&snapsrc, &["available"]).await;
    std::fs::write(vols.join(format!("{snapsrc}.img")), vec![0x42u8; 3 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(vols.join(format!("{snapsrc}.img")))
        .unwrap()
        .set_len(8 * GIB)
        .unwrap();
    drop(p);

    // Phase 2: every job waits 5 s before working; kill while they wait.
    let cfg = write_config(dir.path(), port, 5000);
    let mut p = spawn(&cfg, port).await;
    // One fresh volume is fully allocated when the disk has room for it.
    let thick = room_for(
        dir.path(),
        8 * GIB,
        "the provisioned volume of the crash test",
    );
    let mut fresh = Vec::new();
    for i in 0..3 {
        let (vtype, size) = match i {
            0 if thick => ("SSD_Provisioned", 8),
            _ => ("SSD", 16),
        };
        let v = c.create(&format!("new{i}"), size, Some(vtype)).await;
        fresh.push((v["id"].as_str().unwrap().to_string(), size));
    }
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{keep}/size"),
            Some(json!({"size": 24})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = c
        .call(Method::DELETE, &format!("/v1/volumes/{gone}"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": snapsrc})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let snap = r.body["id"].as_str().unwrap().to_string();
    for (id, _) in &fresh {
        assert_eq!(
            c.get(&format!("/v1/volumes/{id}")).await.body["state"],
            "creating"
        );
    }
    p.0.kill().unwrap(); // SIGKILL
    p.0.wait().unwrap();
    drop(p);
    for (id, _) in &fresh {
        assert!(
            !vols.join(format!("{id}.img")).exists(),
            "job ran before the kill"
        );
    }

    // Phase 3: restart; recovery resumes every job.
    let cfg = write_config(dir.path(), port, 0);
    let _p = spawn(&cfg, port).await;
    for (id, size) in &fresh {
        let v = c.wait(id, &["available", "error"]).await;
        assert_eq!(v["state"], "available", "{v}");
        let m = std::fs::metadata(vols.join(format!("{id}.img"))).unwrap();
        assert_eq!(m.len(), size * GIB);
    }
    let v = c.wait(&keep, &["available", "error_extending"]).await;
    assert_eq!(v["size"], 24);
    assert_eq!(
        std::fs::metadata(vols.join(format!("{keep}.img")))
            .unwrap()
            .len(),
        24 * GIB
    );
    c.wait(&gone, &[]).await;
    assert!(!vols.join(format!("{gone}.img")).exists());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c.get(&format!("/v1/snapshots/{snap}")).await;
        if s.body["status"] == "available" {
            break;
        }
        assert_ne!(s.body["status"], "error", "{}", s.text);
        assert!(
            Instant::now() < deadline,
            "snapshot never finished: {}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = c
        .call(
            Method::POST,
            &format!("/blockd/v1/snapshots/{snap}/verify"),
            None,
        )
        .await;
    assert_eq!(v.body["ok"], true, "{}", v.text);
    let snapdir = dir.path().join("data/snapshots");
    let leftovers: Vec<_> = std::fs::read_dir(&snapdir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    // Every job is terminal, and no volume is left in transition.
    let l = c.get("/v1/volumes?limit=1000").await;
    for v in l.body["volumes"].as_array().unwrap() {
        assert_eq!(v["state"], "available", "{v}");
        let n = c
            .get(&format!("/blockd/v1/volumes/{}", v["id"].as_str().unwrap()))
            .await;
        for j in n.body["jobs"].as_array().unwrap() {
            assert!(j["state"] == "succeeded" || j["state"] == "failed", "{j}");
        }
    }
    let db = rusqlite::Connection::open(dir.path().join("data/blockd.db")).unwrap();
    let open_jobs: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('pending','running')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(open_jobs, 0);
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

#[tokio::test]
async fn a_bad_config_file_stops_startup_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[scp]\nlisten = \"not an address\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("scp.listen"),
        "{err}"
    );

    std::fs::write(&path, "[scp]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("bogus"), "{err}");
}

#[tokio::test]
async fn first_start_generates_credentials_that_work() {
    let dir = tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = free_port();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\n[scp]\nlisten = \"127.0.0.1:{port}\"\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let _p = spawn(&cfg, port).await;
    let text = std::fs::read_to_string(data.join("credentials.toml")).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    let c0 = &v["credentials"][0];
    let cred = blockd::config::Credential {
        access_key: c0["access_key"].as_str().unwrap().into(),
        secret_key: c0["secret_key"].as_str().unwrap().into(),
        user_id: c0["user_id"].as_str().unwrap().into(),
        project_id: c0["project_id"].as_str().unwrap().into(),
    };
    let c = Client::new(
        &format!("http://127.0.0.1:{port}"),
        cred,
        Arc::new(OffsetClock(chrono::Duration::zero())),
    );
    assert_eq!(c.get("/v1/volumes").await.status, StatusCode::OK);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(data.join("credentials.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = std::fs::metadata(&data).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[tokio::test]
async fn a_volume_stuck_without_a_job_goes_to_error_with_a_reason() {
    use blockd::service::{Caller, CreateVolume};
    use blockd::store::model::VolumeState;
    let dir = tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let text = config_text(&dir.path().join("data"), "");
    let cfg = blockd::config::Config::parse(&text, "t.toml").unwrap();
    let clock: blockd::clock::SharedClock = Arc::new(OffsetClock(chrono::Duration::zero()));
    let caller = Caller {
        project_id: "project-a".into(),
        user_id: "user-a".into(),
        admin: false,
    };
    let d = blockd::server::Daemon::open(&cfg, clock.clone()).unwrap();
    d.recover().unwrap();
    let v = d
        .service
        .create_volume(
            &caller,
            CreateVolume {
                name: "v".into(),
                size_gib: 8,
                ..Default::default()
            },
        )
        .unwrap();
    let id = v.volume.id.clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.service.store().get_volume(None, &id).unwrap().state != VolumeState::Available {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(d.service.drain(Duration::from_secs(5)).await);
    drop(d);

    // Leave it "extending" with no job behind it, as a lost write would.
    let db = rusqlite::Connection::open(dir.path().join("data/blockd.db")).unwrap();
    db.execute(
        "UPDATE volumes SET state = 'extending' WHERE id = ?1",
        [&id],
    )
    .unwrap();
    drop(db);

    let d = blockd::server::Daemon::open(&cfg, clock).unwrap();
    d.recover().unwrap();
    let v = d.service.store().get_volume(None, &id).unwrap();
    assert_eq!(v.state, VolumeState::ErrorExtending);
    assert!(
        v.error_reason
            .as_deref()
            .unwrap_or("")
            .contains("interrupted"),
        "{:?}",
        v.error_reason
    );
    // An error state can be deleted.
    d.service.delete_volume(&caller, &id, false).unwrap();
}
