//! Full-copy snapshots through the SCP API: contents, holes, create from a
//! snapshot, revert, cascade delete, verify and quotas.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Writes a recognisable pattern at a few offsets (data in holes).
fn write_pattern(path: &Path, seed: u8) -> Vec<(u64, Vec<u8>)> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let mut out = Vec::new();
    for (i, off) in [0u64, 5 * MIB + 123, 1 << 30, 8 * GIB - 3 * MIB]
        .iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..(2 * MIB as usize + 7))
            .map(|j| {
                (j as u8)
                    .wrapping_mul(31)
                    .wrapping_add(seed)
                    .wrapping_add(i as u8)
            })
            .collect();
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(&data).unwrap();
        out.push((*off, data));
    }
    f.sync_all().unwrap();
    out
}

fn read_at(path: &Path, off: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn snapshot_file(d: &TestDaemon, id: &str) -> PathBuf {
    d.dir
        .path()
        .join("data/snapshots")
        .join(format!("{id}.img"))
}

async fn wait_snapshot(c: &Client, id: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = c.get(&format!("/v1/snapshots/{id}")).await;
        if want.is_empty() && a.status == StatusCode::NOT_FOUND {
            return Value::Null;
        }
        if a.status == StatusCode::OK && want.contains(&a.body["status"].as_str().unwrap_or("")) {
            return a.body;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {id} never reached {want:?}: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn volume_with_data(d: &TestDaemon, c: &Client, seed: u8) -> (String, Vec<(u64, Vec<u8>)>) {
    let v = c.create("src", 8, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;
    let data = write_pattern(&d.volume_path(&id), seed);
    (id, data)
}

async fn snapshot(c: &Client, volume: &str) -> String {
    let a = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "snap-1", "volume_id": volume, "description": "d", "metadata": {"k": "v"}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(
        keys(&a.body),
        vec![
            "created_at",
            "description",
            "id",
            "metadata",
            "name",
            "size",
            "status",
            "updated_at",
            "user_id",
            "volume_id"
        ]
    );
    assert_eq!(a.body["size"], 8);
    assert_eq!(a.body["metadata"]["k"], "v");
    let id = a.body["id"].as_str().unwrap().to_string();
    wait_snapshot(c, &id, &["available"]).await;
    id
}

#[tokio::test]
async fn snapshot_is_an_exact_sparse_copy_that_verifies() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let (vol, data) = volume_with_data(&d, &c, 7).await;
    let sid = snapshot(&c, &vol).await;
    let snap = snapshot_file(&d, &sid);
    let src = d.volume_path(&vol);
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), 8 * GIB);
    for (off, bytes) in &data {
        assert_eq!(&read_at(&snap, *off, bytes.len()), bytes, "at {off}");
    }
    // Holes stay holes: the copy allocates about what the source does.
    let (sb, db) = (
        std::fs::metadata(&src).unwrap().blocks(),
        std::fs::metadata(&snap).unwrap().blocks(),
    );
    assert!(db <= sb + 2048, "snapshot {db} blocks vs source {sb}");
    assert!(snap.with_extension("manifest").exists());
    let v = c
        .call(
            Method::POST,
            &format!("/blockd/v1/snapshots/{sid}/verify"),
            None,
        )
        .await;
    assert_eq!(v.status, StatusCode::OK, "{}", v.text);
    assert_eq!(v.body["ok"], true);
    assert_eq!(v.body["chunks"], 8192);

    let cli = |sid: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_blockd"))
            .args(["snapshot", "verify", sid, "--data-dir"])
            .arg(d.dir.path().join("data"))
            .output()
            .unwrap()
    };
    let out = cli(&sid);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
    let n = c.get(&format!("/blockd/v1/snapshots/{sid}")).await;
    assert_eq!(n.body["status"], "available");
    assert_eq!(n.body["checksum"].as_str().unwrap().len(), 64);

    // One flipped byte in chunk 1025 (1 GiB + 5 MiB) is caught.
    let off = (1 << 30) + 5 * MIB + 17;
    let mut b = read_at(&snap, off, 1);
    b[0] ^= 0xFF;
    let mut f = std::fs::OpenOptions::new().write(true).open(&snap).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
    let v = c
        .call(
            Method::POST,
            &format!("/blockd/v1/snapshots/{sid}/verify"),
            None,
        )
        .await;
    assert_eq!(v.body["ok"], false);
    assert_eq!(v.body["first_bad_chunk"], 1024 + 5);
    let out = cli(&sid);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1029"));

    // Lists, filters, rename, delete.
    let l = c.get(&format!("/v1/snapshots?volume_id={vol}")).await;
    assert_eq!(l.body["count"], 1);
    let other = d.client("b").get("/v1/snapshots").await;
    assert_eq!(other.body["count"], 0);
    assert_eq!(
        d.client("b")
            .get(&format!("/v1/snapshots/{sid}"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/snapshots/{sid}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(r.body["name"], "renamed");
    let r = c
        .call(Method::DELETE, &format!("/v1/snapshots/{sid}"), None)
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    wait_snapshot(&c, &sid, &[]).await;
    assert!(!snap.exists() && !snap.with_extension("manifest").exists());
}

#[tokio::test]
async fn create_from_snapshot_revert_and_cascade_delete() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let (vol, data) = volume_with_data(&d, &c, 3).await;
    let sid = snapshot(&c, &vol).await;

    // A bigger volume from the snapshot holds the same bytes.
    let small = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "small", "size": 0, "snapshot_id": sid})),
        )
        .await;
    assert_eq!(small.status, StatusCode::BAD_REQUEST);
    let a = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "copy", "size": 16, "snapshot_id": sid})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["snapshot_id"], sid.as_str());
    let new_id = a.body["id"].as_str().unwrap().to_string();
    let v = c.wait(&new_id, &["available", "error"]).await;
    assert_eq!(v["state"], "available", "{v}");
    let p = d.volume_path(&new_id);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), 16 * GIB);
    for (off, bytes) in &data {
        assert_eq!(&read_at(&p, *off, bytes.len()), bytes);
    }
    let unknown = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "x", "size": 8, "snapshot_id": "3f500f00-ed80-4566-a057-e31760226f9a"})),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);

    // Revert undoes later writes.
    write_pattern(&d.volume_path(&vol), 99);
    let r = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{vol}/revert"),
            Some(json!({"snapshot_id": sid})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let v = c.wait(&vol, &["available", "error_restoring"]).await;
    assert_eq!(v["state"], "available");
    for (off, bytes) in &data {
        assert_eq!(&read_at(&d.volume_path(&vol), *off, bytes.len()), bytes);
    }
    // A snapshot of another volume cannot revert this one.
    let r = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{new_id}/revert"),
            Some(json!({"snapshot_id": sid})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Without cascade a volume with snapshots is kept; with it, all goes.
    let r = c
        .call(Method::DELETE, &format!("/v1/volumes/{vol}"), None)
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{vol}?cascade=true"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    c.wait(&vol, &[]).await;
    wait_snapshot(&c, &sid, &[]).await;
    assert!(!snapshot_file(&d, &sid).exists());
    assert!(!d.volume_path(&vol).exists());
}

#[tokio::test]
async fn snapshot_errors_and_quota() {
    let d = TestDaemon::start_with(
        "[quota]\nsnapshots = 1\n",
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await;
    let c = d.client("a");
    let (vol, _) = volume_with_data(&d, &c, 1).await;
    for (body, field) in [
        (json!({"volume_id": vol}), "name"),
        (json!({"name": "s"}), "volume_id"),
        (json!({"name": "s/x", "volume_id": vol}), "name"),
        (
            json!({"name": "s", "volume_id": vol, "force": "yes"}),
            "force",
        ),
        (
            json!({"name": "s", "volume_id": vol, "metadata": 5}),
            "metadata",
        ),
        (json!({"name": "s", "volume_id": vol, "extra": 1}), "extra"),
    ] {
        let a = c
            .call(Method::POST, "/v1/snapshots", Some(body.clone()))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{body}: {}", a.text);
        assert!(detail(&a).contains(field), "{body}: {}", a.text);
    }
    let foreign = d
        .client("b")
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": vol})),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::NOT_FOUND);
    snapshot(&c, &vol).await;
    let over = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s2", "volume_id": vol})),
        )
        .await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert_eq!(over.body["errors"][0]["code"], "QuotaExceeded");
    let q = c.get("/v1/volumes/quota-sets").await;
    assert_eq!(q.body["snapshots"]["in_use"], 1);
    // sort is a 1.3 parameter.
    let a = c.get("/v1/snapshots?sort=created_at:asc").await;
    assert_eq!(a.status, StatusCode::OK);
    let a = d
        .client("a")
        .version(Some("1.2"))
        .get("/v1/snapshots?sort=created_at:asc")
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn loop_in_use_snapshot_needs_force() {
    if !Path::new("/dev/loop-control").exists() || !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root and /dev/loop-control to attach a volume");
        return;
    }
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let (vol, data) = volume_with_data(&d, &c, 5).await;
    let a = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{vol}/servers"),
            Some(json!({"server_id": "s"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    c.wait(&vol, &["in-use"]).await;
    let no = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": vol})),
        )
        .await;
    assert_eq!(no.status, StatusCode::CONFLICT, "{}", no.text);
    let yes = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": vol, "force": true})),
        )
        .await;
    assert_eq!(yes.status, StatusCode::ACCEPTED, "{}", yes.text);
    let sid = yes.body["id"].as_str().unwrap().to_string();
    wait_snapshot(&c, &sid, &["available"]).await;
    for (off, bytes) in &data {
        assert_eq!(&read_at(&snapshot_file(&d, &sid), *off, bytes.len()), bytes);
    }
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{vol}/servers/s"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.wait(&vol, &["available"]).await;
}

/// Writes `len` bytes of seeded data at offset 0 and returns its blake3.
fn fill_volume(path: &Path, len: u64, seed: u8) -> blake3::Hash {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let chunk: Vec<u8> = (0..MIB as usize)
        .map(|j| (j as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    for _ in 0..len / MIB {
        f.write_all(&chunk).unwrap();
    }
    f.sync_all().unwrap();
    head_hash(path, len)
}

/// blake3 of the first `len` bytes of a file.
fn head_hash(path: &Path, len: u64) -> blake3::Hash {
    blake3::hash(&read_at(path, 0, len as usize))
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn loop_enospc_mid_copy_errors_frees_space_and_keeps_the_source() {
    let d = match TestDaemon::start_on_small_fs(200 * MIB).await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPING enospc snapshot test: cannot mount a small filesystem: {why}");
            return;
        }
    };
    let c = d.client("a");
    let v = c.create("big", 8, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;
    let path = d.volume_path(&id);
    let before = fill_volume(&path, 120 * MIB, 3);
    let data = d.dir.path().join("data");
    let free = free_bytes(&data);
    assert!(
        free < 120 * MIB,
        "the filesystem has room for a copy: {free}"
    );

    let a = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "too-big", "volume_id": id})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["id"].as_str().unwrap().to_string();
    let s = wait_snapshot(&c, &sid, &["error", "available"]).await;
    assert_eq!(s["status"], "error", "{s}");
    let native = c.get(&format!("/blockd/v1/snapshots/{sid}")).await;
    let why = native.body["error_reason"].as_str().unwrap_or("");
    assert!(
        why.contains("space"),
        "reason names the lack of space: {why}"
    );

    assert_eq!(leftovers(&data.join("snapshots")), Vec::<String>::new());
    let after_free = free_bytes(&data);
    assert!(
        after_free + 4 * MIB >= free,
        "space was not freed: {free} before, {after_free} after"
    );
    assert_eq!(head_hash(&path, 120 * MIB), before);
    c.wait(&id, &["available"]).await;

    // The errored snapshot can be deleted, and the volume still works.
    let del = c
        .call(Method::DELETE, &format!("/v1/snapshots/{sid}"), None)
        .await;
    assert!(del.status.is_success(), "{}", del.text);
    wait_snapshot(&c, &sid, &[]).await;
}

#[tokio::test]
async fn deleting_a_snapshot_mid_copy_cancels_it_and_leaves_nothing() {
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let v = c.create("src", 8, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;
    let before = fill_volume(&d.volume_path(&id), 1024 * MIB, 9);

    let a = c
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "short-lived", "volume_id": id})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["id"].as_str().unwrap().to_string();

    // Wait until the copy is under way, then delete.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (done, total) = loop {
        let n = c.get(&format!("/blockd/v1/snapshots/{sid}")).await;
        let p = &n.body["progress"];
        if let (Some(done), Some(total)) = (p["bytes_done"].as_u64(), p["bytes_total"].as_u64())
            && done > 0
        {
            break (done, total);
        }
        assert_ne!(
            n.body["status"], "available",
            "copy ended before it was seen"
        );
        assert!(Instant::now() < deadline, "copy never started: {}", n.text);
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let del = c
        .call(Method::DELETE, &format!("/v1/snapshots/{sid}"), None)
        .await;
    assert!(del.status.is_success(), "{}", del.text);
    wait_snapshot(&c, &sid, &[]).await;

    let snaps = d.dir.path().join("data/snapshots");
    assert_eq!(leftovers(&snaps), Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    let copy_job = loop {
        let jobs = c.get(&format!("/blockd/v1/volumes/{id}")).await.body["jobs"].clone();
        let j = jobs
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == "create_snapshot")
            .cloned()
            .unwrap_or(Value::Null);
        if matches!(j["state"].as_str(), Some("succeeded" | "failed")) {
            break j;
        }
        assert!(Instant::now() < deadline, "the copy job never ended: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if done * 2 < total {
        assert_eq!(copy_job["state"], "failed", "{copy_job}");
        let err = copy_job["error"].as_str().unwrap_or("");
        assert!(err.contains("deleted"), "{copy_job}");
    }
    eprintln!("deleted at {done} of {total} bytes; copy job {copy_job}");
    assert_eq!(head_hash(&d.volume_path(&id), 1024 * MIB), before);
    let q = c.get("/v1/volumes/quota-sets").await;
    assert!(q.status.is_success(), "{}", q.text);
}
