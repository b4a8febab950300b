//! Volumes from images and images from volumes, against a real glance-api
//! (from the CI venv, SQLite and the file store, started by
//! tests/support/glance.sh) and real qemu-img: bytes, bootable and
//! volume_image_metadata in both dialects, every imageRef error of the
//! create-volume spec, the cache, upload round trips and the image
//! metadata actions. Without Glance or qemu-img the tests say SKIPPED.

mod common;

use blockd::clock::OffsetClock;
use common::TestDaemon;
use common::cinder::{Cinder, TOKENS};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn venv() -> PathBuf {
    std::env::var_os("BLOCKD_CI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/blockd-ci-venv"))
}

/// A glance-api process group, stopped when dropped.
struct Glance {
    child: std::process::Child,
    dir: tempfile::TempDir,
    url: String,
    http: reqwest::Client,
}

impl Drop for Glance {
    fn drop(&mut self) {
        let pg = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = nix::sys::signal::kill(pg, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

fn have_qemu_img() -> bool {
    Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn start_glance() -> Option<Glance> {
    if !venv().join("bin/glance-manage").exists() || !venv().join("bin/gunicorn").exists() {
        eprintln!(
            "SKIPPED: no glance or gunicorn in {} (.ci/run installs them); images NOT tested",
            venv().display()
        );
        return None;
    }
    if !have_qemu_img() {
        eprintln!("SKIPPED: qemu-img is not installed (qemu-utils); images NOT tested");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("blockd-glance")
        .tempdir_in("/var/tmp")
        .unwrap();
    let log = std::fs::File::create(dir.path().join("glance.log")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/glance.sh");
    let child = {
        use std::os::unix::process::CommandExt;
        Command::new("bash")
            .arg(script)
            .arg(dir.path().join("g"))
            .env("GLANCE_VENV", venv())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start glance.sh")
    };
    let mut g = Glance {
        child,
        dir,
        url: String::new(),
        http: reqwest::Client::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = std::fs::read_to_string(g.dir.path().join("glance.log")).unwrap_or_default();
        if let Some(at) = log.find("Listening at: ") {
            let rest = &log[at + "Listening at: ".len()..];
            g.url = rest.split_whitespace().next().unwrap_or("").to_string();
            break;
        }
        if let Ok(Some(st)) = g.child.try_wait() {
            panic!("glance.sh exited ({st}) before serving:\n{log}");
        }
        assert!(Instant::now() < deadline, "glance did not start:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Wait until it answers.
    loop {
        if let Ok(r) = g.http.get(format!("{}/v2/images", g.url)).send().await
            && r.status().is_success()
        {
            return Some(g);
        }
        assert!(Instant::now() < deadline, "glance never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Glance {
    /// Registers an image and uploads `data` (None leaves it queued).
    async fn image(&self, meta: Value, data: Option<&Path>) -> Value {
        let r = self
            .http
            .post(format!("{}/v2/images", self.url))
            .json(&meta)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            201,
            "create image: {}",
            r.text().await.unwrap()
        );
        let img: Value = r.json().await.unwrap();
        let id = img["id"].as_str().unwrap().to_string();
        if let Some(p) = data {
            let r = self
                .http
                .put(format!("{}/v2/images/{id}/file", self.url))
                .header("Content-Type", "application/octet-stream")
                .body(std::fs::read(p).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                204,
                "upload: {}",
                r.text().await.unwrap()
            );
        }
        self.show(&id).await
    }

    async fn show(&self, id: &str) -> Value {
        self.http
            .get(format!("{}/v2/images/{id}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Downloads an image's data into a file.
    async fn download(&self, id: &str, to: &Path) {
        let mut r = self
            .http
            .get(format!("{}/v2/images/{id}/file", self.url))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let mut f = std::fs::File::create(to).unwrap();
        while let Some(c) = r.chunk().await.unwrap() {
            std::io::Write::write_all(&mut f, &c).unwrap();
        }
    }

    /// The file the store keeps an image's data in.
    fn stored(&self, id: &str) -> PathBuf {
        self.dir.path().join("g/images").join(id)
    }
}

/// Known data: `len` bytes of a pattern with a zero gap in the middle.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect();
    let gap = len / 3..len / 3 + len / 4;
    v[gap].iter_mut().for_each(|b| *b = 0);
    v
}

/// Checks that the volume file starts with `data` and reads zeros after it.
fn assert_volume_holds(path: &Path, data: &[u8], size: u64) {
    let mut f = std::fs::File::open(path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), size, "volume size");
    let mut got = vec![0u8; data.len()];
    f.read_exact(&mut got).unwrap();
    assert!(got == data, "volume bytes differ from the image's data");
    let mut after = vec![1u8; 4 * MIB];
    f.seek(SeekFrom::Start(data.len() as u64)).unwrap();
    f.read_exact(&mut after).unwrap();
    assert!(
        after.iter().all(|b| *b == 0),
        "bytes after the image are not zero"
    );
}

/// Compares two files byte for byte.
fn same_bytes(a: &Path, b: &Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    if fa.metadata().unwrap().len() != fb.metadata().unwrap().len() {
        return false;
    }
    let (mut ba, mut bb) = (vec![0u8; 4 * MIB], vec![0u8; 4 * MIB]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        if n == 0 {
            return true;
        }
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            return false;
        }
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn daemon(glance_url: &str) -> TestDaemon {
    TestDaemon::start_with(
        &format!("{TOKENS}\n[images]\nglance_url = \"{glance_url}\"\ncache_size_gib = 1\n"),
        Arc::new(OffsetClock(chrono::Duration::zero())),
    )
    .await
}

/// Polls a volume until its status is one of `want`; images take longer
/// than the harness's 30 s when the machine is busy.
async fn wait(c: &Cinder, id: &str, want: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let a = c.get(&format!("/volumes/{id}")).await;
        if a.status == StatusCode::OK
            && want.contains(&a.body["volume"]["status"].as_str().unwrap_or(""))
        {
            return a.body["volume"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "volume {id} never reached {want:?}: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates a volume and waits until it is available.
async fn create_ok(c: &Cinder, body: Value) -> Value {
    let (st, b) = create(c, body).await;
    assert_eq!(st, StatusCode::ACCEPTED, "create: {b}");
    let v = wait(
        c,
        b["volume"]["id"].as_str().unwrap(),
        &["available", "error"],
    )
    .await;
    assert_eq!(v["status"], "available", "{v}");
    v
}

async fn create(c: &Cinder, body: Value) -> (StatusCode, Value) {
    let a = c.post("/volumes", json!({ "volume": body })).await;
    (a.status, a.body)
}

fn fault_message(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.values().next())
        .and_then(|f| f["message"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Waits up to 60 s for `cond`.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn dir_names(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volumes_from_images_and_back_with_real_glance() {
    let Some(g) = start_glance().await else {
        return;
    };
    let work = tempfile::Builder::new()
        .prefix("blockd-images")
        .tempdir_in("/var/tmp")
        .unwrap();
    let w = |n: &str| work.path().join(n);

    // A raw image: 3 MiB of known data with a zero gap.
    let raw_data = pattern(3 * MIB + 512, 7);
    std::fs::write(w("raw.img"), &raw_data).unwrap();
    let raw = g
        .image(
            json!({"name": "raw-one", "disk_format": "raw", "container_format": "bare",
                   "visibility": "public", "os_distro": "debian", "signature_verified": "false"}),
            Some(&w("raw.img")),
        )
        .await;
    let raw_id = raw["id"].as_str().unwrap().to_string();
    assert_eq!(raw["status"], "active");

    // A qcow2 image made from other known data.
    let q_data = pattern(5 * MIB, 99);
    std::fs::write(w("q-src.raw"), &q_data).unwrap();
    qemu_img(
        &["convert", "-f", "raw", "-O", "qcow2"]
            .iter()
            .copied()
            .chain([
                w("q-src.raw").to_str().unwrap(),
                w("q.qcow2").to_str().unwrap(),
            ])
            .collect::<Vec<_>>(),
    );
    let qcow = g
        .image(
            json!({"name": "qcow-one", "disk_format": "qcow2", "container_format": "bare",
                   "visibility": "public", "min_disk": 1, "hw_disk_bus": "virtio"}),
            Some(&w("q.qcow2")),
        )
        .await;
    let qcow_id = qcow["id"].as_str().unwrap().to_string();

    let d = daemon(&g.url).await;
    let admin = Cinder::new(d.cinder_addr, "tok-admin-0001", "project-a");
    let member_a = Cinder::new(d.cinder_addr, "tok-member-a01", "project-a");

    // --- raw image: bytes, bootable, volume_image_metadata ---
    let (st, body) = create(
        &member_a,
        json!({"size": 1, "imageRef": raw_id, "name": "from-raw"}),
    )
    .await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let vraw = body["volume"]["id"].as_str().unwrap().to_string();
    let v = wait(&member_a, &vraw, &["available", "error"]).await;
    assert_eq!(v["status"], "available", "{v}");
    assert_volume_holds(&d.volume_path(&vraw), &raw_data, 1 << 30);
    assert_eq!(v["bootable"], "true");
    let meta = &v["volume_image_metadata"];
    assert_eq!(meta["image_id"], raw_id.as_str());
    assert_eq!(meta["image_name"], "raw-one");
    assert_eq!(meta["os_distro"], "debian");
    assert_eq!(meta["disk_format"], "raw");
    assert_eq!(meta["checksum"], raw["checksum"]);
    assert_eq!(meta["size"], raw_data.len().to_string());
    // The SCP dialect shows the same volume, typed as its schema has it.
    let scp = d.client("a");
    let s = scp.get(&format!("/v1/volumes/{vraw}")).await;
    assert_eq!(s.status, StatusCode::OK, "{}", s.text);
    assert_eq!(s.body["bootable"], true);
    assert_eq!(s.body["volume_image_metadata"]["image_id"], raw_id.as_str());
    assert_eq!(s.body["volume_image_metadata"]["min_disk"], 0);
    assert_eq!(s.body["volume_image_metadata"]["signature_verified"], false);
    assert_eq!(
        s.body["volume_image_metadata"]["size"],
        raw_data.len() as u64
    );
    // A volume not made from an image has none.
    let plain = create_ok(&member_a, json!({"size": 1})).await;
    assert!(plain.get("volume_image_metadata").is_none());
    assert_eq!(plain["bootable"], "false");

    // --- qcow2 image, first a cache miss, then a hit ---
    let (h0, m0) = (
        blockd::images::cache::hits(),
        blockd::images::cache::misses(),
    );
    let (st, body) = create(&member_a, json!({"imageRef": qcow_id})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["volume"]["size"], 1, "size comes from the image");
    let vq1 = body["volume"]["id"].as_str().unwrap().to_string();
    let v = wait(&member_a, &vq1, &["available", "error"]).await;
    assert_eq!(v["status"], "available", "{v}");
    assert_volume_holds(&d.volume_path(&vq1), &q_data, 1 << 30);
    assert_eq!(v["volume_image_metadata"]["hw_disk_bus"], "virtio");
    assert_eq!(v["volume_image_metadata"]["disk_format"], "qcow2");
    assert!(blockd::images::cache::misses() > m0, "first create misses");
    // The cache entry is built from the download once the volume is ready.
    let cache_dir = d.dir.path().join("data/image-cache");
    eventually("the cache holds the raw form", || {
        cache_dir.join(format!("{qcow_id}.json")).exists()
    })
    .await;
    let v2 = create_ok(
        &member_a,
        json!({"size": 2, "imageRef": format!("{}/v2/images/{qcow_id}", g.url)}),
    )
    .await;
    let vq2 = v2["id"].as_str().unwrap().to_string();
    assert_volume_holds(&d.volume_path(&vq2), &q_data, 2 << 30);
    assert!(
        blockd::images::cache::hits() > h0,
        "second create hits the cache"
    );
    assert_eq!(v2["bootable"], "true");
    // A damaged cache entry is caught by its manifest and replaced.
    {
        let p = cache_dir.join(format!("{qcow_id}.raw"));
        let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        std::io::Write::write_all(&mut f, b"damage").unwrap();
    }
    let v3 = create_ok(&member_a, json!({"size": 1, "imageRef": qcow_id})).await;
    assert_volume_holds(&d.volume_path(v3["id"].as_str().unwrap()), &q_data, 1 << 30);

    // --- imageRef errors of the create-volume spec ---
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": "not-a-uuid"})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    let (st, b) = create(
        &member_a,
        json!({"size": 1, "imageRef": "6f1c1a2e-0000-4000-8000-000000000001"}),
    )
    .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    assert!(
        b["itemNotFound"]["message"]
            .as_str()
            .unwrap()
            .contains("Image")
    );
    // Private to another project: not visible to a member, 404.
    let private = g
        .image(
            json!({"name": "theirs", "disk_format": "raw", "container_format": "bare",
                   "visibility": "private", "owner": "project-b"}),
            Some(&w("raw.img")),
        )
        .await;
    let pid = private["id"].as_str().unwrap();
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": pid})).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{b}");
    let member_b = Cinder::new(d.cinder_addr, "tok-member-b01", "project-b");
    let (st, b) = create(&member_b, json!({"size": 1, "imageRef": pid})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "the owner sees it: {b}");
    let (st, b) = create(&admin, json!({"size": 1, "imageRef": pid})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "an admin sees it: {b}");
    // Larger than the volume: by virtual size, and by min_disk.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        w("big.qcow2").to_str().unwrap(),
        "3G",
    ]);
    let big = g
        .image(
            json!({"name": "big", "disk_format": "qcow2", "container_format": "bare",
                   "visibility": "public"}),
            Some(&w("big.qcow2")),
        )
        .await;
    let (st, b) = create(&member_a, json!({"size": 2, "imageRef": big["id"]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    assert!(fault_message(&b).contains("larger than the volume"), "{b}");
    let needs2 = g
        .image(
            json!({"name": "min2", "disk_format": "raw", "container_format": "bare",
                   "visibility": "public", "min_disk": 2}),
            Some(&w("raw.img")),
        )
        .await;
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": needs2["id"]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    assert!(fault_message(&b).contains("min_disk"), "{b}");
    // An image together with another source.
    let (st, b) = create(
        &member_a,
        json!({"size": 1, "imageRef": raw_id, "source_volid": vraw}),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    // Not active yet, and a format blockd cannot write.
    let queued = g
        .image(
            json!({"name": "q", "disk_format": "raw", "container_format": "bare",
                   "visibility": "public"}),
            None,
        )
        .await;
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": queued["id"]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    assert!(fault_message(&b).contains("not active"), "{b}");
    let iso = g
        .image(
            json!({"name": "cd", "disk_format": "iso", "container_format": "bare",
                   "visibility": "public"}),
            Some(&w("raw.img")),
        )
        .await;
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": iso["id"]})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{b}");
    // Declared raw, but the data is qcow2: qemu-img disagrees, error after 202.
    let liar = g
        .image(
            json!({"name": "liar", "disk_format": "raw", "container_format": "bare",
                   "visibility": "public"}),
            Some(&w("q.qcow2")),
        )
        .await;
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": liar["id"]})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let vl = b["volume"]["id"].as_str().unwrap().to_string();
    wait(&member_a, &vl, &["error"]).await;
    let why = scp.get(&format!("/blockd/v1/volumes/{vl}")).await;
    assert!(
        why.text.contains("qcow2"),
        "reason names the real format: {}",
        why.text
    );
    // Data that no longer matches its checksum: error after 202.
    let bad = g
        .image(
            json!({"name": "rot", "disk_format": "raw", "container_format": "bare",
                   "visibility": "public"}),
            Some(&w("raw.img")),
        )
        .await;
    let bad_id = bad["id"].as_str().unwrap().to_string();
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(g.stored(&bad_id))
            .unwrap();
        std::io::Write::write_all(&mut f, b"rot").unwrap();
    }
    let (st, b) = create(&member_a, json!({"size": 1, "imageRef": bad_id})).await;
    assert_eq!(st, StatusCode::ACCEPTED, "{b}");
    let vb = b["volume"]["id"].as_str().unwrap().to_string();
    wait(&member_a, &vb, &["error"]).await;
    let why = scp.get(&format!("/blockd/v1/volumes/{vb}")).await;
    assert!(why.text.contains("checksum"), "reason: {}", why.text);
    // Nothing of the failed creates is left behind (background cache
    // fills of the good ones finish and remove their downloads).
    let tmp_dir = d.dir.path().join("data/image-tmp");
    eventually("the image temp dir is empty", || {
        dir_names(&tmp_dir).is_empty()
    })
    .await;
    let cached = dir_names(&cache_dir);
    assert!(
        !cached
            .iter()
            .any(|n| n.contains(&bad_id) || n.ends_with(".tmp")),
        "cache: {cached:?}"
    );
    assert!(!d.volume_path(&vb).exists() || std::fs::metadata(d.volume_path(&vb)).is_ok());

    // --- image metadata actions ---
    let act = |v: &str| format!("/volumes/{v}/action");
    let a = member_a
        .post(
            &act(&vraw),
            json!({"os-set_image_metadata": {"metadata": {"kernel": "vmlinuz"}}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["metadata"]["kernel"], "vmlinuz");
    assert_eq!(a.body["metadata"]["os_distro"], "debian");
    let a = member_a
        .post(&act(&vraw), json!({"os-show_image_metadata": null}))
        .await;
    assert_eq!(a.body["metadata"]["kernel"], "vmlinuz");
    let a = member_a
        .post(
            &act(&vraw),
            json!({"os-unset_image_metadata": {"key": "kernel"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = member_a
        .post(
            &act(&vraw),
            json!({"os-unset_image_metadata": {"key": "kernel"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
    let a = member_a
        .post(&act(&vraw), json!({"os-show_image_metadata": {}}))
        .await;
    assert!(a.body["metadata"].get("kernel").is_none());

    // --- upload to image: raw and qcow2, byte for byte ---
    for fmt in ["raw", "qcow2"] {
        let a = member_a
            .post(
                &act(&vq1),
                json!({"os-volume_upload_image": {"image_name": format!("up-{fmt}"),
                        "disk_format": fmt}}),
            )
            .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
        let up = &a.body["os-volume_upload_image"];
        assert_eq!(up["status"], "uploading");
        let img_id = up["image_id"].as_str().unwrap().to_string();
        let v = wait(&member_a, &vq1, &["available", "error"]).await;
        let why = scp.get(&format!("/blockd/v1/volumes/{vq1}")).await;
        assert_eq!(v["status"], "available", "{}", why.text);
        let img = g.show(&img_id).await;
        assert_eq!(img["status"], "active", "{img}");
        assert_eq!(img["disk_format"], fmt);
        assert_eq!(img["hw_disk_bus"], "virtio", "properties travel: {img}");
        let got = w(&format!("up.{fmt}"));
        g.download(&img_id, &got).await;
        if fmt == "raw" {
            assert!(same_bytes(&got, &d.volume_path(&vq1)), "raw upload differs");
        } else {
            qemu_img(&[
                "compare",
                "-q",
                "-f",
                "raw",
                "-F",
                "qcow2",
                d.volume_path(&vq1).to_str().unwrap(),
                got.to_str().unwrap(),
            ]);
        }
        std::fs::remove_file(&got).unwrap();
        // And back into a volume.
        let back = create_ok(&member_a, json!({"size": 1, "imageRef": img_id})).await;
        assert!(same_bytes(
            &d.volume_path(back["id"].as_str().unwrap()),
            &d.volume_path(&vq1)
        ));
    }
    // Upload refuses a volume that is not available, and bad formats.
    let a = member_a
        .post(
            &act(&vl),
            json!({"os-volume_upload_image": {"image_name": "x"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = member_a
        .post(
            &act(&vraw),
            json!({"os-volume_upload_image": {"image_name": "x", "disk_format": "iso"}}),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = member_a
        .post(&act(&vraw), json!({"os-volume_upload_image": {}}))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);

    // The SCP dialect (and the CLI through it) takes image_id too.
    let a = scp
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "scp-img", "size": 8, "image_id": raw_id})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let sid = a.body["id"].as_str().unwrap().to_string();
    let s = scp.wait(&sid, &["available", "error"]).await;
    assert_eq!(s["state"], "available", "{s}");
    assert_eq!(s["bootable"], true);
    assert_volume_holds(&d.volume_path(&sid), &raw_data, 8 << 30);
    let a = scp
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "scp-img", "size": 8, "image_id": "nope"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    drop(d);
    drop(g);
}

/// Glance unreachable (nothing listens) or not configured: 500 with a
/// clear message, and nothing is created.
#[tokio::test]
async fn unreachable_or_unset_glance_answers_500() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for url in [format!("http://127.0.0.1:{port}"), String::new()] {
        let d = daemon(&url).await;
        let c = Cinder::new(d.cinder_addr, "tok-member-a01", "project-a");
        let (st, b) = create(
            &c,
            json!({"size": 1, "imageRef": "6f1c1a2e-0000-4000-8000-000000000001"}),
        )
        .await;
        assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR, "{b}");
        let m = fault_message(&b);
        assert!(m.contains("image service"), "clear message: {m}");
        assert!(!m.contains("127.0.0.1"), "no internals: {m}");
        // Not a UUID is still the client's mistake.
        let (st, _) = create(&c, json!({"size": 1, "imageRef": "x/y/z"})).await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        let list = c.get("/volumes").await;
        assert_eq!(list.body["volumes"].as_array().unwrap().len(), 0);
    }
}
