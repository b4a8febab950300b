//! Each failpoint of `blockd::failpoint`, hit on purpose with the real
//! daemon binary. Crash points: the daemon is killed at that exact step,
//! starts again, and the operation ends in a terminal state with nothing
//! lost or left behind. `copy-read-eio`: a snapshot copy and a
//! create-from-snapshot fail with EIO, the reason shows in the API, the
//! source is untouched, no temp file stays, and the same operation works
//! once the fault is gone. Needs the `failpoints` feature:
//! `cargo test --features failpoints --test failpoints` (the README's test
//! command and .ci/run pass it).

mod common;

#[cfg(not(feature = "failpoints"))]
#[test]
fn failpoints_need_the_failpoints_feature() {
    use std::io::Write;
    // Straight to stderr, past the test harness's capture, so it is seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIP tests/failpoints.rs: built without --features failpoints, so the daemon \
         binary has no failpoints and none was tested; run \
         `cargo test --features failpoints` (the README's test command, which .ci/run runs)"
    );
}

#[cfg(feature = "failpoints")]
mod points {
    use super::common::crash::{LoopGuard, World, check_store, files, loops_under};
    use super::common::proc::{Proc, free_port, spawn, spawn_with, write_config};
    use super::common::*;
    use blockd::clock::OffsetClock;
    use reqwest::{Method, StatusCode};
    use serde_json::{Value, json};
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const DATA: usize = 4 << 20;

    fn data(tag: &str) -> Vec<u8> {
        super::common::crash::pattern(tag, DATA)
    }

    fn write_head(w: &World, id: &str, bytes: &[u8]) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(w.vol_path(id))
            .unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().unwrap();
    }

    fn read_head(path: &std::path::Path) -> Vec<u8> {
        super::common::crash::head(path, DATA)
    }

    fn world(dir: &tempfile::TempDir) -> World {
        let port = free_port();
        let clock = Arc::new(OffsetClock(chrono::Duration::zero()));
        World {
            dir: dir.path().to_path_buf(),
            port,
            // Each job waits a little before it runs, so the 202 reaches
            // the test before the job can reach a crash point.
            cfg: write_config(dir.path(), port, "[jobs]\ndebug_delay_ms = 200\n"),
            c: Client::new(&format!("http://127.0.0.1:{port}"), cred("a"), clock),
            db: dir.path().join("data/blockd.db"),
        }
    }

    /// Fails loudly when the binary the tests spawn lacks the feature
    /// (e.g. a build without it replaced `target/debug/blockd` meanwhile):
    /// a binary with failpoints refuses a malformed `FAILPOINTS`.
    fn require_failpoints_binary() {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_blockd"))
            .arg("default-config")
            .env("FAILPOINTS", "no-action-given")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{} was built without the failpoints feature; rebuild with \
             `cargo test --features failpoints`",
            env!("CARGO_BIN_EXE_blockd")
        );
    }

    /// Waits for the daemon to kill itself at the crash point.
    fn expect_crash(mut p: Proc, point: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = p.0.try_wait().unwrap() {
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGKILL),
                    "the daemon should have been killed at {point}, but exited with {status}"
                );
                return;
            }
            assert!(Instant::now() < deadline, "{point} was never reached");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn snapshot_status(w: &World, sid: &str, want: &[&str]) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = w.c.get(&format!("/v1/snapshots/{sid}")).await;
            if want.contains(&a.body["status"].as_str().unwrap_or("")) {
                return a.body;
            }
            assert!(Instant::now() < deadline, "snapshot {sid}: {}", a.text);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A volume of 8 GiB whose first bytes are `data("v1")`, and with
    /// `snapshot`, a snapshot of those bytes and then `data("v2")` on top.
    async fn setup(w: &World, snapshot: bool) -> (String, Option<String>) {
        require_failpoints_binary();
        let p = spawn(&w.cfg, w.port).await;
        let id = w.c.create("fp", 8, None).await["id"]
            .as_str()
            .unwrap()
            .to_string();
        w.c.wait(&id, &["available"]).await;
        write_head(w, &id, &data("v1"));
        let mut sid = None;
        if snapshot {
            let r =
                w.c.call(
                    Method::POST,
                    "/v1/snapshots",
                    Some(json!({"name": "s", "volume_id": id})),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
            let s = r.body["id"].as_str().unwrap().to_string();
            snapshot_status(w, &s, &["available"]).await;
            write_head(w, &id, &data("v2"));
            sid = Some(s);
        }
        p.kill();
        (id, sid)
    }

    /// Starts the daemon with `point` armed, runs `op`, and waits for the
    /// crash at that point.
    async fn crash_at<F, Fut>(w: &World, point: &str, op: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let armed = format!("{point}=return");
        let p = spawn_with(&w.cfg, w.port, &[("FAILPOINTS", &armed)]).await;
        op().await;
        let p = tokio::task::spawn_blocking({
            let point = point.to_string();
            move || expect_crash(p, &point)
        });
        p.await.unwrap();
    }

    async fn restart(w: &World, point: &str) -> Proc {
        let p = spawn(&w.cfg, w.port).await;
        check_store(w, &format!("after a crash at {point}")).await;
        p
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_crashes_before_rename_and_before_commit() {
        for point in ["snapshot-before-rename", "snapshot-before-commit"] {
            let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
            let w = world(&dir);
            let (id, _) = setup(&w, false).await;
            let mut sid = String::new();
            let (wr, idr, out) = (&w, &id, &mut sid);
            crash_at(&w, point, || async move {
                let r =
                    wr.c.call(
                        Method::POST,
                        "/v1/snapshots",
                        Some(json!({"name": "s", "volume_id": idr})),
                    )
                    .await;
                assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
                *out = r.body["id"].as_str().unwrap().to_string();
            })
            .await;
            let _p = restart(&w, point).await;
            let s = snapshot_status(&w, &sid, &["available", "error"]).await;
            assert_eq!(s["status"], "available", "{point}: the copy is redone: {s}");
            let v =
                w.c.call(
                    Method::POST,
                    &format!("/blockd/v1/snapshots/{sid}/verify"),
                    None,
                )
                .await;
            assert_eq!(v.body["ok"], true, "{point}: {}", v.text);
            assert_eq!(read_head(&w.snap_path(&sid)), data("v1"), "{point}");
            assert_eq!(read_head(&w.vol_path(&id)), data("v1"), "{point}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn revert_crashes_before_rename() {
        let point = "restore-before-rename";
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let w = world(&dir);
        let (id, sid) = setup(&w, true).await;
        let sid = sid.unwrap();
        let (wr, idr, sidr) = (&w, &id, &sid);
        crash_at(&w, point, || async move {
            let r =
                wr.c.call(
                    Method::POST,
                    &format!("/v1/volumes/{idr}/revert"),
                    Some(json!({"snapshot_id": sidr})),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        })
        .await;
        // The volume still holds its newer bytes until the revert is redone.
        assert_eq!(read_head(&w.vol_path(&id)), data("v2"));
        let _p = restart(&w, point).await;
        let v = w.c.wait(&id, &["available", "error_restoring"]).await;
        assert_eq!(v["state"], "available", "{v}");
        assert_eq!(read_head(&w.vol_path(&id)), data("v1"), "reverted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attach_crashes_between_loop_attach_and_commit() {
        let point = "export-before-commit";
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let _loops = LoopGuard(dir.path().to_path_buf());
        let w = world(&dir);
        let (id, _) = setup(&w, false).await;
        let (wr, idr) = (&w, &id);
        crash_at(&w, point, || async move {
            let r =
                wr.c.call(
                    Method::POST,
                    &format!("/v1/volumes/{idr}/servers"),
                    Some(json!({"server_id": "vm-1"})),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        })
        .await;
        assert_eq!(
            loops_under(&w.dir).len(),
            1,
            "the device exists, unrecorded"
        );
        let _p = restart(&w, point).await;
        let v = w.c.wait(&id, &["in-use", "available", "error"]).await;
        assert_eq!(v["state"], "in-use", "{v}");
        let loops = loops_under(&w.dir);
        assert_eq!(loops.len(), 1, "one device, adopted: {loops:?}");
        assert_eq!(read_head(Path::new(&loops[0].0)), data("v1"), "device");
        let r =
            w.c.call(
                Method::DELETE,
                &format!("/v1/volumes/{id}/servers/vm-1"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        w.c.wait(&id, &["available"]).await;
        assert!(loops_under(&w.dir).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_and_extend_crash_before_the_commit() {
        let point = "job-before-commit";
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let w = world(&dir);
        let (id, _) = setup(&w, false).await;
        let (wr, idr) = (&w, &id);
        crash_at(&w, point, || async move {
            let r =
                wr.c.call(
                    Method::PUT,
                    &format!("/v1/volumes/{idr}/size"),
                    Some(json!({"size": 16})),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        })
        .await;
        let _p = restart(&w, point).await;
        let v = w.c.wait(&id, &["available", "error_extending"]).await;
        assert_eq!(
            (v["state"].clone(), v["size"].clone()),
            (json!("available"), json!(16))
        );
        assert_eq!(std::fs::metadata(w.vol_path(&id)).unwrap().len(), 16 * GIB);
        assert_eq!(read_head(&w.vol_path(&id)), data("v1"));
        drop(_p);

        let mut new_id = String::new();
        let out = &mut new_id;
        crash_at(&w, point, || async move {
            let v = wr.c.create("fresh", 8, None).await;
            *out = v["id"].as_str().unwrap().to_string();
        })
        .await;
        let _p = restart(&w, point).await;
        let v = w.c.wait(&new_id, &["available", "error"]).await;
        assert_eq!(v["state"], "available", "{v}");
        assert_eq!(
            std::fs::metadata(w.vol_path(&new_id)).unwrap().len(),
            8 * GIB
        );
    }

    const EIO: &str = "copy-read-eio=return";

    /// What a failed copy must say: which side failed, and the OS error,
    /// once.
    fn says_eio(reason: &Value) -> bool {
        reason.as_str() == Some("read source: Input/output error (os error 5)")
    }

    /// A file's size and the hash of its first `DATA` bytes.
    fn fingerprint(path: &std::path::Path) -> (u64, blake3::Hash) {
        let len = std::fs::metadata(path).unwrap().len();
        (len, blake3::hash(&read_head(path)))
    }

    /// The failed job of `kind` among the volume's recent jobs, in blockd's view.
    async fn failed_job(w: &World, volume: &str, kind: &str) -> Value {
        let v = w.c.get(&format!("/blockd/v1/volumes/{volume}")).await;
        assert_eq!(v.status, StatusCode::OK, "{}", v.text);
        v.body["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|j| j["kind"] == kind && j["state"] == "failed")
            .unwrap_or_else(|| panic!("no failed {kind} job: {}", v.text))
            .clone()
    }

    async fn snapshot_of(w: &World, id: &str) -> String {
        let r =
            w.c.call(
                Method::POST,
                "/v1/snapshots",
                Some(json!({"name": "s", "volume_id": id})),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        r.body["id"].as_str().unwrap().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_copy_fails_on_eio_and_works_once_cleared() {
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let w = world(&dir);
        let (id, _) = setup(&w, false).await;
        let before = fingerprint(&w.vol_path(&id));

        let p = spawn_with(&w.cfg, w.port, &[("FAILPOINTS", EIO)]).await;
        let sid = snapshot_of(&w, &id).await;
        let s = snapshot_status(&w, &sid, &["available", "error"]).await;
        assert_eq!(s["status"], "error", "the copy read through EIO: {s}");
        let native = w.c.get(&format!("/blockd/v1/snapshots/{sid}")).await;
        assert!(
            says_eio(&native.body["error_reason"]),
            "snapshot reason: {}",
            native.text
        );
        let job = failed_job(&w, &id, "create_snapshot").await;
        assert!(says_eio(&job["error"]), "job: {job}");
        let v = w.c.wait(&id, &["available"]).await;
        assert_eq!(v["state"], "available", "{v}");
        assert_eq!(fingerprint(&w.vol_path(&id)), before, "source changed");
        let (snaps, other) = files(&w.dir.join("data/snapshots"));
        assert!(
            snaps.is_empty() && other.is_empty(),
            "left behind: {snaps:?} {other:?}"
        );
        check_store(&w, "after EIO in a snapshot copy").await;
        p.kill();

        // The fault is gone: the same snapshot works.
        let _p = spawn(&w.cfg, w.port).await;
        check_store(&w, "restart after EIO in a snapshot copy").await;
        let sid = snapshot_of(&w, &id).await;
        let s = snapshot_status(&w, &sid, &["available", "error"]).await;
        assert_eq!(s["status"], "available", "{s}");
        let r =
            w.c.call(
                Method::POST,
                &format!("/blockd/v1/snapshots/{sid}/verify"),
                None,
            )
            .await;
        assert_eq!(r.body["ok"], true, "{}", r.text);
        assert_eq!(read_head(&w.snap_path(&sid)), data("v1"));
        assert_eq!(fingerprint(&w.vol_path(&id)), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_from_snapshot_fails_on_eio_and_works_once_cleared() {
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let w = world(&dir);
        let (id, sid) = setup(&w, true).await;
        let sid = sid.unwrap();
        let snap_before = fingerprint(&w.snap_path(&sid));
        let vol_before = fingerprint(&w.vol_path(&id));
        let from_snapshot = json!({"name": "restored", "size": 8, "snapshot_id": sid});

        let p = spawn_with(&w.cfg, w.port, &[("FAILPOINTS", EIO)]).await;
        let r =
            w.c.call(Method::POST, "/v1/volumes", Some(from_snapshot.clone()))
                .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let bad = r.body["id"].as_str().unwrap().to_string();
        let v = w.c.wait(&bad, &["available", "error"]).await;
        assert_eq!(v["state"], "error", "the copy read through EIO: {v}");
        let native = w.c.get(&format!("/blockd/v1/volumes/{bad}")).await;
        assert!(
            says_eio(&native.body["error_reason"]),
            "volume reason: {}",
            native.text
        );
        let job = failed_job(&w, &bad, "create_volume").await;
        assert!(says_eio(&job["error"]), "job: {job}");
        assert!(!w.vol_path(&bad).exists(), "a failed volume has no file");
        let (_, other) = files(&w.dir.join("data/volumes"));
        assert!(other.is_empty(), "left behind: {other:?}");
        assert_eq!(
            fingerprint(&w.snap_path(&sid)),
            snap_before,
            "snapshot changed"
        );
        assert_eq!(fingerprint(&w.vol_path(&id)), vol_before, "volume changed");
        check_store(&w, "after EIO in a create-from-snapshot").await;
        p.kill();

        // The fault is gone: the same create works, and the failed one can go.
        let _p = spawn(&w.cfg, w.port).await;
        check_store(&w, "restart after EIO in a create-from-snapshot").await;
        let r =
            w.c.call(Method::POST, "/v1/volumes", Some(from_snapshot))
                .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let good = r.body["id"].as_str().unwrap().to_string();
        let v = w.c.wait(&good, &["available", "error"]).await;
        assert_eq!(v["state"], "available", "{v}");
        assert_eq!(read_head(&w.vol_path(&good)), data("v1"));
        let r =
            w.c.call(
                Method::POST,
                &format!("/blockd/v1/snapshots/{sid}/verify"),
                None,
            )
            .await;
        assert_eq!(r.body["ok"], true, "{}", r.text);
        let d =
            w.c.call(Method::DELETE, &format!("/v1/volumes/{bad}"), None)
                .await;
        assert_eq!(d.status, StatusCode::ACCEPTED, "{}", d.text);
        w.c.wait(&bad, &[]).await;
        check_store(&w, "after the retry").await;
    }

    /// Both engines, in this process: reads fail with EIO while the point
    /// is armed, and the same copy is exact once it is off.
    #[test]
    fn both_copy_engines_fail_their_reads_with_eio() {
        use blockd::copy::{CancelToken, CopyOptions, EnginePreference, Progress, copy};
        let dir = tempfile::TempDir::new_in("/var/tmp").unwrap();
        let src = dir.path().join("src.img");
        let dst = dir.path().join("dst.img");
        let mut f = std::fs::File::create(&src).unwrap();
        f.write_all(&data("engine")).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        for engine in [EnginePreference::Uring, EnginePreference::Fallback] {
            let opts = CopyOptions {
                engine,
                reflink: false,
                ..CopyOptions::default()
            };
            let run = || copy(&src, &dst, &opts, &Progress::new(), &CancelToken::new());
            blockd::failpoint::configure("copy-read-eio", "return").unwrap();
            let r = run();
            blockd::failpoint::remove("copy-read-eio");
            match r {
                Err(blockd::copy::CopyError::Unsupported(why)) => {
                    let _ = writeln!(std::io::stderr(), "SKIP {engine:?}: {why}");
                    continue;
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("read source") && msg.contains("Input/output error"),
                        "{engine:?}: {msg}"
                    );
                }
                Ok(_) => panic!("{engine:?}: the copy read through an armed EIO"),
            }
            let ok = run().unwrap_or_else(|e| panic!("{engine:?} after the fault: {e}"));
            assert_eq!(ok.bytes_copied, DATA as u64, "{engine:?}");
            assert_eq!(read_head(&dst), data("engine"), "{engine:?}");
            assert_eq!(std::fs::metadata(&dst).unwrap().len(), 64 << 20);
        }
    }
}
