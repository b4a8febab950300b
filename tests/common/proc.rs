//! The daemon binary as a child process on a fixed port, for tests that
//! kill it and start it again on the same data dir.

use super::config_text;
use reqwest::StatusCode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL, as a crash: nothing runs after it.
    pub fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the daemon binary with `env` and waits until it answers `GET /`.
pub async fn spawn_with(cfg: &Path, port: u16, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_blockd"));
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Proc(cmd.spawn().expect("daemon starts"));
    wait_up(p, port).await
}

/// Waits until the daemon `p` answers `GET /` on `port`.
pub async fn wait_up(mut p: Proc, port: u16) -> Proc {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/")).await
            && r.status() == StatusCode::OK
        {
            return p;
        }
        if let Ok(Some(status)) = p.0.try_wait() {
            panic!("daemon exited before it answered: {status}");
        }
        assert!(Instant::now() < deadline, "daemon did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn spawn(cfg: &Path, port: u16) -> Proc {
    spawn_with(cfg, port, &[]).await
}

/// Writes `blockd.toml` in `dir` for a daemon on `port` with its data in
/// `dir/data`; `extra` is more TOML.
pub fn write_config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let data = dir.join("data");
    let extra = format!("[scp]\nlisten = \"127.0.0.1:{port}\"\n{extra}");
    let path = dir.join("blockd.toml");
    std::fs::write(&path, config_text(&data, &extra)).unwrap();
    path
}
