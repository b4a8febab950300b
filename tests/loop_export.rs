//! Attach and export through real loop devices. Needs root and
//! /dev/loop-control; without them each test prints why and skips.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn loop_available() -> bool {
    if !Path::new("/dev/loop-control").exists() {
        eprintln!("SKIP: /dev/loop-control is missing; loop export tests need loop devices");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: loop export tests need root");
        return false;
    }
    true
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize, fill: u8) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: the layout has a non-zero size; the memory is freed in Drop.
        let ptr = unsafe { std::alloc::alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: ptr points to len writable bytes.
        unsafe { std::ptr::write_bytes(ptr, fill, len) };
        Aligned { ptr, len }
    }
    fn slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in new with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn open_direct(dev: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap()
}

async fn attach_and_wait(c: &Client, id: &str, server: &str) -> serde_json::Value {
    let a = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{id}/servers"),
            Some(json!({"server_id": server})),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    c.wait(id, &["in-use"]).await;
    a.body
}

async fn host_path(c: &Client, id: &str) -> String {
    let n = c.get(&format!("/blockd/v1/volumes/{id}")).await;
    n.body["export"]["host_path"]
        .as_str()
        .unwrap_or_else(|| panic!("no export: {}", n.text))
        .to_string()
}

#[tokio::test]
async fn loop_attach_write_read_extend_detach() {
    if !loop_available() {
        return;
    }
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let v = c.create("disk", 8, None).await;
    let id = v["id"].as_str().unwrap().to_string();
    c.wait(&id, &["available"]).await;

    let a = attach_and_wait(&c, &id, "server-1").await;
    assert_eq!(
        keys(&a),
        vec!["delete_on_termination", "device", "server_id", "volume_id"]
    );
    assert_eq!(a["device"], "/dev/vdb");
    let v = c.get(&format!("/v1/volumes/{id}")).await.body;
    assert_eq!(v["servers"][0]["id"], "server-1");
    assert_eq!(v["servers"][0]["device"], "/dev/vdb");
    assert!(v["servers"][0]["attached_at"].is_string());
    let dev = host_path(&c, &id).await;
    assert!(dev.starts_with("/dev/loop"), "{dev}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["export", "show", &id, "--json", "--data-dir"])
        .arg(d.dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["export"]["host_path"], dev.as_str());
    assert_eq!(shown["state"], "in-use");

    // Bytes written through the device land in the file.
    let buf = Aligned::new(1 << 20, 0xA5);
    let mut f = open_direct(&dev);
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(buf.slice()).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut file = std::fs::File::open(d.volume_path(&id)).unwrap();
    file.seek(SeekFrom::Start(3 << 20)).unwrap();
    let mut back = vec![0u8; 1 << 20];
    file.read_exact(&mut back).unwrap();
    assert_eq!(back, buf.slice());

    // The 409 cases: another server without multiattach, delete in use.
    let other = c
        .call(
            Method::POST,
            &format!("/v1/volumes/{id}/servers"),
            Some(json!({"server_id": "server-2"})),
        )
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT, "{}", other.text);
    let del = c
        .call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
        .await;
    assert_eq!(del.status, StatusCode::CONFLICT);

    // Live extend: the device shows the new size before in-use returns.
    let held = std::fs::File::open(&dev).unwrap();
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/size"),
            Some(json!({"size": 16})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let v = c.wait(&id, &["in-use"]).await;
    assert_eq!(v["size"], 16);
    assert_eq!(
        blockd::export::device_size(Path::new(&dev)).unwrap(),
        16 * GIB
    );
    drop(held);

    // A second volume on the same server gets the next name.
    let v2 = c.create("disk2", 8, None).await;
    let id2 = v2["id"].as_str().unwrap().to_string();
    c.wait(&id2, &["available"]).await;
    let a2 = attach_and_wait(&c, &id2, "server-1").await;
    assert_eq!(a2["device"], "/dev/vdc");
    let sv = c.get("/v1/servers/server-1/volumes").await;
    assert_eq!(sv.status, StatusCode::OK);
    assert_eq!(sv.body["volumes"].as_array().unwrap().len(), 2);
    let one = c.get(&format!("/v1/servers/server-1/volumes/{id2}")).await;
    assert_eq!(one.body["device"], "/dev/vdc");
    let upd = c
        .call(
            Method::PUT,
            &format!("/v1/servers/server-1/volumes/{id2}"),
            Some(json!({"delete_on_termination": true})),
        )
        .await;
    assert_eq!(upd.body["delete_on_termination"], true);
    // Another project sees none of it.
    let b = d.client("b");
    assert_eq!(
        b.get("/v1/servers/server-1/volumes").await.body["volumes"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    // Detach both; the devices are freed.
    let dev2 = host_path(&c, &id2).await;
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/servers/server-1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let v = c.wait(&id, &["available"]).await;
    assert_eq!(v["servers"].as_array().unwrap().len(), 0);
    let r = c
        .call(
            Method::DELETE,
            &format!("/v1/servers/server-1/volumes/{id2}"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    c.wait(&id2, &["available"]).await;
    for dv in [&dev, &dev2] {
        let info = blockd::export::list()
            .into_iter()
            .find(|i| i.device == Path::new(dv));
        assert!(
            info.map(|i| i.backing_file.is_none()).unwrap_or(true),
            "{dv} still attached"
        );
    }
    let again = c
        .call(
            Method::DELETE,
            &format!("/v1/volumes/{id}/servers/server-1"),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn loop_reconcile_after_restart_both_ways() {
    if !loop_available() {
        return;
    }
    let d = TestDaemon::start().await;
    let c = d.client("a");
    let keep = c.create("keep", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stray = c.create("stray", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&keep, &["available"]).await;
    c.wait(&stray, &["available"]).await;
    attach_and_wait(&c, &keep, "srv").await;
    let dev = host_path(&c, &keep).await;

    // As after a host reboot: the export is gone. And a device over a
    // file that no attachment owns appears.
    blockd::export::detach(Path::new(&dev)).unwrap();
    let stray_dev = blockd::export::attach(&d.volume_path(&stray), &Default::default()).unwrap();
    let d = d.restart("").await;
    let c = d.client("a");
    let dev_after = host_path(&c, &keep).await;
    let info = blockd::export::list()
        .into_iter()
        .find(|i| i.device == Path::new(&dev_after))
        .expect("export re-created");
    assert_eq!(
        info.backing_file.as_deref(),
        Some(d.volume_path(&keep).as_path())
    );
    assert_eq!(
        c.get(&format!("/v1/volumes/{keep}")).await.body["state"],
        "in-use"
    );
    let stray_info = blockd::export::list()
        .into_iter()
        .find(|i| i.device == stray_dev.path());
    // The number may already serve another test's file; it must not serve
    // the stray volume any more.
    let stray_path = d.volume_path(&stray);
    assert!(
        stray_info
            .map(|i| i.backing_file.as_deref() != Some(stray_path.as_path()))
            .unwrap_or(true),
        "the stray device was not detached"
    );

    // A plain restart keeps the same device under the guest.
    let d = d.restart("").await;
    let c = d.client("a");
    assert_eq!(host_path(&c, &keep).await, dev_after);
}

#[tokio::test]
async fn loop_qos_throttles_the_device() {
    if !loop_available() {
        return;
    }
    if !blockd::export::Throttler::detect().enforced() {
        eprintln!("SKIP: no blkio throttle (cgroup v1 blkio or v2 io) on this host");
        return;
    }
    let d = TestDaemon::start_with("", Arc::new(OffsetClock(chrono::Duration::zero()))).await;
    let c = d.client("a");
    let id = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "qos", "size": 8, "max_throughput": 20})),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    c.wait(&id, &["available"]).await;
    attach_and_wait(&c, &id, "srv").await;
    let dev = host_path(&c, &id).await;

    let rate = |dev: &str| {
        let buf = Aligned::new(1 << 20, 0x5A);
        let mut f = open_direct(dev);
        let start = Instant::now();
        let mut bytes = 0u64;
        while start.elapsed() < Duration::from_millis(1500) && bytes < (4 << 30) {
            f.write_all(buf.slice()).unwrap();
            bytes += 1 << 20;
        }
        bytes as f64 / start.elapsed().as_secs_f64() / 1e6
    };
    let limited = tokio::task::spawn_blocking({
        let dev = dev.clone();
        move || rate(&dev)
    })
    .await
    .unwrap();
    eprintln!("throttled write: {limited:.1} MB/s (limit 20)");
    assert!((15.0..=25.0).contains(&limited), "{limited:.1} MB/s");

    // Raise the limit live, then detach removes it.
    let r = c
        .call(
            Method::PUT,
            &format!("/v1/volumes/{id}/qos"),
            Some(json!({"max_throughput": 2000000})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let open = tokio::task::spawn_blocking({
        let dev = dev.clone();
        move || rate(&dev)
    })
    .await
    .unwrap();
    eprintln!("write with the limit raised: {open:.1} MB/s");
    assert!(open > 3.0 * limited, "{open:.1} vs {limited:.1}");
}
