//! Faults on a real, small ext4 data dir (a sparse image on a loop
//! device): provisioned volumes that do not fit, on create and on extend,
//! and the SQLite store on a disk that is full. Each test skips loudly
//! when it cannot make the filesystem (no root, no mkfs.ext4 or mount).

mod common;

use blockd::backend::file::FileBackend;
use blockd::backend::{BackendErrorKind, VolumeBackend};
use blockd::config::Provisioning;
use common::cinder::{Cinder, expect_fault};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn fallocate(f: &std::fs::File, off: u64, len: u64) -> nix::Result<()> {
    nix::fcntl::fallocate(
        f.as_fd(),
        nix::fcntl::FallocateFlags::empty(),
        off as i64,
        len as i64,
    )
}

/// Grows or shrinks the filler file `path` until the filesystem at `fs`
/// has exactly `want` bytes free. The filler is allocated, not written,
/// so the loop image behind it stays sparse.
fn leave_free(path: &Path, fs: &Path, want: u64) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    for _ in 0..50 {
        let free = free_bytes(fs);
        let len = f.metadata().unwrap().len();
        if free == want {
            return;
        }
        if free > want {
            // Metadata may make the whole step fail; take less then.
            let mut step = free - want;
            while fallocate(&f, len, step).is_err() && step > 4096 {
                step /= 2;
            }
        } else {
            f.set_len(len.saturating_sub(want - free)).unwrap();
        }
        f.sync_all().unwrap();
    }
    panic!(
        "could not leave exactly {want} bytes free: {} are",
        free_bytes(fs)
    );
}

/// Allocates every free block of `fs` to the filler file.
fn fill_up(path: &Path, fs: &Path) {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut step = free_bytes(fs).max(4096);
    while step >= 4096 {
        let len = f.metadata().unwrap().len();
        if fallocate(&f, len, step).is_err() {
            step /= 2;
        }
    }
    f.sync_all().unwrap();
    assert_eq!(free_bytes(fs), 0, "the filesystem is not full");
}

/// Writes `len` bytes of seeded data at `off`; returns their blake3.
fn write_data(path: &Path, off: u64, len: u64, seed: u8) -> blake3::Hash {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let data: Vec<u8> = (0..len as usize)
        .map(|j| (j as u8).wrapping_mul(13).wrapping_add(seed))
        .collect();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    blake3::hash(&data)
}

fn hash_at(path: &Path, off: u64, len: u64) -> blake3::Hash {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut b = vec![0u8; len as usize];
    f.read_exact(&mut b).unwrap();
    blake3::hash(&b)
}

/// A block device's size in bytes, from sysfs.
fn device_size(dev: &str) -> u64 {
    let name = dev.trim_start_matches("/dev/");
    let sectors: u64 = std::fs::read_to_string(format!("/sys/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The newest job of `kind` on a volume, once it has ended.
async fn ended_job(c: &Client, id: &str, kind: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = c.get(&format!("/blockd/v1/volumes/{id}")).await;
        let job = n.body["jobs"]
            .as_array()
            .and_then(|j| j.iter().find(|j| j["kind"] == kind).cloned())
            .unwrap_or(Value::Null);
        if matches!(job["state"].as_str(), Some("succeeded" | "failed")) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} job of {id} never ended: {}",
            n.text
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn error_reason(c: &Client, id: &str) -> String {
    let n = c.get(&format!("/blockd/v1/volumes/{id}")).await;
    n.body["error_reason"].as_str().unwrap_or("").to_string()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Pending or running jobs, read from the database beside the daemon.
fn open_jobs(data: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("blockd.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = db
        .prepare("SELECT kind || ' ' || state FROM jobs WHERE state NOT IN ('succeeded', 'failed')")
        .unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

async fn all_jobs_end(data: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = open_jobs(data);
        if open.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "jobs never ended: {open:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn loop_provisioned_create_and_extend_that_do_not_fit() {
    let d = match TestDaemon::start_on_small_fs(20 * GIB).await {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPING provisioned ENOSPC test: cannot mount a small ext4: {why}");
            return;
        }
    };
    let c = d.client("a");
    let data = d.dir.path().join("data");
    let filler = data.join("filler");

    // A bystander volume whose data must survive everything below.
    let other = id_of(&c.create("other", 8, None).await);
    c.wait(&other, &["available"]).await;
    let other_sum = write_data(&d.volume_path(&other), 3 * MIB, 8 * MIB, 1);

    // Create: 8 GiB to allocate, 4 GiB free.
    leave_free(&filler, &data, 4 * GIB);
    let failed = id_of(&c.create("prov", 8, Some("SSD_Provisioned")).await);
    let v = c.wait(&failed, &["error", "available"]).await;
    assert_eq!(v["state"], "error", "{v}");
    let why = error_reason(&c, &failed).await;
    assert!(
        why.contains("space"),
        "reason names the lack of space: {why}"
    );
    let job = ended_job(&c, &failed, "create_volume").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("space"),
        "{job}"
    );
    assert!(!d.volume_path(&failed).exists(), "a partial file was left");
    assert_eq!(names(&data.join("volumes")), vec![format!("{other}.img")]);
    assert!(free_bytes(&data) + MIB >= 4 * GIB, "space leaked");
    assert_eq!(hash_at(&d.volume_path(&other), 3 * MIB, 8 * MIB), other_sum);

    // Room for the data but not for the reserve kept for the store: the
    // create is refused rather than fill the disk.
    leave_free(&filler, &data, 8 * GIB + 4 * MIB);
    let tight = id_of(&c.create("tight", 8, Some("SSD_Provisioned")).await);
    let v = c.wait(&tight, &["error", "available"]).await;
    assert_eq!(v["state"], "error", "{v}");
    let why = error_reason(&c, &tight).await;
    assert!(why.contains("kept free"), "reason names the reserve: {why}");
    assert!(!d.volume_path(&tight).exists());

    // Once space is freed the same create succeeds, fully allocated; the
    // failed one can be deleted.
    leave_free(&filler, &data, 12 * GIB);
    let prov = id_of(&c.create("prov", 8, Some("SSD_Provisioned")).await);
    c.wait(&prov, &["available"]).await;
    let m = std::fs::metadata(d.volume_path(&prov)).unwrap();
    assert_eq!(m.len(), 8 * GIB);
    assert!(m.blocks() * 512 >= 8 * GIB, "{} blocks", m.blocks());
    let del = c
        .call(Method::DELETE, &format!("/v1/volumes/{failed}"), None)
        .await;
    assert_eq!(del.status, StatusCode::ACCEPTED, "{}", del.text);
    c.wait(&failed, &[]).await;
    let head = write_data(&d.volume_path(&prov), 0, 4 * MIB, 2);
    let tail = write_data(&d.volume_path(&prov), 8 * GIB - 4 * MIB, 4 * MIB, 3);

    // Extend to 16 GiB: 8 GiB more to allocate, 4 GiB free. The volume
    // goes back to available at its old size, with the reason shown.
    leave_free(&filler, &data, 4 * GIB);
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{prov}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let job = ended_job(&c, &prov, "extend_volume").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["error"].as_str().unwrap_or("").contains("space"),
        "{job}"
    );
    let v = c.wait(&prov, &["available", "error_extending"]).await;
    assert_eq!(v["state"], "available", "{v}");
    assert_eq!(v["size"], 8, "{v}");
    let why = error_reason(&c, &prov).await;
    assert!(
        why.contains("space"),
        "reason names the lack of space: {why}"
    );
    let m = std::fs::metadata(d.volume_path(&prov)).unwrap();
    assert_eq!(m.len(), 8 * GIB, "the file changed size");
    assert_eq!(hash_at(&d.volume_path(&prov), 0, 4 * MIB), head);
    assert_eq!(
        hash_at(&d.volume_path(&prov), 8 * GIB - 4 * MIB, 4 * MIB),
        tail
    );
    assert_eq!(hash_at(&d.volume_path(&other), 3 * MIB, 8 * MIB), other_sum);
    let q = c.get("/v1/volumes/quota-sets").await;
    assert!(q.status.is_success(), "{}", q.text);

    // Attached, a refused extend goes back to in-use and the device keeps
    // its size.
    let at = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{prov}/servers"),
            Some(json!({"server_id": "server-1"})),
        )
        .await;
    assert_eq!(at.status, StatusCode::ACCEPTED, "{}", at.text);
    c.wait(&prov, &["in-use"]).await;
    let dev = c.get(&format!("/blockd/v1/volumes/{prov}")).await.body["export"]["host_path"]
        .as_str()
        .expect("an export")
        .to_string();
    assert_eq!(device_size(&dev), 8 * GIB);
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{prov}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let v = c.wait(&prov, &["in-use", "error_extending"]).await;
    assert_eq!(v["state"], "in-use", "{v}");
    assert_eq!(v["size"], 8, "{v}");
    assert!(error_reason(&c, &prov).await.contains("space"));
    assert_eq!(device_size(&dev), 8 * GIB);

    // Once space is freed the same extend succeeds, live.
    std::fs::remove_file(&filler).unwrap();
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{prov}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let job = ended_job(&c, &prov, "extend_volume").await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let v = c.wait(&prov, &["in-use"]).await;
    assert_eq!(v["size"], 16, "{v}");
    assert_eq!(device_size(&dev), 16 * GIB);
    let det = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{prov}/servers/server-1"),
            None,
        )
        .await;
    assert_eq!(det.status, StatusCode::ACCEPTED, "{}", det.text);
    c.wait(&prov, &["available"]).await;
    assert_eq!(error_reason(&c, &prov).await, "");
    let m = std::fs::metadata(d.volume_path(&prov)).unwrap();
    assert_eq!(m.len(), 16 * GIB);
    assert!(m.blocks() * 512 >= 16 * GIB, "{} blocks", m.blocks());
    assert_eq!(hash_at(&d.volume_path(&prov), 0, 4 * MIB), head);
    assert_eq!(
        hash_at(&d.volume_path(&prov), 8 * GIB - 4 * MIB, 4 * MIB),
        tail
    );
    assert_eq!(hash_at(&d.volume_path(&other), 3 * MIB, 8 * MIB), other_sum);
    all_jobs_end(&data).await;
}

/// A mounted small ext4 for backend tests, unmounted on drop.
fn small_fs(size: u64) -> Result<(tempfile::TempDir, MountGuard), String> {
    let dir = tempfile::Builder::new()
        .prefix("blockd-test-faults")
        .tempdir_in("/var/tmp")
        .map_err(|e| e.to_string())?;
    let guard = MountGuard::small_ext4(
        &dir.path().join("fs.img"),
        &dir.path().join("mnt"),
        size,
        1024,
    )?;
    Ok((dir, guard))
}

/// The free-space check passes when the space is exactly what the data
/// needs, and fallocate then fails part way, since ext4 also needs
/// blocks for the extent tree. The file must come back to its old size.
#[test]
fn loop_fallocate_that_fails_part_way_leaves_the_old_size() {
    let (_dir, m) = match small_fs(2 * GIB) {
        Ok(x) => x,
        Err(why) => {
            eprintln!("SKIPPING part-way fallocate test: cannot mount a small ext4: {why}");
            return;
        }
    };
    let b = FileBackend::open("file", &m.point.join("volumes"))
        .unwrap()
        .with_reserve(0);
    let id = uuid::Uuid::new_v4().to_string();
    b.create(&id, 256 * MIB, Provisioning::Full).unwrap();
    let path = b.path(&id);
    let sum = write_data(&path, 0, 256 * MIB, 5);
    let filler: PathBuf = m.point.join("filler");

    let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
    let need = 1024 * MIB - allocated;
    leave_free(&filler, &m.point, need);
    let e = b.extend(&id, 1024 * MIB, Provisioning::Full).unwrap_err();
    assert_eq!(e.kind(), BackendErrorKind::NoSpace, "{e}");
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(after.len(), 256 * MIB, "the file kept a part-way size");
    assert_eq!(hash_at(&path, 0, 256 * MIB), sum);
    assert!(
        free_bytes(&m.point) + MIB >= need,
        "the part-way allocation was not freed"
    );

    // A new volume that fails the same way leaves no file.
    let id2 = uuid::Uuid::new_v4().to_string();
    leave_free(&filler, &m.point, 512 * MIB);
    let e = b.create(&id2, 512 * MIB, Provisioning::Full).unwrap_err();
    assert_eq!(e.kind(), BackendErrorKind::NoSpace, "{e}");
    assert!(!b.path(&id2).exists());
    assert!(free_bytes(&m.point) + MIB >= 512 * MIB);

    // With room, both converge.
    std::fs::remove_file(&filler).unwrap();
    b.extend(&id, 1024 * MIB, Provisioning::Full).unwrap();
    b.create(&id2, 512 * MIB, Provisioning::Full).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 1024 * MIB);
    assert_eq!(hash_at(&path, 0, 256 * MIB), sum);
}

/// Asserts an SCP 507 answer.
fn insufficient(a: &Answer, what: &str) {
    assert_eq!(
        a.status,
        StatusCode::INSUFFICIENT_STORAGE,
        "{what}: {}",
        a.text
    );
    assert_eq!(a.body["errors"][0]["code"], "InsufficientStorage", "{what}");
    assert!(detail(a).contains("disk is full"), "{what}: {}", a.text);
    assert!(
        !a.text.contains("/var/tmp"),
        "{what} leaks a path: {}",
        a.text
    );
}

#[tokio::test]
async fn loop_store_on_a_full_disk_refuses_writes_and_recovers() {
    // Jobs wait a little before they run, so two are still pending when
    // the disk fills.
    let d = match TestDaemon::start_on_small_fs_with(200 * MIB, "[jobs]\ndebug_delay_ms = 400\n")
        .await
    {
        Ok(d) => d,
        Err(why) => {
            eprintln!("SKIPPING full-disk store test: cannot mount a small ext4: {why}");
            return;
        }
    };
    let c = d.client("a");
    let data = d.dir.path().join("data");
    let filler = data.join("filler");
    let keep = id_of(&c.create("keep", 8, None).await);
    let spare = id_of(&c.create("spare", 8, None).await);
    c.wait(&keep, &["available"]).await;
    c.wait(&spare, &["available"]).await;
    let sum = write_data(&d.volume_path(&keep), MIB, 4 * MIB, 7);
    let cinder = Cinder::new(d.cinder_addr, "user-a:project-a", "project-a");
    let cinder_before = cinder.get("/volumes/detail").await;
    assert_eq!(
        cinder_before.status,
        StatusCode::OK,
        "{}",
        cinder_before.text
    );

    // Two jobs are accepted, then the disk fills before they run.
    leave_free(&filler, &data, 8 * MIB);
    let a = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{keep}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let late = id_of(&c.create("late", 8, None).await);
    fill_up(&filler, &data);
    let files_before = names(&data.join("volumes"));

    // Writes get 507 in the SCP format and change nothing.
    let before = c.get("/v1/volumes?with_count=true").await;
    assert_eq!(before.status, StatusCode::OK);
    let body = json!({"name": "no-room", "size": 8});
    insufficient(
        &c.call(Method::POST, "/v1/volumes", Some(body.clone()))
            .await,
        "create",
    );
    insufficient(
        &c.call(
            Method::PUT,
            &format!("/v1/volumes/{spare}"),
            Some(json!({"name": "renamed"})),
        )
        .await,
        "rename",
    );
    insufficient(
        &c.call(Method::DELETE, &format!("/v1/volumes/{spare}"), None)
            .await,
        "delete",
    );
    insufficient(
        &c.call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s", "volume_id": spare})),
        )
        .await,
        "snapshot",
    );
    // The Cinder dialect answers 507 as a Cinder fault.
    let f = cinder
        .post(
            "/volumes",
            json!({"volume": {"size": 1, "name": "no-room"}}),
        )
        .await;
    let msg = expect_fault(&f, 507, "computeFault");
    assert!(msg.contains("disk is full"), "{msg}");

    // Reads still work and show nothing half-written.
    let after = c.get("/v1/volumes?with_count=true").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);
    assert_eq!(after.body["count"], before.body["count"]);
    let s = c.get(&format!("/v1/volumes/{spare}")).await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.body["name"], "spare");
    assert_eq!(s.body["state"], "available");
    assert_eq!(c.get("/v1/snapshots").await.body["count"], 0);
    assert_eq!(names(&data.join("volumes")), files_before);
    let cd = cinder.get("/volumes/detail").await;
    assert_eq!(cd.status, StatusCode::OK, "{}", cd.text);
    assert!(c.get("/v1/volumes/quota-sets").await.status.is_success());
    // The accepted jobs cannot record that they run, so they wait.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        c.get(&format!("/v1/volumes/{keep}")).await.body["state"],
        "extending"
    );
    assert_eq!(
        c.get(&format!("/v1/volumes/{late}")).await.body["state"],
        "creating"
    );

    // Space comes back: without a restart the jobs end and writes work.
    std::fs::remove_file(&filler).unwrap();
    let v = c.wait(&keep, &["available"]).await;
    assert_eq!(v["size"], 16);
    c.wait(&late, &["available"]).await;
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{spare}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let n = id_of(&c.create("room-again", 8, None).await);
    c.wait(&n, &["available"]).await;
    let f = cinder
        .post(
            "/volumes",
            json!({"volume": {"size": 1, "name": "cinder-again"}}),
        )
        .await;
    assert_eq!(f.status, StatusCode::ACCEPTED, "{}", f.text);
    all_jobs_end(&data).await;
    assert_eq!(hash_at(&d.volume_path(&keep), MIB, 4 * MIB), sum);

    // And after a restart the database is intact.
    let d = d.restart("").await;
    let c = d.client("a");
    let ok = d.daemon.service.store().integrity_check().unwrap();
    assert_eq!(ok, "ok");
    assert_eq!(
        c.get(&format!("/v1/volumes/{spare}")).await.body["name"],
        "renamed"
    );
    assert_eq!(c.get(&format!("/v1/volumes/{keep}")).await.body["size"], 16);
    all_jobs_end(&data).await;
    assert_eq!(hash_at(&d.volume_path(&keep), MIB, 4 * MIB), sum);
}
