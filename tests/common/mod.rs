//! Shared test harness: a real daemon on 127.0.0.1:0 over a temp data dir,
//! and a real HTTP client that signs requests as the official SDK does.
#![allow(dead_code)]

use blockd::api::scp::auth::{SignedRequest, sign};
use blockd::clock::{OffsetClock, SharedClock};
use blockd::config::{Config, Credential};
use blockd::server::Daemon;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

pub const GIB: u64 = 1 << 30;

/// Bytes free to an unprivileged writer on the filesystem holding `p`.
pub fn free_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Whether the filesystem holding `p` has `need` bytes free with 1 GiB to
/// spare. If not, it says so on stderr, so a test that skips a part for
/// want of disk does so loudly.
pub fn room_for(p: &Path, need: u64, what: &str) -> bool {
    let free = free_bytes(p);
    if free >= need + GIB {
        return true;
    }
    eprintln!(
        "SKIPPING {what}: it needs {} MiB free on {} and only {} MiB are",
        (need + GIB) >> 20,
        p.display(),
        free >> 20
    );
    false
}

pub fn cred(n: &str) -> Credential {
    Credential {
        access_key: format!("ak-{n}"),
        secret_key: format!("secret-of-{n}-0123456789"),
        user_id: format!("user-{n}"),
        project_id: format!("project-{n}"),
    }
}

/// Config text with two projects' credentials and `extra` appended.
pub fn config_text(data_dir: &Path, extra: &str) -> String {
    let mut s = format!("data_dir = {:?}\n", data_dir.display().to_string());
    // Top-level keys in `extra` must come before any table.
    s += extra;
    s += "\n";
    if !extra.contains("[cinder]") {
        // Daemons started as processes must not all take port 8776.
        s += "[cinder]\nlisten = \"127.0.0.1:0\"\n";
    }
    if !extra.contains("[metrics]") {
        // Nor port 9977: the metrics listener is off unless a test asks.
        s += "[metrics]\nlisten = \"\"\n";
    }
    for n in ["a", "b"] {
        let c = cred(n);
        s += &format!(
            "\n[[scp.credentials]]\naccess_key = {:?}\nsecret_key = {:?}\nuser_id = {:?}\nproject_id = {:?}\n",
            c.access_key, c.secret_key, c.user_id, c.project_id
        );
    }
    s
}

pub struct TestDaemon {
    pub addr: std::net::SocketAddr,
    /// The Cinder dialect's listener.
    pub cinder_addr: std::net::SocketAddr,
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
    pub clock: SharedClock,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    keep_devices: bool,
    /// A filesystem mounted at the data dir, unmounted on drop.
    mount: Option<MountGuard>,
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        TestDaemon::start_with("", Arc::new(OffsetClock(chrono::Duration::zero()))).await
    }

    /// Starts a daemon whose config has `extra` (TOML keys before the
    /// credential tables) and whose clock is `clock`.
    pub async fn start_with(extra: &str, clock: SharedClock) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("blockd-test")
            .tempdir_in("/var/tmp")
            .expect("temp dir");
        TestDaemon::start_in(dir, extra, clock).await
    }

    /// Stops this daemon and starts a new one on the same data dir, as a
    /// restart of the service would. Exports are left as they are.
    pub async fn restart(mut self, extra: &str) -> TestDaemon {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.daemon.service.drain(Duration::from_secs(10)).await;
        let dir = tempfile::TempDir::new_in("/var/tmp").expect("placeholder");
        let real = std::mem::replace(&mut self.dir, dir);
        let clock = self.clock.clone();
        // A small filesystem stays mounted for the next daemon.
        let mount = self.mount.take();
        self.keep_devices = true;
        drop(self);
        let mut d = TestDaemon::start_in(real, extra, clock).await;
        d.mount = mount;
        d
    }

    async fn start_in(dir: tempfile::TempDir, extra: &str, clock: SharedClock) -> TestDaemon {
        let data = dir.path().join("data");
        let text = config_text(&data, extra);
        let cfg = Config::parse(&text, "test.toml").expect("test config");
        let daemon = Daemon::open(&cfg, clock.clone()).expect("daemon opens");
        daemon.recover().expect("recovery");
        let (listener, addr) = blockd::server::bind("127.0.0.1:0").await.expect("bind");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = daemon.scp_app();
        let (cinder_listener, cinder_addr) =
            blockd::server::bind("127.0.0.1:0").await.expect("bind");
        let (ctx, crx) = tokio::sync::oneshot::channel::<()>();
        let cinder_app = daemon.cinder_app();
        tokio::spawn(async move {
            let _ = blockd::server::run(cinder_listener, cinder_app, async {
                let _ = crx.await;
            })
            .await;
        });
        tokio::spawn(async move {
            let _ = blockd::server::run(listener, app, async {
                let _ = rx.await;
                let _ = ctx.send(());
            })
            .await;
        });
        TestDaemon {
            addr,
            cinder_addr,
            dir,
            daemon,
            clock,
            stop: Some(tx),
            keep_devices: false,
            mount: None,
        }
    }

    /// Starts a daemon whose data dir is a fresh ext4 filesystem of `size`
    /// bytes on a loop device, or says why it cannot.
    pub async fn start_on_small_fs(size: u64) -> Result<TestDaemon, String> {
        TestDaemon::start_on_small_fs_with(size, "").await
    }

    /// As `start_on_small_fs`, with `extra` config.
    pub async fn start_on_small_fs_with(size: u64, extra: &str) -> Result<TestDaemon, String> {
        let dir = tempfile::Builder::new()
            .prefix("blockd-test")
            .tempdir_in("/var/tmp")
            .map_err(|e| e.to_string())?;
        let guard = MountGuard::small_ext4(
            &dir.path().join("fs.img"),
            &dir.path().join("data"),
            size,
            4096,
        )?;
        let mut d =
            TestDaemon::start_in(dir, extra, Arc::new(OffsetClock(chrono::Duration::zero()))).await;
        d.mount = Some(guard);
        Ok(d)
    }

    pub fn client(&self, who: &str) -> Client {
        Client::new(
            &format!("http://{}", self.addr),
            cred(who),
            self.clock.clone(),
        )
    }

    pub fn volume_path(&self, id: &str) -> PathBuf {
        self.dir
            .path()
            .join("data/volumes")
            .join(format!("{id}.img"))
    }
}

impl Drop for TestDaemon {
    /// Detaches every loop device over this daemon's files, even when the
    /// test failed, so no device outlives its test.
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(m) = self.mount.take() {
            for d in blockd::export::list_under(&m.point) {
                let _ = blockd::export::detach(&d.device);
            }
            drop(m);
        }
        if !self.keep_devices {
            for d in blockd::export::list_under(self.dir.path()) {
                let _ = blockd::export::detach(&d.device);
            }
        }
    }
}

/// A filesystem image mounted (`mount -o loop`) at `point`. Dropping it
/// unmounts lazily and detaches the image's loop device, even when the
/// test failed.
pub struct MountGuard {
    pub point: PathBuf,
    pub image: PathBuf,
}

impl MountGuard {
    /// Makes a sparse `size`-byte ext4 image at `img` (few inodes, so its
    /// inode tables stay small) and loop-mounts it on `point`, created
    /// here; the guard unmounts it even if what follows fails.
    pub fn small_ext4(
        img: &Path,
        point: &Path,
        size: u64,
        inodes: u32,
    ) -> Result<MountGuard, String> {
        std::fs::create_dir(point).map_err(|e| e.to_string())?;
        std::fs::File::create(img)
            .and_then(|f| f.set_len(size))
            .map_err(|e| e.to_string())?;
        let run = |cmd: &mut std::process::Command| match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            other => Err(format!("{cmd:?}: {other:?}")),
        };
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-m", "0", "-N", &inodes.to_string()])
            .arg(img))?;
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(img)
            .arg(point))?;
        Ok(MountGuard {
            point: point.to_path_buf(),
            image: img.to_path_buf(),
        })
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.point)
            .status();
        // Autoclear detaches the device once the filesystem is let go;
        // this detaches it at once if nothing holds it any more.
        let image = self.image.display().to_string();
        for (dev, file) in crash::loops_under(self.image.parent().unwrap_or(Path::new("/"))) {
            if file == image {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &dev])
                    .status();
            }
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub cred: Credential,
    pub version: Option<String>,
    pub clock: SharedClock,
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Client {
    pub fn new(base: &str, cred: Credential, clock: SharedClock) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: base.to_string(),
            cred,
            version: Some("virtualserver 1.3".into()),
            clock,
        }
    }

    pub fn version(mut self, v: Option<&str>) -> Client {
        self.version = v.map(|v| format!("virtualserver {v}"));
        self
    }

    /// Sends a built request, e.g. one whose headers a test changed.
    pub async fn exec(&self, req: reqwest::Request) -> Answer {
        let c = self.http.clone();
        Client::send_with(move || c.execute(req)).await
    }

    async fn send_with<F, Fut>(f: F) -> Answer
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
    {
        Client::answer(f().await.expect("request sent")).await
    }

    /// A millisecond not yet used for `key` (method and URL): the server
    /// refuses a second request with the same signature as a replay. A
    /// busy key moves a millisecond ahead instead of waiting.
    pub fn fresh_ms(&self, key: &str) -> i64 {
        static LAST: Mutex<Option<std::collections::HashMap<String, i64>>> = Mutex::new(None);
        let now = self.clock.now().timestamp_millis();
        let mut g = LAST.lock().unwrap();
        let m = g.get_or_insert_with(Default::default);
        let ts = match m.get(key) {
            Some(&last) if last >= now && last - now < 1000 => last + 1,
            _ => now,
        };
        m.insert(key.to_string(), ts);
        ts
    }

    /// Builds a signed request; `tweak` may alter it before sending.
    pub fn signed(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{}", self.base, path);
        let ts = self.fresh_ms(&format!("{method} {url}")).to_string();
        let sig = sign(
            &self.cred.secret_key,
            &SignedRequest {
                method: method.as_str(),
                url: &url,
                timestamp: &ts,
                access_key: &self.cred.access_key,
                account_id: "",
                client_type: "Openapi",
            },
        );
        let mut rb = self
            .http
            .request(method, &url)
            .header("Scp-AccessKey", &self.cred.access_key)
            .header("Scp-AccountId", "")
            .header("Scp-ClientType", "Openapi")
            .header("Scp-Signature", sig)
            .header("Scp-Timestamp", ts)
            .header("Accept-Language", "en-US");
        if let Some(v) = &self.version {
            rb = rb.header("Scp-API-Version", v);
        }
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(format!("{b}\n"));
        }
        rb
    }

    pub async fn send(rb: reqwest::RequestBuilder) -> Answer {
        Client::answer(rb.send().await.expect("request sent")).await
    }

    async fn answer(resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body read");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text.clone()))
        };
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        Client::send(self.signed(method, path, body.as_ref())).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    pub async fn create(&self, name: &str, size: u64, vtype: Option<&str>) -> Value {
        let mut body = serde_json::json!({"name": name, "size": size});
        if let Some(t) = vtype {
            body["volume_type"] = Value::from(t);
        }
        let a = self.call(Method::POST, "/v1/volumes", Some(body)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "create: {}", a.text);
        a.body
    }

    /// Polls a volume until its state is one of `want` (or it is gone,
    /// when `want` is empty). Panics after 20 s.
    pub async fn wait(&self, id: &str, want: &[&str]) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let a = self.get(&format!("/v1/volumes/{id}")).await;
            if want.is_empty() && a.status == StatusCode::NOT_FOUND {
                return Value::Null;
            }
            if a.status == StatusCode::OK {
                let s = a.body["state"].as_str().unwrap_or("");
                if want.contains(&s) {
                    return a.body;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "volume {id} never reached {want:?}; last answer {} {}",
                a.status,
                a.text
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The error detail of an SCP error body.
pub fn detail(a: &Answer) -> String {
    a.body["errors"][0]["detail"]
        .as_str()
        .unwrap_or_else(|| panic!("not an SCP error body: {} {}", a.status, a.text))
        .to_string()
}

pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}

pub mod cinder;
pub mod crash;
pub mod proc;
