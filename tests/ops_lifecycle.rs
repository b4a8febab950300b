//! The real binary under a pretend service manager: READY=1 only once the
//! listeners answer, watchdog pings, SIGHUP reloads credentials, quotas
//! and the log filter (a bad file keeps the old config), SIGTERM sends
//! STOPPING=1, drains for a bounded time and closes the store; the
//! metrics listener is scraped and its counters move.

mod common;

use blockd::clock::OffsetClock;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixDatagram;

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Proc {
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the exit; panics after `limit`.
    async fn exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit in {limit:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    port: u16,
    metrics_port: u16,
    sock: UnixDatagram,
    sock_path: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("blockd-test")
            .tempdir_in("/var/tmp")
            .unwrap();
        let sock_path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        Setup {
            port: free_port(),
            metrics_port: free_port(),
            dir,
            sock,
            sock_path,
        }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("blockd.toml")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes the config: `extra` keys, then credentials for `who`.
    fn write(&self, extra: &str, who: &[&str]) {
        let mut s = format!(
            "data_dir = {:?}\n[scp]\nlisten = \"127.0.0.1:{}\"\n[cinder]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n{extra}",
            self.data().display().to_string(),
            self.port,
            self.metrics_port
        );
        for n in who {
            let c = cred(n);
            s += &format!(
                "\n[[scp.credentials]]\naccess_key = {:?}\nsecret_key = {:?}\nuser_id = {:?}\nproject_id = {:?}\n",
                c.access_key, c.secret_key, c.user_id, c.project_id
            );
        }
        std::fs::write(self.config(), s).unwrap();
    }

    fn spawn(&self, watchdog_usec: Option<u64>) -> Proc {
        let log = self.dir.path().join(format!("log-{}", free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockd"));
        cmd.args(["serve", "--config"])
            .arg(self.config())
            .env_remove("RUST_LOG")
            .env("NOTIFY_SOCKET", &self.sock_path)
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        match watchdog_usec {
            Some(u) => cmd.env("WATCHDOG_USEC", u.to_string()),
            None => cmd.env_remove("WATCHDOG_USEC"),
        };
        Proc {
            child: cmd.spawn().expect("daemon starts"),
            log,
        }
    }

    /// Reads notifications until one has a line equal to `line`.
    async fn expect(&self, line: &str, limit: Duration, p: &Proc) -> String {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    if msg.lines().any(|l| l == line) {
                        return msg;
                    }
                }
                Ok(Err(e)) => panic!("notify socket: {e}"),
                Err(_) => panic!("no {line} within {limit:?}; log:\n{}", p.log()),
            }
        }
    }

    fn client(&self, who: &str) -> Client {
        Client::new(
            &format!("http://127.0.0.1:{}", self.port),
            cred(who),
            Arc::new(OffsetClock(chrono::Duration::zero())),
        )
    }

    async fn scrape(&self) -> String {
        let r = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap()
    }
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wal_len(db: &Path) -> u64 {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    std::fs::metadata(PathBuf::from(p))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::test]
async fn notify_watchdog_reload_and_clean_stop() {
    let s = Setup::new();
    s.write("", &["a"]);
    let mut p = s.spawn(Some(200_000));
    let ready = s.expect("READY=1", Duration::from_secs(30), &p).await;
    assert!(ready.contains("STATUS=serving"), "{ready}");
    // READY=1 comes only after the listeners are bound: they answer now.
    let r = reqwest::get(format!("http://127.0.0.1:{}/", s.port))
        .await
        .expect("SCP listener is up at READY=1");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reqwest::get(format!("http://127.0.0.1:{}/readyz", s.metrics_port))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["checks"]["store"], "ok", "{body}");
    assert_eq!(body["checks"]["backend:file"], "ok", "{body}");
    s.expect("WATCHDOG=1", Duration::from_secs(2), &p).await;

    let a = s.client("a");
    let v = a.create("before", 8, None).await;
    a.wait(v["id"].as_str().unwrap(), &["available"]).await;

    // Reload: new credentials, a tighter quota, a louder log filter.
    s.write(
        "[quota]\nvolumes = 1\n[daemon]\nlog_level = \"debug\"\n",
        &["c"],
    );
    p.signal(nix::sys::signal::Signal::SIGHUP);
    s.expect("RELOADING=1", Duration::from_secs(10), &p).await;
    s.expect("READY=1", Duration::from_secs(10), &p).await;
    let log = p.log();
    assert!(log.contains("SIGHUP: applied"), "{log}");
    assert!(log.contains("removed [\"ak-a\"]"), "{log}");
    assert!(log.contains("log filter: debug"), "{log}");
    assert_eq!(a.get("/v1/volumes").await.status, StatusCode::UNAUTHORIZED);
    let c = s.client("c");
    c.create("one", 8, None).await;
    let r = c
        .call(
            Method::POST,
            "/v1/volumes",
            Some(json!({"name": "two", "size": 8})),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert_eq!(r.body["errors"][0]["code"], "QuotaExceeded", "{}", r.text);

    // A bad file changes nothing and says why.
    std::fs::write(s.config(), "[scp]\nlisten = \"nowhere\"\n").unwrap();
    p.signal(nix::sys::signal::Signal::SIGHUP);
    s.expect("READY=1", Duration::from_secs(10), &p).await;
    let log = p.log();
    assert!(log.contains("config not reloaded"), "{log}");
    assert!(log.contains("scp.listen"), "{log}");
    assert_eq!(c.get("/v1/volumes").await.status, StatusCode::OK);

    p.signal(nix::sys::signal::Signal::SIGTERM);
    s.expect("STOPPING=1", Duration::from_secs(10), &p).await;
    let status = p.exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}; log:\n{}", p.log());
    let log = p.log();
    assert!(log.contains("store closed"), "{log}");
    let db = s.data().join("blockd.db");
    assert_eq!(wal_len(&db), 0, "the log was folded into the database");
    let store = blockd::store::Store::open_read_only(&db).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

#[tokio::test]
async fn sigterm_drain_is_bounded_and_jobs_resume() {
    let s = Setup::new();
    s.write(
        "[daemon]\ndrain_secs = 1\n[jobs]\ndebug_delay_ms = 6000\n",
        &["a"],
    );
    let mut p = s.spawn(None);
    s.expect("READY=1", Duration::from_secs(30), &p).await;
    let a = s.client("a");
    let id = a.create("slow", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    p.signal(nix::sys::signal::Signal::SIGTERM);
    let status = p.exit(Duration::from_secs(15)).await;
    let took = started.elapsed();
    assert!(status.success(), "{status:?}; log:\n{}", p.log());
    assert!(
        took < Duration::from_secs(5),
        "drain of 1 s took {took:?}; log:\n{}",
        p.log()
    );
    assert!(
        p.log().contains("start-up recovery will finish them"),
        "{}",
        p.log()
    );
    drop(p);

    s.write("", &["a"]);
    let p = s.spawn(None);
    s.expect("READY=1", Duration::from_secs(30), &p).await;
    a.wait(&id, &["available"]).await;
}

#[tokio::test]
async fn metrics_listener_counts_requests_volumes_and_copies() {
    let s = Setup::new();
    s.write("", &["a"]);
    let p = s.spawn(None);
    s.expect("READY=1", Duration::from_secs(30), &p).await;
    let a = s.client("a");
    let route = "blockd_http_requests_total{dialect=\"scp\",method=\"POST\",route=\"/v1/volumes\",status=\"202\"}";
    let before = s.scrape().await;
    assert_eq!(sample(&before, route), None, "{before}");
    assert_eq!(
        sample(&before, "blockd_backend_up{backend=\"file\"}"),
        Some(1.0),
        "{before}"
    );
    assert!(sample(&before, "blockd_backend_free_bytes{backend=\"file\"}").unwrap() > 0.0);
    let engines = sample(&before, "blockd_copy_engine{engine=\"io_uring\"}").unwrap()
        + sample(&before, "blockd_copy_engine{engine=\"fallback\"}").unwrap();
    assert_eq!(engines, 1.0, "{before}");

    let id = a.create("m1", 8, None).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    a.wait(&id, &["available"]).await;
    std::fs::write(
        s.data().join("volumes").join(format!("{id}.img")),
        vec![7u8; 2 << 20],
    )
    .unwrap();
    let r = a
        .call(
            Method::POST,
            "/v1/snapshots",
            Some(json!({"name": "s1", "volume_id": id})),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    let sid = r.body["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = a.get(&format!("/v1/snapshots/{sid}")).await;
        if r.body["status"] == "available" {
            break;
        }
        assert!(Instant::now() < deadline, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.get("/v1/volumes/nope").await.status,
        StatusCode::NOT_FOUND
    );

    let after = s.scrape().await;
    assert_eq!(sample(&after, route), Some(1.0), "{after}");
    let show = "blockd_http_requests_total{dialect=\"scp\",method=\"GET\",route=\"/v1/volumes/{id}\",status=\"200\"}";
    assert!(sample(&after, show).unwrap() >= 1.0, "{after}");
    assert!(!after.contains(&id), "raw ids never become labels");
    assert!(
        after.contains("blockd_http_request_duration_seconds_bucket{"),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "blockd_volumes{backend=\"file\",state=\"available\"}"
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "blockd_volume_bytes{backend=\"file\",state=\"available\"}"
        ),
        Some((8u64 << 30) as f64)
    );
    assert_eq!(
        sample(&after, "blockd_snapshots{status=\"available\"}"),
        Some(1.0)
    );
    assert!(
        sample(
            &after,
            "blockd_jobs{kind=\"create_volume\",state=\"succeeded\"}"
        )
        .unwrap()
            >= 1.0,
        "{after}"
    );
    let copied: f64 = ["io_uring", "fallback"]
        .iter()
        .filter_map(|e| {
            sample(
                &after,
                &format!("blockd_copy_bytes_total{{engine=\"{e}\"}}"),
            )
        })
        .sum();
    assert!(copied >= (2 << 20) as f64, "copy bytes moved: {after}");
    let r = reqwest::get(format!("http://127.0.0.1:{}/healthz", s.metrics_port))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}
