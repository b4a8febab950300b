//! The client commands of the real binary against a real daemon: endpoint
//! and credentials found from the daemon's config, tables and JSON, --wait,
//! exit codes for refusals, absent deletes and unreachable daemons.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn blockd(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(args)
        .arg("--config")
        .arg(cfg)
        .env_remove("BLOCKD_ENDPOINT")
        .env_remove("BLOCKD_ACCESS_KEY")
        .env_remove("BLOCKD_SECRET_KEY")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

#[test]
fn client_commands_against_the_daemon() {
    let dir = tempfile::Builder::new()
        .prefix("blockd-test")
        .tempdir_in("/var/tmp")
        .unwrap();
    let port = free_port();
    let cfg = dir.path().join("blockd.toml");
    let extra = format!("[scp]\nlisten = \"127.0.0.1:{port}\"\n[metrics]\nlisten = \"\"\n");
    std::fs::write(&cfg, config_text(&dir.path().join("data"), &extra)).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "daemon did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let v = json(&blockd(
        &cfg,
        &[
            "volume", "create", "cli1", "--size", "8", "--wait", "--json",
        ],
    ));
    assert_eq!(v["state"], "available", "{v}");
    let id = v["id"].as_str().unwrap().to_string();

    let o = blockd(&cfg, &["volume", "list"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("ID"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with(&id) && l.contains("available")),
        "{out}"
    );

    let v = json(&blockd(
        &cfg,
        &["volume", "extend", &id, "--size", "16", "--wait", "--json"],
    ));
    assert_eq!(v["size"], 16, "{v}");

    // Data for the copy, then a snapshot with --wait and verify through the API.
    std::fs::write(
        dir.path().join("data/volumes").join(format!("{id}.img")),
        vec![9u8; 3 << 20],
    )
    .unwrap();
    let s = json(&blockd(
        &cfg,
        &[
            "snapshot", "create", &id, "--name", "s1", "--wait", "--json",
        ],
    ));
    assert_eq!(s["status"], "available", "{s}");
    let sid = s["id"].as_str().unwrap().to_string();
    let o = blockd(&cfg, &["snapshot", "verify", &sid]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("OK"),
        "{}",
        text(&o)
    );
    let list = json(&blockd(
        &cfg,
        &["snapshot", "list", "--volume", &id, "--json"],
    ));
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 1, "{list}");

    // A refusal exits 3 with the daemon's message.
    let o = blockd(&cfg, &["volume", "extend", &id, "--size", "12"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("400"),
        "{}",
        text(&o)
    );
    let o = blockd(
        &cfg,
        &["volume", "show", "00000000-0000-0000-0000-000000000000"],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));

    // Deletes: the volume has a snapshot, so cascade; absent ones are fine.
    let o = blockd(&cfg, &["snapshot", "delete", &sid, "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = blockd(&cfg, &["volume", "delete", &id, "--wait"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("deleted"),
        "{}",
        text(&o)
    );
    let d = json(&blockd(&cfg, &["volume", "delete", &id, "--json"]));
    assert_eq!(d["changed"], false, "{d}");

    // Nobody listening: exit 4.
    let o = Command::new(env!("CARGO_BIN_EXE_blockd"))
        .args(["volume", "list", "--endpoint"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .args([
            "--access-key",
            "ak-a",
            "--secret-key",
            "secret-of-a-0123456789",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
}
