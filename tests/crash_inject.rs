//! Crash injection with the real binary: each round starts one or two
//! random operations (create, extend, snapshot, create-from-snapshot,
//! revert, attach, detach, delete), kills the daemon with SIGKILL at a
//! random moment, starts it again and checks that nothing was lost:
//! every job ends, SQLite is intact, files and rows match, loop devices
//! point only at live volumes, snapshots verify, and data written before
//! the crash is still there.
//!
//! The seed is printed; `BLOCKD_CRASH_SEED=<seed>` replays a run and
//! `BLOCKD_CRASH_ROUNDS=<n>` (default 50) runs more rounds.

mod common;

use blockd::clock::OffsetClock;
use common::crash::{LoopGuard, World, check_store, files, loops_under, settle_jobs};
use common::proc::{Proc, free_port, spawn, write_config};
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes at the start of each volume that carry its known pattern.
const PATTERN: usize = 8 << 20;

/// Largest volume the test makes (sparse files: the space is not used).
const MAX_GIB: u64 = 32;

/// splitmix64: small, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }
}

/// The pattern a volume written by the test holds, keyed by the id of
/// the volume it was first written to.
fn pattern(origin: &str) -> Vec<u8> {
    common::crash::pattern(origin, PATTERN)
}

fn head(path: &Path) -> Vec<u8> {
    common::crash::head(path, PATTERN)
}

/// What the test knows: for each volume and snapshot, whose pattern its
/// first bytes hold (None: a new volume, all zeros until the test writes).
#[derive(Default)]
struct Model {
    volumes: BTreeMap<String, Option<String>>,
    snapshots: BTreeMap<String, (String, Option<String>)>,
    /// Volume -> server it was attached to.
    attached: BTreeMap<String, String>,
    /// Deletes that were accepted: these may be gone after the crash.
    deleting: BTreeSet<String>,
}

/// After a restart: checks every invariant, brings the model up to date,
/// and writes patterns into new volumes.
async fn check(w: &World, m: &mut Model, seed: u64, round: usize) {
    let ctx = format!("seed {seed} round {round}");
    check_store(w, &ctx).await;

    // The model against what the daemon says.
    let ids: Vec<String> = m.volumes.keys().cloned().collect();
    for id in ids {
        let a = w.c.get(&format!("/blockd/v1/volumes/{id}")).await;
        if a.status == StatusCode::NOT_FOUND {
            assert!(m.deleting.contains(&id), "{ctx}: volume {id} was lost");
            m.volumes.remove(&id);
            m.attached.remove(&id);
            continue;
        }
        assert_eq!(a.status, StatusCode::OK, "{ctx}: {}", a.text);
        let state = a.body["state"].as_str().unwrap_or("").to_string();
        match state.as_str() {
            "available" | "in-use" => {}
            s if s.starts_with("error") => {
                let why = a.body["error_reason"].as_str().unwrap_or("");
                assert!(!why.is_empty(), "{ctx}: {id} is {s} with no reason");
                // Clean up: a failed volume is of no further use here.
                if s == "error" {
                    m.volumes.remove(&id);
                    m.deleting.insert(id.clone());
                    delete_all_snapshots_of(w, m, &id).await;
                    let r =
                        w.c.call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
                            .await;
                    assert_eq!(
                        r.status,
                        StatusCode::ACCEPTED,
                        "{ctx}: delete {id}: {}",
                        r.text
                    );
                    w.c.wait(&id, &[]).await;
                    continue;
                }
                // A failed revert leaves undefined data; other failed
                // operations must not have touched it.
                if s == "error_restoring" {
                    continue;
                }
            }
            s => panic!("{ctx}: volume {id} stuck in {s} with no job running"),
        }
        let in_use = state == "in-use";
        if !in_use {
            m.attached.remove(&id);
        }
        let path = w.vol_path(&id);
        match m.volumes.get(&id).cloned().flatten() {
            Some(origin) => {
                assert!(
                    head(&path) == pattern(&origin),
                    "{ctx}: volume {id} lost its data (origin {origin})"
                );
            }
            None => {
                assert!(
                    head(&path).iter().all(|b| *b == 0),
                    "{ctx}: new volume {id} is not zeroed"
                );
                let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.seek(SeekFrom::Start(0)).unwrap();
                f.write_all(&pattern(&id)).unwrap();
                f.sync_all().unwrap();
                m.volumes.insert(id.clone(), Some(id.clone()));
            }
        }
    }
    let snaps: Vec<String> = m.snapshots.keys().cloned().collect();
    for sid in snaps {
        let a = w.c.get(&format!("/v1/snapshots/{sid}")).await;
        if a.status == StatusCode::NOT_FOUND {
            assert!(m.deleting.contains(&sid), "{ctx}: snapshot {sid} was lost");
            m.snapshots.remove(&sid);
            continue;
        }
        let status = a.body["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "available" => {
                let v =
                    w.c.call(
                        Method::POST,
                        &format!("/blockd/v1/snapshots/{sid}/verify"),
                        None,
                    )
                    .await;
                assert_eq!(
                    v.body["ok"], true,
                    "{ctx}: snapshot {sid} fails its manifest: {}",
                    v.text
                );
                let origin = m.snapshots[&sid]
                    .1
                    .clone()
                    .expect("snapshots are of written volumes");
                assert!(
                    head(&w.snap_path(&sid)) == pattern(&origin),
                    "{ctx}: snapshot {sid} holds the wrong data"
                );
            }
            "error" => {
                m.snapshots.remove(&sid);
                m.deleting.insert(sid.clone());
                let r =
                    w.c.call(Method::DELETE, &format!("/v1/snapshots/{sid}"), None)
                        .await;
                assert!(
                    r.status.is_success(),
                    "{ctx}: delete failed snapshot {sid}: {}",
                    r.text
                );
            }
            s => panic!("{ctx}: snapshot {sid} stuck in {s}"),
        }
    }
    settle_jobs(w, &ctx).await;
}

async fn delete_all_snapshots_of(w: &World, m: &mut Model, vid: &str) {
    let of: Vec<String> = m
        .snapshots
        .iter()
        .filter(|(_, (v, _))| v == vid)
        .map(|(s, _)| s.clone())
        .collect();
    for s in of {
        m.snapshots.remove(&s);
        m.deleting.insert(s.clone());
        let _ =
            w.c.call(Method::DELETE, &format!("/v1/snapshots/{s}"), None)
                .await;
    }
}

/// Starts one random operation; returns what it was, for the log.
async fn start_op(w: &World, m: &mut Model, rng: &mut Rng) -> String {
    let written: Vec<String> = m
        .volumes
        .iter()
        .filter(|(_, o)| o.is_some())
        .map(|(id, _)| id.clone())
        .collect();
    let free: Vec<String> = written
        .iter()
        .filter(|id| !m.attached.contains_key(*id))
        .cloned()
        .collect();
    let attached: Vec<String> = m.attached.keys().cloned().collect();
    let snaps: Vec<String> = m.snapshots.keys().cloned().collect();
    let op = if m.volumes.len() < 2 {
        0
    } else if m.volumes.len() > 6 {
        7
    } else {
        rng.below(8)
    };
    match op {
        1 if !free.is_empty() => {
            let id = rng.pick(&free).unwrap().clone();
            let size = w.c.get(&format!("/v1/volumes/{id}")).await.body["size"]
                .as_u64()
                .unwrap_or(0)
                + 8;
            if size > MAX_GIB {
                return format!("extend {id}: already {MAX_GIB} GiB");
            }
            let r =
                w.c.call(
                    Method::PUT,
                    &format!("/v1/volumes/{id}/size"),
                    Some(json!({"size": size})),
                )
                .await;
            format!("extend {id} -> {size}: {}", r.status)
        }
        2 if !written.is_empty() && snaps.len() < 6 => {
            let id = rng.pick(&written).unwrap().clone();
            let r =
                w.c.call(
                    Method::POST,
                    "/v1/snapshots",
                    Some(json!({"name": "s", "volume_id": id})),
                )
                .await;
            if r.status == StatusCode::ACCEPTED {
                let sid = r.body["id"].as_str().unwrap().to_string();
                let origin = m.volumes[&id].clone();
                m.snapshots.insert(sid.clone(), (id.clone(), origin));
                format!("snapshot {id} -> {sid}")
            } else {
                format!("snapshot {id}: {}", r.status)
            }
        }
        3 if !snaps.is_empty() => {
            let sid = rng.pick(&snaps).unwrap().clone();
            let r =
                w.c.call(
                    Method::POST,
                    "/v1/volumes",
                    Some(json!({"name": "fs", "size": MAX_GIB, "snapshot_id": sid})),
                )
                .await;
            if r.status == StatusCode::ACCEPTED {
                let id = r.body["id"].as_str().unwrap().to_string();
                m.volumes.insert(id.clone(), m.snapshots[&sid].1.clone());
                format!("create {id} from {sid}")
            } else {
                format!("create from {sid}: {}", r.status)
            }
        }
        4 if !snaps.is_empty() => {
            let sid = rng.pick(&snaps).unwrap().clone();
            let vid = m.snapshots[&sid].0.clone();
            let r =
                w.c.call(
                    Method::POST,
                    &format!("/v1/volumes/{vid}/revert"),
                    Some(json!({"snapshot_id": sid})),
                )
                .await;
            format!("revert {vid} to {sid}: {}", r.status)
        }
        5 if !free.is_empty() => {
            let id = rng.pick(&free).unwrap().clone();
            let server = format!("server-{}", rng.below(1000));
            let r =
                w.c.call(
                    Method::POST,
                    &format!("/v1/volumes/{id}/servers"),
                    Some(json!({"server_id": server})),
                )
                .await;
            if r.status == StatusCode::ACCEPTED {
                m.attached.insert(id.clone(), server.clone());
            }
            format!("attach {id} to {server}: {}", r.status)
        }
        6 if !attached.is_empty() => {
            let id = rng.pick(&attached).unwrap().clone();
            let server = m.attached[&id].clone();
            let r =
                w.c.call(
                    Method::DELETE,
                    &format!("/v1/volumes/{id}/servers/{server}"),
                    None,
                )
                .await;
            format!("detach {id} from {server}: {}", r.status)
        }
        7 if !free.is_empty() => {
            let id = rng.pick(&free).unwrap().clone();
            delete_all_snapshots_of(w, m, &id).await;
            let r =
                w.c.call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
                    .await;
            if r.status == StatusCode::ACCEPTED {
                m.deleting.insert(id.clone());
            }
            format!("delete {id}: {}", r.status)
        }
        _ => {
            let r =
                w.c.call(
                    Method::POST,
                    "/v1/volumes",
                    Some(json!({"name": "c", "size": 8})),
                )
                .await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "create: {}", r.text);
            let id = r.body["id"].as_str().unwrap().to_string();
            m.volumes.insert(id.clone(), None);
            format!("create {id}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sigkill_loses_nothing() {
    let seed = std::env::var("BLOCKD_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let rounds: usize = std::env::var("BLOCKD_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    eprintln!(
        "crash injection: seed {seed}, {rounds} rounds (replay with BLOCKD_CRASH_SEED={seed})"
    );
    let dir = tempfile::Builder::new()
        .prefix("blockd-crash")
        .tempdir_in("/var/tmp")
        .unwrap();
    let _loops = LoopGuard(dir.path().to_path_buf());
    let port = free_port();
    let clock = Arc::new(OffsetClock(chrono::Duration::zero()));
    let w = World {
        dir: dir.path().to_path_buf(),
        port,
        cfg: write_config(dir.path(), port, ""),
        c: Client::new(&format!("http://127.0.0.1:{port}"), cred("a"), clock),
        db: dir.path().join("data/blockd.db"),
    };
    let mut rng = Rng(seed);
    let mut m = Model::default();
    let started = Instant::now();
    for round in 0..rounds {
        let p: Proc = spawn(&w.cfg, w.port).await;
        check(&w, &mut m, seed, round).await;
        let ops = 1 + rng.below(2);
        let mut line = Vec::new();
        for _ in 0..ops {
            line.push(start_op(&w, &mut m, &mut rng).await);
        }
        let wait = match rng.below(4) {
            0 => 0,
            1 => rng.below(20),
            _ => rng.below(300),
        } as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        p.kill();
        // Shown when the test fails (the harness keeps a passing test's output).
        eprintln!(
            "round {round}: {} then SIGKILL after {wait} ms",
            line.join(", ")
        );
    }
    // A last start: everything settles, then the whole state goes away
    // through the API and nothing remains.
    let p = spawn(&w.cfg, w.port).await;
    check(&w, &mut m, seed, rounds).await;
    for (id, server) in m.attached.clone() {
        let r =
            w.c.call(
                Method::DELETE,
                &format!("/v1/volumes/{id}/servers/{server}"),
                None,
            )
            .await;
        assert!(
            r.status.is_success() || r.status == StatusCode::NOT_FOUND,
            "{}",
            r.text
        );
    }
    for id in m.volumes.keys().cloned().collect::<Vec<_>>() {
        w.c.wait(&id, &["available"]).await;
        delete_all_snapshots_of(&w, &mut m, &id).await;
    }
    settle_jobs(&w, &format!("seed {seed}")).await;
    for id in m.volumes.keys().cloned().collect::<Vec<_>>() {
        let r =
            w.c.call(Method::DELETE, &format!("/v1/volumes/{id}"), None)
                .await;
        assert_eq!(
            r.status,
            StatusCode::ACCEPTED,
            "seed {seed}: delete {id}: {}",
            r.text
        );
        w.c.wait(&id, &[]).await;
    }
    settle_jobs(&w, &format!("seed {seed}")).await;
    drop(p);
    assert!(
        loops_under(&w.dir).is_empty(),
        "seed {seed}: loop devices left behind"
    );
    assert!(
        files(&w.dir.join("data/volumes")).0.is_empty(),
        "seed {seed}: volume files left"
    );
    eprintln!(
        "crash injection: {rounds} rounds in {:.1} s, seed {seed}",
        started.elapsed().as_secs_f64()
    );
}
