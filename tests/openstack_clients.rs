//! The real OpenStack clients (openstack CLI, cinder CLI, openstacksdk)
//! against the daemon's Cinder dialect in noauth mode, checking what the
//! daemon and the host show afterwards. The clients live in a Python venv
//! that `.ci/run` makes; without it each test says so and skips.

mod common;

use common::{GIB, TestDaemon};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `.ci/run` installs the clients (override with BLOCKD_OSC_VENV).
fn venv() -> Option<PathBuf> {
    let dir = std::env::var_os("BLOCKD_OSC_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/blockd-osc-venv"));
    let ok = ["openstack", "cinder", "python"]
        .iter()
        .all(|b| dir.join("bin").join(b).exists());
    if ok {
        Some(dir)
    } else {
        eprintln!(
            "SKIP: no OpenStack clients in {} (bin/openstack, bin/cinder, bin/python); \
             `.ci/run` creates this venv in its \"OpenStack clients\" step",
            dir.display()
        );
        None
    }
}

async fn run(venv: &Path, bin: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(venv.join("bin").join(bin))
        .args(args)
        .env("HOME", std::env::temp_dir())
        .env_remove("OS_CLOUD")
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{bin} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

struct Osc {
    venv: PathBuf,
    endpoint: String,
    /// noauth's `user:project`.
    token: &'static str,
}

impl Osc {
    /// `openstack` with noauth's `user:project` token and microversion 3.67.
    async fn openstack(&self, args: &[&str]) -> String {
        let mut a = vec![
            "--os-auth-type",
            "admin_token",
            "--os-token",
            self.token,
            "--os-endpoint",
            &self.endpoint,
            "--os-volume-api-version",
            "3.67",
        ];
        a.extend_from_slice(args);
        run(&self.venv, "openstack", &a).await
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend_from_slice(&["-f", "json"]);
        let out = self.openstack(&a).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Polls `openstack volume show` until `done` holds.
    async fn wait_volume(&self, id: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.json(&["volume", "show", id]).await;
            if done(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "volume {id} never settled: {v}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn wait_gone(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_cli_volumes_and_snapshots() {
    let Some(venv) = venv() else { return };
    let d = TestDaemon::start().await;
    let osc = Osc {
        venv,
        endpoint: format!("http://{}/v3/demo", d.cinder_addr),
        token: "alice:demo",
    };
    let v = osc
        .json(&["volume", "create", "--size", "1", "osc-vol"])
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    let v = osc.wait_volume(&id, |v| v["status"] == "available").await;
    assert_eq!(v["name"], "osc-vol");
    assert_eq!(v["os-vol-tenant-attr:tenant_id"], "demo");
    assert_eq!(file_len(&d.volume_path(&id)), GIB);
    let list = osc.json(&["volume", "list"]).await;
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == id.as_str()),
        "{list}"
    );

    // Grow it, and put bytes in it for the snapshot to carry.
    osc.openstack(&["volume", "set", "--size", "2", &id]).await;
    osc.wait_volume(&id, |v| v["size"] == 2 && v["status"] == "available")
        .await;
    assert_eq!(file_len(&d.volume_path(&id)), 2 * GIB);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.volume_path(&id))
            .unwrap();
        f.seek(std::io::SeekFrom::Start(GIB + 512)).unwrap();
        f.write_all(b"made through the openstack cli").unwrap();
        f.sync_all().unwrap();
    }

    let s = osc
        .json(&["volume", "snapshot", "create", "--volume", &id, "osc-snap"])
        .await;
    let sid = s["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = osc.json(&["volume", "snapshot", "show", &sid]).await;
        if s["status"] == "available" {
            assert_eq!(s["size"], 2);
            assert_eq!(s["volume_id"], id.as_str());
            break;
        }
        assert!(Instant::now() < deadline, "snapshot never available: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let snaps = osc.json(&["volume", "snapshot", "list"]).await;
    assert!(
        snaps
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ID"] == sid.as_str())
    );

    let v = osc
        .json(&[
            "volume",
            "create",
            "--snapshot",
            &sid,
            "--size",
            "2",
            "osc-from-snap",
        ])
        .await;
    let fid = v["id"].as_str().unwrap().to_string();
    let v = osc.wait_volume(&fid, |v| v["status"] == "available").await;
    assert_eq!(v["snapshot_id"], sid.as_str());
    let bytes = std::fs::read(d.volume_path(&fid)).unwrap();
    let at = (GIB + 512) as usize;
    assert_eq!(&bytes[at..at + 30], b"made through the openstack cli");

    // The same volumes through the service directly.
    let caller = blockd::service::Caller {
        project_id: "demo".into(),
        user_id: "alice".into(),
        admin: false,
    };
    assert_eq!(
        d.daemon
            .service
            .get_volume(&caller, &fid)
            .unwrap()
            .volume
            .name,
        "osc-from-snap"
    );

    osc.openstack(&["volume", "snapshot", "delete", &sid]).await;
    osc.openstack(&["volume", "delete", &fid]).await;
    wait_gone(&d.volume_path(&fid)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.daemon.service.get_snapshot(&caller, &sid).is_ok() {
        assert!(Instant::now() < deadline, "snapshot not deleted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    osc.openstack(&["volume", "delete", &id]).await;
    wait_gone(&d.volume_path(&id)).await;
    let list = osc.json(&["volume", "list"]).await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstack_cli_transfers_a_volume() {
    let Some(venv) = venv() else { return };
    let d = TestDaemon::start().await;
    let alice = Osc {
        venv: venv.clone(),
        endpoint: format!("http://{}/v3/demo", d.cinder_addr),
        token: "alice:demo",
    };
    let bob = Osc {
        venv,
        endpoint: format!("http://{}/v3/other", d.cinder_addr),
        token: "bob:other",
    };
    let v = alice
        .json(&["volume", "create", "--size", "1", "gift"])
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    alice.wait_volume(&id, |v| v["status"] == "available").await;
    let t = alice
        .json(&["volume", "transfer", "request", "create", &id])
        .await;
    let tid = t["id"].as_str().unwrap().to_string();
    let key = t["auth_key"].as_str().unwrap().to_string();
    assert_eq!(t["volume_id"], id.as_str(), "{t}");
    let listed = alice.json(&["volume", "transfer", "request", "list"]).await;
    assert_eq!(listed[0]["ID"], tid.as_str(), "{listed}");
    bob.json(&[
        "volume",
        "transfer",
        "request",
        "accept",
        "--auth-key",
        &key,
        &tid,
    ])
    .await;
    let v = bob.wait_volume(&id, |v| v["status"] == "available").await;
    assert_eq!(v["os-vol-tenant-attr:tenant_id"], "other");
    assert_eq!(bob.json(&["volume", "list"]).await[0]["ID"], id.as_str());
    assert_eq!(alice.json(&["volume", "list"]).await, serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cinder_cli_in_noauth_mode() {
    let Some(venv) = venv() else { return };
    let d = TestDaemon::start().await;
    let endpoint = format!("http://{}/v3", d.cinder_addr);
    let cinder = |args: &[&str]| {
        let mut a = vec![
            "--os-auth-type",
            "noauth",
            "--os-user-id",
            "bob",
            "--os-project-id",
            "demo",
            "--os-endpoint",
            endpoint.as_str(),
            "--os-volume-api-version",
            "3.67",
        ];
        a.extend_from_slice(args);
        a.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    let call = |args: Vec<String>| {
        let venv = venv.clone();
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&venv, "cinder", &a).await
        }
    };
    let field = |table: &str, name: &str| -> String {
        table
            .lines()
            .find(|l| l.split('|').nth(1).map(str::trim) == Some(name))
            .and_then(|l| l.split('|').nth(2))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    let out = call(cinder(&["create", "--name", "cli-vol", "1"])).await;
    let id = field(&out, "id");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = call(cinder(&["show", &id])).await;
        if field(&out, "status") == "available" {
            assert_eq!(field(&out, "user_id"), "bob");
            break;
        }
        assert!(Instant::now() < deadline, "never available: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(file_len(&d.volume_path(&id)), GIB);
    let list = call(cinder(&["list"])).await;
    assert!(list.contains(&id) && list.contains("cli-vol"), "{list}");
    call(cinder(&["extend", &id, "3"])).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = call(cinder(&["show", &id])).await;
        if field(&out, "size") == "3" && field(&out, "status") == "available" {
            break;
        }
        assert!(Instant::now() < deadline, "never extended: {out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(file_len(&d.volume_path(&id)), 3 * GIB);
    call(cinder(&["delete", &id])).await;
    wait_gone(&d.volume_path(&id)).await;
    let list = call(cinder(&["list"])).await;
    assert!(!list.contains(&id), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openstacksdk_waits_for_status_and_delete() {
    let Some(venv) = venv() else { return };
    let d = TestDaemon::start().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/sdk_lifecycle.py");
    let endpoint = format!("http://{}/v3/demo", d.cinder_addr);
    let out = run(
        &venv,
        "python",
        &[script.to_str().unwrap(), &endpoint, "carol:demo"],
    )
    .await;
    let line = out.lines().last().unwrap_or("");
    let r: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(r["extended_size"], 2);
    assert_eq!(r["metadata"], serde_json::json!({"made-by": "sdk"}));
    assert_eq!(r["names"], serde_json::json!(["sdk-vol"]));
    let id = r["volume_id"].as_str().unwrap();
    // wait_for_delete returned, so the daemon and the host agree it is gone.
    assert!(!d.volume_path(id).exists());
    let caller = blockd::service::Caller {
        project_id: "demo".into(),
        user_id: "carol".into(),
        admin: false,
    };
    assert!(d.daemon.service.get_volume(&caller, id).is_err());
    let sid = r["snapshot_id"].as_str().unwrap();
    assert!(d.daemon.service.get_snapshot(&caller, sid).is_err());
}
